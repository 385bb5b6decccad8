"""`python -m dcd ...` runs the dcd command-line interface."""

from dcd.cli import main

if __name__ == "__main__":
    main()
