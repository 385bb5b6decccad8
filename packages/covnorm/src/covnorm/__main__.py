"""`python -m covnorm ...` runs the covnorm command-line interface."""

from covnorm.cli import main

if __name__ == "__main__":
    main()
