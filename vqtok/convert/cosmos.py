"""Convert NVIDIA's public Cosmos DV tokenizers into vqtok models (``vqtok convert cosmos``).

TorchScript archives (``encoder.jit`` + ``decoder.jit``, or ``autoencoder.jit``) loaded on the
CPU with ``torch.jit.load``: with `vqtok.convert.magvit2`, the only place in vqtok that reads
TorchScript, and only their state dicts are read. Derived constant buffers (Haar wavelets,
aranges, FSQ levels / basis / implicit codebook) are checked against the values they must
have, not copied.

The architecture is inferred from tensor shapes; the conversion is strict and atomic, as every
converter (`vqtok.convert.common`). A source ``owner/name[@revision]`` that is not an existing
path is a Hugging Face Hub repository: only the files needed are fetched (`vqtok.io.hub`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from vqtok.convert import common
from vqtok.convert.common import Conversion, ConvertOptions
from vqtok.errors import CheckpointError
from vqtok.families.cosmos import VARIANTS, CosmosConfig, CosmosTokenizer
from vqtok.io.hub import DownloadFn, HubRef, fetch_files, hub_origin, parse_hub_ref
from vqtok.pipeline.outputs import check_folder_output
from vqtok.quantizers.fsq import FiniteScalarQuantizer

__all__ = ["CONVERTER", "convert_cosmos", "cosmos_variant", "infer_cosmos_config"]

COSMOS_FILES = ("encoder.jit", "decoder.jit")
COSMOS_LICENSE = (
    "NVIDIA Open Model License (June 2024): https://developer.download.nvidia.com/licenses/"
    "nvidia-open-model-license-agreement-june-2024.pdf"
)


def cosmos_variant(directory: Path | HubRef, variant: str | None) -> str:
    """The variant from ``--variant``, else from the name of the source's directory or Hub
    repository.

    Hugging Face names the repositories ``Cosmos-0.1-Tokenizer-DV4x8x8`` etc.; a name that
    holds no variant or several is an error, and so is ``--variant`` contradicting the name.
    """
    hub = isinstance(directory, HubRef)
    named = directory.name if isinstance(directory, HubRef) else directory.resolve().name
    where = "repository name" if hub else "path"
    # no variant name is a substring of another, so a plain substring test is unambiguous
    found = {v for v in VARIANTS if v.lower() in named.lower()}
    if variant is not None:
        if variant not in VARIANTS:
            raise CheckpointError(
                f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}"
            )
        if found and found != {variant}:
            raise CheckpointError(
                f"--variant {variant} contradicts the {where}, which names "
                f"{common.names(list(found))}; fix --variant"
                + ("" if hub else " or rename the directory"),
                str(directory),
            )
        return variant
    if len(found) == 1:
        return found.pop()
    why = "names several variants" if found else "names no variant"
    raise CheckpointError(
        f"the variant cannot be read from the weights and the {where} {why}; pass --variant "
        f"{'|'.join(VARIANTS)}",
        str(directory),
    )


def _cosmos_files(
    source: str | Path | Sequence[str | Path], on_download: DownloadFn | None
) -> tuple[Path | HubRef, list[Path]]:
    """(directory or repository named for the variant, TorchScript files) of a directory, a
    list of files or a Hub repository."""
    ref = parse_hub_ref(source) if isinstance(source, str) else None
    if ref is not None:
        return ref, fetch_files(ref, COSMOS_FILES, on_download, "a Cosmos DV release")
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        root = Path(source)
        pair = [root / "encoder.jit", root / "decoder.jit"]
        found = pair if all(p.is_file() for p in pair) else [root / "autoencoder.jit"]
        if found[0].is_file():
            for f in found:
                _check_torchscript_file(f)
            return root, found
        raise CheckpointError("holds neither encoder.jit + decoder.jit nor autoencoder.jit", root)
    files = [Path(source)] if isinstance(source, (str, Path)) else [Path(s) for s in source]
    for f in files:
        _check_torchscript_file(f)
    return files[0].parent, files


def _check_torchscript_file(path: Path) -> None:
    """A file given as a Cosmos source must be a TorchScript archive (a zip, what TorchScript
    is stored as): say what it is otherwise, before the variant is asked for or it is parsed."""
    common.check_source_file(
        path, "TorchScript", ("a zip archive",),
        "a TorchScript archive; expected Cosmos's encoder.jit and decoder.jit (or autoencoder.jit),"
        " or the folder that holds them", unknown_ok=False,
    )


def _load_jit(path: Path) -> dict[str, Tensor]:
    """The state dict of a TorchScript archive, loaded on the CPU (nothing else is used)."""
    try:
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the releases use it
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # truncated / not TorchScript: RuntimeError, zip errors, ...
        raise CheckpointError(
            "not a readable TorchScript archive, truncated or corrupt; download the release's "
            ".jit files again", path
        ) from e
    return {k: v.detach() for k, v in module.state_dict().items()}


def cosmos_constants(config: CosmosConfig) -> dict[str, Tensor]:
    """The derived buffers of the release and the values they must hold."""
    fsq = FiniteScalarQuantizer(len(config.levels), list(config.levels))
    quantizer = {
        "_levels": torch.tensor(config.levels),
        "_basis": fsq._basis,
        "implicit_codebook": fsq.implicit_codebook,
    }
    haar = {"wavelets": torch.full((2,), 2**-0.5), "_arange": torch.arange(2)}
    out = {}
    for prefix, values in (
        ("quantizer", quantizer),
        ("inv_quant.quantizer", quantizer),
        ("encoder.patcher3d", haar),
        ("decoder.unpatcher3d", haar),
    ):
        out.update({f"{prefix}.{k}": v for k, v in values.items()})
    out["encoder.patcher3d.patch_size_buffer"] = torch.tensor([config.patch_size])
    return out


def _check_constants(tensors: dict[str, Tensor], config: CosmosConfig, path: Path) -> list[str]:
    """Check every derived buffer present; return their keys."""
    present = []
    for key, expected in cosmos_constants(config).items():
        if key not in tensors:
            continue
        got = tensors[key]
        # bf16 storage rounds 1/sqrt(2); the integer and code values are exact in any dtype
        ok = got.shape == expected.shape and torch.allclose(
            got.double(), expected.double(), atol=4e-3 if "wavelets" in key else 0.0, rtol=0
        )
        if not ok:
            raise CheckpointError(
                f"derived buffer {key} holds {got.flatten()[:8].tolist()} of shape "
                f"{tuple(got.shape)}, expected {expected.flatten()[:8].tolist()} of shape "
                f"{tuple(expected.shape)}: not a Cosmos DV tokenizer with these settings",
                path,
            )
        present.append(key)
    return present


def infer_cosmos_config(
    tensors: dict[str, Tensor], variant: str, legacy: bool, path: Path
) -> CosmosConfig:
    need = common.required_tensor(tensors.get, path)
    conv_in = need("encoder.conv_in.0.conv3d.weight")
    channels, patch = conv_in.shape[0], round((conv_in.shape[1] / 3) ** (1 / 3))
    mult: list[int] = []
    blocks = 0
    while f"encoder.down.{len(mult)}.block.0.conv1.0.conv3d.weight" in tensors:
        mult.append(need(f"encoder.down.{len(mult)}.block.0.conv1.0.conv3d.weight").shape[0])
    while f"encoder.down.0.block.{blocks}.norm1.norm.weight" in tensors:
        blocks += 1
    z = need("encoder.conv_out.1.conv3d.weight").shape[0]
    code_dim = need("quant_conv.conv3d.weight").shape[0]
    # every DV release uses these levels; the _levels buffers are checked against them
    levels = CosmosConfig.levels
    fits = len(levels) == code_dim and 3 * patch**3 == conv_in.shape[1]
    if not fits or any(w % channels for w in mult):
        raise CheckpointError(
            f"tensor shapes do not fit a Cosmos DV tokenizer (conv_in {tuple(conv_in.shape)}, "
            f"{code_dim} code channels for levels {list(levels)})",
            path,
        )
    return common.inferred_config(
        CosmosConfig, path, variant=variant, channels=channels,
        channel_mult=tuple(w // channels for w in mult), num_res_blocks=blocks, z_channels=z,
        levels=levels, patch_size=patch, legacy_mode=legacy,
    )


def convert_cosmos(
    source: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    variant: str | None = None,
    legacy_mode: bool = False,
    dtype: torch.dtype = torch.float32,
    name: str | None = None,
    command: str | None = None,
    on_download: DownloadFn | None = None,
) -> Conversion:
    """Convert a Cosmos-0.1-Tokenizer-DV* release (``encoder.jit`` + ``decoder.jit``).

    Args:
        source: the downloaded directory (with ``encoder.jit`` and ``decoder.jit``, or
            ``autoencoder.jit``), the TorchScript file(s) themselves, or a Hub repository
            ``"owner/name[@revision]"`` (e.g. ``"nvidia/Cosmos-0.1-Tokenizer-DV4x8x8"``).
        out_dir: model directory to write (replaced only if it holds just model files).
        variant: ``DV4x8x8``, ``DV8x8x8`` or ``DV8x16x16``; None: from the source's path
            or repository name (``Cosmos-0.1-Tokenizer-DV4x8x8``). The weights cannot tell them
            apart.
        legacy_mode: the older decoder upsampling order (8x variants only).
        dtype, name, command, on_download: as `vqtok.convert.common.ConvertOptions`.

    Returns:
        `Conversion`.

    Raises:
        OptionError: an ``out_dir`` named like a file, or a file where it must be.
        CheckpointError: a source that is not TorchScript (named as what it is),
            unreadable archive, unknown or ambiguous variant, wrong derived
            buffers, missing, unexpected or mis-shaped tensors (`HubError`: the Hub
            repository cannot be fetched or lacks the files).
    """
    check_folder_output(out_dir, "a model directory")
    root, files = _cosmos_files(source, on_download)
    shown = root if isinstance(root, HubRef) else " ".join(map(str, files))
    chosen = cosmos_variant(root, variant)
    tensors: dict[str, Tensor] = {}
    for f in files:
        part = _load_jit(f)
        clash = sorted(k for k in set(part) & set(tensors) if not torch.equal(part[k], tensors[k]))
        if clash:
            raise CheckpointError(f"the files disagree on {common.names(clash)}", f)
        tensors.update(part)
    config = infer_cosmos_config(tensors, chosen, legacy_mode, files[0])
    constants = _check_constants(tensors, config, files[0])
    model = common.meta_model(CosmosTokenizer, config)
    # parameter names are the release's (see vqtok.families.cosmos_layers)
    weights = {k: tensors[k] for k in model.state_dict() if k in tensors}
    missing = sorted(set(model.state_dict()) - set(weights))
    unexpected = sorted(set(tensors) - set(weights) - set(constants))
    common.check_accounting(files[0], missing, unexpected)
    ignored = {k: "derived constant, checked against its required value" for k in constants}
    card = common.model_card(
        f"NVIDIA Cosmos-0.1-Tokenizer-{chosen} (FSQ 64K, causal)",
        "cosmos-dv",
        COSMOS_LICENSE,
        command or f"vqtok convert cosmos {shown} --variant {chosen} -o {out_dir}",
        f"variant {chosen}" + (" (legacy_mode)" if legacy_mode else ""),
        hub_origin(root, files[0]) if isinstance(root, HubRef) else None,
    )
    return common.write_model(
        model, weights, dtype, out_dir, name, card, files, ignored, len(weights)
    )


def _convert(sources: Sequence[str], out_dir: Path, options: ConvertOptions) -> Conversion:
    """`convert_cosmos` with the one signature of `vqtok.convert.common.Converter`: one
    string may name a Hub repository; several are always local files."""
    source: str | list[Path] = sources[0] if len(sources) == 1 else [Path(s) for s in sources]
    return convert_cosmos(source, out_dir, options.extra.get("variant"),
                          bool(options.extra.get("legacy_mode", False)), options.dtype,
                          options.name, options.command, options.on_download)


CONVERTER = common.Converter("cosmos", _convert, options=("variant", "legacy_mode"))
