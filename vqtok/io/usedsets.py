"""The old import path of `vqtok.io.remap` (remap files), kept for code that imports it."""

from vqtok.io.remap import (
    FORMAT_VERSION,
    METADATA_KEY,
    MULTI_SUFFIX,
    is_remap_file,
    load_used_sets,
    output_path,
    require_remap_file,
    save_used_sets,
)
from vqtok.quantizers.remap import UsedSets

__all__ = [
    "FORMAT_VERSION",
    "METADATA_KEY",
    "MULTI_SUFFIX",
    "UsedSets",
    "is_remap_file",
    "load_used_sets",
    "output_path",
    "require_remap_file",
    "save_used_sets",
]
