"""Output names, checked before any work: what ``-o`` of each command may be.

A command that computes for minutes and then cannot write its output wastes those minutes, and
one that quietly writes another name than the one given surprises. So every command checks its
output first: the suffix must name what the command writes (an index file, a video, a remap
file), several inputs need a folder (not a name like ``codes.npy``), a dataset, model or
training run is a folder (not ``x.safetensors``), and no file may stand where a folder has to
be created (``afile/out.npy`` with ``afile`` a file). Each problem is an `OptionError` for ``-o``
(the command line: exit 2) naming the output and the suffixes it may have, in words.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from vqtok.errors import OptionError
from vqtok.io.video_writer import VIDEO_SUFFIXES
from vqtok.pipeline.plan import VIDEO_EXTENSIONS

__all__ = [
    "INDEX_SUFFIXES",
    "VIDEO_SUFFIXES",
    "check_file_output",
    "check_folder_output",
    "check_run_output",
    "in_words",
]

OPTION = "-o"
INDEX_SUFFIXES = (".npy", ".safetensors")
# Names of files vqtok reads or writes: never the name of a folder it makes, nor of an index file.
_FILE_SUFFIXES = frozenset(
    {*INDEX_SUFFIXES, ".json", ".parquet", ".jit", ".ckpt", ".pt", ".pth", *VIDEO_EXTENSIONS}
)


def in_words(suffixes: Iterable[str]) -> str:
    """``(".mp4", ".mov", ".mkv")`` -> ``".mp4, .mov or .mkv"``."""
    items = list(suffixes)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _ends_with_separator(output: str | Path) -> bool:
    return str(output).endswith(("/", os.sep))


def _names_folder(output: str | Path) -> bool:
    """``out/`` or an existing directory: outputs go inside it."""
    return _ends_with_separator(output) or Path(output).is_dir()


def check_parents(output: str | Path) -> None:
    """No file (or dangling link) where a folder of ``output``'s path has to be.

    Raises:
        OptionError: e.g. ``afile/out.npy`` where ``afile`` is a file.
    """
    path = Path(output)
    chain = [path] if _ends_with_separator(output) else []
    for folder in chain + list(path.parents):  # nearest first
        if folder.is_dir():
            return
        if os.path.lexists(folder):
            raise OptionError(
                OPTION, f"{folder} is a file, not a folder, so nothing can be written below it; "
                "choose another output path", output,
            )


def check_file_output(output: str | Path, suffixes: Sequence[str], what: str) -> None:
    """One output file named with one of ``suffixes`` (``what`` it is, for the message).

    Raises:
        OptionError: another suffix, an existing folder of that name, or a file on the way.
    """
    check_parents(output)
    if _names_folder(output):
        raise OptionError(OPTION, f"is a folder; name {what} ({in_words(suffixes)})", output)
    if Path(output).suffix.lower() not in suffixes:
        raise OptionError(OPTION, f"not a name for {what}: use {in_words(suffixes)}", output)


def check_folder_output(output: str | Path, what: str) -> None:
    """An output folder (a dataset, a model directory, a training run).

    Raises:
        OptionError: an existing file of that name, a name with a file suffix
            (``-o model.safetensors``), or a file on the way.
    """
    check_parents(output)
    path = Path(output)
    if os.path.lexists(path) and not path.is_dir():
        raise OptionError(OPTION, f"is a file; {what} is a folder: give a folder name", output)
    suffix = path.suffix.lower()
    if suffix in _FILE_SUFFIXES and not path.is_dir():
        raise OptionError(
            OPTION, f"names a {suffix} file, but {what} is a folder: give a folder name such "
            f"as {path.with_suffix('')}/", output,
        )


def check_run_output(
    output: str | Path,
    inputs: Sequence[str | Path],
    suffixes: Sequence[str],
    what: str,
    *,
    other_names: bool = False,
) -> None:
    """The output of ``encode`` / ``decode``: one file for one input file, else a folder.

    Args:
        output: ``-o``.
        inputs: the input files and folders.
        suffixes: what an output file may be named (`INDEX_SUFFIXES`, `VIDEO_SUFFIXES`).
        what: one output, in words (``"an index file"``).
        other_names: a single output may have another name, to which a suffix is added
            (``codes`` -> ``codes.npy``), unless it names another kind of file (``x.mp4``).

    Raises:
        OptionError: several inputs (or a folder) with an output named like one file; an
            output file with another suffix; a file where a folder must go.
    """
    check_parents(output)
    path = Path(output)
    if _ends_with_separator(output) and os.path.lexists(path) and not path.is_dir():
        raise OptionError(OPTION, "is a file, not a folder", output)
    if _names_folder(output):
        return
    folders = [p for p in inputs if Path(p).is_dir()]
    suffix = path.suffix.lower()
    if len(inputs) > 1 or folders:
        given = f"{folders[0]} is a folder" if folders else f"{len(inputs)} inputs are given"
        if os.path.lexists(path):
            raise OptionError(OPTION, f"is a file, but {given}: -o must be a folder, which "
                              f"gets {what} per input", output)
        if suffix in suffixes or suffix in _FILE_SUFFIXES:
            raise OptionError(
                OPTION, f"names one file, but {given}: give a folder, which gets {what} per "
                f"input (e.g. {path.with_suffix('')}/)", output,
            )
        return
    if suffix in suffixes:
        return
    if not other_names or suffix in _FILE_SUFFIXES:
        raise OptionError(OPTION, f"not a name for {what}: use {in_words(suffixes)} (or give "
                          "a folder, ending in /)", output)
