"""Dotted config keys (``"training.lr"``) on nested mappings, as parsed from TOML.

The search space, ``--set`` overrides, MLflow parameters and the saved search's identity all
name config keys this way; this module is the one place that walks the nesting. Lists are
values, never sections: ``model.channels`` is one key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ecgtune.errors import ConfigError


def get_dotted(raw: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted key; ``KeyError`` when a part is missing."""
    node: Any = raw
    for part in key.split("."):
        node = node[part]
    return node


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Put ``value`` at a dotted key, creating the sections on the way.

    A part of the path that holds a value instead of a section (``data = 5`` in the file,
    then ``data.split`` set) is a :class:`ConfigError`: replacing the value would hide it.
    """
    *sections, leaf = key.split(".")
    node = raw
    for depth, part in enumerate(sections):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(sections[: depth + 1])
            raise ConfigError(f"cannot set {key!r}: {where} = {child!r} is a value, not a section")
        node = child
    node[leaf] = value


def flatten(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"dropout": 0.3}}`` -> ``{"model.dropout": 0.3}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat
