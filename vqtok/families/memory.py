"""How much memory an encode or decode needs, and the tiling that keeps it under a budget.

``--tile auto`` (the default) estimates the peak memory of an untiled pass from the model and the
frame size, and works in spatial tiles (`vqtok.families.tiling`) only when that estimate exceeds
``--max-memory`` (default: half the machine's memory): tiles give the same indices and frames,
but cost time. When tiled, carried frames go to disk if they would take more than a quarter of
the budget.

The estimate runs the model once on a tiny frame (two latent cells square) and records, per
layer, the bytes of its input and output and the frames a causal convolution carries; all of
them grow with the frame's area. Peak = `CARRY_FACTOR` x the carried frames +
`ACTIVATION_FACTOR` x the largest layer's input and output + the process's baseline
(`BASELINE_BYTES`: Python, torch, the weights). The factors bound the peak RSS measured on
vqtok-ema-video at 1080p (encode with 4 and 16 frames per step: 4.1 / 7.9 GB, estimated 5.3 /
9.1; decode with 1 and 4 latent frames: 5.5 / 9.5 GB, estimated 5.9 / 13.5) and a full-size
Cosmos DV4x8x8 (720p encode / decode 3.3 / 6.8 GB, estimated 4.9 / 10.5; 1080p encode 6.6,
estimated 10.6): an estimate errs on the side of tiling.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from weakref import WeakKeyDictionary

import torch

from vqtok.errors import ConfigError
from vqtok.families.base import TokenizerModel
from vqtok.families.cosmos_layers import CausalConv3d as CosmosCausalConv3d
from vqtok.families.layers import CausalConv3d
from vqtok.families.tiling import Tiling

__all__ = ["MemoryPlan", "estimate_bytes", "machine_memory", "parse_tile", "peak_bytes"]

GB = 1 << 30
CARRY_FACTOR = 3.0
ACTIVATION_FACTOR = 2.5
BASELINE_BYTES = 300 << 20
DEFAULT_TILE = (512, 512)


def parse_tile(text: str) -> tuple[int, int] | None | str:
    """``"auto"`` -> "auto", ``"off"`` -> None, ``"HxW"`` -> (H, W) in pixels (each >= 16).

    Raises:
        ConfigError: anything else.
    """
    text = text.strip().lower()
    if text in ("auto", "off"):
        return "auto" if text == "auto" else None
    height, sep, width = text.partition("x")
    if not (sep and height.isdigit() and width.isdigit()):
        raise ConfigError(f"a tile is auto, off or HEIGHTxWIDTH in pixels (e.g. 512x512), "
                          f"got {text!r}")
    tiling = Tiling(int(height), int(width))  # checks the size
    return tiling.height, tiling.width


def machine_memory() -> int:
    """Physical memory of this machine in bytes (8 GB where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * GB


@dataclass(frozen=True)
class MemoryPlan:
    """``--tile`` and ``--max-memory``: when to work in spatial tiles.

    Attributes:
        tile: "auto" (tile when an untiled pass would exceed ``max_memory``), None (never), or
            (H, W) tile size in pixels (always).
        max_memory: the budget in GB; None: half the machine's memory.
        spill_dir: a folder for carried frames that would take over a quarter of the budget
            (None: the system's temporary folder).
    """

    tile: tuple[int, int] | None | str = "auto"
    max_memory: float | None = None
    spill_dir: str | None = None

    def __post_init__(self) -> None:
        if self.max_memory is not None and not self.max_memory > 0:
            raise ConfigError(f"--max-memory must be > 0 GB, got {self.max_memory}")

    def budget(self, device: torch.device | None = None) -> int:
        """The memory budget in bytes; by default half of the machine's memory, or of the
        GPU's for a model on CUDA."""
        if self.max_memory is not None:
            return int(self.max_memory * GB)
        if device is not None and device.type == "cuda":
            return torch.cuda.get_device_properties(device).total_memory // 2
        return machine_memory() // 2

    def tiling_for(
        self, model: TokenizerModel, height: int, width: int, steps: int, decode: bool = False,
        batch: int = 1,
    ) -> Tiling | None:
        """The tiling for ``batch`` videos of (``height``, ``width``) frames streamed ``steps``
        frames (encode) or latent frames (decode) at a time; None to work on whole frames.

        Raises:
            ConfigError: a tile size given for a model that cannot tile.
        """
        if isinstance(self.tile, tuple) and not model.tiles:
            raise ConfigError(f"--tile: a {model.family} model cannot work in spatial tiles: "
                              f"{model.untiled_why} (use a smaller --chunk to save memory)")
        if self.tile is None or not model.tiles:
            return None
        f = model.spatial_factor
        carried, active = estimate_bytes(model, -(-height // f) * f, -(-width // f) * f, steps,
                                         decode)
        carried, active = carried * batch, active * batch
        budget = self.budget(next(model.parameters()).device)
        if self.tile == "auto":
            if peak_bytes(carried, active) <= budget:
                return None
            tile = DEFAULT_TILE
        else:
            assert isinstance(self.tile, tuple)
            tile = self.tile
        if carried <= budget // 4:
            return Tiling(*tile)
        folder = self.spill_dir  # (a Ray worker may not have the driver's folder)
        return Tiling(*tile, spill_dir=folder if folder and os.path.isdir(folder)
                      else tempfile.gettempdir())


def peak_bytes(carried: int, active: int) -> float:
    """The estimated peak of an untiled pass from `estimate_bytes`'s two figures."""
    return BASELINE_BYTES + CARRY_FACTOR * carried + ACTIVATION_FACTOR * active


def estimate_bytes(
    model: TokenizerModel, height: int, width: int, steps: int, decode: bool = False
) -> tuple[int, int]:
    """(carried, largest layer's input + output) bytes of an untiled streaming pass over
    frames of (``height``, ``width``) (multiples of the spatial factor), ``steps`` frames (or
    latent frames) per step, batch 1, float32. The probe runs once per model and step length."""
    side = 2 * model.spatial_factor
    probes = _PROBES.setdefault(model, {})
    if (steps, decode) not in probes:
        probes[(steps, decode)] = _probe(model, side, steps, decode)
    carried, largest = probes[(steps, decode)]
    scale = height * width / (side * side)
    return int(carried * scale), int(largest * scale)


# per model: (steps, decode) -> the probe's figures at side x side; shapes only, so they hold
# for the model's lifetime
_PROBES: WeakKeyDictionary[TokenizerModel, dict[tuple[int, bool], tuple[int, int]]] = (
    WeakKeyDictionary())


def _probe(model: TokenizerModel, side: int, steps: int, decode: bool) -> tuple[int, int]:
    """Stream the encoder (or decoder) once over a ``side`` x ``side`` frame; (carried,
    largest). The causal convolutions of both conv families count as carrying
    (their ``carried_frames``)."""
    carried, largest = 0, 0

    def record(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal carried, largest
        x = inputs[0]
        if module in leaves:
            largest = max(largest, (x.numel() + output.numel()) * 4)
        if module in carriers and x.shape[2]:
            carried += carriers[module] * x[:, :, :1].numel() * 4

    net: torch.nn.Module = model.decoder if decode else model.encoder  # type: ignore[assignment]
    leaves = {m for m in net.modules() if not list(m.children())}
    carriers = {m: m.carried_frames for m in net.modules()
                if isinstance(m, CausalConv3d | CosmosCausalConv3d)}
    device = next(model.parameters()).device  # the probe runs where the model is
    hooks = [m.register_forward_hook(record) for m in leaves | carriers.keys()]
    try:
        with torch.inference_mode():
            if decode:
                grid = torch.zeros(1, steps, 2, 2, *([model.quantizer.num_codebooks]
                                                    if model.quantizer.num_codebooks > 1 else []),
                                   dtype=torch.long, device=device)
                for _ in model.decode_stream([grid]):
                    pass
            else:
                video = torch.zeros(1, 3, steps, side, side, device=device)
                for _ in model.encode_stream([video]):
                    pass
    finally:
        for hook in hooks:
            hook.remove()
    return carried, largest
