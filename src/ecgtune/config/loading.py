"""From a file to a :class:`Config` and back.

:func:`load_config` turns every problem (missing, empty or non-UTF-8 file, TOML syntax,
unknown key, wrong type, value out of range, a ``--set`` override that does not parse) into
one :class:`ConfigError` whose message names the key path, the bad value and what is allowed;
the command line prints it on one line and exits with status 2. :func:`schema_field` finds a
dotted key's type (with the same did-you-mean for a typo), and :func:`config_toml` writes a
config back as TOML.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomlkit
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from ecgtune.config.experiment import Config
from ecgtune.dotted import set_dotted
from ecgtune.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20
"""A config file is a few kilobytes; reading stops past 1 MiB (``--config /dev/zero``)."""


def config_toml(config: Config, header: Sequence[str] = (), drop: Sequence[str] = ()) -> str:
    """A config as TOML a person reads and ``load_config`` loads back: ``header`` lines as
    comments on top, lists on one line, each search distribution as one inline table, the
    sections in ``drop`` left out."""
    raw = config.model_dump(mode="json", exclude_none=True)
    document = tomlkit.document()
    for line in header:
        document.add(tomlkit.comment(line))
    for key, value in raw.items():
        if key in drop:
            continue
        if key == "search":
            space = tomlkit.table()
            for name, distribution in value.pop("space").items():
                inline = tomlkit.inline_table()
                inline.update(distribution)
                space.add(name, inline)
            value["space"] = space
        document.add(key, value)
    return tomlkit.dumps(document)


def load_config(path: Path, overrides: Sequence[str] = ()) -> Config:
    """Read and validate a TOML config, with ``--set KEY=VALUE`` overrides applied on top;
    every problem becomes one :class:`ConfigError`."""
    changes = parse_overrides(overrides)
    raw = read_config_file(path)
    for key, value in changes.items():
        set_dotted(raw, key, value)
    source = f"{path} with --set {', '.join(changes)}" if changes else str(path)
    return validate_config(raw, source=source)


def read_config_file(path: Path) -> dict[str, Any]:
    """The parsed TOML of a config file: UTF-8 (a byte-order mark is skipped), at most
    :data:`MAX_CONFIG_BYTES`, and not empty.

    An empty file is refused: every key would take its default, so a typo in the path to an
    empty file would start the full default experiment, downloads included.
    """
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES:,} bytes, not a config file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line}); "
            f"save it as UTF-8"
        ) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    if not raw:
        raise ConfigError(
            f"{path}: the config is empty (no keys), so every key would take its default; "
            f"start from config.toml, which lists every key with its default, or run with "
            f"--config config.toml --set KEY=VALUE"
        )
    return raw


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as ``{dotted key: value}``, in order (a repeated key: the
    last wins), for :func:`load_config` to apply and for a run to record.

    VALUE is TOML (``2``, ``1e-3``, ``true``, ``["100", "101"]``, ``"V1"``); a bare word that
    is not TOML is taken as a string (``data.split=inter``). Keys are checked against the schema
    here, so a typo gets the same did-you-mean as in the file.
    """
    overrides: dict[str, Any] = {}
    for item in items:
        key, separator, text = item.partition("=")
        key = key.strip()
        if not separator or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. training.epochs=2")
        try:
            schema_field(key)
        except ConfigError as exc:
            raise ConfigError(f"--set {item!r}: {exc}") from None
        overrides[key] = _override_value(item, text.strip())
    return overrides


def _override_value(item: str, text: str) -> Any:
    if not text:
        raise ConfigError(f"--set {item!r}: no value after '=' (an empty string is written \"\")")
    try:
        parsed = tomllib.loads(f"value = {text}")
    except tomllib.TOMLDecodeError as exc:
        if text[0] in "[{\"'":
            raise ConfigError(f"--set {item!r}: not a TOML value ({exc})") from None
        return text
    if list(parsed) != ["value"]:
        raise ConfigError(f"--set {item!r}: give one value after '=', not several lines")
    return parsed["value"]


def validate_config(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a parsed config mapping (from TOML, or a search trial)."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_error(exc)}") from None


