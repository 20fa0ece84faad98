"""Where model directories are found: by path, Hugging Face Hub repository or name.

Names resolve (`resolve_model`) as: an existing directory path; else a Hugging Face Hub
repository ``owner/name[@revision]`` (`vqtok.io.hub`: ``config.json`` + ``model.safetensors`` are
fetched into the standard cache, and loaded like any directory); else, for anything else that
looks like a path (a separator, a leading ``.`` or ``~``, or ``owner`` naming a folder here), the
error "no model directory here", without asking the network; else ``<repo>/models/<name>``
(the shipped models, `REPO_MODELS`; ``vqtok/_models`` in an installed wheel); else any extra
directories given; else each directory of ``$VQTOK_MODELS`` (os.pathsep-separated). The format
of a model directory is `vqtok.io.checkpoint`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from vqtok.errors import CheckpointError
from vqtok.io.hub import DownloadFn, fetch_files, parse_hub_ref

__all__ = ["CONFIG_FILE", "REPO_MODELS", "WEIGHTS_FILE", "resolve_model", "search_dirs"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def _shipped_models() -> Path:
    """The shipped models: ``vqtok/_models`` in an installed wheel (pyproject.toml maps the
    repository's ``models/`` there), else the repository's ``models/`` (a checkout or an
    editable install)."""
    package = Path(__file__).resolve().parent.parent  # vqtok/io/model_dirs.py -> vqtok/
    packaged = package / "_models"
    return packaged if packaged.is_dir() else package.parent / "models"


REPO_MODELS = _shipped_models()

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _why_local(text: str) -> str:
    """Why a value shaped like ``owner/name`` was taken as a path, not a Hub repository."""
    first = Path(text).parts[0] if Path(text).parts else ""
    if "/" in text and first not in ("/", ".", "..", "~") and Path(first).is_dir():
        return f" ({first}/ is a folder here, so this is a path, not a Hugging Face repository)"
    return ""


def search_dirs(extra_dirs: Sequence[str | Path] = ()) -> list[Path]:
    """Directories searched for model names, in order: repo ``models/``, extra, $VQTOK_MODELS."""
    env = [Path(p) for p in os.environ.get("VQTOK_MODELS", "").split(os.pathsep) if p]
    return [REPO_MODELS, *(Path(d) for d in extra_dirs), *env]


def resolve_model(
    name_or_path: str | Path,
    extra_dirs: Sequence[str | Path] = (),
    on_download: DownloadFn | None = None,
) -> Path:
    """The model directory for a path, a Hub repository or a name (order: module docstring).

    Args:
        name_or_path: a directory, ``owner/name[@revision]`` (a string) or a model name.
        extra_dirs: more directories to search for names.
        on_download: progress of a Hub download (file name, bytes done, bytes in the file).

    Raises:
        CheckpointError: nothing found, or a name that is not a plain directory name.
        HubError: a Hub repository that cannot be fetched or lacks the model files.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    ref = parse_hub_ref(name_or_path)
    if ref is not None:
        files = [CONFIG_FILE, WEIGHTS_FILE]
        return fetch_files(ref, files, on_download, "a vqtok model directory")[0].parent
    text = str(name_or_path)
    looks_like_path = isinstance(name_or_path, Path) or os.sep in text or "/" in text
    if looks_like_path or text.startswith((".", "~")):
        raise CheckpointError(f"no model directory here{_why_local(text)}; check the path", path)
    if not _NAME.fullmatch(text) or ".." in text:
        raise CheckpointError(f"{text!r} is not a model name (letters, digits, '.', '_', '-')")
    roots = search_dirs(extra_dirs)
    for root in roots:
        candidate = root / text
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    where = ", ".join(str(r) for r in roots)
    raise CheckpointError(
        f"no model named {text!r} in {where}; give a directory or set $VQTOK_MODELS"
    )
