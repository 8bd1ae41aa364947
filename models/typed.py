"""JSON in, a frozen dataclass's field values out, each checked against its annotation.

A request travels as JSON in a task message, which anyone with access to Redis can write; what
a field holds is checked here before the dataclass is made, so a forged or garbled request is
one `UsageError` naming the field, never a `TypeError` deep in the pipeline. Keys the class does
not have are dropped (a request of a newer version still reads); missing ones take defaults.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

from flowers.models.errors import UsageError


def field_values(cls: type, data: Any, what: str) -> dict[str, Any]:
    """The values of `data` (a JSON object) for the fields of dataclass `cls`, each of its
    annotated type: str, int (not bool), float (an int is taken), bool, None, a tuple of fixed
    length (from a JSON list), `dict[str, ...]`, a nested dataclass (checked by its own
    `from_dict`, left as it is here) or a union of those."""
    if not isinstance(data, dict):
        raise UsageError(f"{what} is a JSON object, not {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        if field.name in data:
            value = data[field.name]
            if not _fits(value, hints[field.name]):
                raise UsageError(f"{what}: {field.name} is {_shown(value)}, not "
                                 f"{_name(hints[field.name])}")
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return values


def _fits(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, part) for part in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any or dataclasses.is_dataclass(hint):
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        parts = typing.get_args(hint)
        if len(parts) == 2 and parts[1] is Ellipsis:  # tuple[X, ...]: any length
            return isinstance(value, list | tuple) and all(_fits(item, parts[0])
                                                           for item in value)
        return (isinstance(value, list | tuple) and len(value) == len(parts)
                and all(_fits(item, part) for item, part in zip(value, parts, strict=True)))
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(key, str) for key in value)
    raise TypeError(f"no check for {hint!r}")  # a field type this module does not know yet


def _name(hint: Any) -> str:
    if isinstance(hint, type):
        return "a whole number" if hint is int else "true or false" if hint is bool else (
            "a number" if hint is float else "a string" if hint is str else hint.__name__)
    return str(hint).replace("typing.", "").replace("NoneType", "None")


def _shown(value: Any) -> str:
    shown = json.dumps(value, default=repr)
    return shown if len(shown) <= 60 else f"{shown[:56]}...{shown[-1]}"
