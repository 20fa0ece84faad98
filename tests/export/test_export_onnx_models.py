"""The shipped models exported to ONNX agree with PyTorch fp32 on the held-out test sources.

Opt-in (``VQTOK_ONNX_MODEL_TESTS=1``, marker ``onnx_models``): exporting and running the three
models over the five sources of ``tests/data`` takes about 6 minutes on a 2-core CPU, against
under a minute for the tiny-model checks of `test_export_onnx.py` that always run. Run with
``-s`` to see the agreement per source::

    VQTOK_ONNX_MODEL_TESTS=1 .venv/bin/python -m pytest tests/test_export_onnx_models.py -s
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import vqtok

pytestmark = [
    pytest.mark.onnx_models,
    pytest.mark.skipif(os.environ.get("VQTOK_ONNX_MODEL_TESTS") != "1",
                       reason="minutes: set VQTOK_ONNX_MODEL_TESTS=1 to export the shipped models"),
]
pytest.importorskip("onnxruntime", reason="ONNX export needs vqtok[onnx]")
pytest.importorskip("onnxscript", reason="ONNX export needs vqtok[onnx]")

from vqtok.export import export_onnx  # noqa: E402
from vqtok.export.onnx_runner import OnnxTokenizer  # noqa: E402

DATA = Path(__file__).parents[1] / "data"
SOURCES = ("city-heldout.mp4", "bbb-heldout.mp4", "heldout-brushes.png",
           "heldout-dandelions.png", "heldout-picos.png")
STEP = 1.0 / 255.0


@pytest.mark.parametrize("name", ["vqtok-ema", "vqtok-ema-8x32", "vqtok-lfq"])
def test_shipped_model_onnx_matches_pytorch(name: str, tmp_path: Path) -> None:
    result = export_onnx(name, tmp_path / name)
    tok = vqtok.load(name, device="cpu")
    runner = OnnxTokenizer(tmp_path / name)
    same = total = 0
    worst = 0.0
    for source in SOURCES:
        video = vqtok.read_video(DATA / source)
        frames, size = video.shape[2], (video.shape[3], video.shape[4])
        ref = tok.encode(video)
        got = runner.encode(video.numpy())
        want = tok.decode(ref, frames=frames, size=size).numpy()
        decoded = runner.decode(ref.numpy(), frames=frames, size=size)
        equal = got == ref.numpy()
        diff = float(np.abs(decoded - want).max())
        print(f"{name} {source}: {equal.mean():.4%} of {equal.size} indices identical, "
              f"frames within {diff:.3g} ({diff / STEP:.4f} of 1/255)")
        same, total, worst = same + int(equal.sum()), total + equal.size, max(worst, diff)
    print(f"{name}: {same}/{total} indices identical, frames within {worst:.3g}; "
          f"search {result.description['model']['search']}")
    assert same == total
    assert worst <= STEP
    # the smallest sizes the graphs take: one frame, one latent row and column
    tiny = runner.decode(ref.numpy()[:, :1, :1, :1])
    want_tiny = tok.decode(ref[:, :1, :1, :1]).numpy()
    assert tiny.shape == (1, 3, 1, 8, 8) and float(np.abs(tiny - want_tiny).max()) <= STEP
    corner = video[:, :, :, :8, :8]
    assert np.array_equal(runner.encode(corner.numpy()), tok.encode(corner).numpy())
