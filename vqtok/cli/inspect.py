"""The commands that describe and count: ``vqtok info``, ``vqtok models`` and ``vqtok remap
build``.

They call `vqtok.pipeline.describe` (info, models) and `vqtok.pipeline.remap_build` (remap build)
and print the result as a table, or JSON with ``--json``. Registered on the app by
`vqtok.cli.app`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from vqtok.cli.help import Command, Group
from vqtok.cli.support import (
    DebugOpt,
    JsonOpt,
    ModelDirOpt,
    QuietOpt,
    as_usage_error,
    emit_json,
    err,
    handle_errors,
    print_table,
)

remap_app = typer.Typer(help="Used-index (remap) files.", no_args_is_help=True, cls=Group)


@remap_app.command("build", cls=Command)
def remap_build(
    codes: Annotated[list[Path], typer.Argument(help="Index files or directories.")],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="The remap file: .npy (one level) or .safetensors (several).")],
    min_count: Annotated[str, typer.Option(
        metavar="N|N0,N1,...",
        help="Keep codes seen N times or more, at each level; or one N per level.")] = "1",
    top: Annotated[int, typer.Option(min=0, help="How many top codes to show.")] = 10,
    level: Annotated[
        int | None,
        typer.Option(min=0, help="Files with several codebooks / levels: count only this one."),
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Count code usage over index files and write the used-index (remap) file, one used set
    per codebook / level."""
    from vqtok.pipeline.remap_build import build_remap

    thresholds = as_usage_error(lambda: _parse_counts(min_count), "--min-count")
    with handle_errors(debug):
        report = build_remap(codes, output, thresholds, top, level)
    if as_json:
        emit_json(report.to_dict())
        return
    table = Table(show_header=False)
    table.add_column("what")
    table.add_column("value")
    rows = [("model", report.model), ("files", str(report.files))]
    if len(report.levels) == 1:
        rows += [("indices", str(report.tokens)), *_level_rows(report.levels[0])]
    else:
        rows.append(("indices", f"{report.tokens} per level, {len(report.levels)} levels"))
    rows.append(("written", str(report.output)))
    for key, value in rows:
        table.add_row(key, value)
    print_table(table)
    if len(report.levels) > 1:
        print_table(_levels_table(report.levels))


def _parse_counts(text: str) -> int | list[int]:
    """``"2"`` -> 2; ``"4,2,1,1"`` -> [4, 2, 1, 1] (one threshold per level)."""
    from vqtok.errors import ConfigError

    try:
        values = [int(part) for part in text.split(",")]
    except ValueError as e:
        raise ConfigError(f"expected N or N0,N1,... (integers >= 1), got {text!r}") from e
    if min(values) < 1:
        raise ConfigError(f"thresholds must be >= 1, got {text!r}")
    return values[0] if len(values) == 1 else values


def _used_text(level: Any) -> str:
    share = level.used / level.codebook_size
    threshold = f", min count {level.min_count}" if level.min_count > 1 else ""
    return f"{level.used} of {level.codebook_size} ({share:.1%}){threshold}"


def _level_rows(level: Any) -> list[tuple[str, str]]:
    return [
        ("codes used", _used_text(level)),
        ("perplexity", f"{level.perplexity:.2f}"),
        ("bits per index", f"{level.bits_per_index:.3f}"),
        ("top codes", ", ".join(f"{c} ({n})" for c, n in level.top)),
    ]


def _levels_table(levels: Any) -> Table:
    table = Table()
    for column in ("level", "codes used", "perplexity", "bits per index", "top codes"):
        table.add_column(column)
    for level in levels:
        top = ", ".join(f"{c} ({n})" for c, n in level.top[:3])
        table.add_row(str(level.level), _used_text(level), f"{level.perplexity:.2f}",
                      f"{level.bits_per_index:.3f}", top)
    return table


def info(
    path: Annotated[
        Path, typer.Argument(help="A model directory or name, an index file, a token dataset "
                                  "or a video.")
    ],
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Describe a model (directory or name), an index file, a token dataset or a video."""
    from vqtok.pipeline.describe import describe_path

    with handle_errors(debug):
        facts = describe_path(path)
    if as_json:
        emit_json(facts)
        return
    table = Table(title=f"{facts['kind']}: {path}", show_header=False)
    table.add_column("key")
    table.add_column("value", overflow="fold")
    if "parameters" in facts:  # as the model cards write it (checkpoint.parameter_count)
        facts["parameters"] = f"{facts['parameters']:,} (every value in model.safetensors)"
    for key, value in _table_rows(facts):
        if key not in ("kind", "path"):
            table.add_row(key, json.dumps(value) if not isinstance(value, str) else value)
    print_table(table)


def _table_rows(facts: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested objects as dotted rows (``source.file``) for the table; ``--json`` keeps them
    nested."""
    rows: list[tuple[str, Any]] = []
    for key, value in facts.items():
        if isinstance(value, dict) and value:
            rows += _table_rows(value, f"{prefix}{key}.")
        else:
            rows.append((prefix + key, value))
    return rows


def models(
    model_dir: ModelDirOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """List the models found (shipped models/, --model-dir, $VQTOK_MODELS)."""
    from vqtok.pipeline.describe import describe_models

    with handle_errors(debug):
        rows = describe_models(model_dir or [])
    if as_json:
        emit_json(rows)
        return
    if not rows:
        if not quiet:
            err.print("no models found; add a directory with --model-dir or $VQTOK_MODELS")
        return
    table = Table()
    for column in rows[0]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    print_table(table)
