"""The JSON metadata of vqtok's ``.safetensors`` files (index files, remap files).

A safetensors header holds string metadata only, so each kind stores its own metadata as JSON
text under one key (`vqtok.io.tokens.SAFETENSORS_KEY`, `vqtok.io.remap.METADATA_KEY`);
`header_json` reads it back with the checks both need, each failure in the kind's own error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vqtok.errors import VqtokError


def header_json(
    metadata: Mapping[str, str],
    key: str,
    error: type[VqtokError],
    where: str | Path,
    absent: str,
    name: str,
) -> Any:
    """The JSON value stored under ``key`` in a safetensors header's ``metadata``.

    Args:
        metadata: the header's metadata (str -> str), ``{}`` when it has none.
        key: the kind's metadata key.
        error: the kind's error class, raised with ``where`` as its path.
        absent: what follows ``no 'key' metadata`` in the message when the key is missing.
        name: how the message calls the metadata when it is not valid JSON.

    Raises:
        ``error``: no ``key`` in ``metadata``, or its text is not valid JSON.
    """
    if key not in metadata:
        raise error(f"no {key!r} metadata{absent}", where)
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as e:
        raise error(f"the {name} metadata is not valid JSON ({e})", where) from e
