"""The ``vqtok pack`` command: index files -> a token dataset (`vqtok.pipeline.pack`).

Registered on the main app by `vqtok.cli.app`. It parses the options, calls
`vqtok.pipeline.pack.pack_dataset` and renders: the progress bar (files, rows, MB) on stderr from
the `PackProgress` records the library reports, the summary on stdout (a table, or JSON).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from vqtok.cli.support import (
    DebugOpt,
    JsonOpt,
    QuietOpt,
    emit_json,
    err,
    handle_errors,
    print_table,
)


class Layout(str, Enum):
    parquet = "parquet"
    megatron = "megatron"
    mds = "mds"
    litdata = "litdata"
    webdataset = "webdataset"


class Flatten(str, Enum):
    interleave = "interleave"
    offset = "offset"
    levels = "levels"


def _bar(disable: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files  {task.fields[rows]} rows  {task.fields[mb]:.1f} MB"),
        TimeRemainingColumn(),
        console=err,
        disable=disable,
    )


def pack(
    codes: Annotated[list[Path], typer.Argument(help="Index files or directories.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The dataset directory.")],
    shard_size: Annotated[
        float, typer.Option("--shard-size", metavar="MB",
                            help="Start a new shard at this many MB of (uncompressed) indices.")
    ] = 256,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace another dataset in the directory.")
    ] = False,
    layout: Annotated[
        Layout, typer.Option("--format", help="The training stack's layout.")
    ] = Layout.parquet,
    flatten: Annotated[
        Flatten | None,
        typer.Option(help="Multi-level indices as (t, h, w, level) in order (interleave), with "
                          "level l's ids + l * codebook size (offset), or arrays (levels: "
                          "parquet, mds, webdataset). Default: levels, else interleave."),
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Pack index files of one model into a token dataset: Parquet shards + _vqtok.json
    (resumable), or Megatron, MDS, LitData or WebDataset files (--format)."""
    from vqtok.pipeline.pack import PackProgress, pack_dataset

    if not shard_size > 0:
        raise typer.BadParameter(f"must be positive, got {shard_size}", param_hint="--shard-size")
    with handle_errors(debug), _bar(quiet or as_json or not err.is_terminal) as bar:
        task = bar.add_task("checking", total=None, rows=0, mb=0.0)

        def show(p: PackProgress) -> None:
            bar.update(task, description="checking" if p.stage == "check" else "packing",
                       completed=p.files, total=p.total, rows=p.rows, mb=p.index_bytes / 1e6)

        report = pack_dataset(codes, output, shard_size, overwrite, show, format=layout.value,
                              flatten=None if flatten is None else flatten.value)
    if as_json:
        emit_json(report.to_dict())
        return
    _print_report(report)


def _print_report(report: Any) -> None:
    table = Table(show_header=False)
    table.add_column("what")
    table.add_column("value")
    reused = report.shards - report.written
    rows = [
        ("dataset", str(report.output)),
        ("format", f"{report.layout}, flatten {report.flatten}"),
        ("model", report.model),
        ("vocabulary", f"{report.vocab} ({report.dtype})" if report.token_vocab == report.vocab
         else f"{report.vocab} per level; tokens {report.token_vocab} ({report.dtype})"),
        ("shards", f"{report.shards}" + (f" ({reused} kept from an earlier run)" if reused
                                         else "")),
        ("rows", f"{report.rows:,}"),
        ("tokens", f"{report.tokens:,}"),
        ("bytes", f"{report.bytes:,} (indices uncompressed: {report.index_bytes:,})"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    print_table(table)
