"""Vector quantizers: one module per family, all returning `QuantizerOutput`.

Core quantizers (uniform contract, see `base.py`):

| kind       | class                   | module        |
|------------|-------------------------|---------------|
| ``vq``     | `VectorQuantizer`       | `vq.py`       |
| ``ema_vq`` | `EMAQuantizer`          | `ema.py`      |
| ``gumbel`` | `GumbelQuantizer`       | `gumbel.py`   |
| ``lfq``    | `LookupFreeQuantizer`   | `lfq.py`      |
| ``rvq``    | `ResidualQuantizer`     | `residual.py` |
| ``ema_rvq``| `EMAResidualQuantizer`  | `ema_residual.py` |
| ``residual_lfq`` | `ResidualLFQ`     | `residual_lfq.py` |
| ``fsq``    | `FiniteScalarQuantizer` | `fsq.py`      |

Compatibility classes with the reference names, signatures and return structures, one module
per family: `VectorQuantizer2` (`compat/vq.py`), `GumbelQuantize` (`compat/gumbel.py`),
`EMAVectorQuantizer`, `EmbeddingEMA` (`compat/ema.py`), `LFQ` (`compat/lfq.py`), `FSQ`
(`compat/fsq.py`), `EmaResidualVectorQuantizer`, `ResidualVectorQuantizer` (`compat/helia.py`).

`build_quantizer(kind, dim, **options)` builds a core quantizer by kind name (what model configs
use).
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any

from vqtok.errors import ConfigError
from vqtok.quantizers.base import Layout, Quantizer, QuantizerOutput, codebook_metrics

if TYPE_CHECKING:
    from vqtok.quantizers.compat.ema import EMAVectorQuantizer, EmbeddingEMA
    from vqtok.quantizers.compat.fsq import FSQ
    from vqtok.quantizers.compat.gumbel import GumbelQuantize
    from vqtok.quantizers.compat.helia import EmaResidualVectorQuantizer, ResidualVectorQuantizer
    from vqtok.quantizers.compat.lfq import LFQ
    from vqtok.quantizers.compat.vq import VectorQuantizer2
    from vqtok.quantizers.ema import EMAQuantizer
    from vqtok.quantizers.ema_residual import EMAResidualQuantizer
    from vqtok.quantizers.fsq import FiniteScalarQuantizer
    from vqtok.quantizers.gumbel import GumbelQuantizer
    from vqtok.quantizers.lfq import LookupFreeQuantizer
    from vqtok.quantizers.residual import ResidualQuantizer
    from vqtok.quantizers.residual_lfq import ResidualLFQ
    from vqtok.quantizers.vq import VectorQuantizer

# public name -> module that defines it (imported on first use, PEP 562)
_HOMES = {
    "VectorQuantizer": "vq",
    "EMAQuantizer": "ema",
    "GumbelQuantizer": "gumbel",
    "LookupFreeQuantizer": "lfq",
    "ResidualQuantizer": "residual",
    "ResidualLFQ": "residual_lfq",
    "EMAResidualQuantizer": "ema_residual",
    "FiniteScalarQuantizer": "fsq",
    "VectorQuantizer2": "compat.vq",
    "GumbelQuantize": "compat.gumbel",
    "EMAVectorQuantizer": "compat.ema",
    "EmbeddingEMA": "compat.ema",
    "LFQ": "compat.lfq",
    "FSQ": "compat.fsq",
    "EmaResidualVectorQuantizer": "compat.helia",
    "ResidualVectorQuantizer": "compat.helia",
}

# kind name used in model configs -> core class name
KINDS = {
    "vq": "VectorQuantizer",
    "ema_vq": "EMAQuantizer",
    "gumbel": "GumbelQuantizer",
    "lfq": "LookupFreeQuantizer",
    "rvq": "ResidualQuantizer",
    "ema_rvq": "EMAResidualQuantizer",
    "residual_lfq": "ResidualLFQ",
    "fsq": "FiniteScalarQuantizer",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        module = importlib.import_module(f"vqtok.quantizers.{_HOMES[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'vqtok.quantizers' has no attribute {name!r}")


def quantizer_class(kind: str) -> type[Quantizer]:
    """The core quantizer class for a kind name (``"vq"``, ``"lfq"``, ...)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown quantizer kind {kind!r}; choose one of {sorted(KINDS)}")
    cls: type[Quantizer] = __getattr__(KINDS[kind])
    return cls


def build_quantizer(kind: str, dim: int, **options: Any) -> Quantizer:
    """Build a core quantizer; unknown options are a `ConfigError` naming them.

    Args:
        kind: a key of `KINDS`.
        dim: channels of the latent the quantizer receives.
        options: keyword arguments of that class's constructor.
    """
    cls = quantizer_class(kind)
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(options) - set(params) - {"self"})
    if unknown:
        raise ConfigError(f"unknown option(s) for quantizer {kind!r}: {', '.join(unknown)}")
    return cls(dim=dim, **options)


__all__ = [
    "KINDS",
    "Layout",
    "Quantizer",
    "QuantizerOutput",
    "build_quantizer",
    "codebook_metrics",
    "quantizer_class",
    "EMAQuantizer",
    "EMAResidualQuantizer",
    "EMAVectorQuantizer",
    "EmaResidualVectorQuantizer",
    "EmbeddingEMA",
    "FSQ",
    "FiniteScalarQuantizer",
    "GumbelQuantize",
    "GumbelQuantizer",
    "LFQ",
    "LookupFreeQuantizer",
    "ResidualLFQ",
    "ResidualQuantizer",
    "ResidualVectorQuantizer",
    "VectorQuantizer",
    "VectorQuantizer2",
]
