"""`vqtok.families.memory`: when a run works in tiles, and when it spills carried frames."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.tiny import TINY_CONFIG
from vqtok.errors import ConfigError
from vqtok.families.memory import GB, MemoryPlan, estimate_bytes, parse_tile
from vqtok.families.vqtok import VideoTokenizer


@pytest.fixture(scope="module")
def model() -> VideoTokenizer:
    torch.manual_seed(0)
    return VideoTokenizer(TINY_CONFIG).eval()


def test_parse_tile() -> None:
    assert parse_tile("auto") == "auto"
    assert parse_tile("OFF") is None
    assert parse_tile("256x512") == (256, 512)
    for bad in ("512", "x", "16x8", "-16x16"):
        with pytest.raises(ConfigError):
            parse_tile(bad)


def test_estimates_grow_with_the_frame_and_the_step(model: VideoTokenizer) -> None:
    small = estimate_bytes(model, 64, 64, 4)
    assert estimate_bytes(model, 128, 128, 4) == (4 * small[0], 4 * small[1])
    assert estimate_bytes(model, 64, 64, 16)[1] > small[1] > 0
    assert estimate_bytes(model, 64, 64, 2, decode=True)[0] > 0


def test_auto_tiles_only_past_the_budget(model: VideoTokenizer, tmp_path: Path) -> None:
    assert MemoryPlan(max_memory=64).tiling_for(model, 1080, 1920, 16) is None
    tiled = MemoryPlan(max_memory=0.5).tiling_for(model, 1080, 1920, 16)
    assert tiled is not None and (tiled.height, tiled.width) == (512, 512)
    assert MemoryPlan(tile=None, max_memory=0.1).tiling_for(model, 2160, 3840, 16) is None
    fixed = MemoryPlan(tile=(64, 128), max_memory=64).tiling_for(model, 32, 32, 4)
    assert fixed is not None and (fixed.height, fixed.width, fixed.spill_dir) == (64, 128, None)
    # carried frames over a quarter of the budget go to disk, into the given folder
    carried = estimate_bytes(model, 2160, 3840, 4)[0]
    plan = MemoryPlan(max_memory=2 * carried / GB, spill_dir=str(tmp_path))
    assert plan.tiling_for(model, 2160, 3840, 4).spill_dir == str(tmp_path)
    roomy = MemoryPlan(tile=(512, 512), max_memory=8 * carried / GB)
    assert roomy.tiling_for(model, 2160, 3840, 4).spill_dir is None


def test_budget_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="max-memory"):
        MemoryPlan(max_memory=0)


def test_a_tile_size_for_a_model_that_cannot_tile_is_an_error() -> None:
    from vqtok.families.magvit2 import Magvit2Config, Magvit2Tokenizer

    model = Magvit2Tokenizer(Magvit2Config(ch=32, num_res_blocks=1, z_channels=4))
    assert MemoryPlan(max_memory=0.1).tiling_for(model, 2160, 3840, 16) is None  # auto: untiled
    with pytest.raises(ConfigError, match="open-magvit2-video model cannot work in spatial"):
        MemoryPlan(tile=(512, 512)).tiling_for(model, 64, 64, 16)
