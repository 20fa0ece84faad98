"""Inputs beyond local paths for the local engine: clip ranges, manifests, WebDataset tar shards,
fsspec URLs (``memory://`` here: in-process, no network), and the CLI's lines for them."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from fractions import Fraction
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch

from tests.clips import frame_index, make_clip
from tests.invoke import invoker
from tests.tiny import save_tiny_model
from vqtok.api import load
from vqtok.errors import ConfigError, VideoError, VqtokError
from vqtok.io.manifests import read_manifest_rows
from vqtok.io.pixels import frames_to_video
from vqtok.io.sources import ClipSource
from vqtok.io.tokens import load_tokens
from vqtok.io.video import VideoReader
from vqtok.pipeline.encode import encode_files
from vqtok.pipeline.inputs import expand_inputs


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model, a 40-frame clip at 8 fps (key frames every 1.5 s) and two short ones."""
    root = tmp_path_factory.mktemp("sources")
    save_tiny_model(root / "tiny")
    make_clip(root / "long.mp4", frames=40, size=(32, 48), fps=8)
    for i, frames in enumerate((9, 12)):
        make_clip(root / f"s{i}.mp4", frames=frames, size=(32, 48), fps=8)
    return root


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    """A WebDataset-style shard: the members in order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def frames_of(source: str | Path | ClipSource) -> np.ndarray:
    return np.concatenate(list(VideoReader(source)))


def test_a_clip_is_exactly_the_frames_from_start_to_before_end(root: Path) -> None:
    video = str(root / "long.mp4")
    whole = frames_of(video)
    reader = VideoReader(ClipSource(video, start=Fraction(1, 2), end=Fraction(5, 4)))
    clip = np.concatenate(list(reader))
    # frames at t = k / 8 s with 0.5 <= t < 1.25: k = 4 .. 9, decoded as a full read decodes them
    assert [frame_index(f) for f in clip] == [4, 5, 6, 7, 8, 9]
    assert np.array_equal(clip, whole[4:10])
    assert reader.name == "long.mp4#t=0.5,1.25" and reader.expected_frames == 6
    late = VideoReader(ClipSource(video, start=Fraction(4)))
    frames = np.concatenate(list(late))
    assert np.array_equal(frames, whole[32:]) and late.warnings == []
    # it seeks: only the frames since the key frame at 3 s are decoded and dropped, not 32
    assert late.frames_skipped == 8
    end_only = np.concatenate(list(VideoReader(ClipSource(video, end=Fraction(1)))))
    assert np.array_equal(end_only, whole[:8])


def test_a_clip_past_the_end_or_backwards_is_refused(root: Path) -> None:
    with pytest.raises(VideoError, match=r"starts at 10 s but the video lasts 5\.000 s"):
        VideoReader(ClipSource(str(root / "long.mp4"), start=Fraction(10)))
    with pytest.raises(ConfigError, match="must be after start"):
        ClipSource("a.mp4", start=Fraction(2), end=Fraction(1))


def test_manifests_in_three_formats_list_the_same_clips(root: Path, tmp_path: Path) -> None:
    rows = [{"path": "long.mp4", "start": 0.5, "end": 1.25, "key": "first"},
            {"path": str(root / "long.mp4"), "start": 3, "end": None, "caption": "ignored"},
            {"url": "s0.mp4"}]
    csv = root / "m.csv"
    csv.write_text("path,url,start,end,key,caption\nlong.mp4,,0.5,1.25,first,\n"
                   f"{root / 'long.mp4'},,3,,,ignored\n,s0.mp4,,,,\n")
    jsonl = root / "m.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    import pyarrow as pa
    import pyarrow.parquet as pq
    columns = ("path", "url", "start", "end", "key", "caption")
    pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows]),
                   root / "m.parquet")
    expected = [("first", ClipSource(str(root / "long.mp4"), start=Fraction(1, 2),
                                     end=Fraction(5, 4))),
                ("long_3-", ClipSource(str(root / "long.mp4"), start=Fraction(3))),
                ("s0", ClipSource(str(root / "s0.mp4")))]
    for manifest in (csv, jsonl, root / "m.parquet"):
        got = [(r.key, r.source) for r in read_manifest_rows(str(manifest))]
        assert got == expected, manifest


@pytest.mark.parametrize(("text", "message"), [
    ("path,start\na.mp4,abc\n", "row 1: start must be a number of seconds, got 'abc'"),
    ("path,start,end\na.mp4,0,1\na.mp4,2,1\n", "row 2: end (1 s) must be after start (2 s)"),
    ("video,start\na.mp4,1\n", "has no 'path' or 'url' column"),
    ("path,start\n,1\n", "row 1: has no path"),
])
def test_a_bad_manifest_row_is_named(tmp_path: Path, text: str, message: str) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    with pytest.raises(VqtokError) as caught:
        read_manifest_rows(str(manifest))
    assert message in str(caught.value) and str(manifest) in str(caught.value)


def test_keys_cannot_escape_the_output_and_clashes_fail_both(root: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,key\n{root / 's0.mp4'},../evil\n{root / 's0.mp4'},same\n"
                        f"{root / 's1.mp4'},same\n{root / 's1.mp4'},ok\n")
    clips = expand_inputs([str(manifest)])
    assert [c.key for c in clips] == ["../evil", "same", "same", "ok"]
    assert "not a relative name" in (clips[0].error or "")
    assert "have the same key 'same'" in (clips[1].error or "") and clips[1].error == clips[2].error
    assert clips[3].error is None
    outcomes = encode_files([str(manifest)], tmp_path / "out/", model=root / "tiny",
                            device="cpu")
    assert [type(o).__name__ for _, o in outcomes] == ["ConfigError", "ConfigError",
                                                       "ConfigError", "EncodeResult"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ok.json", "ok.npy"]
    assert not (tmp_path / "evil.npy").exists()


def test_tar_members_encode_like_the_files_they_hold(root: Path, tmp_path: Path) -> None:
    shard = write_tar(tmp_path / "shard-000.tar", {
        "000001.mp4": (root / "s0.mp4").read_bytes(), "000001.json": b'{"caption": "x"}',
        "000002.mp4": (root / "s1.mp4").read_bytes(), "000002.txt": b"ignored",
    })
    outcomes = encode_files([shard], tmp_path / "tar/", model=root / "tiny", device="cpu")
    assert [str(job.source) for job, _ in outcomes] == [f"{shard}[000001.mp4]",
                                                        f"{shard}[000002.mp4]"]
    encode_files([root / "s0.mp4", root / "s1.mp4"], tmp_path / "files/", model=root / "tiny",
                 device="cpu")
    for key, name in (("000001", "s0"), ("000002", "s1")):
        from_tar, meta = load_tokens(tmp_path / "tar" / f"{key}.npy")
        from_file, _ = load_tokens(tmp_path / "files" / f"{name}.npy")
        assert np.array_equal(from_tar, from_file) and meta.source.file == f"{key}.mp4"


def test_urls_are_read_through_fsspec(root: Path, tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/videos/a/s0.mp4", (root / "s0.mp4").read_bytes())
    fs.pipe("/bucket/videos/s1.mp4", (root / "s1.mp4").read_bytes())
    fs.pipe("/bucket/videos/notes.txt", b"not a video")
    fs.pipe("/bucket/clips.jsonl", b'{"path": "videos/s1.mp4", "start": 0.25, "end": 1}\n')
    try:
        outcomes = encode_files(["memory://bucket/videos/", "memory://bucket/clips.jsonl"],
                                tmp_path / "out/", model=root / "tiny", device="cpu")
    finally:
        fs.rm("/bucket", recursive=True)
    assert [(job.target.name, type(o).__name__) for job, o in outcomes] == [
        ("s0.npy", "EncodeResult"), ("s1.npy", "EncodeResult"), ("s1_0.25-1.npy", "EncodeResult")]
    assert (tmp_path / "out" / "a" / "s0.npy").is_file()
    local, _ = load_tokens(encode_files([root / "s0.mp4"], tmp_path / "local.npy",
                                        model=root / "tiny", device="cpu")[0][0].target)
    assert np.array_equal(load_tokens(tmp_path / "out" / "a" / "s0.npy")[0], local)
    clip, meta = load_tokens(tmp_path / "out" / "s1_0.25-1.npy")
    assert meta.source.file == "s1.mp4#t=0.25,1" and meta.encoded.frames == 6  # frames 2 .. 7
    tokenizer = load(root / "tiny", device="cpu")
    expected = tokenizer.encode(frames_to_video(frames_of(root / "s1.mp4")[2:8],
                                                torch.device("cpu")))
    assert np.array_equal(clip, expected[0].numpy())


@pytest.fixture()
def cli(root: Path):  # type: ignore[no-untyped-def]
    return invoker({"VQTOK_MODELS": str(root)})


def test_cli_encodes_a_manifest_and_resumes(root: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    manifest = tmp_path / "clips.csv"
    manifest.write_text(f"path,start,end,key\n{root / 'long.mp4'},0.5,1.25,a/one\n"
                        f"{root / 'long.mp4'},30,,late\n")
    result = cli("encode", manifest, "-o", tmp_path / "out/", "-m", "tiny", "--device", "cpu",
                 code=1)
    assert (tmp_path / "out" / "a" / "one.npy").is_file()
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: {root / 'long.mp4'}#t=30: the clip starts at 30 s but the video "
                     "lasts 5.000 s; check the clip's start"]
    again = cli("encode", manifest, "-o", tmp_path / "out/", "-m", "tiny", "--device", "cpu",
                "--json", code=1)
    statuses = [row["status"] for row in json.loads(again.stdout)]
    assert statuses == ["skipped", "failed"]


def test_cli_local_engine_does_not_write_to_a_url(root: Path, cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("encode", root / "s0.mp4", "-o", "s3://bucket/codes/", "-m", "tiny", code=1)
    assert result.stderr.strip().splitlines() == [
        "error: s3://bucket/codes/: index files are written to a local folder; to write to "
        "object storage use --engine ray (a token dataset), or copy the folder afterwards"]


def test_engine_ray_without_ray_says_what_to_install(root: Path, tmp_path: Path, cli,  # type: ignore[no-untyped-def]
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    result = cli("encode", root / "s0.mp4", "-o", tmp_path / "ds", "-m", "tiny", "--engine",
                 "ray", code=1)
    assert result.stderr.strip().splitlines() == [
        "error: the Ray engine needs Ray Data, which is not installed; install it with: "
        "pip install 'vqtok[ray]'"]
    flag = cli("encode", root / "s0.mp4", "-o", tmp_path / "x/", "--workers", "2", code=2)
    assert flag.stderr.strip() == "error: --workers: applies to --engine ray only; add --engine ray"


def test_https_and_file_urls(root: Path, tmp_path: Path) -> None:
    """An http(s):// URL through fsspec (a server on 127.0.0.1 here) and a file:// URL give
    the local file's indices."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/s0.mp4"
    try:
        outcomes = encode_files([url, f"file://{root / 's1.mp4'}"], tmp_path / "out",
                                model=root / "tiny", device="cpu")
    finally:
        server.shutdown()
    assert [str(job.source) for job, _ in outcomes] == [url, f"file://{root / 's1.mp4'}"]
    local = encode_files([root / "s0.mp4", root / "s1.mp4"], tmp_path / "local",
                         model=root / "tiny", device="cpu")
    for (job, _), (here, _) in zip(outcomes, local, strict=True):
        assert np.array_equal(load_tokens(job.target)[0], load_tokens(here.target)[0])


def test_a_missing_fsspec_backend_says_what_to_install() -> None:
    import importlib.util

    from vqtok.errors import MissingDependencyError
    from vqtok.io.remote import require_fsspec

    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed")
    with pytest.raises(MissingDependencyError) as caught:
        require_fsspec("gs://bucket/a.mp4")
    assert str(caught.value) == ("gs://bucket/a.mp4: gs:// URLs need gcsfs, which is not "
                                 "installed; install it with: pip install gcsfs")
