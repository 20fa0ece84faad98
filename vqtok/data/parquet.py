"""PyTorch datasets over the Parquet token datasets that ``vqtok pack`` writes (``--format
parquet``, the default).

`TokenDataset` is map-style: ``len`` and ``ds[i]``, so ``DataLoader`` workers, shuffling and
``DistributedSampler`` work as with any dataset. `TokenIterableDataset` streams the rows in
shard order, splitting the row groups round-robin over ranks and ``DataLoader`` workers so
that every row is read by exactly one of them. Both open the shards memory-mapped, lazily in
each worker process, and decode one Parquet row group (about `vqtok.io.shards.ROW_GROUP_BYTES` of
indices) at a time, keeping the last few decoded; no shard is loaded whole.

An item is a dict: ``indices``, an int64 tensor of the clip's index shape ((t, h, w) or
(t, h, w, L)) holding the ids of its index file (a dataset packed with ``--flatten offset``
stores level l's ids moved up by l * level_stride; they are moved back), plus the clip's own
facts as Python values (``index_file``, ``source``, ``source_frames``, ``source_fps``,
``source_height``, ``source_width``, ``frames``, ``fps``, ``height``, ``width``, ``resize``,
``padding``; never None, so the default collate works); the
facts every row shares (model, vocabulary, remap; `vqtok.io.shards.SHARED_COLUMNS`) are in
``ds.manifest``, and the full sidecar of row i is ``ds.token_metadata(i)``. Clips differ in
length, so batching clips of different shapes needs a ``collate_fn`` that pads or crops.

The format (columns, manifest) is `vqtok.io.shards`. (This module was `vqtok.io.datasets`,
which still imports these classes.)
"""

from __future__ import annotations

import bisect
import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from vqtok.data.flatten import Flattening
from vqtok.errors import VqtokError
from vqtok.io.shards import SHARED_COLUMNS, read_manifest, require_pyarrow
from vqtok.io.token_meta import TokenMetadata

__all__ = ["TokenDataset", "TokenIterableDataset"]


@dataclass
class _Group:
    """One decoded row group: flat indices with row offsets, shapes, the other columns."""

    values: np.ndarray
    offsets: np.ndarray
    shapes: list[list[int]]
    columns: dict[str, list[Any]]
    flattening: Flattening

    def item(self, row: int) -> dict[str, Any]:
        flat = self.values[self.offsets[row]:self.offsets[row + 1]]
        indices = self.flattening.unflatten(flat, self.shapes[row])  # int64, the file's ids
        out: dict[str, Any] = {"indices": torch.from_numpy(indices)}
        out.update({name: values[row] for name, values in self.columns.items()})
        return out


