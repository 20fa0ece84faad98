"""Decoding: index files -> videos. `DecodeRun` plans and runs many files (``vqtok decode``;
`decode_files` in one call), `decode_file` one index file (indices in memory, such as a
dataset row's: `decode_indices`), `decode_frames` frames in memory.

Planning mirrors `vqtok.pipeline.encode.EncodeRun`: a video is kept on a rerun only when it
was made from the same index file with the same model weights and frame rate
(`vqtok.pipeline.resume.DecodeRecord`), and each file is decoded with the model it names (or
``model``), each model loaded once. The index file must have been made by the
model given (`check_model_matches`); remapped indices go back to full
codebook ids with the remap file they name. Frames stream out chunk by chunk, so memory is
bounded by the chunk length, and the padding added at encode time is trimmed off.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vqtok.api import Tokenizer, load
from vqtok.errors import ConfigError, TokenFileError, VqtokError
from vqtok.families.memory import MemoryPlan
from vqtok.io.checkpoint import read_info, weights_sha256
from vqtok.io.hub import DownloadFn
from vqtok.io.model_dirs import resolve_model
from vqtok.io.pixels import video_to_frames
from vqtok.io.remap import is_remap_file
from vqtok.io.token_meta import vocabulary_of
from vqtok.io.tokens import (
    TokenMetadata,
    fps_to_text,
    index_sha256,
    load_metadata,
    load_tokens,
    sidecar_path,
)
from vqtok.io.video import as_fps
from vqtok.io.video_writer import VideoWriter
from vqtok.pipeline.options import DEFAULT_CHUNK, ProgressFn
from vqtok.pipeline.outputs import VIDEO_SUFFIXES, check_run_output
from vqtok.pipeline.plan import INDEX_EXTENSIONS, Job, plan_inputs, shard_jobs
from vqtok.pipeline.remap import load_remap_for
from vqtok.pipeline.resume import DecodeRecord
from vqtok.runtime import device_for_rank

__all__ = [
    "DecodeRecord",
    "DecodeResult",
    "DecodeRun",
    "check_model_matches",
    "decode_file",
    "decode_files",
    "decode_frames",
    "decode_indices",
]

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
    meta: TokenMetadata,
    model: Any,
    weights_sha256: str | None,
    force: bool,
    path: str | Path,
    decodes_indices_of: Sequence[str] = (),
) -> None:
    """Refuse a model that cannot decode ``meta``'s indices.

    A different vocabulary (family, kind, size, codebooks, levels, bit order) is always refused;
    different weights (SHA-256 of ``model.safetensors``) are refused unless ``force`` or the
    recorded hash is one of ``decodes_indices_of`` (the models whose indices are this model's,
    `vqtok.io.checkpoint.ModelInfo`).

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
    same = meta.model_sha256 in (weights_sha256, *decodes_indices_of)
    if meta.model_sha256 and weights_sha256 and not same and not force:
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
    lineage = (read_info(tokenizer.path).decodes_indices_of  # read only when the hashes differ
               if tokenizer.path and meta.model_sha256 != tokenizer.weights_sha256 else ())
    check_model_matches(meta, tokenizer.model, tokenizer.weights_sha256, force, source, lineage)
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


def is_index_file(path: Path) -> bool:
    """What a directory walk of ``decode`` takes: an ``.npy`` with its sidecar, or a
    ``.safetensors`` index file (not a remap file)."""
    if path.suffix == ".safetensors":
        return not is_remap_file(path)
    return sidecar_path(path).is_file()


