"""`python -m drt ...` runs the drt command-line interface."""

from drt.cli import main

if __name__ == "__main__":
    main()
