"""``vqtok decode DATASET --key KEY -o clip.mp4``: one row of a packed token dataset -> a video.

`RowDecodeRun` is `vqtok.pipeline.decode.DecodeRun` with its one job's indices taken from a
dataset row (`vqtok.data.read_row`: any layout, the flattening undone) instead of an index
file; decoding is `vqtok.pipeline.decode.decode_indices`, so the model check, the remap, the
trimming and the record in the video are those of ``vqtok decode`` on the packed file. The
job's source reads ``DATASET/KEY``; a rerun keeps a video made from the same row (its indices
and sidecar, `row_sha256`), model weights and frame rate.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from vqtok.api import Tokenizer
from vqtok.data.rows import read_row
from vqtok.errors import OptionError
from vqtok.io.shards import looks_like_dataset
from vqtok.io.token_meta import TokenMetadata
from vqtok.io.video import as_fps
from vqtok.io.video_writer import VIDEO_SUFFIXES
from vqtok.pipeline.decode import DecodeResult, DecodeRun, decode_indices
from vqtok.pipeline.options import ProgressFn
from vqtok.pipeline.plan import Job

__all__ = ["RowDecodeRun", "plan_decode", "row_sha256"]


def row_sha256(indices: np.ndarray, meta: TokenMetadata) -> str:
    """What a video decoded from a dataset row records as its source: the SHA-256 of the
    row's indices (int64, C order, with their shape) and of its sidecar."""
    values = np.ascontiguousarray(indices, dtype=np.int64)
    parts = (hashlib.sha256(values.tobytes() + str(values.shape).encode()).hexdigest(),
             hashlib.sha256(json.dumps(meta.to_dict(), sort_keys=True).encode()).hexdigest())
    return hashlib.sha256("".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class RowDecodeRun(DecodeRun):
    """The planned decode of one dataset row into a video (attributes as `DecodeRun`).

    Attributes:
        dataset: the dataset directory.
        key: the row's key (its index file's name below the directory given to ``pack``).
    """

    dataset: Path = Path()
    key: str = ""

    @classmethod
    def plan_row(cls, datasets: Sequence[str | Path], key: str, output: str | Path, *,
                 overwrite: bool = False, **settings: Any) -> RowDecodeRun:
        """Plan decoding row ``key`` of the one dataset in ``datasets`` to ``output`` (a video
        file, or a folder: then ``<key's stem>.mp4`` in it).

        Raises:
            OptionError: not exactly one dataset given.
        """
        if len(datasets) != 1:
            raise OptionError("--key", f"decodes a row of one dataset, but {len(datasets)} "
                              "paths were given: give the dataset directory only")
        dataset, target = Path(datasets[0]), Path(output)
        if target.suffix.lower() not in VIDEO_SUFFIXES:
            target = target / f"{PurePosixPath(key).stem}.mp4"
        settings["model_dirs"] = tuple(Path(d) for d in settings.get("model_dirs", ()))
        if settings.get("fps") is not None:
            settings["fps"] = as_fps(settings["fps"])
        run = cls([Job(dataset / key, target)], dataset=dataset, key=key, **settings)
        if not overwrite:
            run = replace(run, jobs=run._resumed().jobs)
        return run

    def _described(self, source: Path) -> tuple[TokenMetadata, str]:
        indices, meta = read_row(self.dataset, self.key)
        return meta, row_sha256(indices, meta)

    def _decode(self, job: Job, model_for: Callable[[str | Path], Tokenizer],
                progress: ProgressFn | None) -> DecodeResult:
        """Decode the row: its indices and sidecar from the dataset, the rest as a file's."""
        indices, meta = read_row(self.dataset, self.key)
        return decode_indices(
            indices, meta, job.target, model_for(self.model or meta.model),
            source=str(job.source), record_sha256=row_sha256(indices, meta), fps=self.fps,
            remap=self.remap, force=self.force, chunk=self.chunk, memory=self.memory,
            progress=progress)


def plan_decode(codes: Sequence[str | Path], key: str | None, output: str | Path, *,
                overwrite: bool = False, shard: tuple[int, int] | None = None,
                **settings: Any) -> DecodeRun:
    """``vqtok decode``'s plan: index files (`DecodeRun.plan`), or row ``key`` of the dataset
    given (`RowDecodeRun.plan_row`).

    Raises:
        OptionError: a dataset without ``key``.
    """
    if key is not None:
        return RowDecodeRun.plan_row(codes, key, output, overwrite=overwrite, **settings)
    for path in map(Path, codes):
        if path.is_dir() and looks_like_dataset(path):
            raise OptionError("--key", f"{path} is a token dataset: add --key KEY to decode one "
                              "of its clips (keys are the packed index files' paths; vqtok "
                              "info shows the first few)")
    return DecodeRun.plan(codes, output, overwrite=overwrite, shard=shard, **settings)
