"""File-level jobs: a video file -> an index file, an index file -> a video, and a round trip.

These are what ``vqtok encode``, ``decode`` and ``reconstruct`` run for each file; they print
nothing and report progress through a callback (`ProgressFn`: frames done since the last call,
frames expected), so the CLI (or a notebook) draws it. `vqtok.pipeline.batching` runs many files.

Memory is bounded by the chunk length, not by the video's length (design.md §5): frames are read
by a background thread (`prefetch`, a bounded queue, so FFmpeg decoding overlaps the model) in
windows of ``chunk`` frames, and flow through the tokenizer's streaming ``encode_stream`` /
``decode_stream``, which carry the causal convolutions' state from chunk to chunk. Only the
index grid (tau * f^2 times smaller than the pixels) is kept whole.

The causal temporal convention: a clip of 1 + k*tau frames gives 1 + k latent frames. Other
lengths are padded by repeating the last frame (for window-based families, the last window is
padded to 1 + k*tau); the index file records the real frame count, and decode trims to it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from queue import Empty, Full, Queue
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from vqtok.api import Tokenizer
from vqtok.errors import ConfigError, TokenFileError, VideoError
from vqtok.io.tokens import (
    EncodedInfo,
    EncodeSettings,
    SourceInfo,
    TokenFormat,
    TokenMetadata,
    load_tokens,
    save_tokens,
)
from vqtok.io.video import VideoReader, VideoWriter, as_fps
from vqtok.pipeline.matching import (
    RemapPlan,
    check_model_matches,
    describe_quantizer,
    load_remap_for,
)

T = TypeVar("T")
ProgressFn = Callable[[int, int], None]
"""Called as frames are processed: (frames since the previous call, frames expected in all)."""

DEFAULT_CHUNK = 16


@dataclass(frozen=True)
class EncodeOptions:
    """How frames are read and indices stored.

    Attributes:
        size: (H, W) to resize every frame to (the tokenizer pads it to the spatial factor).
        short_side: resize so the shorter side is this many pixels, keeping the aspect ratio.
        fps: resample to this frame rate; None keeps every frame.
        max_frames: encode at most this many frames.
        chunk: frames per streaming step; bounds memory.
        format: ``"npy"`` (+ ``.json`` sidecar) or ``"safetensors"``.
        remap: a remap file (``vqtok remap build``: ``.npy`` for one codebook, ``.safetensors``
            with one used set per codebook / level); indices are stored as compact ids.
        strict: a damaged input (truncated, corrupt packets) is an error, not a warning.
        levels: residual models: keep the first k levels (``--levels``); None keeps all.
    """

    size: tuple[int, int] | None = None
    short_side: int | None = None
    fps: Fraction | int | float | str | None = None
    max_frames: int | None = None
    chunk: int = DEFAULT_CHUNK
    format: TokenFormat = "npy"
    remap: Path | None = None
    strict: bool = False
    levels: int | None = None

    def settings(self) -> EncodeSettings:
        """What an index file records of these options (a resumed run compares them)."""
        return EncodeSettings(
            size=None if self.size is None else (int(self.size[0]), int(self.size[1])),
            short_side=self.short_side,
            fps=None if self.fps is None else _fraction(as_fps(self.fps)),
            max_frames=self.max_frames,
            levels=self.levels,
        )


@dataclass(frozen=True)
class EncodeResult:
    """What `encode_file` did: the index file, its metadata, frames, time, input warnings."""

    source: Path
    target: Path
    meta: TokenMetadata
    seconds: float
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class DecodeResult:
    """What `decode_file` wrote: the video, its frame count, rate and size (H, W)."""

    source: Path
    target: Path
    frames: int
    fps: Fraction
    size: tuple[int, int]
    seconds: float


def prefetch(items: Iterable[T], depth: int = 2) -> Generator[T, None, None]:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead.

    An exception in the thread is raised here, in the consumer; stopping early (``close()``)
    stops the thread and closes the underlying iterator.
    """
    queue: Queue[tuple[bool, Any]] = Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            with contextlib.suppress(Full):
                queue.put(entry, timeout=0.05)
                return True
        return False

    def work() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put((False, item)):
                    return
            put((True, None))
        except BaseException as e:  # handed to the consumer, which re-raises it
            put((True, e))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="vqtok-reader", daemon=True)
    thread.start()
    try:
        while True:
            with contextlib.suppress(Empty):
                end, value = queue.get(timeout=0.1)
                if end and value is not None:
                    raise value
                if end:
                    return
                yield value
                continue
            if not thread.is_alive() and queue.empty():
                return
    finally:
        stop.set()
        thread.join()


