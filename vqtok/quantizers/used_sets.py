"""The old import path of `vqtok.quantizers.remap.UsedSets`, kept for code that imports it."""

from vqtok.quantizers.remap import UsedSets, describe_levels

__all__ = ["UsedSets", "describe_levels"]
