"""``--tile`` and ``--max-memory`` on encode, decode and reconstruct: the same index file and
the same video as an untiled run; bad values are one-line usage errors."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.clips import make_clip
from tests.tiny import save_tiny_model
from vqtok.cli.app import app


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tile")
    save_tiny_model(root / "tiny")
    make_clip(root / "clip.mp4", frames=9, size=(44, 60))  # not a multiple of the tile
    return root


def vqtok(work: Path, *args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--model", str(work / "tiny"), "--quiet"])
    assert result.exit_code == 0, result.output
    return result.output


def frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_tiled_runs_write_the_untiled_files(work: Path) -> None:
    clip = str(work / "clip.mp4")
    vqtok(work, "encode", clip, "-o", str(work / "whole.npy"), "--tile", "off")
    vqtok(work, "encode", clip, "-o", str(work / "tiled.npy"), "--tile", "16x24")
    # a budget below what an untiled pass needs turns tiling on by itself
    vqtok(work, "encode", clip, "-o", str(work / "budget.npy"), "--max-memory", "0.1")
    whole = np.load(work / "whole.npy", allow_pickle=False)
    for name in ("tiled.npy", "budget.npy"):
        assert np.array_equal(np.load(work / name, allow_pickle=False), whole), name

    vqtok(work, "decode", str(work / "whole.npy"), "-o", str(work / "whole.mp4"), "--tile", "off")
    vqtok(work, "decode", str(work / "whole.npy"), "-o", str(work / "tiled.mp4"),
          "--tile", "16x16")
    assert np.array_equal(frames(work / "tiled.mp4"), frames(work / "whole.mp4"))
    assert not list(work.glob(".vqtok-carry-*"))


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--tile", "8x8", "at least 16x16"),
    ("--tile", "big", "auto, off or HEIGHTxWIDTH"),
    ("--max-memory", "0", "0.1"),
])
def test_bad_tile_options_are_usage_errors(work: Path, option: str, value: str,
                                          message: str) -> None:
    result = CliRunner().invoke(app, ["encode", str(work / "clip.mp4"), "-o",
                                      str(work / "bad.npy"), option, value])
    assert result.exit_code == 2
    assert message in result.output
    assert not (work / "bad.npy").exists()
