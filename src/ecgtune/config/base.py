"""What every section of the schema shares: the :class:`Section` base, the one-line errors
its validators raise, and the refusal of values of the wrong TOML type.

Hostile input is refused here rather than deep in the work: everything that sizes memory or
time has an upper bound (see the ``le=`` of each field and
:data:`ecgtune.config.model.PER_ENTRY_BOUNDS`), values of the wrong TOML type are not coerced
(``lr = "0.001"``, ``epochs = true``; see :func:`coercion_problem`), and the checks that need
no data (MIT-BIH leads and record names, URLs, the experiment name) run with the rest of the
schema.
"""

from __future__ import annotations

import math
import os
import tomllib
import types
import typing
from pathlib import PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

AAMI_CLASSES = ("N", "S", "V", "F", "Q")


def _usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


CPU_CORES = _usable_cores()


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated and
    values of the wrong TOML type are refused instead of coerced (:func:`coercion_problem`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _refuse_surprising_coercion(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        problem = coercion_problem(field.annotation, value) if field else None
        if problem:
            raise _value_error(problem)
        return value


def _rule_error(message: str) -> PydanticCustomError:
    """An error raised by a cross-field rule; its message already names the keys involved."""
    return PydanticCustomError("config_rule", message)


def _value_error(message: str) -> PydanticCustomError:
    """An error about one key's value; reported as ``key = value: message``."""
    return PydanticCustomError("config_value", message)


def coercion_problem(annotation: Any, value: Any) -> str | None:
    """Why pydantic's lax mode would surprise the user with ``value`` for a key, or None.

    Lax mode turns ``"0.001"`` into a float, ``true`` into 1 and ``1`` or ``"yes"`` into
    True; those are refused here. Strict mode would refuse too much: a whole float for an
    integer key (hyperopt's ``quniform`` draws 64.0), a string for a path, an array for a
    tuple. So a number key takes numbers (an int for a float key too) and a boolean key
    booleans; keys of text need no check (lax mode coerces nothing into a string), and every
    other rule is the schema's. Lists are checked entry by entry.
    """
    if isinstance(value, list | tuple):
        entry_types = _entry_annotations(annotation, len(value))
        for index, (item, entry_type) in enumerate(zip(value, entry_types, strict=False)):
            problem = _scalar_problem(entry_type, item)
            if problem:
                return f"entry [{index}] = {item!r} is {problem}"
        return None
    return _scalar_problem(annotation, value)


EXPECTED = {"boolean": "true or false", "integer": "a valid integer", "float": "a valid number"}
VALUE_KINDS = {"boolean": {"boolean"}, "number": {"integer", "float"}, "string": set()}
"""Which schema types take a value of each TOML type without surprise."""


def _scalar_problem(annotation: Any, value: Any) -> str | None:
    """Why a scalar does not fit a key of numbers or booleans: the wrong TOML type, or nan
    and inf, which TOML writes as floats but which no bound of the schema can say it refuses
    (``lr = nan`` compares false with every bound)."""
    kind = _toml_kind(value)
    accepted = _accepted_types(annotation)
    if kind == "number" and accepted & VALUE_KINDS["number"] and not math.isfinite(value):
        return "not a finite number (nan and inf are refused)"
    if kind is None or not accepted or VALUE_KINDS[kind] & accepted:
        return None
    takes = " or ".join(EXPECTED[name] for name in sorted(accepted))
    return f"a {kind}, but the key takes {takes}{_unquote_hint(value, accepted)}"


def _unquote_hint(value: Any, accepted: set[str]) -> str:
    """A quoted value of the right type (``"0.001"``, ``"true"``) is most likely a slip."""
    if not isinstance(value, str):
        return ""
    try:
        unquoted = _toml_kind(tomllib.loads(f"value = {value}")["value"])
    except tomllib.TOMLDecodeError:
        return ""
    fits = unquoted is not None and VALUE_KINDS[unquoted] & accepted
    return " (write it without quotes)" if fits else ""


def _toml_kind(value: Any) -> str | None:
    """The TOML type of a scalar value (bool before int: Python's bool is an int)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def _accepted_types(annotation: Any) -> set[str]:
    """The scalar types a number or boolean key takes: boolean, integer, float. Empty for
    keys that take text or anything (strings, paths, names, ``Any``): lax mode coerces no
    number or boolean into those, and their own errors list what is allowed."""
    members = union_members(annotation)
    if any(_takes_text(member) for member in members):
        return set()
    names = {bool: "boolean", int: "integer", float: "float"}
    return {names[member] for member in members if member in names}


def _takes_text(member: Any) -> bool:
    if member is Any or typing.get_origin(member) is Literal:
        return True
    return isinstance(member, type) and issubclass(member, str | PurePath)


def _entry_annotations(annotation: Any, length: int) -> list[Any]:
    """The type of each entry of a list value, from the key's list or tuple annotation."""
    for member in union_members(annotation):
        args = typing.get_args(member)
        if typing.get_origin(member) is list:
            return [args[0]] * length
        if typing.get_origin(member) is tuple:
            return [args[0]] * length if args[-1] is Ellipsis else list(args)
    return []


def union_members(annotation: Any) -> tuple[Any, ...]:
    """The members of a union type (``bool | list[bool]``), or the type itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)
