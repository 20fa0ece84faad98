"""One parameter count everywhere: `vqtok.io.checkpoint.parameter_count` (every value stored in
model.safetensors) is what ``vqtok info`` prints and what the card `vqtok train` writes says."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from tests.clips import make_clip
from vqtok.cli.app import app
from vqtok.families.vqtok import TokenizerConfig, VideoTokenizer
from vqtok.io.checkpoint import parameter_count, save_pretrained
from vqtok.train.config import RunConfig
from vqtok.train.loop import train

# an EMA codebook is a buffer, not an nn.Parameter: the two candidate definitions differ here
EMA_MODEL = {
    "channels": 8, "channel_multipliers": [1, 1, 2, 2], "num_res_blocks": 1,
    "temporal_factor": 2, "latent_dim": 4, "norm_groups": 4,
    "quantizer": "ema_vq", "quantizer_options": {"codebook_size": 16},
}


def test_parameter_count_is_every_stored_value_the_same_in_memory_on_disk_and_in_info(
    tmp_path: Path,
) -> None:
    model = VideoTokenizer(TokenizerConfig.from_dict(EMA_MODEL))
    stored = sum(t.numel() for t in model.state_dict().values())
    assert stored > sum(p.numel() for p in model.parameters())
    directory = save_pretrained(model, tmp_path / "m")
    assert parameter_count(model) == parameter_count(directory) == stored
    result = CliRunner().invoke(app, ["info", str(directory), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["parameters"] == stored
    table = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["info", str(directory)]).stdout
    assert f"{stored:,} (every value in model.safetensors)" in table


def test_the_card_train_writes_states_the_same_count(tmp_path: Path) -> None:
    (tmp_path / "footage").mkdir()
    make_clip(tmp_path / "footage" / "a.mp4", frames=12, size=(32, 32), fps=8)
    options = {"clip_frames": 5, "crop_size": 16, "short_side": 32, "holdout_frames": 5,
               "eval_size": 16, "steps": 1, "batch_size": 1, "warmup_steps": 1,
               "log_every": 1, "eval_every": 0, "save_every": 1, "prefetch": 1}
    config = RunConfig.from_dict({"name": "tiny", "model": EMA_MODEL, "train": options})
    torch.manual_seed(0)
    result = train(config, [tmp_path / "footage"], tmp_path / "run", device="cpu")
    assert result.model_dir is not None
    count = parameter_count(result.model_dir)
    assert f"Parameters: {count:,} " in (result.model_dir / "README.md").read_text()
