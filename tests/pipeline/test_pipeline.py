"""The file pipeline (vqtok.pipeline.encode, jobs, vocab, codeusage, reconstruct, describe) on tiny
models saved with save_pretrained and clips written with PyAV."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import vqtok.api as api
from tests.clips import clip_frames, make_clip
from tests.tiny import tiny_config
from vqtok.errors import RemapError, TokenFileError, VideoError, VqtokError
from vqtok.families.vqtok import VideoTokenizer
from vqtok.io.checkpoint import save_pretrained
from vqtok.io.pixels import frames_to_video, video_to_frames
from vqtok.io.remap import load_used
from vqtok.io.tokens import load_tokens
from vqtok.io.video import probe, read_frames
from vqtok.metrics import psnr
from vqtok.pipeline.decode import decode_file, decode_frames
from vqtok.pipeline.describe import describe_models, describe_path
from vqtok.pipeline.encode import EncodeOptions, encode_file, encode_indices
from vqtok.pipeline.plan import Job, parse_shard, plan_inputs, shard, shard_from_env
from vqtok.pipeline.prefetch import prefetch
from vqtok.pipeline.reconstruct import reconstruct_file
from vqtok.pipeline.remap_build import build_remap

KINDS = {"fsq": {"levels": [5, 4, 4, 3]}, "ema_vq": {"codebook_size": 16}}


def _tiny(kind: str) -> VideoTokenizer:
    torch.manual_seed(0)
    return VideoTokenizer(tiny_config(kind, KINDS[kind])).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for kind in KINDS:
        save_pretrained(_tiny(kind), root / f"tiny-{kind}")
    return root


@pytest.fixture(scope="module")
def fsq(models: Path) -> api.Tokenizer:
    return api.load(models / "tiny-fsq", device="cpu")


@pytest.fixture(scope="module")
def ema(models: Path) -> api.Tokenizer:
    return api.load(models / "tiny-ema_vq", device="cpu")


# ------------------------------------------------------------------ jobs


def test_plan_single_file_directory_mirroring_and_resume(tmp_path: Path) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name in ("in/x.mp4", "in/sub/y.MKV", "in/notes.txt"):
        (tmp_path / name).write_bytes(b"1234")
    assert plan_inputs([tmp_path / "in/x.mp4"], tmp_path / "o.npy", ".npy") == [
        Job(tmp_path / "in/x.mp4", tmp_path / "o.npy", 4, False)
    ]
    jobs = plan_inputs([tmp_path / "in"], tmp_path / "out", ".npy")
    assert [(j.source.name, j.target.relative_to(tmp_path)) for j in jobs] == [
        ("y.MKV", Path("out/sub/y.npy")),
        ("x.mp4", Path("out/x.npy")),
    ]
    (tmp_path / "out/sub").mkdir(parents=True)
    (tmp_path / "out/sub/y.npy").write_bytes(b"")
    marks = plan_inputs([tmp_path / "in"], tmp_path / "out", ".npy", is_complete=lambda p: True)
    assert [j.done for j in marks] == [True, False]
    assert not any(j.done for j in plan_inputs(
        [tmp_path / "in"], tmp_path / "out", ".npy", is_complete=lambda p: True, overwrite=True))
    # an incomplete output is redone
    assert not any(j.done for j in plan_inputs(
        [tmp_path / "in"], tmp_path / "out", ".npy", is_complete=lambda p: False))


def test_plan_refuses_colliding_names_and_empty_directories(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a/c.mp4").write_bytes(b"1")
    (tmp_path / "b/c.mp4").write_bytes(b"1")
    (tmp_path / "d.mp4").write_bytes(b"1")
    clash = plan_inputs([tmp_path / "a/c.mp4", tmp_path / "b/c.mp4", tmp_path / "d.mp4"],
                        tmp_path / "o", ".npy")
    # the two that collide fail (done, with the reason), the third is planned as usual
    assert [(j.done, j.error is not None) for j in clash] == [(True, True), (True, True),
                                                               (False, False)]
    assert "both be written" in str(clash[0].error)
    # two directories keep their own names, so they do not collide
    jobs = plan_inputs([tmp_path / "a", tmp_path / "b"], tmp_path / "o", ".npy")
    assert [j.target.relative_to(tmp_path) for j in jobs] == [Path("o/a/c.npy"), Path("o/b/c.npy")]
    (tmp_path / "e").mkdir()
    with pytest.raises(VqtokError, match="no files"):
        plan_inputs([tmp_path / "e"], tmp_path / "o", ".npy")


def test_shard_is_a_balanced_partition() -> None:
    sizes = [100, 5, 7, 60, 60, 1, 0, 40, 33, 2]
    jobs = [Job(Path(f"f{i}.mp4"), Path(f"f{i}.npy"), s) for i, s in enumerate(sizes)]
    for count in (1, 2, 3, 4):
        parts = [shard(jobs, i, count) for i in range(count)]
        names = sorted(j.source.name for part in parts for j in part)
        assert names == sorted(j.source.name for j in jobs)  # no duplicate, none missing
        loads = [sum(j.size for j in part) for part in parts]
        assert max(loads) - min(loads) <= max(sizes)  # greedy LPT bound
    # by hand, largest first to the least loaded (+1 per file): 100->0, 60->1, 60->1, 40->0,
    # 33->1, 7->0, 5->0, 2->0 (tie 156/156 -> lowest), 1->1, 0->1; 154 bytes each
    assert [j.size for j in shard(jobs, 0, 2)] == [100, 5, 7, 40, 2]
    assert [j.size for j in shard(jobs, 1, 2)] == [60, 60, 1, 0, 33]


def test_shard_specs() -> None:
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "x", "1/0", "-1/2", "1/2/3"):
        with pytest.raises(VqtokError):
            parse_shard(bad)
    assert shard_from_env({}) is None
    assert shard_from_env({"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1"}) == (1, 3)
    with pytest.raises(VqtokError):
        shard_from_env({"RANK": "3", "WORLD_SIZE": "3"})


# ------------------------------------------------------------------ streaming helpers


def test_prefetch_overlaps_and_propagates_errors() -> None:
    seen: list[int] = []

    def slow() -> object:
        for i in range(5):
            seen.append(i)
            yield i

    assert list(prefetch(slow(), depth=2)) == [0, 1, 2, 3, 4]

    def broken() -> object:
        yield 1
        raise VideoError("boom", "x.mp4")

    stream = prefetch(broken())
    assert next(stream) == 1
    with pytest.raises(VideoError, match="boom"):
        next(stream)

    # the producer runs ahead by at most `depth` items while the consumer is busy
    produced: list[int] = []

    def counting() -> object:
        for i in range(100):
            produced.append(i)
            yield i

    early = prefetch(counting(), depth=3)
    next(early)
    time.sleep(0.3)
    assert len(produced) <= 1 + 3 + 1
    early.close()
    assert not any(t.name == "vqtok-reader" and t.is_alive() for t in threading.enumerate())


def test_frame_conversions_round_trip() -> None:
    frames = clip_frames(3, 16, 24)
    video = frames_to_video(frames, torch.device("cpu"))
    assert video.shape == (1, 3, 3, 16, 24) and video.dtype == torch.float32
    assert float(video.min()) >= -1 and float(video.max()) <= 1
    assert torch.equal(video[0, 0, 1], torch.from_numpy(frames[1, :, :, 0]).float() / 127.5 - 1)
    np.testing.assert_array_equal(video_to_frames(video), frames)


# ------------------------------------------------------------------ encode / decode


def test_encode_decode_round_trip(tmp_path: Path, clip: Path, fsq: api.Tokenizer) -> None:
    calls: list[tuple[int, int]] = []
    result = encode_file(clip, tmp_path / "a.npy", fsq, EncodeOptions(chunk=4),
                         lambda n, e: calls.append((n, e)))
    assert calls == [(4, 11), (4, 11), (3, 11)]
    indices, meta = load_tokens(result.target)
    # 11 frames -> padded to 13 = 1 + 3*4 -> 4 latent frames; 32x48 / 8 -> 4x6
    assert indices.shape == (4, 4, 6) and meta.grid == (4, 4, 6)
    assert (meta.encoded.frames, meta.encoded.padding, meta.encoded.size) == (11, 2, (32, 48))
    assert (meta.source.file, meta.source.frames, meta.source.fps) == ("a.mp4", 11, "8/1")
    assert (meta.quantizer, meta.codebook_size, meta.levels) == ("fsq", 240, (5, 4, 4, 3))
    assert meta.model == "tiny-fsq" and meta.model_sha256 == fsq.weights_sha256
    assert meta.encoded.resize == "none" and meta.remap is None
    # the streamed indices are those of a one-shot encode of the same frames
    frames = np.concatenate(list(read_frames(clip)))
    one_shot = fsq.encode(frames_to_video(frames, torch.device("cpu")))[0]
    np.testing.assert_array_equal(indices, one_shot.numpy())

    out = decode_file(result.target, tmp_path / "a.mp4", fsq, chunk=4)
    info = probe(out.target)
    assert (info.frames, info.fps, info.width, info.height) == (11, 8, 48, 32)
    expected = video_to_frames(fsq.decode(torch.from_numpy(indices)[None], frames=11))
    # streamed decode == one-shot decode, before the codec
    np.testing.assert_array_equal(np.concatenate(list(decode_frames(indices, meta, fsq, 4))),
                                  expected)
    # the file holds them up to H.264 / yuv420p error (an untrained model's output is noise)
    decoded = np.concatenate(list(read_frames(out.target)))
    assert float(psnr(torch.from_numpy(decoded), torch.from_numpy(expected))) > 20


def test_resize_fps_and_max_frames_are_recorded(tmp_path: Path, clip: Path,
                                                 fsq: api.Tokenizer) -> None:
    options = EncodeOptions(size=(20, 30), fps=4, max_frames=4, format="safetensors")
    result = encode_file(clip, tmp_path / "b", fsq, options)
    assert result.target == tmp_path / "b.safetensors"
    _, meta = load_tokens(result.target)
    # 20x30 is padded to 24x32 (not cropped); 4 frames at 4 fps -> padded to 5 -> 2 latent
    assert meta.encoded.size == (20, 30) and meta.encoded.resize == "size"
    assert meta.encoded.spatial_padding == (4, 2)
    assert (meta.encoded.fps, meta.encoded.frames, meta.encoded.padding) == ("4/1", 4, 1)
    assert meta.grid == (2, 3, 4)
    assert meta.settings is not None and meta.settings.size == (20, 30)
    assert (meta.settings.fps, meta.settings.max_frames) == ("4/1", 4)
    out = decode_file(result.target, tmp_path / "b.mp4", fsq, fps=2)
    info = probe(out.target)
    assert (info.frames, info.fps, info.height, info.width) == (4, 2, 20, 30)


def test_decode_refuses_other_weights_unless_forced(tmp_path: Path, clip: Path, models: Path,
                                                    fsq: api.Tokenizer) -> None:
    encode_file(clip, tmp_path / "a.npy", fsq)
    other = _tiny("fsq")
    with torch.no_grad():
        next(other.decoder.parameters()).add_(0.5)
    save_pretrained(other, tmp_path / "other")
    changed = api.load(tmp_path / "other", device="cpu")
    with pytest.raises(TokenFileError, match="force=True"):
        decode_file(tmp_path / "a.npy", tmp_path / "a.mp4", changed)
    assert not (tmp_path / "a.mp4").exists()
    decode_file(tmp_path / "a.npy", tmp_path / "a.mp4", changed, force=True)
    # a model that declares it gives the same indices (a decoder-only finish) needs no force
    assert fsq.path is not None and fsq.weights_sha256 is not None
    save_pretrained(other, tmp_path / "finish", decodes_indices_of=[fsq.weights_sha256])
    finish = api.load(tmp_path / "finish", device="cpu")
    decode_file(tmp_path / "a.npy", tmp_path / "c.mp4", finish)
    assert probe(tmp_path / "c.mp4").frames == probe(tmp_path / "a.mp4").frames
    assert describe_path(tmp_path / "finish")["decodes_indices_of"] == [fsq.weights_sha256]
    assert "decodes_indices_of" not in describe_path(tmp_path / "other")
    # a different vocabulary is refused even with --force
    ema = api.load(models / "tiny-ema_vq", device="cpu")
    with pytest.raises(TokenFileError, match="cannot decode"):
        decode_file(tmp_path / "a.npy", tmp_path / "b.mp4", ema, force=True)


def test_strict_turns_damage_into_an_error(tmp_path: Path, fsq: api.Tokenizer) -> None:
    from tests.clips import make_truncated

    bad = make_truncated(tmp_path / "t.mkv", frames=24)
    result = encode_file(bad, tmp_path / "t.npy", fsq)
    assert result.warnings and "truncated" in " ".join(result.warnings)
    with pytest.raises(VideoError, match="--strict"):
        encode_file(bad, tmp_path / "u.npy", fsq, EncodeOptions(strict=True))
    assert not (tmp_path / "u.npy").exists()


# ------------------------------------------------------------------ remap


def test_remap_restricted_search_round_trip(tmp_path: Path, clip: Path,
                                            ema: api.Tokenizer) -> None:
    full = encode_file(clip, tmp_path / "full.npy", ema)
    report = build_remap([tmp_path], tmp_path / "used.npy")
    full_indices, _ = load_tokens(full.target)
    used = load_used(tmp_path / "used.npy").numpy()
    np.testing.assert_array_equal(used, np.unique(full_indices))
    assert (report.used, report.seen, report.tokens) == (len(used), len(used), full_indices.size)
    # now keep only the codes seen at least 3 times: restricted search maps every token to one
    build_remap([tmp_path / "full.npy"], tmp_path / "few.npy", min_count=3)
    few = load_used(tmp_path / "few.npy").numpy()
    assert 0 < len(few) < len(used)
    quantizer = ema.model.quantizer
    remapped = encode_file(clip, tmp_path / "r.npy", ema, EncodeOptions(remap=tmp_path / "few.npy"))
    compact, meta = load_tokens(remapped.target)
    assert meta.remap is not None and meta.remap.size == len(few) and compact.max() < len(few)
    # tokens whose code is kept are unchanged; the others moved to a kept code
    kept = np.isin(full_indices, few)
    np.testing.assert_array_equal(few[compact][kept], full_indices[kept])
    assert ema.model.quantizer is quantizer  # the model is left as it was
    with pytest.raises(TokenFileError, match="remap="):
        decode_file(remapped.target, tmp_path / "r.mp4", ema)
    with pytest.raises(TokenFileError, match="not the remap file"):
        decode_file(remapped.target, tmp_path / "r.mp4", ema, remap=tmp_path / "used.npy")
    decode_file(remapped.target, tmp_path / "r.mp4", ema, remap=tmp_path / "few.npy")
    assert probe(tmp_path / "r.mp4").frames == 11


def test_remap_without_restricted_search_fails_on_unknown_codes(
    tmp_path: Path, clip: Path, fsq: api.Tokenizer
) -> None:
    full, meta, _ = encode_indices(clip, fsq)
    codes = np.unique(full)
    np.save(tmp_path / "all.npy", codes.astype(np.int64))
    compact, meta, _ = encode_indices(clip, fsq, EncodeOptions(remap=tmp_path / "all.npy"))
    np.testing.assert_array_equal(codes[compact], full)
    np.save(tmp_path / "part.npy", codes[1:].astype(np.int64))
    with pytest.raises(RemapError, match="not in the remap file"):
        encode_indices(clip, fsq, EncodeOptions(remap=tmp_path / "part.npy"))


def test_remap_build_refuses_mixed_models(tmp_path: Path, clip: Path, fsq: api.Tokenizer,
                                          ema: api.Tokenizer) -> None:
    encode_file(clip, tmp_path / "a.npy", fsq)
    encode_file(clip, tmp_path / "b.npy", ema)
    with pytest.raises(TokenFileError, match="one model"):
        build_remap([tmp_path], tmp_path / "u.npy")
    assert not (tmp_path / "u.npy").exists()


def test_usage_statistics(tmp_path: Path, clip: Path, fsq: api.Tokenizer) -> None:
    encode_file(clip, tmp_path / "a.npy", fsq)
    indices, _ = load_tokens(tmp_path / "a.npy")
    report = build_remap([tmp_path / "a.npy"], None, top=3)
    counts = np.bincount(indices.reshape(-1))
    p = counts[counts > 0] / counts.sum()
    entropy = -(p * np.log(p)).sum()
    assert report.perplexity == pytest.approx(np.exp(entropy))
    assert report.bits_per_index == pytest.approx(entropy / np.log(2))
    assert report.top[0] == (int(counts.argmax()), int(counts.max()))
    assert json.loads(json.dumps(report.to_dict()))["top"][0]["count"] == counts.max()


# ------------------------------------------------------------------ reconstruct, describe


def test_reconstruct_metrics_match_a_direct_computation(tmp_path: Path, clip: Path,
                                                        fsq: api.Tokenizer) -> None:
    from vqtok.metrics import ssim_per_frame

    result = reconstruct_file(clip, fsq, EncodeOptions(chunk=5), tmp_path / "sbs.mp4",
                              side_by_side=True)
    frames = np.concatenate(list(read_frames(clip)))
    indices, _, _ = encode_indices(clip, fsq)
    decoded = video_to_frames(fsq.decode(torch.from_numpy(indices)[None], frames=11))
    ref, rec = torch.from_numpy(frames), torch.from_numpy(decoded)
    assert result.frames == 11 and len(result.psnr_per_frame) == 11
    assert result.psnr == pytest.approx(float(psnr(ref, rec)), abs=1e-6)
    assert result.ssim == pytest.approx(float(ssim_per_frame(ref, rec).mean()), abs=1e-9)
    info = probe(tmp_path / "sbs.mp4")
    assert (info.width, info.height, info.frames) == (96, 32, 11)


def test_describe_paths(tmp_path: Path, clip: Path, models: Path, fsq: api.Tokenizer) -> None:
    encode_file(clip, tmp_path / "a.npy", fsq)
    assert describe_path(clip)["frames"] == 11
    index = describe_path(tmp_path / "a.npy")
    assert (index["kind"], index["shape"], index["dtype"]) == ("index", [4, 4, 6], "uint8")
    assert index["encoded"]["padding"] == 2 and index["source"]["frames"] == 11
    model = describe_path(models / "tiny-fsq")
    assert model["kind"] == "model" and model["config"]["quantizer"] == "fsq"
    assert model["parameters"] == sum(t.numel() for t in fsq.model.state_dict().values())
    assert {r["name"] for r in describe_models([models])} >= {"tiny-fsq", "tiny-ema_vq"}
    with pytest.raises(VqtokError, match="no such"):
        describe_path(tmp_path / "missing.mp4")


# ------------------------------------------------------------------ batches


def test_batched_encode_equals_encoding_alone(tmp_path: Path, fsq: api.Tokenizer) -> None:
    from tests.clips import make_text
    from vqtok.pipeline.batching import encode_jobs

    sources = [
        make_clip(tmp_path / "long.mp4", frames=11, size=(16, 16)),
        make_text(tmp_path / "bad.mp4"),
        make_clip(tmp_path / "short.mp4", frames=2, size=(16, 16)),
        make_clip(tmp_path / "mid.mp4", frames=6, size=(16, 16)),
        make_clip(tmp_path / "wide.mp4", frames=3, size=(16, 24)),  # another size: own batch
    ]
    jobs = plan_inputs(sources, tmp_path / "out", ".npy")
    groups: list[list[str]] = []
    results = dict(encode_jobs(jobs, fsq, EncodeOptions(chunk=4), batch=3,
                                on_start=lambda js: groups.append([j.source.name for j in js])))
    assert groups == [["long.mp4", "short.mp4", "mid.mp4"], ["wide.mp4"]]
    failed = [job.source.name for job, r in results.items() if isinstance(r, Exception)]
    assert failed == ["bad.mp4"] and not (tmp_path / "out" / "bad.npy").exists()
    for job, result in results.items():
        if isinstance(result, Exception):
            continue
        indices, meta = load_tokens(job.target)
        alone, alone_meta, _ = encode_indices(job.source, fsq, EncodeOptions(chunk=4))
        np.testing.assert_array_equal(indices, alone)
        assert meta == alone_meta
    assert load_tokens(tmp_path / "out" / "short.npy")[1].encoded.padding == 3


def test_reconstruct_refuses_frames_smaller_than_the_ssim_window(
    tmp_path: Path, clip: Path, fsq: api.Tokenizer
) -> None:
    with pytest.raises(VqtokError, match="SSIM window"):
        reconstruct_file(clip, fsq, EncodeOptions(size=(8, 16)), tmp_path / "r.mp4")
    assert not list(tmp_path.iterdir())


def test_plan_names_a_collision_with_a_symlink_loop(tmp_path: Path) -> None:
    """A link loop cannot be resolved; its collision with another input is still one clear
    error on each job, not a RuntimeError from Path.resolve."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in/loop.mp4").symlink_to(tmp_path / "in/loop.mp4.next")
    (tmp_path / "in/loop.mp4.next").symlink_to(tmp_path / "in/loop.mp4")
    (tmp_path / "in/loop.mkv").write_bytes(b"1")
    jobs = plan_inputs([tmp_path / "in"], tmp_path / "out", ".npy")
    assert len(jobs) == 2 and all("both be written" in str(j.error) for j in jobs)
