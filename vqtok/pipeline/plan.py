"""Planning file jobs: which inputs a run reads, where each output goes, and which process does it.

A run (``vqtok encode``, ``vqtok decode``) is a list of `Job` s, one per input file:

- `plan_inputs` expands files and directories (recursively, keeping only known extensions inside
  directories), mirrors each input's name into the output directory and marks outputs that are
  already complete so a rerun skips them (resume), and removes the temporary files a killed
  earlier run left in the output folders (`vqtok.disk.remove_stale`);
- `shard` splits a job list between the processes of a distributed run (``--shard i/n``, or the
  ``RANK`` / ``WORLD_SIZE`` variables torchrun sets) deterministically and balanced by input size,
  so every file is done by exactly one process;
- `shard_from_env` reads those variables.

Sharding works on the full job list, before completed jobs are dropped: processes that start at
different moments see the same list (the completion state may differ between them) and so agree
on who does what.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vqtok.disk import remove_stale
from vqtok.errors import ConfigError, VqtokError
from vqtok.io.sources import ClipSource

# What a directory walk picks up; files named explicitly are attempted whatever their suffix.
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv",
     ".3gp", ".ogv", ".gif"}
)
INDEX_EXTENSIONS = frozenset({".npy", ".safetensors"})


@dataclass(frozen=True)
class Job:
    """One input file and the output it produces.

    Attributes:
        source: the input file; or a `vqtok.io.sources.ClipSource` (a URL, a tar member, a clip
            of a video: `vqtok.pipeline.inputs`).
        target: the output file.
        size: the input's size in bytes (0 if it cannot be read); what sharding balances.
        done: nothing to run: the target already exists and is complete (a resumed run skips
            it), or the job failed while planning (``error``).
        error: why the job failed while planning (another input maps to the same output).
        note: why an existing target is replaced (it was made with other settings).
    """

    source: Path | ClipSource
    target: Path
    size: int = 0
    done: bool = False
    error: str | None = None
    note: str | None = None

    @property
    def path(self) -> Path:
        """The source as a local path (every job `plan_inputs` makes)."""
        if not isinstance(self.source, Path):
            raise ConfigError("this input is not a local file", str(self.source))
        return self.source


def plan_inputs(
    inputs: Sequence[str | Path],
    output: str | Path,
    suffix: str,
    *,
    extensions: Iterable[str] = VIDEO_EXTENSIONS,
    select: Callable[[Path], bool] | None = None,
    is_complete: Callable[[Path], bool] | None = None,
    overwrite: bool = False,
) -> list[Job]:
    """Expand inputs into jobs with mirrored output names.

    Args:
        inputs: files and directories. A directory contributes every file below it (recursively)
            whose suffix is in ``extensions``, in sorted order (and every broken link so
            named, which then fails with an error); a file is taken as given (a
            missing one still gets a job, so the run reports it).
        output: with one input file and no existing directory at ``output``, the output file
            itself; otherwise a directory (created on demand) into which names are mirrored:
            ``dir/a/b.mp4`` given as ``dir`` -> ``output/a/b<suffix>``, a file ``x/c.mp4`` ->
            ``output/c<suffix>``; with several directories, each keeps its own name
            (``output/dir/a/b<suffix>``).
        suffix: the output suffix, e.g. ``".npy"`` or ``".mp4"``.
        extensions: lower-case suffixes a directory walk keeps.
        select: a further test a file found by a directory walk must pass.
        is_complete: tells whether an existing target is complete (default: it exists).
        overwrite: mark nothing as done.

    Returns:
        jobs in input order; ``done`` set on complete targets unless ``overwrite``. Inputs
        that map to the same output name (``a.mkv`` and ``a.mp4``) get an ``error`` (and
        ``done``), so the rest of the run goes on.

    Raises:
        VqtokError: no inputs, or a directory with no matching file.
    """
    if not inputs:
        raise ConfigError("no inputs given")
    keep = {e.lower() for e in extensions}
    out = Path(output)
    dirs = [Path(p) for p in inputs if Path(p).is_dir()]
    single_file = len(inputs) == 1 and not dirs and not out.is_dir() and not str(output).endswith(
        ("/", os.sep)
    )
    pairs: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if single_file:
            pairs.append((item, out))
        elif item.is_dir():
            found = sorted(
                p for p in item.rglob("*")
                if _walk_takes(p) and p.suffix.lower() in keep and (select is None or select(p))
            )
            if not found:
                raise VqtokError(f"no files with a suffix in {sorted(keep)} below it", item)
            base = out / item.resolve().name if len(dirs) > 1 else out
            pairs += [(p, base / p.relative_to(item).with_suffix(suffix)) for p in found]
        else:
            pairs.append((item, out / (item.stem + suffix)))
    remove_stale(dst.parent for _, dst in pairs)  # what a killed earlier run left behind
    clashes = collisions(pairs)
    check = is_complete or (lambda p: p.exists())
    return [
        Job(src, dst, _size(src), done=True, error=clashes[i]) if i in clashes else
        Job(src, dst, _size(src), done=not overwrite and dst.exists() and check(dst))
        for i, (src, dst) in enumerate(pairs)
    ]


def _walk_takes(path: Path) -> bool:
    """A file, or a link that leads nowhere (dangling, or a loop): the run reports such a link
    rather than silently skipping something named like an input."""
    return path.is_file() or (path.is_symlink() and not path.exists())


def collisions(pairs: Sequence[tuple[Path, Path]]) -> dict[int, str]:
    """Index of each (source, target) pair whose target another source maps to -> why it
    fails. The same file given twice is no collision."""
    groups: dict[Path, list[int]] = {}
    for i, (_, dst) in enumerate(pairs):
        groups.setdefault(_real(dst), []).append(i)
    out: dict[int, str] = {}
    for members in groups.values():
        sources = {_real(pairs[i][0]) for i in members}
        if len(sources) > 1:
            names = " and ".join(str(pairs[i][0]) for i in members)
            both = "both" if len(members) == 2 else "all"
            for i in members:
                out[i] = f"{names} would {both} be written to {pairs[i][1]}; rename one of them"
    return out


def _real(path: Path) -> Path:
    """``path.resolve()``, or the absolute path for a symlink loop (which resolve refuses)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n.

    Raises:
        ConfigError: anything else.
    """
    parts = text.split("/")
    try:
        index, count = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {text}: need 0 <= i < n")
    return index, count


def shard_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) from torchrun's environment, or None when not distributed."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env.get("RANK", "0")), int(env["WORLD_SIZE"])
    except ValueError:
        raise ConfigError("RANK and WORLD_SIZE must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    return rank, world


def shard(jobs: Sequence[Job], index: int, count: int) -> list[Job]:
    """The jobs process ``index`` of ``count`` does, balanced by input size.

    Greedy longest-processing-time assignment: jobs in order of decreasing size (ties by path)
    each go to the shard with the least bytes so far (ties to the lowest shard). Every process
    computes the same assignment from the same list, so the shards are disjoint and cover it.

    Returns:
        this shard's jobs, in their original order.
    """
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard {index} of {count} does not exist")
    order = sorted(range(len(jobs)), key=lambda i: (-jobs[i].size, str(jobs[i].source), i))
    loads = [(0, s) for s in range(count)]  # (bytes so far, shard) as a min-heap
    mine = set()
    for i in order:
        load, s = heapq.heappop(loads)
        if s == index:
            mine.add(i)
        # + 1 so empty or unreadable files still spread across shards
        heapq.heappush(loads, (load + jobs[i].size + 1, s))
    return [job for i, job in enumerate(jobs) if i in mine]


def shard_jobs(jobs: Sequence[Job], split: tuple[int, int] | None) -> list[Job]:
    """The jobs of share ``split`` = (i, n) (`shard`); all of them when ``split`` is None."""
    return list(jobs) if split is None else shard(jobs, *split)