@dataclass(frozen=True)
class DecodeRun:
    """The planned decode of a set of index files into videos.

    Attributes:
        jobs: one per index file: its video, ``done`` when a video made from the same index
            file, model weights and frame rate exists (``note``: why another is replaced).
        model: decode every file with this model; None: with the model each file names.
        model_dirs: more directories to look model names up in.
        fps: the videos' frame rate; None: each file's encoded rate.
        remap: the remap file of remapped indices.
        force: decode despite a model hash mismatch.
        chunk: frames per streaming step.
        memory: when to decode in spatial tiles (`vqtok.families.memory`).
    """

    jobs: list[Job]
    model: str | Path | None = None
    model_dirs: tuple[Path, ...] = ()
    fps: Fraction | None = None
    remap: Path | None = None
    force: bool = False
    chunk: int = DEFAULT_CHUNK
    memory: MemoryPlan = MemoryPlan()

    @classmethod
    def plan(
        cls,
        codes: Sequence[str | Path],
        output: str | Path,
        *,
        overwrite: bool = False,
        shard: tuple[int, int] | None = None,
        **settings: Any,
    ) -> DecodeRun:
        """Plan the videos (``.mp4``) of ``codes`` (index files or directories) under
        ``output``; ``settings`` are the attributes above. Arguments as `EncodeRun.plan`."""
        check_run_output(output, codes, VIDEO_SUFFIXES, "a video")
        jobs = plan_inputs(codes, output, ".mp4", extensions=INDEX_EXTENSIONS,
                           select=is_index_file, overwrite=True)
        settings["model_dirs"] = tuple(Path(d) for d in settings.get("model_dirs", ()))
        if settings.get("fps") is not None:
            settings["fps"] = as_fps(settings["fps"])
        run = cls(shard_jobs(jobs, shard), **settings)
        return run if overwrite else run._resumed()

    def _resumed(self) -> DecodeRun:
        weights: dict[str | Path, str] = {}
        jobs = []
        for job in self.jobs:
            if job.error is None and job.target.exists():
                wanted = self._record(job.path, weights)
                made = DecodeRecord.read(job.target)
                if wanted is not None and made is None:
                    job = replace(job, note="made without a record of its index file")
                elif wanted is not None and made is not None:
                    differences = wanted.differences(made)
                    note = "made " + "; ".join(differences) if differences else None
                    job = replace(job, done=not differences, note=note)
            jobs.append(job)
        return replace(self, jobs=jobs)

    def _record(self, source: Path, weights: dict[str | Path, str]) -> DecodeRecord | None:
        """What decoding ``source`` now would record; None when it cannot be told (decoding
        will report why)."""
        try:
            meta, sha = self._described(source)
            name = self.model or meta.model
            if name not in weights:
                weights[name] = weights_sha256(resolve_model(name, self.model_dirs))
            rate = as_fps(self.fps if self.fps is not None else meta.encoded.fps)
            return DecodeRecord(sha, weights[name], fps_to_text(rate))
        except (VqtokError, OSError):
            return None

    def _described(self, source: Path) -> tuple[TokenMetadata, str]:
        """The sidecar of ``source`` and the SHA-256 a video made from it records."""
        return load_metadata(source), index_sha256(source)

    def results(
        self,
        device: str = "auto",
        dtype: str | None = None,
        on_download: DownloadFn | None = None,
        progress: ProgressFn | None = None,
        on_start: Callable[[list[Job]], None] | None = None,
    ) -> Iterator[tuple[Job, Any]]:
        """Decode the files not done, in job order: (job, `DecodeResult` or the exception that
        stopped that file). Each model is loaded once, when a file first needs it, on
        ``device`` in ``dtype`` (as `vqtok.load`)."""
        models: dict[str | Path, Tokenizer] = {}

        def model_for(name: str | Path) -> Tokenizer:
            if name not in models:
                models[name] = load(name, device=device_for_rank(device), dtype=dtype,
                                    extra_dirs=self.model_dirs, on_download=on_download)
            return models[name]

        for job in self.jobs:
            if job.done:
                continue
            if on_start is not None:
                on_start([job])
            try:
                yield job, self._decode(job, model_for, progress)
            except Exception as e:  # that file's failure; the others go on
                yield job, e

    def _decode(self, job: Job, model_for: Callable[[str | Path], Tokenizer],
                progress: ProgressFn | None) -> DecodeResult:
        """Decode one job's index file with the model it names (or ``model``)."""
        tokenizer = model_for(self.model or load_metadata(job.path).model)
        return decode_file(job.path, job.target, tokenizer, fps=self.fps, remap=self.remap,
                           force=self.force, chunk=self.chunk, memory=self.memory,
                           progress=progress)


def decode_files(
    codes: Sequence[str | Path],
    output: str | Path,
    *,
    device: str = "auto",
    dtype: str | None = None,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    progress: ProgressFn | None = None,
    **settings: Any,
) -> list[tuple[Job, DecodeResult | Exception | None]]:
    """Decode index files and directories into videos, as ``vqtok decode`` does.

    Args: ``settings`` as the attributes of `DecodeRun`; the rest as `encode_files`.

    Returns:
        one (job, outcome) per index file, in order: a `DecodeResult`; None for a video kept
        from an earlier run; or the exception that stopped that file.
    """
    run = DecodeRun.plan(codes, output, overwrite=overwrite, shard=shard, **settings)
    outcomes: dict[Job, DecodeResult | Exception | None] = {
        job: None if job.error is None else ConfigError(job.error, str(job.source))
        for job in run.jobs
    }
    outcomes.update(run.results(device, dtype, progress=progress))
    return [(job, outcomes[job]) for job in run.jobs]
