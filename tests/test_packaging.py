"""The built wheel, as `pip install` gives it to a user: no warnings, the shipped models inside,
and `vqtok.load()` working from an installed (not editable) copy outside the clone.

The wheel is built offline from a copy of the source files (``--no-build-isolation``: the dev
extra installs setuptools >= 77), so the clone's ``build/`` is neither used nor touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # spawns processes; `make test-fast` skips them

ROOT = Path(__file__).resolve().parent.parent


def _shipped() -> list[str]:
    """The model directories the repository ships: those git tracks (a model converted into
    models/ by hand is not shipped), or every one there outside a git checkout."""
    try:
        tracked = subprocess.run(["git", "ls-files", "models"], cwd=ROOT, capture_output=True,
                                 text=True, timeout=60, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        tracked = []
    if tracked:
        return sorted({Path(f).parts[1] for f in tracked if f.endswith("/config.json")})
    return sorted(p.name for p in (ROOT / "models").iterdir() if (p / "config.json").is_file())


SHIPPED = _shipped()

pytest.importorskip("setuptools", minversion="77")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # the model weights are large: link them where the disk allows
    except OSError:
        shutil.copy2(src, dst)


def _source_copy(dest: Path) -> Path:
    """The files a wheel is built from (as an sdist holds them)."""
    dest.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.tmp")
    shutil.copytree(ROOT / "vqtok", dest / "vqtok", ignore=ignore)
    shutil.copytree(ROOT / "models", dest / "models", ignore=ignore, copy_function=_link_or_copy)
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(the wheel, the build's log)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = _source_copy(tmp / "src")
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-v", "-w", str(tmp / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    (wheel,) = (tmp / "dist").glob("vqtok-*.whl")
    return wheel, log


def test_build_gives_no_deprecation_warning_and_an_spdx_license(built: tuple[Path, str]) -> None:
    wheel, log = built
    assert "deprecat" not in log.lower(), [ln for ln in log.splitlines() if "eprecat" in ln]
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in z.namelist())
    assert "License-Expression: MIT" in meta.splitlines()


def test_wheel_carries_every_shipped_model_file_unchanged(built: tuple[Path, str]) -> None:
    wheel, _ = built
    assert {"vqtok-ema", "vqtok-ema-8x32", "vqtok-lfq"} <= set(SHIPPED)
    with zipfile.ZipFile(wheel) as z:
        packaged = {n.removeprefix("vqtok/_models/") for n in z.namelist()
                    if n.startswith("vqtok/_models/")}
        expected = {f"{m}/{f.name}" for m in SHIPPED for f in (ROOT / "models" / m).iterdir()
                    if f.is_file() and not f.name.endswith(".tmp")}
        assert packaged == expected, "pyproject.toml's package-data must list each shipped model"
        for name in expected:
            assert z.read(f"vqtok/_models/{name}") == (ROOT / "models" / name).read_bytes(), name


def test_installed_wheel_loads_the_default_model_outside_the_clone(
    built: tuple[Path, str], tmp_path: Path
) -> None:
    wheel, _ = built
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         "--target", str(site), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    script = (
        "import json, torch, vqtok\n"
        "from vqtok.io.checkpoint import resolve_model\n"
        "tok = vqtok.load(device='cpu')\n"
        "video = torch.zeros(1, 3, 1, 16, 16)\n"
        "print(json.dumps({'module': vqtok.__file__,\n"
        "                  'model': str(resolve_model('vqtok-ema-8x32')),\n"
        "                  'indices': list(tok.encode(video).shape)}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("VQTOK_MODELS", None)
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    facts = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(facts["module"]).is_relative_to(site)  # the installed copy, not the clone
    assert Path(facts["model"]) == site / "vqtok" / "_models" / "vqtok-ema-8x32"
    assert facts["indices"][:4] == [1, 1, 2, 2]
    listed = subprocess.run([sys.executable, "-m", "vqtok", "models", "--json"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    names = {row["name"] for row in json.loads(listed.stdout)}
    assert names >= {"vqtok-ema", "vqtok-ema-8x32", "vqtok-lfq"}
