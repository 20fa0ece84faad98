"""MosaicML Streaming's MDS format (``index.json`` + ``shard.NNNNN.mds``), written byte for byte.

mosaicml-streaming cannot be installed beside vqtok: it pins ``transformers<5`` (so
``huggingface_hub<1``, and vqtok needs ``>=1.1``) and ``numpy<2.2``. So `Writer` writes the
format as its ``MDSWriter`` does (streaming 0.13, ``streaming/base/format/mds``), uncompressed,
byte for byte (``tests/fixtures/mds-streaming``; one difference: MDSWriter begins with an empty
shard when the first sample alone passes the size limit, this writer does not), and
``streaming.StreamingDataset(local=DIR)`` reads it in a training environment that has
streaming; `Reader` reads it back here. The layout:

- ``index.json``: ``{"version": 2, "shards": [...]}`` (keys sorted), one entry per shard: the
  shard's config (``column_names`` sorted, ``column_encodings``, ``column_sizes``, ``format``
  ``"mds"``, ``compression`` null, ``hashes`` [], ``size_limit``, ``version`` 2) plus
  ``samples``, ``raw_data`` (``basename``, ``bytes``, ``hashes``) and ``zip_data`` null.
- a shard: uint32 sample count n; n + 1 uint32 file offsets of the samples; the config as
  JSON; the samples. A sample: a uint32 size for each variable-size column, then each column's
  bytes, columns in name order.

Columns (one sample per clip): ``fps`` str, ``key`` str, ``metadata`` str (the sidecar JSON),
``shape`` json (the clip's index shape), ``start`` int (int64: the clip's first token in the
dataset's stream) and ``tokens`` ``ndarray:<dtype>``: NDArray with a fixed dtype, so a byte
``ndim << 2 | shape-dtype code``, the shape, then the values; 1-D for ``interleave`` /
``offset``, (t, h, w[, L]) for ``levels``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vqtok.data.records import ClipRecord
from vqtok.errors import VqtokError
from vqtok.io.tokens import index_dtype

EXTRA = None  # written here, no library needed
INDEX = "index.json"
MDS_VERSION = 2  # MosaicML streaming's own format version of index.json and its shard entries
_SHAPE_DTYPES = (np.uint8, np.uint16, np.uint32, np.uint64)  # MDS NDArray shape-dtype codes 0-3


def columns(dtype: np.dtype) -> dict[str, str]:
    """The MDS columns of a dataset of ``dtype`` tokens, by name."""
    return {"fps": "str", "key": "str", "metadata": "str", "shape": "json", "start": "int",
            "tokens": f"ndarray:{np.dtype(dtype).name}"}


storage_dtype = index_dtype  # the smallest unsigned dtype that holds the vocabulary


def _encode_array(values: np.ndarray) -> bytes:
    """MDS NDArray, fixed dtype, dynamic shape: ndim/shape-dtype byte, shape, values."""
    code = next(i for i, t in enumerate(_SHAPE_DTYPES)
                if max(values.shape) < 1 << (8 * np.dtype(t).itemsize))
    shape = np.asarray(values.shape, dtype=_SHAPE_DTYPES[code])
    return bytes([(values.ndim << 2) | code]) + shape.tobytes() + values.tobytes()


def _decode_array(data: bytes, dtype: np.dtype) -> np.ndarray:
    ndim, code = data[0] >> 2, data[0] % 4
    shape_dtype = np.dtype(_SHAPE_DTYPES[code])
    end = 1 + ndim * shape_dtype.itemsize
    shape = np.frombuffer(data[1:end], shape_dtype)
    return np.frombuffer(data[end:], dtype).reshape(tuple(int(v) for v in shape))


class Writer:
    """Write clips as MDS shards of about ``shard_bytes`` each, then ``index.json``.

    Args:
        directory: the dataset directory.
        dtype: the tokens' storage dtype.
        shard_bytes: a new shard starts before a sample would take a shard past this size
            (MDSWriter's ``size_limit``; below 2**32).
    """

    def __init__(self, directory: Path, dtype: np.dtype, shard_bytes: int) -> None:
        self.directory, self.dtype = directory, np.dtype(dtype)
        self.size_limit = max(1, min(shard_bytes, 2**32 - 1))
        self.names = sorted(columns(self.dtype))
        self.encodings = [columns(self.dtype)[n] for n in self.names]
        self.config = {
            "version": MDS_VERSION, "format": "mds", "compression": None, "hashes": [],
            "size_limit": self.size_limit, "column_names": self.names,
            "column_encodings": self.encodings,
            "column_sizes": [8 if e == "int" else None for e in self.encodings],
        }
        self.config_data = json.dumps(self.config, sort_keys=True).encode()
        self.shards: list[dict[str, Any]] = []
        self.files: list[dict[str, Any]] = []
        self._reset()

    def _reset(self) -> None:
        self.samples: list[bytes] = []
        self.shard_size = 4 + 4 + len(self.config_data)
        self.shard_tokens = 0

    def _encode(self, tokens: np.ndarray, record: ClipRecord) -> bytes:
        values: dict[str, Any] = {**record.fields(),
                                  "tokens": tokens.astype(self.dtype, copy=False)}
        sizes, data = [], []
        for name, encoding in zip(self.names, self.encodings, strict=True):
            value = values[name]
            if encoding == "int":
                datum = np.int64(value).tobytes()
            elif encoding == "str":
                datum = str(value).encode()
            elif encoding == "json":
                datum = json.dumps(value, sort_keys=True).encode()
            else:
                datum = _encode_array(np.ascontiguousarray(value))
            if encoding != "int":
                sizes.append(len(datum))
            data.append(datum)
        return np.asarray(sizes, np.uint32).tobytes() + b"".join(data)

    def add(self, tokens: np.ndarray, record: ClipRecord) -> None:
        """One clip -> one sample."""
        sample = self._encode(tokens, record)
        if self.samples and self.size_limit < self.shard_size + len(sample) + 4:
            self._flush()
        self.samples.append(sample)
        self.shard_size += len(sample) + 4
        self.shard_tokens += int(tokens.size)

    def _flush(self) -> None:
        count = len(self.samples)
        offsets = np.cumsum([0] + [len(s) for s in self.samples]).astype(np.uint32)
        offsets += 4 + 4 * (count + 1) + len(self.config_data)
        data = (np.uint32(count).tobytes() + offsets.tobytes() + self.config_data
                + b"".join(self.samples))
        name = f"shard.{len(self.shards):05d}.mds"
        (self.directory / name).write_bytes(data)
        self.shards.append({"samples": count, "zip_data": None, **self.config,
                            "raw_data": {"basename": name, "bytes": len(data), "hashes": {}}})
        self.files.append({"file": name, "rows": count, "tokens": self.shard_tokens})
        self._reset()

    def close(self) -> list[dict[str, Any]]:
        """Write the last shard and ``index.json``; returns the shard files."""
        if self.samples:
            self._flush()
        text = json.dumps({"version": MDS_VERSION, "shards": self.shards}, sort_keys=True)
        (self.directory / INDEX).write_text(text)
        return [*self.files, {"file": INDEX}]


class Reader:
    """An MDS dataset's samples, read as streaming's MDS reader does (local, uncompressed)."""

    def __init__(self, directory: Path, manifest: dict[str, Any] | None = None) -> None:
        self.directory = directory
        try:
            self.shards = json.loads((directory / INDEX).read_text())["shards"]
            self.starts = np.cumsum([0] + [s["samples"] for s in self.shards])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise VqtokError(f"no readable MDS {INDEX} ({e}); pack the dataset again",
                             directory) from e

    def __len__(self) -> int:
        return int(self.starts[-1])

    def sample(self, row: int) -> dict[str, Any]:
        """Sample ``row`` as a dict of its columns."""
        shard = int(np.searchsorted(self.starts, row, side="right")) - 1
        info = self.shards[shard]
        with open(self.directory / info["raw_data"]["basename"], "rb") as file:
            file.seek(4 * (1 + row - int(self.starts[shard])))
            begin, end = (int(v) for v in np.frombuffer(file.read(8), np.uint32))
            file.seek(begin)
            return self._decode(file.read(end - begin), info)

    @staticmethod
    def _decode(data: bytes, info: dict[str, Any]) -> dict[str, Any]:
        encodings = info["column_encodings"]
        variable = [i for i, size in enumerate(info["column_sizes"]) if size is None]
        sizes = dict(zip(variable, np.frombuffer(data, np.uint32, len(variable)), strict=True))
        at, out = 4 * len(variable), dict[str, Any]()
        for i, (name, encoding) in enumerate(zip(info["column_names"], encodings, strict=True)):
            size = int(sizes.get(i, info["column_sizes"][i]))
            datum = data[at:at + size]
            at += size
            if encoding == "int":
                out[name] = int(np.frombuffer(datum, np.int64)[0])
            elif encoding == "str":
                out[name] = datum.decode()
            elif encoding == "json":
                out[name] = json.loads(datum)
            else:
                out[name] = _decode_array(datum, np.dtype(encoding.split(":")[1]))
        return out

    def tokens(self, row: int, record: ClipRecord | None = None) -> np.ndarray:
        """The tokens of clip ``row``: 1-D, or (t, h, w[, L]) for ``levels``."""
        return self.sample(row)["tokens"]
