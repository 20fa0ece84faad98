"""Video files <-> the tensors `vqtok.api.Tokenizer` takes: the first and last step in Python.

``read_video`` gives the float (1, 3, T, H, W) tensor in [-1, 1] that ``Tokenizer.encode``
takes, ``write_video`` writes what ``Tokenizer.decode`` returns::

    video = vqtok.read_video("clip.mp4")
    out = tok.decode(tok.encode(video), frames=video.shape[2], size=video.shape[3:])
    vqtok.write_video(out, "round-trip.mp4", fps=25)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vqtok.errors import VqtokError
from vqtok.io.pixels import frames_to_video, video_to_frames
from vqtok.io.video import read_frames
from vqtok.io.video_writer import VideoWriter

__all__ = ["read_video", "write_video"]


def read_video(
    path: str | Path,
    *,
    size: tuple[int, int] | None = None,
    short_side: int | None = None,
    fps: float | str | None = None,
    max_frames: int | None = None,
) -> Tensor:
    """Read a video file into the tensor `Tokenizer.encode` takes.

    Args:
        path: the video (any format FFmpeg reads; display rotation applied).
        size: resize every frame to (H, W); or ``short_side``: resize keeping the aspect.
        fps: resample to this frame rate (drop / repeat frames); None keeps every frame.
        max_frames: read at most this many frames.

    Returns:
        float32 (1, 3, T, H, W) in [-1, 1] on the CPU.

    Raises:
        VideoError: the file cannot be read. ConfigError: impossible arguments.
    """
    windows = read_frames(path, size=size, short_side=short_side, fps=fps, max_frames=max_frames)
    return frames_to_video(np.concatenate(list(windows)), torch.device("cpu"))


def write_video(video: Tensor, path: str | Path, fps: float | str = 25) -> Path:
    """Write a (1, 3, T, H, W) or (3, T, H, W) float video in [-1, 1] (what `Tokenizer.decode`
    returns) to an H.264 ``.mp4`` / ``.mov`` / ``.mkv``, atomically; creates the folder.

    Returns:
        the path written.

    Raises:
        VqtokError: another shape or a batch of several videos; VideoError: the write failed.
    """
    if isinstance(video, Tensor) and video.ndim == 4:
        video = video.unsqueeze(0)  # (3, T, H, W) -> (1, 3, T, H, W)
    if not isinstance(video, Tensor) or video.ndim != 5 or video.shape[:2] != (1, 3):
        shape = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
        raise VqtokError(f"expected one video (1, 3, T, H, W) or (3, T, H, W), got {shape}")
    frames = video_to_frames(video.detach())  # (T, H, W, 3) uint8
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(target, fps, frames.shape[2], frames.shape[1]) as writer:
        writer.write(frames)
    return target
