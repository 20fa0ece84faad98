"""Throughput of ``vqtok encode --engine ray`` with 1 and 2 workers next to the local engine on
the same clips, in one run (run by hand, not in CI; results are printed, not recorded).

    .venv/bin/python benchmarks/ray.py [--model NAME|DIR] [--clips 8] [--frames 33]
        [--size 128x128] [--workers 1,2] [--address ADDR]

Generates ``--clips`` synthetic clips, encodes them with the local engine
(`vqtok.pipeline.encode.encode_files`, this process, all cores) and then with the Ray engine
(`vqtok.pipeline.ray_run.encode_dataset` into a fresh dataset per run) for each worker count,
on a local Ray cluster of this machine's cores (or ``--address``), each actor reserving
cores / workers CPUs. A Ray row's time includes starting its actors, loading the model once
per actor and their first (slower) encode, not starting the cluster (printed separately); the
local engine's first encode in this process is a warm-up, not timed. Every row checks that its
indices equal the local engine's; the local engine runs first and again last, since on a
shared machine the load drifts during a run (compare rows of one run, read the load it prints).
Needs ``pip install 'vqtok[ray]'``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# this file is named ray.py: keep its folder off the path, or ``import ray`` would import it
_HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import numpy as np  # noqa: E402

from vqtok.io.datasets import TokenDataset  # noqa: E402
from vqtok.io.tokens import load_tokens  # noqa: E402
from vqtok.io.video_writer import VideoWriter  # noqa: E402
from vqtok.pipeline.encode import encode_files  # noqa: E402
from vqtok.pipeline.ray_engine import require_ray  # noqa: E402
from vqtok.pipeline.ray_run import RayOptions, encode_dataset  # noqa: E402


def make_clips(folder: Path, count: int, frames: int, size: tuple[int, int]) -> list[Path]:
    """``count`` moving-gradient clips of ``frames`` frames at 25 fps."""
    height, width = size
    y, x = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    paths = []
    for c in range(count):
        path = folder / f"clip{c:03d}.mp4"
        with VideoWriter(path, 25, width, height) as writer:
            for i in range(frames):
                shift = 0.02 * i + 0.1 * c
                rgb = np.stack([(x + shift) % 1, (y + shift) % 1, (x * y + shift) % 1], -1)
                writer.write((rgb * 255).astype(np.uint8)[None])
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vqtok-ema")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--size", default="128x128", help="HxW")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--address", default=None)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    ray = require_ray()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "clips").mkdir()
        make_clips(root / "clips", args.clips, args.frames, (size[0], size[1]))
        frames = args.clips * args.frames
        rows = []
        # warm-up, not timed: this process's first encode builds torch's kernels for the shapes
        encode_files([str(root / "clips" / "clip000.mp4")], root / "warmup/", model=args.model,
                     device="cpu")
        start = time.perf_counter()
        outcomes = encode_files([str(root / "clips")], root / "local/", model=args.model,
                                device="cpu")
        rows.append(("local", "-", time.perf_counter() - start, "reference"))
        local = {job.target.stem: load_tokens(job.target)[0] for job, _ in outcomes}
        start = time.perf_counter()
        ray.init(address=args.address, num_cpus=None if args.address else cores,
                 include_dashboard=False, log_to_driver=False)
        print(f"ray.init: {time.perf_counter() - start:.1f} s", file=sys.stderr)
        for workers in (int(w) for w in args.workers.split(",")):
            out = root / f"ray-{workers}"
            options = RayOptions(workers=workers, cpus_per_worker=max(1, cores // workers))
            start = time.perf_counter()
            report = encode_dataset([str(root / "clips")], out, model=args.model,
                                    ray_options=options)
            seconds = time.perf_counter() - start
            ds = TokenDataset(out)
            same = report.failed == 0 and all(
                np.array_equal(ds[i]["indices"].numpy(), local[ds[i]["index_file"]])
                for i in range(len(ds))) and len(ds) == len(local)
            rows.append(("ray", str(workers), seconds, "equal" if same else "DIFFERENT"))
        ray.shutdown()
        start = time.perf_counter()  # again, as the load of a shared machine drifts
        encode_files([str(root / "clips")], root / "local2/", model=args.model, device="cpu")
        rows.append(("local", "-", time.perf_counter() - start, "again"))
    print(f"{args.clips} clips x {args.frames} frames {args.size}, model {args.model}, "
          f"{cores} cores, load {os.getloadavg()[0]:.2f}")
    print(f"{'engine':8} {'workers':>7} {'seconds':>8} {'clips/s':>8} {'frames/s':>9}  indices")
    for engine, workers, seconds, check in rows:
        print(f"{engine:8} {workers:>7} {seconds:8.2f} {args.clips / seconds:8.2f} "
              f"{frames / seconds:9.1f}  {check}")


if __name__ == "__main__":
    main()
