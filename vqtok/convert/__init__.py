"""Converters from public checkpoints to vqtok model directories (the only pickle / TorchScript
readers): one module per source format, and what they share (`vqtok.convert.common`).

Each converter module declares ``CONVERTER``, a `vqtok.convert.common.Converter` with the one
signature ``(sources, out_dir, options) -> Conversion``; `CONVERTERS` is the one registration
of each (its source name -> its module), read without importing torch so that the CLI can list
the sources. `converter(source)` imports the module and returns its ``CONVERTER``; `convert`
runs it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vqtok.errors import ConfigError

if TYPE_CHECKING:
    from vqtok.convert.common import Conversion, Converter, ConvertOptions

# source name (``vqtok convert SOURCE``) -> module under vqtok.convert that defines CONVERTER
CONVERTERS: dict[str, str] = {
    "open-magvit2": "magvit2",
    "cosmos": "cosmos",
}


def converter(source: str) -> Converter:
    """The `Converter` registered under ``source``.

    Raises:
        ConfigError: an unknown source, naming the known ones.
    """
    if source not in CONVERTERS:
        raise ConfigError(f"unknown converter {source!r}; choose one of "
                          f"{', '.join(sorted(CONVERTERS))}")
    module = importlib.import_module(f"vqtok.convert.{CONVERTERS[source]}")
    found: Converter = module.CONVERTER
    assert found.source == source, f"{module.__name__}.CONVERTER is {found.source!r}"
    return found


def convert(
    source: str, sources: Sequence[str], out_dir: str | Path, options: ConvertOptions | None = None
) -> Conversion:
    """Convert the checkpoint(s) ``sources`` of the format ``source`` into ``out_dir``.

    Args:
        source: a key of `CONVERTERS` (``"open-magvit2"``, ``"cosmos"``).
        sources: checkpoint file(s) or directory, or a Hub repository ``owner/name[@rev]``.
        out_dir: the model directory to write.
        options: dtype, name, command, download progress and source-specific options.

    Returns:
        `vqtok.convert.common.Conversion`.

    Raises:
        ConfigError: an unknown source. OptionError: an option or number of sources this
            converter does not take. CheckpointError: a source it cannot convert.
    """
    return converter(source)(sources, out_dir, options)


__all__ = ["CONVERTERS", "convert", "converter"]
