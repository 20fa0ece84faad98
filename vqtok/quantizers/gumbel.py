"""Gumbel-softmax vector quantization: a categorical posterior over codes, sampled with noise.

Jang, Gu and Poole, "Categorical Reparameterization with Gumbel-Softmax", arXiv 1611.01144, as used
by taming-transformers' ``GumbelQuantize`` (after karpathy/deep-vector-quantization). A linear map
over channels (the reference's 1x1 conv) turns each latent vector into K logits; in training a
Gumbel-softmax sample picks the code (hard one-hot with a straight-through gradient by default) and
the output is the sample times the codebook. A KL(q || Uniform(K)) term, ``kl_weight * mean_n sum_k
q_k ln(q_k K + 1e-10)`` with q the clean softmax of the logits, pulls each position's posterior
toward uniform.

Deliberate fixes over the reference (README, "Compatibility with the reference modules"): the
temperature is a saved buffer with `set_temperature`; eval is deterministic (argmax of the logits)
unless ``sample_in_eval``; a remap restricts the logits to the used codes and the returned indices
are the compact ones; sampling takes an optional ``torch.Generator``; the logits are computed in
float32 with autocast off, so an argmax does not depend on the ambient precision. With a remap the
KL keeps the reference's ln(q K), K the full codebook size (a constant offset of ln(K / U), the same
gradients).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqtok.errors import ConfigError, QuantizerError
from vqtok.quantizers.base import (
    Layout,
    Quantizer,
    QuantizerOutput,
    check_indices,
    codebook_metrics,
)
from vqtok.quantizers.remap import IndexRemap, UsedLike

# Inside the KL's log, as in the reference: keeps ln finite where q underflows to 0.
KL_EPS = 1e-10


def gumbel_softmax(
    logits: Tensor, tau: Tensor | float, hard: bool, generator: torch.Generator | None = None
) -> Tensor:
    """A Gumbel-softmax sample over the last axis.

    Args:
        logits: (N, K) float logits.
        tau: temperature > 0 (scalar).
        hard: return the one-hot of the sample's argmax with the soft sample's gradient
            (straight-through, ``y_hard - sg(y_soft) + y_soft``); else the soft sample.
        generator: source of the Gumbel noise (on ``logits``' device), or the global RNG.

    Returns:
        (N, K) sample in ``logits``' dtype; rows sum to 1.
    """
    # -ln(Exp(1)) is Gumbel(0, 1)-distributed; exponential_ takes a generator, F.gumbel_softmax
    # does not.
    gumbels = -torch.empty_like(logits).exponential_(generator=generator).log()
    soft = ((logits + gumbels) / tau).softmax(-1)
    if not hard:
        return soft
    one_hot = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return one_hot - soft.detach() + soft


def kl_to_uniform(logits: Tensor, num_codes: int) -> Tensor:
    """``mean_n sum_k q_nk ln(q_nk * num_codes + 1e-10)``, q = softmax(logits) over the last axis.

    Args:
        logits: (N, U) float logits (U <= num_codes, U < num_codes under a remap).
        num_codes: K of the uniform prior.

    Returns:
        float32 scalar (0 when N = 0).
    """
    if logits.shape[0] == 0:
        return logits.new_zeros((), dtype=torch.float32)
    q = logits.float().softmax(-1)
    return (q * torch.log(q * num_codes + KL_EPS)).sum(-1).mean()


def assign_codes(
    logits: Tensor,
    tau: Tensor | float,
    sample: bool,
    hard: bool,
    generator: torch.Generator | None = None,
) -> tuple[Tensor | None, Tensor]:
    """Pick codes from (N, U) logits.

    Returns:
        ``(weights, indices)``: with ``sample`` a Gumbel-softmax sample (N, U) (see
        `gumbel_softmax`) and its argmax; without, ``None`` and the argmax of the logits
        (deterministic, first index on ties). Indices are int64 (N,) in [0, U).
    """
    if not sample:
        return None, logits.argmax(-1)
    weights = gumbel_softmax(logits, tau, hard, generator)
    return weights, weights.argmax(-1)


def as_remap(remap: UsedLike | IndexRemap | None, codebook_size: int) -> IndexRemap | None:
    """An `IndexRemap` from a used-index array, a ``.npy`` path, or an existing one."""
    if remap is None or isinstance(remap, IndexRemap):
        return remap
    return IndexRemap(remap, codebook_size)


class GumbelQuantizer(Quantizer):
    """Gumbel-softmax VQ with the uniform vqtok contract (kind ``"gumbel"``).

    Args:
        dim: input channels D (the reference's ``num_hiddens``).
        codebook_size: K codes.
        codebook_dim: channels of a code and of the output; defaults to ``dim``.
        straight_through: in training, hard one-hot samples with the soft gradient (True)
            or the soft sample itself (False: the output is a mixture of codes).
        kl_weight: weight of the KL-to-uniform term in ``loss``.
        temperature: initial Gumbel-softmax temperature (> 0); a saved buffer, change it
            with `set_temperature`.
        remap: used codes (tensor, array, ``.npy`` path or `IndexRemap`): the logits are
            restricted to them and indices are compact ids in [0, U).
        sample_in_eval: sample (hard) in eval mode too, as the reference does; by default
            eval takes the argmax of the logits.

    Attributes:
        proj: ``nn.Linear(dim, K)`` giving the logits.
        embed: ``nn.Embedding(K, codebook_dim)``, N(0, 1) init as in the reference.
        temperature: float32 scalar buffer.
    """

    kind = "gumbel"

    temperature: Tensor

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_dim: int | None = None,
        straight_through: bool = True,
        kl_weight: float = 5e-4,
        temperature: float = 1.0,
        remap: UsedLike | IndexRemap | None = None,
        sample_in_eval: bool = False,
    ) -> None:
        super().__init__()
        if dim < 1 or codebook_size < 1 or (codebook_dim is not None and codebook_dim < 1):
            raise ConfigError(
                f"Gumbel quantizer needs positive sizes, got dim={dim}, "
                f"codebook_size={codebook_size}, codebook_dim={codebook_dim}"
            )
        self.dim = dim
        self.codebook_size = codebook_size
        self.codebook_dim = dim if codebook_dim is None else codebook_dim
        self.straight_through = straight_through
        self.kl_weight = kl_weight
        self.sample_in_eval = sample_in_eval
        self.proj = nn.Linear(dim, codebook_size)
        self.embed = nn.Embedding(codebook_size, self.codebook_dim)
        self.register_buffer("temperature", torch.tensor(_check_temperature(temperature)))
        self.remap = as_remap(remap, codebook_size)

    @property
    def vocab_size(self) -> int:
        """Values one index can take: U under a remap, else K."""
        return self.codebook_size if self.remap is None else self.remap.num_used

    def set_temperature(self, value: float) -> None:
        """Set the Gumbel-softmax temperature (> 0), e.g. from an annealing schedule."""
        self.temperature.fill_(_check_temperature(value))

    def codebook(self) -> Tensor:
        """(vocab_size, codebook_dim) codes that indices address (the used ones under remap)."""
        if self.remap is None:
            return self.embed.weight
        return self.embed.weight[self.remap.used.to(self.embed.weight.device)]

    def logits(self, flat: Tensor) -> Tensor:
        """(N, D) tokens -> (N, vocab_size) float32 logits (restricted to used codes)."""
        # float32 with autocast off: an index must not depend on the ambient precision
        with torch.autocast(device_type=flat.device.type, enabled=False):
            bias = self.proj.bias.float()
            logits = F.linear(flat.float(), self.proj.weight.float(), bias)
        if self.remap is not None:
            logits = logits[:, self.remap.used.to(logits.device)]
        return logits

    def forward(
        self,
        z: Tensor,
        channel_last: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> QuantizerOutput:
        """Quantize ``z``.

        Args:
            z: (B, D, H, W), (B, D, T, H, W), or channel-last (N, D) / (B, N, D).
            channel_last: force the layout, see `Layout.of`.
            generator: source of the Gumbel noise when sampling (training or
                ``sample_in_eval``), on z's device.

        Returns:
            `QuantizerOutput`: codes with ``codebook_dim`` channels in z's layout (without
            sampling, i.e. in eval, exactly the embeddings: no gradient reaches ``proj``);
            int64 indices (grid shape) in [0, vocab_size); loss = kl_weight * KL;
            metrics perplexity, usage, bits_per_index, kl (unweighted), temperature.
        """
        layout = Layout.of(z, channel_last)
        if layout.dim != self.dim:
            raise QuantizerError(f"expected {self.dim} input channels, got {layout.dim}")
        logits = self.logits(layout.to_tokens(z))  # (N, U)
        sample = self.training or self.sample_in_eval
        hard = self.straight_through or not self.training
        weights, indices = assign_codes(logits, self.temperature, sample, hard, generator)
        codebook = self.codebook()
        if weights is None:
            codes = codebook[indices]  # (N, codebook_dim), exactly indices_to_codes
        else:
            codes = weights.to(codebook.dtype) @ codebook
        kl = kl_to_uniform(logits, self.codebook_size)
        indices = layout.restore_indices(indices)
        metrics = codebook_metrics(indices, self.vocab_size)
        metrics["kl"] = kl.detach()
        metrics["temperature"] = self.temperature.detach().float().clone()
        return QuantizerOutput(layout.from_tokens(codes), indices, self.kl_weight * kl, metrics)

    restricts_search = True

    def restricted_indices(
        self, z: Tensor, allowed: Sequence[Tensor], channel_last: bool | None = None
    ) -> Tensor:
        """The hard choice among ``allowed[0]``'s logits only (argmax, or a sample with
        ``sample_in_eval``); see `Quantizer.restricted_indices`."""
        layout = Layout.of(z, channel_last)
        if layout.dim != self.dim:
            raise QuantizerError(f"expected {self.dim} input channels, got {layout.dim}")
        (ids,) = self.check_allowed(allowed, z.device)
        logits = self.logits(layout.to_tokens(z))[:, ids.to(self.proj.weight.device)]
        sample = self.training or self.sample_in_eval
        _, indices = assign_codes(logits, self.temperature, sample, True, None)
        return layout.restore_indices(indices)

    def indices_to_codes(self, indices: Tensor, channel_last: bool | None = None) -> Tensor:
        """Codes of (compact, under a remap) indices, the exact inverse of the hard path.

        Args:
            indices: integer tensor of ``forward``'s index shape, values in [0, vocab_size).
            channel_last: ``None`` decodes a rank-3/4 grid channel-first, else channel-last.

        Returns:
            codes with ``codebook_dim`` channels, in the embedding's dtype.
        """
        indices = check_indices(indices, self.vocab_size)
        layout = Layout.for_indices(indices, 1, channel_last)
        return layout.from_tokens(self.codebook()[indices.reshape(-1)])

    def extra_repr(self) -> str:
        remap = "" if self.remap is None else f", used={self.remap.num_used}"
        return (
            f"dim={self.dim}, codebook_size={self.codebook_size}, "
            f"codebook_dim={self.codebook_dim}, straight_through={self.straight_through}{remap}"
        )


def _check_temperature(value: Any) -> float:
    value = float(value)
    if not value > 0:
        raise ConfigError(f"Gumbel temperature must be > 0, got {value}")
    return value
