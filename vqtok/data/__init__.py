"""Token datasets: what ``vqtok pack`` writes, read back.

- `TokenDataset`, `TokenIterableDataset`: PyTorch datasets over the Parquet layout (the default;
  `vqtok.data.parquet`), for training with vqtok installed.
- `open_rows` / `read_row`: any layout (Parquet, Megatron, MDS, LitData, WebDataset) back to
  (t, h, w[, L]) index arrays and their sidecars (`vqtok.data.rows`), e.g. to decode a row.
- `Flattening`, `FLATTENINGS`: how multi-level indices become one token stream
  (``--flatten interleave|offset|levels``; `vqtok.data.flatten`).
- `LAYOUTS`: the formats (`vqtok.data.formats`: one module each, writer and reader).

Training stacks read the other layouts with their own libraries (Megatron's
``IndexedDataset``, ``streaming.StreamingDataset``, ``litdata.StreamingDataset``,
``webdataset.WebDataset``); the manifest ``_vqtok.json`` says how to turn a token back into
(t, h, w, level). Importing this package needs pyarrow only when a Parquet dataset is opened.
"""

from __future__ import annotations

from vqtok.data.flatten import FLATTENINGS, Flattening
from vqtok.data.formats import LAYOUTS
from vqtok.data.parquet import TokenDataset, TokenIterableDataset
from vqtok.data.rows import TokenRow, TokenRows, open_rows, read_row

__all__ = [
    "FLATTENINGS",
    "LAYOUTS",
    "Flattening",
    "TokenDataset",
    "TokenIterableDataset",
    "TokenRow",
    "TokenRows",
    "open_rows",
    "read_row",
]
