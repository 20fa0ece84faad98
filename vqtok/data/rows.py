"""Any packed token dataset read back clip by clip: (t, h, w[, L]) index arrays and sidecars.

`open_rows` reads every layout ``vqtok pack`` writes (its manifest names the layout): Parquet
through `vqtok.data.parquet.TokenDataset`, the others through their module's ``Reader``
(`vqtok.data.formats`) and the clip list (`vqtok.data.records`). The flattening recorded in
the manifest is undone (`vqtok.data.flatten.Flattening.unflatten`), so a row's ``indices`` are
exactly its index file's, and its ``meta`` is that file's sidecar: what `vqtok.pipeline.decode`
needs to decode it (`read_row`, ``vqtok decode DATASET --key KEY``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vqtok.data.flatten import Flattening
from vqtok.data.formats import layout_module
from vqtok.data.records import ClipRecord, read_records
from vqtok.errors import VqtokError
from vqtok.io.shards import read_manifest, require_pyarrow
from vqtok.io.token_meta import TokenMetadata

__all__ = ["TokenRow", "TokenRows", "open_rows", "read_row"]


@dataclass(frozen=True)
class TokenRow:
    """One clip of a dataset.

    Attributes:
        key: its name (its index file's path below the directory given to ``pack``).
        indices: (t, h, w) or (t, h, w, L) int64, the ids its index file holds.
        meta: its index file's sidecar.
    """

    key: str
    indices: np.ndarray
    meta: TokenMetadata


class TokenRows:
    """The clips of a packed dataset of any layout, by position or key.

    Args:
        directory: the dataset directory (its ``_vqtok.json`` names the layout).

    Attributes:
        manifest: the dataset's manifest; flattening: its `Flattening`.

    ``rows[i]`` is a `TokenRow`; ``rows.tokens(i)`` the clip's tokens as the format stores them.

    Raises:
        VqtokError: not a finished dataset, a damaged one, or the layout's library missing
            (litdata reads through litdata: ``pip install 'vqtok[litdata]'``).
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.flattening = Flattening.from_manifest(self.manifest)
        self.layout: str = self.manifest["layout"]
        self._keys: list[str] | None = None
        if self.layout == "parquet":
            from vqtok.data.parquet import TokenDataset

            self._parquet = TokenDataset(self.directory, cache=2)
        else:
            clips = self.directory / self.manifest["clips"]["file"]
            self.records: list[ClipRecord] = list(read_records(clips))
            self._reader: Any = layout_module(self.layout).Reader(self.directory, self.manifest)

    def __len__(self) -> int:
        return int(self.manifest["rows"])

    def keys(self) -> list[str]:
        """Every clip's key, in dataset order."""
        if self._keys is None:
            if self.layout == "parquet":
                pq = require_pyarrow().parquet
                files = [self.directory / s["file"] for s in self.manifest["shards"]]
                self._keys = [k for f in files
                              for k in pq.read_table(f, columns=["index_file"])
                              .column(0).to_pylist()]
            else:
                self._keys = [r.key for r in self.records]
        return self._keys

    def find(self, key: str) -> int:
        """The position of the clip named ``key``.

        Raises:
            VqtokError: no clip has that key (the message shows a few that exist).
        """
        keys = self.keys()
        try:
            return keys.index(key)
        except ValueError:
            some = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
            raise VqtokError(f"no clip {key!r} in this dataset (its keys are the packed index "
                             f"files' names: {some}); vqtok info lists the dataset",
                             self.directory) from None

    def tokens(self, row: int) -> np.ndarray:
        """Clip ``row``'s tokens as stored: flat (1-D) or its (t, h, w[, L]) array."""
        if self.layout == "parquet":
            shards = self._parquet._shards
            group, index = shards.locate(row)
            decoded = shards.group(group)
            return decoded.values[decoded.offsets[index]:decoded.offsets[index + 1]]
        return self._reader.tokens(row, self.records[row])

    def __getitem__(self, row: int) -> TokenRow:
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} out of range for a dataset of {len(self)} rows")
        if self.layout == "parquet":
            item = self._parquet[row]
            meta = self._parquet.token_metadata(row)
            return TokenRow(item["index_file"], item["indices"].numpy(), meta)
        record = self.records[row]
        tokens = self._reader.tokens(row, record)
        if tokens.size != record.tokens:
            raise VqtokError(f"clip {record.key!r} has {tokens.size} tokens, the clip list "
                             f"says {record.tokens}; pack the dataset again", self.directory)
        meta = TokenMetadata.from_dict(json.loads(record.metadata), self.directory)
        return TokenRow(record.key, self.flattening.unflatten(tokens, record.shape), meta)


def open_rows(directory: str | Path) -> TokenRows:
    """`TokenRows` of the dataset in ``directory`` (any layout)."""
    return TokenRows(directory)


def read_row(directory: str | Path, key: str) -> tuple[np.ndarray, TokenMetadata]:
    """The clip named ``key`` of a packed dataset, as its index file held it.

    Returns:
        (indices, meta): (t, h, w) or (t, h, w, L) int64, the ids the packed index file holds
        (`vqtok.io.tokens.load_tokens` gives the same values), and its sidecar.

    Raises:
        VqtokError: not a dataset, or no clip named ``key``.
    """
    rows = TokenRows(directory)
    row = rows[rows.find(key)]
    return row.indices, row.meta
