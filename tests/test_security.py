"""Security and determinism checks (README, "Reliability"): no unpickling, no network, no escapes.

* the package never calls ``torch.load`` / ``pickle`` / ``allow_pickle=True`` /
  ``weights_only=False`` outside the converters (`vqtok/convert/magvit2.py`,
  `vqtok/convert/cosmos.py`; they load only with ``weights_only=True``);
* a whole ``vqtok encode`` + ``decode`` runs with every socket constructor patched to raise;
* model names cannot leave the model search directories (``../x``, absolute paths);
* the CLI's ``--batch`` and ``--chunk`` paths write byte-identical index files, also under a
  different ``torch.set_num_threads``.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.clips import make_clip
from vqtok.cli.app import app
from vqtok.errors import CheckpointError
from vqtok.io.model_dirs import resolve_model

PACKAGE = Path(__file__).resolve().parent.parent / "vqtok"
# The conversion path is the only code allowed to read foreign (pickle-based) checkpoints.
ALLOWED = {"convert/magvit2.py", "convert/cosmos.py"}
FORBIDDEN = re.compile(
    r"torch\.load\(|\bimport pickle\b|\bpickle\.|\bcloudpickle\b|\bdill\b|"
    r"allow_pickle\s*=\s*True|weights_only\s*=\s*False|torch\.jit\.load|(?<![.\w])eval\(|(?<![.\w])exec\("
)


def test_no_unpickling_in_the_package() -> None:
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).as_posix() in ALLOWED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if FORBIDDEN.search(code):
                hits.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert hits == []


def test_grep_would_catch_a_violation() -> None:
    """The pattern really matches the calls it is meant to forbid."""
    for bad in [
        "torch.load(f)",
        "import pickle",
        "np.load(p, allow_pickle=True)",
        "torch.load(p, weights_only = False)",
    ]:
        assert FORBIDDEN.search(bad), bad
    assert not FORBIDDEN.search("np.load(p, allow_pickle=False)")
    assert not FORBIDDEN.search("model.eval()")
    assert FORBIDDEN.search("eval(text)")


def test_convert_loads_only_with_weights_only() -> None:
    calls = [call for name in sorted(ALLOWED)
             for call in re.findall(r"torch\.load\([^)]*\)", (PACKAGE / name).read_text())]
    assert calls  # the Open-MAGVIT2 converter reads a Lightning checkpoint
    for call in calls:
        assert "weights_only=True" in call, call


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    make_clip(root / "a.mp4", frames=13, size=(32, 48), fps=8)
    make_clip(root / "b.mp4", frames=9, size=(32, 48), fps=8)
    make_clip(root / "c.mp4", frames=5, size=(16, 16), fps=8)
    return root


def _cli(models: Path, *args: object) -> None:
    result = CliRunner(env={"VQTOK_MODELS": str(models)}).invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)


def test_nothing_reaches_the_network(
    tmp_path: Path, models: Path, videos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("vqtok tried to open a network connection")

    for name in ["socket", "create_connection", "getaddrinfo", "socketpair"]:
        monkeypatch.setattr(socket, name, refuse)
    _cli(models, "encode", videos / "a.mp4", "-m", "tiny", "-o", tmp_path / "a.npy", "-q")
    _cli(models, "decode", tmp_path / "a.npy", "-m", "tiny", "-o", tmp_path / "a.mp4", "-q")
    assert (tmp_path / "a.mp4").stat().st_size > 0


@pytest.mark.parametrize(
    "name", ["../tiny", "tiny/../../x", "/nonexistent/tiny", "a..b", "tiny\x00"]
)
def test_model_names_cannot_escape(
    name: str, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner = models / "inner"
    inner.mkdir(exist_ok=True)
    monkeypatch.setenv("VQTOK_MODELS", str(inner))
    with pytest.raises(CheckpointError):
        resolve_model(name)


def test_cli_batch_chunk_and_threads_give_identical_files(
    tmp_path: Path, models: Path, videos: Path
) -> None:
    runs = {
        "plain": [],
        "batch": ["--batch", "3"],
        "chunk": ["--chunk", "4"],
    }
    outputs = {}
    for label, extra in runs.items():
        _cli(models, "encode", videos, "-m", "tiny", "-o", tmp_path / label, "-q", *extra)
        outputs[label] = {p.name: p.read_bytes() for p in sorted((tmp_path / label).iterdir())}
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _cli(models, "encode", videos, "-m", "tiny", "-o", tmp_path / "one", "-q", "--chunk", "8")
    finally:
        torch.set_num_threads(threads)
    outputs["threads"] = {p.name: p.read_bytes() for p in sorted((tmp_path / "one").iterdir())}
    assert len(outputs["plain"]) == 6  # three index files and their sidecars
    for label, files in outputs.items():
        assert files == outputs["plain"], label
