"""`vqtok.encode_files` / `vqtok.decode_files`: the library's file runs, without the CLI.

Both return one (job, outcome) per input with exported types; a rerun keeps what is complete
and made the same way, and replaces what was made differently.
"""

from __future__ import annotations

from pathlib import Path

import vqtok
from tests.clips import make_clip
from tests.tiny import save_tiny_model
from vqtok.io.tokens import load_tokens
from vqtok.io.videotensor import read_video


def test_encode_files_then_decode_files_round_trip(tmp_path: Path) -> None:
    model = save_tiny_model(tmp_path / "tiny")
    (tmp_path / "in").mkdir()
    clips = [make_clip(tmp_path / "in" / f"{name}.mp4", frames=9, size=(32, 48), fps=8)
             for name in ("a", "b")]

    encoded = vqtok.encode_files([tmp_path / "in"], tmp_path / "codes/", model=model,
                                 device="cpu")
    assert [job.source for job, _ in encoded] == clips
    assert all(isinstance(job, vqtok.Job) for job, _ in encoded)
    assert all(isinstance(r, vqtok.EncodeResult) for _, r in encoded)

    decoded = vqtok.decode_files([tmp_path / "codes"], tmp_path / "videos/", device="cpu",
                                 model=model)
    results = [r for _, r in decoded]
    assert all(isinstance(r, vqtok.DecodeResult) for r in results), results
    for (_, enc), dec in zip(encoded, results, strict=True):
        indices, meta = load_tokens(enc.target)
        assert dec.frames == meta.encoded.frames == 9
        video = read_video(dec.target)
        assert tuple(video.shape[-2:]) == (32, 48)

    again = vqtok.decode_files([tmp_path / "codes"], tmp_path / "videos/", device="cpu",
                               model=model)
    assert [r for _, r in again] == [None, None]  # complete and made the same way: kept

    rate = vqtok.decode_files([tmp_path / "codes"], tmp_path / "videos/", device="cpu",
                              model=model, fps=4)
    assert all(isinstance(r, vqtok.DecodeResult) and r.fps == 4 for _, r in rate)


def test_decode_run_loads_each_model_once_with_the_device_given(tmp_path: Path) -> None:
    model = save_tiny_model(tmp_path / "tiny")
    (tmp_path / "in").mkdir()
    make_clip(tmp_path / "in" / "a.mp4", frames=5, size=(32, 32), fps=8)
    make_clip(tmp_path / "in" / "b.mp4", frames=5, size=(32, 32), fps=8)
    vqtok.encode_files([tmp_path / "in"], tmp_path / "codes/", model=model, device="cpu")

    run = vqtok.DecodeRun.plan([tmp_path / "codes"], tmp_path / "out/", model=model)
    seen: list[int] = []
    outcomes = list(run.results("cpu", None, progress=lambda done, total: seen.append(done)))
    assert [type(r) for _, r in outcomes] == [vqtok.DecodeResult] * 2
    assert sum(seen) == 10
    assert [read_video(r.target).shape[2] for _, r in outcomes] == [5, 5]
