"""``[search.space]`` as a hyperopt space, checked against the schema before the search starts.

Every key of the space is a dotted config key (``"training.lr"``). A trial is the base config
with the sampled values put in place and validated by the same schema as ``config.toml``, so a
trial can never run a config the user could not have written. :func:`build_search_space`
rejects, before any work starts, unknown keys, keys outside the searchable sections, values the
schema would refuse (every choice option and both ends of every range are validated in place
in the base config) and a base config the space cannot express: the base config is always the
search's first trial, so its values must be ones the space can draw.

``each`` draws every entry of a list on its own. Per-stage lists (channels, kernel sizes,
dilations, pooling, SE, residual) get one entry per stage of the deepest ``model.conv_layers``
the space can draw; the schema cuts them to the trial's depth. Entries that the base config does
not have (it is shallower) are filled with the entry distribution's first value (first option,
or lower bound): the schema cuts them away for the base trial anyway.
"""

from __future__ import annotations

import copy
import math
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from numbers import Integral
from typing import Any

from hyperopt import hp
from pydantic import ValidationError

from ecgtune.config import (
    PER_LAYER_KEYS,
    Config,
    Distribution,
    describe_error,
    option_label,
    schema_field,
    union_members,
    validate_config,
)
from ecgtune.dotted import get_dotted, set_dotted
from ecgtune.errors import ConfigError

SEARCHABLE_PREFIXES = ("model.", "training.", "data.resample.", "inference.")
PER_STAGE_KEYS = tuple(f"model.{key}" for key in (*PER_LAYER_KEYS, "se_blocks", "residual"))
UNSEARCHABLE_KEYS = ("training.objective", "training.device", "training.num_threads")
"""Keys the search compares trials by (the objective) or that do not change a trial's result."""
CONTINUOUS_KINDS = ("uniform", "loguniform", "normal")
RANGE_TOLERANCE = 1e-9
"""Relative slack at the ends of a range: hyperopt's draws pass through ``exp`` and ``log``."""


@dataclass(frozen=True)
class SpaceEntry:
    """One distribution of the space, with the choices that must be taken for it to be drawn."""

    key: str
    label: str
    distribution: Distribution
    opened_by: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class SearchSpace:
    """The checked space: the hyperopt expression, the base config as a point of it, and how a
    sample becomes a trial config."""

    base: Config
    entries: tuple[SpaceEntry, ...]
    list_lengths: dict[str, int]
    expression: dict[str, Any]
    base_point: dict[str, Any]
    reference: dict[str, Any]
    draws: dict[str, tuple[str, Distribution]]
    """Every hyperopt label of the expression, with the key (``[index]`` for an ``each``
    entry) and the one distribution drawn under it."""

    @property
    def searched_keys(self) -> list[str]:
        """The searched config keys, in the order of the space, each once (a key opened by
        several options of a choice too)."""
        return list(dict.fromkeys(entry.key for entry in self.entries))

    def trial_config(self, sample: dict[str, Any]) -> Config:
        """The base config with a hyperopt sample in place, validated by the schema."""
        raw = self.base.model_dump()
        for key, value in flatten_sample(sample).items():
            set_dotted(raw, key, value)
        return validate_config(raw, source="trial config")

    def candidate_configs(self) -> Iterator[tuple[str, Any, Config]]:
        """Every searched key at each of its candidate values (choice options, range ends),
        as a validated config: the extremes that tests build models from."""
        for entry in self.entries:
            for value, raw in candidate_raws(entry, self.reference, self.list_lengths):
                yield entry.key, value, validate_config(raw, source=f"{entry.key} = {value!r}")

    def candidate_values(self, key: str) -> list[Any]:
        """The candidate values (choice options, range ends) the space gives ``key``, in
        every sub-space that draws it; empty when the key is not searched."""
        return [
            value
            for entry in self.entries
            if entry.key == key
            for value in _candidates(entry.distribution)
        ]

    def saved_value_problem(self, label: str, value: float) -> str | None:
        """Why a value a saved search holds for ``label`` (a choice's index, a range's draw)
        is not one this space can draw, or None: a planted or edited ``trials.json`` would
        make hyperopt index past a choice list, or a trial train outside the space."""
        if label not in self.draws:
            return "is not drawn by any key of search.space"
        key, distribution = self.draws[label]
        if distribution.choice is None:
            reason = _outside(distribution, value)
        else:
            options = distribution.choice
            integer = isinstance(value, Integral) and not isinstance(value, bool)
            is_index = integer and 0 <= value < len(options)
            reason = None if is_index else f"is not an index of the choices {options}"
        return reason and f"{reason} (search.space {key!r})"

    def values_of(self, config: Config) -> dict[str, Any]:
        """The searched keys' values in a validated trial config (typed, lists cut to depth);
        keys of sub-spaces the trial did not open are left out."""
        dumped = config.model_dump(mode="json")
        active = [
            entry.key
            for entry in self.entries
            if all(get_dotted(dumped, key) == option for key, option in entry.opened_by)
        ]
        return {key: get_dotted(dumped, key) for key in dict.fromkeys(active)}


