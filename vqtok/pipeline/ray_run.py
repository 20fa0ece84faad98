"""``vqtok encode --engine ray``: encode clips on a Ray cluster straight into a token dataset.

`encode_dataset` plans the clips of the inputs (`vqtok.pipeline.inputs`: files, folders, URLs,
WebDataset tar shards, manifests; keys stable across runs), keeps the keys the output dataset
holds already (resume; `vqtok.io.dataset_sink`), and runs the rest through Ray Data
(`vqtok.pipeline.ray_engine`): a pool of ``workers`` model actors, each loading the model once,
with ``gpus_per_worker`` GPUs each; video decoding in CPU tasks in front of the actors when the
actors have GPUs (``decode="auto"``), in the actors otherwise. The driver (this process) writes
the rows as they arrive, so every key is written once: a task that Ray retries after a worker
died gives its rows again and they are dropped. Actors are restarted when their process dies,
and their tasks retried (``max_task_retries``); a clip whose task still fails is not lost
silently: it lands in the errors table, as does every clip that cannot be read or encoded.

The driver only sees indices (hundreds of times smaller than the video), and reads or writes
no video itself; inputs and the output may be object storage URLs (credentials from the
environment, `vqtok.io.remote`).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqtok.api import DEFAULT_MODEL, load
from vqtok.errors import ConfigError, VqtokError
from vqtok.io.dataset_sink import DatasetSink, SinkReport
from vqtok.io.remote import local_path
from vqtok.io.token_meta import TokenMetadata
from vqtok.pipeline.encode import EncodeOptions, EncodeRun
from vqtok.pipeline.inputs import Clip, expand_inputs
from vqtok.pipeline.outputs import check_folder_output
from vqtok.pipeline.ray_engine import (
    EncodeClips,
    clip_rows,
    decode_clips,
    indices_of,
    require_ray,
)
from vqtok.pipeline.resume import Resume

__all__ = ["ClipOutcome", "RayOptions", "encode_dataset"]


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray run goes.

    Attributes:
        address: the cluster (``ray://host:10001``, ``auto``); None: ``RAY_ADDRESS``, else a
            local cluster of this machine. An already initialised Ray is used as it is.
        workers: model actors (each loads the model once).
        gpus_per_worker: GPUs each actor reserves (fractions share a GPU); 0: CPU actors.
        cpus_per_worker: CPUs each actor reserves.
        decode: ``"tasks"`` (CPU tasks decode, actors only encode), ``"actors"`` (the actors
            decode too), ``"auto"`` (tasks when the actors have GPUs).
        max_task_retries: times a task is retried after its worker died.
    """

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0
    cpus_per_worker: float = 1
    decode: str = "auto"
    max_task_retries: int = 3

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}",
                              cli_message=f"--workers must be >= 1, got {self.workers}")
        if self.gpus_per_worker < 0 or self.cpus_per_worker < 0:
            raise ConfigError("gpus_per_worker and cpus_per_worker must be >= 0")
        if self.decode not in ("auto", "tasks", "actors"):
            raise ConfigError(f"decode must be auto, tasks or actors, got {self.decode!r}")

    @property
    def decode_in_tasks(self) -> bool:
        return self.decode == "tasks" or (self.decode == "auto" and self.gpus_per_worker > 0)


@dataclass(frozen=True)
class ClipOutcome:
    """One clip finished: ``written`` (False: its key was written already, a retried task's
    duplicate), or ``error``; ``worker`` is the actor that encoded it (``host:pid``)."""

    key: str
    input: str
    error: str | None = None
    worker: str | None = None
    written: bool = False


ProgressFn = Callable[[ClipOutcome, int, int], None]
"""Called as clips finish: (the clip, clips finished so far, clips to encode in this run)."""


@dataclass
class DatasetReport(SinkReport):
    """`SinkReport` plus ``skipped``: clips whose key the dataset held already."""

    skipped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "skipped": self.skipped}


