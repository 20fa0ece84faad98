"""LitData optimized datasets (``chunk-*.bin`` + ``index.json``), written with litdata.

`Writer` drives litdata's ``BinaryWriter``, the chunk writer its ``optimize`` runs in each worker
process, directly: ``optimize`` maps a function over inputs in spawned worker processes and
merges their chunks, which buys nothing for a pack (reading index files and copying their
bytes) and would make the write neither atomic nor in input order. One sample per clip, a dict
of ``tokens`` (1-D NumPy array of the storage dtype: ``interleave`` / ``offset`` only), ``key``,
``shape`` (int64 array), ``fps``, ``start`` (the clip's first token in the dataset's stream)
and ``metadata`` (the sidecar JSON). ``litdata.StreamingDataset(input_dir=DIR)`` reads it; so
does `Reader`, through litdata.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from vqtok.data.records import ClipRecord
from vqtok.errors import MissingDependencyError
from vqtok.io.tokens import index_dtype

EXTRA = "litdata"
INDEX = "index.json"


def require() -> ModuleType:
    """litdata, or a one-line error naming the extra."""
    return MissingDependencyError.require(("litdata", "litdata.streaming.writer"),
                                          "the litdata format needs litdata", EXTRA)


storage_dtype = index_dtype  # the smallest unsigned dtype that holds the vocabulary


class Writer:
    """Write clips as LitData chunks of about ``shard_bytes`` each, then ``index.json``."""

    def __init__(self, directory: Path, dtype: np.dtype, shard_bytes: int) -> None:
        litdata = require()
        self.directory, self.dtype = directory, np.dtype(dtype)
        self.writer = litdata.streaming.writer.BinaryWriter(
            str(directory), chunk_bytes=max(1, shard_bytes))
        self.rows = 0
        self.sizes: list[int] = []  # tokens per clip, in order

    def add(self, tokens: np.ndarray, record: ClipRecord) -> None:
        """One clip: (n,) tokens in the storage dtype -> one sample."""
        assert tokens.ndim == 1, "LitData samples hold flat token streams here"
        sample = {**record.fields(), "tokens": tokens.astype(self.dtype, copy=False),
                  "shape": np.asarray(record.shape, dtype=np.int64)}
        with warnings.catch_warnings():  # a clip above chunk_bytes is a chunk of its own: fine
            warnings.filterwarnings("ignore", "An item was larger than the target chunk size")
            self.writer.add_item(self.rows, sample)
        self.rows += 1
        self.sizes.append(int(tokens.size))

    def close(self) -> list[dict[str, Any]]:
        """Write the last chunk and the merged ``index.json``; returns the chunk files with
        their clips (litdata's index lists the chunks in item order)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "An item was larger than the target chunk size")
            self.writer.done()
            self.writer.merge()
        chunks = json.loads((self.directory / INDEX).read_text())["chunks"]
        files, first = [], 0
        for chunk in chunks:
            rows = int(chunk["chunk_size"])
            files.append({"file": chunk["filename"], "rows": rows,
                          "tokens": sum(self.sizes[first:first + rows])})
            first += rows
        return [*files, {"file": INDEX}]


class Reader:
    """A LitData dataset's clips' tokens, through ``litdata.StreamingDataset``."""

    def __init__(self, directory: Path, manifest: dict[str, Any] | None = None) -> None:
        self.directory = directory
        self.dataset: Any = None

    def tokens(self, row: int, record: ClipRecord | None = None) -> np.ndarray:
        """The (n,) tokens of clip ``row``."""
        if self.dataset is None:
            self.dataset = require().StreamingDataset(input_dir=str(self.directory))
        return np.asarray(self.dataset[row]["tokens"])
