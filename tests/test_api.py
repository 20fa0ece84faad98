"""vqtok.load / Tokenizer: loading by name or path, padding and trimming, streaming, dtypes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vqtok
from tests.tiny import tiny_config
from vqtok import runtime
from vqtok.api import Tokenizer
from vqtok.errors import CheckpointError, ConfigError, VqtokError
from vqtok.families.vqtok import VideoTokenizer
from vqtok.io import checkpoint, model_dirs
from vqtok.runtime import resolve_device, resolve_dtype


def tiny_model() -> VideoTokenizer:
    torch.manual_seed(0)
    return VideoTokenizer(tiny_config("fsq", {"levels": [5, 4, 4, 3]})).eval()


def clip(b: int = 2, t: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.rand(b, 3, t, 16, 16, generator=g) * 2 - 1


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return vqtok.save_pretrained(tiny_model(), tmp_path / "tiny", name="tiny")


@pytest.fixture
def tok(model_dir: Path) -> Tokenizer:
    return vqtok.load(model_dir, device="cpu")


def test_load_describes_the_model(tok: Tokenizer, model_dir: Path) -> None:
    assert isinstance(tok, vqtok.Tokenizer)
    assert tok.name == "tiny" and tok.family == "vqtok" and tok.path == model_dir
    assert tok.device == torch.device("cpu") and tok.dtype == torch.float32
    assert tok.codebook_size == 5 * 4 * 4 * 3 and tok.num_codebooks == 1
    assert tok.config == tiny_model().config
    assert tok.weights_sha256 == checkpoint.weights_sha256(model_dir)
    assert (tok.temporal_factor, tok.spatial_factor) == (4, 8)


def test_load_none_means_the_default_model_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_dirs, "REPO_MODELS", tmp_path / "empty")
    monkeypatch.setenv("VQTOK_MODELS", str(tmp_path / "zoo"))
    from vqtok.api import DEFAULT_MODEL as default
    with pytest.raises(CheckpointError, match=default):
        vqtok.load(device="cpu")
    vqtok.save_pretrained(tiny_model(), tmp_path / "zoo" / default)
    assert vqtok.load(device="cpu").name == default


def test_three_lines_match_the_model(tok: Tokenizer) -> None:
    model, video = tiny_model(), clip(t=9)
    indices = tok.encode(video)
    with torch.no_grad():
        assert torch.equal(indices, model.encode(video))
        expected = model.decode(indices).clamp(-1, 1)
    torch.testing.assert_close(tok.decode(indices), expected)


def test_encode_pads_with_the_last_frame_and_decode_trims(tok: Tokenizer) -> None:
    video = clip(t=6)  # padded to 9 = 1 + 2*4
    assert tok.padded_frames(6) == 9
    assert tok.latent_shape(6, 16, 16) == (3, 2, 2)
    padded = torch.cat([video, video[:, :, 5:6], video[:, :, 5:6], video[:, :, 5:6]], dim=2)
    indices = tok.encode(video)
    assert indices.shape == (2, 3, 2, 2)
    assert torch.equal(indices, tok.encode(padded))
    out = tok.decode(indices, frames=6)
    assert out.shape == (2, 3, 6, 16, 16) and out.dtype == torch.float32
    assert float(out.abs().max()) <= 1.0
    torch.testing.assert_close(out, tok.decode(indices)[:, :, :6])
    with pytest.raises(VqtokError, match="cannot trim 9 decoded frames to 10"):
        tok.decode(indices, frames=10)


def test_images(tok: Tokenizer) -> None:
    images = clip(t=1)[:, :, 0]
    indices = tok.encode(images)
    assert indices.shape == (2, 1, 2, 2)
    assert tok.decode(indices).shape == (2, 3, 1, 16, 16)


@pytest.mark.parametrize("bad", [torch.zeros(1, 4, 5, 16, 16), torch.zeros(1, 3, 5, 16, 16,
                                                                            dtype=torch.uint8)])
def test_bad_videos_are_errors(tok: Tokenizer, bad: torch.Tensor) -> None:
    with pytest.raises(VqtokError):
        tok.encode(bad)


def test_sizes_off_the_factor_are_padded_and_cropped_back(tok: Tokenizer) -> None:
    video = clip(t=5)[..., :12, :]  # 12 rows: padded to 16 by repeating the last row
    padded = torch.cat([video, video[..., -1:, :].expand(-1, -1, -1, 4, -1)], dim=3)
    assert torch.equal(tok.encode(video), tok.encode(padded))
    assert tok.decode(tok.encode(video), frames=5, size=(12, 16)).shape == (2, 3, 5, 12, 16)


def test_results_come_from_inference_mode(tok: Tokenizer) -> None:
    indices = tok.encode(clip())
    assert indices.is_inference()
    assert tok.decode(indices).is_inference()


@pytest.mark.parametrize("sizes", [[6], [1, 5], [2, 3, 1], [1, 1, 1, 1, 1, 1]])
def test_encode_stream_pads_the_end_and_equals_encode(tok: Tokenizer, sizes: list[int]) -> None:
    video = clip(t=6)
    stream = tok.encode_stream(video.split(sizes, dim=2))
    pieces = []
    for piece in stream:
        # inference mode is entered per chunk, never left on in the caller's code
        assert not torch.is_inference_mode_enabled()
        pieces.append(piece)
    assert torch.equal(torch.cat(pieces, dim=1), tok.encode(video))
    assert (stream.frames, stream.padding) == (6, 3)


def test_encode_stream_of_nothing_is_an_error(tok: Tokenizer) -> None:
    with pytest.raises(VqtokError, match="no frames"):
        list(tok.encode_stream([]))


def test_decode_stream_trims_to_frames(tok: Tokenizer) -> None:
    indices = tok.encode(clip(t=6))
    pieces = list(tok.decode_stream(indices.split(1, dim=1), frames=6))
    assert [p.shape[2] for p in pieces] == [1, 4, 1]
    torch.testing.assert_close(torch.cat(pieces, dim=2), tok.decode(indices, frames=6),
                               atol=1e-5, rtol=1e-5)


@pytest.fixture
def native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the bf16 path whatever this CPU has (emulated bf16 is only slow; the fallback to
    fp32 on CPUs without it is tested in test_usability)."""
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)


