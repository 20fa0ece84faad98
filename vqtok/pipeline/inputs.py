"""What a run encodes, as keyed clips: files, directories, URLs, tar shards and manifests.

`expand_inputs` turns ``vqtok encode``'s inputs into `Clip` s, each a
`vqtok.io.sources.ClipSource` and a key, the output's name (``OUT/<key>.npy`` for the local
engine, the dataset row's ``index_file`` for the Ray engine):

- a local video file or a URL of one: one clip, keyed by its name without the suffix;
- a local directory or a URL prefix (``s3://bucket/videos/``): every file below it with a video
  suffix, keyed by its path below it without the suffix (with several directories, each key
  starts with its directory's name), as a local directory run mirrors names;
- a URL with a wildcard (``s3://bucket/shards/*.tar``): every match, each expanded as here;
- a ``.tar`` (WebDataset shard, local or URL): every video member, keyed by its sample key
  (`vqtok.io.wds`);
- a ``.csv`` / ``.jsonl`` / ``.parquet`` manifest: every row, with its ``start`` / ``end`` range
  and ``key`` (`vqtok.io.manifests`).

Keys are checked: a key must be a relative path without ``..`` (a manifest cannot write outside
the output), and two different clips with one key both fail (``error`` set), like two local
files mapping to one index file; the same clip given twice is kept once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from vqtok.disk import remove_stale
from vqtok.errors import ConfigError, VqtokError
from vqtok.io.manifests import is_manifest, read_manifest_rows
from vqtok.io.remote import is_url, local_path, remote_fs, wrap_os_error
from vqtok.io.sources import ClipSource, source_size
from vqtok.io.wds import is_tar, list_videos
from vqtok.pipeline.plan import VIDEO_EXTENSIONS, Job

__all__ = ["Clip", "expand_inputs", "needs_sources", "plan_clips"]


@dataclass(frozen=True)
class Clip:
    """One clip to encode: its key (the output name, ``/``-separated, no suffix), its source,
    and why it fails before any work (``error``: a key clash or a bad key)."""

    key: str
    source: ClipSource
    error: str | None = None


def needs_sources(inputs: Sequence[str | Path], output: str | Path = "") -> bool:
    """Whether any input is more than a local video file or directory (a URL, a tar shard or a
    manifest), or the output is a URL: the local engine plans those with `plan_clips`."""
    return is_url(str(output)) or any(
        is_url(str(i)) or is_tar(str(i)) or is_manifest(str(i)) for i in inputs)


def expand_inputs(inputs: Sequence[str | Path]) -> list[Clip]:
    """Every clip of the inputs, in input order (directories and listings sorted).

    Raises:
        ConfigError: no inputs; VqtokError: an input that cannot be listed or read (a missing
        directory or URL, a bad manifest or tar shard, a directory without videos).
    """
    if not inputs:
        raise ConfigError("no inputs given")
    texts = [str(i) for i in inputs]
    folders = {t: _is_dir(t) for t in texts if not (_is_glob(t) or is_tar(t) or is_manifest(t))}
    pairs: list[tuple[str, ClipSource]] = []
    for text in texts:
        pairs += _expand(text, sum(folders.values()) > 1, folders.get(text))
    return _checked(pairs)


def _expand(text: str, prefix: bool, folder: bool | None = None) -> list[tuple[str, ClipSource]]:
    """(key, source) of one input; ``folder``: whether it is a directory, if known."""
    if _is_glob(text):
        matches = _glob(text)
        return [pair for match in matches for pair in _expand(match, prefix)]
    if is_tar(text):
        return list_videos(text, VIDEO_EXTENSIONS)
    if is_manifest(text):
        return [(row.key, row.source) for row in read_manifest_rows(text)]
    if _is_dir(text) if folder is None else folder:
        return _walk(text, prefix)
    name = PurePosixPath(text.rstrip("/").replace(os.sep, "/")).stem
    return [(name, ClipSource(text, size=source_size(text)))]


def _is_glob(text: str) -> bool:
    """A remote URL with a wildcard (a local shell expands its own)."""
    return is_url(text) and local_path(text) is None and any(c in text for c in "*?[")


def _is_dir(text: str) -> bool:
    path = local_path(text)
    if path is not None:
        return path.is_dir()
    if text.endswith("/"):
        return True
    fs, inner = remote_fs(text)
    try:
        return bool(fs.isdir(inner))
    except Exception:  # a backend that cannot tell: treat it as a file, opening will say
        return False


def _walk(text: str, prefix: bool) -> list[tuple[str, ClipSource]]:
    """(key, source) of every video below a local directory or a URL prefix, sorted."""
    path = local_path(text)
    if path is not None:
        found = sorted(p for p in path.rglob("*")
                       if p.suffix.lower() in VIDEO_EXTENSIONS and (p.is_file() or p.is_symlink()))
        listed = [(p.relative_to(path).as_posix(), str(p), p.stat().st_size if p.is_file()
                   else 0) for p in found]
        name = path.resolve().name
    else:
        fs, inner = remote_fs(text)
        fs.invalidate_cache()  # list what is there now
        try:
            entries = fs.find(inner.rstrip("/"), detail=True)
        except Exception as e:  # the backend's own error kinds
            raise wrap_os_error(text, e, "listing") from e
        base = inner.rstrip("/") + "/"
        scheme = text.split("://", 1)[0]
        listed = sorted(
            (name[len(base):], f"{scheme}://{name}", int(info.get("size") or 0))
            for name, info in entries.items()
            if name.startswith(base) and PurePosixPath(name).suffix.lower() in VIDEO_EXTENSIONS
        )
        name = PurePosixPath(inner.rstrip("/")).name
    if not listed:
        raise VqtokError(f"no files with a suffix in {sorted(VIDEO_EXTENSIONS)} below it", text)
    return [
        (f"{name}/{_stem(rel)}" if prefix else _stem(rel), ClipSource(loc, size=size))
        for rel, loc, size in listed
    ]


def _glob(pattern: str) -> list[str]:
    fs, inner = remote_fs(pattern)
    try:
        matches = sorted(fs.glob(inner))
    except Exception as e:  # the backend's own error kinds
        raise wrap_os_error(pattern, e, "listing") from e
    if not matches:
        raise VqtokError("matches nothing; check the pattern", pattern)
    scheme = pattern.split("://", 1)[0]
    return [f"{scheme}://{m}" for m in matches]


def _stem(relative: str) -> str:
    """A relative path without its suffix: ``day2/c.mp4`` -> ``day2/c``."""
    path = PurePosixPath(relative)
    return str(path.with_suffix("")) if path.suffix else str(path)


def _checked(pairs: list[tuple[str, ClipSource]]) -> list[Clip]:
    """Clips with bad keys and key clashes marked; the same clip twice kept once."""
    clips: list[Clip] = []
    seen: dict[str, int] = {}
    for key, source in pairs:
        if key in seen and clips[seen[key]].source == source:
            continue  # the same clip given twice
        clips.append(Clip(key, source, bad_key(key)))
        if key in seen:
            first = clips[seen[key]]
            why = (f"{first.source} and {source} have the same key {key!r}; give them "
                   "different names or keys")
            clips[seen[key]] = replace(first, error=first.error or why)
            clips[-1] = replace(clips[-1], error=clips[-1].error or why)
        seen.setdefault(key, len(clips) - 1)
    return clips


def bad_key(key: str) -> str | None:
    """Why a key cannot name an output (None when it can): empty, absolute, with ``..``,
    ``\\`` or an empty part."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        return (f"the key {key!r} is not a relative name (no leading /, no . or .. parts, no "
                "backslash); fix the key")
    return None


