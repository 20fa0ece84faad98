"""What the ``vqtok`` commands share: option types, error lines, device checks, model loading.

Kept apart from the command modules so that each command stays parse -> call -> render (batch
runs, their progress bar and summaries are in `vqtok.cli.runs`). Results go
to ``out`` (stdout), the progress bar and messages to ``err`` (stderr). A `VqtokError` (or an
``OSError``) becomes one line ``error: <path>: <reason>`` and exit status 1, with a traceback
only under ``--debug``.
"""

from __future__ import annotations

import errno
import json
import re
import signal
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from vqtok.errors import ConfigError, OptionError, VqtokError
from vqtok.pipeline.plan import parse_shard, shard_from_env

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class DType(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Format(str, Enum):
    npy = "npy"
    safetensors = "safetensors"


# Options shared by several commands.
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", metavar="NAME|DIR|OWNER/REPO",
                 help="Model name, directory or Hugging Face repository (owner/name[@revision])."),
]
ModelDirOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--model-dir", metavar="DIR",
        help="Extra directory to look for model names in (repeatable).",
    ),
]
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps|xpu(:\d+)?")


def _check_device(value: str) -> str:
    if not _DEVICE.fullmatch(value):
        raise usage_error("--device", f"unknown device {value!r}; use auto, cpu, cuda or cuda:N")
    return value


DeviceOpt = Annotated[
    str,
    typer.Option(callback=_check_device, help="auto (CUDA if available), cpu, cuda or cuda:N."),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print results as JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or warnings.")]
ChunkOpt = Annotated[int, typer.Option(min=1, help="Frames per streaming step (bounds memory).")]
DTypeOpt = Annotated[DType | None, typer.Option(help="Compute dtype (default fp32).")]
TileOpt = Annotated[str, typer.Option(
    metavar="auto|off|HxW", help="Work in spatial tiles of HxW pixels: the same result in less "
    "memory, slower (vqtok models). auto: only when --max-memory would not suffice.")]
MaxMemoryOpt = Annotated[float | None, typer.Option(
    min=0.1, metavar="GB", help="Memory budget that --tile auto keeps to (default: half the "
    "machine's memory).")]


def plural(count: int, noun: str) -> str:
    """``1 frame``, ``2 frames``: a count as printed."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def print_table(table: Table) -> None:
    """A table on stdout: fitted to a terminal's width; at its natural width when stdout is a
    pipe or a log, so that no path or message is folded mid-name at 80 columns."""
    if out.is_terminal:
        out.print(table)
    else:
        Console(highlight=False, width=1_000_000).print(table)  # a table takes only what it needs


def emit_json(data: Any) -> None:
    """Machine-readable results on stdout: plain JSON, no colour, no wrapping."""
    typer.echo(json.dumps(data, indent=2))


# OSError texts that read like jargon where they meet a vqtok user: a file where a folder goes
_OS_WORDS = {
    errno.EEXIST: "exists and is not a folder, so nothing can be written below it",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
}


def os_reason(error: OSError) -> str:
    """An operating-system error in words, without ``[Errno N]`` or Python's quoting."""
    return _OS_WORDS.get(error.errno or 0) or error.strerror or str(error)


def reason_of(error: BaseException) -> str:
    """What went wrong, for a summary row that names the file already: one line."""
    if isinstance(error, VqtokError):
        text = error.cli_message
    elif isinstance(error, OSError):
        text = os_reason(error) if error.filename is None else (
            f"{error.filename}: {os_reason(error)}")
    else:
        text = str(error)
    return " ".join(text.split())


def fail_line(error: BaseException, path: object | None = None) -> str:
    """``error: <path>: <reason>`` on one line; ``path`` names the input when the error
    does not name a file itself."""
    if isinstance(error, VqtokError):
        text = error.cli_message if error.path is None else f"{error.path}: {error.cli_message}"
        named = error.path is not None
    elif isinstance(error, OSError) and error.filename is not None:
        text, named = f"{error.filename}: {os_reason(error)}", True
    else:  # not a user error: say what it was and how to see where
        text = f"{type(error).__name__}: {error} (rerun with --debug for the traceback)"
        named = False
    if path is not None and not named:
        text = f"{path}: {text}"
    return "error: " + " ".join(text.split())  # always one line


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up runs (`stop_on_sigterm`)."""


def stop_on_sigterm() -> None:
    """Make SIGTERM, what schedulers send to pre-empt a job, stop a command as Ctrl-C does:
    the file being written is abandoned (its temporary file removed; what was finished
    stays), training saves a checkpoint, and the exit status is 143 (128 + 15; Ctrl-C: 130).
    Only the main thread can set a handler; elsewhere SIGTERM keeps its default."""

    def terminate(signum: int, frame: Any) -> None:
        raise Terminated()

    try:
        signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread (vqtok's CLI called from an embedding program)
        pass


def interrupted_exit(error: BaseException | None) -> typer.Exit:
    """The exit of a command stopped by Ctrl-C (130) or SIGTERM (143)."""
    return typer.Exit(143 if isinstance(error, Terminated) else 130)


@contextmanager
def handle_errors(debug: bool) -> Iterator[None]:
    """Turn library errors into one stderr line and exit 1 (a traceback with ``--debug``)."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.BadParameter):
        raise
    except OptionError as e:  # an option the model or the inputs cannot take: a usage error
        where = e.option if e.path is None else f"{e.option} {e.path}"
        raise usage_error(where, e.cli_message) from None
    except KeyboardInterrupt as e:
        why = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        err.print(f"error: {why}", markup=False)
        raise interrupted_exit(e) from None
    except Exception as e:  # a bug gets one line too; --debug shows it
        if debug:
            raise
        err.print(fail_line(e), markup=False)
        raise typer.Exit(1) from None


def usage_error(param: str, message: str) -> typer.Exit:
    """Print the one line ``error: <option>: <what is wrong>`` and return the exit (status 2)
    to raise."""
    err.print(f"error: {param}: " + " ".join(message.split()), markup=False)
    return typer.Exit(2)


def as_usage_error(fn: Callable[[], Any], param: str) -> Any:
    """Run an option parser; its ConfigError is a usage error (exit 2) naming the option."""
    try:
        return fn()
    except ConfigError as e:
        raise usage_error(param, e.cli_message) from None


def parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"expected HxW such as 256x448, got {text!r}") from None
    if height < 1 or width < 1:
        raise ConfigError(f"sizes must be positive, got {text!r}")
    return height, width


