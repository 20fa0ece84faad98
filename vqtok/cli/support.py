"""What the ``vqtok`` commands share: error lines, batch runs, the progress bar, summaries.

Kept apart from `vqtok.cli.app` so that each command there stays parse -> call -> render. Results go
to ``out`` (stdout), the progress bar and messages to ``err`` (stderr). A `VqtokError` (or an
``OSError``) becomes one line ``error: <path>: <reason>`` and exit status 1, with a traceback
only under ``--debug``.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from vqtok.errors import ConfigError, VqtokError
from vqtok.pipeline.plan import Job, parse_shard, shard, shard_from_env

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class DType(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Format(str, Enum):
    npy = "npy"
    safetensors = "safetensors"


# Options shared by several commands.
ModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", metavar="NAME|DIR", help="Model name or directory.")
]
ModelDirOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--model-dir", metavar="DIR",
        help="Extra directory to look for model names in (repeatable).",
    ),
]
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps|xpu(:\d+)?")


def _check_device(value: str) -> str:
    if not _DEVICE.fullmatch(value):
        raise usage_error("--device", f"unknown device {value!r}; use auto, cpu, cuda or cuda:N")
    return value


DeviceOpt = Annotated[
    str,
    typer.Option(callback=_check_device, help="auto (CUDA if available), cpu, cuda or cuda:N."),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print results as JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or warnings.")]
ChunkOpt = Annotated[int, typer.Option(min=1, help="Frames per streaming step (bounds memory).")]


def print_table(table: Table) -> None:
    """A table on stdout: fitted to a terminal's width; at its natural width when stdout is a
    pipe or a log, so that no path or message is folded mid-name at 80 columns."""
    if out.is_terminal:
        out.print(table)
    else:
        Console(highlight=False, width=1_000_000).print(table)  # a table takes only what it needs


def emit_json(data: Any) -> None:
    """Machine-readable results on stdout: plain JSON, no colour, no wrapping."""
    typer.echo(json.dumps(data, indent=2))


def fail_line(error: BaseException, path: Path | None = None) -> str:
    """``error: <path>: <reason>`` on one line; ``path`` names the input when the error
    does not name a file itself."""
    if isinstance(error, VqtokError):
        text = error.cli_message if error.path is None else f"{error.path}: {error.cli_message}"
        named = error.path is not None
    elif isinstance(error, OSError) and error.filename is not None:
        text, named = f"{error.filename}: {error.strerror or error}", True
    else:  # not a user error: say what it was and how to see where
        text = f"{type(error).__name__}: {error} (rerun with --debug for the traceback)"
        named = False
    if path is not None and not named:
        text = f"{path}: {text}"
    return "error: " + " ".join(text.split())  # always one line


@contextmanager
def handle_errors(debug: bool) -> Iterator[None]:
    """Turn library errors into one stderr line and exit 1 (a traceback with ``--debug``)."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.BadParameter):
        raise
    except KeyboardInterrupt:
        err.print("error: interrupted", markup=False)
        raise typer.Exit(130) from None
    except Exception as e:  # a bug gets one line too; --debug shows it
        if debug:
            raise
        err.print(fail_line(e), markup=False)
        raise typer.Exit(1) from None


def usage_error(param: str, message: str) -> typer.Exit:
    """Print the one line ``error: <option>: <what is wrong>`` and return the exit (status 2)
    to raise."""
    err.print(f"error: {param}: " + " ".join(message.split()), markup=False)
    return typer.Exit(2)


def as_usage_error(fn: Callable[[], Any], param: str) -> Any:
    """Run an option parser; its ConfigError is a usage error (exit 2) naming the option."""
    try:
        return fn()
    except ConfigError as e:
        raise usage_error(param, e.cli_message) from None


def parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"expected HxW such as 256x448, got {text!r}") from None
    if height < 1 or width < 1:
        raise ConfigError(f"sizes must be positive, got {text!r}")
    return height, width


def device_for_rank(device: str) -> str:
    """``auto`` under torchrun picks this process's GPU (LOCAL_RANK)."""
    import torch

    local = os.environ.get("LOCAL_RANK")
    if device == "auto" and local is not None and torch.cuda.is_available():
        return f"cuda:{local}"
    return device


