"""Batch runs of the file commands: one outcome per input, the progress bar, the summary.

`JobReport` accounts for the library's per-file results as the command iterates them, printing
each failure as one line as it happens (the other inputs go on; `run_jobs` drives a callable's
results through one); `print_summary` renders the outcomes (a table, or JSON with
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
)
from rich.table import Table
from rich.text import Text

from vqtok.cli.support import emit_json, err, fail_line, out, plural, print_table, reason_of
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
            bar.start([job])
            try:
                yield job, work(job, bar.advance)
            except Exception as e:  # reported (re-raised with --debug) by run_jobs
                yield job, e

    return results


class JobReport:
    """The command line's account of a run, kept while the command iterates the library's
    results: each failure printed as one line as it happens, the progress bar, one `Outcome`
    per job.

    Use as ``with JobReport(run.jobs, quiet, debug) as report:``, then
    ``report.record(job, result)`` for each (job, result or exception) the run yields, with
    ``report.bar``'s ``advance`` and ``start`` as its progress callbacks; ``report.outcomes``
    after the block.
    """

    def __init__(self, jobs: Sequence[Job], quiet: bool, debug: bool) -> None:
        self.jobs = list(jobs)
        self.quiet = quiet
        self.debug = debug
        self._done: dict[Job, Outcome] = {}
        for job in self.jobs:
            if job.error is not None:  # failed while planning (e.g. an output name collision)
                err.print(f"error: {job.source}: {job.error}", markup=False)
                self._done[job] = Outcome(job, "failed", error=job.error)
            elif job.done:
                self._done[job] = Outcome(job, "skipped")
            elif job.note is not None and not quiet:
                err.print(f"note: {job.target}: {job.note}; replacing it", markup=False)
        # no bar when stderr is a file or pipe: logs get the error lines, not a final bar frame
        pending = sum(job.size for job in self.jobs if job not in self._done)
        self.bar = RunProgress(err, len(self.jobs), disable=quiet or not err.is_terminal,
                               pending_bytes=pending)

    def __enter__(self) -> JobReport:
        self.bar.__enter__()
        self.bar.skip(len(self._done))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def record(self, job: Job, result: Any) -> None:
        """Account for one job's result, or the exception that stopped it (re-raised with
        ``debug``)."""
        self.bar.finish()
        if isinstance(result, BaseException):
            if self.debug:
                raise result
            err.print(fail_line(result, job.source), markup=False)
            # the table and JSON rows name the input already: keep just the reason
            self._done[job] = Outcome(job, "failed", error=reason_of(result))
            return
        warnings = tuple(getattr(result, "warnings", ()))
        if not self.quiet:
            for w in warnings:
                err.print(f"warning: {job.source}: {w}", markup=False)
        self._done[job] = Outcome(job, "ok", result, warnings=warnings)

    @property
    def outcomes(self) -> list[Outcome]:
        """One `Outcome` per job, in job order."""
        return [self._done[job] for job in self.jobs]


def run_jobs(jobs: Sequence[Job], results: Results, quiet: bool, debug: bool) -> list[Outcome]:
    """Run every job (done ones are skipped) through a `JobReport`.

    Returns:
        one `Outcome` per job, in job order.
    """
    with JobReport(jobs, quiet, debug) as report:
        for job, result in results(report.bar):
            report.record(job, result)
    return report.outcomes


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


def eta_seconds(
    *,
    frames: int,
    busy: float,
    left_in_flight: int,
    bytes_left: int,
    frames_per_byte: float | None,
    files_left: int,
    frames_per_file: float | None,
) -> float | None:
    """Seconds left at the throughput measured so far.

    Args:
        frames: frames done so far; busy: seconds spent on them (frames / busy is the
            measured frames/s).
        left_in_flight: frames still to do in the file(s) in flight (the reader's expected
            count minus the frames done).
        bytes_left: input bytes of the files not started yet.
        frames_per_byte: frames per input byte of the files started so far (None: unknown);
            estimates the frames of the files not started from their size.
        files_left: files not started; frames_per_file: mean frames of the files started,
            the estimate used where no size is known (None: unknown).

    Returns:
        the estimate in seconds, or None before the first frame (no throughput yet) or when
        files are left whose frame count cannot be estimated.
    """
    if frames <= 0 or busy <= 0:
        return None
    if bytes_left > 0 and frames_per_byte is not None:
        not_started = bytes_left * frames_per_byte
    elif files_left > 0:
        if frames_per_file is None:
            return None
        not_started = files_left * frames_per_file
    else:
        not_started = 0.0
    return (max(left_in_flight, 0) + not_started) / (frames / busy)


def _clock(seconds: float | None) -> str:
    """``0:01:05`` as rich's time columns write it; ``-:--:--`` when unknown."""
    if seconds is None:
        return "-:--:--"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class _FramesColumn(ProgressColumn):
    """``123 frames  45.6 frames/s`` from the task's own fields."""

    def render(self, task: Task) -> Text:
        frames = task.fields.get("frames", 0)
        elapsed = task.fields.get("busy", 0.0)
        rate = frames / elapsed if elapsed > 0 else 0.0
        return Text(f"{plural(frames, 'frame')}  {rate:6.1f} frames/s",
                    style="progress.data.speed")


