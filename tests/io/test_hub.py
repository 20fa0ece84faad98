"""Models from the Hugging Face Hub, without a network.

The Hub cache is built in the test with the real layout (``models--owner--name/refs/main``,
``snapshots/<commit>/<file>`` links into ``blobs/<sha256>``) from the release files that
`test_convert`'s helpers write exactly as the releases store them. The required results run as
real processes with ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` / ``HF_HOME`` in the environment;
the error cases go through the CLI in this process against a small fake Hub served on the
loopback interface, which answers as huggingface.co does (``X-Error-Code`` headers), so
huggingface_hub's own exceptions are what vqtok turns into one line.

One test downloads from the real Hub: ``VQTOK_HUB_TESTS=1 pytest -m hub_download``.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import vqtok
from tests.convert.test_convert import (
    COSMOS,
    MAGVIT,
    cosmos_keys,
    magvit_state,
    save_ckpt,
    write_jit,
)
from tests.tiny import save_tiny_model
from vqtok.cli.app import app
from vqtok.convert.cosmos import convert_cosmos
from vqtok.convert.magvit2 import convert_open_magvit2
from vqtok.errors import HubError
from vqtok.io.hub import HubRef, fetch_files, parse_hub_ref

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

COSMOS_REPO = "nvidia/Cosmos-0.1-Tokenizer-DV4x8x8"
MAGVIT_REPO = "TencentARC/Open-MAGVIT2-Tokenizer-262144-Video"
MODEL_REPO = "someone/vqtok-tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
BIN = Path(sys.executable).parent
VQTOK = [str(BIN / "vqtok")] if (BIN / "vqtok").exists() else [sys.executable, "-m", "vqtok"]


def seed_cache(cache: Path, repo_id: str, files: dict[str, Path], commit: str = COMMIT) -> Path:
    """Lay ``files`` out as huggingface_hub caches a download of ``repo_id`` at ``commit`` on
    branch main; returns the snapshot folder."""
    store = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = store / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (store / "blobs").mkdir()
    (store / "refs").mkdir()
    for name, source in files.items():
        data = source.read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (store / "blobs" / blob).write_bytes(data)
        (snapshot / name).symlink_to(Path("../../blobs") / blob)
    (store / "refs" / "main").write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The release files, in folders as a user downloads them, and a tiny vqtok model."""
    root = tmp_path_factory.mktemp("sources")
    release = root / "Cosmos-0.1-Tokenizer-DV4x8x8"
    release.mkdir()
    reference = load_file(COSMOS / "reference.safetensors")
    for part in ("encoder", "decoder"):
        write_jit(release / f"{part}.jit", {k: reference[k] for k in cosmos_keys(part)})
    ckpt = save_ckpt(root / "video_128_262144.ckpt",
                     magvit_state(load_file(MAGVIT / "reference.safetensors")))
    return {"cosmos": release, "magvit": ckpt, "model": save_tiny_model(root / "vqtok-tiny")}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, sources: dict[str, Path]) -> Path:
    """A Hugging Face cache holding the three repositories."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    seed_cache(cache, COSMOS_REPO, {f: sources["cosmos"] / f for f in ("encoder.jit",
                                                                       "decoder.jit")})
    seed_cache(cache, MAGVIT_REPO, {"video_128_262144.ckpt": sources["magvit"]})
    seed_cache(cache, MODEL_REPO, {f: sources["model"] / f for f in ("config.json",
                                                                     "model.safetensors")})
    return cache


def offline_env(**extra: str) -> dict[str, str]:
    drop = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_CACHE", "HF_HOME")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}


def run(args: list[object], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env,
                          timeout=300)


def same_model(a: Path, b: Path) -> None:
    """config.json and model.safetensors byte for byte; the cards differ only in provenance."""
    for name in ("config.json", "model.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    card_a, card_b = ((d / "README.md").read_text().splitlines() for d in (a, b))
    changed = {line.split("|")[1].strip() for line in set(card_a) ^ set(card_b)}
    assert changed <= {"command", "downloaded from"}, changed


# ------------------------------------------------------------------ the required results


@pytest.mark.slow  # spawns a process
def test_convert_cosmos_from_the_cache_equals_the_folder(
    tmp_path: Path, sources: dict[str, Path], cache: Path
) -> None:
    out = tmp_path / "hub" / "cosmos-dv4x8x8"
    done = run([*VQTOK, "convert", "cosmos", COSMOS_REPO, "--variant", "DV4x8x8", "-o", out],
               offline_env(HF_HUB_CACHE=str(cache)))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    reference = tmp_path / "folder" / "cosmos-dv4x8x8"
    convert_cosmos(sources["cosmos"], reference)
    same_model(out, reference)
    card = (out / "README.md").read_text()
    assert f"Hugging Face `{COSMOS_REPO}` at commit `{COMMIT}`" in card
    assert f"vqtok convert cosmos {COSMOS_REPO} -o {out} --variant DV4x8x8" in card


@pytest.mark.slow  # spawns a process
def test_convert_open_magvit2_from_the_cache_equals_the_file(
    tmp_path: Path, sources: dict[str, Path], cache: Path
) -> None:
    out = tmp_path / "hub" / "open-magvit2"
    # HF_HOME alone: the cache is $HF_HOME/hub
    done = run([*VQTOK, "convert", "open-magvit2", MAGVIT_REPO, "-o", out],
               offline_env(HF_HOME=str(cache.parent)))
    assert done.returncode == 0, done.stderr
    reference = tmp_path / "folder" / "open-magvit2"
    convert_open_magvit2(sources["magvit"], reference)
    same_model(out, reference)


@pytest.mark.slow  # spawns a process
def test_load_by_repo_id_in_a_fresh_process(
    tmp_path: Path, sources: dict[str, Path], cache: Path
) -> None:
    script = (  # importing vqtok, its CLI and converters must not load huggingface_hub
        "import sys, json, vqtok, vqtok.cli.app, vqtok.api, vqtok.io.checkpoint\n"
        "import vqtok.convert.cosmos, vqtok.convert.magvit2\n"
        "lazy = 'huggingface_hub' not in sys.modules\n"
        f"tok = vqtok.load({MODEL_REPO!r}, device='cpu')\n"
        "print(json.dumps([lazy, tok.name, str(tok.path), tok.weights_sha256]))\n"
    )
    done = run([sys.executable, "-c", script], offline_env(HF_HUB_CACHE=str(cache)))
    assert done.returncode == 0, done.stderr
    lazy, name, path, sha = json.loads(done.stdout)
    assert lazy and name == MODEL_REPO
    assert Path(path) == cache / "models--someone--vqtok-tiny" / "snapshots" / COMMIT
    expected = hashlib.sha256((sources["model"] / "model.safetensors").read_bytes()).hexdigest()
    assert sha == expected


# ------------------------------------------------------------------ in this process


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    """huggingface_hub pointed at an empty cache and the fake Hub, with no token; it read
    its environment when first imported, so the settings are patched where it reads them."""
    from huggingface_hub import constants

    server = FakeHub()
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    patches = {
        "HF_HUB_CACHE": str(tmp_path / "empty-cache"),
        "HF_HUB_OFFLINE": False,
        "HF_TOKEN_PATH": str(tmp_path / "no-token"),
        "ENDPOINT": server.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": server.url + "/{repo_id}/resolve/{revision}/{filename}",
    }
    for key, value in patches.items():
        monkeypatch.setattr(constants, key, value)
    yield constants, server
    server.close()


class FakeHub:
    """Answers ``HEAD``/``GET /<repo>/resolve/<revision>/<file>`` like huggingface.co."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.gated: set[str] = set()
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:  # noqa: N802
                self.answer(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self.answer(body=True)

            def answer(self, body: bool) -> None:
                owner, name, _, revision, filename = (self.path.lstrip("/").split("/", 4)
                                                      + [""] * 5)[:5]
                repo = f"{owner}/{name}"
                files = hub.repos.get(repo)
                if files is None or repo in hub.gated:
                    code = "GatedRepo" if repo in hub.gated else "RepoNotFound"
                    return self.fail(401, code)
                if revision not in ("main", COMMIT):
                    return self.fail(404, "RevisionNotFound")
                if filename not in files:
                    return self.fail(404, "EntryNotFound")
                data = files[filename]
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def fail(self, status: int, code: str) -> None:
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def cli(*args: object) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_download_from_the_fake_hub_reports_progress_and_fills_the_cache(
    hub: Any, tmp_path: Path, sources: dict[str, Path]
) -> None:
    constants, server = hub
    server.repos[COSMOS_REPO] = {f: (sources["cosmos"] / f).read_bytes()
                                 for f in ("encoder.jit", "decoder.jit")}
    seen: list[tuple[str, int, int | None]] = []
    out = tmp_path / "cosmos-dv4x8x8"
    convert_cosmos(COSMOS_REPO, out, on_download=lambda *a: seen.append(a))
    same_model(out, _folder_conversion(sources, tmp_path))
    sizes = {f: (sources["cosmos"] / f).stat().st_size for f in ("encoder.jit", "decoder.jit")}
    assert {name: done for name, done, _ in seen} == sizes  # each file to its last byte
    assert all(total == sizes[name] for name, _, total in seen)
    snapshot = Path(constants.HF_HUB_CACHE) / "models--nvidia--Cosmos-0.1-Tokenizer-DV4x8x8"
    assert (snapshot / "refs" / "main").read_text() == COMMIT
    # again: served from the cache, no bytes move
    seen.clear()
    convert_cosmos(COSMOS_REPO, tmp_path / "again", on_download=lambda *a: seen.append(a))
    assert seen == []


def _folder_conversion(sources: dict[str, Path], tmp_path: Path) -> Path:
    out = tmp_path / "folder" / "cosmos-dv4x8x8"
    convert_cosmos(sources["cosmos"], out)
    return out


def test_variant_from_the_repository_name_and_a_pinned_revision(
    hub: Any, tmp_path: Path, sources: dict[str, Path], cache: Path
) -> None:
    constants, _ = hub
    constants.HF_HUB_CACHE = str(cache)
    constants.HF_HUB_OFFLINE = True
    out = tmp_path / "cosmos-dv4x8x8"
    result = cli("convert", "cosmos", f"{COSMOS_REPO}@{COMMIT}", "-o", out)
    assert result.exit_code == 0, result.stderr
    same_model(out, _folder_conversion(sources, tmp_path))
    assert json.loads((out / "config.json").read_text())["config"]["variant"] == "DV4x8x8"
    wrong = cli("convert", "cosmos", COSMOS_REPO, "--variant", "DV8x8x8", "-o", tmp_path / "w")
    assert wrong.exit_code == 1
    assert "contradicts the repository name" in wrong.stderr
    assert not (tmp_path / "w").exists()


def test_encode_and_decode_with_a_hub_model(
    hub: Any, tmp_path: Path, sources: dict[str, Path], cache: Path
) -> None:
    from tests.clips import make_clip

    constants, _ = hub
    constants.HF_HUB_CACHE = str(cache)
    constants.HF_HUB_OFFLINE = True
    clip = make_clip(tmp_path / "a.mp4", frames=9, size=(32, 32), fps=8)
    by_repo = cli("encode", clip, "-m", MODEL_REPO, "-o", tmp_path / "hub.npy", "--device", "cpu")
    by_dir = cli("encode", clip, "-m", sources["model"], "-o", tmp_path / "dir.npy",
                 "--device", "cpu")
    assert by_repo.exit_code == 0 and by_dir.exit_code == 0, by_repo.stderr + by_dir.stderr
    assert (tmp_path / "hub.npy").read_bytes() == (tmp_path / "dir.npy").read_bytes()
    assert json.loads((tmp_path / "hub.json").read_text())["model"] == MODEL_REPO
    # the index file names the repository, so decode fetches the same model without --model
    decoded = cli("decode", tmp_path / "hub.npy", "-o", tmp_path / "a-out.mp4", "--device", "cpu")
    assert decoded.exit_code == 0, decoded.stderr
    tok = vqtok.load(MODEL_REPO, device="cpu")
    reference = vqtok.load(sources["model"], device="cpu")
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    assert torch.equal(tok.encode(video), reference.encode(video))


ERRORS = {
    "offline-nothing-cached": (
        ["convert", "cosmos", "nvidia/Cosmos-0.1-Tokenizer-DV8x8x8"],
        r"encoder\.jit is not in the Hugging Face cache \(.*\) and HF_HUB_OFFLINE is set"),
    "no-such-repo": (
        ["convert", "open-magvit2", "nobody/nothing-here"],
        r"no local file or directory of this name, and no such repository on the Hugging "
        r"Face Hub"),
    "gated": (["convert", "cosmos", "nvidia/Cosmos-0.1-Tokenizer-DV8x16x16"],
              r"gated repository: accept its conditions .* set HF_TOKEN"),
    "wrong-files": (["convert", "cosmos", "nvidia/Cosmos-0.1-Tokenizer-DV8x8x8"],
                    r"the repository has no encoder\.jit; it needs encoder\.jit, decoder\.jit "
                    r"\(a Cosmos DV release\)"),
    "no-such-revision": (["convert", "open-magvit2", f"{MAGVIT_REPO}@v9"],
                         r"the repository has no revision 'v9'"),
    "model-wrong-files": (["encode", "IN", "-m", "nvidia/Cosmos-0.1-Tokenizer-DV8x8x8"],
                          r"the repository has no config\.json; it needs config\.json, "
                          r"model\.safetensors"),
    "model-no-such-repo": (["encode", "IN", "-m", "nobody/nothing-here"],
                           r"no such repository on the Hugging Face Hub"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_hub_errors_are_one_line_and_write_nothing(
    case: str, hub: Any, tmp_path: Path, sources: dict[str, Path]
) -> None:
    import re

    from tests.clips import make_clip

    constants, server = hub
    server.repos["nvidia/Cosmos-0.1-Tokenizer-DV8x8x8"] = {"README.md": b"# a model card\n"}
    server.repos["nvidia/Cosmos-0.1-Tokenizer-DV8x16x16"] = {"encoder.jit": b"x"}
    server.gated.add("nvidia/Cosmos-0.1-Tokenizer-DV8x16x16")
    server.repos[MAGVIT_REPO] = {"video_128_262144.ckpt": sources["magvit"].read_bytes()}
    constants.HF_HUB_OFFLINE = case == "offline-nothing-cached"
    args, pattern = ERRORS[case]
    work = tmp_path / "work"
    work.mkdir()
    if "IN" in args:
        args = [str(make_clip(tmp_path / "a.mp4", frames=5, size=(16, 16), fps=8))
                if a == "IN" else a for a in args]
    result = cli(*args, "-o", work / "out")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    repo = next(a for a in args if "/" in a and not a.startswith("/"))
    assert len(lines) == 1 and lines[0].startswith(f"error: {repo}: "), result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert list(work.iterdir()) == []  # no output, no temporary left behind


def test_a_cached_repo_with_a_foreign_config_is_refused_strictly(
    hub: Any, tmp_path: Path, sources: dict[str, Path]
) -> None:
    constants, server = hub
    server.repos["someone/transformers-model"] = {
        "config.json": b'{"architectures": ["GPT2LMHeadModel"], "n_layer": 2}',
        "model.safetensors": (sources["model"] / "model.safetensors").read_bytes(),
    }
    with pytest.raises(vqtok.CheckpointError, match="missing key.*unknown key"):
        vqtok.load("someone/transformers-model", device="cpu")


# ------------------------------------------------------------------ names and the network


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nvidia/Cosmos-0.1-Tokenizer-DV4x8x8", HubRef("nvidia/Cosmos-0.1-Tokenizer-DV4x8x8")),
        ("a/b@main", HubRef("a/b", "main")),
        ("a/b@refs/pr/1", HubRef("a/b", "refs/pr/1")),
        ("a/b@" + COMMIT, HubRef("a/b", COMMIT)),
        ("vqtok-ema", None),
        ("./a/b", None),
        ("/abs/path", None),
        ("a/b/c", None),
        ("a/../b", None),
        ("a--x/b", None),
        ("a/b@", None),
        ("-a/b", None),
        ("a/" + "b" * 97, None),
    ],
)
def test_parse_hub_ref(text: str, expected: HubRef | None) -> None:
    assert parse_hub_ref(text) == expected


def test_an_existing_path_is_never_a_repository(
    tmp_path: Path, sources: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder laid out as ``owner/name`` is read from disk, with every socket refused."""
    local = tmp_path / "nvidia" / "Cosmos-0.1-Tokenizer-DV4x8x8"
    local.mkdir(parents=True)
    for f in ("encoder.jit", "decoder.jit"):
        (local / f).write_bytes((sources["cosmos"] / f).read_bytes())
    (tmp_path / "someone").mkdir()
    (tmp_path / "someone" / "vqtok-tiny").symlink_to(sources["model"])
    monkeypatch.chdir(tmp_path)
    assert parse_hub_ref(COSMOS_REPO) is None and parse_hub_ref(Path("x/y")) is None

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("vqtok tried to open a network connection")

    for name in ["socket", "create_connection", "getaddrinfo", "socketpair"]:
        monkeypatch.setattr(socket, name, refuse)
    result = cli("convert", "cosmos", COSMOS_REPO, "-o", tmp_path / "c")
    assert result.exit_code == 0, result.stderr
    magvit = cli("convert", "open-magvit2", sources["magvit"], "-o", tmp_path / "m")
    assert magvit.exit_code == 0, magvit.stderr
    assert vqtok.load(MODEL_REPO, device="cpu").name == "vqtok-tiny"


def test_fetch_files_maps_every_error_to_a_hub_error(hub: Any) -> None:
    with pytest.raises(HubError) as caught:
        fetch_files(HubRef("nobody/nothing"), ["config.json"])
    assert caught.value.path == "nobody/nothing"
    assert isinstance(caught.value, vqtok.CheckpointError)


# ------------------------------------------------------------------ the real Hub, on request


@pytest.mark.hub_download
@pytest.mark.skipif(os.environ.get("VQTOK_HUB_TESTS") != "1",
                    reason="downloads from huggingface.co; set VQTOK_HUB_TESTS=1")
def test_real_download_of_cosmos_dv4x8x8(tmp_path: Path) -> None:
    """The released DV4x8x8 (a few hundred MB into the user's Hugging Face cache) converts, and
    the model encodes and decodes a clip."""
    out = tmp_path / "cosmos-dv4x8x8"
    conversion = convert_cosmos(COSMOS_REPO, out)
    assert conversion.config["variant"] == "DV4x8x8" and conversion.used == 322
    tok = vqtok.load(out, device="cpu")
    video = torch.rand(1, 3, 9, 64, 64) * 2 - 1
    indices = tok.encode(video)
    assert indices.shape == (1, 3, 8, 8) and int(indices.max()) < 64000
    assert tok.decode(indices, frames=9).shape == video.shape
