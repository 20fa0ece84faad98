"""``vqtok encode --engine ray``: the options of a Ray run, and how its outcome is shown.

Parses nothing of its own beyond the Ray flags (``--address``, ``--workers``,
``--gpus-per-worker``); calls `vqtok.pipeline.ray_run.encode_dataset` and renders its report:
one ``error: <input>: <reason>`` line on stderr per clip that failed (the same rows as the
dataset's ``_errors.csv``), a summary table (or ``--json``) on stdout, and exit status 1 when any
clip failed.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from vqtok.cli.support import emit_json, err, print_table, usage_error

__all__ = ["AddressOpt", "Engine", "EngineOpt", "GpusOpt", "WorkersOpt", "encode_on_ray"]


class Engine(str, Enum):
    local = "local"
    ray = "ray"


EngineOpt = Annotated[Engine, typer.Option(
    help="local: this process writes index files; ray: a Ray cluster writes a token dataset "
    "(Parquet shards) to -o, a folder or URL.")]
AddressOpt = Annotated[str | None, typer.Option(
    metavar="ADDR", help="--engine ray: the cluster (ray://host:10001, auto; default: "
    "RAY_ADDRESS, else a local cluster).")]
WorkersOpt = Annotated[int, typer.Option(min=1, help="--engine ray: model actors (each loads "
                                         "the model once).")]
GpusOpt = Annotated[float, typer.Option(min=0, metavar="G", help="--engine ray: GPUs per "
                                        "model actor (0: CPU actors).")]


def check_ray_flags(engine: Engine, address: str | None, workers: int, gpus: float,
                    shard: str | None, fmt: Any) -> None:
    """Refuse flags that do not fit the engine (usage errors, exit 2)."""
    if engine is Engine.local:
        for flag, given in (("--address", address is not None), ("--workers", workers != 1),
                            ("--gpus-per-worker", gpus != 0)):
            if given:
                raise usage_error(flag, "applies to --engine ray only; add --engine ray")
        return
    if shard is not None:
        raise usage_error("--shard", "splits local runs; --engine ray spreads the clips over "
                          "the cluster itself")
    if fmt is not None:
        raise usage_error("--format", "--engine ray writes a token dataset (Parquet), not "
                          "index files; drop --format")


def encode_on_ray(inputs: list[str], output: str, *, model: Any, model_dirs: Any, options: Any,
                  address: str | None, workers: int, gpus: float, device: str, dtype: Any,
                  overwrite: bool, quiet: bool, as_json: bool) -> None:
    """Run `encode_dataset` and render its report; exits 1 when a clip failed."""
    from vqtok.pipeline.ray_run import RayOptions, encode_dataset

    ray_options = RayOptions(address=address, workers=workers, gpus_per_worker=gpus)
    dtype = None if dtype is None else getattr(dtype, "value", dtype)  # the workers check it
    with _bar(quiet or as_json or not err.is_terminal) as progress:
        report = encode_dataset(inputs, output, model=model, model_dirs=model_dirs or (),
                                options=options, ray_options=ray_options, device=device,
                                dtype=dtype, overwrite=overwrite, progress=progress,
                                quiet=quiet or as_json)
    for _key, source, reason in report.errors:
        err.print(f"error: {source}: {reason}", markup=False)
    if as_json:
        facts = report.to_dict()
        facts["errors"] = [{"key": k, "input": s, "reason": r} for k, s, r in report.errors]
        emit_json(facts)
    else:
        table = Table(show_header=False)
        for name, value in (("dataset", report.output), ("rows", f"{report.rows:,}"),
                            ("written", f"{report.written:,} (skipped {report.skipped:,} "
                             "already there)"),
                            ("failed", f"{report.failed:,} (see _errors.csv)"),
                            ("shards", f"{report.shards:,} ({report.shards_written} new)")):
            table.add_row(name, value)
        print_table(table)
    if report.failed:
        raise typer.Exit(1)


class _bar:
    """A clips bar on stderr (files done of this run), or nothing when disabled."""

    def __init__(self, disable: bool) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("clips"),
                                 TimeRemainingColumn(), console=err, disable=disable)
        self.task: Any = None

    def __enter__(self) -> Any:
        self.progress.__enter__()

        def advance(outcome: Any, done: int, total: int) -> None:
            if self.task is None:
                self.task = self.progress.add_task("", total=total)
            self.progress.update(self.task, completed=done, description=outcome.key)

        return advance

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)
