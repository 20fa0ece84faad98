"""The on-disk model format: a directory with ``config.json`` + ``model.safetensors``.

Layout (the diffusers convention, one directory per model)::

    models/vqtok-ema/
        config.json         # format_version, family, name, config, input convention
        model.safetensors   # every parameter and persistent buffer, by state_dict name
        README.md           # optional model card

``config.json``::

    {"format_version": 1, "family": "vqtok", "name": "vqtok-ema",
     "config": {...the family's config dict...},
     "input": {"value_range": [-1, 1], "channels": "RGB", "temporal": "causal", "window": null},
     "vqtok_version": "0.1.0"}

Loading is strict: an unknown key, a wrong format version, a missing / unexpected / mis-shaped
tensor, a corrupt file or a non-finite weight is a `CheckpointError` that names it. Weights are
read with safetensors only; nothing here unpickles.

Where a name finds its directory is `vqtok.io.model_dirs`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from vqtok import __version__
from vqtok.disk import file_sha256, is_sha256
from vqtok.errors import CheckpointError, ConfigError, check_version
from vqtok.families.base import FAMILIES, TokenizerModel, family_class
from vqtok.io.model_dirs import CONFIG_FILE, WEIGHTS_FILE, resolve_model, search_dirs

__all__ = [
    "FORMAT_VERSION",
    "ModelInfo",
    "index_lineage",
    "list_models",
    "load_pretrained",
    "parameter_count",
    "read_info",
    "save_pretrained",
    "weights_sha256",
]

FORMAT_VERSION = 1  # one per file kind: README, "File formats and their versions"
CARD_FILE = "README.md"


_REQUIRED_KEYS = {"format_version", "family", "config"}
_OPTIONAL_KEYS = {"name", "input", "vqtok_version", "decodes_indices_of"}


@dataclass(frozen=True)
class ModelInfo:
    """What ``config.json`` says about a model directory (weights not read).

    Attributes:
        name: the model's name (``config.json``'s ``name``, else the directory name).
        family: a key of `vqtok.families.base.FAMILIES`.
        path: the model directory.
        config: the family's config dict, as stored.
        input: the input convention (value range, channels, temporal convention).
        decodes_indices_of: SHA-256s of other models' weights whose index files hold exactly
            this model's indices (a decoder-only finish keeps the encoder and codebooks of
            the model it started from), so `decode` takes them without ``--force``.
    """

    name: str
    family: str
    path: Path
    config: dict[str, Any]
    input: dict[str, Any]
    decodes_indices_of: tuple[str, ...] = ()


def input_convention(model: TokenizerModel) -> dict[str, Any]:
    """The ``input`` block of ``config.json`` for a model."""
    return {
        "value_range": [-1, 1],
        "channels": "RGB",
        "temporal": "causal" if model.window is None else "window",
        "window": model.window,
    }


def save_pretrained(
    model: TokenizerModel,
    directory: str | Path,
    name: str | None = None,
    card: str | None = None,
    decodes_indices_of: Sequence[str] = (),
) -> Path:
    """Write ``model`` as a model directory, atomically.

    Everything is written to a temporary sibling directory first and renamed into place, so a
    crash leaves either the old model or the new one. An existing target is replaced only if it
    holds nothing but model files.

    Args:
        model: any `TokenizerModel` (its ``config`` must have ``to_dict``).
        directory: the model directory to create or replace.
        name: the model's name; default the directory's name.
        card: text of a ``README.md`` model card to write beside the weights.
        decodes_indices_of: `ModelInfo.decodes_indices_of` (written only when not empty).

    Returns:
        The model directory's path.
    """
    target = Path(directory)
    _check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "family": model.family,
        "name": name or target.resolve().name,
        "config": model.config.to_dict(),
        "input": input_convention(model),
        "vqtok_version": __version__,
        **({"decodes_indices_of": list(decodes_indices_of)} if decodes_indices_of else {}),
    }
    # clone: safetensors refuses tensors that share storage (views, tied buffers)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if card is not None:
            (tmp / CARD_FILE).write_text(card)
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _check_replaceable(target: Path) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise CheckpointError("exists and is not a directory; choose another path", target)
    extra = sorted(p.name for p in target.iterdir())
    extra = [n for n in extra if n not in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)]
    if extra:
        raise CheckpointError(
            f"is not a model directory (holds {', '.join(extra)}); refusing to replace it", target
        )


def _swap_into_place(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, old / "model")
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def read_info(directory: str | Path) -> ModelInfo:
    """Parse and check ``config.json`` (keys, format version, family) without the weights."""
    directory = Path(directory)
    meta = _read_json(directory / CONFIG_FILE)
    missing = sorted(_REQUIRED_KEYS - set(meta))
    unknown = sorted(set(meta) - _REQUIRED_KEYS - _OPTIONAL_KEYS)
    if missing or unknown:
        parts = [f"missing key(s) {', '.join(missing)}"] if missing else []
        parts += [f"unknown key(s) {', '.join(unknown)}"] if unknown else []
        raise CheckpointError(f"{CONFIG_FILE}: {'; '.join(parts)}", directory)
    check_version(meta["format_version"], FORMAT_VERSION, f"{CONFIG_FILE}: format_version",
                  CheckpointError, directory, "upgrade vqtok or re-convert the model")
    if meta["family"] not in FAMILIES:
        raise CheckpointError(
            f"{CONFIG_FILE}: unknown family {meta['family']!r}; known: {', '.join(FAMILIES)}",
            directory,
        )
    if not isinstance(meta["config"], dict):
        raise CheckpointError(f"{CONFIG_FILE}: 'config' must be an object", directory)
    name = meta.get("name") or directory.resolve().name
    lineage = meta.get("decodes_indices_of", [])
    if not isinstance(lineage, list) or not all(is_sha256(h) for h in lineage):
        raise CheckpointError(
            f"{CONFIG_FILE}: 'decodes_indices_of' must be a list of hex SHA-256 digests", directory
        )
    return ModelInfo(str(name), meta["family"], directory, meta["config"], meta.get("input") or {},
                     tuple(lineage))


def index_lineage(dir_or_name: str | Path) -> tuple[str, ...]:
    """The weight SHA-256s whose index files a decoder-only finish of this model decodes:
    this model's own and those it already decodes (`ModelInfo.decodes_indices_of`)."""
    return (weights_sha256(dir_or_name), *read_info(resolve_model(dir_or_name)).decodes_indices_of)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError("missing; this is not a model directory", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"unreadable JSON ({e})", path) from e
    if not isinstance(data, dict):
        raise CheckpointError("must hold a JSON object", path)
    return data


