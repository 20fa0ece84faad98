"""Choose the deblocking strength: held-out PSNR and block seams for each strength and level count.

The filter (`vqtok.families.deblock`) is the decoder's last step and has no weights, so each
source is decoded once per level count with the filter off and the filter is then applied
at every strength to that float output, exactly as the decoder would. Sources, PSNR and the
seam measure are `quality.py`'s (1.0 = no grid).

    .venv/bin/python benchmarks/deblock_sweep.py --model vqtok-ema \
        [--strengths 0,0.15,0.25,0.3,0.35,0.4,0.45,0.5] [--levels 1,2,3,4]

Prints one line per (levels, strength): mean PSNR over the sources and the range of their
horizontal / vertical seams.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from quality import HELDOUT, block_seams, load_source, to_tensor, to_uint8

import vqtok
from vqtok.families.deblock import deblock
from vqtok.metrics import psnr


def numbers(text: str, kind: type) -> list:
    return [kind(v) for v in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="name or directory (default model)")
    parser.add_argument("--strengths", default="0,0.15,0.25,0.3,0.35,0.4,0.45,0.5")
    parser.add_argument("--levels", default=None, help="comma-separated k (default: every k)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    tok = vqtok.load(args.model, device="cpu")
    decoder = tok.model.decoder
    factor = tok.model.spatial_factor
    decoder.deblock = (0.0,)  # decode without the filter; it is applied below
    strengths = numbers(args.strengths, float)
    ladder = numbers(args.levels, int) if args.levels else range(1, tok.num_codebooks + 1)
    sources = [load_source(p) for p in HELDOUT]
    for k in ladder:
        rows: dict[float, list[tuple[float, tuple[float, float]]]] = {s: [] for s in strengths}
        for frames in sources:
            with torch.no_grad():
                raw = tok.decode(tok.encode(to_tensor(frames), levels=k), frames=frames.shape[0])
            ref = torch.from_numpy(frames).double()
            for s in strengths:
                out = to_uint8(deblock(raw, s, factor))
                rows[s].append((float(psnr(ref, out)), block_seams(out.numpy())))
        for s, r in rows.items():
            seams = [v for _, pair in r for v in pair]
            print(f"levels {k}  strength {s:.2f}  mean PSNR {np.mean([p for p, _ in r]):.3f} dB  "
                  f"seams {min(seams):.2f}-{max(seams):.2f}", flush=True)


if __name__ == "__main__":
    main()
