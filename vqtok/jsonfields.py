"""Strict JSON -> frozen dataclass parsing for vqtok's config files, and the way back.

    config = dataclass_from_json(TrainConfig, {"steps": 100}, "train option")
    data = dataclass_to_json(config)

Unknown keys and values of the wrong JSON type are a `ConfigError` naming the key. JSON has
no tuples, so lists become tuples where the field is one (and `dataclass_to_json` writes them
as lists again); ints are accepted for floats; bools are never numbers. Supported field types:
bool, int, float, str, ``tuple[int, ...]``, ``tuple[float, ...]``, ``dict[str, Any]`` and
``X | None`` of those.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from vqtok.errors import ConfigError

__all__ = ["dataclass_from_json", "dataclass_to_json"]


def dataclass_from_json(cls: type, data: Any, what: str) -> Any:
    """Build ``cls(**data)`` after checking every key and value against the field types.

    Args:
        cls: a dataclass.
        data: the parsed JSON object.
        what: how one key is named in messages, e.g. "tokenizer config key".

    Raises:
        ConfigError: ``data`` is not an object, has unknown keys or a mistyped value (the
            dataclass's own ``__post_init__`` checks run after).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{what}s must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"unknown {what}(s): {', '.join(map(str, unknown))}")
    values = {}
    for key, value in data.items():
        ok, parsed = _parse(value, hints[key])
        if not ok:
            raise ConfigError(f"{what} {key!r} must be {_describe(hints[key])}, got {value!r}")
        values[key] = parsed
    return cls(**values)


def dataclass_to_json(obj: Any) -> dict[str, Any]:
    """``dataclasses.asdict(obj)`` with its tuple fields as lists: the JSON form that
    `dataclass_from_json` (or a family's ``from_dict``) turns back into an equal dataclass."""
    out = dataclasses.asdict(obj)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _parse(value: Any, hint: Any) -> tuple[bool, Any]:
    """(whether ``value`` fits ``hint``, the value converted to the field's Python type)."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        for option in typing.get_args(hint):
            ok, parsed = (value is None, None) if option is type(None) else _parse(value, option)
            if ok:
                return True, parsed
        return False, value
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if isinstance(value, (list, tuple)):
            parsed = [_parse(v, item) for v in value]
            if all(ok for ok, _ in parsed):
                return True, tuple(v for _, v in parsed)
        return False, value
    if origin is dict:
        ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
        return ok, dict(value) if ok else value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    raise TypeError(f"unsupported config field type {hint}")  # a programming error


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
        return f"a list of {plural.get(item, str(item))}"
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is dict:
        return "an object"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, "null" if hint is type(None) else str(hint))