def check_runtime(device: str, dtype: DType | None, quiet: bool) -> Any:
    """The device and compute dtype a command will use; a device or dtype this machine cannot
    run is a usage error (exit 2), a slow one a warning (unless ``quiet``).

    Returns:
        the dtype name to load with (``"fp32"`` where bf16 falls back), or None.
    """
    import torch

    from vqtok.runtime import SlowDtypeWarning, device_for_rank, resolve_device, resolve_dtype

    resolved = as_usage_error(lambda: resolve_device(device_for_rank(device)), "--device")
    if dtype is None:
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SlowDtypeWarning)
        chosen = as_usage_error(lambda: resolve_dtype(dtype.value, resolved), "--dtype")
    for warning in caught:
        if not quiet and issubclass(warning.category, SlowDtypeWarning):
            err.print(f"warning: --dtype {dtype.value}: {warning.message}", markup=False)
    return "fp32" if chosen == torch.float32 else dtype.value


def load_tokenizer(
    model: str | None, model_dir: list[Path] | None, device: str, dtype: str | None
) -> Any:
    """Load a model; ``dtype`` as `check_runtime` returns it."""
    from vqtok.api import load
    from vqtok.runtime import device_for_rank

    with download_bar(not err.is_terminal) as on_download:
        return load(model, device=device_for_rank(device), dtype=dtype,
                    extra_dirs=model_dir or [], on_download=on_download)


@contextmanager
def download_bar(disable: bool) -> Iterator[Callable[[str, int, int | None], None]]:
    """A bytes bar per file fetched from the Hugging Face Hub, on stderr.

    Yields the library's download callback (`vqtok.io.hub.DownloadFn`). Nothing is drawn when the
    files are already cached (no bytes arrive) or when ``disable``.
    """
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=err, disable=disable,
    )
    tasks: dict[str, Any] = {}

    def report(name: str, done: int, total: int | None) -> None:
        if not tasks:
            bar.start()  # only once bytes arrive: a cached model draws nothing
        if name not in tasks:
            tasks[name] = bar.add_task(f"downloading {name}", total=total)
        bar.update(tasks[name], completed=done, total=total)

    try:
        yield report
    finally:
        if tasks:
            bar.stop()


def shard_option(spec: str | None) -> tuple[int, int] | None:
    """This process's share (i, n): ``--shard i/n``, else torchrun's RANK / WORLD_SIZE."""
    return as_usage_error(lambda: parse_shard(spec), "--shard") if spec else shard_from_env()