def check_runtime(device: str, dtype: DType | None, quiet: bool) -> Any:
    """The device and compute dtype a command will use; a device or dtype this machine cannot
    run is a usage error (exit 2), a slow one a warning (unless ``quiet``).

    Returns:
        the dtype name to load with (``"fp32"`` where bf16 falls back), or None.
    """
    import torch

    from vqtok.api import SlowDtypeWarning, resolve_device, resolve_dtype

    resolved = as_usage_error(lambda: resolve_device(device_for_rank(device)), "--device")
    if dtype is None:
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SlowDtypeWarning)
        chosen = as_usage_error(lambda: resolve_dtype(dtype.value, resolved), "--dtype")
    for warning in caught:
        if not quiet and issubclass(warning.category, SlowDtypeWarning):
            err.print(f"warning: --dtype {dtype.value}: {warning.message}", markup=False)
    return "fp32" if chosen == torch.float32 else dtype.value


def load_tokenizer(
    model: str | None, model_dir: list[Path] | None, device: str, dtype: str | None
) -> Any:
    """Load a model; ``dtype`` as `check_runtime` returns it."""
    from vqtok.api import load

    with download_bar(not err.is_terminal) as on_download:
        return load(model, device=device_for_rank(device), dtype=dtype,
                    extra_dirs=model_dir or [], on_download=on_download)


@contextmanager
def download_bar(disable: bool) -> Iterator[Callable[[str, int, int | None], None]]:
    """A bytes bar per file fetched from the Hugging Face Hub, on stderr.

    Yields the library's download callback (`vqtok.io.hub.DownloadFn`). Nothing is drawn when the
    files are already cached (no bytes arrive) or when ``disable``.
    """
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=err, disable=disable,
    )
    tasks: dict[str, Any] = {}

    def report(name: str, done: int, total: int | None) -> None:
        if not tasks:
            bar.start()  # only once bytes arrive: a cached model draws nothing
        if name not in tasks:
            tasks[name] = bar.add_task(f"downloading {name}", total=total)
        bar.update(tasks[name], completed=done, total=total)

    try:
        yield report
    finally:
        if tasks:
            bar.stop()


# ------------------------------------------------------------------------------- batch runs


@dataclass
class Outcome:
    """One job of a run: ``status`` is ok, skipped or failed; ``result`` or ``error``."""

    job: Job
    status: str
    result: Any = None
    error: str | None = None
    warnings: tuple[str, ...] = ()


ProgressFn = Callable[[int, int], None]  # as vqtok.pipeline.encode.ProgressFn (not imported: torch)
Results = Callable[["RunProgress"], Iterator[tuple[Job, Any]]]
"""Given the progress bar, yields (job, result or the exception that stopped it)."""


def one_by_one(jobs: Sequence[Job], work: Callable[[Job, ProgressFn], Any]) -> Results:
    """`Results` of calling ``work(job, progress)`` for each job not done yet."""

    def results(bar: RunProgress) -> Iterator[tuple[Job, Any]]:
        for job in jobs:
            if job.done:
                continue
            bar.start([job.source.name])
            try:
                yield job, work(job, bar.advance)
            except Exception as e:  # reported (re-raised with --debug) by run_jobs
                yield job, e

    return results


def run_jobs(jobs: Sequence[Job], results: Results, quiet: bool, debug: bool) -> list[Outcome]:
    """Run every job (done ones are skipped), printing each failure as it happens.

    Returns:
        one `Outcome` per job, in job order.
    """
    done: dict[Job, Outcome] = {}
    for job in jobs:
        if job.error is not None:  # failed while planning (e.g. an output name collision)
            err.print(f"error: {job.source}: {job.error}", markup=False)
            done[job] = Outcome(job, "failed", error=job.error)
        elif job.done:
            done[job] = Outcome(job, "skipped")
        elif job.note is not None and not quiet:
            err.print(f"note: {job.target}: {job.note}; replacing it", markup=False)
    # no bar when stderr is a file or pipe: logs get the error lines, not a final bar frame
    with RunProgress(err, len(jobs), disable=quiet or not err.is_terminal) as bar:
        bar.skip(len(done))
        for job, result in results(bar):
            bar.finish()
            if isinstance(result, BaseException):
                if debug:
                    raise result
                err.print(fail_line(result, job.source), markup=False)
                # the table and JSON rows name the input already: keep just the reason
                reason = result.cli_message if isinstance(result, VqtokError) else str(result)
                done[job] = Outcome(job, "failed", error=" ".join(reason.split()))
                continue
            warnings = tuple(getattr(result, "warnings", ()))
            if not quiet:
                for w in warnings:
                    err.print(f"warning: {job.source}: {w}", markup=False)
            done[job] = Outcome(job, "ok", result, warnings=warnings)
    return [done[job] for job in jobs]


