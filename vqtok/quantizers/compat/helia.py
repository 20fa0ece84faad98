"""helia_edge's residual quantizers (Keras layers) with their call signatures, in PyTorch.

``EmaResidualVectorQuantizer`` (one EMA codebook per level) and ``ResidualVectorQuantizer``
(gradient codebooks), for code ported from helia_edge. They wrap the
core `vqtok.quantizers.residual` modules (residual VQ: SoundStream, arXiv 2107.03312).

Keras conventions kept: input (..., D) channel-last of any rank; ``forward`` returns ``y`` or
``(y, [idx_1, ..., idx_M])`` with flat (N,) indices; the per-level losses of the last call are
in ``losses`` (Keras ``add_loss``); ``metrics`` holds running means since `reset_metrics`, in
helia's order (perplexities, usages, bits, then the three aggregates); ``encode`` / ``decode``
/ ``get_config`` / ``from_config``. PyTorch differences: ``training=None`` means the module's
``self.training`` (Keras passes the fit flag down the same way); indices are int64; the EMA
statistics are float32 buffers; bad arguments raise `ConfigError`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from vqtok.errors import ConfigError, QuantizerError
from vqtok.quantizers.ema import EMACodebook
from vqtok.quantizers.ema_residual import EMAResidualQuantizer
from vqtok.quantizers.residual import ResidualQuantizer, ResidualStack, level_sizes

# Keras layer keywords that carry no meaning here; accepted so exported configs load.
_KERAS_KEYWORDS = {"trainable", "dtype"}


def _metric_order(num_levels: int) -> list[str]:
    names = [
        f"rvq_l{level}_{key}"
        for key in ("perplexity", "usage", "bits_per_index")
        for level in range(1, num_levels + 1)
    ]
    return names + ["rvq_perplexity_mean", "rvq_usage_mean", "rvq_bits_per_index_sum"]


class _HeliaResidual(nn.Module):
    """Shared Keras-style front end over a core residual quantizer."""

    core: ResidualStack

    def __init__(
        self,
        num_levels: int,
        num_embeddings: int | list[int] | tuple[int, ...],
        embedding_dim: int,
        beta: float,
        name: str | None,
        extra: dict[str, Any],
    ) -> None:
        super().__init__()
        unknown = sorted(set(extra) - _KERAS_KEYWORDS)
        if unknown:
            raise ConfigError(f"unknown argument(s): {', '.join(unknown)}")
        if embedding_dim <= 0 or beta <= 0:
            raise ConfigError(f"need embedding_dim > 0 and beta > 0, got {embedding_dim}, {beta}")
        self.M = num_levels
        self.D = embedding_dim
        self.Ks = level_sizes(num_levels, num_embeddings)
        self.beta = beta
        self.name = name
        self.losses: list[Tensor] = []
        self._sums: dict[str, float] = {}
        self._count = 0

    def _run(self, x: Tensor, update: bool, return_indices: bool) -> Any:
        if x.ndim < 1 or x.shape[-1] != self.D:
            raise QuantizerError(f"expected last dim {self.D}, got shape {tuple(x.shape)}")
        flat = x.reshape(-1, self.D)  # (..., D) -> (N, D)
        codes, idx, self.losses, metrics = self.core.quantize_tokens(flat, update)
        self._track(metrics)
        y = codes.reshape(x.shape)
        if return_indices:
            return y, list(idx.unbind(dim=1))
        return y

    def _track(self, metrics: dict[str, Tensor]) -> None:
        self._count += 1
        for key in _metric_order(self.M):
            self._sums[key] = self._sums.get(key, 0.0) + float(metrics[key])

    @property
    def metrics(self) -> dict[str, float]:
        """Running means of the metrics over the calls since `reset_metrics`, helia's order."""
        count = max(self._count, 1)
        return {key: self._sums.get(key, 0.0) / count for key in _metric_order(self.M)}

    def reset_metrics(self) -> None:
        self._sums.clear()
        self._count = 0

    def encode(self, x: Tensor) -> list[Tensor]:
        """M flat (N,) int64 index tensors of ``x`` (..., D); no loss, update or metrics."""
        if x.ndim < 1 or x.shape[-1] != self.D:
            raise QuantizerError(f"expected last dim {self.D}, got shape {tuple(x.shape)}")
        return self.core.encode(x.reshape(-1, self.D), channel_last=True)

    def decode(self, indices_list: list[Tensor], original_shape: tuple[int, ...]) -> Tensor:
        """``sum_l codebook_l[idx_l]`` reshaped to ``original_shape`` (..., D), float32."""
        flat = [idx.reshape(-1) for idx in indices_list]
        return self.core.decode(flat, channel_last=True).reshape(original_shape)

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_levels": self.M,
            "num_embeddings": list(self.Ks),
            "embedding_dim": self.D,
            "beta": self.beta,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Any:
        return cls(**config)


