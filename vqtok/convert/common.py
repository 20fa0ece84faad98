"""The steps every checkpoint converter shares (see `vqtok.convert`), and its one signature.

`Converter`: what a converter module declares as ``CONVERTER`` (its source name, the function
with the one signature ``(sources, out_dir, options) -> Conversion``, the source-specific
options it takes); `ConvertOptions`: what every converter is given besides its sources.

The architecture inferred from tensor shapes (`required_tensor`, `inferred_config`), strict
accounting of source tensors, shape checks, the dtype cast, the model card and the
atomic write of the model directory through `vqtok.io.checkpoint.save_pretrained`. Nothing here
reads pickle or TorchScript.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from vqtok import __version__
from vqtok.disk import file_sha256
from vqtok.errors import CheckpointError, ConfigError, OptionError
from vqtok.families.base import TokenizerModel
from vqtok.io.checkpoint import save_pretrained
from vqtok.io.hub import DownloadFn
from vqtok.io.sniff import file_kind

M = TypeVar("M", bound=TokenizerModel)
C = TypeVar("C")


@dataclass
class Conversion:
    """What a conversion did.

    Attributes:
        out_dir: the model directory written.
        family: ``"open-magvit2-video"`` or ``"cosmos-dv"``.
        config: the inferred architecture (the family's config dict).
        sources: (file name, SHA-256) of each source file.
        used: number of source tensors that became model weights.
        ignored: source key -> why it was not used.
    """

    out_dir: Path
    family: str
    config: dict[str, Any]
    sources: list[tuple[str, str]]
    used: int
    ignored: dict[str, str] = field(default_factory=dict)

    def ignored_by_reason(self) -> dict[str, int]:
        """reason -> how many source tensors were skipped for it."""
        counts: dict[str, int] = {}
        for reason in self.ignored.values():
            counts[reason] = counts.get(reason, 0) + 1
        return dict(sorted(counts.items()))

    def summary(self) -> str:
        """One line for the CLI: what was written from what, and what was skipped."""
        skipped = "; ".join(f"{n} {why}" for why, n in self.ignored_by_reason().items())
        sources = ", ".join(name for name, _ in self.sources)
        return (
            f"{self.out_dir}: {self.family} model from {sources} ({self.used} tensors used"
            + (f"; ignored: {skipped})" if skipped else ")")
        )


@dataclass(frozen=True)
class ConvertOptions:
    """What every converter is given besides its sources and output directory.

    Attributes:
        dtype: weight dtype to store (float32 default; bfloat16 halves the size).
        name: model name in config.json (None: the directory name).
        command: the command line to record in the model card (None: one is made up).
        on_download: progress of a Hub download (file name, bytes done, bytes in the file).
        extra: source-specific options by name (cosmos: ``variant``, ``legacy_mode``); only
            those the converter declares in `Converter.options` are accepted.
    """

    dtype: torch.dtype = torch.float32
    name: str | None = None
    command: str | None = None
    on_download: DownloadFn | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


ConvertFn = Callable[[Sequence[str], Path, ConvertOptions], Conversion]


@dataclass(frozen=True)
class Converter:
    """A converter as its module declares it (``CONVERTER``), for `vqtok.convert.convert`.

    Attributes:
        source: its name, ``vqtok convert SOURCE`` (a key of `vqtok.convert.CONVERTERS`).
        run: ``(sources, out_dir, options) -> Conversion``; sources are the command's
            arguments as given (paths or a Hub repository ``owner/name[@revision]``).
        options: the names in ``ConvertOptions.extra`` it takes (the CLI flag is the name
            with ``-`` for ``_``).
    """

    source: str
    run: ConvertFn
    options: tuple[str, ...] = ()

    def __call__(self, sources: Sequence[str], out_dir: str | Path,
                 options: ConvertOptions | None = None) -> Conversion:
        """Check the options against `options`, then convert.

        Raises:
            OptionError: a source-specific option this converter does not take, or no source.
        """
        options = options or ConvertOptions()
        for key in options.extra:
            if key not in self.options:
                flag = "--" + key.replace("_", "-")
                takes = ", ".join("--" + o.replace("_", "-") for o in self.options) or "none"
                raise OptionError(flag, f"{flag} is not an option of {self.source} "
                                        f"(its own options: {takes})")
        if not sources:
            raise OptionError("SOURCE", "give the checkpoint file(s) or directory to convert")
        return self.run(list(sources), Path(out_dir), options)


def check_source_file(path: Path, what: str, accepted: tuple[str, ...], expected: str,
                      unknown_ok: bool) -> None:
    """Refuse ``path`` unless it is a file whose sniffed kind starts with one of ``accepted``
    (an unrecognised kind passes when ``unknown_ok``): a `CheckpointError` that says what the
    file is instead and what was ``expected``, before anything parses it."""
    if not path.is_file():
        raise CheckpointError(f"no such {what} file", path)
    kind = file_kind(path)
    if (kind is None and unknown_ok) or (kind is not None and kind.startswith(accepted)):
        return
    found = "this is not " + accepted[0] if kind is None else f"this is {kind}"
    raise CheckpointError(f"{found}, not {expected}", path)


def names(keys: Sequence[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def meta_model(cls: type[M], config: Any) -> M:
    """Build the architecture without allocating weights (they come from the source)."""
    with torch.device("meta"):
        return cls(config)


def required_tensor(get: Callable[[str], Tensor | None], path: Path) -> Callable[[str], Tensor]:
    """``need(key)``: the source tensor ``key`` that the architecture is inferred from, by
    ``get`` (None when absent); a missing one is a `CheckpointError` naming it."""

    def need(key: str) -> Tensor:
        t = get(key)
        if t is None:
            raise CheckpointError(f"missing tensor {key} (needed to infer the architecture)", path)
        return t

    return need


def inferred_config(cls: Callable[..., C], path: Path, **fields: Any) -> C:
    """``cls(**fields)``, an architecture read from tensor shapes; the config's refusal is a
    `CheckpointError` (the shapes are impossible)."""
    try:
        return cls(**fields)
    except ConfigError as e:
        raise CheckpointError(f"tensor shapes give an impossible architecture: {e}", path) from e


def check_accounting(path: Path, missing: Sequence[str], unexpected: Sequence[str]) -> None:
    """Strictness: no model parameter left unfilled, no source tensor left unexplained."""
    problems = []
    if missing:
        problems.append(f"missing tensor(s) {names(missing)}")
    if unexpected:
        problems.append(f"unexpected tensor(s) {names(unexpected)}")
    if problems:
        raise CheckpointError(
            "; ".join(problems) + " (not the architecture vqtok converts, or a damaged file)", path
        )


def write_model(
    model: TokenizerModel,
    weights: dict[str, Tensor],
    dtype: torch.dtype,
    out_dir: str | Path,
    name: str | None,
    card: str,
    sources: Sequence[Path],
    ignored: dict[str, str],
    used: int,
) -> Conversion:
    """Check shapes, cast, and write the model directory atomically."""
    expected = model.state_dict()
    bad = [
        f"{k} {tuple(t.shape)} (expected {tuple(expected[k].shape)})"
        for k, t in weights.items()
        if t.shape != expected[k].shape or not t.is_floating_point()
    ]
    if bad:
        raise CheckpointError(f"mis-shaped or non-float tensor(s): {names(bad)}", sources[0])
    model.load_state_dict({k: t.to(dtype) for k, t in weights.items()}, strict=True, assign=True)
    digests = [(p.name, file_sha256(p)) for p in sources]
    rows = [f"| source | `{n}` (SHA-256 `{h}`) |" for n, h in digests]
    rows.append(f"| stored as | {str(dtype).removeprefix('torch.')} ({used} source tensors used) |")
    result = Conversion(Path(out_dir), model.family, model.config.to_dict(), digests, used, ignored)
    reasons = result.ignored_by_reason().items()
    rows += [f"| ignored | {n} tensor(s): {reason} |" for reason, n in reasons]
    card = card.replace("{SOURCES}", "\n".join(rows))
    result.out_dir = save_pretrained(model, out_dir, name=name, card=card)
    return result


def model_card(
    title: str, family: str, license: str, command: str, weights: str, origin: str | None = None
) -> str:
    """The README.md of a converted model; ``{SOURCES}`` is filled in by `write_model`.
    ``origin`` says where the source files were downloaded from (a Hub repository, commit)."""
    fetched = f"| downloaded from | {origin} |\n" if origin else ""
    return f"""# {title}, converted for vqtok

An ordinary vqtok model directory (family `{family}`), converted from the official release by
vqtok {__version__}. The tensors are the release's, renamed where needed and stored in the
dtype of `model.safetensors`; nothing was trained or changed.

| | |
|---|---|
{{SOURCES}}
{fetched}| weights | {weights} |
| license | {license} (the original weights' license applies to this copy) |
| command | `{command}` |

Input: RGB video in [-1, 1], (B, 3, T, H, W). Use it as any vqtok model:
`vqtok encode clip.mp4 --model <this directory> -o codes.npy`.
"""
