"""Help text as a shell user reads it: ``Usage: vqtok encode [OPTIONS] INPUTS...``.

Typer renders Python types in ``--help``: a flag as ``--overwrite <bool>``, a list argument as
``inputs... <list[Path]>``, an option as ``--output <str>`` and the usage line as
``{inputs}...``. `Command` and `Group`, the classes every vqtok command and group is built
with, show instead what to type: flags bare, arguments and values as upper-case names (or the
metavar an option declares, such as ``HxW``), optional arguments in brackets, choices as
``fp32|bf16|fp16``. Only the help text changes; parsing is Typer's.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand, TyperGroup


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


def tidy_params(params: list[Any]) -> list[Any]:
    """Give every parameter a metavar a shell user can read (idempotent).

    Returns:
        ``params``, changed in place.
    """
    for param in params:
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

    def get_params(self, ctx: Any) -> list[Any]:
        return tidy_params(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = _argument_name(param)
                pieces.append(name if param.required else f"[{name}]")
        return pieces


class Group(TyperGroup):
    """A command group whose own options (``--version``, ``--help``) print no type."""

    def get_params(self, ctx: Any) -> list[Any]:
        return tidy_params(super().get_params(ctx))
