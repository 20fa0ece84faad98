"""One input clip wherever it lives: a local file, a URL, a member of a tar shard, a time range.

`ClipSource` is what `vqtok.io.video.VideoReader` opens besides a plain path: it names a video
(``location``, a local path or an fsspec URL), optionally a member of a WebDataset tar shard at
``location`` (by byte ``offset`` and ``length``, read as a window of the shard: nothing is
unpacked), and optionally a time range. The range selects exactly the frames whose presentation
time ``t`` (seconds from the video's first frame, exact from the container's timestamps)
satisfies ``start <= t < end``; the reader seeks to the key frame before ``start`` and drops
the frames before it, so only a few frames before the clip are decoded.

A ClipSource is a frozen dataclass of plain values, so it pickles (Ray tasks) and prints
(``str``) as the name used in messages: ``s3://b/shard-0.tar[000001.mp4]`` for a tar member,
``clips/a.mp4#t=1.5,3`` for a range (W3C media-fragment syntax).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import IO, Any

from vqtok.errors import ConfigError
from vqtok.io.remote import is_url, local_path, open_binary

__all__ = ["ClipSource", "as_seconds", "format_seconds"]


@dataclass(frozen=True)
class ClipSource:
    """A video to read, or a part of one.

    Attributes:
        location: a local path or URL (``s3://``, ``gs://``, ``https://``, ``file://``) of the
            video, or of the tar shard holding it.
        member: the video's name inside the tar shard at ``location``; None for a plain video.
        offset: byte offset of the member's data in the shard.
        length: the member's size in bytes.
        start: the clip starts at this many seconds (exact); None: at the first frame.
        end: the clip ends before this many seconds (exact); None: at the last frame.
        size: the input's size in bytes, when known (sharding balances by it); 0 if unknown.
    """

    location: str
    member: str | None = None
    offset: int = 0
    length: int = 0
    start: Fraction | None = None
    end: Fraction | None = None
    size: int = 0

    def __post_init__(self) -> None:
        if self.start is not None and self.start < 0:
            raise ConfigError(f"start must be >= 0 seconds, got {float(self.start):g}", str(self))
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ConfigError(f"end ({float(self.end):g} s) must be after start "
                              f"({float(self.start):g} s)", str(self))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (times as exact ``"num/den"`` strings), for `from_dict`."""
        return {"location": self.location, "member": self.member, "offset": self.offset,
                "length": self.length, "size": self.size,
                "start": None if self.start is None else str(self.start),
                "end": None if self.end is None else str(self.end)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipSource:
        """The inverse of `to_dict`."""
        return cls(str(data["location"]), data.get("member"), int(data.get("offset") or 0),
                   int(data.get("length") or 0), as_seconds(data.get("start"), "start"),
                   as_seconds(data.get("end"), "end"), int(data.get("size") or 0))

    @property
    def ranged(self) -> bool:
        """Whether only part of the video is read (a start or an end)."""
        return self.start is not None or self.end is not None

    @property
    def name(self) -> str:
        """The video's file name, with the range as a media fragment (``a.mp4#t=1.5,3``):
        what an index file records as its source."""
        base = self.member if self.member is not None else self.location.rstrip("/")
        name = PurePosixPath(base.replace(os.sep, "/")).name
        return name + self.fragment

    @property
    def fragment(self) -> str:
        """``#t=start,end`` (either may be empty), or "" for the whole video."""
        if not self.ranged:
            return ""
        start = "" if self.start is None else format_seconds(self.start)
        end = "" if self.end is None else format_seconds(self.end)
        return f"#t={start},{end}" if end else f"#t={start}"

    def __str__(self) -> str:
        where = self.location if self.member is None else f"{self.location}[{self.member}]"
        return where + self.fragment

    @property
    def is_local_file(self) -> bool:
        """A local file read as a whole file (FFmpeg opens it by name, as before)."""
        return self.member is None and local_path(self.location) is not None

    @contextmanager
    def open(self) -> Iterator[str | IO[bytes]]:
        """What FFmpeg opens: a local path as a string, or a seekable binary file (a URL, or
        the member's window of a tar shard).

        Raises:
            VqtokError: the URL cannot be opened (missing object, credentials, backend).
        """
        path = local_path(self.location)
        if self.member is None and path is not None:
            yield str(path)
            return
        with open_binary(self.location) as file:
            if self.member is None:
                yield file
            else:
                yield io.BufferedReader(_Window(file, self.offset, self.length), 1 << 20)


def as_seconds(value: Any, what: str = "time") -> Fraction | None:
    """A time in seconds as an exact fraction: ``"1.5"`` is exactly 3/2; None or "" is None.

    Raises:
        ConfigError: not a number, or negative.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, float) and value != value:  # NaN: an empty cell in pandas / Parquet
        return None
    try:
        # a float goes through its shortest repr, so 1.1 is 11/10 and not its binary value
        seconds = Fraction(repr(value) if isinstance(value, float) else str(value).strip())
    except (ValueError, ZeroDivisionError) as e:
        raise ConfigError(f"{what} must be a number of seconds, got {value!r}") from e
    if seconds < 0:
        raise ConfigError(f"{what} must be >= 0 seconds, got {value!r}")
    return seconds


def format_seconds(value: Fraction) -> str:
    """Seconds for names and keys: ``1.5``, ``3``, ``0.333333`` (6 decimals at most)."""
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return text or "0"


class _Window(io.RawIOBase):
    """Bytes [offset, offset + length) of a seekable binary file, as a seekable file of its
    own (a tar member read in place)."""

    def __init__(self, file: IO[bytes], offset: int, length: int) -> None:
        self.file, self.offset, self.length, self.position = file, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.length}[whence]
        self.position = max(0, base + position)
        return self.position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self.length - self.position))
        if count == 0:
            return 0
        self.file.seek(self.offset + self.position)
        data = self.file.read(count)
        view[: len(data)] = data
        self.position += len(data)
        return len(data)


def source_size(location: str) -> int:
    """A local file's size in bytes; 0 for a URL or an unreadable path (no request is made)."""
    if is_url(location) and not location.startswith("file://"):
        return 0
    path = local_path(location)
    try:
        return Path(path).stat().st_size if path is not None else 0
    except OSError:
        return 0
