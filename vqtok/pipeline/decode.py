"""Decoding one file: an index file -> a video (`decode_file`; indices in memory, such as a
dataset row's: `decode_indices`), or frames in memory.

This is what ``vqtok decode`` runs for each file. The index file must have been made by the
model given (`check_model_matches`); remapped indices go back to full
codebook ids with the remap file they name. Frames stream out chunk by chunk, so memory is
bounded by the chunk length, and the padding added at encode time is trimmed off. The video
records what it was made from (`DecodeRecord`, in its ``comment`` tag), so that a resumed run
keeps it only when the index file, the model and the frame rate are still the same.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vqtok.api import Tokenizer
from vqtok.errors import TokenFileError
from vqtok.families.memory import MemoryPlan
from vqtok.io.pixels import video_to_frames
from vqtok.io.token_meta import vocabulary_of
from vqtok.io.tokens import TokenMetadata, fps_to_text, index_sha256, load_tokens
from vqtok.io.video import as_fps
from vqtok.io.video_writer import VideoWriter, read_comment
from vqtok.pipeline.encode import DEFAULT_CHUNK, ProgressFn
from vqtok.pipeline.remap import load_remap_for

__all__ = [
    "DecodeRecord",
    "DecodeResult",
    "check_model_matches",
    "decode_file",
    "decode_frames",
    "decode_indices",
]

RECORD_FORMAT = "vqtok-decode/1"  # one per file kind: README, "File formats and their versions"


@dataclass(frozen=True)
class DecodeRecord:
    """What a decoded video was made from, stored as JSON in its ``comment`` tag.

    Attributes:
        index_sha256: `vqtok.io.tokens.index_sha256` of the index file (indices + sidecar).
        model_sha256: SHA-256 of the decoding model's weights (None: unsaved weights).
        fps: the video's frame rate, ``"num/den"``.
    """

    index_sha256: str
    model_sha256: str | None
    fps: str

    def to_text(self) -> str:
        return json.dumps({"format": RECORD_FORMAT, **asdict(self)}, sort_keys=True)

    @classmethod
    def read(cls, video: str | Path) -> DecodeRecord | None:
        """The record of a video `decode_file` wrote; None for any other file."""
        try:
            data = json.loads(read_comment(video) or "")
            if data.pop("format") != RECORD_FORMAT:
                return None
            record = cls(**data)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        types_ok = isinstance(record.index_sha256, str) and isinstance(record.fps, str)
        return record if types_ok else None

    def differences(self, made: DecodeRecord) -> list[str]:
        """How the video ``made`` differs from what this record asks for, one phrase each."""
        out = []
        if made.index_sha256 != self.index_sha256:
            out.append(f"from other indices ({made.index_sha256[:12]}..., this run: "
                       f"{self.index_sha256[:12]}...)")
        if made.model_sha256 != self.model_sha256:
            out.append(f"with other model weights ({(made.model_sha256 or 'unknown')[:12]}..., "
                       f"this run: {(self.model_sha256 or 'unknown')[:12]}...)")
        if made.fps != self.fps:
            out.append(f"at {made.fps} fps (this run: {self.fps})")
        return out


@dataclass(frozen=True)
class DecodeResult:
    """What `decode_file` wrote: the video, its frame count, rate and size (H, W)."""

    source: Path
    target: Path
    frames: int
    fps: Fraction
    size: tuple[int, int]
    seconds: float


def check_model_matches(
    meta: TokenMetadata, model: Any, weights_sha256: str | None, force: bool, path: str | Path
) -> None:
    """Refuse a model that cannot decode ``meta``'s indices.

    A different vocabulary (family, kind, size, codebooks, levels, bit order) is always refused;
    different weights (SHA-256 of ``model.safetensors``) are refused unless ``force``.

    Raises:
        TokenFileError: naming what differs and what to do.
    """
    vocabulary = vocabulary_of(model.quantizer)
    expected = {"family": meta.family, **{key: getattr(meta, key) for key in vocabulary}}
    actual = {"family": model.family, **vocabulary}
    differ = [f"{k} {expected[k]!r} vs {actual[k]!r}" for k in expected if expected[k] != actual[k]]
    if differ:
        raise TokenFileError(
            f"the model cannot decode these indices ({'; '.join(differ)} in the file vs the "
            f"model); decode with the model it was encoded with ({meta.model!r})",
            path,
            cli_message=f"the model cannot decode these indices ({'; '.join(differ)} in the "
            f"file vs the model); pass the model it was encoded with (--model {meta.model})",
        )
    if meta.model_sha256 and weights_sha256 and meta.model_sha256 != weights_sha256 and not force:
        raise TokenFileError(
            f"was encoded with model {meta.model!r} (weights sha256 {meta.model_sha256[:12]}...) "
            f"but the model given has weights {weights_sha256[:12]}...; use the right model, "
            "or force=True to decode anyway",
            path,
            cli_message=f"was encoded with model {meta.model!r} (weights sha256 "
            f"{meta.model_sha256[:12]}...) but the model given has weights "
            f"{weights_sha256[:12]}...; pass the right --model, or --force to decode anyway",
        )


def _index_chunks(indices: Tensor, latent_chunk: int, device: torch.device) -> Iterator[Tensor]:
    """(t, h, w[, L]) int64 -> consecutive (1, t_i, h, w[, L]) chunks on ``device``."""
    for piece in indices.split(latent_chunk, dim=0):
        yield piece.unsqueeze(0).to(device)


def decode_frames(
    indices: np.ndarray | Tensor,
    meta: TokenMetadata,
    tokenizer: Tokenizer,
    chunk: int = DEFAULT_CHUNK,
    memory: MemoryPlan = MemoryPlan(),
) -> Iterator[np.ndarray]:
    """Stream decoded uint8 frames (T_i, H, W, 3) of full-codebook indices, trimmed to
    ``meta.encoded.frames`` and cropped to ``meta.encoded.size`` (the temporal and spatial
    padding added at encode time is dropped); in spatial tiles where ``memory`` says so.

    Raises:
        TokenFileError: the model decodes to a size other than the recorded one.
    """
    (height, width), (pad_h, pad_w) = meta.encoded.size, meta.encoded.spatial_padding
    factor = tokenizer.spatial_factor
    if (meta.grid[1] * factor, meta.grid[2] * factor) != (height + pad_h, width + pad_w):
        raise TokenFileError(
            f"the model decodes {meta.grid[1] * factor}x{meta.grid[2] * factor} frames but the "
            f"file records {height + pad_h}x{width + pad_w} (with padding); wrong model?"
        )
    latent_chunk = max(1, chunk // tokenizer.model.temporal_factor)
    chunks = _index_chunks(torch.as_tensor(indices), latent_chunk, tokenizer.device)
    tiling = memory.tiling_for(tokenizer.model, height + pad_h, width + pad_w, latent_chunk,
                               decode=True)
    for video in tokenizer.decode_stream(chunks, frames=meta.encoded.frames, size=(height, width),
                                         tiling=tiling):
        frames = video_to_frames(video)
        if frames.shape[1:3] != tuple(meta.encoded.size):
            raise TokenFileError(
                f"the model decodes {frames.shape[1]}x{frames.shape[2]} frames but the file "
                f"records {meta.encoded.size[0]}x{meta.encoded.size[1]}; wrong model?"
            )
        if len(frames):
            yield frames


def decode_file(
    source: str | Path, target: str | Path, tokenizer: Tokenizer, **options: Any
) -> DecodeResult:
    """Decode an index file into an MP4 (H.264), atomically.

    Args:
        source: the index file (``.npy`` with its ``.json`` sidecar, or ``.safetensors``).
        target: the video to write (``.mp4``, ``.mov``, ``.mkv``).
        tokenizer: the model the file was encoded with.
        options: `decode_indices`' keyword arguments (fps, remap, force, chunk, memory,
            progress).

    Returns:
        `DecodeResult` (frames = the recorded encoded frame count, padding trimmed).

    Raises:
        TokenFileError: bad index file, model mismatch, wrong remap file.
        VideoError: the video cannot be written (nothing is left at ``target``).
    """
    indices, meta = load_tokens(source)
    return decode_indices(indices, meta, target, tokenizer, source=source,
                          record_sha256=index_sha256(source), **options)


def decode_indices(
    indices: np.ndarray,
    meta: TokenMetadata,
    target: str | Path,
    tokenizer: Tokenizer,
    *,
    source: str | Path,
    record_sha256: str,
    fps: Fraction | int | float | str | None = None,
    remap: str | Path | None = None,
    force: bool = False,
    chunk: int = DEFAULT_CHUNK,
    memory: MemoryPlan = MemoryPlan(),
    progress: ProgressFn | None = None,
) -> DecodeResult:
    """Decode indices held in memory (an index file's, a dataset row's) into a video, as
    `decode_file` does for an index file.

    Args:
        indices: (t, h, w) or (t, h, w, L) integer ids, as the index file stores them.
        meta: their sidecar.
        target: the video to write (``.mp4``, ``.mov``, ``.mkv``), atomically.
        tokenizer: the model the indices were encoded with.
        source: what they came from, for messages and the result.
        record_sha256: what the video records as its indices' hash (`DecodeRecord`).
        fps: frame rate of the output; default the recorded encoded rate.
        remap: the remap file of remapped indices (checked against the recorded SHA-256).
        force: decode even if the model's weights hash differs from the recorded one.
        chunk: frames per streaming step.
        memory: ``--tile`` / ``--max-memory``: when to decode in spatial tiles (same frames).
        progress: called with frames written since the last call.

    Returns and raises as `decode_file`.
    """
    start = time.perf_counter()
    check_model_matches(meta, tokenizer.model, tokenizer.weights_sha256, force, source)
    used = load_remap_for(meta, remap, source)
    full = torch.from_numpy(indices)
    if used is not None:
        full = used.to_full(full)
    rate = as_fps(fps if fps is not None else meta.encoded.fps)
    record = DecodeRecord(record_sha256, tokenizer.weights_sha256, fps_to_text(rate))
    height, width = meta.encoded.size
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(target, rate, width, height, comment=record.to_text()) as writer:
        for frames in decode_frames(full, meta, tokenizer, chunk, memory):
            writer.write(frames)
            if progress is not None:
                progress(len(frames), meta.encoded.frames)
    if writer.frames_written != meta.encoded.frames:
        raise TokenFileError(
            f"decoded {writer.frames_written} of the {meta.encoded.frames} frames the file "
            "records",
            source,
        )
    seconds = time.perf_counter() - start
    return DecodeResult(Path(source), Path(target), writer.frames_written, rate, (height, width),
                        seconds)
