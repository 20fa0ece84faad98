"""What a video reconstruction does over time: the figures of the video benchmark.

All functions take a source clip and its reconstruction as frames (T, H, W, 3) with values in
[0, 255] (uint8, or float holding uint8 values), and a causal tokenizer's temporal factor tau:
its latent frame 0 holds video frame 0 alone, latent frame k >= 1 holds frames
``tau*(k-1)+1 .. tau*k`` (a temporal group). `video_figures` gathers them:

- PSNR per frame, and by position in the group: the clip's first frame, then positions
  0 .. tau-1 of the later groups (a tokenizer that codes motion poorly is good on the first
  frame and worse on every later one);
- frame-to-frame change (mean absolute difference to the previous frame, all channels): high
  motion is a source change of at least `HIGH_MOTION` levels; a scene cut one of at least
  `CUT` levels and 4x the clip's median change;
- flicker: how much the reconstruction changes from frame to frame against the source, as a
  ratio of mean changes, at group boundaries (frame ``tau*k`` -> ``tau*k+1``, k >= 0) and inside
  groups,
  leaving scene cuts out (1.0: as much as the source; > 1: it changes more, e.g. a 6 Hz shimmer);
- grey: a source whose mean chroma spread (max - min of R, G, B per pixel) is at most
  `GREY_SPREAD` is grey; its reconstruction's spread says whether colour appeared;
- cuts: PSNR of the two frames around each cut against the clip's mean per-frame PSNR.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["CUT", "GREY_SPREAD", "HIGH_MOTION", "VideoFigures", "chroma_spread",
           "frame_changes", "video_figures"]

HIGH_MOTION = 6.0
"""A frame is high-motion when it differs from the previous one by at least this many levels
(mean absolute difference over all pixels and channels)."""

CUT = 30.0
"""A frame starts a new scene when it differs from the previous one by at least this many
levels and by at least 4x the clip's median change."""

GREY_SPREAD = 1.0
"""A source is grey when its mean chroma spread is at most this many levels."""


def frame_changes(frames: np.ndarray) -> np.ndarray:
    """(T - 1,) float64: mean absolute difference of frame t to frame t - 1, t = 1 .. T - 1."""
    x = np.asarray(frames, dtype=np.float64)
    return np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3))


def chroma_spread(frames: np.ndarray) -> float:
    """Mean over pixels and frames of max(R, G, B) - min(R, G, B), in levels (0: grey)."""
    x = np.asarray(frames, dtype=np.float64)
    return float((x.max(axis=-1) - x.min(axis=-1)).mean())


def psnr_frames(source: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """(T,) float64 PSNR of each frame, in dB (capped at 100 for identical frames)."""
    err = np.asarray(source, np.float64) - np.asarray(recon, np.float64)
    mse = np.square(err).mean(axis=(1, 2, 3))
    return np.minimum(10 * np.log10(255.0**2 / np.maximum(mse, 1e-20)), 100.0)


@dataclass(frozen=True)
class VideoFigures:
    """The figures of one clip (see the module docstring); None where a clip has no such
    frames (no later group, no high-motion frame, no cut, not grey)."""

    frames: int
    psnr_per_frame: list[float]
    first_frame_psnr: float
    later_frames_psnr: float | None
    position_psnr: list[float | None]
    high_motion_frames: list[int]
    high_motion_psnr: float | None
    flicker_boundary: float | None
    flicker_inside: float | None
    grey: bool
    source_chroma_spread: float
    chroma_spread: float
    cuts: list[int]
    cut_drop: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def _ratio(recon: np.ndarray, source: np.ndarray) -> float | None:
    return float(recon.mean() / max(source.mean(), 1e-9)) if source.size else None


def video_figures(source: np.ndarray, recon: np.ndarray, tau: int) -> VideoFigures:
    """The figures of a reconstructed clip; ``source`` and ``recon`` are (T, H, W, 3)."""
    if source.shape != recon.shape or source.ndim != 4:
        raise ValueError(f"need two (T, H, W, 3) clips of one shape, got {source.shape} "
                         f"and {recon.shape}")
    psnr = psnr_frames(source, recon)
    t = np.arange(len(psnr))
    later = t >= 1
    position = (t - 1) % tau  # position in the group, for frames t >= 1
    change, change_out = frame_changes(source), frame_changes(recon)
    median = float(np.median(change)) if change.size else 0.0
    cut = (change >= CUT) & (change >= 4 * median)
    cuts = [int(i) + 1 for i in np.flatnonzero(cut)]  # the first frame of each new scene
    boundary = (t[1:] - 1) % tau == 0  # the transition into the first frame of a group
    steady = ~cut
    spread_in = chroma_spread(source)
    grey = spread_in <= GREY_SPREAD
    high = [int(i) + 1 for i in np.flatnonzero(change >= HIGH_MOTION)]
    drop = None
    if cuts:
        around = [min(psnr[c - 1], psnr[c]) for c in cuts]
        drop = float(psnr.mean() - min(around))
    return VideoFigures(
        frames=len(psnr),
        psnr_per_frame=[float(v) for v in psnr],
        first_frame_psnr=float(psnr[0]),
        later_frames_psnr=_mean(psnr[later]),
        position_psnr=[_mean(psnr[later & (position == p)]) for p in range(tau)],
        high_motion_frames=high,
        high_motion_psnr=_mean(psnr[high]) if high else None,
        flicker_boundary=_ratio(change_out[boundary & steady], change[boundary & steady]),
        flicker_inside=_ratio(change_out[~boundary & steady], change[~boundary & steady]),
        grey=grey,
        source_chroma_spread=spread_in,
        chroma_spread=chroma_spread(recon),
        cuts=cuts,
        cut_drop=drop,
    )
