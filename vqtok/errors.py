"""The typed errors vqtok raises.

Every error a user can cause (bad file, bad model, bad argument) is a `VqtokError`; the CLI prints
its message as one line and exits 1. The message names the file and says what to do, in the
caller's terms: where the fix is an argument, ``message`` names the Python argument
(``resume=True``) and ``cli_message`` the command-line flag (``--resume``), which the CLI prints.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType


class VqtokError(Exception):
    """Base class. `path` (optional) is the file or directory the problem is about;
    `cli_message` (optional) is `message` worded for the command line."""

    def __init__(
        self, message: str, path: str | Path | None = None, *, cli_message: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = None if path is None else str(path)
        self.cli_message = cli_message or message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def check_version(
    found: object, supported: int, what: str, error: type[VqtokError], path: str | Path | None,
    advice: str = "",
) -> None:
    """Refuse a file whose format version this vqtok does not read (one message for every file
    kind): ``error("<what> <found> is not supported (this vqtok reads version N)[; advice]")``.
    """
    if found != supported:
        tail = f"; {advice}" if advice else ""
        raise error(f"{what} {found!r} is not supported (this vqtok reads version {supported})"
                    f"{tail}", path)


class ConfigError(VqtokError):
    """An invalid configuration: unknown key, wrong type, impossible combination."""


class OptionError(ConfigError):
    """An option a job cannot take with this model or these inputs (e.g. ``levels`` on a model
    without residual levels). `option` is its command-line flag (``--levels``): the CLI reports
    it as a usage error (exit 2), like a bad flag."""

    def __init__(self, option: str, message: str, path: str | Path | None = None) -> None:
        super().__init__(message, path)
        self.option = option


class QuantizerError(VqtokError):
    """Bad input to a quantizer: wrong shape, indices out of range, bad remap array."""


class RemapError(QuantizerError):
    """A used-index (remap) array or file that is not a sorted 1-D integer array in range."""


class CheckpointError(VqtokError):
    """A model directory that cannot be loaded exactly as it claims to be."""


class HubError(CheckpointError):
    """A Hugging Face Hub repository that cannot be used: absent, gated, not cached while
    offline, unreachable, or without the files needed."""


class VideoError(VqtokError):
    """A video that cannot be probed, decoded or written."""


class TokenFileError(VqtokError):
    """An index file (or its sidecar) that is malformed or does not match the model."""


class MissingDependencyError(VqtokError):
    """An optional library a feature needs is not installed; the message names the extra that
    brings it (``pip install 'vqtok[mds]'``)."""

    @classmethod
    def install(cls, needs: str, extra: str) -> MissingDependencyError:
        """``"<needs>, which is not installed; install it with: pip install 'vqtok[<extra>]'"``,
        e.g. ``install("the Ray engine needs Ray Data", "ray")``."""
        return cls(f"{needs}, which is not installed; install it with: "
                   f"pip install 'vqtok[{extra}]'")

    @classmethod
    def require(cls, modules: Sequence[str], needs: str, extra: str) -> ModuleType:
        """Import ``modules`` (a package, then the submodules it needs loaded) and return the
        first; when one is missing, raise `install` (``needs``, ``extra``) instead."""
        try:
            loaded = [importlib.import_module(name) for name in modules]
        except ImportError as e:
            raise cls.install(needs, extra) from e
        return loaded[0]
