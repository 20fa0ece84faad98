"""The modules of vqtok a command crosses: its code walk, in call order (not a speed benchmark).

Runs one ``vqtok`` command in this process under a ``sys.setprofile`` hook that looks only at
functions defined in ``vqtok/`` (code run while a module is being imported is left out: it is
not the command's path) and prints two walks:

- **path**: the modules on the call chains from the command to what it does to the outside
  world: open a file (``open``: index files, sidecars, configs, weights to hash), read the
  model's weights (``safetensors``), read or write video frames (``av``), run the model (a call
  into ``vqtok/families/`` from outside it; the model's own modules are not counted) and put
  the output in place (``os.replace``, the atomic rename). These
  are the modules a reader opens to follow the command from the CLI to the written file.
  Moves: changes of module along those chains, each chain walked from its top.
- **all**: every vqtok module one of whose functions runs, the model's own modules
  (``families/``, ``quantizers/``) listed apart.

Usage (a few seconds on a CPU; the default model on 9 frames of the bundled clip)::

    .venv/bin/python benchmarks/code_walk.py              # encode, then decode what it wrote
    .venv/bin/python benchmarks/code_walk.py -- decode codes.npy -o x.mp4 --overwrite

The walks before and after issue #33's merges are in ``benchmarks/code_walk.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import vqtok

ROOT = str(Path(vqtok.__file__).parent) + os.sep
MODEL_PACKAGES = ("families.", "quantizers.")
CLIP = Path(__file__).resolve().parent.parent / "tests" / "data" / "city-heldout.mp4"


def module_of(filename: str) -> str:
    """``/.../vqtok/pipeline/encode.py`` -> ``pipeline.encode``."""
    return filename[len(ROOT) : -len(".py")].replace(os.sep, ".")


@dataclass
class Walk:
    """What the hook saw: each module's first appearance, and the chains to the effects."""

    touched: list[str] = field(default_factory=list)
    chains: list[list[str]] = field(default_factory=list)

    def path(self) -> list[str]:
        """The modules on the chains, in order of first appearance."""
        order: list[str] = []
        for chain in self.chains:
            order += [m for m in chain if m not in order]
        return order


def _chain(frame: FrameType | None) -> list[str] | None:
    """The vqtok modules from the outermost caller to ``frame`` (consecutive frames of one
    module merged, the model's own modules cut off), or None while a module is imported."""
    names: list[str] = []
    while frame is not None:
        code = frame.f_code
        if code.co_filename.startswith("<frozen importlib"):
            return None
        if code.co_filename.startswith(ROOT):
            if code.co_name == "<module>":
                return None
            names.append(module_of(code.co_filename))
        frame = frame.f_back
    names.reverse()
    out: list[str] = []
    for name in names:
        if name.startswith(MODEL_PACKAGES):
            if not out or out[-1] != "(model)":
                out.append("(model)")
            break
        if not out or out[-1] != name:
            out.append(name)
    return out


def _effect(frame: FrameType, event: str, arg: Any) -> bool:
    """Whether this event is one of the command's effects on the outside world."""
    if event == "c_call":
        owner = getattr(arg, "__self__", None)
        module = getattr(arg, "__module__", None) or type(owner).__module__ or ""
        return arg in (open, os.replace) or module.startswith(("av.", "safetensors"))
    if event == "call":
        here = frame.f_code.co_filename
        back = frame.f_back
        return (
            here.startswith(ROOT)
            and module_of(here).startswith("families.")
            and back is not None
            and not module_of(back.f_code.co_filename).startswith(MODEL_PACKAGES)
            and back.f_code.co_filename.startswith(ROOT)
        )
    return False


def trace(argv: list[str]) -> Walk:
    """Run ``vqtok ARGV`` under the hook and return its walk."""
    from typer.main import get_command

    from vqtok.cli import app

    walk = Walk()
    seen_chains: set[tuple[str, ...]] = set()

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        caller = frame if event == "c_call" else frame.f_back
        if event == "call" and frame.f_code.co_filename.startswith(ROOT):
            if frame.f_code.co_name != "<module>" and _chain(frame) is not None:
                name = module_of(frame.f_code.co_filename)
                if name not in walk.touched:
                    walk.touched.append(name)
        if not _effect(frame, event, arg):
            return
        chain = _chain(frame if event == "call" else caller)
        if chain and tuple(chain) not in seen_chains:
            seen_chains.add(tuple(chain))
            walk.chains.append(chain)

    sys.setprofile(hook)
    try:
        get_command(app).main(argv, prog_name="vqtok", standalone_mode=False)
    finally:
        sys.setprofile(None)
    return walk


def report(argv: list[str], walk: Walk, chains: bool) -> None:
    """Print both walks of one command (and each chain of the path with ``chains``)."""
    order = walk.path()
    print(f"$ vqtok {' '.join(argv)}")
    print(f"path: {len([m for m in order if m != '(model)'])} modules")
    print("  " + " -> ".join(order))
    for chain in walk.chains if chains else []:
        print("    " + " > ".join(chain))
    path_free = [m for m in walk.touched if not m.startswith(MODEL_PACKAGES)]
    model = [m for m in walk.touched if m.startswith(MODEL_PACKAGES)]
    print(f"all: {len(path_free)} modules outside the model, {len(model)} in it")
    print("  " + ", ".join(path_free))
    print("  model: " + ", ".join(model))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="*", help="a vqtok command line (after --)")
    parser.add_argument("--chains", action="store_true", help="print every chain of the path")
    args = parser.parse_args()
    if args.command:
        report(args.command, trace(args.command), args.chains)
        return
    with tempfile.TemporaryDirectory() as tmp:
        codes = os.path.join(tmp, "city.npy")
        for argv in (
            ["encode", str(CLIP), "-o", codes, "--max-frames", "9", "--quiet"],
            ["decode", codes, "-o", os.path.join(tmp, "city.mp4"), "--quiet"],
        ):
            report(argv, trace(argv), args.chains)


if __name__ == "__main__":
    main()
