"""uint8 frames <-> the float video tensors the models take: the one home of that conversion.

Frames are what `vqtok.io.video` reads and writes: uint8 (T, H, W, 3), RGB, channel last.
Models take float32 video (B, 3, T, H, W) in [-1, 1]: ``pixel / 127.5 - 1``. The way back
clamps to [-1, 1] and rounds to the nearest pixel value.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["frames_to_clip", "frames_to_video", "video_to_frames", "video_to_pixels"]


def frames_to_clip(frames: np.ndarray, device: torch.device | None = None) -> Tensor:
    """uint8 frames (T, H, W, 3) -> float32 clip (3, T, H, W) in [-1, 1] (no batch axis)."""
    clip = torch.from_numpy(np.ascontiguousarray(frames))
    if device is not None:
        clip = clip.to(device)
    clip = clip.permute(3, 0, 1, 2)  # (T, H, W, 3) -> (3, T, H, W)
    return clip.float() / 127.5 - 1.0


def frames_to_video(frames: np.ndarray, device: torch.device | None = None) -> Tensor:
    """uint8 frames (T, H, W, 3) -> float32 video (1, 3, T, H, W) in [-1, 1] on ``device``."""
    return frames_to_clip(frames, device).unsqueeze(0)


def video_to_pixels(video: Tensor) -> Tensor:
    """Video (1, 3, T, H, W), any float dtype, ~[-1, 1] -> uint8 pixels (T, H, W, 3) on the
    video's device."""
    # one float copy, then in place: a 4K frame is 100 MB a copy
    pixels = video[0].float().clamp(-1, 1).add_(1).mul_(127.5).round_().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0)  # (3, T, H, W) -> (T, H, W, 3)


def video_to_frames(video: Tensor) -> np.ndarray:
    """Video (1, 3, T, H, W), any float dtype, ~[-1, 1] -> uint8 frames (T, H, W, 3) in NumPy."""
    return video_to_pixels(video).cpu().numpy()
