"""The pretrained models in models/: loadable, within the size budget, and really trained.

Each shipped directory holds config.json + model.safetensors + README.md (the card) +
train.json (the exact `vqtok train` config that made it) and the configs of any later stages;
the training log beside the card is TRAINING.md (packaged with the model, as every file there).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vqtok.api import DEFAULT_MODEL
from vqtok.families.vqtok import VideoTokenizer
from vqtok.io.checkpoint import load_pretrained, parameter_count
from vqtok.io.model_dirs import REPO_MODELS
from vqtok.metrics import psnr
from vqtok.train.config import RunConfig

SHIPPED = sorted(p for p in REPO_MODELS.iterdir() if (p / "config.json").exists())


def test_an_lfq_and_an_ema_vq_model_are_shipped_and_the_default_is_one_of_them() -> None:
    kinds = {json.loads((p / "config.json").read_text())["config"]["quantizer"] for p in SHIPPED}
    assert kinds & {"lfq", "residual_lfq"} and kinds & {"ema_vq", "ema_rvq"}
    assert DEFAULT_MODEL in {p.name for p in SHIPPED}


def smooth_clip(frames: int = 17, size: int = 64) -> torch.Tensor:
    """(1, 3, T, H, W) in [-1, 1]: a slowly drifting low-frequency colour pattern."""
    t = torch.linspace(0, 1, frames)[:, None, None]
    y, x = torch.meshgrid(torch.linspace(0, 3, size), torch.linspace(0, 3, size), indexing="ij")
    channels = [torch.sin(x + 2 * t + k) * torch.cos(y - t + 2 * k) * 0.8 for k in range(3)]
    return torch.stack(channels)[None]


@pytest.mark.parametrize("directory", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_model_is_causal_4x8x8_small_and_reconstructs(directory: Path) -> None:
    model = load_pretrained(directory)
    assert isinstance(model, VideoTokenizer)
    assert (model.temporal_factor, model.spatial_factor) == (4, 8)
    params = parameter_count(directory)  # every value in model.safetensors, as `info` says
    assert params <= 20_000_000
    card = (directory / "README.md").read_text()
    assert f"| parameters | {params:,} (" in card, "the card states the exact parameter count"
    # train.json and any later stage (--init-from the previous one's model): each is in the
    # card's commands and builds exactly the shipped parameters; one is the shipped config
    stages = [p for p in sorted(directory.glob("*.json")) if p.name != "config.json"]
    assert directory / "train.json" in stages
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    configs = set()
    for stage in stages:
        run = RunConfig.from_file(stage)
        assert run.name == directory.name
        assert f"vqtok train models/{directory.name}/{stage.name}" in card
        built = VideoTokenizer(run.model).state_dict()
        assert {k: v.shape for k, v in built.items()} == shapes, stage.name
        configs.add(run.model)
    assert model.config in configs
    video = smooth_clip()
    torch.manual_seed(0)
    untrained = VideoTokenizer(model.config).eval()
    with torch.no_grad():
        indices = model.encode(video)
        assert indices.shape[:4] == (1, 5, 8, 8)
        recon = model.decode(indices).clamp(-1, 1)
        baseline = untrained.decode(untrained.encode(video)).clamp(-1, 1)
    # the same architecture untrained gives noise around the pooled clip at best
    gain = psnr(video, recon, data_range=2.0) - psnr(video, baseline, data_range=2.0)
    assert float(gain) > 2.0
    assert F.l1_loss(recon, video) < F.l1_loss(baseline, video)
