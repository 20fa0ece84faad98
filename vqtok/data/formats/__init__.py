"""The dataset layouts ``vqtok pack --format`` writes besides Parquet, one module each.

Every module has the same parts: ``EXTRA`` (the vqtok extra that installs its library, or None),
``storage_dtype(token_vocab)``, a ``Writer(directory, dtype, shard_bytes)`` with ``add(tokens,
record)`` and ``close() -> files``, and a ``Reader(directory, manifest)`` with ``tokens(row,
record)``. `vqtok.pipeline.pack_formats` writes through them, `vqtok.data.rows` reads.

- ``megatron``: Megatron-LM's indexed dataset, through megatron-core (`megatron`).
- ``mds``: MosaicML Streaming's MDS, written to its documented layout (`mds`).
- ``litdata``: LitData's optimized chunks, through litdata (`litdata`).
- ``webdataset``: tar shards, through webdataset (`webdataset`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from vqtok.data.flatten import Flattening
from vqtok.errors import ConfigError, OptionError
from vqtok.io.token_meta import TokenMetadata

__all__ = ["ARRAY_LAYOUTS", "DEFAULT_FLATTEN", "LAYOUTS", "flattening_for", "layout_module"]

LAYOUTS = ("parquet", "megatron", "mds", "litdata", "webdataset")
ARRAY_LAYOUTS = ("parquet", "mds", "webdataset")  # those that can keep the levels axis
DEFAULT_FLATTEN = {layout: "levels" if layout in ARRAY_LAYOUTS else "interleave"
                   for layout in LAYOUTS}


def layout_module(layout: str) -> ModuleType:
    """The module of a layout other than Parquet (imported on first use: each may import its
    library)."""
    if layout not in LAYOUTS[1:]:
        raise ConfigError(f"format must be one of {', '.join(LAYOUTS)}, got {layout!r}",
                          cli_message=f"--format must be one of {', '.join(LAYOUTS)}, got "
                          f"{layout!r}")
    return importlib.import_module(f"vqtok.data.formats.{layout}")


def flattening_for(layout: str, flatten: str | None, meta: TokenMetadata) -> Flattening:
    """The convention ``flatten`` (default: the layout's, `DEFAULT_FLATTEN`) for index files of
    ``meta``'s model.

    Raises:
        OptionError: ``levels`` for a layout of flat token streams (megatron, litdata).
    """
    how = DEFAULT_FLATTEN[layout] if flatten is None else flatten
    if how == "levels" and layout not in ARRAY_LAYOUTS:
        raise OptionError("--flatten", f"levels keeps the last axis, which only "
                          f"{', '.join(ARRAY_LAYOUTS)} store; {layout} holds flat token "
                          "streams: use interleave or offset")
    return Flattening.of(how, meta)