def encode_dataset(
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    model: str | Path | None = None,
    model_dirs: Iterable[str | Path] = (),
    options: EncodeOptions = EncodeOptions(),
    ray_options: RayOptions = RayOptions(),
    device: str = "auto",
    dtype: str | None = None,
    overwrite: bool = False,
    shard_size_mb: float = 256,
    progress: ProgressFn | None = None,
    quiet: bool = False,
) -> DatasetReport:
    """Encode the clips of ``inputs`` on Ray into the token dataset ``output``.

    Args:
        inputs: video files, folders, URLs (``s3://``...), ``.tar`` shards, manifests.
        output: the dataset folder or URL; a rerun adds the keys it lacks.
        model, model_dirs, device, dtype: as `vqtok.load` (loaded in each actor).
        options: how frames are read (``format`` is unused: the dataset is Parquet).
        ray_options: the cluster and the pool (`RayOptions`).
        overwrite: replace a dataset in ``output`` instead of adding to it.
        shard_size_mb: close a shard at this many MB of indices.
        progress: called as each clip finishes.
        quiet: no Ray Data progress lines or INFO logs on stderr.

    Returns:
        `DatasetReport`; its ``errors`` are the (key, input, reason) of the failed clips, also
        in the dataset's ``_errors.csv``.

    Raises:
        OptionError: ``levels``, ``beam`` or a remap file the model cannot take (checked once,
            on this machine, before any work), or an output named like a file.
        VqtokError: inputs that cannot be listed, an output holding something else or a dataset
            made another way, Ray missing or failing as a whole (the model cannot be loaded).
    """
    folder = local_path(str(output))
    if folder is not None:
        check_folder_output(folder, "a token dataset")
    clips = expand_inputs(inputs)
    if options.levels is not None or options.beam is not None or options.remap is not None:
        # fail once, before any work, for options this model cannot take (as a local run)
        EncodeRun([], model, tuple(Path(d) for d in model_dirs), options).check(
            load(model, device="cpu", extra_dirs=tuple(model_dirs)))
    resume = Resume.for_run(model or DEFAULT_MODEL, [Path(d) for d in model_dirs], options)
    sink = DatasetSink(output, shard_size_mb)
    done = sink.open(resume.differences, overwrite)
    for clip in clips:
        if clip.error is not None:
            sink.fail(clip.key, str(clip.source), clip.error)
    pending = [c for c in clips if c.error is None and c.key not in done]
    try:
        if pending:
            rows = _run(pending, model, tuple(model_dirs), options, ray_options, device, dtype,
                        quiet)
            _collect(rows, pending, sink, progress)
    except BaseException as e:
        sink.close(e)
        raise
    report = DatasetReport(**vars(sink.close()))
    report.skipped = sum(1 for c in clips if c.error is None and c.key in done)
    return report


def _collect(rows: Iterator[dict[str, Any]], pending: list[Clip], sink: DatasetSink,
             progress: ProgressFn | None) -> None:
    """Write the rows as they come; a pending clip without a row is an error."""
    waiting = {clip.key: clip for clip in pending}
    finished = 0
    for row in rows:
        key, source = str(row["key"]), str(row["input"])
        error = str(row["error"] or "") or None
        written = False
        if error is not None:
            if key in waiting:  # a failed clip is reported once
                sink.fail(key, source, error)
        else:
            meta = TokenMetadata.from_dict(json.loads(str(row["metadata"])), key)
            written = sink.add(key, indices_of(row), meta)
        if waiting.pop(key, None) is not None:
            finished += 1
            if progress is not None:
                progress(ClipOutcome(key, source, error, str(row["worker"]), written),
                         finished, len(pending))
    for key, clip in waiting.items():
        sink.fail(key, str(clip.source), "no result: the task encoding it kept failing (its "
                  "worker died every time); see the Ray logs")


def _run(pending: list[Clip], model: str | Path | None, model_dirs: tuple[str | Path, ...],
         options: EncodeOptions, ray_options: RayOptions, device: str, dtype: str | None,
         quiet: bool) -> Iterator[dict[str, Any]]:
    """The pipeline's output rows, as they come."""
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(address=ray_options.address, log_to_driver=False, logging_level=logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.max_errored_blocks = -1  # a clip whose task keeps failing is reported, not fatal
    if quiet:
        context.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    rows = clip_rows(pending)
    try:
        ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 10_000))
    except TypeError:  # Ray < 2.10 names it parallelism
        ds = ray.data.from_items(rows, parallelism=min(len(rows), 10_000))
    if ray_options.decode_in_tasks:
        ds = ds.map_batches(decode_clips, fn_kwargs={"options": options}, batch_size=1,
                            num_cpus=1)
    retries = {"max_task_retries": ray_options.max_task_retries}
    with warnings.catch_warnings():  # Ray >= 2.5x warns about remote args it still honours
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            ds = _encoders(ray, ds, model, model_dirs, options, ray_options, device, dtype, retries)
        except TypeError:  # a Ray without them: its defaults (retry while the actor restarts)
            ds = _encoders(ray, ds, model, model_dirs, options, ray_options, device, dtype, {})
    try:
        yield from ds.iter_rows()
    except Exception as e:  # Ray wraps the actor's own error (e.g. the model cannot load)
        cause = _root_cause(e)
        if isinstance(cause, VqtokError):
            raise cause from e
        raise VqtokError(f"the Ray run failed ({type(cause).__name__}: "
                         f"{' '.join(str(cause).split())[:300]})") from e


def _encoders(ray: Any, ds: Any, model: str | Path | None, model_dirs: tuple[str | Path, ...],
              options: EncodeOptions, ray_options: RayOptions, device: str, dtype: str | None,
              remote_args: dict[str, Any]) -> Any:
    """The pool of model actors on ``ds``: `EncodeClips`, one clip per call."""
    return ds.map_batches(
        EncodeClips,
        fn_constructor_kwargs={"model": model, "model_dirs": model_dirs, "options": options,
                               "device": device, "dtype": dtype},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=ray_options.workers),
        num_cpus=ray_options.cpus_per_worker,
        num_gpus=ray_options.gpus_per_worker,
        **remote_args,
    )


def _root_cause(error: BaseException) -> BaseException:
    """The innermost error of Ray's wrappers (RayTaskError chains the actor's exception)."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "cause", None) or error.__cause__
        if inner is None or not isinstance(inner, BaseException):
            break
        error = inner
    return error
