"""Speed of the full-size public tokenizer families (random weights of the released shapes).

Run by hand (not in CI):

    .venv/bin/python benchmarks/public_tokenizers.py [--device cpu|cuda] [--size 128] [--repeat 1]

Builds Open-MAGVIT2 video (370.5M parameters) and Cosmos DV4x8x8 (112.5M) at their released
widths, encodes and decodes one 17-frame clip, and prints seconds per clip and frames per
second for each. Weights are random: speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import time

import torch

from vqtok.families.base import TokenizerModel
from vqtok.families.cosmos import CosmosConfig, CosmosTokenizer
from vqtok.families.magvit2 import Magvit2Config, Magvit2Tokenizer
from vqtok.io.checkpoint import parameter_count


def timed(fn: object, repeat: int, device: torch.device) -> float:
    """Best wall-clock seconds of ``repeat`` calls (after one warm-up call on CUDA)."""
    if device.type == "cuda":
        fn()  # type: ignore[operator]
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=128, help="H = W of the clip")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    models: list[tuple[str, TokenizerModel]] = [
        ("open-magvit2-video", Magvit2Tokenizer(Magvit2Config())),
        ("cosmos-dv DV4x8x8", CosmosTokenizer(CosmosConfig())),
    ]
    video = torch.rand(1, 3, args.frames, args.size, args.size, device=device) * 2 - 1
    print(f"device {device}, threads {torch.get_num_threads()}, clip 1x3x{args.frames}x"
          f"{args.size}x{args.size}, torch {torch.__version__}")
    for name, model in models:
        model = model.to(device).eval()
        params = parameter_count(model) / 1e6  # as `vqtok info` counts
        with torch.inference_mode():
            indices = model.encode(video)
            enc = timed(lambda: model.encode(video), args.repeat, device)  # noqa: B023
            dec = timed(lambda: model.decode(indices), args.repeat, device)  # noqa: B023
        print(f"{name:20s} {params:6.1f}M params  indices {tuple(indices.shape)}  "
              f"encode {enc:7.2f} s ({args.frames / enc:6.2f} frames/s)  "
              f"decode {dec:7.2f} s ({args.frames / dec:6.2f} frames/s)")
        model.to("cpu")


if __name__ == "__main__":
    main()
