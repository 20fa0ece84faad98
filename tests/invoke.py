"""The vqtok command line in-process, for tests: ``invoke = invoker(env)``, then
``invoke("encode", clip, "-o", out, code=0)`` runs it through Typer's `CliRunner`, checks the
exit code (showing stdout, stderr and the exception when it differs) and returns the result."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from typer.testing import CliRunner, Result

from vqtok.cli.app import app


def invoker(env: dict[str, str] | None = None) -> Callable[..., Result]:
    """``invoke(*args, code=0)``: the CLI with ``env`` added to the environment."""
    runner = CliRunner(env=env)

    def invoke(*args: Any, code: int = 0) -> Result:
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        return result

    return invoke
