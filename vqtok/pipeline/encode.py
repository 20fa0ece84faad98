"""Encoding one file: a video file -> an index file (`encode_file`), or indices in memory.

This is what ``vqtok encode`` runs for each file (`vqtok.pipeline.decode` is the way back,
`vqtok.pipeline.reconstruct` the round trip); they print nothing and report progress through a
callback (`ProgressFn`: frames done since the last call, frames expected), so the CLI draws it.
`encode_each` runs many files one at a time, `vqtok.pipeline.batching` several together.

Memory is bounded by the chunk length, not by the video's length: frames are read by a
background thread (`prefetch`, a bounded queue, so decoding overlaps the model) in windows of
``chunk`` frames through the tokenizer's streaming ``encode_stream``, which carries the causal
convolutions' state from chunk to chunk; only the index grid is kept whole. Large frames are
worked in spatial tiles when an untiled pass would exceed the budget (`vqtok.families.memory`).

A clip of 1 + k*tau frames gives 1 + k latent frames; other lengths are padded by repeating the
last frame (`vqtok.clips.padded_length`); the index file records the real frame count.
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
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor

from vqtok.api import Tokenizer
from vqtok.errors import ConfigError, VideoError
from vqtok.families.memory import MemoryPlan
from vqtok.io.pixels import frames_to_video
from vqtok.io.sources import ClipSource
from vqtok.io.token_meta import vocabulary_of
from vqtok.io.tokens import (
    EncodedInfo,
    EncodeSettings,
    SourceInfo,
    TokenFormat,
    TokenMetadata,
    save_tokens,
)
from vqtok.io.video import Source, VideoInfo, VideoReader, as_fps
from vqtok.pipeline.plan import Job
from vqtok.pipeline.remap import RemapPlan

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
        beam: residual models: search the levels with a beam of this many paths (``--beam``;
            1 is greedy); None keeps the model's own search.
        memory: ``--tile`` / ``--max-memory``: when to work in spatial tiles (same indices).
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
    beam: int | None = None
    memory: MemoryPlan = MemoryPlan()

    def settings(self, model_beam: int = 1) -> EncodeSettings:
        """What an index file records of these options (a resumed run compares them); its
        ``beam`` is the search used: ``--beam``, else ``model_beam`` (the model's own beam
        width) when above 1, so a change of the model's search is seen on resume."""
        beam = self.beam if self.beam is not None else (model_beam if model_beam > 1 else None)
        return EncodeSettings(
            size=None if self.size is None else (int(self.size[0]), int(self.size[1])),
            short_side=self.short_side,
            fps=None if self.fps is None else _fraction(as_fps(self.fps)),
            max_frames=self.max_frames,
            levels=self.levels,
            beam=beam,
        )


@dataclass(frozen=True)
class EncodeResult:
    """What `encode_file` did: the index file, its metadata, frames, time, input warnings."""

    source: Path | ClipSource
    target: Path
    meta: TokenMetadata
    seconds: float
    warnings: tuple[str, ...] = ()


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


def open_reader(source: Source, model: Any, options: EncodeOptions) -> VideoReader:
    """The `VideoReader` for ``source`` with the options' geometry; nothing is cropped (the
    tokenizer pads H and W to the model's spatial factor, and decode crops the padding off).

    Raises:
        ConfigError: frames smaller than one latent cell (the model's spatial factor).
    """
    reader = VideoReader(source, size=options.size, short_side=options.short_side,
                         fps=options.fps, max_frames=options.max_frames, window=options.chunk)
    check_frame_size(reader.size, model, source)
    if model.tiles and options.memory.tiling_for(model, *reader.size, options.chunk):
        reader.window = min(options.chunk, model.temporal_factor)  # tiled: a frame at a time
    return reader


def check_frame_size(size: tuple[int, int], model: Any, source: Source) -> None:
    """Refuse frames of (H, W) ``size`` smaller than one latent cell of ``model``.

    Raises:
        ConfigError: naming the size, the model's spatial factor and ``--size``.
    """
    factor = model.spatial_factor
    if min(size) < factor:
        raise ConfigError(
            f"frames of {size[1]}x{size[0]} are smaller than the model's spatial "
            f"factor {factor}; use a larger --size",
            str(source),
        )


def encode_indices(
    source: Source,
    tokenizer: Tokenizer,
    options: EncodeOptions = EncodeOptions(),
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, TokenMetadata, tuple[str, ...]]:
    """Encode a video file (or a `ClipSource`: a URL, a tar member, a clip of a video) into
    indices in memory (what `encode_file` saves).

    Returns:
        (indices, meta, warnings): int64 (t, h, w[, L]) indices (compact ids under a remap),
        their metadata, and the reader's warnings about a damaged input (and its notes, such
        as a variable frame rate resampled).

    Raises:
        VideoError: unreadable input, or (``strict``) a damaged one.
        RemapError: a bad remap file, or codes outside it for a quantizer without a
            restricted search.
    """
    reader = open_reader(source, tokenizer.model, options)
    plan = RemapPlan.open(options.remap, tokenizer.model) if options.remap is not None else None
    windows = prefetch(reader)
    try:
        return encode_windows(windows, reader, tokenizer, options, progress, plan)
    finally:
        windows.close()


