"""The ``vqtok`` command line: a Typer app (`vqtok.cli.app`), one module per command group;
the commands parse and print, the work is in the library."""

from vqtok.cli.app import app

__all__ = ["app"]
