"""``vqtok encode --engine ray`` on a local Ray cluster (2 CPUs), with an S3 endpoint served by
moto in this process: a folder, a WebDataset shard and a manifest of clips become one token
dataset whose indices equal a local encode's; a worker killed mid-run still leaves every key
exactly once; a rerun writes nothing; a bad clip lands in the errors table and exits 1."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.clips import make_clip
from tests.tiny import save_tiny_model

ray = pytest.importorskip("ray", reason="the Ray engine needs vqtok[ray]")
pytest.importorskip("ray.data", reason="the Ray engine needs Ray Data (vqtok[ray])")
moto_server = pytest.importorskip("moto.server", reason="needs moto[server] (the dev extra)")
fsspec = pytest.importorskip("fsspec")
pq = pytest.importorskip("pyarrow.parquet")

from vqtok.cli.app import app  # noqa: E402
from vqtok.io.datasets import TokenDataset  # noqa: E402
from vqtok.io.shards import MANIFEST  # noqa: E402
from vqtok.io.tokens import load_tokens  # noqa: E402
from vqtok.pipeline.encode import encode_files  # noqa: E402
from vqtok.pipeline.ray_run import RayOptions, encode_dataset  # noqa: E402

pytestmark = pytest.mark.slow  # starts a Ray cluster; `make test-fast` skips them

AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
       "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A moto S3 endpoint on 127.0.0.1 and a 2-CPU local Ray cluster whose workers see it
    (through the environment, as boto reads it); yields the endpoint URL."""
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {**AWS, "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield env["AWS_ENDPOINT_URL"]
    finally:
        ray.shutdown()
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model; clips/ (3 clips and a text file named .mp4); shard.tar (2 videos and a
    .json); clips.csv (2 ranged clips of clips/a.mp4)."""
    root = tmp_path_factory.mktemp("ray")
    save_tiny_model(root / "tiny")
    (root / "clips" / "day2").mkdir(parents=True)
    for name, frames in (("a", 17), ("b", 9), ("day2/c", 12)):
        make_clip(root / "clips" / f"{name}.mp4", frames=frames, size=(32, 48), fps=8)
    (root / "clips" / "day2" / "bad.mp4").write_text("not a video\n")
    with tarfile.open(root / "shard.tar", "w") as tar:
        for key, frames in (("000001", 5), ("000002", 10)):
            video = make_clip(root / f"{key}.mp4", frames=frames, size=(32, 48), fps=8)
            for name, payload in ((f"{key}.mp4", video.read_bytes()),
                                  (f"{key}.json", b'{"caption": "a clip"}')):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            video.unlink()
    (root / "clips.csv").write_text("path,start,end,key\nclips/a.mp4,0.5,1.25,a-middle\n"
                                    "clips/a.mp4,1,,a-end\n")
    return root


def local_tokens(inputs: list[str], model: Path, out: Path) -> dict[str, np.ndarray]:
    """Key -> indices of the local engine's encode of the same inputs."""
    found = {}
    for job, outcome in encode_files(inputs, out, model=model, device="cpu"):
        if not isinstance(outcome, Exception):
            key = job.target.relative_to(out).with_suffix("").as_posix()
            found[key] = load_tokens(job.target)[0]
    return found


def dataset_tokens(folder: Path) -> dict[str, np.ndarray]:
    """Key -> indices of every row of a dataset; a key twice fails."""
    ds = TokenDataset(folder)
    found: dict[str, np.ndarray] = {}
    for i in range(len(ds)):
        item = ds[i]
        assert item["index_file"] not in found, f"{item['index_file']} is in the dataset twice"
        found[item["index_file"]] = item["indices"].numpy()
    return found


def assert_same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(expected)
    for key, indices in expected.items():
        assert got[key].shape == indices.shape and np.array_equal(got[key], indices), key


def test_folder_shard_and_manifest_on_ray_equal_a_local_encode(cluster: str, data: Path,
                                                               tmp_path: Path) -> None:
    inputs = [str(data / "clips"), str(data / "shard.tar"), str(data / "clips.csv")]
    out = tmp_path / "ds"
    runner = CliRunner()
    args = ["encode", *inputs, "-o", str(out), "--engine", "ray", "-m", str(data / "tiny"),
            "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    bad = data / "clips" / "day2" / "bad.mp4"
    assert result.stderr.strip().splitlines() == [
        f"error: {bad}: not a readable video: this is a text file; pass a video file"]
    expected = local_tokens(inputs, data / "tiny", tmp_path / "local")
    assert sorted(expected) == ["000001", "000002", "a", "a-end", "a-middle", "b", "day2/c"]
    assert_same(dataset_tokens(out), expected)
    with open(out / "_errors.csv", newline="") as file:
        assert list(csv.reader(file)) == [["key", "input", "reason"], [
            "day2/bad", str(bad), "not a readable video: this is a text file; pass a video file"]]
    # the shards are plain Parquet: pyarrow reads the folder (skipping the _ files) and so does
    # Hugging Face datasets
    table = pq.read_table(out)
    assert table.num_rows == 7 and set(table.column("index_file").to_pylist()) == set(expected)
    datasets = pytest.importorskip("datasets")
    rows = datasets.load_dataset("parquet", data_files=str(out / "*.parquet"), split="train",
                                 cache_dir=str(tmp_path / "hf"))
    row = rows[rows["index_file"].index("a-middle")]
    assert np.array_equal(np.reshape(row["indices"], row["shape"]), expected["a-middle"])
    # a rerun writes nothing new: every key is there; the bad clip is tried (and fails) again
    again = runner.invoke(app, [*args, "--json"])
    assert again.exit_code == 1, (again.stdout, again.stderr)
    report = json.loads(again.stdout)
    assert (report["written"], report["skipped"], report["rows"], report["failed"]) == (0, 7, 7, 1)
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".parquet") == ["part-00000.parquet"]


def test_inputs_and_dataset_in_s3(cluster: str, data: Path, tmp_path: Path) -> None:
    fs = fsspec.filesystem("s3")
    for bucket in ("inputs", "outputs"):
        fs.mkdir(bucket)
    fs.put(str(data / "clips" / "a.mp4"), "inputs/videos/a.mp4")
    fs.put(str(data / "clips" / "b.mp4"), "inputs/videos/b.mp4")
    fs.put(str(data / "shard.tar"), "inputs/shards/shard.tar")
    fs.pipe("inputs/clips.jsonl",
            b'{"path": "videos/a.mp4", "start": 0.5, "end": 1.25}\n'
            b'{"path": "s3://inputs/videos/b.mp4", "end": 0.5, "key": "b0"}\n')
    inputs = ["s3://inputs/videos/", "s3://inputs/shards/*.tar", "s3://inputs/clips.jsonl"]
    options = RayOptions(workers=1, cpus_per_worker=1, decode="tasks")  # CPU tasks decode
    report = encode_dataset(inputs, "s3://outputs/ds", model=data / "tiny", ray_options=options)
    assert (report.written, report.failed, report.shards) == (6, 0, 1)
    fs.invalidate_cache()
    fs.get("outputs/ds/", str(tmp_path / "ds"), recursive=True)
    expected = local_tokens(inputs, data / "tiny", tmp_path / "local")  # read from S3 too
    assert sorted(expected) == ["000001", "000002", "a", "a_0.5-1.25", "b", "b0"]
    assert_same(dataset_tokens(tmp_path / "ds"), expected)
    again = encode_dataset(inputs, "s3://outputs/ds", model=data / "tiny", ray_options=options)
    assert (again.written, again.skipped, again.rows) == (0, 6, 6)
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls("outputs/ds")) == [
        "_errors.csv", MANIFEST, "part-00000.parquet"]


