"""What `vqtok.Tokenizer` accepts as a video tensor, the padding it adds and trims off again.

`check_video` refuses, naming what was given, a tensor that is not a float (B, 3, T, H, W) video
or (B, 3, H, W) images in [-1, 1] (e.g. 0-255 pixels, channels last, a missing batch axis)
instead of returning garbage; `pad_size` and `pad_frames` pad a clip to a size and length the
model takes by repeating its edges; `crop_padding` drops the rows and columns ``encode`` added.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vqtok.errors import VqtokError

__all__ = ["check_video", "crop_padding", "pad_frames", "pad_size", "padded_length"]


def check_video(video: Any) -> None:
    """Refuse what `Tokenizer.encode` cannot take, naming what was given.

    Raises:
        VqtokError: not a float tensor, not (B, 3, T, H, W) / (B, 3, H, W), or values clearly
            outside [-1, 1] (beyond +-1.5, e.g. 0-255 pixels).
    """
    wanted = "a float video tensor (B, 3, T, H, W) or images (B, 3, H, W) in [-1, 1]"
    if not isinstance(video, Tensor):
        raise VqtokError(f"expected {wanted}, got a {type(video).__name__}")
    given = tuple(video.shape)
    if not video.is_floating_point():
        raise VqtokError(
            f"expected {wanted}, got a {video.dtype} tensor of shape {given}; convert 0-255 "
            "pixels with video.float() / 127.5 - 1 (vqtok.read_video does this)"
        )
    if video.ndim not in (4, 5) or video.shape[1] != 3:
        hint = ""
        if video.ndim == 4 and video.shape[0] == 3:
            hint = "; one video (3, T, H, W) needs a batch axis: video.unsqueeze(0)"
        elif video.ndim >= 3 and video.shape[-1] == 3:
            hint = "; channels come second, not last: move them with permute"
        raise VqtokError(f"expected {wanted}, got shape {given}{hint}")
    if video.numel():
        low, high = (float(v) for v in torch.aminmax(video.detach()))
        if not (-1.5 <= low and high <= 1.5):  # also catches NaN
            raise VqtokError(
                f"expected pixel values in [-1, 1], got values in [{low:.4g}, {high:.4g}]; "
                "for 0-255 pixels use video / 127.5 - 1 (vqtok.read_video does this)"
            )


def crop_padding(video: Tensor, size: tuple[int, int] | None) -> Tensor:
    """(B, 3, T, H', W') -> (B, 3, T, H, W): drop the spatial padding `encode` added."""
    if size is None:
        return video
    height, width = size
    if not (1 <= height <= video.shape[3] and 1 <= width <= video.shape[4]):
        raise VqtokError(
            f"cannot crop decoded {video.shape[3]}x{video.shape[4]} frames to {height}x{width}"
        )
    return video[..., :height, :width]


def pad_size(video: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, C, T, H, W) -> (B, C, T, *size), each at least the video's own, by repeating the
    bottom row and the right column."""
    pad_h, pad_w = size[0] - video.shape[3], size[1] - video.shape[4]
    if pad_h or pad_w:
        # replicate pads the last dims of a (N, C, D, H, W) tensor: right, then bottom
        video = torch.nn.functional.pad(video, (0, pad_w, 0, pad_h, 0, 0), mode="replicate")
    return video


def pad_frames(video: Tensor, frames: int) -> Tensor:
    """(B, C, T, H, W) -> (B, C, frames, H, W), ``frames >= T``, by repeating the last frame."""
    extra = frames - video.shape[2]
    if extra:
        video = torch.cat([video, video[:, :, -1:].expand(-1, -1, extra, -1, -1)], dim=2)
    return video


def padded_length(frames: int, tau: int, window: int | None = None) -> int:
    """The length a clip of ``frames`` frames is padded to: 1 + k*tau, the causal convention
    (per ``window`` frames for windowed families; None: one window).

    Raises:
        VqtokError: ``frames < 1``.
    """
    if frames < 1:
        raise VqtokError(f"a clip needs at least 1 frame, got {frames}")
    if window is None:
        return 1 + -(-(frames - 1) // tau) * tau
    full, rest = divmod(frames, window)
    return full * window + (1 + -(-(rest - 1) // tau) * tau if rest else 0)
