"""What a file is, told by its first bytes: for error messages that say what was given.

A command handed the wrong kind of file (a video to ``decode``, a remap file to ``info``, an MP4
to ``convert``) should say what the file is and what it expected, not guess at the expected
kind's failure modes ("the sidecar is missing", "needs code to unpickle"). `file_kind` reads at
most a few hundred bytes and never parses the file beyond its header.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["file_kind"]

_MAGIC = [
    (b"\x1aE\xdf\xa3", "a Matroska / WebM video"),
    (b"RIFF", "a RIFF (AVI / WAV) file"),
    (b"\x00\x00\x01\xba", "an MPEG program stream video"),
    (b"GIF8", "a GIF image"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"PK\x03\x04", "a zip archive (.npz, or a torch checkpoint)"),
    (b"\x80", "a Python pickle"),
]


def file_kind(path: str | Path) -> str | None:
    """A few words naming what ``path`` holds (``"an MP4 / MOV video"``), or None if unknown.

    For a NumPy array the words include its dtype and shape, and a sorted 1-D integer array is
    named as the used-index (remap) file it most likely is.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(512)
    except OSError:
        return None
    if not head:
        return "an empty file"
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide"):
        return "an MP4 / MOV video"
    if head[0] == 0x47 and len(head) > 188 and head[188] == 0x47:
        return "an MPEG transport stream video"
    for magic, words in _MAGIC:
        if head.startswith(magic):
            return _npy_kind(Path(path)) if magic == b"\x93NUMPY" else words
    if _is_safetensors(head):
        return "a safetensors file"
    return _text_kind(head)


def _npy_kind(path: Path) -> str:
    """``a NumPy .npy array (int64, shape (10,))``; a 1-D sorted integer one is a remap file."""
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except Exception:  # numpy raises several types for a damaged header
        return "a NumPy .npy array"
    words = f"a NumPy .npy array ({array.dtype}, shape {tuple(array.shape)})"
    if array.ndim == 1 and array.dtype.kind in "iu" and array.size <= 1 << 24:
        values = np.asarray(array)
        if values.size and bool(np.all(values[1:] > values[:-1])):
            return f"a used-index (remap) file: {words}, as `vqtok remap build` writes"
    return words


def _is_safetensors(head: bytes) -> bool:
    """8 little-endian bytes of header length, then a JSON object."""
    return len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 27


def _text_kind(head: bytes) -> str | None:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        return "a JSON text file"
    printable = sum(c.isprintable() or c.isspace() for c in text)
    return "a text file" if printable >= 0.95 * len(text) else None
