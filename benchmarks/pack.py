"""Throughput of ``vqtok pack`` and random access into `vqtok.data.TokenDataset`, and of every
other ``--format`` (pack, then read with the format's own reader), run by hand.

    .venv/bin/python benchmarks/pack.py [--files 10000] [--grid 5x16x16] [--levels 4]
        [--vocab 1024] [--shard-size 256] [--items 5000]
        [--formats parquet,megatron,mds,litdata,webdataset] [--results FILE]

Writes ``--files`` synthetic index files (random indices of shape grid (+ levels), written with
`vqtok.io.tokens.save_tokens`, as ``vqtok encode`` would), then measures:

- pack: `vqtok.pipeline.pack.pack_dataset` over the directory into a fresh dataset, rows/s and MB/s
of
  index data (uncompressed), plus the compressed dataset size;
- random access: ``--items`` reads in a random order through ``DataLoader(TokenDataset,
  batch_size=None, sampler=random order)`` with 0 and with 2 workers, and with 2 workers in
  batches of 32 (a worker sends each item or batch through a queue, so single items pay that
  per item), items/s; a sample of items is compared with its index files afterwards;
- peers in the same run, 0 workers: the same files packed in row groups of ``--peer-group-kb``
  (1 MB, the size before 2026-12-02), and Hugging Face ``datasets`` reading our shards
  (``load_dataset("parquet")``, which first converts them to its own Arrow cache; ``ds[i]``
  with the indices as int64 tensors), when it is installed;
- every other format of ``--formats`` (its default flattening: ``interleave`` for Megatron and
  LitData, ``levels`` for MDS and WebDataset): pack rows/s and MB/s, size, and ``--items``
  reads through the format's own reader: megatron-core's ``IndexedDataset`` and
  ``litdata.StreamingDataset`` in a random order, MDS through vqtok's reader (mosaicml-streaming
  cannot be installed beside vqtok) in a random order, WebDataset's ``WebDataset`` in order (tar
  streams have no random access). A format whose library is missing is a line saying so.

With ``--results`` the table becomes the ``## Pack`` section of that file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import loadavg, write_section  # noqa: E402

import vqtok.io.shards  # noqa: E402
from vqtok.data import TokenDataset  # noqa: E402
from vqtok.data.formats import DEFAULT_FLATTEN, layout_module  # noqa: E402
from vqtok.errors import MissingDependencyError  # noqa: E402
from vqtok.io.tokens import (  # noqa: E402
    EncodedInfo,
    SourceInfo,
    TokenMetadata,
    fps_to_text,
    load_tokens,
    save_tokens,
)
from vqtok.pipeline.pack import pack_dataset  # noqa: E402


def write_index_files(directory: Path, files: int, grid: tuple[int, int, int], levels: int,
                      vocab: int) -> None:
    """``files`` index files of random indices, as `vqtok encode` writes them."""
    fps = fps_to_text(Fraction(25))
    frames = 1 + 4 * (grid[0] - 1)
    size = (grid[1] * 8, grid[2] * 8)
    meta = TokenMetadata(
        model="synthetic", model_sha256="0" * 64, family="vqtok",
        quantizer="ema_rvq" if levels > 1 else "ema_vq", codebook_size=vocab,
        num_codebooks=levels, grid=grid,
        source=SourceInfo(file="clip.mp4", frames=frames, fps=fps, size=size),
        encoded=EncodedInfo(frames=frames, size=size, resize="none", padding=0, fps=fps),
    )
    rng = np.random.default_rng(0)
    for i in range(files):
        sub = directory / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        source = SourceInfo(file=f"clip{i:06d}.mp4", frames=frames, fps=fps, size=size)
        save_tokens(sub / f"clip{i:06d}.npy", rng.integers(0, vocab, meta.shape),
                    replace(meta, source=source))


def random_reads(dataset: TokenDataset, items: int, workers: int, batch: int | None) -> float:
    """items/s of ``items`` reads in a random order through a DataLoader (the clips all have
    one shape, so the default collate stacks batches)."""
    order = np.random.default_rng(1).integers(0, len(dataset), items).tolist()
    loader = DataLoader(dataset, batch_size=batch, sampler=order, num_workers=workers)
    start = time.perf_counter()
    count = sum(1 if batch is None else len(b["index_file"]) for b in loader)
    return count / (time.perf_counter() - start)


def peer_group_size(work: Path, kb: int, items: int) -> tuple[float, float]:
    """(items/s at 0 workers, dataset MB) of the same files packed in row groups of ``kb``."""
    saved, vqtok.io.shards.ROW_GROUP_BYTES = vqtok.io.shards.ROW_GROUP_BYTES, kb << 10
    try:
        report = pack_dataset([work / "codes"], work / "dataset-peer")
    finally:
        vqtok.io.shards.ROW_GROUP_BYTES = saved
    return random_reads(TokenDataset(work / "dataset-peer"), items, 0, None), report.bytes / 1e6


def peer_hf_datasets(work: Path, items: int) -> tuple[float, float] | None:
    """(items/s of random ``ds[i]``, seconds to load) with Hugging Face ``datasets``."""
    try:
        import datasets
    except ImportError:
        return None
    datasets.disable_progress_bars()
    start = time.perf_counter()
    files = sorted(str(p) for p in (work / "dataset").glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train",
                               cache_dir=str(work / "hf-cache")).with_format("torch")
    load_s = time.perf_counter() - start
    order = np.random.default_rng(1).integers(0, len(ds), items).tolist()
    start = time.perf_counter()
    for i in order:
        ds[i]["indices"]
    return items / (time.perf_counter() - start), load_s


def read_format(directory: Path, layout: str, items: int) -> tuple[float, str]:
    """(items/s, how) of ``items`` reads with the format's own reader; every read is checked
    to hold the clip's token count."""
    clips = [json.loads(line) for line in (directory / "_vqtok_clips.jsonl").open()]
    order = np.random.default_rng(1).integers(0, len(clips), items).tolist()
    if layout == "megatron":
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        data, how = IndexedDataset(str(directory / "tokens")), "IndexedDataset, random"
        get = data.__getitem__
    elif layout == "litdata":
        from litdata import StreamingDataset

        data, how = StreamingDataset(input_dir=str(directory)), "StreamingDataset, random"
        get = lambda i: data[i]["tokens"]  # noqa: E731
    elif layout == "mds":
        from vqtok.data.formats.mds import Reader

        data, how = Reader(directory), "vqtok's MDS reader, random"
        get = lambda i: data.sample(i)["tokens"]  # noqa: E731
    else:
        import webdataset

        tars = [str(p) for p in sorted(directory.glob("*.tar"))]
        start, count = time.perf_counter(), 0
        while count < items:  # in order, as many passes as it takes
            for sample in webdataset.WebDataset(tars, shardshuffle=False,
                                                empty_check=False).decode():
                assert sample["tokens.npy"].size == clips[int(sample["__key__"])]["tokens"]
                count += 1
        return count / (time.perf_counter() - start), "WebDataset, in order"
    start = time.perf_counter()
    for i in order:
        assert np.asarray(get(i)).size == clips[i]["tokens"]
    return items / (time.perf_counter() - start), how


