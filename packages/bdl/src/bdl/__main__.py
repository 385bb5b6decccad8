"""`python -m bdl ...` runs the bdl command-line interface."""

from bdl.cli import main

if __name__ == "__main__":
    main()
