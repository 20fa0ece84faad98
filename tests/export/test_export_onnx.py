"""``vqtok export --format onnx`` on the tiny model, and the exported searches of every quantizer
kind, run with ONNX Runtime (CPU) and compared with PyTorch.

One export of the tiny model through the CLI is shared by the module (tracing is the slow part);
the search graphs of the residual, beam and LFQ quantizers are exported together as one small
graph. The shipped models are checked in `test_export_onnx_models.py` (opt-in: minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

import vqtok
from tests.clips import clip_frames
from tests.tiny import save_tiny_model
from vqtok.cli.app import app
from vqtok.io.checkpoint import weights_sha256

pytest.importorskip("onnxruntime", reason="ONNX export needs vqtok[onnx]")
pytest.importorskip("onnxscript", reason="ONNX export needs vqtok[onnx]")

import onnxruntime as ort  # noqa: E402

from vqtok.export.onnx import synthetic_clip  # noqa: E402
from vqtok.export.onnx_runner import OnnxRunnerError, OnnxTokenizer  # noqa: E402
from vqtok.export.search import code_lookup, quantizer_search  # noqa: E402
from vqtok.quantizers import build_quantizer  # noqa: E402

pytestmark = pytest.mark.slow  # ONNX export and onnxruntime, a subprocess: not in test-fast

STEP = 1.0 / 255.0


def cli(*args: object, code: int = 0):  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tiny model directory, its ONNX export made by ``vqtok export``)."""
    root = tmp_path_factory.mktemp("onnx")
    model = save_tiny_model(root / "tiny")
    result = cli("export", model, "-o", root / "export", "--format", "onnx")
    assert f"tiny -> {root / 'export'}: encoder.onnx" in result.stdout, result.stdout
    assert "100.00% of the indices identical" in result.stdout
    return model, root / "export"


def video_of(frames: int, height: int, width: int, batch: int = 1) -> np.ndarray:
    """The synthetic test clip (tests/clips.py) as float32 (B, 3, T, H, W) in [-1, 1]."""
    pixels = clip_frames(frames, height, width).astype(np.float32) / 127.5 - 1.0
    one = pixels.transpose(3, 0, 1, 2)[None]  # (T, H, W, 3) -> (1, 3, T, H, W)
    return np.concatenate([one, one[:, :, ::-1].copy()][:batch]) if batch > 1 else one


