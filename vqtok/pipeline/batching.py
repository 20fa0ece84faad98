"""A run over many videos, several encoded together in one batch (``vqtok encode --batch N``).

Short clips leave an accelerator mostly idle when encoded one at a time; `encode_jobs` stacks
up to N videos of the same frame size along the batch axis and streams them in lockstep, one
chunk each per step. A video that ends early is continued by repeating its last frame (exactly
the padding a lone encode appends) and its indices are cut back to its own latent length. The
model is causal, so latent frame k depends only on frames up to 1 + k*tau: the kept indices are
those of encoding the video alone (with the tokenizer's batch-independent search). Window-based,
non-causal families are encoded one video at a time, since there the padding would change the
last window.

Every video is attempted: a batch that fails as a whole (e.g. a reader error) is redone one
video at a time, so only the bad video reports an error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vqtok.api import Tokenizer
from vqtok.errors import VqtokError
from vqtok.io.pixels import frames_to_video
from vqtok.io.tokens import TokenMetadata, save_tokens
from vqtok.io.video import VideoReader
from vqtok.pipeline.encode import encode_each, finish_indices, open_reader
from vqtok.pipeline.options import EncodeOptions, EncodeResult, ProgressFn
from vqtok.pipeline.plan import Job
from vqtok.pipeline.prefetch import prefetch
from vqtok.pipeline.remap import RemapPlan

Outcome = EncodeResult | Exception
Encoded = tuple[np.ndarray, TokenMetadata, tuple[str, ...]] | VqtokError


def encode_jobs(
    jobs: Sequence[Job],
    tokenizer: Tokenizer,
    options: EncodeOptions = EncodeOptions(),
    batch: int = 1,
    progress: ProgressFn | None = None,
    on_start: Callable[[list[Job]], None] | None = None,
) -> Iterator[tuple[Job, Outcome]]:
    """Encode every job not marked done, up to ``batch`` videos at a time.

    Args:
        jobs: from `vqtok.pipeline.plan.plan_inputs`; ``done`` jobs are skipped (not yielded).
        tokenizer: the model.
        options: as for `vqtok.pipeline.encode.encode_file`.
        batch: how many videos of the same frame size to encode together (>= 1).
        progress: called with (frames read, frames expected) for the videos in flight.
        on_start: called with the jobs of each group as it starts.

    Yields:
        (job, `EncodeResult` or the exception that stopped it: a `VqtokError` for bad input,
        anything else for a bug or e.g. running out of memory), in job order.
    """
    group: list[tuple[Job, VideoReader]] = []
    for job in jobs:
        if job.done:
            continue
        if batch == 1 or tokenizer.model.window is not None:
            yield from encode_each([job], tokenizer, options, progress, on_start)
            continue
        try:
            reader = open_reader(job.source, tokenizer.model, options)
        except Exception as e:  # every failure is that video's outcome
            yield job, e
            continue
        if group and (reader.size != group[0][1].size or len(group) == batch):
            yield from _together(group, tokenizer, options, progress, on_start)
            group = []
        group.append((job, reader))
    if group:
        yield from _together(group, tokenizer, options, progress, on_start)


def _together(
    group: list[tuple[Job, VideoReader]],
    tokenizer: Tokenizer,
    options: EncodeOptions,
    progress: ProgressFn | None,
    on_start: Callable[[list[Job]], None] | None,
) -> Iterator[tuple[Job, Outcome]]:
    jobs = [job for job, _ in group]
    if len(group) == 1:
        yield from encode_each(jobs, tokenizer, options, progress, on_start)
        return
    if on_start is not None:
        on_start(jobs)
    start = time.perf_counter()
    try:
        encoded = encode_batch([reader for _, reader in group], tokenizer, options, progress)
    except Exception:  # whatever spoiled the batch
        # one bad video spoils the batch: redo each alone, so each reports for itself
        yield from encode_each(jobs, tokenizer, options, progress, on_start)
        return
    seconds = (time.perf_counter() - start) / len(group)
    for job, item in zip(jobs, encoded, strict=True):
        if isinstance(item, VqtokError):
            yield job, item
            continue
        indices, meta, warnings = item
        try:
            Path(job.target).parent.mkdir(parents=True, exist_ok=True)
            written = save_tokens(job.target, indices, meta, options.format)
        except Exception as e:  # every failure is that video's outcome
            yield job, e
            continue
        yield job, EncodeResult(job.source, written, meta, seconds, warnings)


def encode_batch(
    readers: list[VideoReader],
    tokenizer: Tokenizer,
    options: EncodeOptions,
    progress: ProgressFn | None = None,
) -> list[Encoded]:
    """Encode videos of one frame size together; see the module docstring.

    Returns:
        per reader, (indices, meta, warnings) as `vqtok.pipeline.encode.encode_indices` gives, or
        the `VqtokError` of that video alone (``--strict``, remap).

    Raises:
        VqtokError: what stops the whole batch (a reader failing, a bad remap file).
    """
    model = tokenizer.model
    plan = RemapPlan.open(options.remap, model) if options.remap is not None else None
    streams = [prefetch(reader) for reader in readers]
    counts = [0] * len(readers)
    expected = sum(reader.expected_frames for reader in readers)
    try:
        steps = _lockstep(streams, counts, tokenizer.device, progress, expected)
        search = None if plan is None else plan.search
        tiling = options.memory.tiling_for(model, *readers[0].size, options.chunk,
                                           batch=len(readers))
        encoded = tokenizer.encode_stream(steps, remap=search, levels=options.levels,
                                          beam=options.beam, tiling=tiling)
        pieces = [piece.cpu() for piece in encoded]
    finally:
        for stream in streams:
            stream.close()
    indices = torch.cat(pieces, dim=1)  # (B, t_i, h, w[, L]) chunks -> (B, t, h, w[, L])
    height, width = readers[0].size
    out: list[Encoded] = []
    for i, reader in enumerate(readers):
        t = tokenizer.latent_shape(counts[i], height, width)[0]
        try:
            out.append(finish_indices(indices[i, :t], counts[i], reader, tokenizer, options, plan))
        except VqtokError as e:
            out.append(e)
    return out


def _lockstep(
    streams: Sequence[Iterator[np.ndarray]],
    counts: list[int],
    device: torch.device,
    progress: ProgressFn | None,
    expected: int,
) -> Iterator[Tensor]:
    """(B, 3, T, H, W) chunks: one window of each video per step, ended videos repeating their
    last frame, until every video has ended. ``counts`` receives each video's real frames."""
    last: list[np.ndarray | None] = [None] * len(streams)
    live = [True] * len(streams)
    while True:
        windows: list[np.ndarray | None] = []
        for i, stream in enumerate(streams):
            window = next(stream, None) if live[i] else None
            live[i] = window is not None
            if window is not None:
                counts[i] += len(window)
                last[i] = window[-1:]
            windows.append(window)
        if not any(live):
            return
        length = max(len(w) for w in windows if w is not None)
        padded = []
        for window, end in zip(windows, last, strict=True):
            assert end is not None  # every video yields at least one frame (or raises)
            held = 0 if window is None else len(window)
            parts = ([] if window is None else [window]) + [np.repeat(end, length - held, axis=0)]
            padded.append(frames_to_video(np.concatenate(parts), device))
        yield torch.cat(padded)  # B x (1, 3, T, H, W) -> (B, 3, T, H, W)
        if progress is not None:
            progress(sum(len(w) for w in windows if w is not None), expected)
