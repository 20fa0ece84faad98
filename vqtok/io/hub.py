"""Models from the Hugging Face Hub: repo references, cached downloads, one-line errors.

A model or checkpoint source that is not an existing path and reads ``owner/name`` (optionally
``owner/name@revision``) is a Hub repository. `fetch_files` downloads only the files asked for
with ``huggingface_hub.hf_hub_download`` into the standard cache, so ``HF_HOME``,
``HF_HUB_CACHE``, ``HF_HUB_OFFLINE=1``, ``HF_ENDPOINT`` and ``HF_TOKEN`` work as in any Hugging
Face tool; a file already cached is not downloaded again. Every file comes from one commit:
the first file pins the revision's commit and the others are fetched at that commit.

Nothing here runs code from a repository: the callers read the files as they read local ones
(vqtok models: safetensors + JSON only; public checkpoints: `vqtok.convert`).
huggingface_hub is imported on first use, so ``import vqtok`` and local paths never load it or
touch the network. Its exceptions become a `HubError` with one line that says what to do.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqtok.errors import HubError

__all__ = ["DownloadFn", "HubError", "HubRef", "fetch_files", "hub_origin", "parse_hub_ref"]

DownloadFn = Callable[[str, int, "int | None"], None]
"""Download progress: (file name, bytes done, bytes in the file or None if unknown)."""

_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_REF = re.compile(rf"(?P<owner>{_PART})/(?P<name>{_PART})(?:@(?P<rev>[A-Za-z0-9][\w./-]*))?")


@dataclass(frozen=True)
class HubRef:
    """A Hugging Face model repository and an optional revision (branch, tag or commit).

    Attributes:
        repo_id: ``owner/name``.
        revision: None for the default branch.
    """

    repo_id: str
    revision: str | None = None

    @property
    def name(self) -> str:
        """The repository's name without the owner, e.g. ``Cosmos-0.1-Tokenizer-DV4x8x8``."""
        return self.repo_id.split("/", 1)[1]

    def __str__(self) -> str:
        return self.repo_id if self.revision is None else f"{self.repo_id}@{self.revision}"


def parse_hub_ref(source: str | Path) -> HubRef | None:
    """The Hub repository ``source`` names, or None if it is a path.

    A `Path` object is always a path; a string is a repository when no file or directory of
    that name exists, no directory is named like its owner (``run-lr0/model`` with a folder
    ``run-lr0`` here is a mistyped path, not a repository), and it reads ``owner/name`` or
    ``owner/name@revision`` (letters, digits, ``.``, ``_``, ``-``; no ``..`` or ``--``; names
    up to 96 characters). Anything else with a separator, or starting with ``.``, ``/`` or
    ``~``, is a path.
    """
    if isinstance(source, Path):
        return None
    text = str(source)
    match = _REF.fullmatch(text)
    if match is None or ".." in text or "--" in match["owner"] + "/" + match["name"]:
        return None
    if len(match["name"]) > 96 or Path(text).expanduser().exists():
        return None
    if Path(match["owner"]).is_dir():
        return None
    return HubRef(f"{match['owner']}/{match['name']}", match["rev"])


def fetch_files(
    ref: HubRef,
    files: Sequence[str],
    progress: DownloadFn | None = None,
    what: str = "the files vqtok needs",
) -> list[Path]:
    """Download (or find in the cache) ``files`` of one commit of ``ref``.

    Args:
        ref: the repository and revision.
        files: file names in the repository.
        progress: called as bytes arrive (never for files already cached).
        what: what ``files`` make up, for the error about a repository that lacks one.

    Returns:
        The local paths, in order, all in one ``snapshots/<commit>/`` folder of the cache.

    Raises:
        HubError: offline and not cached, no such repository or revision, a gated repository
            without access, a file the repository does not have, the Hub unreachable.
    """
    import huggingface_hub

    revision = ref.revision
    paths: list[Path] = []
    for filename in files:
        try:
            with _quiet_library_logs():
                local = huggingface_hub.hf_hub_download(
                    ref.repo_id, filename, revision=revision,
                    tqdm_class=_reporter(filename, progress),
                )
        except Exception as e:
            raise HubError(_explain(e, ref, filename, files, what), str(ref)) from e
        paths.append(Path(local))
        # the cache path is snapshots/<commit>/<filename>: pin that commit for the other files
        snapshot = Path(local).parents[len(Path(filename).parts) - 1]
        if snapshot.parent.name == "snapshots":
            revision = snapshot.name
    return paths