def build_search_space(config: Config) -> SearchSpace:
    """Check ``config.search.space`` against the schema and build its hyperopt expression."""
    space = config.search.space
    entries = tuple(_entries(space, prefix="", opened_by=()))
    for entry in entries:
        _check_key(entry)
    _check_keys_are_not_repeated(entries)
    lengths = _list_lengths(config, entries)
    reference = _reference_config(config, entries, lengths)
    for entry in entries:
        _check_values(entry, reference, lengths)
    return SearchSpace(
        base=config,
        entries=entries,
        list_lengths=lengths,
        expression=_space_expression(space, "", lengths),
        base_point=_base_point(space, "", reference, lengths),
        reference=reference,
        draws=_draws(space, "", lengths),
    )


def flatten_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A hyperopt sample as ``{dotted key: value}``: opened sub-spaces merged in, tuples as
    lists (hyperopt returns ``each`` draws and list options as tuples)."""
    flat: dict[str, Any] = {}
    for key, value in sample.items():
        if isinstance(value, dict):
            flat.update(flatten_sample(value))
        else:
            flat[key] = _as_plain(value)
    return flat


def _as_plain(value: Any) -> Any:
    """Tuples to lists and numpy scalars to Python numbers, so values dump to TOML and JSON."""
    if isinstance(value, list | tuple):
        return [_as_plain(item) for item in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def _entries(
    space: dict[str, Distribution], prefix: str, opened_by: tuple[tuple[str, Any], ...]
) -> list[SpaceEntry]:
    """Every distribution of the space, sub-spaces of ``when`` included, in order."""
    found: list[SpaceEntry] = []
    for key, distribution in space.items():
        label = prefix + key
        found.append(SpaceEntry(key, label, distribution, opened_by))
        for option in distribution.choice or []:
            sub_space = (distribution.when or {}).get(option_label(option), {})
            found += _entries(sub_space, _sub_prefix(label, option), (*opened_by, (key, option)))
    return found


def _where(entry: SpaceEntry) -> str:
    """How an error names a space entry: its key, and the choices that open it."""
    opened = "".join(f" (when {key} = {option_label(option)})" for key, option in entry.opened_by)
    return f"search.space.{entry.key!r}{opened}"


def _check_key(entry: SpaceEntry) -> None:
    """The key names a searchable leaf of the schema; ``each`` only on lists; no fractions
    for integer keys."""
    annotation = _annotation_of(entry)
    if not entry.key.startswith(SEARCHABLE_PREFIXES):
        raise ConfigError(
            f"{_where(entry)}: only model.*, training.*, data.resample.* and inference.* keys "
            f"can be searched (the dataset is built once and shared by every trial)"
        )
    if entry.key in UNSEARCHABLE_KEYS:
        raise ConfigError(
            f"{_where(entry)}: cannot be searched (the search compares every trial by "
            f"training.objective on the same device settings)"
        )
    distribution = entry.distribution
    if distribution.each is not None:
        element = _list_element(annotation)
        if element is None:
            raise ConfigError(f"{_where(entry)}: 'each' needs a list key")
        annotation, distribution = element, distribution.each
    if distribution.kind in CONTINUOUS_KINDS and _is_integer(annotation):
        raise ConfigError(
            f"{_where(entry)}: {distribution.kind} draws fractions but the key takes integers: "
            f"use quniform, qloguniform, randint or choice"
        )


def _annotation_of(entry: SpaceEntry) -> Any:
    """The schema type of a dotted key; unknown keys and sections are errors that name the
    space entry."""
    try:
        return schema_field(entry.key)
    except ConfigError as exc:
        raise ConfigError(f"{_where(entry)}: {exc}") from None


def _list_element(annotation: Any) -> Any | None:
    """The element type if the key accepts a list (``list[int]``, ``bool | list[bool]``)."""
    for member in union_members(annotation):
        if typing.get_origin(member) is list:
            return typing.get_args(member)[0]
    return None


def _is_integer(annotation: Any) -> bool:
    members = union_members(annotation)
    return int in members and float not in members


def _check_keys_are_not_repeated(entries: tuple[SpaceEntry, ...]) -> None:
    """A key may appear in several options of one choice (only one is drawn), nowhere else."""
    for index, first in enumerate(entries):
        for second in entries[index + 1 :]:
            if first.key == second.key and not _exclusive(first, second):
                raise ConfigError(
                    f"{_where(second)}: the key is already searched by {_where(first)}"
                )


def _exclusive(first: SpaceEntry, second: SpaceEntry) -> bool:
    """Whether two entries sit in different options of the same choice."""
    options = dict(first.opened_by)
    return any(key in options and options[key] != option for key, option in second.opened_by)


def _list_lengths(config: Config, entries: tuple[SpaceEntry, ...]) -> dict[str, int]:
    """How many entries each ``each`` draws: per-stage lists one per stage of the deepest
    network the space can draw, other lists as many as the base config has."""
    depths = [config.model.conv_layers]
    for entry in entries:
        if entry.key == "model.conv_layers":
            depths += [int(value) for value in _candidates(entry.distribution)]
    lengths: dict[str, int] = {}
    for entry in entries:
        if entry.distribution.each is None:
            continue
        base = get_dotted(config.model_dump(), entry.key)
        if entry.key in PER_STAGE_KEYS:
            lengths[entry.key] = max(depths)
        elif isinstance(base, list) and base:
            lengths[entry.key] = len(base)
        else:
            raise ConfigError(f"{_where(entry)}: 'each' needs the base config to give the list")
    return lengths


def _candidates(distribution: Distribution) -> list[Any]:
    """The values whose validity stands for the whole distribution: every option, both ends
    of a range (quantised ends, and the step after the low end, as hyperopt rounds them)."""
    kind = distribution.kind
    if distribution.choice is not None:
        return list(distribution.choice)
    if distribution.each is not None:
        return _candidates(distribution.each)
    bounds = getattr(distribution, kind)
    if kind == "normal":
        return [bounds[0]]
    if kind == "randint":
        return [bounds[0], bounds[1] - 1]
    if kind in ("quniform", "qloguniform"):
        low, high, step = bounds
        first, last = step * round(low / step), step * round(high / step)
        return sorted({first, min(first + step, last), last})
    return [bounds[0], bounds[1]]


def _reference_config(
    config: Config, entries: tuple[SpaceEntry, ...], lengths: dict[str, int]
) -> dict[str, Any]:
    """The base config with every ``each`` list as long as the space draws it (filled with
    the entry distribution's first value): the context in which single values are checked."""
    raw = config.model_dump()
    for entry in entries:
        if entry.distribution.each is not None:
            filler = _candidates(entry.distribution.each)[0]
            base = get_dotted(raw, entry.key)
            values = list(base) if isinstance(base, list) else [base] * config.model.conv_layers
            length = lengths[entry.key]
            set_dotted(raw, entry.key, (values + [filler] * length)[:length])
    return raw


def candidate_raws(
    entry: SpaceEntry, reference: dict[str, Any], lengths: dict[str, int]
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Each candidate value of an entry (every choice option, both ends of a range) put in
    place in the reference config, with the choices that open the entry."""
    context = copy.deepcopy(reference)
    for key, option in entry.opened_by:
        set_dotted(context, key, option)
    for value in _candidates(entry.distribution):
        raw = copy.deepcopy(context)
        if entry.distribution.each is not None:
            set_dotted(raw, entry.key, [value] * lengths[entry.key])
        else:
            set_dotted(raw, entry.key, value)
        yield value, raw


def _check_values(entry: SpaceEntry, reference: dict[str, Any], lengths: dict[str, int]) -> None:
    """Validate every candidate value in the reference config, so the schema's own rules and
    bounds decide."""
    for value, raw in candidate_raws(entry, reference, lengths):
        try:
            Config.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(
                f"{_where(entry)}: {_kind_name(entry.distribution)} can draw {value!r}, which the "
                f"config rejects: {describe_error(exc)}"
            ) from None


def _kind_name(distribution: Distribution) -> str:
    each = distribution.each
    return f"each {each.kind}" if each is not None else distribution.kind


def _sub_prefix(label: str, option: Any) -> str:
    """The labels' prefix in the sub-space a choice's option opens: ``model.kind=rnn/``."""
    return f"{label}={option_label(option)}/"


def _item_label(label: str, index: int) -> str:
    """The label of one entry of an ``each`` list: ``model.channels[0]``."""
    return f"{label}[{index}]"


def _draws(
    space: dict[str, Distribution], prefix: str, lengths: dict[str, int]
) -> dict[str, tuple[str, Distribution]]:
    """Every label :func:`_space_expression` gives hyperopt, with its key and distribution."""
    found: dict[str, tuple[str, Distribution]] = {}
    for key, distribution in space.items():
        label = prefix + key
        if distribution.each is not None:
            for index in range(lengths[key]):
                found[_item_label(label, index)] = (f"{key}[{index}]", distribution.each)
            continue
        found[label] = (key, distribution)
        for option in distribution.choice or []:
            sub_space = (distribution.when or {}).get(option_label(option), {})
            found |= _draws(sub_space, _sub_prefix(label, option), lengths)
    return found


def _space_expression(
    space: dict[str, Distribution], prefix: str, lengths: dict[str, int]
) -> dict[str, Any]:
    return {
        key: _distribution_expression(key, dist, prefix + key, lengths)
        for key, dist in space.items()
    }


def _distribution_expression(
    key: str, distribution: Distribution, label: str, lengths: dict[str, int]
) -> Any:
    """A choice that opens sub-spaces draws dicts ``{key: option, **sub-space}``, which
    :func:`flatten_sample` merges back into dotted keys."""
    if distribution.each is not None:
        return [_draw(distribution.each, _item_label(label, i)) for i in range(lengths[key])]
    if distribution.when is not None:
        branches = [
            {
                key: option,
                **_space_expression(
                    distribution.when.get(option_label(option), {}),
                    _sub_prefix(label, option),
                    lengths,
                ),
            }
            for option in distribution.choice or []
        ]
        return hp.choice(label, branches)
    return _draw(distribution, label)


def _draw(distribution: Distribution, label: str) -> Any:
    """One hyperopt distribution; log-uniform bounds are given as values, hyperopt wants logs."""
    kind = distribution.kind
    if distribution.choice is not None:
        return hp.choice(label, distribution.choice)
    low, high, *step = getattr(distribution, kind)
    if kind in ("loguniform", "qloguniform"):
        low, high = math.log(low), math.log(high)
    function = {
        "uniform": hp.uniform,
        "quniform": hp.quniform,
        "loguniform": hp.loguniform,
        "qloguniform": hp.qloguniform,
        "randint": hp.randint,
        "normal": hp.normal,
    }[kind]
    return function(label, low, high, *step)


def _base_point(
    space: dict[str, Distribution], prefix: str, reference: dict[str, Any], lengths: dict[str, int]
) -> dict[str, Any]:
    """The base config in hyperopt's terms (choice indices, drawn values), the first trial."""
    point: dict[str, Any] = {}
    for key, distribution in space.items():
        label, value = prefix + key, get_dotted(reference, key)
        if distribution.each is not None:
            for index, item in enumerate(value[: lengths[key]]):
                point.update(
                    _point_of(distribution.each, _item_label(label, index), item, f"{key}[{index}]")
                )
            continue
        point.update(_point_of(distribution, label, value, key))
        if distribution.when is not None:
            sub_space = distribution.when.get(option_label(value), {})
            point.update(_base_point(sub_space, _sub_prefix(label, value), reference, lengths))
    return point


def _point_of(distribution: Distribution, label: str, value: Any, key: str) -> dict[str, Any]:
    """``{label: hyperopt value}`` for a base value, or a ConfigError if the space cannot draw
    it."""
    if distribution.choice is not None:
        for index, option in enumerate(distribution.choice):
            if option == value and isinstance(option, bool) == isinstance(value, bool):
                return {label: index}
        reason = f"is not among the choices {distribution.choice}"
    elif (outside := _outside(distribution, value)) is None:
        return {label: value}
    else:
        reason = outside
    raise ConfigError(
        f"search.space.{key!r}: the base config's value {value!r} {reason}; the base config is "
        f"the first trial, so the space must be able to draw it"
    )


def _outside(distribution: Distribution, value: float) -> str | None:
    """Why a range cannot draw ``value`` (``is outside uniform = [0.1, 0.5]``), or None; a
    normal draws any number. The ends are the candidates (quantised ends as hyperopt rounds
    them), with a relative tolerance for the rounding of a log-uniform's ``exp(log(low))``."""
    kind = distribution.kind
    candidates = _candidates(distribution)
    low, high = candidates[0], candidates[-1]
    slack = RANGE_TOLERANCE * max(abs(low), abs(high))
    if kind == "normal" or low - slack <= value <= high + slack:
        return None
    return f"is outside {kind} = {list(getattr(distribution, kind))}"
