"""Batch runs of the file commands: one outcome per input, the progress bar, the summary.

`run_jobs` runs the library's per-file results, printing each failure as one line as it happens
(the other inputs go on); `print_summary` renders the outcomes (a table, or JSON with
``--json``) and `exit_for` gives the exit status: 1 when any input failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from vqtok.cli.support import emit_json, err, fail_line, out, print_table
from vqtok.errors import VqtokError
from vqtok.pipeline.plan import Job

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
