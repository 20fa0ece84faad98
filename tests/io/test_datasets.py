"""vqtok.io.datasets: the PyTorch datasets over packed token datasets, with DataLoader workers,
DistributedSampler and ranks; and Hugging Face ``datasets`` reading the same shards."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from tests.pipeline.test_pack import write_clips
from vqtok.io.tokens import load_tokens

pytest.importorskip("pyarrow.parquet", reason="token datasets need pyarrow (vqtok[data])")

from vqtok.io.datasets import TokenDataset, TokenIterableDataset  # noqa: E402 - needs pyarrow
from vqtok.pipeline.pack import pack_dataset  # noqa: E402

ROWS = 40


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A dataset of 40 clips (2 levels) in several shards of several row groups each, and
    each clip's indices read from its index file."""
    root = tmp_path_factory.mktemp("data")
    paths = write_clips(root / "codes", ROWS, codebooks=2)
    import vqtok.io.shards

    # small row groups, so that shards hold several and the iterable split is by group
    saved, vqtok.io.shards.ROW_GROUP_BYTES = vqtok.io.shards.ROW_GROUP_BYTES, 400
    try:
        pack_dataset([root / "codes"], root / "ds", shard_size_mb=0.002)
    finally:
        vqtok.io.shards.ROW_GROUP_BYTES = saved
    return root / "ds", {f"codes/{p.name}": load_tokens(p)[0] for p in paths}


def check(item: dict[str, object], originals: dict[str, np.ndarray]) -> str:
    name = str(item["index_file"])
    indices = item["indices"]
    assert isinstance(indices, torch.Tensor) and indices.dtype == torch.int64
    assert np.array_equal(indices.numpy(), originals[name])
    return name


def test_the_dataset_has_several_shards_and_row_groups(packed) -> None:  # type: ignore[no-untyped-def]
    directory, _ = packed
    dataset = TokenDataset(directory)
    assert len(dataset.manifest["shards"]) >= 3
    assert len(dataset._shards.groups) > len(dataset.manifest["shards"])


def test_map_style_indexing(packed) -> None:  # type: ignore[no-untyped-def]
    directory, originals = packed
    dataset = TokenDataset(directory, cache=2)
    order = np.random.default_rng(0).permutation(ROWS)  # random access across row groups
    names = [check(dataset[int(i)], originals) for i in order]
    assert sorted(names) == sorted(originals)
    assert dataset[-1]["index_file"] == dataset[ROWS - 1]["index_file"]
    with pytest.raises(IndexError):
        dataset[ROWS]
    clone = pickle.loads(pickle.dumps(dataset))  # what spawn-started workers receive
    assert check(clone[7], originals) == dataset[7]["index_file"]


def test_dataloader_workers_and_distributed_sampler(packed) -> None:  # type: ignore[no-untyped-def]
    directory, originals = packed
    dataset = TokenDataset(directory)
    dataset[0]  # the parent has open files and a cache: the forked workers must not share them
    seen: list[str] = []
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=3)
        loader = DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=2)
        names = [check(item, originals) for item in loader]
        assert len(names) == ROWS // 2
        seen += names
    assert sorted(seen) == sorted(originals)  # the two ranks together: every clip once


def test_batches_of_equal_shapes_collate(packed) -> None:  # type: ignore[no-untyped-def]
    directory, originals = packed
    dataset = TokenDataset(directory)
    same = [i for i in range(ROWS) if dataset[i]["indices"].shape[0] == 2]
    batch = next(iter(DataLoader(torch.utils.data.Subset(dataset, same), batch_size=4)))
    assert batch["indices"].shape == (4, 2, 4, 6, 2) and len(batch["index_file"]) == 4
    for row, name in enumerate(batch["index_file"]):
        assert np.array_equal(batch["indices"][row].numpy(), originals[name])


def test_iterable_splits_ranks_and_workers_without_overlap(packed) -> None:  # type: ignore[no-untyped-def]
    directory, originals = packed
    everything = [check(item, originals) for item in TokenIterableDataset(directory)]
    assert everything == list(originals)  # one consumer: the whole dataset in order
    shares = []
    for rank in range(2):
        stream = TokenIterableDataset(directory, rank=rank, world_size=2)
        shares.append([check(item, originals)
                       for item in DataLoader(stream, batch_size=None, num_workers=2)])
    together = shares[0] + shares[1]
    assert all(shares) and sorted(together) == sorted(everything)  # every row exactly once


def test_iterable_consumers_stream_in_dataset_order(packed) -> None:  # type: ignore[no-untyped-def]
    directory, originals = packed
    everything = list(originals)
    shares = [[check(item, originals) for item in TokenIterableDataset(directory, r, 4)]
              for r in range(4)]
    for share in shares:
        positions = [everything.index(name) for name in share]
        assert share and positions == sorted(positions)
    assert sorted(sum(shares, [])) == sorted(everything)


def test_iterable_rank_from_the_environment(packed, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    directory, originals = packed
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    mine = [check(item, originals) for item in TokenIterableDataset(directory)]
    theirs = [check(item, originals)
              for r in (0, 2) for item in TokenIterableDataset(directory, rank=r)]
    assert mine and sorted(mine + theirs) == sorted(originals)


def test_hugging_face_datasets_reads_the_shards(packed, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    directory, originals = packed
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset("parquet", data_files=sorted(map(str, directory.glob(
        "*.parquet"))), split="train", cache_dir=str(tmp_path / "hf"))
    assert loaded.num_rows == ROWS
    assert str(loaded.features["indices"].feature.dtype) == "uint16"
    ours = TokenDataset(directory)
    for i, row in enumerate(loaded):
        indices = np.asarray(row["indices"]).reshape(row["shape"])
        assert np.array_equal(indices, originals[row["index_file"]])
        assert row["index_file"] == ours[i]["index_file"]
        assert row["fps"] == "30000/1001" and row["model"] == "tiny"