def plan_clips(inputs: Sequence[str | Path], output: str | Path, suffix: str) -> list[Job]:
    """Jobs of the local engine for inputs that `needs_sources`: ``output/<key><suffix>``, or
    ``output`` itself for one video named alone with an output that is not a folder.

    Raises:
        ConfigError: ``output`` is a URL (index files are written to a local folder; a token
            dataset in object storage is ``--engine ray``'s output); as `expand_inputs`.
    """
    out = local_path(str(output))
    if out is None:
        raise ConfigError(
            "index files are written to a local folder; to write to object storage, encode "
            "into a token dataset with engine='ray', or copy the folder afterwards", str(output),
            cli_message="index files are written to a local folder; to write to object storage "
            "use --engine ray (a token dataset), or copy the folder afterwards")
    clips = expand_inputs(inputs)
    text = str(inputs[0])
    alone = not (is_tar(text) or is_manifest(text) or _is_dir(text))
    single = (len(inputs) == 1 and len(clips) == 1 and alone and not out.is_dir()
              and not str(output).endswith(("/", os.sep)))
    jobs = [Job(clip.source, out if single else out / f"{clip.key}{suffix}", clip.source.size,
                done=clip.error is not None, error=clip.error) for clip in clips]
    remove_stale({job.target.parent for job in jobs if job.error is None})
    return jobs
