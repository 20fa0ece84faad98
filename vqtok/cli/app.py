"""The ``vqtok`` command line (README, "Command line"): a thin Typer skin over the library.

This module builds the app and registers the commands, one module per group: `vqtok.cli.files`
(encode, decode, reconstruct), `vqtok.cli.inspect` (info, models, remap build),
`vqtok.cli.train_convert` (train, convert), `vqtok.cli.export` (export) and `vqtok.cli.pack`
(pack). Commands parse their
options, call the library and print: results on stdout (a table, or JSON with ``--json``), the
progress bar and messages on stderr. Exit status 0 when everything worked, 1 when an input failed
or held bad data (after the other inputs were done, with a summary), 2 for usage errors. Shared
machinery is in `vqtok.cli.support`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from vqtok.cli.export import export
from vqtok.cli.files import decode, encode, reconstruct
from vqtok.cli.help import Command, Group
from vqtok.cli.inspect import info, models, remap_app
from vqtok.cli.pack import pack
from vqtok.cli.support import stop_on_sigterm
from vqtok.cli.train_convert import convert, train

app = typer.Typer(
    name="vqtok",
    cls=Group,
    help="Turn video into discrete tokens and back.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        from vqtok import __version__

        typer.echo(f"vqtok {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Turn video into discrete tokens and back."""
    stop_on_sigterm()


app.add_typer(remap_app, name="remap")
for command in (train, convert, export, pack, encode, decode, info, models, reconstruct):
    app.command(cls=Command)(command)
