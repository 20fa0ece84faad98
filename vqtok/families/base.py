"""What every tokenizer model family provides, and the registry that finds a family by name.

A model directory's ``config.json`` names its family (``"family": "vqtok"``); `family_class`
returns the `TokenizerModel` subclass that builds it. Families:

| family                 | class                         | module             |
|------------------------|-------------------------------|--------------------|
| ``vqtok``              | the project's own tokenizer   | `vqtok.families.vqtok`      |
| ``cosmos-dv``          | NVIDIA Cosmos DV (FSQ 64K)    | `vqtok.families.cosmos`     |
| ``open-magvit2-video`` | Open-MAGVIT2 video (LFQ 2^18) | `vqtok.families.magvit2`    |
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from vqtok.errors import ConfigError, VqtokError
from vqtok.jsonfields import dataclass_to_json
from vqtok.quantizers.base import Quantizer, QuantizerOutput

# family name -> "module:Class"
FAMILIES: dict[str, str] = {
    "vqtok": "vqtok.families.vqtok:VideoTokenizer",
    "cosmos-dv": "vqtok.families.cosmos:CosmosTokenizer",
    "open-magvit2-video": "vqtok.families.magvit2:Magvit2Tokenizer",
}


class TokenizerModel(nn.Module):
    """Base class of every model family: video (B, 3, T, H, W) in [-1, 1] <-> indices.

    Class attributes a family sets:
        family: its name in `FAMILIES`.
        config_class: a frozen dataclass with ``from_dict`` (rejects unknown keys, raises
            `ConfigError`) and ``to_dict`` (`FamilyConfig`).
        tiles: whether ``encode_stream`` / ``decode_stream`` take ``tiling=`` (spatial tiles,
            `vqtok.families.tiling`), with the same indices and frames as untiled.
        untiled_why: for a family that does not tile, why (one clause, shown to users).

    Instance attributes:
        config: the config it was built from.
        quantizer: the core quantizer (``codebook_size``, ``num_codebooks``, ``indices_to_codes``).
        temporal_factor: tau; valid clip lengths are 1 + k * tau frames -> 1 + k latent frames.
        spatial_factor: H and W must be multiples of it; latent grid is H / f x W / f.
        window: None for a causal family that streams exactly; otherwise the number of frames
            of the independent windows a long video is cut into (non-causal families).
    """

    family: ClassVar[str]
    config_class: ClassVar[Any]
    tiles: ClassVar[bool] = False
    untiled_why: ClassVar[str] = "its family has no tiled pass"

    config: Any
    quantizer: Quantizer
    temporal_factor: int
    spatial_factor: int
    window: int | None = None

    @classmethod
    def from_config(cls, config: Any) -> TokenizerModel:
        """Build an (untrained) model from a config object or a plain dict."""
        if isinstance(config, dict):
            config = cls.config_class.from_dict(config)
        return cls(config)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(t, h, w) of the index grid for a valid clip of this size."""
        t = 1 + (frames - 1) // self.temporal_factor
        return t, height // self.spatial_factor, width // self.spatial_factor

    def encode(
        self, video: Tensor, allowed: Sequence[Tensor] | None = None, levels: int | None = None
    ) -> Tensor:
        """(B, 3, T, H, W) float in [-1, 1], T = 1 + k*tau -> int64 indices (B, t, h, w[, L]).

        With ``allowed`` (one tensor of codes per codebook / level), compact ids: see
        `indices_of`.
        """
        raise NotImplementedError

    def indices_of(
        self, latents: Tensor, allowed: Sequence[Tensor] | None = None, levels: int | None = None
    ) -> Tensor:
        """The quantizer's indices of pre-quantizer latents, in float32 with autocast off (an
        index must not depend on the compute dtype).

        Args:
            latents: (B, D, t, h, w).
            allowed: None for full ids; else per level the codes level l may use, and the
                result holds compact ids (positions in ``allowed[l]``), see
                `vqtok.quantizers.base.Quantizer.restricted_indices`.
            levels: residual quantizers: a k-level code (..., k), searched over the first k
                levels (with ``allowed``: the first k levels of the restricted code).
        """
        with torch.autocast(latents.device.type, enabled=False):
            if allowed is not None:
                found = self.quantizer.restricted_indices(latents.float(), allowed)
                return found if levels is None else found[..., :levels]
            if levels is not None:
                return self.quantizer(latents.float(), levels=levels).indices
            return self.quantizer(latents.float()).indices

    def quantize(self, latents: Tensor) -> QuantizerOutput:
        """The quantizer's output (codes straight-through) for pre-quantizer latents
        (B, D, t, h, w), in float32 with autocast off, as `indices_of`."""
        with torch.autocast(latents.device.type, enabled=False):
            return self.quantizer(latents.float())  # type: ignore[no-any-return]

    def decode(self, indices: Tensor) -> Tensor:
        """int64 indices (B, t, h, w[, L]) -> video (B, 3, 1 + (t-1)*tau, H, W), unclamped."""
        raise NotImplementedError

    def forward(self, video: Tensor) -> tuple[Tensor, QuantizerOutput]:
        """Training pass: (reconstruction, quantizer output)."""
        raise NotImplementedError

    def encode_stream(
        self, chunks: Iterable[Tensor], allowed: Sequence[Tensor] | None = None,
        levels: int | None = None,
    ) -> Iterator[Tensor]:
        """Encode a long video given as consecutive (B, 3, T_i, H, W) chunks; yields index
        chunks (B, t_i, h, w[, L]) whose concatenation along time equals a one-shot encode
        (compact ids with ``allowed``, as `encode`)."""
        raise NotImplementedError

    def decode_stream(self, chunks: Iterable[Tensor]) -> Iterator[Tensor]:
        """Decode consecutive index chunks; yields video chunks whose concatenation along
        time matches a one-shot decode within float tolerance."""
        raise NotImplementedError


C = TypeVar("C", bound="FamilyConfig")


class FamilyConfig:
    """Base of a family's frozen config dataclass (`TokenizerModel.config_class`): a plain
    dict (config.json) in, one out. A subclass sets ``family``, its name in messages."""

    family: ClassVar[str]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build from a plain dict (e.g. config.json).

        Raises:
            ConfigError: unknown keys (named), or values the dataclass refuses.
        """
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.family} config key(s): {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as e:
            raise ConfigError(f"bad {cls.family} config: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples as lists) that `from_dict` turns back into an equal config."""
        return dataclass_to_json(self)


def check_video(video: Tensor, spatial_factor: int) -> Tensor:
    """``video`` as a float (B, 3, T, H, W) clip (an image batch (B, 3, H, W) is one frame).

    Raises:
        VqtokError: another shape or dtype, or H, W not multiples of ``spatial_factor``.
    """
    if video.ndim == 4:  # (B, 3, H, W) images are one-frame clips
        video = video.unsqueeze(2)
    if video.ndim != 5 or video.shape[1] != 3 or not video.is_floating_point():
        raise VqtokError(
            f"expected a float video (B, 3, T, H, W) in [-1, 1], got {video.dtype} "
            f"of shape {tuple(video.shape)}"
        )
    f = spatial_factor
    if video.shape[3] % f or video.shape[4] % f:
        raise VqtokError(f"height and width must be multiples of {f}, got {video.shape[3:]}")
    return video


def family_class(name: str) -> type[TokenizerModel]:
    """The `TokenizerModel` subclass registered under ``name``."""
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    module_name, cls_name = FAMILIES[name].split(":")
    cls: type[TokenizerModel] = getattr(importlib.import_module(module_name), cls_name)
    return cls