class EmaResidualVectorQuantizer(_HeliaResidual):
    """helia_edge ``EmaResidualVectorQuantizer(num_levels, num_embeddings, embedding_dim, ...)``.

    Args:
        num_levels: M >= 1.
        num_embeddings: K for every level, or a list of M sizes.
        embedding_dim: D > 0.
        beta: commitment weight > 0.
        ema_decay: EMA decay in [0, 1).
        epsilon: Laplace smoothing epsilon.
        name: layer name (kept for ``get_config``).

    ``forward(x, training=None, return_indices=False)``: EMA updates happen when ``training``
    is true (None: the module's training mode).
    """

    core: EMAResidualQuantizer

    def __init__(
        self,
        num_levels: int,
        num_embeddings: int | list[int] | tuple[int, ...],
        embedding_dim: int,
        beta: float = 0.25,
        ema_decay: float = 0.99,
        epsilon: float = 1e-5,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_levels, num_embeddings, embedding_dim, beta, name, kwargs)
        self.ema_decay = ema_decay
        self.epsilon = epsilon
        self.core = EMAResidualQuantizer(
            embedding_dim, num_levels, self.Ks, beta, ema_decay, epsilon
        )

    def forward(
        self, x: Tensor, training: bool | None = None, return_indices: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Quantize ``x`` (..., D); returns ``y`` (x's shape, ST) or ``(y, M x (N,) indices)``."""
        update = self.training if training is None else bool(training)
        result: Tensor | tuple[Tensor, list[Tensor]] = self._run(x, update, return_indices)
        return result

    @property
    def trainable_weights(self) -> list[Tensor]:
        return []

    @property
    def non_trainable_weights(self) -> list[Tensor]:
        """Per level: codebook (K, D), EMA counts (K,), EMA sums (K, D) (helia's 3M weights)."""
        out = []
        for codebook in self.core.codebooks:
            assert isinstance(codebook, EMACodebook)
            out += [codebook.weight, codebook.cluster_size, codebook.embed_avg]
        return out

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "ema_decay": self.ema_decay, "epsilon": self.epsilon}


class ResidualVectorQuantizer(_HeliaResidual):
    """helia_edge ``ResidualVectorQuantizer(num_levels, num_embeddings, embedding_dim, beta)``.

    Gradient-trained codebooks; per-level loss ``beta * commitment + codebook``.
    ``forward(x, return_indices=False)`` (no training argument, as in the reference).
    """

    core: ResidualQuantizer

    def __init__(
        self,
        num_levels: int,
        num_embeddings: int | list[int] | tuple[int, ...],
        embedding_dim: int,
        beta: float = 0.25,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_levels, num_embeddings, embedding_dim, beta, name, kwargs)
        self.core = ResidualQuantizer(embedding_dim, num_levels, self.Ks, beta)

    def forward(
        self, x: Tensor, return_indices: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Quantize ``x`` (..., D); returns ``y`` (x's shape, ST) or ``(y, M x (N,) indices)``."""
        result: Tensor | tuple[Tensor, list[Tensor]] = self._run(x, False, return_indices)
        return result

    @property
    def trainable_weights(self) -> list[Tensor]:
        return list(self.core.codebooks)

    @property
    def non_trainable_weights(self) -> list[Tensor]:
        return []


__all__ = ["EmaResidualVectorQuantizer", "ResidualVectorQuantizer"]
