"""Run an exported vqtok model (``vqtok export MODEL -o DIR --format onnx``) with ONNX Runtime.

Needs only ``numpy`` and ``onnxruntime``: this file imports nothing else (no torch, no vqtok),
and ``vqtok export`` copies it into the export folder as ``vqtok_onnx.py``, so the folder runs
anywhere::

    import sys; sys.path.insert(0, "DIR")          # or copy vqtok_onnx.py beside your code
    from vqtok_onnx import OnnxTokenizer
    tok = OnnxTokenizer("DIR")                      # reads DIR/export.json
    indices = tok.encode(video)                     # (B, 3, T, H, W) float32 in [-1, 1]
    frames = tok.decode(indices, frames=T, size=(H, W))

Like `vqtok.Tokenizer`, `OnnxTokenizer.encode` pads a clip to what the graphs take (T to
1 + k*tau frames by repeating the last frame, H and W to multiples of the spatial factor by
repeating the bottom row and the right column) and `decode` trims back when told the original
frame count and size. The graphs themselves (``encoder.onnx``, ``decoder.onnx``) take only
those padded sizes; ``export.json`` describes their inputs and outputs.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

__all__ = ["FORMAT", "FORMAT_VERSION", "OnnxRunnerError", "OnnxTokenizer"]

FORMAT = "vqtok-onnx"
FORMAT_VERSION = 1
DESCRIPTION = "export.json"


class OnnxRunnerError(ValueError):
    """An export folder that cannot be used, or an input the graphs cannot take."""


class OnnxTokenizer:
    """An exported tokenizer: video arrays <-> index arrays through ONNX Runtime.

    Args:
        directory: the export folder (``export.json``, ``encoder.onnx``, ``decoder.onnx``).
        providers: ONNX Runtime execution providers (default: CPU).
        threads: intra-op threads (None: ONNX Runtime's default, one per core).

    Attributes:
        description: ``export.json`` as a dict.
        temporal_factor, spatial_factor: tau and f of the model.
        codebook_sizes: K_l of each level; indices of level l lie in [0, K_l).
    """

    def __init__(self, directory: str | os.PathLike[str], providers: list[str] | None = None,
                 threads: int | None = None) -> None:
        self.directory = os.fspath(directory)
        self.description = _read_description(self.directory)
        d = self.description
        self.name: str = d["model"]["name"]
        self.temporal_factor: int = int(d["temporal_factor"])
        self.spatial_factor: int = int(d["spatial_factor"])
        self.codebook_sizes: list[int] = [int(k) for k in d["codebook_sizes"]]
        self.level_axis: bool = bool(d["level_axis"])
        self._providers = providers or ["CPUExecutionProvider"]
        self._threads = threads
        self._sessions: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"OnnxTokenizer({self.directory!r}, model={self.name!r})"

    def padded_frames(self, frames: int) -> int:
        """The clip length ``frames`` is padded to: 1 + k*tau."""
        if frames < 1:
            raise OnnxRunnerError(f"a clip needs at least 1 frame, got {frames}")
        tau = self.temporal_factor
        return 1 + -(-(frames - 1) // tau) * tau

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) a frame is padded to: each rounded up to a multiple of the spatial factor."""
        f = self.spatial_factor
        return -(-height // f) * f, -(-width // f) * f

    def encode(self, video: np.ndarray) -> np.ndarray:
        """Video (B, 3, T, H, W) or images (B, 3, H, W), float in [-1, 1] -> int64 indices
        (B, t, h, w[, L]) with t = 1 + ceil((T-1)/tau), h = ceil(H/f), w = ceil(W/f).

        Raises:
            OnnxRunnerError: not a float array of that shape, or values outside [-1.5, 1.5]
                (such as 0-255 pixels: use ``pixels / 127.5 - 1``).
        """
        video = _check_video(video)
        frames, height, width = video.shape[2:]
        pad_t = self.padded_frames(frames) - frames
        pad_h, pad_w = (p - s for p, s in zip(self.padded_size(height, width), (height, width),
                                                strict=True))
        if pad_t or pad_h or pad_w:
            # repeat the last frame, the bottom row and the right column
            video = np.pad(video, ((0, 0), (0, 0), (0, pad_t), (0, pad_h), (0, pad_w)),
                           mode="edge")
        return self._run("encoder", "video", np.ascontiguousarray(video, dtype=np.float32))

    def decode(self, indices: np.ndarray, frames: int | None = None,
               size: tuple[int, int] | None = None) -> np.ndarray:
        """int indices (B, t, h, w[, L]) -> float32 video (B, 3, 1 + (t-1)*tau, f*h, f*w) in
        [-1, 1], trimmed to ``frames`` frames and cropped to ``size`` (H, W) when given.

        Raises:
            OnnxRunnerError: not an integer array of that shape, or an index out of its
                level's range.
        """
        indices = self._check_indices(indices)
        video = self._run("decoder", "indices", indices)
        if frames is not None:
            if not 1 <= frames <= video.shape[2]:
                raise OnnxRunnerError(f"cannot trim {video.shape[2]} decoded frames to {frames}")
            video = video[:, :, :frames]
        if size is not None:
            height, width = size
            if not (1 <= height <= video.shape[3] and 1 <= width <= video.shape[4]):
                raise OnnxRunnerError(f"cannot crop decoded {video.shape[3]}x{video.shape[4]} "
                                      f"frames to {height}x{width}")
            video = video[..., :height, :width]
        return video

    def _check_indices(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices)
        rank = 5 if self.level_axis else 4
        levels = len(self.codebook_sizes)
        if indices.ndim != rank or (self.level_axis and indices.shape[-1] != levels):
            axis = f", {levels}" if self.level_axis else ""
            raise OnnxRunnerError(f"expected indices (B, t, h, w{axis}), got shape "
                                  f"{indices.shape}")
        if not np.issubdtype(indices.dtype, np.integer):
            raise OnnxRunnerError(f"indices must be integers, got {indices.dtype}")
        if min(indices.shape[:4]) < 1:
            raise OnnxRunnerError(f"empty indices of shape {indices.shape}")
        columns = indices.reshape(-1, levels)
        low, high = columns.min(axis=0), columns.max(axis=0)
        for level, size in enumerate(self.codebook_sizes):
            if low[level] < 0 or high[level] >= size:
                raise OnnxRunnerError(f"level {level}'s indices must lie in [0, {size}), "
                                      f"found values in [{low[level]}, {high[level]}]")
        return np.ascontiguousarray(indices, dtype=np.int64)

    def _run(self, part: str, input_name: str, value: np.ndarray) -> np.ndarray:
        output: np.ndarray = self.session(part).run(None, {input_name: value})[0]
        return output

    def session(self, part: str) -> Any:
        """The ``onnxruntime.InferenceSession`` of ``"encoder"`` or ``"decoder"`` (made on
        first use)."""
        if part not in self._sessions:
            import onnxruntime as ort  # here, so that vqtok can import this module without it

            options = ort.SessionOptions()
            if self._threads is not None:
                options.intra_op_num_threads = self._threads
            path = os.path.join(self.directory, self.description[part]["file"])
            self._sessions[part] = ort.InferenceSession(path, options,
                                                        providers=self._providers)
        return self._sessions[part]


def _read_description(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, DESCRIPTION)
    try:
        with open(path, encoding="utf-8") as file:
            description: dict[str, Any] = json.load(file)
    except FileNotFoundError:
        raise OnnxRunnerError(f"{path}: not found; is {directory} a vqtok ONNX export "
                              "(vqtok export MODEL -o DIR --format onnx)?") from None
    except (OSError, ValueError) as e:
        raise OnnxRunnerError(f"{path}: cannot be read: {e}") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise OnnxRunnerError(f"{path}: not a vqtok ONNX export description")
    if description.get("format_version") != FORMAT_VERSION:
        raise OnnxRunnerError(f"{path}: format version {description.get('format_version')}; "
                              f"this runner reads version {FORMAT_VERSION}")
    return description


def _check_video(video: Any) -> np.ndarray:
    """(B, 3, T, H, W) float32 from a float array of that shape or (B, 3, H, W)."""
    video = np.asarray(video)
    wanted = "a float video array (B, 3, T, H, W) or images (B, 3, H, W) in [-1, 1]"
    if not np.issubdtype(video.dtype, np.floating):
        raise OnnxRunnerError(f"expected {wanted}, got {video.dtype} of shape {video.shape}; "
                              "convert 0-255 pixels with pixels / 127.5 - 1")
    if video.ndim not in (4, 5) or video.shape[1] != 3 or 0 in video.shape:
        raise OnnxRunnerError(f"expected {wanted}, got shape {video.shape}")
    low, high = float(video.min()), float(video.max())
    if not (-1.5 <= low and high <= 1.5):  # also catches NaN
        raise OnnxRunnerError(f"expected pixel values in [-1, 1], got values in "
                              f"[{low:.4g}, {high:.4g}]; for 0-255 pixels use "
                              "pixels / 127.5 - 1")
    return video[:, :, None] if video.ndim == 4 else video
