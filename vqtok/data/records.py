"""The clip list ``_vqtok_clips.jsonl`` of a dataset in a layout other than Parquet.

Megatron's ``.bin`` holds tokens only, so what a reader needs to turn a clip's tokens back into
a (t, h, w[, L]) index array and decode it lives beside them: one JSON line per clip, in dataset
order (`ClipRecord`). The other formats carry the same fields in each sample (MDS columns,
LitData fields, the WebDataset ``.json`` member) and get the same list, so that ``vqtok info``,
``vqtok decode --key`` and `vqtok.data.open_rows` read any layout the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vqtok.errors import VqtokError

__all__ = ["CLIPS_FILE", "ClipRecord", "read_records", "write_records"]

CLIPS_FILE = "_vqtok_clips.jsonl"


@dataclass(frozen=True)
class ClipRecord:
    """One clip of a dataset.

    Attributes:
        key: the clip's name, its index file's path below the directory given to ``pack``
            (the Parquet layout's ``index_file``).
        shape: its index array's shape, (t, h, w) or (t, h, w, L).
        fps: its encoded frame rate, exact, ``"num/den"``.
        start: the position of its first token in the dataset's token stream (all clips'
            tokens in dataset order): where the clip starts.
        tokens: its token count.
        metadata: its index file's sidecar, as JSON text (`vqtok.io.token_meta.TokenMetadata`).
    """

    key: str
    shape: tuple[int, ...]
    fps: str
    start: int
    tokens: int
    metadata: str

    def fields(self) -> dict[str, Any]:
        """The per-sample fields the formats store: key, shape (list), fps, start, metadata."""
        return {"key": self.key, "shape": list(self.shape), "fps": self.fps,
                "start": self.start, "metadata": self.metadata}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipRecord:
        return cls(str(data["key"]), tuple(int(v) for v in data["shape"]), str(data["fps"]),
                   int(data["start"]), int(data["tokens"]), str(data["metadata"]))


def write_records(path: Path, records: Iterable[ClipRecord]) -> None:
    """Write the clip list (one JSON object per line, in dataset order)."""
    with open(path, "w") as file:
        for record in records:
            file.write(json.dumps(asdict(record), sort_keys=True) + "\n")


def read_records(path: Path) -> Iterator[ClipRecord]:
    """The clips listed in ``path``, in dataset order.

    Raises:
        VqtokError: the file is missing or a line is not a clip record.
    """
    try:
        with open(path) as file:
            for number, line in enumerate(file, 1):
                try:
                    yield ClipRecord.from_dict(json.loads(line))
                except (ValueError, KeyError, TypeError) as e:
                    raise VqtokError(f"line {number} is not a clip record ({e}); pack the "
                                     "dataset again", path) from e
    except OSError as e:
        raise VqtokError(f"cannot be read ({e.strerror}); pack the dataset again", path) from e
