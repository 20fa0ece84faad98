"""Files named by URL (``s3://``, ``gs://``, ``https://``, ``file://``...) through fsspec.

Everything vqtok reads or writes beyond a local path goes through here, so fsspec is imported in
one place and only when a URL is used: a local run never needs it. Credentials come only from
the environment, as fsspec's backends read it (s3fs: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_PROFILE`` / ``~/.aws``, ``AWS_ENDPOINT_URL`` for an S3-compatible
store such as MinIO; gcsfs: ``GOOGLE_APPLICATION_CREDENTIALS``); there is no flag for them. A
``file://`` URL is the local path it names.

`require_fsspec` turns a missing backend into one line saying what to install
(``pip install 'vqtok[cloud]'``), and every fsspec failure that reaches a caller is a
`VqtokError` naming the URL.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from vqtok.errors import MissingDependencyError, VqtokError

__all__ = [
    "is_url",
    "join",
    "local_path",
    "open_binary",
    "remote_fs",
    "require_fsspec",
]

_SCHEME = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]+)://")
# what each URL scheme needs beyond fsspec itself (pip names)
_BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp",
             "https": "aiohttp", "az": "adlfs", "abfs": "adlfs"}


def is_url(text: str | os.PathLike[str]) -> bool:
    """Whether ``text`` is a URL (``scheme://...``) rather than a local path; ``file://`` URLs
    count as URLs here (`local_path` turns them into paths)."""
    return isinstance(text, str) and _SCHEME.match(text) is not None


def local_path(text: str | os.PathLike[str]) -> Path | None:
    """The local path ``text`` names: a plain path, or a ``file://`` URL; None for a remote
    URL."""
    if not is_url(text):
        return Path(text)
    assert isinstance(text, str)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    return None


def join(base: str, name: str) -> str:
    """``name`` below ``base``: a path or URL joined with ``/`` (a URL never gets ``os.sep``)."""
    if local_path(base) is not None and not base.startswith("file://"):
        return str(Path(base) / name)
    return base.rstrip("/") + "/" + name.lstrip("/")


def require_fsspec(url: str) -> Any:
    """The fsspec module, with the backend of ``url``'s scheme importable.

    Raises:
        MissingDependencyError: fsspec or the scheme's backend is missing (one line: what to
            install).
    """
    match = _SCHEME.match(url)
    scheme = match.group("scheme").lower() if match else "file"
    try:
        import fsspec
    except ImportError as e:
        raise MissingDependencyError(f"reading or writing {scheme}:// URLs needs fsspec, which "
                                     "is not installed; install it with: pip install "
                                     "'vqtok[cloud]'", url) from e
    try:
        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as e:
        backend = _BACKENDS.get(scheme, f"the fsspec backend for {scheme}://")
        extra = " (or pip install 'vqtok[cloud]')" if backend == "s3fs" else ""
        raise MissingDependencyError(f"{scheme}:// URLs need {backend}, which is not "
                                     f"installed; install it with: pip install {backend}{extra}",
                                     url) from e
    return fsspec


def remote_fs(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) for a URL; credentials from the environment.

    Raises:
        VqtokError: fsspec or the backend is missing, or the URL cannot be parsed.
    """
    fsspec = require_fsspec(url)
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except Exception as e:  # backends raise many kinds for a bad URL or configuration
        raise VqtokError(f"cannot use this URL ({type(e).__name__}: {e})", url) from e
    return fs, path


@contextmanager
def open_binary(url: str) -> Iterator[IO[bytes]]:
    """A seekable binary file over a URL (reads are ranged requests) or a local path.

    Raises:
        VqtokError: no such object, permission denied, or the backend failed (one line).
    """
    path = local_path(url)
    if path is not None:
        with open(path, "rb") as file:
            yield file
        return
    fs, inner = remote_fs(url)
    try:
        file = fs.open(inner, "rb")
    except FileNotFoundError as e:
        raise VqtokError("no such object; check the URL", url) from e
    except PermissionError as e:
        raise VqtokError("permission denied; check the credentials in the environment "
                         "(e.g. AWS_PROFILE, AWS_ACCESS_KEY_ID)", url) from e
    except OSError as e:
        raise VqtokError(f"cannot open ({e})", url) from e
    with file:
        yield file


def wrap_os_error(url: str, error: BaseException, doing: str) -> VqtokError:
    """An fsspec failure as a one-line `VqtokError` naming the URL and what was being done."""
    if isinstance(error, FileNotFoundError):
        return VqtokError(f"{doing}: no such object; check the URL", url)
    if isinstance(error, PermissionError):
        return VqtokError(f"{doing}: permission denied; check the credentials in the "
                          "environment", url)
    return VqtokError(f"{doing} failed ({type(error).__name__}: {error})", url)