def test_export_writes_graphs_and_their_description(exported: tuple[Path, Path]) -> None:
    model, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == [
        "decoder.onnx", "encoder.onnx", "export.json", "vqtok_onnx.py"]
    info = json.loads((folder / "export.json").read_text())
    assert info["model"]["name"] == "tiny"
    assert info["model"]["weights_sha256"] == weights_sha256(model)
    assert (info["temporal_factor"], info["spatial_factor"]) == (4, 8)
    assert info["codebook_sizes"] == [16] and info["level_axis"] is False
    video, = info["encoder"]["inputs"]
    indices, = info["encoder"]["outputs"]
    assert (video["name"], video["dtype"], video["range"]) == ("video", "float32", [-1.0, 1.0])
    assert "1 + 4*k" in video["accepts"] and "multiples of 8" in video["accepts"]
    assert (indices["name"], indices["dtype"]) == ("indices", "int64")
    assert indices["range"] == {"min": 0, "max": 15, "level_sizes": [16]}
    assert info["decoder"]["inputs"][0]["shape"] == indices["shape"]
    import hashlib
    for part in ("encoder", "decoder"):
        data = (folder / info[part]["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info[part]["sha256"]
    assert info["verified"]["indices_identical"] == 1.0
    assert info["verified"]["max_abs_diff"] <= STEP


@pytest.mark.parametrize("shape", [(9, 32, 48, 1), (6, 20, 36, 2), (1, 8, 8, 1)])
def test_onnx_matches_pytorch_and_pads_as_the_api(
        exported: tuple[Path, Path], shape: tuple[int, int, int, int]) -> None:
    model, folder = exported
    frames, height, width, batch = shape
    video = video_of(frames, height, width, batch)
    tok = vqtok.load(model, device="cpu")
    runner = OnnxTokenizer(folder, threads=1)
    ref = tok.encode(torch.from_numpy(video))
    got = runner.encode(video)
    assert got.dtype == np.int64 and got.shape == tuple(ref.shape)
    assert np.array_equal(got, ref.numpy())
    want = tok.decode(ref, frames=frames, size=(height, width)).numpy()
    decoded = runner.decode(got, frames=frames, size=(height, width))
    assert decoded.shape == want.shape == video.shape
    assert float(np.abs(decoded - want).max()) <= STEP
    assert -1.0 <= decoded.min() and decoded.max() <= 1.0


def test_the_graphs_take_what_export_json_says(exported: tuple[Path, Path]) -> None:
    """Dynamic batch, 1 + 4k frames, multiples of 8: straight into the graphs, no runner."""
    _, folder = exported
    sessions = {part: ort.InferenceSession(str(folder / f"{part}.onnx"),
                                           providers=["CPUExecutionProvider"])
                for part in ("encoder", "decoder")}
    for batch, frames, height, width in ((3, 5, 16, 24), (1, 13, 40, 8)):
        clip = synthetic_clip(batch, frames, height, width)
        indices = sessions["encoder"].run(None, {"video": clip.numpy()})[0]
        grid = (batch, 1 + (frames - 1) // 4, height // 8, width // 8)
        assert indices.shape == grid and indices.dtype == np.int64
        assert 0 <= indices.min() and indices.max() < 16
        video = sessions["decoder"].run(None, {"indices": indices})[0]
        assert video.shape == clip.shape and video.dtype == np.float32


def test_runner_refuses_bad_inputs_in_one_line(exported: tuple[Path, Path]) -> None:
    _, folder = exported
    runner = OnnxTokenizer(folder)
    with pytest.raises(OnnxRunnerError, match="0-255 pixels"):
        runner.encode(np.full((1, 3, 1, 8, 8), 200.0, np.float32))
    with pytest.raises(OnnxRunnerError, match="float video array"):
        runner.encode(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(OnnxRunnerError, match=r"level 0's indices must lie in \[0, 16\)"):
        runner.decode(np.full((1, 1, 1, 1), 16))
    with pytest.raises(OnnxRunnerError, match="expected indices"):
        runner.decode(np.zeros((1, 1, 1, 1, 2), np.int64))
    with pytest.raises(OnnxRunnerError, match="not found"):
        OnnxTokenizer(folder.parent)


def test_export_runs_with_only_numpy_and_onnxruntime(
        exported: tuple[Path, Path], tmp_path: Path) -> None:
    """A fresh interpreter that cannot import torch or vqtok runs the export folder."""
    model, folder = exported
    video = video_of(6, 20, 36)
    np.save(tmp_path / "video.npy", video)
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "vqtok", "onnx", "onnxscript"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Refuse())
        sys.path.insert(0, {str(folder)!r})
        import numpy as np
        from vqtok_onnx import OnnxTokenizer
        tok = OnnxTokenizer({str(folder)!r})
        video = np.load({str(tmp_path / "video.npy")!r})
        indices = tok.encode(video)
        np.save({str(tmp_path / "indices.npy")!r}, indices)
        np.save({str(tmp_path / "decoded.npy")!r}, tok.decode(indices, 6, (20, 36)))
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "vqtok")))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    tok = vqtok.load(model, device="cpu")
    ref = tok.encode(torch.from_numpy(video))
    assert np.array_equal(np.load(tmp_path / "indices.npy"), ref.numpy())
    want = tok.decode(ref, frames=6, size=(20, 36)).numpy()
    assert float(np.abs(np.load(tmp_path / "decoded.npy") - want).max()) <= STEP