def describe_error(exc: ValidationError) -> str:
    """The first validation error as 'key = value: what is allowed', plus a count of others."""
    errors = exc.errors()
    message = _describe_one(errors[0])
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return message


def _describe_one(error: ErrorDetails) -> str:
    location = [str(part) for part in error["loc"]]
    key = ".".join(location)
    if error["type"] == "extra_forbidden":
        return unknown_key_message(location)
    if error["type"] == "config_rule":
        return error["msg"] if key in error["msg"] else f"{key}: {error['msg']}"
    if error["type"] == "missing":
        return f"missing key {key!r}"
    value = error.get("input")
    return f"{key} = {value!r}: {error['msg']}"


def schema_field(key: str) -> Any:
    """The schema type of a dotted leaf key (``"training.lr"`` -> ``float``).

    An unknown key is a :class:`ConfigError` with the message the file would get (did you
    mean, allowed keys); so is a section (``"training"``), which holds keys but is none.
    """
    parts = key.split(".")
    section: type[BaseModel] = Config
    for depth in range(len(parts) - 1):
        section = _subsection(section, parts, depth)
    field = section.model_fields.get(parts[-1])
    if field is None:
        raise ConfigError(unknown_key_message(parts))
    inner = _section_class(field.annotation)
    if inner is not None:
        raise ConfigError(
            f"{key!r} is a section, not a key: name one of its keys "
            f"({', '.join(f'{key}.{name}' for name in inner.model_fields)})"
        )
    return field.annotation


def _subsection(section: type[BaseModel], parts: list[str], depth: int) -> type[BaseModel]:
    """The section ``parts[depth]`` of ``section``, on the way to the key ``parts``."""
    field = section.model_fields.get(parts[depth])
    if field is None:
        raise ConfigError(unknown_key_message(parts[: depth + 1], parts[depth + 1 :]))
    inner = _section_class(field.annotation)
    if inner is None:
        raise ConfigError(
            f"unknown key {'.'.join(parts)!r}: {'.'.join(parts[: depth + 1])!r} is a key, "
            f"not a section"
        )
    return inner


def unknown_key_message(location: Sequence[str], rest: Sequence[str] = ()) -> str:
    """'unknown key' for the last part of ``location`` (followed by ``rest``), with the closest
    key of its section and every key allowed there, when the section is part of the schema."""
    key = ".".join([*location, *rest])
    section = _section_at(location[:-1])
    if section is None:
        return f"unknown key {key!r}"
    allowed = list(section.model_fields)
    suggestion = _closest_key(section, location, rest)
    hint = f" (did you mean {suggestion!r}?)" if suggestion else ""
    return f"unknown key {key!r}{hint}; allowed keys here: {', '.join(allowed)}"


def _closest_key(
    section: type[BaseModel], location: Sequence[str], rest: Sequence[str]
) -> str | None:
    """The key of ``section`` closest in spelling to the last part of ``location``; else a key
    of that name in one of its sub-sections (``lr`` -> ``training.lr``)."""
    *parents, name = location
    close = difflib.get_close_matches(name, list(section.model_fields), n=1)
    if close:
        return ".".join([*parents, close[0], *rest])
    nested = [key for key in _leaf_keys(section, parents) if key.rsplit(".", 1)[-1] == name]
    return nested[0] if nested and not rest else None


def _leaf_keys(section: type[BaseModel], prefix: Sequence[str]) -> list[str]:
    """Every dotted leaf key below ``section`` (whose own key is ``prefix``)."""
    keys: list[str] = []
    for name, field in section.model_fields.items():
        inner = _section_class(field.annotation)
        keys += _leaf_keys(inner, [*prefix, name]) if inner else [".".join([*prefix, name])]
    return keys


def _section_at(location: Sequence[str]) -> type[BaseModel] | None:
    """The schema class that owns the keys at a location; None below a value (a key of the
    free-form ``search.space`` table, say)."""
    section: type[BaseModel] = Config
    for part in location:
        field = section.model_fields.get(part)
        inner = _section_class(field.annotation) if field else None
        if inner is None:
            return None
        section = inner
    return section


def _section_class(annotation: Any) -> type[BaseModel] | None:
    """The section class a field holds, or None for a value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None
