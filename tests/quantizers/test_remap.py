"""Remap (in memory: vqtok.quantizers.remap; files: vqtok.io.remap): file validation, round
trips, unknown-id policies."""

import os
import pickle

import numpy as np
import pytest
import torch

from vqtok.errors import ConfigError, QuantizerError, RemapError
from vqtok.io.remap import load_used, save_used
from vqtok.quantizers.remap import IndexRemap, build_used, validate_used

USED = torch.tensor([1, 4, 5, 9], dtype=torch.int64)


def test_validate_returns_int64_copy():
    out = validate_used(np.array([0, 3, 7], dtype=np.int32), codebook_size=8)
    assert out.dtype == torch.int64 and out.tolist() == [0, 3, 7]


@pytest.mark.parametrize(
    "bad, words",
    [
        (np.array([3, 1, 5]), "not sorted"),
        (np.array([1, 3, 3]), "duplicate"),
        (np.array([-1, 2]), "negative"),
        (np.array([[1, 2], [3, 4]]), "1-D"),
        (np.array([1.0, 2.0]), "dtype float64"),
        (np.array([True, False]), "dtype bool"),
        (np.array([1, 2, 16]), "beyond the codebook"),
        (np.array([], dtype=np.int64), "empty"),
    ],
)
def test_validate_rejects(bad, words):
    with pytest.raises(RemapError, match=words):
        validate_used(bad, codebook_size=16, path="used.npy")


def test_save_load_round_trip(tmp_path):
    path = tmp_path / "used.npy"
    save_used(path, USED)
    raw = np.load(path, allow_pickle=False)
    assert raw.dtype == np.int64 and raw.ndim == 1
    assert torch.equal(load_used(path), USED)
    assert [p.name for p in tmp_path.iterdir()] == ["used.npy"]  # no temp file left behind


def test_save_refuses_bad_array_and_keeps_old_file(tmp_path):
    path = tmp_path / "used.npy"
    save_used(path, USED)
    with pytest.raises(RemapError, match="not sorted"):
        save_used(path, np.array([5, 2]))
    assert torch.equal(load_used(path), USED)


def test_load_rejects_pickled_object_array(tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, np.array([1, "x", None], dtype=object), allow_pickle=True)
    with pytest.raises(RemapError, match="not a plain .npy"):
        load_used(path)


def test_load_rejects_raw_pickle_npz_missing_and_range(tmp_path):
    raw = tmp_path / "raw.npy"
    raw.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(RemapError):
        load_used(raw)
    npz = tmp_path / "a.npz"
    np.savez(npz, used=np.array([1, 2]))
    with pytest.raises(RemapError, match="npz"):
        load_used(npz)
    with pytest.raises(RemapError, match="not found"):
        load_used(tmp_path / "missing.npy")
    ok = tmp_path / "ok.npy"
    np.save(ok, np.array([1, 20]))
    with pytest.raises(RemapError, match="beyond") as info:
        load_used(ok, codebook_size=10)
    assert os.fspath(ok) in str(info.value)


def test_build_used_counts_over_iterable():
    batches = [torch.tensor([[3, 3], [0, 7]]), np.array([7, 3, 5], dtype=np.uint16)]
    assert build_used(batches, 8).tolist() == [0, 3, 5, 7]
    assert build_used(batches, 8, min_count=2).tolist() == [3, 7]
    with pytest.raises(QuantizerError, match="lie in"):
        build_used([torch.tensor([8])], 8)
    with pytest.raises(QuantizerError, match="integers"):
        build_used([torch.tensor([1.0])], 8)


def test_round_trip_any_shape_and_persistent_buffer(tmp_path):
    path = tmp_path / "used.npy"
    save_used(path, USED)
    remap = IndexRemap(path, codebook_size=10)
    assert remap.re_embed == 4 and "used" in remap.state_dict()
    full = torch.tensor([[[9, 1], [5, 4]]])  # rank 3
    compact = remap.remap_to_used(full)
    assert compact.shape == full.shape and compact.tolist() == [[[3, 0], [2, 1]]]
    assert torch.equal(remap.unmap_to_all(compact), full)
    scalar = remap.remap_to_used(torch.tensor(5))
    assert scalar.shape == () and int(scalar) == 2


def test_unknown_extra_decodes_to_first_used():
    remap = IndexRemap(USED, unknown_index="extra")
    assert remap.re_embed == 5 and remap.unknown_index == 4
    compact = remap.remap_to_used(torch.tensor([0, 4, 8, 9, 100]))
    assert compact.tolist() == [4, 1, 4, 3, 4]
    assert remap.unmap_to_all(compact).tolist() == [1, 4, 1, 9, 1]


def test_unknown_int_policy_and_validation():
    remap = IndexRemap(USED, unknown_index=2)
    assert remap.remap_to_used(torch.tensor([2, 9, 3])).tolist() == [2, 3, 2]
    with pytest.raises(ConfigError):
        IndexRemap(USED, unknown_index=4)
    with pytest.raises(ConfigError):
        IndexRemap(USED, unknown_index="zero")


def test_unknown_random_reproducible_with_generator():
    full = torch.tensor([0, 2, 3, 6, 7, 8] * 20)  # none of these are used
    draws = []
    for _ in range(2):
        remap = IndexRemap(USED, generator=torch.Generator().manual_seed(7))
        draws.append(remap.remap_to_used(full))
    assert torch.equal(draws[0], draws[1])
    assert draws[0].min() >= 0 and draws[0].max() < 4
    assert len(set(draws[0].tolist())) > 1  # really random, not a constant
    known = IndexRemap(USED).remap_to_used(torch.tensor([1, 4, 5, 9]))
    assert known.tolist() == [0, 1, 2, 3]  # known ids never touched by the RNG


def test_unmap_does_not_mutate_and_rejects_out_of_range():
    remap = IndexRemap(USED, unknown_index="extra")
    compact = torch.tensor([[4, 0], [4, 3]])
    before = compact.clone()
    remap.unmap_to_all(compact)
    assert torch.equal(compact, before)
    with pytest.raises(QuantizerError, match=r"\[0, 5\)"):
        remap.unmap_to_all(torch.tensor([5]))
    with pytest.raises(QuantizerError):
        remap.unmap_to_all(torch.tensor([-1]))
    with pytest.raises(QuantizerError, match="integer"):
        remap.unmap_to_all(torch.tensor([1.0]))


def test_remap_matches_naive_match_tensor():
    gen = torch.Generator().manual_seed(0)
    used = torch.unique(torch.randint(0, 64, (20,), generator=gen))
    remap = IndexRemap(used, codebook_size=64, unknown_index="extra")
    full = torch.randint(0, 64, (3, 50), generator=gen)
    match = full.unsqueeze(-1) == used  # (3, 50, U), the reference's method
    expect = torch.where(match.any(-1), match.long().argmax(-1), torch.tensor(used.numel()))
    assert torch.equal(remap.remap_to_used(full), expect)


def test_old_import_paths_name_the_same_objects():
    """`vqtok.io.usedsets` and `vqtok.quantizers.used_sets`, the paths the README named before
    remap had one home per layer, still give the same functions and class."""
    from vqtok.io import remap as remap_files
    from vqtok.io import usedsets
    from vqtok.quantizers import remap, used_sets

    assert usedsets.load_used_sets is remap_files.load_used_sets
    assert usedsets.save_used_sets is remap_files.save_used_sets
    assert usedsets.require_remap_file is remap_files.require_remap_file
    assert usedsets.UsedSets is used_sets.UsedSets is remap.UsedSets
