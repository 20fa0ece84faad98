"""Ray Data building blocks: encode clips in model actors, decode videos in CPU tasks.

`EncodeClips` is a callable class for ``Dataset.map_batches``: each actor loads the model once
(in ``__init__``) and encodes the clips of every batch it is given, one at a time, exactly as a
local ``vqtok encode`` does (the same reader, chunks and model: bit-identical indices). A row
names its clip either by a ``source`` column (a `vqtok.io.sources.ClipSource` as JSON, what
`clip_rows` makes from ``vqtok encode``'s inputs) or by manifest-style columns ``path`` / ``url``
with optional ``start`` / ``end`` seconds, so it also runs on a table read with
``ray.data.read_csv`` or ``read_parquet``. `decode_clips` is the decoding half on its own, for
CPU tasks in front of GPU actors: it adds the clip's frames (``frames``, uint8 RGB bytes) and how
they were read, and `EncodeClips` then only runs the model. Its rows hold a whole clip's pixels,
so use it for clips (seconds), and decode in the actors for long videos.

Every output row keeps the input's columns (but ``frames``) and adds ``indices`` (the clip's
indices as bytes in the dataset's storage dtype; `indices_of` turns a row back into an array),
``shape`` and ``metadata`` (the index file's metadata, JSON), ``error`` ("" when the clip was
encoded, else one line saying why not) and ``worker`` (``host:pid`` of the actor)::

    import ray
    from vqtok.pipeline.ray_engine import EncodeClips, indices_of

    ds = ray.data.read_csv("s3://bucket/clips.csv")          # path, start, end, key, ...
    ds = ds.map_batches(EncodeClips, fn_constructor_kwargs={"model": "vqtok-ema"},
                        batch_size=1, compute=ray.data.ActorPoolStrategy(size=4), num_gpus=1)
    for row in ds.iter_rows():
        if not row["error"]:
            tokens = indices_of(row)                        # (t, h, w[, L]) uint16

`vqtok.pipeline.ray_run.encode_dataset` is ``vqtok encode --engine ray``: these blocks writing a
token dataset.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from vqtok.errors import MissingDependencyError, VqtokError
from vqtok.io.frames import VideoInfo
from vqtok.io.sources import ClipSource, as_seconds
from vqtok.io.tokens import TokenMetadata, index_dtype
from vqtok.pipeline.encode import encode_indices, encode_windows, open_reader
from vqtok.pipeline.inputs import Clip
from vqtok.pipeline.options import EncodeOptions, check_frame_size

__all__ = ["EncodeClips", "clip_rows", "decode_clips", "indices_of", "require_ray"]

OUTPUT_COLUMNS = ("indices", "shape", "metadata", "error", "worker")


def require_ray() -> ModuleType:
    """The ``ray`` module with Ray Data, or one line saying what to install.

    Raises:
        MissingDependencyError: Ray (Ray Data) is not installed.
    """
    # Ray Data is a separate extra of ray
    return MissingDependencyError.require(("ray", "ray.data"), "the Ray engine needs Ray Data",
                                          "ray")


def clip_rows(clips: Iterable[Clip]) -> list[dict[str, str]]:
    """Rows for ``ray.data.from_items``: ``key``, ``input`` (the clip's name in messages) and
    ``source`` (its `ClipSource` as JSON)."""
    return [{"key": clip.key, "input": str(clip.source),
             "source": json.dumps(clip.source.to_dict())} for clip in clips]


def source_of(row: dict[str, Any]) -> ClipSource:
    """A row's clip: its ``source`` column, else ``path`` / ``url`` with ``start`` / ``end``.

    Raises:
        VqtokError: no source column, or bad values.
    """
    text = _text(row.get("source"))
    if text:
        return ClipSource.from_dict(json.loads(text))
    where = _text(row.get("path")) or _text(row.get("url"))
    if not where:
        raise VqtokError("the row has no source, path or url column")
    return ClipSource(where, start=as_seconds(_value(row.get("start")), "start"),
                      end=as_seconds(_value(row.get("end")), "end"))


def indices_of(row: dict[str, Any]) -> np.ndarray:
    """An output row's indices as an array of their shape, in the storage dtype."""
    meta = json.loads(_text(row["metadata"]))
    dtype = index_dtype(int(meta["remap"]["size"]) if meta.get("remap") else
                        int(meta["codebook_size"]))
    return np.frombuffer(bytes(row["indices"]), dtype).reshape(json.loads(_text(row["shape"])))


@dataclass
class DecodedClip:
    """A clip decoded in a CPU task: its frames and the facts `encode_windows` records
    (`vqtok.pipeline.options.ReadFacts`)."""

    path: ClipSource
    name: str
    info: VideoInfo
    size: tuple[int, int]
    fps: Fraction
    expected_frames: int
    frames: np.ndarray  # (T, H, W, 3) uint8
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def facts(self) -> str:
        """Everything but the frames, as JSON."""
        info = {k: str(v) if isinstance(v, Fraction) else v for k, v in vars(self.info).items()}
        return json.dumps({"source": self.path.to_dict(), "name": self.name, "info": info,
                           "size": list(self.size), "fps": str(self.fps),
                           "expected_frames": self.expected_frames,
                           "warnings": self.warnings, "notes": self.notes})

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> DecodedClip:
        facts = json.loads(_text(row["facts"]))
        info = dict(facts["info"])
        info["fps"], info["start"] = Fraction(info["fps"]), Fraction(info["start"])
        size = (int(facts["size"][0]), int(facts["size"][1]))
        frames = np.frombuffer(bytes(row["frames"]), np.uint8).reshape(-1, *size, 3)
        return cls(ClipSource.from_dict(facts["source"]), facts["name"], VideoInfo(**info),
                   size, Fraction(facts["fps"]), int(facts["expected_frames"]), frames,
                   list(facts["warnings"]), list(facts["notes"]))


def decode_clips(batch: dict[str, np.ndarray], options: EncodeOptions,
                 spatial_factor: int = 1) -> dict[str, list[Any]]:
    """Ray Data task: decode each row's clip (``frames`` and ``facts`` columns added; a clip
    that cannot be read gets ``error``). ``spatial_factor``: the model's, to refuse frames
    smaller than one latent cell before they travel."""
    rows = list(_rows(batch))
    out: dict[str, list[Any]] = {name: [] for name in (*batch, "frames", "facts", "error")}
    for row in rows:
        frames, facts, error = b"", "", ""
        try:
            source = source_of(row)
            reader = open_reader(source, _Factor(spatial_factor), options)
            clip = DecodedClip(source, reader.name, reader.info, reader.size, reader.fps,
                               reader.expected_frames, np.concatenate(list(reader)),
                               reader.warnings, reader.notes)
            frames, facts = clip.frames.tobytes(), clip.facts()
        except Exception as e:  # every failure is that clip's outcome
            error = _reason(e)
        for name in batch:
            out[name].append(row[name])
        out["frames"].append(frames)
        out["facts"].append(facts)
        out["error"].append(error)
    return out


@dataclass(frozen=True)
class _Factor:
    """The model facts `open_reader` needs, in a task that has no model (the actor that
    encodes decides on tiling; frames are read in windows of ``--chunk`` here)."""

    spatial_factor: int
    tiles: bool = False


class EncodeClips:
    """Ray Data callable class: the model, loaded once per actor; encodes each row's clip.

    Args:
        model: a model name, directory or Hub repository, as `vqtok.load` takes it; None: the
            default model. A directory must exist on every worker (shipped names and Hub
            repositories are found there by themselves).
        model_dirs: more directories to look names up in.
        options: how frames are read and indices stored (``EncodeOptions``; ``format`` unused).
        device: ``"auto"`` (the actor's GPU when Ray gave it one), ``"cpu"``, ``"cuda"``.
        dtype: compute dtype, as `vqtok.load` takes it.

    Calling it with a batch (columns of equal length, as Ray Data passes them) returns the
    batch's columns plus `OUTPUT_COLUMNS` (see the module docstring).
    """

    def __init__(self, model: str | Path | None = None, *, model_dirs: Iterable[str | Path] = (),
                 options: EncodeOptions = EncodeOptions(), device: str = "auto",
                 dtype: str | None = None) -> None:
        from vqtok.api import load

        self.tokenizer = load(model, device=device, dtype=dtype, extra_dirs=tuple(model_dirs))
        self.options = options
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        keep = [name for name in batch if name not in ("frames", "facts", *OUTPUT_COLUMNS)]
        out: dict[str, list[Any]] = {name: [] for name in (*keep, *OUTPUT_COLUMNS)}
        for row in _rows(batch):
            indices, shape, meta, error = b"", "", "", _text(row.get("error"))
            if not error:
                try:
                    array, metadata = self.encode(row)
                    indices, shape = array.tobytes(), json.dumps(list(array.shape))
                    meta = json.dumps(metadata.to_dict(), sort_keys=True)
                except Exception as e:  # every failure is that clip's outcome
                    error = _reason(e)
            for name in keep:
                out[name].append(row[name])
            for name, value in zip(OUTPUT_COLUMNS, (indices, shape, meta, error, self.worker),
                                   strict=True):
                out[name].append(value)
        return out

    def encode(self, row: dict[str, Any]) -> tuple[np.ndarray, TokenMetadata]:
        """One row's clip -> (indices in the storage dtype, metadata)."""
        if _text(row.get("facts")):
            clip = DecodedClip.from_row(row)
            check_frame_size(clip.size, self.tokenizer.model, clip.path)
            windows = (clip.frames[i:i + self.options.chunk]
                       for i in range(0, len(clip.frames), self.options.chunk))
            indices, meta, _ = encode_windows(windows, clip, self.tokenizer, self.options)
        else:
            indices, meta, _ = encode_indices(source_of(row), self.tokenizer, self.options)
        return indices.astype(index_dtype(meta.vocab)), meta


def _rows(batch: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
    count = len(next(iter(batch.values()))) if batch else 0
    for i in range(count):
        yield {name: values[i] for name, values in batch.items()}


def _text(value: Any) -> str:
    """A string cell (Ray Data may hand strings over as numpy scalars, bytes or None)."""
    value = _value(value)
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _reason(error: BaseException) -> str:
    """One line for the errors table (the input is named in its own column)."""
    text = error.message if isinstance(error, VqtokError) else f"{type(error).__name__}: {error}"
    return " ".join(text.split())
