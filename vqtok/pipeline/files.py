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

`DecodeRun` and `decode_files`, the same for index files -> videos, are in
`vqtok.pipeline.decode` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vqtok.api import DEFAULT_MODEL, Tokenizer, load
from vqtok.errors import ConfigError, OptionError
from vqtok.io.hub import DownloadFn
from vqtok.io.remap import require_remap_file
from vqtok.io.tokens import (
    index_path,
)
from vqtok.pipeline.batching import encode_jobs
from vqtok.pipeline.decode import DecodeRun, decode_files
from vqtok.pipeline.encode import (
    EncodeOptions,
    EncodeResult,
    ProgressFn,
    encode_each,
)
from vqtok.pipeline.inputs import needs_sources, plan_clips
from vqtok.pipeline.outputs import INDEX_SUFFIXES, check_run_output
from vqtok.pipeline.plan import Job, plan_inputs, shard_jobs
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
