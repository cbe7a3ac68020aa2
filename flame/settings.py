"""Typed settings from plain mappings (YAML sections, JSON overrides): checked before any work starts.

A stage's settings are a dataclass. `build_settings` turns a mapping into one, refusing unknown keys
and values of the wrong type with a one-line message that names the key, so a typo stops a run at
once instead of failing every task (and marking good data as failed) later.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class SettingsError(ValueError):
    """A settings section that cannot be used; the message names the section and the key."""


def build_settings(cls: type[T], values: Mapping[str, Any] | T | None, where: str) -> T:
    """`cls(**values)` with every key known and every value of its field's type (nested dataclasses too).

    Lists become tuples for tuple fields and ints become floats for float fields (YAML has no tuples
    and writes 1 for 1.0); anything else of the wrong type is refused.
    """
    if isinstance(values, cls):
        return values
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise SettingsError(f"{where or cls.__name__}: expected a mapping of keys to values, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise SettingsError(f"{where or cls.__name__}: unknown key(s) {', '.join(map(repr, unknown))}; "
                            f"accepted: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    checked = {key: _check(value, hints[key], f"{where}.{key}" if where else key) for key, value in values.items()}
    try:
        return cls(**checked)
    except (TypeError, ValueError) as e:  # a dataclass's own __post_init__ checks (ranges, consistency)
        raise SettingsError(f"{where or cls.__name__}: {e}") from None


def _check(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _check(value, option, where)
            except SettingsError as e:
                errors.append(str(e))
        raise SettingsError(errors[0] if len(errors) == 1 else f"{where}: {value!r} is not a {_name(hint)}")
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return build_settings(hint, value, where)
    if origin is typing.Literal:
        if value not in args:
            raise SettingsError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise SettingsError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise SettingsError(f"{where}: expected {len(args)} values, got {len(value)}")
        fixed = origin is tuple and args and args[-1] is not Ellipsis  # tuple[float, float]: one hint per item
        items = args if fixed else [args[0] if args else Any] * len(value)
        out = [_check(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, items, strict=True))]
        return tuple(out) if origin is tuple else out
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise SettingsError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise SettingsError(f"{where}: expected {hint.__name__}, got {value!r}")
        return value
    return value  # a type this checker does not know: the dataclass itself decides


def _name(hint: Any) -> str:
    return " or ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(hint) if a is not type(None))
