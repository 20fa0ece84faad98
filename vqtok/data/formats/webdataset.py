"""WebDataset tar shards (``shard-NNNNN.tar``), written with webdataset's ``TarWriter``.

One sample per clip, keyed by its row number (``000000042``: WebDataset keys stop at the first
dot, and index file names have one), with two members: ``<key>.tokens.npy`` (the tokens, a
NumPy array of the storage dtype: 1-D for ``interleave`` / ``offset``, (t, h, w[, L]) for
``levels``) and ``<key>.json`` (``key``, ``shape``, ``fps``, ``start``, ``metadata``: the
fields of `vqtok.data.records.ClipRecord`). A shard closes when it holds ``shard_bytes``.
``webdataset.WebDataset(urls).decode()`` reads them; `Reader` reads a clip with the standard
library's ``tarfile``, from the shard and member offsets it finds once.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from vqtok.data.records import ClipRecord
from vqtok.errors import MissingDependencyError, VqtokError
from vqtok.io.tokens import index_dtype

EXTRA = "webdataset"
TOKENS_MEMBER = "tokens.npy"


def require() -> ModuleType:
    """webdataset, or a one-line error naming the extra."""
    return MissingDependencyError.require(("webdataset",), "the webdataset format needs webdataset",
                                          EXTRA)


storage_dtype = index_dtype  # the smallest unsigned dtype that holds the vocabulary


def sample_key(row: int) -> str:
    return f"{row:09d}"


class Writer:
    """Write clips as tar shards of about ``shard_bytes`` each."""

    def __init__(self, directory: Path, dtype: np.dtype, shard_bytes: int) -> None:
        self.wds = require()
        self.directory, self.dtype, self.shard_bytes = directory, np.dtype(dtype), shard_bytes
        self.files: list[dict[str, Any]] = []
        self.tar: Any = None
        self.rows = 0

    def _open(self) -> None:
        name = f"shard-{len(self.files):05d}.tar"
        # a fixed mtime: the same inputs give the same bytes
        self.tar = self.wds.TarWriter(str(self.directory / name), mtime=0)
        self.files.append({"file": name, "rows": 0, "tokens": 0, "size": 0})

    def add(self, tokens: np.ndarray, record: ClipRecord) -> None:
        """One clip -> one sample (two tar members)."""
        if self.tar is None or self.files[-1]["size"] >= self.shard_bytes:
            self._close_shard()
            self._open()
        size = self.tar.write({"__key__": sample_key(self.rows),
                               TOKENS_MEMBER: tokens.astype(self.dtype, copy=False),
                               "json": record.fields()})
        entry = self.files[-1]
        entry.update(rows=entry["rows"] + 1, tokens=entry["tokens"] + int(tokens.size),
                     size=entry["size"] + size)
        self.rows += 1

    def _close_shard(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None

    def close(self) -> list[dict[str, Any]]:
        """Close the last shard; returns the shard files."""
        self._close_shard()
        return [{k: v for k, v in f.items() if k != "size"} for f in self.files]


class Reader:
    """A WebDataset dataset's clips' tokens, read with ``tarfile`` (no webdataset needed)."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory = directory
        self.shards = [s["file"] for s in manifest["shards"] if s["file"].endswith(".tar")]
        self.members: dict[str, tuple[str, int, int]] | None = None

    def _index(self) -> dict[str, tuple[str, int, int]]:
        """Sample key -> (shard, data offset, size) of its tokens member."""
        members = {}
        for shard in self.shards:
            with tarfile.open(self.directory / shard) as tar:
                for info in tar:
                    key, _, ext = info.name.partition(".")
                    if ext == TOKENS_MEMBER:
                        members[key] = (shard, info.offset_data, info.size)
        return members

    def tokens(self, row: int, record: ClipRecord | None = None) -> np.ndarray:
        """The tokens of clip ``row``: 1-D, or (t, h, w[, L]) for ``levels``."""
        if self.members is None:
            self.members = self._index()
        if sample_key(row) not in self.members:
            raise VqtokError(f"no sample {sample_key(row)} in the tar shards; pack the dataset "
                             "again", self.directory)
        shard, offset, size = self.members[sample_key(row)]
        with open(self.directory / shard, "rb") as file:
            file.seek(offset)
            return np.load(io.BytesIO(file.read(size)), allow_pickle=False)
