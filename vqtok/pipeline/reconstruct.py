"""Round trip quality: encode a video, decode it, and measure PSNR / SSIM (``vqtok reconstruct``).

The metrics are those of `vqtok.metrics` (PSNR; SSIM of Wang et al. 2004) against the frames
that were encoded (after any resize and fps resampling), never against the padding. The
source is read twice, once to encode and once to compare while decoding, so memory stays bounded
by the chunk length like `vqtok.pipeline.encode`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vqtok.api import Tokenizer
from vqtok.disk import remove_stale
from vqtok.errors import ConfigError
from vqtok.io.video import VideoReader, as_fps
from vqtok.io.video_writer import VideoWriter
from vqtok.metrics import psnr_per_frame, ssim_per_frame
from vqtok.pipeline.decode import decode_frames
from vqtok.pipeline.encode import encode_indices, open_reader
from vqtok.pipeline.options import EncodeOptions, ProgressFn
from vqtok.pipeline.outputs import VIDEO_SUFFIXES, check_file_output
from vqtok.pipeline.prefetch import prefetch

SSIM_WINDOW = 11  # the Gaussian window of vqtok.metrics.ssim_per_frame


@dataclass(frozen=True)
class ReconstructResult:
    """PSNR (dB) and SSIM of a round trip, over the whole video and per frame.

    ``psnr`` is computed from the mean squared error over all frames (not the mean of the
    per-frame values); ``ssim`` is the mean of the per-frame SSIM.
    """

    source: Path
    target: Path | None
    frames: int
    psnr: float
    ssim: float
    psnr_per_frame: tuple[float, ...]
    ssim_per_frame: tuple[float, ...]
    seconds: float


def reconstruct_file(
    source: str | Path,
    tokenizer: Tokenizer,
    options: EncodeOptions = EncodeOptions(),
    target: str | Path | None = None,
    side_by_side: bool = False,
    progress: ProgressFn | None = None,
) -> ReconstructResult:
    """Encode and decode a video and measure PSNR / SSIM against the frames that were encoded.

    The source is read twice (once to encode, once to compare while decoding), so memory stays
    bounded by the chunk length. ``options.remap`` is ignored: the round trip uses the full
    codebook.

    Args:
        source: the video.
        tokenizer: the model.
        options: reading options (size, fps, max_frames, chunk).
        target: optionally write the reconstruction (or source | reconstruction side by side)
            to this video file.
        side_by_side: write source and reconstruction next to each other.
        progress: called with frames processed (each frame counts once encoding, once decoding).

    Returns:
        `ReconstructResult`; SSIM needs frames of at least 11 x 11 pixels.

    Raises:
        OptionError: a ``target`` not named as a video (before any work).
    """
    start = time.perf_counter()
    if target is not None:  # like encode and decode; and fail before the work, not after
        check_file_output(target, VIDEO_SUFFIXES, "a video")
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        remove_stale([Path(target).parent])
    plain = replace(options, remap=None)
    reader = open_reader(source, tokenizer.model, plain)
    if min(reader.size) < SSIM_WINDOW:
        raise ConfigError(
            f"frames of {reader.size[0]}x{reader.size[1]} are smaller than the "
            f"{SSIM_WINDOW}x{SSIM_WINDOW} SSIM window; use a larger --size",
            source,
        )

    def half(frames: int, expected: int) -> None:  # every frame is counted twice
        if progress is not None:
            progress(frames, 2 * expected)

    indices, meta, _ = encode_indices(source, tokenizer, plain, half)
    writer = None
    if target is not None:
        height, width = meta.encoded.size
        writer = VideoWriter(target, as_fps(meta.encoded.fps), width * (1 + side_by_side), height)
    try:
        decoded = decode_frames(indices, meta, tokenizer, options.chunk, options.memory)
        per_psnr, per_ssim = _compare(reader, decoded, writer, side_by_side, half,
                                      meta.encoded.frames)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
    # mean squared error of each frame, recovered from its PSNR, gives the whole-video PSNR
    mse = (255.0**2 / 10 ** (per_psnr / 10)).mean()
    overall = float(10 * torch.log10(255.0**2 / mse)) if mse > 0 else math.inf
    return ReconstructResult(
        Path(source), None if target is None else Path(target), len(per_psnr), overall,
        float(per_ssim.mean()), tuple(per_psnr.tolist()), tuple(per_ssim.tolist()),
        time.perf_counter() - start,
    )


def _compare(
    reader: VideoReader,
    decoded: Iterator[np.ndarray],
    writer: VideoWriter | None,
    side_by_side: bool,
    progress: ProgressFn,
    expected: int,
) -> tuple[Tensor, Tensor]:
    """Per-frame PSNR and SSIM of decoded windows against the reader's frames: (T,), (T,)."""
    windows = prefetch(reader)
    reference = _FrameBuffer(windows)
    errors: list[Tensor] = []
    similarity: list[Tensor] = []
    try:
        for frames in decoded:
            original = reference.take(len(frames))
            ref, rec = torch.from_numpy(original), torch.from_numpy(frames)
            errors.append(psnr_per_frame(ref, rec))
            similarity.append(ssim_per_frame(ref, rec))
            if writer is not None:
                writer.write(np.concatenate([original, frames], axis=2) if side_by_side
                             else frames)
            progress(len(frames), expected)
    finally:
        windows.close()
    return torch.cat(errors), torch.cat(similarity)


class _FrameBuffer:
    """Take frames from a stream of windows in arbitrary counts."""

    def __init__(self, windows: Iterator[np.ndarray]) -> None:
        self.windows = windows
        self.buffer: list[np.ndarray] = []
        self.held = 0

    def take(self, count: int) -> np.ndarray:
        while self.held < count:
            window = next(self.windows)
            self.buffer.append(window)
            self.held += len(window)
        frames = np.concatenate(self.buffer)
        self.buffer, self.held = [frames[count:]], len(frames) - count
        return frames[:count]
