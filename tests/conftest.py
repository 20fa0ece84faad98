"""Fixtures shared by many test files; a file that needs another variant defines its own
fixture of the same name, which pytest uses instead.

The tests mirror the package: ``tests/<subpackage>/`` tests ``vqtok/<subpackage>/`` (the formats
of ``vqtok/data`` are tested in ``tests/pipeline/test_formats.py``, beside ``vqtok pack``: the
folder ``tests/data`` holds the held-out clips), the user-facing checks that run the CLI end to
end are in ``tests/cli/``, and the top level holds the tests of the top-level modules and of the
repository as a whole (packaging, shipped models, security, fuzzing). Every folder is a package
(an ``__init__.py``), so test modules are imported by their full name and helpers as
``from tests.clips import make_clip`` / ``from tests.tiny import save_tiny_model``; the data they
read is in ``tests/data``, ``tests/fixtures`` and ``tests/fuzz_corpus``.

- `models`: a folder of model directories holding one tiny model, ``tiny`` (`tiny.py`; its
  `tiny_config(quantizer, options, **fields)` gives the same model with another quantizer).
- `run`: the CLI through Typer's `CliRunner`, with ``VQTOK_MODELS`` set to `models`:
  ``run("encode", clip, "-o", out, code=0)`` checks the exit code and returns the result
  (`invoke.invoker(env)` makes one with another environment).
- `runner`: a bare `CliRunner`.
- `clip`: an 11-frame 32x48 clip at 8 fps (`clips.make_clip`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tests.clips import make_clip
from tests.invoke import invoker
from tests.tiny import save_tiny_model


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    save_tiny_model(root / "tiny")
    return root


@pytest.fixture(scope="module")
def run(models: Path) -> Callable[..., Result]:
    return invoker({"VQTOK_MODELS": str(models)})


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clips") / "a.mp4", frames=11, size=(32, 48), fps=8)