@contextlib.contextmanager
def _quiet_library_logs() -> Iterator[None]:
    """huggingface_hub logs each retry as a warning; vqtok's user gets one error line instead."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def hub_origin(ref: HubRef, path: Path) -> str:
    """Where a fetched file came from, for a model card: the repository and the commit (the
    name of the cache's snapshot folder that holds ``path``)."""
    return f"Hugging Face `{ref.repo_id}` at commit `{path.parent.name}`"


def _explain(error: Exception, ref: HubRef, filename: str, files: Sequence[str], what: str) -> str:
    """One line saying what went wrong and what to do, from huggingface_hub's exception types."""
    from huggingface_hub import constants
    from huggingface_hub import errors as hf

    cache = constants.HF_HUB_CACHE
    if isinstance(error, hf.GatedRepoError):
        return (
            "gated repository: accept its conditions on its Hugging Face page, then log in "
            "(`hf auth login`) or set HF_TOKEN"
        )
    if isinstance(error, hf.RepositoryNotFoundError):
        return (
            "no local file or directory of this name, and no such repository on the Hugging "
            "Face Hub (if it is private, log in with `hf auth login` or set HF_TOKEN)"
        )
    if isinstance(error, hf.RevisionNotFoundError):
        return f"the repository has no revision {ref.revision!r} (a branch, tag or commit)"
    if isinstance(error, hf.LocalEntryNotFoundError):
        if constants.HF_HUB_OFFLINE or isinstance(error.__cause__, hf.OfflineModeIsEnabled):
            return (
                f"{filename} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is "
                "set; download it once with network access (or point HF_HUB_CACHE / HF_HOME "
                "at a cache that holds it)"
            )
        return (
            f"cannot reach the Hugging Face Hub and {filename} is not in the cache ({cache}); "
            "check the network, or set HF_HUB_OFFLINE=1 to use only cached files"
        )
    if isinstance(error, hf.EntryNotFoundError):
        return (
            f"the repository has no {filename}; it needs {', '.join(files)} ({what}): is it "
            "the right repository?"
        )
    if isinstance(error, hf.HfHubHTTPError):
        status = getattr(error.response, "status_code", "?") if error.response else "?"
        return f"the Hugging Face Hub answered HTTP {status} for {filename}: {_first_line(error)}"
    if isinstance(error, ValueError):  # huggingface_hub's argument validation
        return f"not a usable repository id or revision ({_first_line(error)})"
    return f"downloading {filename} failed ({type(error).__name__}: {_first_line(error)})"


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _reporter(filename: str, progress: DownloadFn | None) -> Any:
    """A tqdm class for huggingface_hub that draws nothing and reports bytes to ``progress``.

    huggingface_hub may open more than one bar per file (Xet: reconstruction and transfer);
    the file's progress is the furthest of them. tqdm comes with huggingface_hub.
    """
    from tqdm.auto import tqdm

    done = [0]

    class Reporter(tqdm):  # type: ignore[misc, type-arg]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs["disable"] = True  # never drawn: the CLI draws vqtok's own bar
            super().__init__(*args, **kwargs)
            self.count = int(kwargs.get("initial") or 0)

        def update(self, n: float | None = 1) -> bool | None:
            self.count += int(n or 0)
            if progress is not None and self.count > done[0]:
                done[0] = self.count
                progress(filename, done[0], int(self.total) if self.total else None)
            return None

    return Reporter
