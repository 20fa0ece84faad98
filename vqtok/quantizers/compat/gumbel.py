"""`GumbelQuantize` with the reference constructor, call signature and return tuples.

For porting code written against taming-transformers' / CogVideo's ``GumbelQuantize``
(Gumbel-softmax VQ, Jang et al. arXiv 1611.01144). Parameters keep the
reference names and shapes (``proj`` a 1x1 ``Conv2d``, ``embed``, ``used`` under a remap), so a
reference state_dict loads as is. The math is `vqtok.quantizers.gumbel`'s.

The fixes, deliberately different from the reference (README, "Compatibility with the
reference modules"):

- ``temperature`` is a saved buffer (a reference state_dict without it still loads; the
  constructor's ``temp_init`` is then kept);
- eval is deterministic, the argmax of the logits, unless ``sample_in_eval=True``;
- indices returned under a remap are the remapped (compact) ones, and they are never unknown
  because the logits are restricted to the used codes;
- ``get_codebook_entry`` gathers rows instead of building a (b, n_embed, h, w) one-hot;
- video (b, c, t, h, w) and channel-last (..., c) inputs work, besides (b, c, h, w).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqtok.errors import QuantizerError
from vqtok.quantizers.base import Layout, check_indices
from vqtok.quantizers.gumbel import assign_codes, kl_to_uniform
from vqtok.quantizers.remap import IndexRemap, UsedLike


class GumbelQuantize(nn.Module):
    """Reference-compatible Gumbel-softmax quantizer.

    Args:
        num_hiddens: input channels (the encoder features the logits come from).
        embedding_dim: channels of a code and of the output.
        n_embed: K codes.
        straight_through: hard one-hot samples in training (eval is always hard).
        kl_weight: weight of the KL-to-uniform term.
        temp_init: initial temperature, saved in the ``temperature`` buffer.
        use_vqinterface: return ``(z_q, diff, (None, None, ind))`` rather than
            ``(z_q, diff, ind)``.
        remap: a used-index ``.npy`` path (or array / tensor) restricting the codes.
        unknown_index: ``"random"``, ``"extra"`` or an int, as in `IndexRemap`; it only
            affects `remap_to_used` of ids outside the used set (forward never makes any).
        sample_in_eval: keyword-only, vqtok's addition: sample in eval like the reference.
    """

    temperature: Tensor
    used: Tensor

    def __init__(
        self,
        num_hiddens: int,
        embedding_dim: int,
        n_embed: int,
        straight_through: bool = True,
        kl_weight: float = 5e-4,
        temp_init: float = 1.0,
        use_vqinterface: bool = True,
        remap: UsedLike | None = None,
        unknown_index: str | int = "random",
        *,
        sample_in_eval: bool = False,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.n_embed = n_embed
        self.straight_through = straight_through
        self.kl_weight = kl_weight
        self.use_vqinterface = use_vqinterface
        self.sample_in_eval = sample_in_eval
        self.proj = nn.Conv2d(num_hiddens, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embedding_dim)
        self.register_buffer("temperature", torch.tensor(float(temp_init)))
        self.remap = remap
        self.re_embed = n_embed
        if remap is not None:
            table = IndexRemap(remap, n_embed, unknown_index)
            self.register_buffer("used", table.used)
            self.re_embed = table.re_embed
            self.unknown_index = table.unknown_index  # "extra" resolves to U, as in the reference
            self._unknown_policy = unknown_index

    def _remapper(self) -> IndexRemap:
        if self.remap is None:
            raise QuantizerError("this GumbelQuantize was built without remap")
        return IndexRemap(self.used, self.n_embed, self._unknown_policy)

    def remap_to_used(self, inds: Tensor) -> Tensor:
        """Full codebook ids -> compact ids (same shape); see `IndexRemap.remap_to_used`."""
        return self._remapper().remap_to_used(inds)

    def unmap_to_all(self, inds: Tensor) -> Tensor:
        """Compact ids -> full codebook ids (same shape); never mutates ``inds``."""
        return self._remapper().unmap_to_all(inds)

    def forward(
        self, z: Tensor, temp: float | None = None, return_logits: bool = False
    ) -> tuple[Any, ...]:
        """Quantize ``z``.

        Args:
            z: (B, num_hiddens, H, W) or (B, num_hiddens, T, H, W), or channel-last
                (..., num_hiddens).
            temp: temperature for this call; defaults to the ``temperature`` buffer.
            return_logits: also return the logits (only with ``use_vqinterface``).

        Returns:
            ``use_vqinterface``: ``(z_q, diff, (None, None, ind))``, plus ``logits`` with
            ``return_logits``; otherwise ``(z_q, diff, ind)``. ``z_q`` has embedding_dim
            channels in z's layout, ``diff`` the weighted KL (float32 scalar), ``ind`` int64
            of z's shape without channels (compact ids under a remap), ``logits`` (B, K or U,
            ...) in z's layout.
        """
        layout = Layout.of(z)
        if layout.dim != self.proj.in_channels:
            raise QuantizerError(
                f"expected {self.proj.in_channels} input channels, got {layout.dim}"
            )
        # the 1x1 conv as a linear map over channels, so any rank works: (N, C) -> (N, K)
        weight = self.proj.weight.reshape(self.n_embed, -1).float()
        bias = None if self.proj.bias is None else self.proj.bias.float()
        with torch.autocast(device_type=z.device.type, enabled=False):
            logits = F.linear(layout.to_tokens(z).float(), weight, bias)
        codebook = self.embed.weight
        if self.remap is not None:
            logits = logits[:, self.used]  # (N, U)
            codebook = codebook[self.used]
        tau = self.temperature if temp is None else temp
        sample = self.training or self.sample_in_eval
        hard = self.straight_through or not self.training
        weights, ind = assign_codes(logits, tau, sample, hard)
        z_q = codebook[ind] if weights is None else weights.to(codebook.dtype) @ codebook
        diff = self.kl_weight * kl_to_uniform(logits, self.n_embed)
        z_q, ind = layout.from_tokens(z_q), layout.restore_indices(ind)
        if not self.use_vqinterface:
            return z_q, diff, ind
        if return_logits:
            return z_q, diff, (None, None, ind), layout.from_tokens(logits)
        return z_q, diff, (None, None, ind)

    def get_codebook_entry(self, indices: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Codes of flat indices, channel-first.

        Args:
            indices: (b*h*w,) (or (b*t*h*w,)) integer ids, compact under a remap.
            shape: (b, h, w, c) or (b, t, h, w, c); ``c`` is ignored.

        Returns:
            (b, embedding_dim, h, w) or (b, embedding_dim, t, h, w).
        """
        grid = tuple(shape[:-1])
        if indices.numel() != math.prod(grid):
            raise QuantizerError(
                f"got {indices.numel()} indices for shape {tuple(shape)} "
                f"(expected {math.prod(grid)} = prod of all but the last)"
            )
        ids = indices.reshape(grid)
        if self.remap is not None:
            ids = self.unmap_to_all(ids)
        ids = check_indices(ids, self.n_embed)
        codes = self.embed(ids)  # (b, ..., embedding_dim)
        return codes.movedim(-1, 1).contiguous()

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        # reference checkpoints predate the temperature buffer: keep temp_init for them
        key = prefix + "temperature"
        if key in missing_keys:
            missing_keys.remove(key)
