"""A model's vocabulary as index files record it, and remap files applied to a whole run.

- `describe_quantizer`: the quantizer facts an index file stores (kind, codebook size, number of
  codebooks, LFQ bit order, FSQ levels).
- `check_model_matches`: refuse to decode an index file with a model it was not made by.
- `RemapPlan` / `restricted_search`: encode with a used-index file (``vqtok encode --remap``).
  For quantizers with a nearest-code search over a codebook (``vq``, ``ema_vq``, ``gumbel``) the
  search is restricted to the used codes, as taming-transformers' ``VectorQuantizer2`` can
  (Esser et al., arXiv 2012.09841), so every index is a used one. Other kinds (FSQ, LFQ,
  residual VQ) have no codebook search to restrict: their indices are mapped to compact ids and
  a code outside the used set is an error, never a silent substitute.
- `load_remap_for`: the used-index array to decode a remapped index file, checked against the
  SHA-256 and size its metadata recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from vqtok.errors import RemapError, TokenFileError
from vqtok.quantizers import KINDS, build_quantizer, quantizer_class
from vqtok.remap import IndexRemap, load_used
from vqtok.tokens import RemapInfo, TokenMetadata

# kinds whose search, given a remap, looks only at the used codes
_RESTRICTED_KINDS = ("vq", "ema_vq", "gumbel")


@dataclass(frozen=True)
class QuantizerFacts:
    """What an index file says about the vocabulary of the model that wrote it."""

    kind: str
    codebook_size: int
    num_codebooks: int
    bit_order: str | None
    levels: tuple[int, ...] | None


def describe_quantizer(model: Any) -> QuantizerFacts:
    """The vocabulary facts of a `vqtok.family.TokenizerModel`."""
    quantizer = model.quantizer
    by_class = {cls: kind for kind, cls in KINDS.items()}
    kind = by_class.get(type(quantizer).__name__, type(quantizer).__name__)
    levels = getattr(quantizer, "levels", None)
    return QuantizerFacts(
        kind=kind,
        codebook_size=int(getattr(quantizer, "full_size", quantizer.codebook_size)),
        num_codebooks=int(quantizer.num_codebooks),
        bit_order=getattr(quantizer, "bit_order", None),
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


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class RemapPlan:
    """A used-index file applied while encoding.

    Attributes:
        path: the remap ``.npy``.
        used: (U,) int64 strictly increasing full codebook ids.
        info: what the index file records (SHA-256 of the file, U).
        restricted: the model's search can be restricted to ``used`` (see the module docstring).
    """

    path: Path
    used: Tensor
    info: RemapInfo
    restricted: bool

    @classmethod
    def open(cls, path: str | Path, model: Any) -> RemapPlan:
        """Load and check a remap file for ``model``.

        Raises:
            RemapError: missing, pickled, unsorted, or ids beyond the model's codebook; or a
                model with several codebooks (a remap is one vocabulary).
        """
        facts = describe_quantizer(model)
        if facts.num_codebooks > 1:
            raise RemapError(
                f"the model has {facts.num_codebooks} codebooks / levels; a remap file describes "
                "one vocabulary, so it cannot be applied",
                path,
            )
        used = load_used(path, facts.codebook_size)
        info = RemapInfo(sha256=file_sha256(path), size=int(used.numel()))
        restricted = model.family == "vqtok" and facts.kind in _RESTRICTED_KINDS
        return cls(Path(path), used, info, restricted)

    def to_compact(self, indices: Tensor, source: str | Path) -> Tensor:
        """Full ids -> compact ids for an unrestricted search; a restricted one already gave them.

        Raises:
            RemapError: an index whose code is not in the used set.
        """
        if self.restricted:
            return indices
        compact = IndexRemap(self.used, unknown_index="extra").remap_to_used(indices)
        unknown = compact == self.info.size
        if bool(unknown.any()):
            codes = sorted({int(c) for c in indices[unknown].reshape(-1)[:1000].tolist()})
            raise RemapError(
                f"{int(unknown.sum())} indices use codes that are not in the remap file "
                f"{self.path.name} (e.g. {codes[:5]}); this quantizer cannot restrict its search, "
                "so rebuild the remap file including this video (vqtok remap build)",
                source,
            )
        return compact


@contextlib.contextmanager
def restricted_search(model: Any, plan: RemapPlan | None) -> Iterator[None]:
    """Within the block, ``model``'s quantizer searches only ``plan.used`` (when it can).

    The model's quantizer is swapped for one built with the same options plus the remap, holding
    the same weights; the original is put back on exit, so the model is unchanged afterwards.
    """
    if plan is None or not plan.restricted:
        yield
        return
    original, kind = model.quantizer, model.config.quantizer
    options = dict(model.config.quantizer_options, remap=plan.used)
    if "restrict_to_used" in inspect.signature(quantizer_class(kind).__init__).parameters:
        options["restrict_to_used"] = True  # an older flag; the current classes always restrict
    restricted = build_quantizer(kind, model.config.latent_dim, **options)
    missing, unexpected = restricted.load_state_dict(original.state_dict(), strict=False)
    remaps = [name for name, module in restricted.named_modules() if isinstance(module, IndexRemap)]
    remap_keys = {f"{name}.used" for name in remaps}
    if unexpected or set(missing) - remap_keys:
        raise RemapError(
            f"cannot restrict the {kind} search: tensors "
            f"{sorted(set(missing) - remap_keys) + sorted(unexpected)} do not carry over",
            plan.path,
        )
    device = next(iter(original.state_dict().values())).device
    model.quantizer = restricted.to(device).train(original.training)
    try:
        yield
    finally:
        model.quantizer = original


def load_remap_for(
    meta: TokenMetadata, remap: str | Path | None, path: str | Path
) -> Tensor | None:
    """The used-index array a remapped index file needs, or None if it is not remapped.

    Args:
        meta: the index file's metadata.
        remap: the remap file given by the user (``--remap``), or None.
        path: the index file, for messages.

    Raises:
        TokenFileError: a remapped file without ``remap``, a plain file with one, or a remap
            file whose SHA-256 / size differ from the recorded ones.
    """
    if meta.remap is None:
        if remap is not None:
            raise TokenFileError("the indices are not remapped; pass no remap file", path,
                                 cli_message="the indices are not remapped; drop --remap")
        return None
    if remap is None:
        raise TokenFileError(
            f"the indices are remapped ({meta.remap.size} used codes, remap file sha256 "
            f"{meta.remap.sha256[:12]}...); pass that file as remap=",
            path,
            cli_message=f"the indices are remapped ({meta.remap.size} used codes, remap file "
            f"sha256 {meta.remap.sha256[:12]}...); pass that file with --remap used.npy",
        )
    used = load_used(remap, meta.codebook_size)
    digest = file_sha256(remap)
    if digest != meta.remap.sha256 or used.numel() != meta.remap.size:
        raise TokenFileError(
            f"{Path(remap).name} ({used.numel()} codes, sha256 {digest[:12]}...) is not the "
            f"remap file these indices were made with ({meta.remap.size} codes, sha256 "
            f"{meta.remap.sha256[:12]}...)",
            path,
        )
    return used
