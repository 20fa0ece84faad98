"""Time and peak extra memory of one workload, measured in a freshly spawned child process.

Shared by the hand-run benchmarks (see benchmarks/README.md). Each measurement runs in its own
``multiprocessing`` spawn child, so the peaks of one workload cannot pile onto the next and a
workload that needs more memory than the child's address-space cap (``RLIMIT_AS``) is reported
as "out of memory" instead of taking the machine down.

Memory is the peak *extra* resident memory: the child builds its inputs and modules, resets
the kernel's high-water mark (``/proc/self/clear_refs``, Linux >= 4.0), runs the workload and
reads ``VmHWM`` back; the difference to ``VmRSS`` before the runs is the peak. Time is the
median of the repeats after the warm-up.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import resource
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

GIB = 2**30

# A builder returns (step, summarise): step() runs the measured work once; summarise(out) turns
# the first call's output into a small picklable value the parent compares across runners.
Step = tuple[Callable[[], Any], Callable[[Any], Any]]


@dataclass(frozen=True)
class Settings:
    """How one workload is measured (the same for every runner of a run)."""

    threads: int  # torch.set_num_threads in the child
    warmup: int  # untimed calls first
    repeats: int  # timed calls at most ...
    budget_s: float  # ... and stop once they add up to this; a slower call is timed once
    mem_cap_gib: float  # RLIMIT_AS of the child (lowered to the memory available)
    timeout_s: float  # wall-clock limit of the child
    # CUDA reserves far more address space than it uses: a capped child cannot even start it
    cap_address_space: bool = True


@dataclass
class Result:
    """One runner's measurement; ``times`` is empty unless ``status == "ok"``."""

    case: str
    runner: str
    status: str = "ok"  # "ok" | "out of memory" | "killed (...)" | "timed out" | "error: ..."
    times: list[float] = field(default_factory=list)
    peak_mib: float = float("nan")
    cap_gib: float = float("nan")
    check: Any = None  # summarise(first call's output)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")


def meminfo_gib(key: str) -> float:
    """A /proc/meminfo field (``MemTotal``, ``MemAvailable``) in GiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError(f"{key} not in /proc/meminfo")


def loadavg() -> str:
    """The 1 / 5 / 15 minute load averages, as text."""
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _timed_runs(step: Callable[[], Any], settings: Settings) -> tuple[list[float], Any]:
    """Warm-up + repeats; a first call slower than the budget is the only one, and is timed."""
    first = None
    times: list[float] = []
    for i in range(settings.warmup + settings.repeats):
        start = time.perf_counter()
        out = step()
        elapsed = time.perf_counter() - start
        if i == 0:
            first = out
        if i >= settings.warmup or elapsed > settings.budget_s:
            times.append(elapsed)
        if sum(times) > settings.budget_s:
            break
    return times, first


def child(build: Callable[[], Step], label: tuple[str, str], settings: Settings,
          no_grad: bool, conn: Any) -> None:
    """Build and measure one workload in this (child) process; sends a `Result` to ``conn``."""
    result = Result(*label, cap_gib=settings.mem_cap_gib)
    if settings.cap_address_space:
        cap = int(settings.mem_cap_gib * GIB)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    # if memory runs out anyway, the kernel kills this child first, not someone else's work
    Path("/proc/self/oom_score_adj").write_text("1000")
    torch.set_num_threads(settings.threads)
    try:
        step, summarise = build()
        with torch.no_grad() if no_grad else torch.enable_grad():
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            base_kib = _status_kib("VmRSS")
            result.times, first = _timed_runs(step, settings)
            result.peak_mib = (_status_kib("VmHWM") - base_kib) / 1024
        result.check = summarise(first)
    except Exception as e:  # noqa: BLE001  (any failure is recorded, the run goes on)
        text = str(e)
        memory = isinstance(e, MemoryError) or "alloc" in text or "memory" in text.lower()
        result.status = "out of memory" if memory else f"error: {text.splitlines()[0][:120]}"
        result.times = []
        if not memory:
            traceback.print_exc()
    conn.send(result)
    conn.close()


def run_in_child(build: Callable[[], Step], label: tuple[str, str], settings: Settings,
                 no_grad: bool = False) -> Result:
    """Measure ``build()``'s workload in a freshly spawned interpreter.

    Args:
        build: picklable (a module-level function or a ``functools.partial`` of one) callable
            that builds the inputs and returns ``(step, summarise)``.
        label: ``(case, runner)`` names carried into the `Result`.
        settings: measurement settings; the memory cap is lowered to what is available now.
        no_grad: run the calls under ``torch.no_grad()``.

    Returns:
        The child's `Result`, or one whose status says how the child ended (killed by a
        signal, died, timed out).
    """
    # never let a child take memory the other processes on the machine hold
    cap = min(settings.mem_cap_gib, round(meminfo_gib("MemAvailable") - 0.5, 1))
    settings = dataclasses.replace(settings, mem_cap_gib=cap)
    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child, args=(build, label, settings, no_grad, send))
    proc.start()
    send.close()
    answered = receive.poll(settings.timeout_s)  # True on data and on EOF (child gone)
    result = None
    if answered:
        try:
            result = receive.recv()
        except EOFError:  # the child died before sending
            result = None
    proc.join(5.0)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if result is None:
        code = proc.exitcode
        status = f"killed (signal {-code})" if code and code < 0 else f"died (exit {code})"
        result = Result(*label, status=status if answered else "timed out", cap_gib=cap)
    return result


def write_section(path: Path, heading: str, body: list[str]) -> None:
    """Replace the section that starts at the line ``heading`` (up to the next ``## ``) with
    ``body``, or append ``body`` when there is none; other sections are kept as they are."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        lines = [*lines, "", *body]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        lines = [*lines[:start], *body, *([""] if end < len(lines) else []), *lines[end:]]
    path.write_text("\n".join(lines).rstrip("\n") + "\n")
