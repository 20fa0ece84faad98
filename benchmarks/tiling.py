"""Memory and time of ``vqtok encode`` / ``vqtok decode`` by resolution, with and without tiling.

For each size (256², 720p, 1080p, 4K by default) a 17-frame clip with motion is written (a
drifting colour pattern with noise, H.264), then encoded and decoded by the ``vqtok`` command in
a child process, once untiled (``--tile off``) and once under a memory budget (``--max-memory``:
1.5 GB encode / 2 GB decode, 3 / 4 GB at 4K; ``--tile auto`` then tiles and spills as
`vqtok.families.memory` decides). Reported: wall time, the process's peak resident memory
(``ru_maxrss`` of the child: everything, Python and torch included), whether the tiled index
file equals the untiled one, and the machine's float32 matmul rate measured in the
same run. An untiled run whose estimated peak exceeds the memory available is not started.

    .venv/bin/python benchmarks/tiling.py                       # writes RESULTS.md
    .venv/bin/python benchmarks/tiling.py --sizes 256 720x1280 --no-write
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import loadavg, meminfo_gib, write_section  # noqa: E402

import vqtok  # noqa: E402
from vqtok.families.memory import GB, estimate_bytes, peak_bytes  # noqa: E402
from vqtok.io.video_writer import VideoWriter  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).with_name("RESULTS.md")
VQTOK = str(Path(sys.executable).with_name("vqtok"))
FRAMES = 17
BUDGETS = {"encode": 1.5, "decode": 2.0}  # GB; twice that at 4K (the targets)


def matmul_gflops(threads: int) -> float:
    """float32 2048³ torch.mm rate on ``threads`` threads, best of 5."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(5))
    return 2 * 2048**3 / best / 1e9


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def write_clip(path: Path, height: int, width: int) -> None:
    """17 frames of a drifting colour pattern with noise (motion everywhere), H.264."""
    rng = np.random.default_rng(0)
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    with VideoWriter(path, 25, width, height) as writer:
        for t in range(FRAMES):
            planes = [np.sin((x + 7 * t) / (23 + 9 * c)) * np.cos((y - 5 * t) / (31 + 7 * c))
                      for c in range(3)]
            frame = (np.stack(planes, -1) * 90 + 128 + rng.normal(0, 12, (height, width, 3)))
            writer.write(np.clip(frame, 0, 255).astype(np.uint8)[None])


def run(args: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS in GB, status) of one ``vqtok`` command in a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen([VQTOK, *args, "--quiet"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    error = proc.stderr.read().strip() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss / 2**20, "ok" if code == 0 else f"exit {code}: {error[:80]}"


def estimated_gb(model: object, height: int, width: int, steps: int, decode: bool) -> float:
    return peak_bytes(*estimate_bytes(model, height, width, steps, decode)) / GB  # type: ignore[arg-type]


def measure_size(model_name: str, height: int, width: int, folder: Path) -> list[str]:
    """Table rows for one size: untiled and budgeted, encode and decode."""
    tok = vqtok.load(model_name)
    clip = folder / f"clip-{height}x{width}.mp4"
    write_clip(clip, height, width)
    scale = 2.0 if height * width > 1080 * 1920 else 1.0
    rows, outputs = [], {}
    for mode in ("untiled", "budget"):
        for step in ("encode", "decode"):
            codes, video = folder / f"{mode}-{height}.npy", folder / f"{mode}-{height}.mp4"
            source = codes if step == "decode" else clip
            target = video if step == "decode" else codes
            extra = ["--tile", "off"] if mode == "untiled" else \
                ["--max-memory", str(BUDGETS[step] * scale)]
            steps = 16 if step == "encode" else 4
            guess = estimated_gb(tok.model, height, width, steps, step == "decode")
            if mode == "untiled" and guess > meminfo_gib("MemAvailable") - 1:
                rows.append(f"| {height}×{width} | {step} | untiled | — | — | not run: "
                            f"estimated {guess:.1f} GB |")
                continue
            if step == "decode" and not source.exists():
                source = folder / f"budget-{height}.npy"
            seconds, peak, status = run([step, str(source), "-o", str(target), "--model",
                                         model_name, "--overwrite", *extra])
            outputs[(mode, step)] = target
            budget = "" if mode == "untiled" else f" (≤ {BUDGETS[step] * scale:g} GB)"
            rows.append(f"| {height}×{width} | {step} | {mode}{budget} | {seconds:.1f} | "
                        f"{peak:.2f} | {status} (estimate {guess:.1f} GB untiled) |")
    return [*rows, _same(outputs, height, width)]


def _same(outputs: dict[tuple[str, str], Path], height: int, width: int) -> str:
    """A row saying whether the budgeted run's index file equals the untiled run's (decoded
    frames are compared as tensors by the test suite, tests/families/test_tiling.py)."""
    a, b = outputs.get(("untiled", "encode")), outputs.get(("budget", "encode"))
    if a is None or b is None:
        fact = "no untiled run to compare"
    else:
        same = np.array_equal(np.load(a, allow_pickle=False), np.load(b, allow_pickle=False))
        fact = f"indices {'identical' if same else 'DIFFER'}"
    return f"| {height}×{width} | | budget vs untiled | | | {fact} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vqtok-ema-video")
    parser.add_argument("--sizes", nargs="+", default=["256x256", "720x1280", "1080x1920",
                                                       "2160x3840"])
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    gflops = matmul_gflops(os.cpu_count() or 1)
    lines = ["| size | step | run | seconds | peak RSS (GiB) | notes |",
             "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for text in args.sizes:
            height, width = (int(v) for v in text.split("x"))
            for row in measure_size(args.model, height, width, Path(tmp)):
                print(row, flush=True)
                lines.append(row)
    title = "## Tiling: memory and time by resolution (`benchmarks/tiling.py`)"
    if args.model != "vqtok-ema-video":
        title += f", {Path(args.model).name}"
    head = [
        title, "",
        f"{datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, float32 matmul {gflops:.0f} GFLOP/s in the same run, "
        f"load {loadavg()} at the end; model {args.model}, {FRAMES} frames, `vqtok encode` / "
        "`vqtok decode` with the default --chunk 16; peak RSS of the whole process.", "",
    ]
    print("\n".join(head))
    if not args.no_write:
        write_section(RESULTS, head[0], [*head, *lines])


if __name__ == "__main__":
    main()
