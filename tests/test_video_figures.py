"""`vqtok.video_figures`: the video benchmark's figures on clips whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from vqtok.video_figures import frame_changes, video_figures


def clip(frames: int = 17, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(40, 200, (frames, 16, 24, 3)).astype(np.float64)


def test_position_psnr_and_first_frame() -> None:
    src = clip()
    noise = np.zeros_like(src)
    noise[1:] = 4.0  # every later frame is off by 4 levels, frame 0 by 1
    noise[0] = 1.0
    f = video_figures(src, src + noise, tau=4)
    assert f.first_frame_psnr == pytest.approx(20 * np.log10(255 / 1))
    assert f.later_frames_psnr == pytest.approx(20 * np.log10(255 / 4))
    assert f.position_psnr == pytest.approx([20 * np.log10(255 / 4)] * 4)


def test_flicker_at_group_boundaries() -> None:
    src = np.repeat(clip(1), 17, axis=0) + np.arange(17)[:, None, None, None] * 0.5  # a slow fade
    out = src.copy()
    out[1::4] += 3.0  # frames 1, 5, 9, 13: the first of each group jumps (and back)
    f = video_figures(src, out, tau=4)
    assert f.flicker_boundary == pytest.approx(3.5 / 0.5)
    assert f.flicker_inside is not None and f.flicker_inside > 1  # the way back down
    still = video_figures(src, src, tau=4)
    assert still.flicker_boundary == pytest.approx(1.0)
    assert still.flicker_inside == pytest.approx(1.0)


def test_grey_high_motion_and_cuts() -> None:
    grey = np.repeat(clip(9)[..., :1], 3, axis=-1)
    f = video_figures(grey, grey, tau=4)
    assert f.grey and f.chroma_spread == 0.0 and f.source_chroma_spread == 0.0
    tinted = grey.copy()
    tinted[..., 2] += 6.0
    assert video_figures(grey, tinted, tau=4).chroma_spread == pytest.approx(6.0)
    assert not video_figures(clip(), clip(), tau=4).grey

    calm = np.repeat(clip(1), 12, axis=0) + np.arange(12)[:, None, None, None]  # 1 level/frame
    scene = np.concatenate([calm[:6], calm[6:] * 0 + clip(1, seed=5)])  # a cut at frame 6
    out = scene.copy()
    out[5] += 8.0  # the frame before the cut suffers
    f = video_figures(scene, out, tau=4)
    assert f.cuts == [6] and f.high_motion_frames == [6]
    assert f.cut_drop is not None and f.cut_drop > 5
    assert frame_changes(scene)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        video_figures(scene, scene[:3], tau=4)