def load_pretrained(
    dir_or_name: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    extra_dirs: Sequence[str | Path] = (),
) -> TokenizerModel:
    """Load a model directory (or a model name) strictly, in eval mode.

    Args:
        dir_or_name: a model directory or a name (`resolve_model`).
        device: where to put the weights.
        dtype: cast floating-point weights to this dtype, except the quantizer's, which stay
            float32 (its distances and indices are computed in float32). None keeps float32.
        extra_dirs: more directories to search for names.

    Returns:
        The model (a `TokenizerModel` of the family ``config.json`` names).

    Raises:
        CheckpointError: naming the bad key, tensor or file.
    """
    directory = resolve_model(dir_or_name, extra_dirs)
    info = read_info(directory)
    cls = family_class(info.family)
    try:
        model = cls.from_config(info.config)
    except ConfigError as e:
        raise CheckpointError(f"{CONFIG_FILE}: {e.message}", directory) from e
    _check_input(info, model)
    tensors = _read_tensors(directory / WEIGHTS_FILE)
    _check_tensors(directory, model, tensors)
    model.load_state_dict(tensors, strict=True)
    if dtype is not None:
        _cast_except_quantizer(model, dtype)
    return model.to(device).eval()


def _check_input(info: ModelInfo, model: TokenizerModel) -> None:
    expected = input_convention(model)
    bad = sorted(k for k, v in info.input.items() if expected.get(k, object()) != v)
    if bad:
        got = {k: info.input[k] for k in bad}
        raise CheckpointError(
            f"{CONFIG_FILE}: input convention {got} does not match the model's "
            f"{ {k: expected.get(k) for k in bad} }",
            info.path,
        )


def _read_tensors(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError("missing; the model directory has no weights", path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"corrupt or unreadable safetensors file ({e})", path) from e


def _check_tensors(directory: Path, model: TokenizerModel, tensors: dict[str, Tensor]) -> None:
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        problems.append(f"missing tensor(s): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensor(s): {', '.join(unexpected)}")
    shapes = [
        f"{k} {tuple(tensors[k].shape)} (model expects {tuple(v.shape)})"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if shapes:
        problems.append(f"mis-shaped tensor(s): {', '.join(shapes)}")
    nonfinite = sorted(
        k for k, t in tensors.items() if t.is_floating_point() and not bool(t.isfinite().all())
    )
    if nonfinite:
        problems.append(f"NaN or infinite values in: {', '.join(nonfinite)}")
    if problems:
        raise CheckpointError(f"{WEIGHTS_FILE}: {'; '.join(problems)}", directory)


def _cast_except_quantizer(model: TokenizerModel, dtype: torch.dtype) -> None:
    quantizer = set(model.quantizer.modules())
    for module in model.modules():
        if module in quantizer:
            continue
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if tensor.is_floating_point():
                tensor.data = tensor.data.to(dtype)


def weights_sha256(dir_or_name: str | Path) -> str:
    """Hex SHA-256 of a model's ``model.safetensors`` (what index files record)."""
    path = resolve_model(dir_or_name) / WEIGHTS_FILE
    try:
        return file_sha256(path)
    except OSError as e:
        raise CheckpointError(f"cannot read weights ({e.strerror})", path) from e


def parameter_count(model: str | Path | torch.nn.Module) -> int:
    """A model's parameter count as vqtok states it everywhere (``vqtok info``, model cards).

    The definition: every value stored in ``model.safetensors``, that is every parameter and
    persistent buffer of the state dict, the EMA codebooks and their running statistics
    included (what a user downloads and loads), whatever their dtype.

    Args:
        model: a model directory or name (counted from the weights' header: no tensor is read),
            or a model in memory (its state dict, which `save_pretrained` writes).
    """
    if isinstance(model, torch.nn.Module):
        return sum(t.numel() for t in model.state_dict().values())
    weights = resolve_model(model) / WEIGHTS_FILE
    try:
        with safe_open(str(weights), framework="pt") as f:
            total = 0
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                count = 1
                for dim in f.get_slice(key).get_shape():
                    count *= dim
                total += count
            return total
    except Exception as e:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"unreadable weights ({e})", weights) from e


def list_models(extra_dirs: Iterable[str | Path] = ()) -> list[ModelInfo]:
    """Every valid model directory in the search directories; the first of a directory name
    wins, as in `resolve_model`.

    Directories whose ``config.json`` cannot be read are skipped (``load_pretrained`` on them
    says why).
    """
    found: dict[str, ModelInfo] = {}
    for root in search_dirs(list(extra_dirs)):
        if not root.is_dir():
            continue
        for sub in sorted(root.iterdir()):
            if not (sub / CONFIG_FILE).is_file():
                continue
            try:
                info = read_info(sub)
            except CheckpointError:
                continue
            found.setdefault(sub.name, info)
    return list(found.values())
