"""Encoding and decoding many files: the file-level API that ``vqtok encode`` / ``decode`` and
Python users share.

`encode_files` does in one call what ``vqtok encode`` does: plan the outputs of the inputs
(files and directories, mirrored into an output directory), take this process's share of them
(``shard``), keep outputs already complete and made the same way (resume), load the model only
when something is left to encode, check ``levels`` and the remap file against it once, and
encode (`vqtok.pipeline.batching`). `EncodeRun` is the same in steps, for a caller that shows the
plan or draws progress (the CLI)::

    run = EncodeRun.plan(["clips/"], "codes/", options=EncodeOptions(format="npy"))
    tokenizer = run.load(device="auto")         # None when every output is complete
    for job, result in run.results(tokenizer):  # EncodeResult, or the exception of that file
        ...

`DecodeRun` and `decode_files` are the same for index files -> videos: a video is kept on a
rerun only when it was made from the same index file (its hash) with the same model weights and
frame rate (`vqtok.pipeline.decode.DecodeRecord`), and each file is decoded with the model it
names (or ``model``), each model loaded once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

from vqtok.api import DEFAULT_MODEL, Tokenizer, load
from vqtok.errors import ConfigError, OptionError, VqtokError
from vqtok.families.memory import MemoryPlan
from vqtok.io.checkpoint import weights_sha256
from vqtok.io.hub import DownloadFn
from vqtok.io.model_dirs import resolve_model
from vqtok.io.remap import is_remap_file, require_remap_file
from vqtok.io.tokens import (
    TokenMetadata,
    fps_to_text,
    index_path,
    index_sha256,
    load_metadata,
    sidecar_path,
)
from vqtok.io.video import as_fps
from vqtok.pipeline.batching import encode_jobs
from vqtok.pipeline.decode import DecodeRecord, DecodeResult, decode_file
from vqtok.pipeline.encode import (
    DEFAULT_CHUNK,
    EncodeOptions,
    EncodeResult,
    ProgressFn,
    encode_each,
)
from vqtok.pipeline.inputs import needs_sources, plan_clips
from vqtok.pipeline.outputs import INDEX_SUFFIXES, VIDEO_SUFFIXES, check_run_output
from vqtok.pipeline.plan import INDEX_EXTENSIONS, Job, plan_inputs, shard_jobs
from vqtok.pipeline.remap import RemapPlan
from vqtok.pipeline.resume import Resume
from vqtok.runtime import device_for_rank

__all__ = ["DecodeRun", "EncodeRun", "decode_files", "encode_files"]


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
        resume = Resume.for_run(self.model or DEFAULT_MODEL, list(self.model_dirs),
                                self.options.remap, self.options.settings())
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
        else:
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
