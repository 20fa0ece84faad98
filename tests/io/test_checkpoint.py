"""Model directories: save -> load round trip, strict loading errors, name resolution."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.tiny import tiny_config
from vqtok.errors import CheckpointError
from vqtok.families.vqtok import TokenizerConfig, VideoTokenizer
from vqtok.io import model_dirs
from vqtok.io.checkpoint import (
    list_models,
    load_pretrained,
    read_info,
    save_pretrained,
    weights_sha256,
)
from vqtok.io.model_dirs import resolve_model


def tiny(kind: str = "fsq", options: dict[str, Any] | None = None) -> VideoTokenizer:
    torch.manual_seed(0)
    config = tiny_config(kind, options or {"levels": [5, 4, 4, 3]}, temporal_factor=2)
    return VideoTokenizer(config).eval()


def clip(t: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.rand(2, 3, t, 16, 16, generator=g) * 2 - 1


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return save_pretrained(tiny(), tmp_path / "tiny-model", card="# tiny\n")


def rewrite_weights(directory: Path, edit: Any) -> None:
    tensors = load_file(str(directory / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(directory / "model.safetensors"))


def rewrite_config(directory: Path, edit: Any) -> None:
    meta = json.loads((directory / "config.json").read_text())
    edit(meta)
    (directory / "config.json").write_text(json.dumps(meta))


# ---------------------------------------------------------------- round trip


@pytest.mark.parametrize(
    ("kind", "options"),
    [("fsq", None), ("lfq", {"codebook_size": 16}), ("ema_rvq", {"num_levels": 2,
                                                                  "codebook_sizes": 8})],
)
def test_save_load_gives_identical_outputs(tmp_path: Path, kind: str, options: Any) -> None:
    model = tiny(kind, options)
    save_pretrained(model, tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m")
    assert isinstance(loaded, VideoTokenizer)
    assert loaded.config == model.config
    assert not loaded.training
    with torch.no_grad():
        indices = model.encode(clip())
        assert torch.equal(loaded.encode(clip()), indices)
        assert torch.equal(loaded.decode(indices), model.decode(indices))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_directory_layout_and_config_json(saved: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == [
        "README.md", "config.json", "model.safetensors"
    ]
    meta = json.loads((saved / "config.json").read_text())
    assert meta["format_version"] == 1
    assert meta["family"] == "vqtok"
    assert meta["name"] == "tiny-model"
    assert meta["input"] == {
        "value_range": [-1, 1], "channels": "RGB", "temporal": "causal", "window": None
    }
    assert TokenizerConfig.from_dict(meta["config"]) == tiny().config
    assert (saved / "README.md").read_text() == "# tiny\n"
    info = read_info(saved)
    assert (info.name, info.family) == ("tiny-model", "vqtok")


def test_save_replaces_a_model_directory_and_leaves_no_temp_files(saved: Path) -> None:
    other = tiny()
    with torch.no_grad():
        other.decoder.conv_out.bias.fill_(0.5)
    save_pretrained(other, saved, name="renamed")
    assert sorted(p.name for p in saved.parent.iterdir()) == ["tiny-model"]
    assert not (saved / "README.md").exists()
    assert read_info(saved).name == "renamed"
    loaded = load_pretrained(saved)
    assert torch.equal(loaded.decoder.conv_out.bias, torch.full((3,), 0.5))


def test_save_refuses_to_replace_a_directory_with_other_files(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.mp4").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="precious.mp4"):
        save_pretrained(tiny(), tmp_path / "data")
    assert (tmp_path / "data" / "precious.mp4").exists()


def test_load_casts_all_but_the_quantizer(saved: Path) -> None:
    model = load_pretrained(saved, dtype=torch.bfloat16)
    assert model.encoder.conv_in.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.quantizer.parameters())
    with torch.no_grad():
        indices = model.encode(clip())  # a float32 video into bfloat16 weights
        assert indices.shape == (2, 3, 2, 2) and int(indices.max()) < model.quantizer.codebook_size
        assert model.decode(indices).dtype == torch.bfloat16


def test_loading_never_unpickles(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle used on the load path")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    load_pretrained(saved)


def test_weights_sha256_is_the_hash_of_the_weights_file(saved: Path) -> None:
    expected = hashlib.sha256((saved / "model.safetensors").read_bytes()).hexdigest()
    assert weights_sha256(saved) == expected


# ---------------------------------------------------------------- strict loading


def test_missing_tensor_is_named(saved: Path) -> None:
    rewrite_weights(saved, lambda t: t.pop("decoder.conv_out.bias"))
    with pytest.raises(CheckpointError, match="missing tensor.*decoder.conv_out.bias"):
        load_pretrained(saved)


def test_unexpected_tensor_is_named(saved: Path) -> None:
    rewrite_weights(saved, lambda t: t.update(extra_head=torch.zeros(2)))
    with pytest.raises(CheckpointError, match="unexpected tensor.*extra_head"):
        load_pretrained(saved)


def test_mis_shaped_tensor_is_named(saved: Path) -> None:
    rewrite_weights(saved, lambda t: t.update({"encoder.conv_in.bias": torch.zeros(9)}))
    match = r"encoder.conv_in.bias \(9,\) \(model expects \(8,\)"
    with pytest.raises(CheckpointError, match=match):
        load_pretrained(saved)


def test_nan_weights_are_named(saved: Path) -> None:
    def poison(t: dict[str, torch.Tensor]) -> None:
        t["encoder.mid.conv1.weight"][0, 0, 0, 0, 0] = float("nan")

    rewrite_weights(saved, poison)
    with pytest.raises(CheckpointError, match="NaN.*encoder.mid.conv1.weight"):
        load_pretrained(saved)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_safetensors(saved: Path, damage: str) -> None:
    path = saved / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x07" * 64, "empty": b""}
                     [damage])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_pretrained(saved)


def test_missing_weights_file(saved: Path) -> None:
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        load_pretrained(saved)


def test_unknown_model_config_key_is_named(saved: Path) -> None:
    rewrite_config(saved, lambda m: m["config"].update(dropout=0.1))
    with pytest.raises(CheckpointError, match="dropout"):
        load_pretrained(saved)


def test_unknown_top_level_key_is_named(saved: Path) -> None:
    rewrite_config(saved, lambda m: m.update(optimizer="adam"))
    with pytest.raises(CheckpointError, match="unknown key.*optimizer"):
        load_pretrained(saved)


@pytest.mark.parametrize("value", ["ab" * 32, ["ab" * 31], ["AB" * 32], [3]])
def test_decodes_indices_of_must_list_sha256_digests(saved: Path, value: Any) -> None:
    rewrite_config(saved, lambda m: m.update(decodes_indices_of=value))
    with pytest.raises(CheckpointError, match="decodes_indices_of"):
        load_pretrained(saved)


def test_wrong_format_version(saved: Path) -> None:
    rewrite_config(saved, lambda m: m.update(format_version=2))
    with pytest.raises(CheckpointError, match="format_version 2"):
        load_pretrained(saved)


def test_unknown_family(saved: Path) -> None:
    rewrite_config(saved, lambda m: m.update(family="dalle"))
    with pytest.raises(CheckpointError, match="unknown family 'dalle'"):
        load_pretrained(saved)


def test_input_convention_mismatch(saved: Path) -> None:
    rewrite_config(saved, lambda m: m["input"].update(value_range=[0, 1]))
    with pytest.raises(CheckpointError, match="value_range"):
        load_pretrained(saved)


def test_bad_json_and_missing_config(saved: Path) -> None:
    (saved / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable JSON"):
        load_pretrained(saved)
    (saved / "config.json").unlink()
    with pytest.raises(CheckpointError, match="not a model directory"):
        read_info(saved)


# ---------------------------------------------------------------- names


def test_names_resolve_against_vqtok_models(
    saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_dirs, "REPO_MODELS", tmp_path / "no-repo-models")
    monkeypatch.setenv("VQTOK_MODELS", str(tmp_path / "elsewhere") + ":" + str(saved.parent))
    assert resolve_model("tiny-model") == saved
    assert isinstance(load_pretrained("tiny-model"), VideoTokenizer)
    assert [m.name for m in list_models()] == ["tiny-model"]
    assert weights_sha256("tiny-model") == weights_sha256(saved)


def test_repo_models_come_before_vqtok_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, env = tmp_path / "repo", tmp_path / "env"
    save_pretrained(tiny(), repo / "m", name="from-repo")
    save_pretrained(tiny(), env / "m", name="from-env")
    monkeypatch.setattr(model_dirs, "REPO_MODELS", repo)
    monkeypatch.setenv("VQTOK_MODELS", str(env))
    assert resolve_model("m") == repo / "m"
    assert [m.name for m in list_models()] == ["from-repo"]


@pytest.mark.parametrize("name", ["../secret", "a/../secret", "a..b", ".hidden", "x y"])
def test_names_cannot_escape(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name is one plain directory name; a model one level above a search root stays hidden."""
    save_pretrained(tiny(), tmp_path / "root" / "secret")
    (tmp_path / "root" / "models" / "a").mkdir(parents=True)
    (tmp_path / "cwd").mkdir()
    monkeypatch.setattr(model_dirs, "REPO_MODELS", tmp_path / "root" / "models")
    monkeypatch.setenv("VQTOK_MODELS", str(tmp_path / "root" / "models"))
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(CheckpointError):
        resolve_model(name)


def test_unknown_name_says_where_it_looked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VQTOK_MODELS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=f"no model named 'nope' in .*{tmp_path}"):
        resolve_model("nope")
