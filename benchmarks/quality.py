"""Held-out reconstruction quality on video: whole clips with motion, per-frame figures.

The held-out videos are whole sources no shipped model was trained on, fetched by
``make footage`` into ``.data/footage-heldout/`` (the list and licences: ``models/footage.py``,
``tests/data/README.md``). Each is read from its first frame that is not blank (a fade from
black, see `BLANK`), ``--frames`` frames (33 by default), and
measured twice: at native resolution (centre-cropped to a multiple of 8) and as a 256x256 centre
crop (the short side scaled up to 256 first where it is shorter). Per source and as a mean over
sources: PSNR, SSIM, and the figures of `vqtok.video_figures` (the first frame against the later
ones and each position in a temporal group, high-motion frames, flicker at group boundaries,
chroma spread of grey sources). Sources with a scene cut are also measured on 17 frames at 256²
with the cut inside a temporal group: how far the frames around it fall below the clip's mean.
The photographs (``tests/data/heldout-*.png``, one-frame clips) are reported on their own line,
never in the video mean.
Several ``--model`` s are measured in one run, on the same frames.

    .venv/bin/python benchmarks/quality.py --model vqtok-ema --model vqtok-ema-8x32 \
        [--samples models/vqtok-ema/samples] [--json out.json]

``--samples DIR`` writes one side-by-side PNG per source (source | reconstruction, the middle
frame at native size) and a side-by-side MP4 of the highest-motion source, for the model card
(of the first model given). ``--levels k`` measures a residual model's first k levels.

`block_seams` (a block-grid measure: neighbour differences across 8-pixel block boundaries over
those inside; 1.0 = no grid), `usage` and the loaders are shared with ``deblock_sweep.py`` and
``code_use.py``, which still measure the older stills-and-tails set (``tests/data/*heldout*``).
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
from vqtok.io.video_writer import write_video
from vqtok.metrics import psnr, ssim_per_frame
from vqtok.video_figures import CUT, frame_changes, video_figures

ROOT = Path(__file__).resolve().parent.parent
HELDOUT = sorted((ROOT / "tests" / "data").glob("*heldout*"))
PHOTOS = sorted((ROOT / "tests" / "data").glob("heldout-*.png"))
HELDOUT_VIDEOS = ROOT / ".data" / "footage-heldout"
CROP = 256


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


def native(frames: np.ndarray, multiple: int = 8) -> np.ndarray:
    """Centre crop (T, H, W, 3) to multiples of ``multiple``."""
    h, w = frames.shape[1] // multiple * multiple, frames.shape[2] // multiple * multiple
    top, left = (frames.shape[1] - h) // 2, (frames.shape[2] - w) // 2
    return frames[:, top : top + h, left : left + w]


BLANK = 4.0
"""A frame whose pixels vary by less than this (standard deviation, levels) is blank: a fade
from black or a title card. Clips start at their first frame that is not."""


def read_clip(path: Path, frames: int, crop: bool) -> np.ndarray:
    """``frames`` frames of ``path`` from its first frame that is not blank: native (cropped
    to a multiple of 8) or, with ``crop``, the centre CROP x CROP (short side scaled up to CROP
    where it is shorter)."""
    probe = next(iter(read_frames(path, max_frames=1)))
    short = min(probe.shape[1:3]) < CROP
    window = np.concatenate(list(read_frames(path, max_frames=frames + 64, window=64,
                                             short_side=CROP if crop and short else None)))
    start = next((i for i, f in enumerate(window) if f.std() >= BLANK), 0)
    clip = window[start : start + frames]
    if not crop:
        return native(clip)
    top, left = (clip.shape[1] - CROP) // 2, (clip.shape[2] - CROP) // 2
    return clip[:, top : top + CROP, left : left + CROP]


def cut_clip(path: Path) -> np.ndarray | None:
    """17 frames around the first scene cut of ``path`` (in its first 300 frames, at the 256²
    crop), placed so the cut falls inside a temporal group (frame 7: third of frames 5-8);
    None without a cut."""
    window = read_clip(path, 300, True)
    change = frame_changes(window)
    cut = (change >= CUT) & (change >= 4 * np.median(change))
    starts = [int(i) + 1 for i in np.flatnonzero(cut) if i + 1 >= 7 and i + 1 + 10 <= len(window)]
    return None if not starts else window[starts[0] - 7 : starts[0] + 10]


def reconstruct(tok: vqtok.Tokenizer, frames: np.ndarray,
                levels: int | None) -> tuple[np.ndarray, torch.Tensor]:
    """uint8-valued float64 reconstruction (T, H, W, 3) of uint8 frames (T, H, W, 3), streamed
    in chunks of 8 frames (4 above 640x480; the indices of a one-shot encode, in bounded
    memory), and the indices (1, t, h, w[, L])."""
    video = to_tensor(frames)
    chunk = 8 if frames.shape[1] * frames.shape[2] <= 640 * 480 else 4  # 1080p: ~4 GB a step
    indices = torch.cat(list(tok.encode_stream(video.split(chunk, dim=2), levels=levels)), dim=1)
    pieces = tok.decode_stream(indices.split(chunk // 4, dim=1), frames=frames.shape[0])
    return to_uint8(torch.cat(list(pieces), dim=2)).numpy(), indices


def code_health(counts: list[np.ndarray]) -> str:
    """Per level: the share of codes used and the perplexity (2 ** entropy) of their use."""
    parts = []
    for c in counts:
        p = c[c > 0] / c.sum()
        parts.append(f"{(c > 0).mean():.0%} / {float(np.exp(-(p * np.log(p)).sum())):.0f}")
    return ", ".join(parts)


def score(tok: vqtok.Tokenizer, frames: np.ndarray, levels: int | None) -> dict:
    """PSNR, SSIM and the video figures of one clip, and the reconstruction."""
    recon, indices = reconstruct(tok, frames, levels)
    ref, out = torch.from_numpy(frames), torch.from_numpy(recon)
    figures = video_figures(frames, recon, tok.temporal_factor).to_dict()
    ssim = torch.cat([ssim_per_frame(a, b) for a, b in zip(ref.split(2), out.split(2),
                                                            strict=True)])  # bounded memory
    return {"psnr": float(psnr(ref, out)), "ssim": float(ssim.mean()),
            "seams": block_seams(recon), **figures, "recon": recon,
            "counts": usage(indices, tok)}


SUMMARY = ("psnr", "ssim", "first_frame_psnr", "later_frames_psnr", "high_motion_psnr",
           "flicker_boundary", "flicker_inside")


def mean_of(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def show(value: float | None, digits: int = 2) -> str:
    return "   —" if value is None else f"{value:.{digits}f}"


def print_rows(title: str, rows: dict[str, dict]) -> None:
    print(f"  {title}")
    print(f"    {'source':22s} {'PSNR':>6s} {'SSIM':>6s} {'first':>6s} {'later':>6s} "
          f"{'motion':>6s} {'flick@b':>7s} {'flick@i':>7s}  extra")
    for name, r in rows.items():
        extra = []
        if r["grey"]:
            extra.append(f"grey: chroma {r['chroma_spread']:.2f}")
        if r["cuts"]:
            extra.append(f"cut at {r['cuts']}: -{r['cut_drop']:.2f} dB")
        print(f"    {name:22s} {r['psnr']:6.2f} {r['ssim']:6.4f} {show(r['first_frame_psnr']):>6s} "
              f"{show(r['later_frames_psnr']):>6s} {show(r['high_motion_psnr']):>6s} "
              f"{show(r['flicker_boundary']):>7s} {show(r['flicker_inside']):>7s}  "
              + "; ".join(extra))
    values = list(rows.values())
    means = {k: mean_of(values, k) for k in SUMMARY}
    positions = [mean_of([{"p": r["position_psnr"][i]} for r in values], "p")
                 for i in range(len(values[0]["position_psnr"]))]
    print(f"    {'mean':22s} {show(means['psnr']):>6s} {show(means['ssim'], 4):>6s} "
          f"{show(means['first_frame_psnr']):>6s} {show(means['later_frames_psnr']):>6s} "
          f"{show(means['high_motion_psnr']):>6s} {show(means['flicker_boundary']):>7s} "
          f"{show(means['flicker_inside']):>7s}  group positions "
          + " / ".join(show(p) for p in positions))


def write_samples(directory: Path, name: str, frames: np.ndarray, recon: np.ndarray) -> None:
    t = frames.shape[0] // 2
    pair = np.concatenate([frames[t], recon[t]], axis=1).astype(np.uint8)
    write_png(directory / f"{name}.png", pair)


def measure_model(tok: vqtok.Tokenizer, clips: dict, photos: dict, args: argparse.Namespace,
                  samples: Path | None) -> dict:
    """Every held-out clip at both sizes and the photographs; prints the tables."""
    report: dict = {"model": tok.name, "sha256": tok.weights_sha256, "levels": args.levels}
    print(f"{tok.name} ({bits_per_position(tok, args.levels or tok.num_codebooks):.0f} "
          f"bits/position)")
    for size in args.sizes:
        rows = {}
        for name, pair in clips.items():  # pair: the clip at each size (and around a cut)
            rows[name] = score(tok, pair[size], args.levels)
            if samples is not None and size == "native":
                write_samples(samples, name, pair[size], rows[name]["recon"])
        print_rows(f"videos, {'native size' if size == 'native' else f'{CROP}² centre crops'}"
                   f", {args.frames} frames", rows)
        if samples is not None and size == "native":
            busiest = max(rows, key=lambda n: len(rows[n]["high_motion_frames"]))
            pair = np.concatenate([clips[busiest]["native"], rows[busiest]["recon"]], axis=2)
            write_video(samples / f"{busiest}-side-by-side.mp4", pair.astype(np.uint8), fps=8)
        pooled = [sum(level) for level in zip(*(r["counts"] for r in rows.values()), strict=True)]
        print(f"    code use over {int(pooled[0].sum()):,} positions (share used / perplexity "
              f"per level): {code_health(pooled)}")
        report[size] = {n: {k: v for k, v in r.items() if k not in ("recon", "counts")}
                        for n, r in rows.items()}
    cuts = {n: score(tok, pair["cut"], args.levels) for n, pair in clips.items()
            if pair.get("cut") is not None}
    for name, r in cuts.items():  # cut_clip puts the cut at frame 7
        frames = r["psnr_per_frame"]
        r["cut_drop"] = float(np.mean(frames) - min(frames[6], frames[7]))
        print(f"  scene cut, {name} (17 frames at {CROP}², the cut at frame 7): the frames "
              f"around it {r['cut_drop']:.2f} dB below the clip's mean {np.mean(frames):.2f} dB")
    report["cuts"] = {n: {k: v for k, v in r.items() if k not in ("recon", "counts")}
                      for n, r in cuts.items()}
    stills = {n: score(tok, f, args.levels) for n, f in photos.items()}
    print(f"  photographs ({len(stills)}, one-frame clips, not in the video mean): "
          + ", ".join(f"{n} {r['psnr']:.2f} dB / {r['ssim']:.4f}" for n, r in stills.items()))
    report["photos"] = {n: {"psnr": r["psnr"], "ssim": r["ssim"]} for n, r in stills.items()}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=None,
                        help="name or directory; repeat to compare (default: the default model)")
    parser.add_argument("--heldout", type=Path, default=HELDOUT_VIDEOS,
                        help="folder of held-out videos (make footage)")
    parser.add_argument("--frames", type=int, default=33, help="frames per clip")
    parser.add_argument("--levels", type=int, default=None, help="residual models: first k")
    parser.add_argument("--samples", type=Path, default=None,
                        help="write side-by-side PNGs and the busiest clip (first model)")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--sizes", default="native,crop",
                        help="which measurements: native, crop or both (default)")
    args = parser.parse_args()
    args.sizes = args.sizes.split(",")
    torch.set_num_threads(2)
    videos = sorted(p for p in args.heldout.iterdir() if p.is_file())
    if not videos:
        raise SystemExit(f"error: {args.heldout}: no held-out videos; run make footage first")
    clips = {p.stem: {size: read_clip(p, args.frames, size == "crop") for size in args.sizes}
             for p in videos}
    for p in videos:
        clips[p.stem]["cut"] = cut_clip(p)
    photos = {p.stem: load_source(p) for p in PHOTOS}
    reports = []
    for index, model in enumerate(args.model or [None]):
        tok = vqtok.load(model, device="cpu")
        reports.append(measure_model(tok, clips, photos, args,
                                     args.samples if index == 0 else None))
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1) + "\n")


if __name__ == "__main__":
    main()
