"""The search space: every distribution kind, per-stage lists, sub-spaces, and the errors that
stop a bad space before the search starts. No training here: samples come from hyperopt."""

from __future__ import annotations

import functools
import re
from typing import Any

import numpy as np
import pytest
from hyperopt import Trials, fmin, space_eval, tpe
from hyperopt.base import Domain
from hyperopt.pyll import stochastic

from ecgtune.config import Config, validate_config
from ecgtune.errors import ConfigError
from ecgtune.search.space import SearchSpace, build_search_space, flatten_sample
from tests.conftest import TINY_CNN

BASE_MODEL = {**TINY_CNN, "fc_sizes": [32, 16]}
"""Two head layers, so an ``each`` over ``model.fc_sizes`` has a list to follow."""


def make_config(space: dict[str, Any], **sections: Any) -> Config:
    raw: dict[str, Any] = {"model": {**BASE_MODEL, **sections.pop("model", {})}}
    raw.update(sections)
    raw["search"] = {"space": space}
    return validate_config(raw)


def samples(space: SearchSpace, n: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    return [stochastic.sample(space.expression, rng=rng) for _ in range(n)]


def test_every_kind_draws_typed_values_inside_its_bounds() -> None:
    config = make_config(
        {
            "training.lr": {"loguniform": [1e-4, 1e-2]},
            "model.dropout": {"uniform": [0.1, 0.5]},
            "training.epochs": {"quniform": [2, 10, 2]},
            "training.batch_size": {"qloguniform": [16, 256, 16]},
            "training.early_stopping_patience": {"randint": [2, 5]},
            "training.weight_decay": {"normal": [1e-3, 1e-5]},
            "training.optimizer": {"choice": ["adam", "adamw", "sgd"]},
        },
        training={"epochs": 4, "early_stopping_patience": 3},
    )
    space = build_search_space(config)
    for sample in samples(space, 40):
        values = space.values_of(space.trial_config(sample))
        assert 1e-4 <= values["training.lr"] <= 1e-2
        assert 0.1 <= values["model.dropout"] <= 0.5
        assert type(values["training.epochs"]) is int and values["training.epochs"] % 2 == 0
        assert type(values["training.batch_size"]) is int and values["training.batch_size"] >= 16
        assert values["training.early_stopping_patience"] in (2, 3, 4)
        assert values["training.optimizer"] in ("adam", "adamw", "sgd")


def test_each_draws_one_entry_per_stage_of_the_deepest_network() -> None:
    config = make_config(
        {
            "model.conv_layers": {"choice": [1, 2, 3, 4]},
            "model.kernel_sizes": {"each": {"choice": [3, 5, 7]}},
            "model.channels": {"each": {"quniform": [8, 32, 8]}},
            "model.dilations": {"each": {"randint": [1, 3]}},
            "model.pooling": {"each": {"choice": ["none", "max"]}},
            "model.residual": {"each": {"choice": [False, True]}},
            "model.fc_sizes": {"each": {"choice": [16, 32, 64]}},
        }
    )
    space = build_search_space(config)
    assert space.list_lengths["model.kernel_sizes"] == 4
    assert space.list_lengths["model.fc_sizes"] == 2
    depths = set()
    for sample in samples(space, 30):
        assert len(flatten_sample(sample)["model.kernel_sizes"]) == 4
        trial = space.trial_config(sample)
        depths.add(trial.model.conv_layers)
        for key in ("channels", "kernel_sizes", "dilations", "pooling", "residual"):
            assert len(getattr(trial.model, key)) == trial.model.conv_layers
        assert all(type(c) is int and c in (8, 16, 24, 32) for c in trial.model.channels)
        assert len(trial.model.fc_sizes) == 2
    assert depths == {1, 2, 3, 4}


def test_a_choice_opens_its_own_keys_only_when_drawn() -> None:
    config = make_config(
        {
            "model.kind": {
                "choice": ["cnn", "rnn"],
                "when": {
                    "rnn": {
                        "model.hidden_size": {"quniform": [16, 64, 16]},
                        "model.rnn_cell": {"choice": ["gru", "lstm"]},
                    },
                    "cnn": {"model.attention": {"choice": [False, True]}},
                },
            }
        },
        model={"channels": [8, 16], "attention_heads": 4},
    )
    space = build_search_space(config)
    kinds = set()
    for sample in samples(space, 30):
        values = space.values_of(space.trial_config(sample))
        kinds.add(values["model.kind"])
        if values["model.kind"] == "rnn":
            assert set(values) == {"model.kind", "model.hidden_size", "model.rnn_cell"}
            assert values["model.hidden_size"] in (16, 32, 48, 64)
        else:
            assert set(values) == {"model.kind", "model.attention"}
    assert kinds == {"cnn", "rnn"}


def test_the_base_point_is_the_base_config() -> None:
    config = make_config(
        {
            "model.conv_layers": {"choice": [1, 2, 3]},
            "model.kernel_sizes": {"each": {"choice": [3, 5, 7]}},
            "model.channels": {"each": {"choice": [8, 16, 32]}},
            "model.dilations": {"each": {"choice": [1, 2]}},
            "model.pooling": {"each": {"choice": ["max", "none"]}},
            "model.residual": {"each": {"choice": [False, True]}},
            "training.lr": {"loguniform": [1e-4, 1e-2]},
            "training.batch_size": {"randint": [32, 129]},
            "model.kind": {
                "choice": ["cnn", "rnn"],
                "when": {"rnn": {"model.hidden_size": {"quniform": [16, 64, 16]}}},
            },
        }
    )
    space = build_search_space(config)
    assert space.base_point["model.conv_layers"] == 1  # the index of 2 in [1, 2, 3]
    sample = space_eval(space.expression, space.base_point)
    assert space.trial_config(sample) == config


def test_every_point_hyperopt_draws_passes_the_saved_search_check() -> None:
    """The labels the space knows are hyperopt's own, and every value TPE draws under them
    (after its random start) is one the check of a saved search accepts: a resumed search is
    never refused for values its own space drew."""
    config = make_config(
        {
            "model.channels": {"each": {"choice": [8, 16, 32]}},
            "training.lr": {"loguniform": [1e-4, 1e-2]},
            "training.weight_decay": {"qloguniform": [1e-5, 1e-2, 1e-5]},
            "training.batch_size": {"randint": [32, 129]},
            "model.dropout": {"uniform": [0.1, 0.5]},
            "training.focal_gamma": {"normal": [2.0, 0.1]},
            "model.kind": {
                "choice": ["cnn", "rnn"],
                "when": {"rnn": {"model.hidden_size": {"quniform": [16, 64, 16]}}},
            },
        }
    )
    space = build_search_space(config)
    assert set(Domain(lambda sample: 0.0, space.expression).params) == set(space.draws)
    trials = Trials()
    fmin(
        lambda sample: float(np.random.default_rng(len(trials)).random()),
        space.expression,
        algo=functools.partial(tpe.suggest, n_startup_jobs=10),
        max_evals=60,
        trials=trials,
        rstate=np.random.default_rng(3),
        show_progressbar=False,
    )
    drawn = [
        (label, value)
        for doc in trials.trials
        for label, values in doc["misc"]["vals"].items()
        for value in values
    ]
    assert {label for label, _ in drawn} == set(space.draws)
    assert [
        (label, value) for label, value in drawn if space.saved_value_problem(label, value)
    ] == []
    assert space.saved_value_problem("model.channels[0]", 3) is not None
    assert space.saved_value_problem("training.lr", 0.02) is not None


@pytest.mark.parametrize(
    ("space", "message"),
    [
        (
            {"training.lrr": {"uniform": [0.1, 0.2]}},
            "'training.lrr': unknown key 'training.lrr' (did you mean",
        ),
        ({"model": {"choice": [1]}}, "'model': 'model' is a section, not a key"),
        ({"training.objective": {"choice": ["loss"]}}, "'training.objective': cannot be searched"),
        (
            {"data.leads": {"choice": [["MLII"]]}},
            "only model.*, training.*, data.resample.* and inference.*",
        ),
        ({"seed": {"choice": [1, 2]}}, "'seed': only model.*"),
        ({"training.lr": {"each": {"choice": [0.1]}}}, "'each' needs a list key"),
        ({"training.epochs": {"uniform": [1, 3]}}, "uniform draws fractions but the key takes"),
        (
            {"training.epochs": {"quniform": [2, 6, 0.5]}},
            "quniform can draw 2.5, which the config rejects: training.epochs = 2.5",
        ),
        (
            {"training.optimizer": {"choice": ["adamw", "rmsprop"]}},
            "can draw 'rmsprop', which the config rejects: training.optimizer = 'rmsprop'",
        ),
        ({"training.lr": {"loguniform": [1e-4, 20]}}, "can draw 20.0, which the config rejects"),
        (
            {"model.kernel_sizes": {"each": {"choice": [0, 7]}}},
            "each choice can draw 0, which the config rejects",
        ),
        (
            {"model.conv_layers": {"choice": [2, 3]}},
            "can draw 3, which the config rejects: model.channels has 2 entries",
        ),
        (
            {"training.lr": {"loguniform": [1e-2, 1e-1]}},
            "the base config's value 0.001 is outside loguniform = [0.01, 0.1]",
        ),
        (
            {"model.kernel_sizes": {"each": {"choice": [3, 5]}}},
            "'model.kernel_sizes[0]': the base config's value 7 is not among the choices",
        ),
        (
            {
                "model.hidden_size": {"choice": [64]},
                "model.kind": {
                    "choice": ["cnn", "rnn"],
                    "when": {"rnn": {"model.hidden_size": {"choice": [64]}}},
                },
            },
            "(when model.kind = rnn): the key is already searched by",
        ),
    ],
)
def test_a_bad_space_is_a_config_error_naming_the_key(space: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_search_space(make_config(space))


@pytest.mark.parametrize(
    ("distribution", "message"),
    [
        ({"uniform": [0.5, 0.1]}, "uniform = [0.5, 0.1]: low must be below high"),
        ({"quniform": [1, 5, 0]}, "the step q must be > 0"),
        ({"loguniform": [0, 1]}, "log-uniform bounds must be > 0"),
        ({"normal": [0, -1]}, "sigma must be > 0"),
        ({"randint": [3, 3]}, "low must be below high"),
        ({"choice": []}, "give at least one option"),
        ({"choice": [{"a": 1}]}, "choice options are values, not tables"),
        ({"choice": ["adam"], "when": {"sgd": {}}}, "'sgd' is not one of the choices"),
        ({"each": {"each": {"choice": [1]}}}, "no 'each' or 'when' inside it"),
        ({"uniform": [0.1, 0.2], "choice": [1]}, "give exactly one of"),
    ],
)
def test_a_malformed_distribution_fails_when_the_config_loads(
    distribution: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config({"search": {"space": {"training.lr": distribution}}})


def candidates_config() -> Config:
    return make_config(
        {
            "training.lr": {"loguniform": [1e-4, 1e-2]},
            "model.dropout": {"uniform": [0.1, 0.5]},
            "training.epochs": {"quniform": [4, 12, 4]},
            "training.batch_size": {"qloguniform": [16, 256, 16]},
            "training.early_stopping_patience": {"randint": [2, 5]},
            "training.weight_decay": {"normal": [1e-3, 1e-5]},
            "training.optimizer": {"choice": ["adam", "adamw", "sgd"]},
            "model.channels": {"each": {"choice": [8, 16]}},
        },
        training={"epochs": 4, "early_stopping_patience": 3},
    )


CANDIDATES: dict[str, list[Any]] = {
    "training.lr": [1e-4, 1e-2],
    "model.dropout": [0.1, 0.5],
    "training.epochs": [4, 8, 12],  # the ends and the step after the low end
    "training.batch_size": [16, 32, 256],
    "training.early_stopping_patience": [2, 4],  # randint's high end is excluded
    "training.weight_decay": [1e-3],  # a normal's mean
    "training.optimizer": ["adam", "adamw", "sgd"],
    "model.channels": [8, 16],
}


def test_the_candidates_are_every_option_and_each_range_end_as_valid_configs() -> None:
    space = build_search_space(candidates_config())
    assert {key: space.candidate_values(key) for key in CANDIDATES} == CANDIDATES
    assert space.candidate_values("model.kind") == []
    built = [
        (key, value, space.values_of(config)) for key, value, config in space.candidate_configs()
    ]
    assert [(key, value) for key, value, _ in built] == [
        (key, value) for key, values in CANDIDATES.items() for value in values
    ]
    for key, value, values in built:
        assert values[key] == ([value] * 2 if key == "model.channels" else value), key


@pytest.mark.parametrize(
    ("label", "value", "problem"),
    [
        ("training.lr", 1e-4, None),
        ("training.lr", 1e-2, None),
        ("training.lr", 1.01e-2, "is outside loguniform = [0.0001, 0.01]"),
        ("training.lr", 0.99e-4, "is outside loguniform = [0.0001, 0.01]"),
        ("model.dropout", 0.5, None),
        ("training.weight_decay", 5.0, None),  # a normal draws any number
        ("training.early_stopping_patience", 4, None),
        ("training.early_stopping_patience", 5, "is outside randint = [2, 5]"),
        ("training.optimizer", 2, None),
        ("training.optimizer", 3, "is not an index of the choices ['adam', 'adamw', 'sgd']"),
        ("training.optimizer", -1, "is not an index of the choices ['adam', 'adamw', 'sgd']"),
        ("training.optimizer", True, "is not an index of the choices ['adam', 'adamw', 'sgd']"),
        ("model.channels[1]", 1, None),
    ],
)
def test_a_saved_value_is_checked_against_its_distribution_to_the_end(
    label: str, value: float, problem: str | None
) -> None:
    space = build_search_space(candidates_config())
    key = label.split("[")[0]
    expected = problem and f"{problem} (search.space {key!r})"
    assert space.saved_value_problem(label, value) == expected
    assert space.saved_value_problem("model.depth", 1) == "is not drawn by any key of search.space"
