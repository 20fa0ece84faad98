"""Megatron-LM indexed datasets (``tokens.bin`` + ``tokens.idx``), written with megatron-core.

`Writer` drives megatron-core's own ``IndexedDatasetBuilder``: every clip is one sequence and
one document, so the ``.idx`` document index marks where each clip starts, and Megatron's
``--data-path DIR/tokens`` (or ``IndexedDataset("DIR/tokens")``) reads the tokens as they are.
Megatron's dtype codes hold uint16 and int32 but no uint32: a token vocabulary below 65,500
is stored as uint16, a larger one as int32 (`storage_dtype`, megatron-core's own
``DType.optimal_dtype`` rule). Only flat conventions (``interleave``, ``offset``) fit.

`Reader` reads a clip's tokens back without megatron-core: the ``.bin`` is the tokens of every
clip end to end, and each clip's ``start`` is in the clip list (`vqtok.data.records`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from vqtok.data.records import ClipRecord
from vqtok.errors import MissingDependencyError, VqtokError

EXTRA = "megatron"
PREFIX = "tokens"  # the dataset's path prefix below its directory: tokens.bin, tokens.idx
UINT16_LIMIT = 65_500  # megatron-core: a vocabulary of fewer ids than this is stored as uint16


def require() -> ModuleType:
    """megatron-core's ``indexed_dataset`` module, or a one-line error naming the extra."""
    try:
        with warnings.catch_warnings():  # megatron.core warns that Apex / TE are absent
            warnings.simplefilter("ignore")
            from megatron.core.datasets import indexed_dataset
    except ImportError as e:
        raise MissingDependencyError.install(
            "the megatron format needs megatron-core", EXTRA) from e
    return indexed_dataset


def storage_dtype(token_vocab: int) -> np.dtype:
    """uint16 below 65,500 ids, else int32 (Megatron has no uint32)."""
    if token_vocab >= 2**31:
        raise VqtokError(f"a vocabulary of {token_vocab} ids does not fit Megatron's int32")
    return np.dtype(np.uint16 if token_vocab < UINT16_LIMIT else np.int32)


class Writer:
    """Write clips' flat tokens as one Megatron indexed dataset in ``directory``.

    Args:
        directory: where ``tokens.bin`` / ``tokens.idx`` go.
        dtype: `storage_dtype` of the dataset's token vocabulary.
        shard_bytes: unused (Megatron datasets are one file pair; blend several by prefix).
    """

    def __init__(self, directory: Path, dtype: np.dtype, shard_bytes: int) -> None:
        self.indexed = require()
        self.directory, self.dtype = directory, np.dtype(dtype)
        self.rows = self.tokens = 0
        # the builder takes a NumPy scalar type: its DType code names the .idx dtype
        self.builder = self.indexed.IndexedDatasetBuilder(
            str(directory / f"{PREFIX}.bin"), dtype=self.dtype.type)

    def add(self, tokens: np.ndarray, record: ClipRecord) -> None:
        """One clip: (n,) tokens in the storage dtype -> one sequence, one document."""
        import torch

        assert tokens.ndim == 1, "Megatron holds flat token streams"
        self.builder.add_item(torch.from_numpy(tokens.astype(np.int64)))
        self.builder.end_document()
        self.rows, self.tokens = self.rows + 1, self.tokens + tokens.size

    def close(self) -> list[dict[str, Any]]:
        """Write the ``.idx``; returns the files (the ``.bin`` with the rows and tokens)."""
        self.builder.finalize(str(self.directory / f"{PREFIX}.idx"))
        return [{"file": f"{PREFIX}.bin", "rows": self.rows, "tokens": self.tokens},
                {"file": f"{PREFIX}.idx"}]


class Reader:
    """A Megatron dataset's clips' tokens, memory-mapped from ``tokens.bin``."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.path = directory / f"{PREFIX}.bin"
        self.dtype = np.dtype(manifest["dtype"])
        self.data: np.ndarray | None = None

    def tokens(self, row: int, record: ClipRecord) -> np.ndarray:
        """The (n,) tokens of clip ``row``."""
        if self.data is None:
            self.data = np.memmap(self.path, dtype=self.dtype, mode="r")
        return np.asarray(self.data[record.start:record.start + record.tokens])
