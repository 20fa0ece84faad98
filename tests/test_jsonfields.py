"""The strict JSON -> dataclass parser behind every config file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from vqtok.errors import ConfigError
from vqtok.jsonfields import dataclass_from_json


@dataclass(frozen=True)
class Example:
    count: int = 1
    rate: float = 0.5
    name: str = "x"
    flag: bool = False
    sizes: tuple[int, ...] = (1,)
    pair: tuple[float, ...] = (1.0, 2.0)
    options: dict[str, Any] = field(default_factory=dict)
    maybe: bool | None = None


def test_lists_become_tuples_and_ints_floats() -> None:
    ex = dataclass_from_json(
        Example, {"rate": 2, "sizes": [3, 4], "pair": [1, 0.5], "maybe": True}, "key"
    )
    assert ex == Example(rate=2.0, sizes=(3, 4), pair=(1.0, 0.5), maybe=True)
    assert isinstance(ex.rate, float) and isinstance(ex.pair[0], float)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"count": True}, "'count' must be an integer, got True"),
        ({"count": 1.5}, "'count' must be an integer"),
        ({"rate": "fast"}, "'rate' must be a number"),
        ({"flag": 1}, "'flag' must be true or false"),
        ({"sizes": [1, 2.5]}, "'sizes' must be a list of integers"),
        ({"sizes": 3}, "'sizes' must be a list"),
        ({"options": [1]}, "'options' must be an object"),
        ({"maybe": "yes"}, "'maybe' must be true or false or null"),
        ({"name": 3}, "'name' must be a string"),
        ({"colour": 1, "bogus": 2}, "unknown key\\(s\\): bogus, colour"),
    ],
)
def test_wrong_types_and_unknown_keys_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        dataclass_from_json(Example, data, "key")


def test_not_an_object() -> None:
    with pytest.raises(ConfigError, match="must be a JSON object, got list"):
        dataclass_from_json(Example, [1], "key")
