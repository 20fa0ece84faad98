"""Held-out reconstruction quality of a model: PSNR, SSIM and codebook use per source.

The held-out sources are the files ``tests/data/*heldout*`` (the last second of every training
video and photographs never trained on, all 256x256; see tests/data/README.md). Videos are
encoded whole; photographs as one-frame clips. For residual quantizers ``--levels all`` also
measures every prefix of the levels (the quality ladder of one model).

    .venv/bin/python benchmarks/quality.py --model vqtok-ema [--levels all] \
        [--samples models/vqtok-ema/samples] [--json out.json]

"seams" is a block-grid measure: the mean absolute difference between neighbouring pixels
(grey, all frames) across an 8-pixel block boundary divided by the same inside a block,
horizontally and vertically; 1.0 means no grid (the sources measure 0.97-1.05).

``--samples DIR`` writes one side-by-side PNG per source (source | reconstruction, the middle
frame of a video), the pictures committed with the model cards.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import av
import numpy as np
import torch

import vqtok
from vqtok.io.video import read_frames
from vqtok.metrics import psnr, ssim_per_frame

ROOT = Path(__file__).resolve().parent.parent
HELDOUT = sorted((ROOT / "tests" / "data").glob("*heldout*"))


def load_source(path: Path) -> np.ndarray:
    """uint8 frames (T, H, W, 3) of a held-out file."""
    return np.concatenate(list(read_frames(path, window=64)))


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (1, 3, T, H, W) in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float().div(127.5).sub(1).unsqueeze(0)


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """(1, 3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8 values as float64."""
    return ((video[0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 3, 0).double()


def usage(indices: torch.Tensor, tok: vqtok.Tokenizer) -> list[np.ndarray]:
    """Per level / codebook: counts (K,) of the codes in ``indices`` (B, t, h, w[, L])."""
    flat = indices.reshape(-1, indices.shape[-1] if indices.ndim == 5 else 1).cpu()
    return [np.bincount(flat[:, i].numpy(), minlength=tok.codebook_size)
            for i in range(flat.shape[1])]


def block_seams(frames: np.ndarray, period: int = 8) -> tuple[float, float]:
    """(horizontal, vertical) ratio of neighbour differences across / inside period-pixel
    blocks of uint8-valued frames (T, H, W, 3); about 1.0 without a block grid."""
    grey = np.asarray(frames, dtype=np.float64).mean(-1)  # (T, H, W)
    ratios = []
    for axis in (2, 1):
        d = np.abs(np.diff(grey, axis=axis))  # position i: pixel i vs i + 1
        at = [np.take(d, np.arange(o, d.shape[axis], period), axis=axis).mean()
              for o in range(period)]
        ratios.append(float(at[period - 1] / np.mean(at[: period - 1])))
    return ratios[0], ratios[1]


def measure(tok: vqtok.Tokenizer, frames: np.ndarray, levels: int | None) -> dict:
    video = to_tensor(frames)
    indices = tok.encode(video, levels=levels)
    recon = tok.decode(indices, frames=frames.shape[0])
    ref, out = torch.from_numpy(frames).double(), to_uint8(recon)
    return {
        "psnr": float(psnr(ref, out)),
        "ssim": float(ssim_per_frame(ref, out).mean()),
        "seams": block_seams(out.numpy()),
        "counts": usage(indices, tok),
        "recon": out.to(torch.uint8).numpy(),
    }


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("png")
        s.width, s.height, s.pix_fmt = image.shape[1], image.shape[0], "rgb24"
        for packet in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), "rgb24")):
            c.mux(packet)
        for packet in s.encode(None):
            c.mux(packet)


def bits_per_position(tok: vqtok.Tokenizer, levels: int) -> float:
    return levels * math.log2(tok.codebook_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="name or directory (default model)")
    parser.add_argument("--levels", default=None, help="k, or 'all' for every prefix")
    parser.add_argument("--samples", type=Path, default=None, help="write side-by-side PNGs")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(2)
    tok = vqtok.load(args.model, device="cpu")
    top = tok.num_codebooks
    ladder = (list(range(1, top + 1)) if args.levels == "all"
              else [int(args.levels)] if args.levels else [None])
    sources = {p.name: load_source(p) for p in HELDOUT}
    report: dict = {"model": tok.name, "sha256": tok.weights_sha256, "rungs": []}
    for levels in ladder:
        k = levels or top
        rows, counts = {}, None
        for name, frames in sources.items():
            m = measure(tok, frames, levels)
            used = [float((c > 0).mean()) for c in m["counts"]]
            rows[name] = {"psnr": m["psnr"], "ssim": m["ssim"], "seams": m["seams"],
                          "usage": used}
            counts = m["counts"] if counts is None else [
                a + b for a, b in zip(counts, m["counts"], strict=True)
            ]
            if args.samples and levels in (None, top):
                t = frames.shape[0] // 2
                pair = np.concatenate([frames[t], m["recon"][t]], axis=1)
                write_png(args.samples / f"{Path(name).stem}.png", pair)
        mean_psnr = sum(r["psnr"] for r in rows.values()) / len(rows)
        mean_ssim = sum(r["ssim"] for r in rows.values()) / len(rows)
        pooled = [float((c > 0).mean()) for c in counts or []]
        report["rungs"].append({"levels": k, "bits": bits_per_position(tok, k),
                                "mean_psnr": mean_psnr, "mean_ssim": mean_ssim,
                                "usage_pooled": pooled, "sources": rows})
        print(f"levels {k} ({bits_per_position(tok, k):.0f} bits/position): "
              f"mean PSNR {mean_psnr:.2f} dB, SSIM {mean_ssim:.4f}, "
              f"codes used per level (all sources) {', '.join(f'{u:.1%}' for u in pooled)}")
        for name, r in rows.items():
            print(f"  {name:28s} {r['psnr']:6.2f} dB  SSIM {r['ssim']:.4f}  "
                  f"seams {r['seams'][0]:.2f}/{r['seams'][1]:.2f}  "
                  f"used {', '.join(f'{u:.1%}' for u in r['usage'])}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
