"""`remap build` on index files with several codebooks / residual levels: all levels (one used
set each) or one level at a time."""

from pathlib import Path

import numpy as np
import pytest

from tests.io.test_tokens import make_meta
from vqtok.errors import OptionError, TokenFileError
from vqtok.io.remap import load_used, load_used_sets
from vqtok.io.tokens import save_tokens
from vqtok.pipeline.remap_build import build_remap


def test_level_picks_one_codebook_of_multi_codebook_files(tmp_path: Path) -> None:
    meta = make_meta(quantizer="ema_rvq", bit_order=None, codebook_size=16, num_codebooks=2)
    indices = np.zeros(meta.shape, dtype=np.int64)
    indices[..., 0] = np.arange(24).reshape(2, 3, 4) % 5  # level 0 uses codes 0..4
    indices[..., 1] = 7  # level 1 uses code 7 only
    save_tokens(tmp_path / "a", indices, meta)
    with pytest.raises(OptionError, match="name it .*used.safetensors"):
        build_remap([tmp_path], tmp_path / "used.npy")  # a .npy holds one level: refused
    report = build_remap([tmp_path], tmp_path / "used")  # no suffix: the one that fits
    assert report.output == tmp_path / "used.safetensors" and report.tokens == 24
    assert [(lv.level, lv.used, lv.seen) for lv in report.levels] == [(0, 5, 5), (1, 1, 1)]
    assert report.used == 6 and report.top == ()
    sets = load_used_sets(tmp_path / "used.safetensors")
    assert [s.tolist() for s in sets.levels] == [[0, 1, 2, 3, 4], [7]]
    assert not (tmp_path / "used.npy").exists()
    report = build_remap([tmp_path], tmp_path / "used0.npy", level=0)
    assert report.used == 5 and report.tokens == 24
    assert load_used(tmp_path / "used0.npy").tolist() == [0, 1, 2, 3, 4]
    report = build_remap([tmp_path], tmp_path / "used1.npy", level=1)
    assert report.used == 1 and report.perplexity == pytest.approx(1.0)
    with pytest.raises(TokenFileError, match="level=2 "):
        build_remap([tmp_path], None, level=2)
