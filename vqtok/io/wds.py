"""WebDataset tar shards as inputs: every video member is one clip, keyed by its sample key.

A WebDataset shard is a plain (uncompressed) tar whose members are grouped into samples by
key: ``000123.mp4`` and ``000123.json`` are the video and metadata of sample ``000123``
(the key is the member's path up to the first dot of its file name). `list_videos` reads only
the tar headers (through fsspec for a URL: one ranged read per member header) and returns, for
every member with a video suffix, a `vqtok.io.sources.ClipSource` that reads the member in place
as a window of the shard, so nothing is unpacked or downloaded whole. Other members
(``.json``, ``.txt``, ``.cls``...) are ignored.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable
from pathlib import PurePosixPath

from vqtok.errors import VqtokError
from vqtok.io.remote import open_binary
from vqtok.io.sources import ClipSource

__all__ = ["is_tar", "list_videos", "sample_key"]


def is_tar(name: str) -> bool:
    """Whether an input names a tar shard (``.tar``; compressed tars are refused on read)."""
    return str(name).lower().endswith((".tar", ".tar.gz", ".tgz"))


def sample_key(member: str) -> str:
    """WebDataset's key of a member: its path up to the first dot of its file name
    (``a/000123.seg.mp4`` -> ``a/000123``)."""
    path = PurePosixPath(member)
    stem = path.name.split(".", 1)[0]
    return str(path.parent / stem) if str(path.parent) != "." else stem


def list_videos(shard: str, extensions: Iterable[str]) -> list[tuple[str, ClipSource]]:
    """(sample key, source) of every video member of a tar shard, in tar order.

    Args:
        shard: local path or URL of the ``.tar``.
        extensions: lower-case video suffixes (``.mp4``...) that make a member an input.

    Raises:
        VqtokError: the shard cannot be read, is compressed, or is not a tar.
    """
    if not shard.lower().endswith(".tar"):
        raise VqtokError("compressed tar shards cannot be read in place; store WebDataset "
                         "shards as plain .tar (videos do not compress further)", shard)
    keep = {e.lower() for e in extensions}
    found = []
    try:
        with open_binary(shard) as file, tarfile.open(fileobj=file, mode="r:") as tar:
            for member in tar:
                if member.isfile() and PurePosixPath(member.name).suffix.lower() in keep:
                    source = ClipSource(shard, member=member.name, offset=member.offset_data,
                                        length=member.size, size=member.size)
                    found.append((sample_key(member.name), source))
    except tarfile.TarError as e:
        raise VqtokError(f"not a readable tar shard ({e}); check that the file is complete",
                         shard) from e
    except OSError as e:
        raise VqtokError(f"cannot read the tar shard ({e.strerror or e})", shard) from e
    if not found:
        raise VqtokError(f"holds no video member (suffixes {sorted(keep)})", shard)
    return found