def print_summary(outcomes: list[Outcome], describe: Callable[[Any], str], as_json: bool) -> None:
    """Results on stdout: one line per file, a table for several, or JSON."""
    if as_json:
        rows = [_outcome_dict(o) for o in outcomes]
        emit_json(rows)
        return
    if len(outcomes) == 1:
        o = outcomes[0]
        if o.status == "ok":
            out.print(f"{o.job.source} -> {o.result.target}: {_details(o, describe)}",
                      markup=False)
        elif o.status == "skipped":
            out.print(f"{o.job.source} -> {o.job.target}: skipped (already done)", markup=False)
        return
    table = Table(title=None)
    for column in ("input", "output", "status", "details"):
        table.add_column(column, overflow="fold")
    for o in outcomes:
        details = _details(o, describe) if o.status == "ok" else (o.error or "already done")
        table.add_row(str(o.job.source), str(o.job.target), o.status, details)
    print_table(table)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("ok", "skipped", "failed")}
    out.print(f"{counts['ok']} done, {counts['skipped']} skipped, {counts['failed']} failed")


def _details(o: Outcome, describe: Callable[[Any], str]) -> str:
    """What a finished job did, and what it replaced."""
    text = describe(o.result)
    return text if o.job.note is None else f"{text}; replaced a file {o.job.note}"


def _outcome_dict(o: Outcome) -> dict[str, Any]:
    row: dict[str, Any] = {"input": str(o.job.source), "output": str(o.job.target),
                           "status": o.status}
    if o.error is not None:
        row["error"] = o.error
    if o.result is not None:
        row.update(_result_dict(o.result))
    if o.warnings:
        row["warnings"] = list(o.warnings)
    if o.job.note is not None and o.status == "ok":
        row["replaced"] = o.job.note
    return row


def _result_dict(result: Any) -> dict[str, Any]:
    meta = getattr(result, "meta", None)
    if meta is not None:
        return {"output": str(result.target), "frames": meta.encoded.frames,
                "grid": list(meta.grid), "padding": meta.encoded.padding,
                "seconds": round(result.seconds, 3)}
    return {"output": str(result.target), "frames": result.frames,
            "fps": f"{result.fps.numerator}/{result.fps.denominator}",
            "size": list(result.size), "seconds": round(result.seconds, 3)}


def exit_for(outcomes: list[Outcome]) -> None:
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(1)


def my_share(jobs: list[Job], spec: str | None) -> list[Job]:
    """This process's jobs under ``--shard i/n`` or torchrun's RANK / WORLD_SIZE."""
    split = as_usage_error(lambda: parse_shard(spec), "--shard") if spec else shard_from_env()
    return jobs if split is None else shard(jobs, *split)



# ------------------------------------------------------------------------------- progress


class _FramesColumn(ProgressColumn):
    """``123 frames  45.6 frames/s`` from the task's own fields."""

    def render(self, task: Task) -> Text:
        frames = task.fields.get("frames", 0)
        elapsed = task.fields.get("busy", 0.0)
        rate = frames / elapsed if elapsed > 0 else 0.0
        return Text(f"{frames} frames  {rate:6.1f} frames/s", style="progress.data.speed")


class RunProgress:
    """One bar per run on stderr: files done (fractional within a file), frames, frames/s, ETA.

    ``advance(frames, expected)`` is the pipeline's progress callback; ``expected`` is the
    frame count of the file (or batch) in flight, so the bar moves smoothly through long files.
    """

    def __init__(self, console: Console, files: int, disable: bool = False) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("files"),
            _FramesColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=disable,
            transient=False,
        )
        self.task = self.progress.add_task("", total=files, frames=0, busy=0.0)
        self.files_done = 0
        self.frames = 0
        self.in_file = 0
        self.span = 1
        self.started = 0.0
        self.busy = 0.0

    def __enter__(self) -> RunProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def start(self, names: list[str]) -> None:
        """A file (or a batch of files encoded together) begins."""
        self.started = time.perf_counter()
        self.in_file = 0
        self.span = len(names)
        self.progress.update(self.task, description=", ".join(names))

    def advance(self, frames: int, expected: int) -> None:
        self.frames += frames
        self.in_file += frames
        within = 0.0 if expected <= 0 else self.span * min(1.0, self.in_file / expected)
        self.progress.update(
            self.task,
            completed=self.files_done + within,
            frames=self.frames,
            busy=self.busy + time.perf_counter() - self.started,
        )

    def finish(self) -> None:
        """A file is done (files of a batch finish one after the other)."""
        self.files_done += 1
        now = time.perf_counter()
        self.busy += now - self.started
        self.started = now
        self.progress.update(self.task, completed=self.files_done, busy=self.busy)

    def skip(self, files: int = 1) -> None:
        self.files_done += files
        self.progress.update(self.task, completed=self.files_done)