class _Shards:
    """The row groups of a dataset's shards, opened and decoded on demand in each process."""

    def __init__(self, directory: str | Path, cache: int) -> None:
        self.pq = require_pyarrow().parquet
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        if self.manifest["layout"] != "parquet":
            raise VqtokError(f"a {self.manifest['layout']} dataset, not Parquet; read it with "
                             "vqtok.data.open_rows or its own library", self.directory)
        self.flattening = Flattening.from_manifest(self.manifest)
        self.paths = [self.directory / s["file"] for s in self.manifest["shards"]]
        self.groups: list[tuple[int, int]] = []  # (shard, row group) in dataset order
        self.starts = [0]  # first row of each group, then the row count
        for shard, path in enumerate(self.paths):
            meta = self.pq.read_metadata(path)
            for group in range(meta.num_row_groups):
                self.groups.append((shard, group))
                self.starts.append(self.starts[-1] + meta.row_group(group).num_rows)
        # the shared facts are in the manifest and the sidecar JSON is read only when asked for
        names = self.pq.read_schema(self.paths[0]).names if self.paths else []
        self.columns = [n for n in names if n not in (*SHARED_COLUMNS, "metadata")]
        if self.starts[-1] != self.manifest["rows"]:
            raise VqtokError(f"the shards hold {self.starts[-1]} rows, the manifest says "
                             f"{self.manifest['rows']}; pack the dataset again", self.directory)
        self.cache_size = cache
        self._reset()

    def _reset(self) -> None:
        self.pid = os.getpid()
        self.files: dict[int, Any] = {}
        self.cache: OrderedDict[int, _Group] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(pq=None, files={}, cache=OrderedDict())  # per process; reopened on use
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.pq = require_pyarrow().parquet
        self._reset()

    @property
    def rows(self) -> int:
        return self.starts[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """Row ``index`` -> (group, row within it)."""
        group = bisect.bisect_right(self.starts, index) - 1
        return group, index - self.starts[group]

    def group(self, number: int) -> _Group:
        """Row group ``number`` (in dataset order), decoded."""
        if number in self.cache and os.getpid() == self.pid:
            self.cache.move_to_end(number)
            return self.cache[number]
        decoded = _decode(self.read(number, self.columns), self.flattening)
        self.cache[number] = decoded
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return decoded

    def read(self, number: int, columns: list[str]) -> Any:
        """``columns`` of row group ``number`` as an Arrow table."""
        if os.getpid() != self.pid:  # a forked worker must not share the parent's handles
            self._reset()
        shard, group = self.groups[number]
        if shard not in self.files:
            # pre-buffering (coalesced, asynchronous reads) costs a random read of one small
            # row group several times what decoding it does on a local memory-mapped file
            self.files[shard] = self.pq.ParquetFile(
                self.paths[shard], memory_map=True, pre_buffer=False
            )
        return self.files[shard].read_row_group(group, columns=columns, use_threads=False)


def _decode(table: Any, flattening: Flattening) -> _Group:
    """A row group's Arrow table -> flat uint indices, (rows + 1) offsets, shapes, columns."""
    indices = table.column("indices").combine_chunks()
    offsets = indices.offsets.to_numpy()
    # the offsets index .values, the whole child array (also when the list array is a slice)
    values = indices.values.to_numpy()
    columns = {n: table.column(n).to_pylist() for n in table.column_names
               if n not in ("indices", "shape")}
    return _Group(values, offsets, table.column("shape").to_pylist(), columns, flattening)


class TokenDataset(Dataset):
    """Map-style dataset over a packed token dataset (``vqtok pack``).

    Args:
        directory: the dataset directory (its manifest ``_vqtok.json`` and shards).
        cache: decoded row groups kept per process (random access decodes a whole group).

    Attributes:
        manifest: the dataset's manifest (model, vocab, dtype, rows, tokens, shards).

    ``ds[i]`` is a dict: ``indices`` (int64 tensor, the clip's index shape) and the row's other
    columns; ``ds.token_metadata(i)`` is the clip's full `TokenMetadata`.

    Raises:
        VqtokError: not a finished dataset, a damaged or missing shard, pyarrow missing.
    """

    def __init__(self, directory: str | Path, cache: int = 8) -> None:
        self._shards = _Shards(directory, cache)
        self.manifest = self._shards.manifest

    def __len__(self) -> int:
        return self._shards.rows

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check(index)
        group, row = self._shards.locate(index)
        return self._shards.group(group).item(row)

    def token_metadata(self, index: int) -> TokenMetadata:
        """The sidecar of row ``index``, as `vqtok.io.tokens.load_metadata` gives it."""
        group, row = self._shards.locate(self._check(index))
        text = self._shards.read(group, ["metadata"]).column(0)[row].as_py()
        return TokenMetadata.from_dict(json.loads(text), self._shards.directory)

    def _check(self, index: int) -> int:
        rows = self._shards.rows
        if not -rows <= index < rows:
            raise IndexError(f"row {index} out of range for a dataset of {rows} rows")
        return index % rows


class TokenIterableDataset(IterableDataset):
    """Stream a packed token dataset's rows in shard order, each row to exactly one consumer.

    The row groups are dealt round-robin to the ``world_size * num_workers`` consumers (this
    rank's ``DataLoader`` workers), so each sees its rows in dataset order and no two see the
    same row; the consumers' row counts differ by at most one row group.

    Args:
        directory: the dataset directory.
        rank, world_size: this process's share; None takes them from ``torch.distributed``
            when it is initialised, else from $RANK / $WORLD_SIZE, else 0 of 1.

    Items are those of `TokenDataset`.
    """

    def __init__(self, directory: str | Path, rank: int | None = None,
                 world_size: int | None = None) -> None:
        self._shards = _Shards(directory, cache=1)
        self.manifest = self._shards.manifest
        self.rank, self.world_size = rank, world_size

    def _share(self) -> tuple[int, int]:
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                found = torch.distributed.get_rank(), torch.distributed.get_world_size()
            else:
                found = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
            rank = found[0] if rank is None else rank
            world = found[1] if world is None else world
        if not 0 <= rank < world:
            raise VqtokError(f"rank {rank} is not in [0, world size {world})")
        worker = get_worker_info()
        if worker is None:
            return rank, world
        return rank * worker.num_workers + worker.id, world * worker.num_workers

    def __iter__(self) -> Iterator[dict[str, Any]]:
        me, consumers = self._share()
        for number in range(me, len(self._shards.groups), consumers):
            group = self._shards.group(number)
            for row in range(len(group.shapes)):
                yield group.item(row)
