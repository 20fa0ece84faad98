"""Throughput and memory of the file pipeline (``vqtok encode``), run by hand (not in CI).

    .venv/bin/python benchmarks/pipeline.py [--model NAME|DIR] [--device cpu|cuda]
        [--dtype fp32|bf16|fp16] [--clip FILE] [--short-side 128] [--frames 64] [--chunk 16]
        [--rss] [--results FILE]

Measures on one real clip (`CITY`, when that file is present, else a generated one):

- decode-only frames/s: PyAV decoding + resize into uint8 frames, no model;
- model-only frames/s: ``encode_stream`` over frames already in memory;
- end-to-end frames/s: `vqtok.pipeline.encode.encode_file` (background reader + model + index file).

The issue's target: end-to-end >= 90 % of the slower of decode-only and model-only, which is
what overlapping the reader thread with the model buys. With ``--rss`` it also encodes a
10-second and a 2-minute generated clip (same size) in fresh processes and compares their peak
resident memory (target: within 1.2x, i.e. memory bounded by the chunk, not the length).

Without ``--model`` a randomly initialised model of the default `TokenizerConfig` is used
(speed does not depend on weight values). On CUDA the table also gives the peak CUDA memory
allocated (``torch.cuda.max_memory_allocated``) over the timed runs.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import loadavg, write_section  # noqa: E402

import vqtok.api as api  # noqa: E402
from vqtok.families.vqtok import TokenizerConfig, VideoTokenizer
from vqtok.io.checkpoint import save_pretrained
from vqtok.io.pixels import frames_to_video
from vqtok.io.video import VideoReader
from vqtok.io.video_writer import VideoWriter
from vqtok.pipeline.encode import EncodeOptions, encode_file

CITY = Path(__file__).resolve().parents[2] / "shared" / "data" / "city.mpg"


def synthetic_clip(path: Path, frames: int, size: tuple[int, int], fps: int = 25) -> Path:
    """A moving gradient + square clip of ``frames`` frames (written window by window)."""
    height, width = size
    y, x = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    with VideoWriter(path, fps, width, height) as writer:
        for start in range(0, frames, 32):
            batch = []
            for i in range(start, min(frames, start + 32)):
                shift = 0.01 * i
                rgb = np.stack([(x + shift) % 1, (y + shift) % 1, 0.5 + 0.5 * np.sin(x + y + i)],
                               axis=-1)
                frame = (rgb * 255).astype(np.uint8)
                left = (3 * i) % max(1, width - height // 4)
                frame[height // 3: height // 3 + height // 4, left: left + height // 4] = 250
                batch.append(frame)
            writer.write(np.stack(batch))
    return path


def decode_only(clip: Path, options: EncodeOptions, factor: int) -> float:
    reader = VideoReader(clip, short_side=options.short_side, crop_multiple=factor,
                         max_frames=options.max_frames, window=options.chunk)
    start, frames = time.perf_counter(), 0
    for window in reader:
        frames += len(window)
    return frames / (time.perf_counter() - start)


def model_only(tok: api.Tokenizer, clip: Path, options: EncodeOptions) -> float:
    reader = VideoReader(clip, short_side=options.short_side, crop_multiple=tok.spatial_factor,
                         max_frames=options.max_frames, window=options.chunk)
    windows = list(reader)  # in memory first: only the model is timed
    frames = sum(len(w) for w in windows)
    start = time.perf_counter()
    chunks = (frames_to_video(w, tok.device) for w in windows)
    for piece in tok.encode_stream(chunks):
        piece.cpu()
    if tok.device.type == "cuda":
        torch.cuda.synchronize()
    return frames / (time.perf_counter() - start)


def end_to_end(tok: api.Tokenizer, clip: Path, options: EncodeOptions, out: Path) -> float:
    start = time.perf_counter()
    result = encode_file(clip, out / "codes.npy", tok, options)
    return result.meta.encoded.frames / (time.perf_counter() - start)


def peak_rss(clip: Path, model: str, args: argparse.Namespace, out: Path) -> float:
    """Peak RSS (MiB) of a fresh ``vqtok encode`` process on ``clip``."""
    command = [sys.executable, "-m", "vqtok", "encode", str(clip), "-o", str(out / "rss.npy"),
               "--model", model, "--device", args.device, "--dtype", args.dtype,
               "--chunk", str(args.chunk),
               "--short-side", str(args.short_side), "--overwrite", "--quiet"]
    proc = subprocess.Popen(command)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"encode failed with status {status}: {' '.join(command)}")
    return usage.ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model name or directory (default: random default model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="compute dtype (autocast; fp16 on CUDA only)")
    parser.add_argument("--clip", type=Path, default=CITY if CITY.exists() else None)
    parser.add_argument("--short-side", type=int, default=128)
    parser.add_argument("--frames", type=int, default=64, help="frames of the clip to use")
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rss", action="store_true", help="also compare 10 s vs 2 min memory")
    parser.add_argument("--rss-fps", type=int, default=10)
    parser.add_argument("--results", type=Path,
                        help="write the table as the '## Pipeline' section of this file")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vqtok-bench-"))
    model = args.model
    if model is None:
        torch.manual_seed(0)
        model = str(save_pretrained(VideoTokenizer(TokenizerConfig()), work / "random-default"))
    tok = api.load(model, device=args.device, dtype=args.dtype)
    clip = args.clip or synthetic_clip(work / "clip.mp4", args.frames, (144, 256))
    options = EncodeOptions(short_side=args.short_side, max_frames=args.frames, chunk=args.chunk)

    end_to_end(tok, clip, replace(options, max_frames=min(args.frames, 9)), work)  # warm-up
    cuda = tok.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    # best of --repeat, interleaved so that load from other processes hits all three alike
    runs = [
        (decode_only(clip, options, tok.spatial_factor), model_only(tok, clip, options),
         end_to_end(tok, clip, options, work))
        for _ in range(args.repeat)
    ]
    decode_fps, model_fps, e2e_fps = (max(r[i] for r in runs) for i in range(3))
    slower = min(decode_fps, model_fps)
    rows = [
        ("clip", f"{clip.name}, first {args.frames} frames, short side {args.short_side}"),
        ("model / device", f"{tok.name} / {tok.device} {args.dtype}, chunk {args.chunk}, "
                           f"{torch.get_num_threads()} threads, best of {args.repeat}"),
        ("decode-only", f"{decode_fps:.1f} frames/s"),
        ("model-only", f"{model_fps:.1f} frames/s"),
        ("end-to-end encode", f"{e2e_fps:.1f} frames/s ({e2e_fps / slower:.0%} of the slower)"),
    ]
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
        rows.append(("peak CUDA memory allocated", f"{peak:.0f} MiB"))
    if args.rss:
        size = (args.short_side, args.short_side * 16 // 9 // 8 * 8)
        short = synthetic_clip(work / "10s.mp4", 10 * args.rss_fps, size, args.rss_fps)
        long = synthetic_clip(work / "120s.mp4", 120 * args.rss_fps, size, args.rss_fps)
        rss_short, rss_long = peak_rss(short, model, args, work), peak_rss(long, model, args, work)
        rows.append(("peak RSS 10 s / 2 min",
                     f"{rss_short:.0f} / {rss_long:.0f} MiB ({rss_long / rss_short:.2f}x)"))
    table = "| measure | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    print(table)
    if args.results is not None:
        header = (f"`{' '.join(['python', *sys.argv])}` — {datetime.date.today()}, "
                  f"{os.cpu_count()} cores, torch {torch.__version__}, load average at the end "
                  f"{loadavg()}. Target: end-to-end >= 90 % of the slower of decode-only and "
                  "model-only; peak RSS of the 2-minute clip within 1.2x of the 10-second one.")
        body = ["## Pipeline", "", header, "", *table.splitlines()]
        write_section(args.results, "## Pipeline", body)


if __name__ == "__main__":
    main()