class _EtaColumn(ProgressColumn):
    """The time left that `RunProgress` estimates from frames/s (task field ``eta``)."""

    def render(self, task: Task) -> Text:
        return Text(_clock(task.fields.get("eta")), style="progress.remaining")


class RunProgress:
    """One bar per run on stderr: files done (fractional within a file), frames, frames/s, ETA.

    ``advance(frames, expected)`` is the pipeline's progress callback; ``expected`` is the
    frame count of the file (or batch) in flight, so the bar moves smoothly through long files.
    The ETA is `eta_seconds`: the frames left (of the files in flight, and of the files not
    started, estimated from their size in bytes at the frames per byte seen so far) at the
    frames/s measured so far; a run of one long file and many short ones is not timed by files.

    Args:
        console: where the bar is drawn.
        files: the run's files (done ones included, see `skip`).
        disable: draw nothing.
        pending_bytes: input bytes of the files still to do.
    """

    def __init__(self, console: Console, files: int, disable: bool = False,
                 pending_bytes: int = 0) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("files"),
            _FramesColumn(),
            _EtaColumn(),
            console=console,
            disable=disable,
            transient=False,
        )
        self.task = self.progress.add_task("", total=files, frames=0, busy=0.0, eta=None)
        self.unstarted = files  # files neither skipped nor started
        self.files_done = 0
        self.frames = 0
        self.in_file = 0
        self.span = 1
        self.started = 0.0
        self.busy = 0.0
        self.bytes_left = pending_bytes  # of the files not started
        self.flight_bytes = 0  # of the file(s) in flight
        self.expected = 0  # frames of the file(s) in flight, as the reader expects
        self.seen_bytes = 0  # of the files started before the ones in flight
        self.seen_frames = 0  # their frames
        self.seen_files = 0

    def __enter__(self) -> RunProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def start(self, jobs: Sequence[Job]) -> None:
        """A file (or a batch of files encoded together) begins."""
        if self.span and (self.flight_bytes or self.in_file):  # the last flight's measure
            self.seen_bytes += self.flight_bytes
            self.seen_frames += max(self.expected, self.in_file)
            self.seen_files += self.span
        self.started = time.perf_counter()
        self.in_file = 0
        self.expected = 0
        self.span = len(jobs)
        self.unstarted = max(self.unstarted - self.span, 0)
        self.flight_bytes = sum(job.size for job in jobs)
        self.bytes_left = max(self.bytes_left - self.flight_bytes, 0)
        self.progress.update(self.task, description=", ".join(j.source.name for j in jobs))

    def advance(self, frames: int, expected: int) -> None:
        self.frames += frames
        self.in_file += frames
        self.expected = max(expected, 0)
        within = 0.0 if expected <= 0 else self.span * min(1.0, self.in_file / expected)
        busy = self.busy + time.perf_counter() - self.started
        self.progress.update(self.task, completed=self.files_done + within,
                             frames=self.frames, busy=busy, eta=self.eta(busy))

    def eta(self, busy: float) -> float | None:
        """`eta_seconds` of the run now, ``busy`` seconds into its work."""
        known_bytes = self.seen_bytes + self.flight_bytes
        known_frames = self.seen_frames + max(self.expected, self.in_file)
        known_files = self.seen_files + self.span
        return eta_seconds(
            frames=self.frames, busy=busy, left_in_flight=self.expected - self.in_file,
            bytes_left=self.bytes_left,
            frames_per_byte=known_frames / known_bytes if known_bytes and known_frames else None,
            files_left=self.unstarted,
            frames_per_file=known_frames / known_files if known_frames else None,
        )

    def finish(self) -> None:
        """A file is done (files of a batch finish one after the other)."""
        self.files_done += 1
        now = time.perf_counter()
        self.busy += now - self.started
        self.started = now
        self.progress.update(self.task, completed=self.files_done, busy=self.busy,
                             eta=self.eta(self.busy))

    def skip(self, files: int = 1) -> None:
        """Files done before the run (complete outputs, or failed while planning)."""
        self.files_done += files
        self.unstarted = max(self.unstarted - files, 0)
        self.progress.update(self.task, completed=self.files_done)