def format_rows(work: Path, layouts: list[str], shard_size: float, items: int
                ) -> list[tuple[str, str]]:
    """The table's lines of each format besides Parquet: pack speed, size, reads."""
    rows = []
    for layout in layouts:
        out = work / f"dataset-{layout}"
        try:
            module = layout_module(layout)
            if hasattr(module, "require"):
                module.require()  # importing the library is not packing
            start = time.perf_counter()
            report = pack_dataset([work / "codes"], out, shard_size, format=layout)
            pack_s = time.perf_counter() - start
        except MissingDependencyError as e:
            rows.append((f"{layout}", f"not measured: {e.message}"))
            continue
        rate, how = read_format(out, layout, items)
        rows.append((f"{layout} ({DEFAULT_FLATTEN[layout]}): pack",
                     f"{pack_s:.2f} s: {report.rows / pack_s:,.0f} rows/s, "
                     f"{report.index_bytes / 1e6 / pack_s:.1f} MB/s, {report.dtype}, "
                     f"{report.bytes / 1e6:.1f} MB in {report.shards} file(s)"))
        rows.append((f"{layout}: read ({how})", f"{rate:,.0f} items/s"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--grid", default="5x16x16", help="latent grid t x h x w per clip")
    parser.add_argument("--levels", type=int, default=4, help="codebooks / residual levels")
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--shard-size", type=float, default=256, help="MB per shard")
    parser.add_argument("--items", type=int, default=5000, help="random reads per setting")
    parser.add_argument("--keep", type=Path, help="work here and keep the files")
    parser.add_argument("--peer-group-kb", type=int, default=1024,
                        help="row-group size of the peer pack, KB")
    parser.add_argument("--formats", default="parquet,megatron,mds,litdata,webdataset",
                        help="comma-separated formats besides parquet's full measure")
    parser.add_argument("--results", type=Path,
                        help="write the table as the '## Pack' section of this file")
    args = parser.parse_args()
    t, h, w = (int(v) for v in args.grid.split("x"))

    work = args.keep or Path(tempfile.mkdtemp(prefix="vqtok-bench-pack-"))
    try:
        start = time.perf_counter()
        write_index_files(work / "codes", args.files, (t, h, w), args.levels, args.vocab)
        written_s = time.perf_counter() - start
        shutil.rmtree(work / "dataset", ignore_errors=True)
        start = time.perf_counter()
        report = pack_dataset([work / "codes"], work / "dataset", args.shard_size)
        pack_s = time.perf_counter() - start
        dataset = TokenDataset(work / "dataset")
        rates = {(n, b): random_reads(dataset, args.items, n, b)
                 for n, b in ((0, None), (2, None), (2, 32))}
        for i in np.random.default_rng(2).integers(0, len(dataset), 50).tolist():
            item = dataset[i]
            expected, _ = load_tokens(work / item["index_file"])  # "codes/000/clipN.npy"
            assert np.array_equal(item["indices"].numpy(), expected), item["index_file"]
        peer_rate, peer_mb = peer_group_size(work, args.peer_group_kb, args.items)
        hf = peer_hf_datasets(work, args.items)
        layouts = [f for f in args.formats.split(",") if f and f != "parquet"]
        others = format_rows(work, layouts, args.shard_size, args.items)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    tokens = t * h * w * args.levels
    rows = [
        ("index files", f"{args.files:,} of {t}x{h}x{w}x{args.levels} = {tokens:,} indices, "
                        f"{report.dtype} (written in {written_s:.1f} s)"),
        ("pack", f"{pack_s:.2f} s: {report.rows / pack_s:,.0f} rows/s, "
                 f"{report.index_bytes / 1e6 / pack_s:.1f} MB/s of indices"),
        ("dataset", f"{report.shards} shard(s), {report.bytes / 1e6:.1f} MB "
                    f"({report.bytes / report.index_bytes:.0%} of the raw indices)"),
        ("random access, 0 workers", f"{rates[0, None]:,.0f} items/s"),
        ("random access, 2 workers", f"{rates[2, None]:,.0f} items/s"),
        ("random access, 2 workers, batches of 32", f"{rates[2, 32]:,.0f} items/s"),
        (f"peer: row groups of {args.peer_group_kb} KB, 0 workers",
         f"{peer_rate:,.0f} items/s ({peer_mb:.1f} MB)"),
    ]
    if hf is not None:
        rows.append(("peer: Hugging Face datasets, ds[i]",
                     f"{hf[0]:,.0f} items/s (after {hf[1]:.1f} s converting to its cache)"))
    rows += others
    table = "| measure | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    print(table)
    if args.results is not None:
        header = (f"`{' '.join(['python', *sys.argv])}` — {datetime.date.today()}, "
                  f"{os.cpu_count()} cores, torch {torch.__version__}, load average at the end "
                  f"{loadavg()}. Random access: {args.items} reads in a random order, "
                  "`DataLoader(TokenDataset, batch_size=None)`.")
        write_section(args.results, "## Pack", ["## Pack", "", header, "", *table.splitlines()])


if __name__ == "__main__":
    main()
