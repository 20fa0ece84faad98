"""CPU against CUDA: do the shipped models give the same indices on a GPU? Run by hand.

    .venv/bin/python benchmarks/cuda_agreement.py [--models NAME|DIR ...] [--frames 25]
        [--clip FILE] [--short-side 256]

For each model (the shipped ones by default) one real clip (the bundled held-out
``tests/data/city-heldout.mp4``, 25 frames at 256x256) is encoded on the CPU in float32 (the
reference: bit-exact across batch sizes, chunks and threads) and on CUDA in fp32, bf16 and fp16
autocast. Reported per CUDA dtype: the share of index positions equal to the CPU's (``exact``
when all are), whether two CUDA runs agree with each other, the largest difference of the
decoded video from the CPU's decode of the same indices, the encode time, and the peak CUDA
memory of encode and decode (``torch.cuda.max_memory_allocated``). Prints a Markdown table.

On a machine without CUDA it prints that and exits 0 before doing any work on the CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import vqtok.api as api
from vqtok.io.checkpoint import list_models
from vqtok.io.pixels import frames_to_video
from vqtok.io.video import VideoReader

CLIP = Path(__file__).resolve().parents[1] / "tests" / "data" / "city-heldout.mp4"


def read_clip(path: Path, frames: int, short_side: int, factor: int) -> torch.Tensor:
    """(1, 3, T, H, W) float32 in [-1, 1] on the CPU."""
    reader = VideoReader(path, short_side=short_side, crop_multiple=factor, max_frames=frames,
                         window=frames)
    return frames_to_video(next(iter(reader)), torch.device("cpu"))


def cuda_run(model: str, dtype: str, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                   float, float, float]:
    """(indices, second run's indices, encode seconds, encode peak MiB, decode peak MiB)."""
    tok = api.load(model, device="cuda", dtype=dtype)
    tok.encode(video[:, :, :1])  # warm-up: cuDNN picks its algorithms
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    indices = tok.encode(video)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    encode_peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    again = tok.encode(video)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    tok.decode(indices, frames=video.shape[2])
    decode_peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return indices.cpu(), again.cpu(), seconds, encode_peak, decode_peak


def compare(model: str, args: argparse.Namespace) -> list[str]:
    cpu = api.load(model, device="cpu")
    video = read_clip(args.clip, args.frames, args.short_side, cpu.spatial_factor)
    reference = cpu.encode(video)
    decoded_cpu = cpu.decode(reference, frames=video.shape[2])
    rows = []
    for dtype in args.dtypes:
        indices, again, seconds, enc_peak, dec_peak = cuda_run(model, dtype, video)
        same = (indices == reference).float().mean().item()
        agree = "exact" if torch.equal(indices, reference) else f"{same:.4%}"
        gpu = api.load(model, device="cuda", dtype=dtype)
        decoded = gpu.decode(reference.cuda(), frames=video.shape[2]).cpu()
        drift = (decoded - decoded_cpu).abs().max().item()
        rows.append(
            f"| {cpu.name} | cuda {dtype} | {tuple(video.shape[2:])} | {agree} | "
            f"{'yes' if torch.equal(indices, again) else 'NO'} | {drift:.2e} | "
            f"{seconds * 1000:.1f} ms | {enc_peak:.0f} | {dec_peak:.0f} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", help="names or directories (default: shipped)")
    parser.add_argument("--dtypes", nargs="*", default=["fp32", "bf16", "fp16"],
                        choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--clip", type=Path, default=CLIP)
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--short-side", type=int, default=256)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA: torch.cuda.is_available() is False; CPU vs CUDA indices not compared")
        return
    models = args.models or [str(info.path) for info in list_models()]
    print(f"CPU float32 (reference) vs CUDA on {torch.cuda.get_device_name()}, clip "
          f"{args.clip.name}, {args.frames} frames, short side {args.short_side}\n")
    print("| model | device | clip T, H, W | indices equal to CPU | CUDA run to run | max "
          "decode difference | encode time | encode peak MiB | decode peak MiB |")
    print("|" + "---|" * 9, flush=True)
    for model in models:
        compare(model, args)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