def frames_to_video(frames: np.ndarray, device: torch.device) -> Tensor:
    """uint8 frames (T, H, W, 3) -> float32 video (1, 3, T, H, W) in [-1, 1] on ``device``."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    video = video.permute(3, 0, 1, 2).unsqueeze(0)  # (T, H, W, 3) -> (1, 3, T, H, W)
    return video.float() / 127.5 - 1.0


def video_to_frames(video: Tensor) -> np.ndarray:
    """Video (1, 3, T, H, W), any float dtype, ~[-1, 1] -> uint8 frames (T, H, W, 3)."""
    pixels = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).cpu().numpy()  # (3, T, H, W) -> (T, H, W, 3)


def _video_chunks(
    windows: Iterable[np.ndarray],
    device: torch.device,
    progress: ProgressFn | None,
    expected: int,
) -> Iterator[Tensor]:
    """uint8 windows -> video chunks for ``encode_stream``, reporting progress as they go."""
    for frames in windows:
        yield frames_to_video(frames, device)
        if progress is not None:
            progress(len(frames), expected)


def open_reader(source: str | Path, model: Any, options: EncodeOptions) -> VideoReader:
    """The `VideoReader` for ``source`` with the options' geometry; nothing is cropped (the
    tokenizer pads H and W to the model's spatial factor, and decode crops the padding off).

    Raises:
        ConfigError: frames smaller than one latent cell (the model's spatial factor).
    """
    reader = VideoReader(
        source,
        size=options.size,
        short_side=options.short_side,
        fps=options.fps,
        max_frames=options.max_frames,
        window=options.chunk,
    )
    factor = model.spatial_factor
    if min(reader.size) < factor:
        raise ConfigError(
            f"frames of {reader.size[1]}x{reader.size[0]} are smaller than the model's spatial "
            f"factor {factor}; use a larger --size",
            source,
        )
    return reader


def encode_indices(
    source: str | Path,
    tokenizer: Tokenizer,
    options: EncodeOptions = EncodeOptions(),
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, TokenMetadata, tuple[str, ...]]:
    """Encode a video file into indices in memory (what `encode_file` saves).

    Returns:
        (indices, meta, warnings): int64 (t, h, w[, L]) indices (compact ids under a remap),
        their metadata, and the reader's warnings about a damaged input.

    Raises:
        VideoError: unreadable input, or (``strict``) a damaged one.
        RemapError: a bad remap file, or codes outside it for a quantizer without a
            restricted search.
    """
    model = tokenizer.model
    reader = open_reader(source, model, options)
    plan = RemapPlan.open(options.remap, model) if options.remap is not None else None
    windows = prefetch(reader)
    try:
        chunks = _video_chunks(windows, tokenizer.device, progress, reader.expected_frames)
        stream = tokenizer.encode_stream(
            chunks, remap=None if plan is None else plan.search, levels=options.levels
        )
        pieces = [piece.cpu() for piece in stream]
    finally:
        windows.close()
    if not pieces:
        raise VideoError("no video frame could be encoded", source)
    indices = torch.cat(pieces, dim=1)[0]  # (1, t, h, w[, L]) chunks -> (t, h, w[, L])
    return finish_indices(indices, stream.frames, reader, tokenizer, options, plan)


def finish_indices(
    indices: Tensor,
    frames: int,
    reader: VideoReader,
    tokenizer: Tokenizer,
    options: EncodeOptions,
    plan: RemapPlan | None,
) -> tuple[np.ndarray, TokenMetadata, tuple[str, ...]]:
    """One video's encoded indices (t, h, w[, L]) -> what `encode_indices` returns.

    Applies ``--strict`` to the reader's warnings and the remap plan, and builds the metadata.
    """
    source = reader.path
    if options.strict and reader.warnings:
        raise VideoError(f"damaged input (--strict): {reader.warnings[0]}", source)
    if plan is not None:
        indices = plan.to_compact(indices, source)
    meta = build_metadata(tokenizer, reader, frames, tuple(indices.shape[:3]), options, plan)
    return indices.numpy(), meta, tuple(reader.warnings)


def build_metadata(
    tokenizer: Tokenizer,
    reader: VideoReader,
    frames: int,
    grid: tuple[int, ...],
    options: EncodeOptions,
    plan: RemapPlan | None,
) -> TokenMetadata:
    """The index-file metadata of ``frames`` real frames read by ``reader``, encoded to
    a (t, h, w) ``grid``."""
    model, info = tokenizer.model, reader.info
    quantizer = describe_quantizer(model)
    total = tokenizer.padded_frames(frames)
    windows = None
    if model.window is not None:
        windows = tuple((a, min(model.window, total - a)) for a in range(0, total, model.window))
    resize = "size" if options.size else "short_side" if options.short_side else "none"
    padded = tokenizer.padded_size(*reader.size)
    return TokenMetadata(
        model=tokenizer.name,
        model_sha256=tokenizer.weights_sha256,
        family=model.family,
        quantizer=quantizer.kind,
        codebook_size=quantizer.codebook_size,
        num_codebooks=quantizer.num_codebooks,
        grid=(grid[0], grid[1], grid[2]),
        source=SourceInfo(
            Path(info.path).name, info.frames, _fraction(info.fps), (info.height, info.width)
        ),
        encoded=EncodedInfo(
            frames, reader.size, resize, total - frames, _fraction(reader.fps),
            (padded[0] - reader.size[0], padded[1] - reader.size[1]),
        ),
        bit_order=quantizer.bit_order,
        levels=quantizer.levels,
        windows=windows,
        remap=None if plan is None else plan.info,
        settings=options.settings(),
    )


def _fraction(value: Fraction) -> str:
    return f"{value.numerator}/{value.denominator}"


def encode_file(
    source: str | Path,
    target: str | Path,
    tokenizer: Tokenizer,
    options: EncodeOptions = EncodeOptions(),
    progress: ProgressFn | None = None,
) -> EncodeResult:
    """Encode a video file into an index file (+ sidecar), atomically.

    Args:
        source: the video.
        target: the index file; its suffix follows ``options.format`` (see `save_tokens`).
        tokenizer: a loaded tokenizer (`vqtok.load`).
        options: reading and storage options.
        progress: called with frames read since the last call.

    Returns:
        `EncodeResult`; ``meta`` describes what was written.

    Raises:
        VqtokError: a `VideoError` for the input, `RemapError` for the remap file,
            `TokenFileError` if the output cannot be written; nothing is left at ``target``.
    """
    start = time.perf_counter()
    indices, meta, warnings = encode_indices(source, tokenizer, options, progress)
    Path(target).parent.mkdir(parents=True, exist_ok=True)  # mirrored sub-directories
    written = save_tokens(target, indices, meta, options.format)
    return EncodeResult(Path(source), written, meta, time.perf_counter() - start, warnings)


def _index_chunks(indices: Tensor, latent_chunk: int, device: torch.device) -> Iterator[Tensor]:
    """(t, h, w[, L]) int64 -> consecutive (1, t_i, h, w[, L]) chunks on ``device``."""
    for piece in indices.split(latent_chunk, dim=0):
        yield piece.unsqueeze(0).to(device)


def decode_frames(
    indices: np.ndarray | Tensor,
    meta: TokenMetadata,
    tokenizer: Tokenizer,
    chunk: int = DEFAULT_CHUNK,
) -> Iterator[np.ndarray]:
    """Stream decoded uint8 frames (T_i, H, W, 3) of full-codebook indices, trimmed to
    ``meta.encoded.frames`` and cropped to ``meta.encoded.size`` (the temporal and spatial
    padding added at encode time is dropped).

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
    for video in tokenizer.decode_stream(chunks, frames=meta.encoded.frames, size=(height, width)):
        frames = video_to_frames(video)
        if frames.shape[1:3] != tuple(meta.encoded.size):
            raise TokenFileError(
                f"the model decodes {frames.shape[1]}x{frames.shape[2]} frames but the file "
                f"records {meta.encoded.size[0]}x{meta.encoded.size[1]}; wrong model?"
            )
        if len(frames):
            yield frames


def decode_file(
    source: str | Path,
    target: str | Path,
    tokenizer: Tokenizer,
    *,
    fps: Fraction | int | float | str | None = None,
    remap: str | Path | None = None,
    force: bool = False,
    chunk: int = DEFAULT_CHUNK,
    progress: ProgressFn | None = None,
) -> DecodeResult:
    """Decode an index file into an MP4 (H.264), atomically.

    Args:
        source: the index file (``.npy`` with its ``.json`` sidecar, or ``.safetensors``).
        target: the video to write (``.mp4``, ``.mov``, ``.mkv``).
        tokenizer: the model the file was encoded with.
        fps: frame rate of the output; default the recorded encoded rate.
        remap: the remap file of remapped indices (checked against the recorded SHA-256).
        force: decode even if the model's weights hash differs from the recorded one.
        chunk: frames per streaming step.
        progress: called with frames written since the last call.

    Returns:
        `DecodeResult` (frames = the recorded encoded frame count, padding trimmed).

    Raises:
        TokenFileError: bad index file, model mismatch, wrong remap file.
        VideoError: the video cannot be written (nothing is left at ``target``).
    """
    start = time.perf_counter()
    indices, meta = load_tokens(source)
    check_model_matches(meta, tokenizer.model, tokenizer.weights_sha256, force, source)
    used = load_remap_for(meta, remap, source)
    full = torch.from_numpy(indices)
    if used is not None:
        full = used.to_full(full)
    rate = as_fps(fps if fps is not None else meta.encoded.fps)
    height, width = meta.encoded.size
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(target, rate, width, height) as writer:
        for frames in decode_frames(full, meta, tokenizer, chunk):
            writer.write(frames)
            if progress is not None:
                progress(len(frames), meta.encoded.frames)
    if writer.frames_written != meta.encoded.frames:
        raise TokenFileError(
            f"decoded {writer.frames_written} frames, the file records {meta.encoded.frames}",
            source,
        )
    seconds = time.perf_counter() - start
    return DecodeResult(Path(source), Path(target), writer.frames_written, rate, (height, width),
                        seconds)