def test_cli_errors_are_one_line(exported: tuple[Path, Path], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    model, folder = exported
    again = cli("export", model, "-o", folder, code=1)
    assert again.stderr.strip().count("\n") == 0 and "add --overwrite" in again.stderr
    as_file = cli("export", model, "-o", tmp_path / "model.onnx", code=2)
    assert "an export is a folder" in as_file.stderr and not (tmp_path / "model.onnx").exists()
    beam = cli("export", model, "-o", tmp_path / "b", "--beam", "4", code=2)
    assert beam.stderr.startswith("error: --beam: ") and "residual VQ" in beam.stderr
    opset = cli("export", model, "-o", tmp_path / "b", "--opset", "17", code=2)
    assert opset.stderr.startswith("error: --opset: ") and "18 or later" in opset.stderr
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "onnxscript", None)
        missing = cli("export", model, "-o", tmp_path / "x", code=1).stderr.strip()
    assert missing.count("\n") == 0 and "pip install 'vqtok[onnx]'" in missing, missing
    assert not (tmp_path / "x").exists() and not (tmp_path / "b").exists()


class _Searches(nn.Module):
    """Several quantizers' search and lookup graphs side by side (one export for all)."""

    def __init__(self, quantizers: dict[str, tuple[nn.Module, str]]) -> None:
        super().__init__()
        self.searches = nn.ModuleList(quantizer_search(q, kind) for q, kind in
                                      quantizers.values())
        self.lookups = nn.ModuleList(code_lookup(q, kind, s) for (q, kind), s in
                                     zip(quantizers.values(), self.searches, strict=True))

    def forward(self, tokens: Tensor) -> tuple[Tensor, ...]:
        found = [search(tokens) for search in self.searches]
        codes = [lookup(f) for lookup, f in zip(self.lookups, found, strict=True)]
        return (*found, *codes)


def _quantizers() -> dict[str, tuple[nn.Module, str]]:
    torch.manual_seed(1)
    made = {
        "greedy": ("ema_rvq", {"num_levels": 3, "codebook_sizes": [16, 8, 8]}),
        "beam": ("ema_rvq", {"num_levels": 4, "codebook_sizes": 8, "beam_width": 5}),
        "rvq": ("rvq", {"num_levels": 2, "codebook_sizes": 32, "beam_width": 3}),
        "lfq": ("residual_lfq", {"codebook_size": 16, "num_levels": 3}),
        "vq": ("vq", {"codebook_size": 32, "remap": torch.arange(3, 27, 2)}),
        "ema": ("ema_vq", {"codebook_size": 16}),
    }
    quantizers = {}
    for name, (kind, options) in made.items():
        q = build_quantizer(kind, 6, **options).eval()
        quantizers[name] = (q, kind)
    greedy = quantizers["greedy"][0]
    with torch.no_grad():  # exact ties: duplicated codes, the lowest index must win
        first = greedy.level_weight(0)
        first[5] = first[2]
        first[9] = first[2]
        for p in quantizers["lfq"][0].parameters():
            p.normal_()
    return quantizers


@pytest.mark.filterwarnings("ignore::FutureWarning")  # the exporter's own internals
def test_search_graphs_match_the_library(tmp_path: Path) -> None:
    quantizers = _quantizers()
    graph = _Searches(quantizers).eval()
    tokens = torch.randn(64, 6) * 0.1
    tokens[:4] = quantizers["greedy"][0].level_weight(0)[2]  # exactly on a duplicated code
    with torch.no_grad():
        torch.onnx.export(graph, (tokens,), str(tmp_path / "s.onnx"), dynamo=True,
                          input_names=["tokens"], external_data=False, verbose=False,
                          dynamic_shapes={"tokens": {0: torch.export.Dim("n", min=1)}})
    session = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    more = torch.randn(500, 6) * 0.3
    for batch in (tokens, more, more[:1]):
        outputs = session.run(None, {"tokens": batch.numpy()})
        half = len(quantizers)
        for (name, (q, _)), found, codes in zip(quantizers.items(), outputs[:half],
                                                outputs[half:], strict=True):
            with torch.no_grad():
                ref = q(batch, channel_last=True).indices
                ref_codes = q.indices_to_codes(ref, channel_last=True)
            ref = ref.reshape(len(batch), -1)
            assert np.array_equal(found, ref.numpy()), name
            assert np.abs(codes - ref_codes.reshape(len(batch), -1).numpy()).max() < 1e-6, name
        if batch is tokens:  # the tied codes 2, 5, 9: the lowest index, as the library
            assert (outputs[0][:4, 0] == 2).all()
