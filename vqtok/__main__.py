"""`python -m vqtok` runs the command line."""

from vqtok.cli.app import app

if __name__ == "__main__":
    app()
