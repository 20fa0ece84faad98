"""Convert the public Open-MAGVIT2 video checkpoint into a vqtok model (``vqtok convert
open-magvit2``).

A Lightning ``.ckpt`` read with ``torch.load(weights_only=True)`` (a file that needs arbitrary
code to unpickle is refused): with `vqtok.convert.cosmos`, the only place in vqtok that reads
pickle. The EMA weights ``model_ema.<name without dots>`` are used when present (the official
inference runs under ``ema_scope``), else ``encoder.*`` / ``decoder.*``.

The architecture (width, channel multipliers, ResBlocks, latent size) is inferred from tensor
shapes; bf16/fp16 are upcast to float32 (or kept as ``dtype``). The conversion is strict and
atomic, as every converter (`vqtok.convert.common`): every source tensor is used or listed as
ignored with a reason, every model parameter is filled, anything else is a `CheckpointError`
naming the keys; the output is a model directory with a model card naming the source file
(SHA-256), the original license and the command.

A source given as a string ``owner/name[@revision]`` that is not an existing path is a Hugging
Face Hub repository: only the file needed is fetched (`vqtok.io.hub`, the standard cache).
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vqtok.convert import common
from vqtok.convert.common import Conversion, ConvertOptions
from vqtok.errors import CheckpointError, OptionError
from vqtok.families.layers import CausalConv3d
from vqtok.families.magvit2 import Magvit2Config, Magvit2Tokenizer
from vqtok.io.hub import DownloadFn, fetch_files, hub_origin, parse_hub_ref
from vqtok.pipeline.outputs import check_folder_output

__all__ = ["CONVERTER", "convert_open_magvit2", "infer_magvit2_config", "magvit2_release_names"]

MAGVIT2_FILE = "video_128_262144.ckpt"  # the file in TencentARC's Hub repository

MAGVIT2_LICENSE = "Apache-2.0 (TencentARC/SEED-Voken; Hugging Face model card: apache-2.0)"


def magvit2_release_names(model: Magvit2Tokenizer) -> dict[str, str]:
    """Release key -> vqtok key for every parameter: the release wraps each conv in a module
    whose real ``nn.Conv3d`` is the child ``conv_1``."""
    convs = {name for name, m in model.named_modules() if isinstance(m, CausalConv3d)}
    out = {}
    for key in model.state_dict():
        owner, _, leaf = key.rpartition(".")
        out[f"{owner}.conv_1.{leaf}" if owner in convs else key] = key
    return out


def _load_ckpt(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with each failure turned into one clear error."""
    common.check_source_file(
        path, "checkpoint", ("a zip archive", "a Python pickle"),
        "a PyTorch checkpoint; expected Open-MAGVIT2's Lightning .ckpt (e.g. "
        "video_128_262144.ckpt)", unknown_ok=True,
    )
    try:
        obj = torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            "refusing to load: the file needs arbitrary code to unpickle, which vqtok never "
            f"runs{_unpickler_reason(e)}; a release checkpoint holds only tensors",
            path,
        ) from e
    except Exception as e:  # truncated / not a torch file: zip, EOF and runtime errors
        raise CheckpointError(
            "not a readable torch checkpoint, truncated or corrupt; download it again",
            path,
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a dict checkpoint, found {type(obj).__name__}", path)
    return obj


def _unpickler_reason(error: Exception) -> str:
    """The line of torch's message that names what was refused; its advice to turn
    weights_only off is left out, since that would run the file's code."""
    for line in str(error).splitlines():
        line = line.strip().removeprefix("WeightsUnpickler error:").strip()
        if "GLOBAL" in line or line.startswith("Unsupported"):
            return f" ({line.rstrip('.')})"
    return ""


def infer_magvit2_config(get: Callable[[str], Tensor | None], path: Path) -> Magvit2Config:
    need = common.required_tensor(get, path)
    ch = need("encoder.conv_in.conv_1.weight").shape[0]
    ch_mult: list[int] = []
    blocks = 0
    while get(f"encoder.down.{len(ch_mult)}.block.0.norm1.weight") is not None:
        width = need(f"encoder.down.{len(ch_mult)}.block.0.conv1.conv_1.weight").shape[0]
        ch_mult.append(width // ch)
    while get(f"encoder.down.0.block.{blocks}.norm1.weight") is not None:
        blocks += 1
    z = need("encoder.conv_out.conv_1.weight").shape[0]
    return common.inferred_config(
        Magvit2Config, path, ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=blocks, z_channels=z
    )


def _magvit2_ignored(key: str, use_ema: bool, raw_used: set[str]) -> str | None:
    """Why a source key that is not a model weight may be skipped (None: it may not)."""
    if key in ("model_ema.decay", "model_ema.num_updates"):
        return "EMA bookkeeping"
    if key.startswith("loss."):
        return "training loss (discriminator / perceptual network)"
    if key.startswith("model_ema.loss"):
        return "EMA of a training-loss network"
    if use_ema and key in raw_used:
        return "raw training weights (their EMA copy is used, as official inference does)"
    return None


def _magvit2_state(obj: dict[str, Any], path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(the state dict's tensors, top-level checkpoint entries ignored as training state)."""
    state = obj.get("state_dict", obj)
    if not isinstance(state, dict):
        raise CheckpointError("'state_dict' is not a dict of tensors", path)
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    others = sorted(set(state) - set(tensors))
    if others:
        raise CheckpointError(
            f"state_dict entries that are not tensors: {common.names(others)}", path
        )
    top = {f"[top-level] {k}": "training state" for k in obj if k != "state_dict"}
    return tensors, top if "state_dict" in obj else {}


def convert_open_magvit2(
    ckpt: str | Path,
    out_dir: str | Path,
    dtype: torch.dtype = torch.float32,
    name: str | None = None,
    command: str | None = None,
    on_download: DownloadFn | None = None,
) -> Conversion:
    """Convert ``video_128_262144.ckpt`` (or any checkpoint of that architecture).

    Args:
        ckpt: the Lightning checkpoint (a dict with ``state_dict``, or a bare state dict), or
            a Hub repository ``"owner/name[@revision]"`` holding ``video_128_262144.ckpt``.
        out_dir: model directory to write (replaced only if it holds just model files).
        dtype, name, command, on_download: as `vqtok.convert.common.ConvertOptions`.

    Returns:
        `Conversion`.

    Raises:
        OptionError: an ``out_dir`` named like a file, or a file where it must be.
        CheckpointError: unreadable / unsafe file, missing, unexpected or mis-shaped tensors
            (`HubError`: the Hub repository cannot be fetched or lacks the file).
    """
    check_folder_output(out_dir, "a model directory")
    ref = parse_hub_ref(ckpt)
    origin = None
    if ref is None:
        path = Path(ckpt)
    else:
        path = fetch_files(ref, [MAGVIT2_FILE], on_download, "Open-MAGVIT2 video")[0]
        origin = hub_origin(ref, path)
    tensors, ignored = _magvit2_state(_load_ckpt(path), path)
    # EMA shadows are "model_ema." + the parameter name with its dots removed
    ema = any(k.startswith("model_ema.") and _magvit2_ignored(k, False, set()) is None
              for k in tensors)

    def source_key(release_key: str) -> str:
        return "model_ema." + release_key.replace(".", "") if ema else release_key

    model = common.meta_model(
        Magvit2Tokenizer, infer_magvit2_config(lambda k: tensors.get(source_key(k)), path)
    )
    release_names = magvit2_release_names(model)
    weights = {key: tensors[source_key(r)] for r, key in release_names.items()
               if source_key(r) in tensors}
    missing = [r for r in release_names if source_key(r) not in tensors]
    used = {source_key(r) for r in release_names} & set(tensors)
    raw = set(release_names) & set(tensors)
    for key in sorted(set(tensors) - used):
        reason = _magvit2_ignored(key, ema, raw)
        if reason is not None:
            ignored[key] = reason
    common.check_accounting(path, missing, sorted(set(tensors) - used - set(ignored)))
    card = common.model_card(
        "Open-MAGVIT2 video tokenizer (TencentARC, LFQ 2^18)",
        "open-magvit2-video",
        MAGVIT2_LICENSE,
        command or f"vqtok convert open-magvit2 {ref or path} -o {out_dir}",
        "EMA weights (model_ema.*)" if ema else "raw weights (no model_ema.* in the file)",
        origin,
    )
    return common.write_model(
        model, weights, dtype, out_dir, name, card, [path], ignored, len(used)
    )


def _convert(sources: Sequence[str], out_dir: Path, options: ConvertOptions) -> Conversion:
    """`convert_open_magvit2` with the one signature of `vqtok.convert.common.Converter`."""
    if len(sources) != 1:
        raise OptionError("SOURCE", "give exactly one .ckpt file")
    return convert_open_magvit2(sources[0], out_dir, options.dtype, options.name,
                                options.command, options.on_download)


CONVERTER = common.Converter("open-magvit2", _convert)
