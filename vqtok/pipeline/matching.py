"""Does an index file fit a model: the vocabulary facts index files record.

- `describe_quantizer`: the quantizer facts an index file stores (kind, codebook size, number of
  codebooks, LFQ bit order, FSQ levels).
- `check_model_matches`: refuse to decode an index file with a model it was not made by.

A remap file applied to a run is `vqtok.pipeline.remap`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqtok.errors import TokenFileError
from vqtok.io.tokens import TokenMetadata
from vqtok.quantizers.base import Quantizer


@dataclass(frozen=True)
class QuantizerFacts:
    """What an index file says about the vocabulary of the model that wrote it."""

    kind: str
    codebook_size: int
    num_codebooks: int
    bit_order: str | None
    levels: tuple[int, ...] | None


def describe_quantizer(model: Any) -> QuantizerFacts:
    """The vocabulary facts of a `vqtok.families.base.TokenizerModel`."""
    quantizer: Quantizer = model.quantizer
    levels = quantizer.levels
    return QuantizerFacts(
        kind=quantizer.kind,
        codebook_size=int(quantizer.codebook_size),
        num_codebooks=int(quantizer.num_codebooks),
        bit_order=quantizer.bit_order,
        levels=None if levels is None else tuple(int(v) for v in levels),
    )


def check_model_matches(
    meta: TokenMetadata, model: Any, weights_sha256: str | None, force: bool, path: str | Path
) -> None:
    """Refuse a model that cannot decode ``meta``'s indices.

    A different vocabulary (family, kind, size, codebooks, levels, bit order) is always refused;
    different weights (SHA-256 of ``model.safetensors``) are refused unless ``force``.

    Raises:
        TokenFileError: naming what differs and what to do.
    """
    facts = describe_quantizer(model)
    expected = {
        "family": meta.family,
        "quantizer": meta.quantizer,
        "codebook_size": meta.codebook_size,
        "num_codebooks": meta.num_codebooks,
        "bit_order": meta.bit_order,
        "levels": meta.levels,
    }
    actual = {
        "family": model.family,
        "quantizer": facts.kind,
        "codebook_size": facts.codebook_size,
        "num_codebooks": facts.num_codebooks,
        "bit_order": facts.bit_order,
        "levels": facts.levels,
    }
    differ = [f"{k} {expected[k]!r} vs {actual[k]!r}" for k in expected if expected[k] != actual[k]]
    if differ:
        raise TokenFileError(
            f"the model cannot decode these indices ({'; '.join(differ)} in the file vs the "
            f"model); decode with the model it was encoded with ({meta.model!r})",
            path,
            cli_message=f"the model cannot decode these indices ({'; '.join(differ)} in the "
            f"file vs the model); pass the model it was encoded with (--model {meta.model})",
        )
    if meta.model_sha256 and weights_sha256 and meta.model_sha256 != weights_sha256 and not force:
        raise TokenFileError(
            f"was encoded with model {meta.model!r} (weights sha256 {meta.model_sha256[:12]}...) "
            f"but the model given has weights {weights_sha256[:12]}...; use the right model, "
            "or force=True to decode anyway",
            path,
            cli_message=f"was encoded with model {meta.model!r} (weights sha256 "
            f"{meta.model_sha256[:12]}...) but the model given has weights "
            f"{weights_sha256[:12]}...; pass the right --model, or --force to decode anyway",
        )
