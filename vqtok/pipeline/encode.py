"""Encoding video files into index files: one file (`encode_file`; `encode_indices` keeps the
indices in memory) and a run of many (`EncodeRun`, `encode_files`: what ``vqtok encode`` does).

A run plans the outputs of its inputs (files and directories mirrored into an output directory,
URLs, tar shards, manifests), takes this process's share (``shard``), keeps outputs complete and
made the same way (resume), loads the model only when something is left, checks ``levels``,
``beam`` and the remap file against it once, and encodes each file (several of one size
together: `vqtok.pipeline.batching`). `EncodeRun` is that in steps, for the CLI::

    run = EncodeRun.plan(["clips/"], "codes/", options=EncodeOptions(format="npy"))
    tokenizer = run.load(device="auto")         # None when every output is complete
    for job, result in run.results(tokenizer):  # EncodeResult, or the exception of that file
        ...

Nothing here prints; progress goes to a callback (`ProgressFn`). Memory is bounded by the chunk
length: frames are read by a background thread (`vqtok.pipeline.prefetch`) in windows of
``chunk`` frames through the tokenizer's streaming ``encode_stream``; only the index grid is
kept whole, and large frames are worked in spatial tiles (`vqtok.families.memory`). Lengths
other than 1 + k*tau are padded by repeating the last frame (`vqtok.clips.padded_length`); the
index file records the real frame count. `vqtok.pipeline.decode` is the way back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vqtok.api import DEFAULT_MODEL, Tokenizer, load
from vqtok.errors import ConfigError, OptionError, VideoError
from vqtok.io.hub import DownloadFn
from vqtok.io.pixels import frames_to_video
from vqtok.io.remap import require_remap_file
from vqtok.io.sources import ClipSource
from vqtok.io.tokens import TokenMetadata, index_path, save_tokens
from vqtok.io.video import Source, VideoReader
from vqtok.pipeline.inputs import needs_sources, plan_clips
from vqtok.pipeline.options import (
    EncodeOptions,
    EncodeResult,
    ProgressFn,
    ReadFacts,
    build_metadata,
    check_frame_size,
)
from vqtok.pipeline.outputs import INDEX_SUFFIXES, check_run_output
from vqtok.pipeline.plan import Job, plan_inputs, shard_jobs
from vqtok.pipeline.prefetch import prefetch
from vqtok.pipeline.remap import RemapPlan
from vqtok.pipeline.resume import Resume
from vqtok.runtime import device_for_rank

__all__ = [
    "EncodeOptions", "EncodeResult", "EncodeRun", "encode_each", "encode_file", "encode_files",
    "encode_indices", "encode_windows",
]


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
    meta = build_metadata(tokenizer, reader, frames, tuple(indices.shape[:3]), options, plan,
                          tokenizer.weights_sha256)
    return indices.numpy(), meta, (*reader.warnings, *reader.notes)


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


@dataclass(frozen=True)
class EncodeRun:
    """The planned encode of a set of files.

    Attributes:
        jobs: one per input file: its index file, ``done`` when a complete output made the
            same way exists (or ``error`` when planning failed, e.g. two inputs, one output).
        model: the model name, directory or Hub repository (None: the default model).
        model_dirs: more directories to look model names up in.
        options: how frames are read and indices stored.
        batch: how many videos of the same size to encode together.
    """

    jobs: list[Job]
    model: str | Path | None = None
    model_dirs: tuple[Path, ...] = ()
    options: EncodeOptions = EncodeOptions()
    batch: int = 1

    @classmethod
    def plan(
        cls,
        inputs: Sequence[str | Path],
        output: str | Path,
        *,
        model: str | Path | None = None,
        model_dirs: Iterable[str | Path] = (),
        options: EncodeOptions = EncodeOptions(),
        batch: int = 1,
        overwrite: bool = False,
        shard: tuple[int, int] | None = None,
    ) -> EncodeRun:
        """Plan the outputs of ``inputs`` under ``output`` (an index file for one input, or a
        directory; the suffix follows ``options.format``). Inputs are files and directories,
        or URLs, WebDataset ``.tar`` shards and clip manifests (`vqtok.pipeline.inputs`:
        each clip's output is ``output/<key>``).

        Args:
            shard: (i, n): only share i of n of the files, balanced by size
                (`vqtok.pipeline.plan.shard`); None: all of them.
            overwrite: encode again outputs that are complete; otherwise they are kept when
                made by this model with these options, and replaced (with a ``note``) if not.

        Raises:
            ConfigError: no input; OptionError: an impossible output (`check_run_output`);
            RemapError: no remap file at ``options.remap``; CheckpointError: the model
                cannot be found (resuming compares its weights' SHA-256).
        """
        if batch < 1:
            raise OptionError("--batch", f"batch must be >= 1, got {batch}")
        check_run_output(output, inputs, INDEX_SUFFIXES, "an index file", other_names=True)
        if options.remap is not None:
            require_remap_file(options.remap)
        suffix = f".{options.format}"
        if needs_sources(inputs, output):  # URLs, tar shards, manifests
            planned = plan_clips(inputs, output, suffix)
        else:
            planned = plan_inputs(inputs, output, suffix, overwrite=True)
        jobs = shard_jobs(planned, shard)
        jobs = [replace(job, target=index_path(job.target, options.format)) for job in jobs]
        run = cls(jobs, model, tuple(Path(d) for d in model_dirs), options, batch)
        return run if overwrite else run._resumed()

    def _resumed(self) -> EncodeRun:
        """Jobs whose output exists, is complete and was made this way marked done."""
        if not any(job.error is None and job.target.exists() for job in self.jobs):
            return self
        resume = Resume.for_run(self.model or DEFAULT_MODEL, list(self.model_dirs), self.options)
        jobs = []
        for job in self.jobs:
            if job.error is None:
                keep, note = resume.check(job.target)
                job = replace(job, done=keep, note=note)
            jobs.append(job)
        return replace(self, jobs=jobs)

    @property
    def pending(self) -> bool:
        """Whether any file is left to encode."""
        return any(not job.done for job in self.jobs)

    def load(
        self,
        device: str = "auto",
        dtype: str | None = None,
        on_download: DownloadFn | None = None,
    ) -> Tokenizer | None:
        """The model, checked once against ``levels`` and the remap file; None (nothing is
        loaded) when every output is complete.

        Raises:
            CheckpointError: the model cannot be loaded; OptionError: ``levels`` the model
                cannot keep; RemapError: a remap file that does not fit the model.
        """
        if not self.pending:
            return None
        tokenizer = load(self.model, device=device_for_rank(device), dtype=dtype,
                         extra_dirs=self.model_dirs, on_download=on_download)
        self.check(tokenizer)
        return tokenizer

    def check(self, tokenizer: Tokenizer) -> None:
        """Fail once, before any file, for options the model cannot take."""
        if self.options.levels is not None:
            try:
                tokenizer.check_levels(self.options.levels)
            except ConfigError as e:
                raise OptionError("--levels", e.message) from None
        if self.options.beam is not None:
            try:
                tokenizer.check_beam(self.options.beam)
            except ConfigError as e:
                raise OptionError("--beam", e.message) from None
        if self.options.remap is not None:
            RemapPlan.open(self.options.remap, tokenizer.model)

    def results(
        self,
        tokenizer: Tokenizer | None,
        progress: ProgressFn | None = None,
        on_start: Callable[[list[Job]], None] | None = None,
    ) -> Iterator[tuple[Job, Any]]:
        """Encode the files not done, in job order: (job, `EncodeResult` or the exception that
        stopped that file). Jobs done or failed while planning are not yielded."""
        todo = [job for job in self.jobs if not job.done]
        if not todo:
            return
        if tokenizer is None:
            raise ConfigError("files are left to encode but no model was given")
        if self.batch == 1:
            yield from encode_each(todo, tokenizer, self.options, progress, on_start)
        else:  # imported here: batching is built on this module's per-file steps
            from vqtok.pipeline.batching import encode_jobs

            yield from encode_jobs(todo, tokenizer, self.options, self.batch, progress, on_start)


def encode_files(
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    model: str | Path | None = None,
    model_dirs: Iterable[str | Path] = (),
    device: str = "auto",
    dtype: str | None = None,
    options: EncodeOptions = EncodeOptions(),
    batch: int = 1,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    progress: ProgressFn | None = None,
) -> list[tuple[Job, EncodeResult | Exception | None]]:
    """Encode video files and directories into index files, as ``vqtok encode`` does.

    Args: as `EncodeRun.plan` and `EncodeRun.load`; ``progress`` is called with (frames read,
    frames expected) of the videos in flight.

    Returns:
        one (job, outcome) per input file, in order: an `EncodeResult`; None for an output kept
        from an earlier run; or the exception that stopped that file (a `VqtokError` for a bad
        input; the other files are still encoded).

    Raises:
        VqtokError: what fails the whole run (no input, the model, ``levels``, the remap file).
    """
    run = EncodeRun.plan(inputs, output, model=model, model_dirs=model_dirs, options=options,
                         batch=batch, overwrite=overwrite, shard=shard)
    outcomes: dict[Job, EncodeResult | Exception | None] = {
        job: None if job.error is None else ConfigError(job.error, str(job.source))
        for job in run.jobs
    }
    outcomes.update(run.results(run.load(device, dtype), progress))
    return [(job, outcomes[job]) for job in run.jobs]
