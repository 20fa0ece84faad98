"""The state of one training run between steps: model, optimiser, weight average, best score.

`RunState` saves and resumes checkpoints (`vqtok.train.state`) and evaluates the weights a run
ships (the weight average when there is one), keeping ``run/best`` at the best held-out PSNR.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from vqtok.families.vqtok import VideoTokenizer
from vqtok.io.checkpoint import read_info, save_pretrained
from vqtok.train.config import RunConfig
from vqtok.train.eval import evaluate
from vqtok.train.state import load_checkpoint, save_checkpoint
from vqtok.train.weight_ema import WeightEMA

__all__ = ["RunState"]


class RunState:
    """The state of one training run between steps: model, optimiser, averages, counters."""

    def __init__(self, config: RunConfig, run: Path, dev: torch.device) -> None:
        self.config, self.cfg, self.run, self.dev = config, config.train, run, dev
        self.model = VideoTokenizer(config.model)
        for part in self.frozen_parts():
            part.requires_grad_(False)
        self.opt = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=self.cfg.lr,
            betas=(self.cfg.beta1, self.cfg.beta2),
            weight_decay=self.cfg.weight_decay,
        )
        self.ema = WeightEMA(self.model, self.cfg.weight_ema) if self.cfg.weight_ema else None
        self.best_psnr = -math.inf
        # a decoder-only run gives the indices of the model it started from (and of its own
        # lineage): every model it writes lists their weight hashes, so decode takes them
        self.decodes_indices_of: tuple[str, ...] = ()

    def frozen_parts(self) -> list[nn.Module]:
        """The modules a decoder-only run (``train.trainable == "decoder"``) keeps fixed."""
        if self.cfg.trainable == "all":
            return []
        m = self.model
        norm = [] if m.pre_quant_norm is None else [m.pre_quant_norm]
        return [m.encoder, m.quantizer, *norm]

    def train_mode(self) -> None:
        """Training mode for a step, frozen parts in eval mode (no codebook updates)."""
        self.model.train()
        for part in self.frozen_parts():
            part.eval()

    def save(self, done: int, elapsed: float) -> None:
        extra = self.ema.state() if self.ema is not None else None
        save_checkpoint(self.run / "checkpoint", self.model, self.opt, self.config, done,
                        elapsed, extra, self.decodes_indices_of)

    def resume(self) -> tuple[int, float]:
        start, elapsed, extra = load_checkpoint(
            self.run / "checkpoint", self.model, self.opt, self.config
        )
        if self.ema is not None:
            self.ema.load(extra)
        self.decodes_indices_of = read_info(self.run / "checkpoint" / "model").decodes_indices_of
        best = self.run / "best.json"
        if best.exists():
            self.best_psnr = float(json.loads(best.read_text()).get("eval_psnr", -math.inf))
        return start, elapsed

    def shipped(self) -> contextlib.AbstractContextManager[None]:
        """The weights to evaluate and ship: the average when there is one."""
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()

    def evaluate(self, clips: list[Tensor], done: int) -> dict[str, float]:
        """Held-out metrics of the shipped weights; a new best is saved to ``run/best``."""
        with self.shipped():
            result = evaluate(self.model, clips, self.dev)
            if result and result["eval_psnr"] > self.best_psnr:
                self.best_psnr = result["eval_psnr"]
                save_pretrained(self.model, self.run / "best", name=self.config.name,
                                decodes_indices_of=self.decodes_indices_of)
                record = json.dumps({"step": done, **result}) + "\n"
                (self.run / "best.json").write_text(record)
        return result