class ReadFacts(Protocol):
    """How a video's frames were read: what `encode_windows` records in the metadata. A
    `VideoReader` has it all; frames decoded elsewhere (a Ray task) carry the same facts."""

    @property
    def path(self) -> Path | ClipSource: ...
    @property
    def name(self) -> str: ...
    @property
    def info(self) -> VideoInfo: ...
    @property
    def size(self) -> tuple[int, int]: ...
    @property
    def fps(self) -> Fraction: ...
    @property
    def warnings(self) -> list[str]: ...
    @property
    def notes(self) -> list[str]: ...
    @property
    def expected_frames(self) -> int: ...


def encode_windows(
    windows: Iterable[np.ndarray],
    reader: ReadFacts,
    tokenizer: Tokenizer,
    options: EncodeOptions = EncodeOptions(),
    progress: ProgressFn | None = None,
    plan: RemapPlan | None = None,
) -> tuple[np.ndarray, TokenMetadata, tuple[str, ...]]:
    """Encode one video's uint8 RGB windows (T_i, H, W, 3), read as ``reader`` says; returns
    what `encode_indices` returns (the same indices for the same frames, whatever the windows).

    Raises:
        VideoError: no frame, or (``strict``) a damaged input; RemapError: as `encode_indices`.
    """
    if plan is None and options.remap is not None:
        plan = RemapPlan.open(options.remap, tokenizer.model)
    chunks = _video_chunks(windows, tokenizer.device, progress, reader.expected_frames)
    stream = tokenizer.encode_stream(
        chunks, remap=None if plan is None else plan.search, levels=options.levels,
        beam=options.beam, tiling=options.memory.tiling_for(tokenizer.model, *reader.size,
                                                            options.chunk),
    )
    pieces = [piece.cpu() for piece in stream]
    if not pieces:
        raise VideoError("no video frame could be encoded", str(reader.path))
    indices = torch.cat(pieces, dim=1)[0]  # (1, t, h, w[, L]) chunks -> (t, h, w[, L])
    return finish_indices(indices, stream.frames, reader, tokenizer, options, plan)


def finish_indices(
    indices: Tensor,
    frames: int,
    reader: ReadFacts,
    tokenizer: Tokenizer,
    options: EncodeOptions,
    plan: RemapPlan | None,
) -> tuple[np.ndarray, TokenMetadata, tuple[str, ...]]:
    """One video's encoded indices (t, h, w[, L]) -> what `encode_indices` returns.

    Applies ``--strict`` to the reader's warnings and the remap plan, and builds the metadata.
    """
    source = str(reader.path)
    if options.strict and reader.warnings:
        raise VideoError(f"damaged input (--strict): {reader.warnings[0]}", source)
    if plan is not None:
        indices = plan.to_compact(indices, source)
    meta = build_metadata(tokenizer, reader, frames, tuple(indices.shape[:3]), options, plan)
    return indices.numpy(), meta, (*reader.warnings, *reader.notes)


def build_metadata(
    tokenizer: Tokenizer,
    reader: ReadFacts,
    frames: int,
    grid: tuple[int, ...],
    options: EncodeOptions,
    plan: RemapPlan | None,
) -> TokenMetadata:
    """The index-file metadata of ``frames`` real frames read by ``reader``, encoded to
    a (t, h, w) ``grid``."""
    model, info = tokenizer.model, reader.info
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
        **vocabulary_of(model.quantizer),
        grid=(grid[0], grid[1], grid[2]),
        source=SourceInfo(
            reader.name, info.frames, _fraction(info.fps), (info.height, info.width)
        ),
        encoded=EncodedInfo(
            frames, reader.size, resize, total - frames, _fraction(reader.fps),
            (padded[0] - reader.size[0], padded[1] - reader.size[1]),
        ),
        windows=windows,
        remap=None if plan is None else plan.info,
        settings=options.settings(model.quantizer.beam_width),
    )


def _fraction(value: Fraction) -> str:
    return f"{value.numerator}/{value.denominator}"


def encode_file(
    source: Source,
    target: str | Path,
    tokenizer: Tokenizer,
    options: EncodeOptions = EncodeOptions(),
    progress: ProgressFn | None = None,
) -> EncodeResult:
    """Encode a video file into an index file (+ sidecar), atomically.

    Args:
        source: the video (a path or a `ClipSource`).
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
    where = source if isinstance(source, ClipSource) else Path(source)
    return EncodeResult(where, written, meta, time.perf_counter() - start, warnings)


def encode_each(
    jobs: Iterable[Job],
    tokenizer: Tokenizer,
    options: EncodeOptions = EncodeOptions(),
    progress: ProgressFn | None = None,
    on_start: Callable[[list[Job]], None] | None = None,
) -> Iterator[tuple[Job, EncodeResult | Exception]]:
    """Encode jobs one at a time with `encode_file`, in order (``--batch 1``; several together:
    `vqtok.pipeline.batching.encode_jobs`).

    Yields:
        (job, `EncodeResult` or the exception that stopped it: a `VqtokError` for bad input,
        anything else for a bug or e.g. running out of memory); ``on_start([job])`` first.
    """
    for job in jobs:
        if on_start is not None:
            on_start([job])
        try:
            yield job, encode_file(job.source, job.target, tokenizer, options, progress)
        except Exception as e:  # every failure is that video's outcome
            yield job, e
