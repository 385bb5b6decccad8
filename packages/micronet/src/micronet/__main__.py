"""`python -m micronet ...` runs the micronet command-line interface."""

from micronet.cli import main

if __name__ == "__main__":
    main()
