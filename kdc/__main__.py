"""`python -m kdc` runs the CLI."""

from kdc.cli import main

if __name__ == "__main__":
    main()
