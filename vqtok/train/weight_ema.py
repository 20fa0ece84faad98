"""An exponential moving average of a model's trained parameters (the weights that ship).

Averaging the weights over the last few hundred steps smooths out the noise of the final
optimisation steps; the average usually reconstructs better than the last iterate, and it is
what `vqtok train` evaluates and saves when ``train.weight_ema`` is on. Buffers (EMA codebooks,
shortcut bases) are not averaged: they already are averages, or fixed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from vqtok.errors import ConfigError


class WeightEMA:
    """Shadow copies ``s <- decay * s + (1 - decay) * p`` of every trainable parameter.

    Args:
        model: the model being trained; its parameters are read, never replaced.
        decay: in [0, 1). The first ``1 / (1 - decay)`` steps are warmed up: the effective
            decay at update n is ``min(decay, (1 + n) / (10 + n))``, so early averages do not
            remember the random initialisation for long.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"weight EMA decay must lie in [0, 1), got {decay}")
        self.model, self.decay, self.updates = model, decay, 0
        self.shadow = {
            name: p.detach().float().clone() for name, p in model.named_parameters()
        }

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current parameters into the average (call after each optimiser step)."""
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, p in self.model.named_parameters():
            self.shadow[name].lerp_(p.detach().float(), 1.0 - d)
        self.updates += 1

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the model holds the averaged weights; restored afterwards."""
        saved = {name: p.detach().clone() for name, p in self.model.named_parameters()}
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in self.shadow.items():
                params[name].copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in saved.items():
                    params[name].copy_(value)

    def state(self) -> dict[str, Tensor]:
        """Tensors to checkpoint: the averages and the update count."""
        out = {f"ema.{name}": t.cpu().contiguous() for name, t in self.shadow.items()}
        out["ema_updates"] = torch.tensor(self.updates)
        return out

    def load(self, tensors: dict[str, Tensor]) -> None:
        """Restore from `state`'s tensors (missing entries keep the current weights)."""
        for name in self.shadow:
            if f"ema.{name}" in tensors:
                self.shadow[name].copy_(tensors[f"ema.{name}"])
        self.updates = int(tensors.get("ema_updates", torch.tensor(0)))
