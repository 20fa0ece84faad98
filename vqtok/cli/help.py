"""Help text as a shell user reads it: ``Usage: vqtok encode [OPTIONS] INPUTS...``.

Typer renders Python types in ``--help``: a flag as ``--overwrite <bool>``, a list argument as
``inputs... <list[Path]>``, an option as ``--output <str>`` and the usage line as
``{inputs}...``. `Command` and `Group`, the classes every vqtok command and group is built
with, show instead what to type: flags bare, arguments and values as upper-case names (or the
metavar an option declares, such as ``HxW``), optional arguments in brackets, choices as
``fp32|bf16|fp16``; paragraphs wrap at the terminal's width, not at the docstring's line
breaks (`tidy_help`). Only the help text changes; parsing is Typer's.

A mistake on the command line (an unknown option or command, a missing argument, a value of
the wrong type) is one line on stderr, ``error: vqtok encode: no such option: --bogus (see
vqtok encode --help)``, exit status 2: the same shape as every other vqtok error, instead of
Typer's usage block and boxed panel.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

try:  # Typer >= 0.22 carries its own Click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older Typer runs on Click itself
    from click import exceptions as click_errors  # type: ignore[no-redef]


def _choices(param: Any) -> list[str] | None:
    """The values a choice parameter takes, or None."""
    descriptor = getattr(param, "type_descriptor", None)  # recent Typer
    if descriptor is not None:
        found = descriptor.choices if getattr(descriptor, "is_choice", False) else None
    else:  # Click-based Typer
        found = getattr(getattr(param, "type", None), "choices", None)
    return None if found is None else [str(getattr(c, "value", c)) for c in found]


def _is_int(param: Any) -> bool:
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:
        return getattr(descriptor, "annotation", None) is int
    return getattr(getattr(param, "type", None), "name", "") in ("integer", "integer range")


def _argument_name(param: Any) -> str:
    name = param.metavar or param.name.upper()
    return name if param.nargs == 1 or name.endswith("...") else f"{name}..."


def tidy_help(text: str | None) -> str | None:
    """Help text as Typer's rich help shows it well: each paragraph one line (the terminal
    wraps it; Typer keeps a docstring's own line breaks after the first paragraph, which
    broke sentences mid-line), and brackets shown as typed (``owner/name[@revision]``, not
    read as rich markup and dropped)."""
    if text is None:
        return None
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(escape(p if p.startswith("\b") else " ".join(p.split()))
                       for p in paragraphs)


def tidy_params(params: list[Any]) -> list[Any]:
    """Give every parameter a metavar a shell user can read, and help text as `tidy_help`
    (idempotent).

    Returns:
        ``params``, changed in place.
    """
    for param in params:
        if getattr(param, "help", None) and not getattr(param, "_vqtok_tidy", False):
            param.help = tidy_help(param.help)
            param._vqtok_tidy = True  # escaping twice would show the backslashes
        choices = _choices(param)
        if param.param_type_name == "argument":
            param.metavar = _argument_name(param)
            # Typer prints an argument's Python type whatever its metavar: only choices help
            text = None if choices is None else "|".join(choices)
            param.display_type_rich = lambda ctx, text=text: text
        elif getattr(param, "is_flag", False) or getattr(param, "count", False):
            param.metavar = ""  # a flag takes no value: print no type
        elif param.metavar is None:
            param.metavar = ("|".join(choices) if choices is not None
                             else "N" if _is_int(param) else param.name.upper())
    return params


class Command(TyperCommand):
    """A command whose help shows flags, arguments and values as they are typed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = tidy_help(self.help)

    def get_params(self, ctx: Any) -> list[Any]:
        return tidy_params(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = _argument_name(param)
                pieces.append(name if param.required else f"[{name}]")
        return pieces


def usage_line(error: click_errors.ClickException) -> str:
    """``error: <command>: <what is wrong> (see <command> --help)`` on one line."""
    message = " ".join(error.format_message().split()).rstrip(".")
    message = message.replace("Value error, ", "")  # how the value check words a bad choice
    ctx = getattr(error, "ctx", None)
    if ctx is None:
        return f"error: {message}"
    message = message[:1].lower() + message[1:] if message[1:2].islower() else message
    return f"error: {ctx.command_path}: {message} (see {ctx.command_path} --help)"


class Group(TyperGroup):
    """A command group whose own options (``--version``, ``--help``) print no type, and whose
    command-line mistakes are one line (`usage_line`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = tidy_help(self.help)

    def get_params(self, ctx: Any) -> list[Any]:
        return tidy_params(super().get_params(ctx))

    def main(
        self, args: Sequence[str] | None = None, prog_name: str | None = None,
        complete_var: str | None = None, standalone_mode: bool = True,
        windows_expand_args: bool = True, **extra: Any,
    ) -> Any:
        extra.update(prog_name=prog_name, complete_var=complete_var,
                     windows_expand_args=windows_expand_args)
        if not standalone_mode:
            return super().main(args, standalone_mode=False, **extra)
        try:
            # Not standalone: Click hands the errors back instead of drawing them.
            status = super().main(args, standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError as e:
            sys.exit(e.exit_code)  # the help is already printed
        except click_errors.ClickException as e:
            print(usage_line(e), file=sys.stderr)
            sys.exit(e.exit_code)
        except typer.Abort:
            print("error: aborted", file=sys.stderr)
            sys.exit(1)
        sys.exit(status if isinstance(status, int) else 0)