def test_a_killed_worker_leaves_every_key_once(cluster: str, data: Path, tmp_path: Path) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(8):
        make_clip(clips / f"k{i}.mp4", frames=9 + i, size=(32, 48), fps=8)
    killed: list[int] = []

    def kill_first_worker(outcome, done: int, total: int) -> None:  # type: ignore[no-untyped-def]
        if not killed:  # after its first clip, while it holds the next ones
            pid = int(outcome.worker.rsplit(":", 1)[1])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    options = RayOptions(workers=2, cpus_per_worker=1)
    report = encode_dataset([str(clips)], tmp_path / "ds", model=data / "tiny",
                            ray_options=options, progress=kill_first_worker)
    assert killed and (report.rows, report.written, report.failed) == (8, 8, 0)
    assert_same(dataset_tokens(tmp_path / "ds"), local_tokens([str(clips)], data / "tiny",
                                                              tmp_path / "local"))


def test_what_the_model_cannot_take_fails_before_any_work(data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["encode", str(data / "clips" / "b.mp4"), "--engine", "ray", "-m", str(data / "tiny")]
    levels = runner.invoke(app, [*args, "-o", str(tmp_path / "ds"), "--levels", "2"])
    assert levels.exit_code == 2, (levels.stdout, levels.stderr)
    assert levels.stderr.startswith("error: --levels: ") and len(levels.stderr.splitlines()) == 1
    named = runner.invoke(app, [*args, "-o", str(tmp_path / "ds.parquet")])
    assert named.exit_code == 2 and "a token dataset is a folder" in named.stderr
    shard = runner.invoke(app, [*args, "-o", str(tmp_path / "ds"), "--shard", "0/2"])
    assert shard.exit_code == 2 and shard.stderr.startswith("error: --shard: ")
    assert not (tmp_path / "ds").exists() and not (tmp_path / "ds.parquet").exists()
