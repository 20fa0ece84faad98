"""Training configuration: one JSON file with the model's architecture and the training options.

    {"name": "vqtok-lfq", "model": {...TokenizerConfig...}, "train": {...TrainConfig...}}

Both parts are frozen dataclasses whose ``from_dict`` rejects unknown keys and wrong types.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqtok.errors import ConfigError
from vqtok.families.vqtok import TokenizerConfig
from vqtok.jsonfields import dataclass_from_json, dataclass_to_json

TRAINABLE = ("all", "decoder")


@dataclass(frozen=True)
class TrainConfig:
    """Options of a training run (the architecture lives in `TokenizerConfig`).

    Data:
        clip_frames: frames per training clip (1 + k * temporal_factor).
        crop_size: side of the random square crop, pixels.
        temporal_strides: strides drawn per clip (1 = consecutive frames; 0 = one frame held:
            a still clip, where any change in the output is flicker).
        flip: random horizontal flips.
        short_side: footage is decoded so that its short side has this many pixels.
        holdout_frames: the last frames of every video, never trained on, for evaluation.
        eval_size: side of the centre crop used for held-out evaluation.
        image_every: every N-th step (0 = never) is an image step: its batch is
            batch_size * clip_frames one-frame crops at native scale, from every source
            (video frames and stills), so the causal first-frame path that encodes a photograph
            or a video's first frame is trained on as many pixels as a clip step.
        image_crop_size: side of an image step's crops (0 = crop_size); fewer, larger crops
            keep the step's pixel count, so the network sees more context per crop at the
            same cost.
        source_frame_cap: sources are drawn in proportion to their frames, each counting at
            most this many (0 = no cap), so one long film does not fill most batches.
        grey_fraction: the share of clips made grey (luma in every channel), so grey footage
            comes back grey.
    Optimisation:
        steps, batch_size, lr (peak), warmup_steps (linear), min_lr_ratio (cosine floor),
        weight_decay, beta1, beta2 (AdamW), grad_clip (global norm; 0 = off).
    Loss:
        l1_weight, mse_weight, ssim_weight: reconstruction terms (SSIM as 1 - SSIM, on
        every channel of every frame); seam_weight: L1 between the reconstruction's and the clip's
        neighbour differences across the tokenizer's block boundaries (`seam_loss`: it
        penalises a block grid, which pixel losses barely see); temporal_weight: L1 between
        the reconstruction's and the clip's frame-to-frame changes (`temporal_loss`: flicker
        and doubled moving edges); boundary_weight: the same L1 on the changes across the
        model's temporal group boundaries only (the tokenizer's flicker); quantizer_weight
        multiplies the quantizer's own loss (commitment / codebook / entropy / KL);
        entropy_warmup_steps ramps an LFQ entropy weight linearly from 0.
    Quantizer machinery:
        gumbel_temperature (start, end) annealed exponentially over gumbel_anneal_steps;
        init_codebook_from_data (after the first step, every code of a learned codebook is
        re-seeded from that batch's latents, the cheap form of k-means initialisation; None,
        the default: only a codebook the run starts fresh, never one inherited with
        ``--init-from``; true: an inherited one too; false: never),
        dead_code_every (steps between re-seeding codes unused since the last time; 0 = off),
        dead_code_threshold; kmeans_init_batches (> 0: before training, residual k-means of
        the latents of that many batches becomes the codebooks, replacing
        init_codebook_from_data; residual_lfq and fsq fit their maps to them instead);
        fit_shortcut_batches (a "linear" shortcut's principal
        components are fitted on that many batches before training, unless fine-tuning);
        quantizer_dropout (probability that a step runs only the first k < L residual levels,
        k uniform, so that every prefix of the levels decodes well).
    Weights:
        weight_ema (decay of an average of the weights that is evaluated and shipped; 0 = off);
        trainable: ``"all"``, or ``"decoder"`` for a finish that trains the decoder alone: the
        encoder and the quantizer are frozen (no gradients, no codebook updates), so the codes
        stay those of the weights it starts from (``--init-from`` / ``--resume``; needs
        ``dead_code_every`` 0).
    Bookkeeping:
        log_every, eval_every, save_every (steps), seed, prefetch (batches built ahead).
    """

    clip_frames: int = 9
    crop_size: int = 128
    temporal_strides: tuple[int, ...] = (1, 2)
    flip: bool = True
    short_side: int = 256
    holdout_frames: int = 25
    eval_size: int = 256
    image_every: int = 0
    image_crop_size: int = 0
    source_frame_cap: int = 0
    grey_fraction: float = 0.0
    steps: int = 10_000
    batch_size: int = 4
    lr: float = 1e-3
    warmup_steps: int = 200
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    ssim_weight: float = 0.0
    seam_weight: float = 0.0
    temporal_weight: float = 0.0
    boundary_weight: float = 0.0
    quantizer_weight: float = 1.0
    entropy_warmup_steps: int = 0
    gumbel_temperature: tuple[float, ...] = (1.0, 0.5)
    gumbel_anneal_steps: int = 0
    init_codebook_from_data: bool | None = None
    dead_code_every: int = 200
    dead_code_threshold: float = 1.0
    kmeans_init_batches: int = 0
    fit_shortcut_batches: int = 32
    quantizer_dropout: float = 0.0
    weight_ema: float = 0.0
    trainable: str = "all"
    log_every: int = 10
    eval_every: int = 500
    save_every: int = 500
    seed: int = 0
    prefetch: int = 4

    def __post_init__(self) -> None:
        positive = ("clip_frames", "crop_size", "short_side", "eval_size", "steps", "batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.grey_fraction <= 1.0:
            raise ConfigError(f"train.grey_fraction must be in [0, 1], got {self.grey_fraction}")
        if self.source_frame_cap < 0:
            raise ConfigError(f"train.source_frame_cap must be >= 0, got {self.source_frame_cap}")
        if self.image_crop_size < 0:
            raise ConfigError(f"train.image_crop_size must be >= 0, got {self.image_crop_size}")
        if self.image_every < 0:
            raise ConfigError(f"train.image_every must be >= 0, got {self.image_every}")
        if not self.temporal_strides or min(self.temporal_strides) < 0:
            raise ConfigError(f"train.temporal_strides must be >= 0, got {self.temporal_strides}")
        if len(self.gumbel_temperature) != 2 or min(self.gumbel_temperature) <= 0:
            raise ConfigError("train.gumbel_temperature must be [start, end], both > 0")
        if not 0.0 <= self.quantizer_dropout <= 1.0:
            raise ConfigError(f"train.quantizer_dropout must be in [0, 1], got "
                              f"{self.quantizer_dropout}")
        if not 0.0 <= self.weight_ema < 1.0:
            raise ConfigError(f"train.weight_ema must be in [0, 1), got {self.weight_ema}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.trainable not in TRAINABLE:
            raise ConfigError(f"train.trainable must be one of {TRAINABLE}, got {self.trainable!r}")
        if self.trainable == "decoder" and self.dead_code_every:
            raise ConfigError("train.trainable 'decoder' freezes the codebooks: set "
                              "train.dead_code_every to 0")


@dataclass(frozen=True)
class RunConfig:
    """A whole training config file: model name, architecture, training options."""

    name: str
    model: TokenizerConfig
    train: TrainConfig

    @classmethod
    def from_dict(cls, data: Any) -> RunConfig:
        if not isinstance(data, dict):
            raise ConfigError("a training config must be a JSON object")
        unknown = sorted(set(data) - {"name", "model", "train"})
        if unknown:
            raise ConfigError(f"unknown training config key(s): {', '.join(unknown)}")
        name = data.get("name", "vqtok-model")
        if not isinstance(name, str) or not name:
            raise ConfigError("training config 'name' must be a non-empty string")
        return cls(
            name=name,
            model=TokenizerConfig.from_dict(data.get("model", {})),
            train=train_config_from_dict(data.get("train", {})),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> RunConfig:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read training config: {e}", path) from e
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(e.message, path) from e

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model.to_dict(),
                "train": dataclass_to_json(self.train)}


def train_config_from_dict(data: Any) -> TrainConfig:
    """`TrainConfig` from a JSON object; unknown keys and wrong types are a `ConfigError`."""
    config: TrainConfig = dataclass_from_json(TrainConfig, data, "train option")
    return config