@pytest.mark.usefixtures("native_bf16")
def test_bf16_autocast_on_cpu_keeps_valid_indices(model_dir: Path) -> None:
    tok = vqtok.load(model_dir, device="cpu", dtype="bf16")
    assert tok.dtype == torch.bfloat16
    indices = tok.encode(clip())
    assert indices.dtype == torch.int64 and indices.shape == (2, 3, 2, 2)
    assert 0 <= int(indices.min()) and int(indices.max()) < tok.codebook_size
    assert tok.decode(indices).dtype == torch.float32


@pytest.mark.usefixtures("native_bf16")
def test_device_and_dtype_resolution() -> None:
    cpu = torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype(torch.float32, cpu) == torch.float32
    with pytest.raises(ConfigError, match="CUDA only"):
        resolve_dtype("fp16", cpu)
    with pytest.raises(ConfigError, match="unknown dtype"):
        resolve_dtype("int8", cpu)
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


def test_windowed_families_pad_each_window() -> None:
    from vqtok.families.magvit2 import Magvit2Config, Magvit2Tokenizer

    tok = Tokenizer(Magvit2Tokenizer(Magvit2Config(ch=32, num_res_blocks=1, z_channels=4)))
    assert tok.model.window == 17 and tok.temporal_factor == 4
    # 20 frames = one full window + 3 frames, padded to 1 + 1*4 in the last window
    assert tok.padded_frames(20) == 22
    assert tok.padded_frames(17) == 17
    assert tok.padded_frames(18) == 18
    assert tok.weights_sha256 is None
