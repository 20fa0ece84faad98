"""The PyTorch datasets over packed token datasets, under their first import path.

They live in `vqtok.data` now (`vqtok.data.parquet`); ``from vqtok.io.datasets import
TokenDataset, TokenIterableDataset`` keeps working.
"""

from __future__ import annotations

from vqtok.data.parquet import TokenDataset, TokenIterableDataset

__all__ = ["TokenDataset", "TokenIterableDataset"]
