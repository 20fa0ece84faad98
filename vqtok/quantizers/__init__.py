"""Vector quantizers: one module per family, all returning `QuantizerOutput`.

Core quantizers follow one contract (`base.Quantizer`). Each is a class in its own module that
declares its ``kind`` (the name model configs and index files use) and overrides the optional
hooks of `Quantizer` it supports (``check_levels``, ``set_beam_width``, ``init_from_samples``,
``reseed_dead_codes``, ``set_temperature``, ``bit_order``, ``levels``); `CORE_MODULES` lists
the modules, and `KINDS` (kind -> class) is built from them on first use:
``vq`` `VectorQuantizer` (`vq.py`), ``ema_vq`` `EMAQuantizer` (`ema.py`), ``gumbel``
`GumbelQuantizer` (`gumbel.py`), ``lfq`` `LookupFreeQuantizer` (`lfq.py`), ``rvq``
`ResidualQuantizer` (`residual.py`), ``ema_rvq`` `EMAResidualQuantizer` (`ema_residual.py`),
``residual_lfq`` `ResidualLFQ` (`residual_lfq.py`), ``fsq`` `FiniteScalarQuantizer` (`fsq.py`).
A core class is also importable from here by its name (``vqtok.quantizers.VectorQuantizer``).

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

if TYPE_CHECKING:  # for type checkers; at run time these come from __getattr__
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

# The one registration of a core quantizer: its module (under vqtok.quantizers), in this list.
CORE_MODULES = ("vq", "ema", "gumbel", "lfq", "residual", "ema_residual", "residual_lfq", "fsq")

# compatibility class -> module that defines it (imported on first use, PEP 562)
_COMPAT_HOMES = {
    "VectorQuantizer2": "compat.vq",
    "GumbelQuantize": "compat.gumbel",
    "EMAVectorQuantizer": "compat.ema",
    "EmbeddingEMA": "compat.ema",
    "LFQ": "compat.lfq",
    "FSQ": "compat.fsq",
    "EmaResidualVectorQuantizer": "compat.helia",
    "ResidualVectorQuantizer": "compat.helia",
}

if TYPE_CHECKING:
    KINDS: dict[str, type[Quantizer]]


def _core_class(module_name: str) -> type[Quantizer]:
    """The one `Quantizer` subclass of ``vqtok.quantizers.<module_name>`` that sets ``kind``."""
    module = importlib.import_module(f"vqtok.quantizers.{module_name}")
    found = [
        value for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, Quantizer)
        and value.__module__ == module.__name__ and "kind" in vars(value)
    ]
    assert len(found) == 1, f"{module.__name__} must define one quantizer with a kind: {found}"
    return found[0]


def _build_kinds() -> dict[str, type[Quantizer]]:
    kinds: dict[str, type[Quantizer]] = {}
    for module_name in CORE_MODULES:
        cls = _core_class(module_name)
        assert cls.kind not in kinds, f"quantizer kind {cls.kind!r} registered twice"
        kinds[cls.kind] = cls
    return kinds


def __getattr__(name: str) -> Any:
    if name == "KINDS":
        kinds = _build_kinds()
        globals()["KINDS"] = kinds  # built once; later lookups do not come here
        return kinds
    if name in _COMPAT_HOMES:
        module = importlib.import_module(f"vqtok.quantizers.{_COMPAT_HOMES[name]}")
        return getattr(module, name)
    for cls in __getattr__("KINDS").values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module 'vqtok.quantizers' has no attribute {name!r}")


def quantizer_class(kind: str) -> type[Quantizer]:
    """The core quantizer class for a kind name (``"vq"``, ``"lfq"``, ...).

    Raises:
        ConfigError: an unknown kind, naming the known ones.
    """
    kinds: dict[str, type[Quantizer]] = __getattr__("KINDS")
    if kind not in kinds:
        raise ConfigError(f"unknown quantizer kind {kind!r}; choose one of {sorted(kinds)}")
    return kinds[kind]


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
    "CORE_MODULES",
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
