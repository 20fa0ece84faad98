"""Remap files for models with several codebooks / residual levels (issue 13): one used set
per level, built, applied by ``encode --remap`` and checked by ``decode``, through the CLI
(Typer's CliRunner) on tiny real models: residual VQ (3 levels), LFQ and FSQ (2 codebooks),
residual LFQ (2 levels)."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch

from tests.clips import make_clip
from tests.tiny import tiny_config
from vqtok.api import load
from vqtok.disk import file_sha256
from vqtok.errors import QuantizerError, RemapError
from vqtok.families.vqtok import VideoTokenizer
from vqtok.io.checkpoint import save_pretrained
from vqtok.io.model_dirs import REPO_MODELS
from vqtok.io.remap import load_used_sets, save_used_sets
from vqtok.io.tokens import load_tokens
from vqtok.io.video import read_frames
from vqtok.quantizers import build_quantizer
from vqtok.quantizers.ema_residual import EMAResidualQuantizer
from vqtok.quantizers.remap import UsedSets

KINDS = {
    "ema_rvq": ({"num_levels": 3, "codebook_sizes": 16}, 3),
    "lfq": ({"codebook_size": 4, "num_codebooks": 2}, 2),
    "residual_lfq": ({"codebook_size": 4, "num_levels": 2}, 2),
    "fsq": ({"levels": [4, 4], "num_codebooks": 2}, 2),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for kind, (options, _) in KINDS.items():
        torch.manual_seed(0)
        save_pretrained(VideoTokenizer(tiny_config(kind, options)), root / f"tiny-{kind}")
    return root


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    make_clip(root / "a.mp4", frames=9, size=(32, 48), fps=8)
    (root / "sub").mkdir()
    make_clip(root / "sub" / "b.mp4", frames=3, size=(32, 48), fps=8)
    return root


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory, videos: Path, run) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """Full-codebook index files of both videos, per model: ``<root>/<kind>/``."""
    root = tmp_path_factory.mktemp("codes")
    for kind in KINDS:
        run("encode", videos, "-o", root / kind, "-m", f"tiny-{kind}", "--device", "cpu", "-q")
    return {kind: root / kind for kind in KINDS}


def _one_error(result, path: Path) -> str:  # type: ignore[no-untyped-def]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"error: {path}: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("kind", KINDS)
def test_build_encode_decode_with_no_flag_is_bit_identical(
    kind: str, tmp_path: Path, videos: Path, encoded: dict[str, Path], run  # type: ignore[no-untyped-def]
) -> None:
    full, levels = encoded[kind], KINDS[kind][1]
    # several levels do not fit a .npy: refused before counting, naming the .safetensors
    refused = run("remap", "build", full, "-o", tmp_path / "used.npy", code=2)
    assert refused.stderr.strip() == (
        f"error: -o {tmp_path / 'used.npy'}: the index files have {levels} codebooks / levels "
        f"and a .npy remap file holds one: name it {tmp_path / 'used.safetensors'} (or count "
        "one level with --level)")
    assert list(tmp_path.glob("used*")) == []
    table = run("remap", "build", full, "-o", tmp_path / "used.safetensors").stdout
    used_file = tmp_path / "used.safetensors"
    assert used_file.is_file() and not (tmp_path / "used.npy").exists()
    assert f"per level, {levels} levels" in table and "bits per index" in table
    sets = load_used_sets(used_file)
    assert sets.num_levels == levels
    model = ("-m", f"tiny-{kind}", "--device", "cpu", "-q")
    run("encode", videos, "-o", tmp_path / "r", *model, "--remap", used_file)
    for name in ("a", "sub/b"):
        plain, _ = load_tokens(full / f"{name}.npy")
        compact, meta = load_tokens(tmp_path / "r" / f"{name}.npy")
        assert meta.remap is not None and meta.remap.sha256 == file_sha256(used_file)
        assert meta.remap.sizes == sets.sizes and meta.remap.size == max(sets.sizes)
        for level in range(levels):
            assert compact[..., level].max() < sets.sizes[level]
            # compact ids follow the order of the original codes
            assert np.array_equal(sets.levels[level].numpy()[compact[..., level]],
                                  plain[..., level])
    info = json.loads(run("info", tmp_path / "r" / "a.npy", "--json").stdout)
    assert info["remap"]["sizes"] == list(sets.sizes)
    run("decode", full, "-o", tmp_path / "plain", *model)
    run("decode", tmp_path / "r", "-o", tmp_path / "remapped", *model, "--remap", used_file)
    for name in ("a", "sub/b"):
        frames = [np.concatenate(list(read_frames(tmp_path / d / f"{name}.mp4")))
                  for d in ("plain", "remapped")]
        assert frames[0].shape[0] == (9 if name == "a" else 3)
        np.testing.assert_array_equal(frames[0], frames[1])


def test_decode_checks_the_remap_file(tmp_path: Path, videos: Path, encoded: dict[str, Path],
                                      run) -> None:  # type: ignore[no-untyped-def]
    full = encoded["ema_rvq"]
    run("remap", "build", full, "-o", tmp_path / "used.safetensors")
    run("remap", "build", full, "-o", tmp_path / "other.safetensors", "--min-count", "2")
    model = ("-m", "tiny-ema_rvq", "--device", "cpu", "-q")
    run("encode", videos / "a.mp4", "-o", tmp_path / "r.npy", *model,
        "--remap", tmp_path / "used.safetensors")
    missing = run("decode", tmp_path / "r.npy", "-o", tmp_path / "v.mp4", *model, code=1)
    assert "pass that file with --remap" in _one_error(missing, tmp_path / "r.npy")
    wrong = run("decode", tmp_path / "r.npy", "-o", tmp_path / "v.mp4", *model,
                "--remap", tmp_path / "other.safetensors", code=1)
    line = _one_error(wrong, tmp_path / "r.npy")
    assert re.search(r"other.safetensors \(\d+/\d+/\d+ \(per level\) codes, .*\) is not the "
                     r"remap file", line), line
    assert not (tmp_path / "v.mp4").exists()
    info = json.loads(run("info", tmp_path / "used.safetensors", "--json").stdout)
    assert info["kind"] == "remap" and info["num_levels"] == 3
    assert info["used_per_level"] == list(load_used_sets(tmp_path / "used.safetensors").sizes)


@pytest.mark.parametrize("kind", ["lfq", "residual_lfq", "fsq"])
def test_a_missing_code_is_one_error_naming_the_level(
    kind: str, tmp_path: Path, videos: Path, encoded: dict[str, Path], run  # type: ignore[no-untyped-def]
) -> None:
    plain, meta = load_tokens(encoded[kind] / "a.npy")
    levels = [np.unique(plain[..., level]) for level in range(plain.shape[-1])]
    dropped = int(levels[1][0])
    levels[1] = levels[1][1:]
    part = save_used_sets(tmp_path / "part.safetensors", UsedSets.of(levels),
                          meta.codebook_size)
    clip = videos / "a.mp4"
    result = run("encode", clip, "-o", tmp_path / "r.npy", "-m", f"tiny-{kind}",
                 "--device", "cpu", "-q", "--remap", part, code=1)
    line = _one_error(result, clip)
    count = int((plain[..., 1] == dropped).sum())
    assert f"level 1: {count} indices use codes that are not in that level's used set in " \
           f"part.safetensors (e.g. [{dropped}])" in line, line
    assert not (tmp_path / "r.npy").exists() and not (tmp_path / "r.json").exists()


def test_residual_search_restricted_per_level_keeps_residuals_consistent(
    tmp_path: Path, videos: Path, encoded: dict[str, Path], run  # type: ignore[no-untyped-def]
) -> None:
    """A used set without a code the video picked is no error for residual VQ: level l
    searches its used codes only, and the later levels quantize what those codes left."""
    plain, _ = load_tokens(encoded["ema_rvq"] / "a.npy")
    levels = [np.unique(plain[..., level]) for level in range(3)]
    dropped = int(levels[0][0])
    levels[0] = levels[0][1:]  # the tokens that used this level-0 code must move
    part = save_used_sets(tmp_path / "part.safetensors", UsedSets.of(levels), 16)
    run("encode", videos / "a.mp4", "-o", tmp_path / "r.npy", "-m", "tiny-ema_rvq",
        "--device", "cpu", "-q", "--remap", part)
    compact, _ = load_tokens(tmp_path / "r.npy")
    sets = load_used_sets(part)
    for level in range(3):
        assert compact[..., level].max() < sets.sizes[level]
    full = sets.to_full(torch.from_numpy(compact)).numpy()
    moved = plain[..., 0] == dropped
    assert moved.any() and not (full[..., 0] == dropped).any()
    # elsewhere level 0 keeps its code, so every later level sees the same residual
    np.testing.assert_array_equal(full[~moved], plain[~moved])


def test_restricted_indices_match_a_brute_force_search() -> None:
    torch.manual_seed(0)
    quantizer = EMAResidualQuantizer(dim=4, num_levels=3, codebook_sizes=[8, 6, 5]).eval()
    for level in range(3):  # spread the codes so the search has real choices
        quantizer.level_weight(level).data.normal_()
    z = torch.randn(2, 4, 3, 5, 5)
    allowed = [torch.tensor([1, 3, 4, 7]), torch.tensor([0, 5]), torch.tensor([0, 2, 3])]
    got = quantizer.restricted_indices(z, allowed)
    assert got.shape == (2, 3, 5, 5, 3)
    r = z.movedim(1, -1).reshape(-1, 4).double()
    expected = []
    for level, ids in enumerate(allowed):
        rows = quantizer.level_weight(level)[ids].double()
        idx = torch.cdist(r, rows).argmin(dim=1)
        r = r - rows[idx]
        expected.append(idx)
    assert torch.equal(got.reshape(-1, 3), torch.stack(expected, dim=1))
    everything = [torch.arange(k) for k in (8, 6, 5)]
    assert torch.equal(quantizer.restricted_indices(z, everything), quantizer(z).indices)
    with pytest.raises(QuantizerError, match="expected 3 allowed code sets"):
        quantizer.restricted_indices(z, allowed[:2])
    with pytest.raises(QuantizerError, match=r"indices must lie in \[0, 5\)"):
        quantizer.restricted_indices(z, [*allowed[:2], torch.tensor([5])])


@pytest.mark.parametrize("kind", ["vq", "ema_vq", "gumbel"])
def test_single_codebook_restriction_equals_a_quantizer_built_with_the_remap(kind: str) -> None:
    torch.manual_seed(0)
    plain = build_quantizer(kind, 4, codebook_size=12).eval()
    used = torch.tensor([0, 2, 5, 6, 11])
    remapped = build_quantizer(kind, 4, codebook_size=12, remap=used).eval()
    remapped.load_state_dict(plain.state_dict(), strict=False)
    z = torch.randn(3, 4, 6, 6)
    assert plain.restricts_search
    assert torch.equal(plain.restricted_indices(z, [used]), remapped(z).indices)


def test_lfq_restriction_checks_instead_of_searching() -> None:
    quantizer = build_quantizer("lfq", 4, codebook_size=4, num_codebooks=2).eval()
    assert not quantizer.restricts_search
    z = torch.randn(2, 4, 5, 5)
    full = quantizer(z).indices
    allowed = [torch.unique(full[..., 0]), torch.unique(full[..., 1])]
    compact = quantizer.restricted_indices(z, allowed)
    assert torch.equal(UsedSets(tuple(allowed)).to_full(compact), full)
    with pytest.raises(RemapError, match="level 1: .* not in that level's used set"):
        quantizer.restricted_indices(z, [allowed[0], allowed[1][1:]])


BAD_HEADER = {"format_version": 1, "num_levels": 3, "codebook_size": 16}


def _multi(levels: dict[str, np.ndarray], header: dict[str, int] | None = BAD_HEADER) -> bytes:
    metadata = None if header is None else {"vqtok_remap": json.dumps(header)}
    return safetensors.numpy.save(levels, metadata=metadata)


def _bad_remaps() -> dict[str, tuple[str, bytes, str]]:
    """name -> (file name, bytes, reason) for a 3-level model of 16 codes per level."""
    ok = {"level0": np.arange(4), "level1": np.array([1, 5]), "level2": np.array([0, 15])}
    good = _multi(ok)
    return {
        "one_level_npy": ("u.npy", b"", r"holds 1 used set \(one level\) but the model has 3"),
        "two_levels": ("u.safetensors", _multi({"level0": ok["level0"], "level1": ok["level1"]},
                                               dict(BAD_HEADER, num_levels=2)),
                       r"holds 2 used sets \(one per level\) but the model has 3"),
        "unsorted": ("u.safetensors", _multi(dict(ok, level1=np.array([5, 1]))),
                     r"level 1: remap array is not sorted \(id 1 follows 5\)"),
        "out_of_range": ("u.safetensors", _multi(dict(ok, level2=np.array([3, 16]))),
                         r"level 2: remap array holds id 16, beyond the codebook of 16 codes"),
        "empty_level": ("u.safetensors", _multi(dict(ok, level0=np.array([], dtype=np.int64)))
                        , r"level 0: remap array is empty"),
        "float_level": ("u.safetensors", _multi(dict(ok, level2=np.array([1.0, 2.0]))),
                        r"level 2: remap array has dtype float64"),
        "missing_tensor": ("u.safetensors",
                           _multi({"level0": ok["level0"], "level2": ok["level2"]}),
                           r"holds tensors \['level0', 'level2'\] but its header says 3 level"),
        "no_header": ("u.safetensors", _multi(ok, None), r"no 'vqtok_remap' metadata"),
        "other_version": ("u.safetensors", _multi(ok, dict(BAD_HEADER, format_version=2)),
                          r"format version 2 is not supported"),
        "pickled": ("u.safetensors", pickle.dumps({"level0": [1, 2]}),
                    r"not a readable .safetensors remap file"),
        "pickled_npy": ("u.npy", b"", r"not a plain .npy integer array"),
        "truncated": ("u.safetensors", good[:-5], r"not a readable .safetensors remap file"),
    }


@pytest.mark.parametrize("name", list(_bad_remaps()))
def test_bad_multi_level_remap_files_are_one_error_each(
    name: str, tmp_path: Path, videos: Path, run  # type: ignore[no-untyped-def]
) -> None:
    file_name, data, reason = _bad_remaps()[name]
    path = tmp_path / file_name
    if name == "one_level_npy":
        np.save(path, np.array([1, 2, 3], dtype=np.int64))
    elif name == "pickled_npy":
        np.save(path, np.array([{"level0": 1}], dtype=object), allow_pickle=True)
    else:
        path.write_bytes(data)
    result = run("encode", videos, "-o", tmp_path / "out", "-m", "tiny-ema_rvq",
                 "--device", "cpu", "-q", "--remap", path, code=1)
    assert re.search(reason, _one_error(result, path)), result.stderr
    assert not (tmp_path / "out").exists()


def test_min_count_per_level_and_usage_statistics(
    tmp_path: Path, encoded: dict[str, Path], run  # type: ignore[no-untyped-def]
) -> None:
    full = encoded["ema_rvq"]
    indices = [load_tokens(full / f"{n}.npy")[0].reshape(-1, 3) for n in ("a", "sub/b")]
    counts = [np.bincount(np.concatenate(indices)[:, level], minlength=16) for level in range(3)]
    report = json.loads(run("remap", "build", full, "-o", tmp_path / "u", "--min-count",
                            "1,3,2", "--top", "2", "--json").stdout)
    assert report["output"] == str(tmp_path / "u.safetensors")
    assert report["tokens"] == sum(len(i) for i in indices) and report["files"] == 2
    sets = load_used_sets(tmp_path / "u.safetensors")
    for level, (entry, threshold) in enumerate(zip(report["levels"], (1, 3, 2), strict=True)):
        kept = np.flatnonzero(counts[level] >= threshold)
        assert sets.levels[level].tolist() == kept.tolist()
        p = counts[level][counts[level] > 0] / counts[level].sum()
        entropy = -(p * np.log(p)).sum()
        assert entry["level"] == level and entry["min_count"] == threshold
        assert entry["used"] == len(kept) and entry["seen"] == int((counts[level] > 0).sum())
        assert entry["perplexity"] == pytest.approx(np.exp(entropy))
        assert entry["bits_per_index"] == pytest.approx(entropy / np.log(2))
        assert entry["top"][0] == {"code": int(counts[level].argmax()),
                                   "count": int(counts[level].max())}
        assert len(entry["top"]) == 2
    assert report["used"] == sum(len(s) for s in sets.levels)
    one = json.loads(run("remap", "build", full, "-o", tmp_path / "l1.npy", "--level", "1",
                         "--json").stdout)
    assert one["used"] == int((counts[1] > 0).sum()) and len(one["levels"]) == 1
    assert np.load(tmp_path / "l1.npy").tolist() == np.flatnonzero(counts[1]).tolist()
    too_high = run("remap", "build", full, "-o", tmp_path / "none", "--min-count", "1,1,100000",
                   code=1)
    assert "no code occurs 100000 times or more at level 2" in too_high.stderr
    assert not list(tmp_path.glob("none*"))
    wrong = run("remap", "build", full, "-o", tmp_path / "w", "--min-count", "1,2", code=1)
    assert "gives 2 thresholds but the files have 3 level(s)" in wrong.stderr
    run("remap", "build", full, "-o", tmp_path / "w", "--min-count", "0", code=2)
    run("remap", "build", full, "-o", tmp_path / "w", "--min-count", "x", code=2)


def test_remap_files_in_a_codes_directory_are_not_index_files(
    tmp_path: Path, encoded: dict[str, Path], run  # type: ignore[no-untyped-def]
) -> None:
    codes = tmp_path / "codes"
    codes.mkdir()
    for name in ("a.npy", "a.json"):
        (codes / name).write_bytes((encoded["lfq"] / name).read_bytes())
    run("remap", "build", codes, "-o", codes / "used.safetensors")
    again = json.loads(run("remap", "build", codes, "-o", codes / "used.safetensors",
                           "--json").stdout)
    assert again["files"] == 1


SHIPPED = sorted(p for p in REPO_MODELS.iterdir() if (p / "config.json").exists())


@pytest.mark.parametrize("directory", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_model_remapped_round_trip_is_exact(directory: Path, tmp_path: Path) -> None:
    """Whatever the shipped model's quantizer and sizes: used sets built from a clip's own
    indices give compact ids below each level's used count, and back the very same indices."""
    tok = load(directory, device="cpu")
    t = torch.linspace(0, 1, 5)[:, None, None]
    y, x = torch.meshgrid(torch.linspace(0, 3, 32), torch.linspace(0, 3, 32), indexing="ij")
    video = torch.stack([torch.sin(x + 2 * t + k) * torch.cos(y - t + 2 * k) * 0.8
                         for k in range(3)])[None]  # (1, 3, 5, 32, 32) in [-1, 1]
    full = tok.encode(video)
    levels = tok.num_codebooks
    columns = [full[..., i] for i in range(levels)] if levels > 1 else [full]
    sets = UsedSets.of([torch.unique(c) for c in columns])
    path = save_used_sets(tmp_path / "used.npy", sets, tok.codebook_size)
    assert path.suffix == (".safetensors" if levels > 1 else ".npy")
    compact = tok.encode(video, remap=path)
    assert compact.shape == full.shape
    for column, size in zip([compact[..., i] for i in range(levels)] if levels > 1 else [compact],
                            sets.sizes, strict=True):
        assert int(column.max()) < size
    assert torch.equal(tok.unmap(compact, path), full)  # so decode gets the same indices
    assert torch.equal(tok.unmap(compact, sets), full)
