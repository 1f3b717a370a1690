"""``[search]`` and ``[search.space]``: the hyperopt search, its engines, and the
distributions drawn for config keys."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from ecgtune.config.base import Section, _rule_error, _value_error

THIRTY_DAYS_SECONDS = 30 * 24 * 3600


class Distribution(Section):
    """One hyperopt distribution of ``[search.space]``: exactly one kind is given.

    Bounds are in the value's own terms (``loguniform = [1e-5, 1e-2]``, not their logs);
    ``randint = [low, high]`` draws low .. high - 1 as hyperopt does; ``normal = [mu, sigma]``.
    ``each`` draws every entry of a list independently; ``when`` opens extra keys for some
    options of a ``choice`` (keyed by the option as written in TOML: ``rnn``, ``3``, ``true``).
    """

    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    quniform: tuple[float, float, float] | None = None
    loguniform: tuple[float, float] | None = None
    qloguniform: tuple[float, float, float] | None = None
    randint: tuple[int, int] | None = None
    normal: tuple[float, float] | None = None
    each: Distribution | None = None
    when: dict[str, dict[str, Distribution]] | None = None

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> Self:
        kinds = [k for k in DISTRIBUTION_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise _rule_error(
                f"give exactly one of {', '.join(DISTRIBUTION_KINDS)} (got {kinds or 'none'})"
            )
        if self.when is not None and self.choice is None:
            raise _rule_error("'when' opens sub-spaces of a 'choice' only")
        problem = self._shape_problem()
        if problem:
            raise _rule_error(problem)
        return self

    def _shape_problem(self) -> str | None:
        """What makes this distribution unusable by hyperopt, or None."""
        kind = self.kind
        if self.choice is not None:
            return _choice_problem(self.choice, self.when)
        if self.each is not None:
            if self.each.each is not None or self.each.when is not None:
                return "'each' draws single values: no 'each' or 'when' inside it"
            return None
        if self.normal is not None:
            sigma_ok = self.normal[1] > 0
            return None if sigma_ok else f"normal = {list(self.normal)}: sigma must be > 0"
        low, high, *step = getattr(self, kind)
        written = f"{kind} = {list(getattr(self, kind))}"
        if not low < high:
            return f"{written}: low must be below high"
        if step and step[0] <= 0:
            return f"{written}: the step q must be > 0"
        if kind in ("loguniform", "qloguniform") and low <= 0:
            return f"{written}: log-uniform bounds must be > 0"
        return None

    @property
    def kind(self) -> str:
        return next(k for k in DISTRIBUTION_KINDS if getattr(self, k) is not None)


def option_label(option: Any) -> str:
    """How a ``choice`` option is named as a ``when`` key: as TOML writes it (true, 3, rnn)."""
    if isinstance(option, bool):
        return "true" if option else "false"
    return str(option)


def _choice_problem(
    options: list[Any], when: dict[str, dict[str, Distribution]] | None
) -> str | None:
    if not options:
        return "choice = []: give at least one option"
    if any(isinstance(option, dict) for option in options):
        return "choice options are values, not tables"
    labels = [option_label(option) for option in options]
    unknown = [key for key in when or {} if key not in labels]
    if unknown:
        return f"when = {{ {unknown[0]} = ... }}: {unknown[0]!r} is not one of the choices {labels}"
    return None


DISTRIBUTION_KINDS = (
    "choice",
    "uniform",
    "quniform",
    "loguniform",
    "qloguniform",
    "randint",
    "normal",
    "each",
)


class SearchConfig(Section):
    """The hyperopt search over config keys."""

    algorithm: Literal["tpe", "random", "anneal"] = Field(
        "tpe", description="tpe | random | anneal"
    )
    max_evals: int = Field(
        30, ge=1, le=10_000, description="total trials, the base config included"
    )
    timeout: float | None = Field(
        None,
        gt=0,
        le=THIRTY_DAYS_SECONDS,
        description="stop starting trials after seconds (at most 30 days)",
    )
    no_progress_evals: int = Field(
        10,
        ge=0,
        le=10_000,
        description="stop after this many trials without improvement; 0 = never",
    )
    startup_evals: int = Field(
        10, ge=1, le=10_000, description="tpe: random trials before it models the results"
    )
    folds: int = Field(
        0,
        ge=0,
        le=10,
        description="inter split: score each trial on this many record-grouped folds of the "
        "train and validation records, not on the validation records alone (0), and keep the "
        "ensemble of its fold models; a trial trains (folds - 1) / (1 - data.valid_fraction) "
        "times as many beats",
    )

    fold_seeds: Literal["shared", "distinct"] = Field(
        "shared",
        description="folds: shared (every fold model starts from the run's seed: the same "
        "initial weights) | distinct (each fold model its own seed, drawn from the run's and "
        "the fold's number: different initial weights, shuffles and augmentation, so the "
        "ensemble's members err differently)",
    )

    @field_validator("folds")
    @classmethod
    def _not_one_fold(cls, value: int) -> int:
        if value == 1:
            raise _value_error("one fold validates on nothing: give 0 (no folds) or 2 to 10")
        return value

    pruning: Literal["none", "asha"] = Field(
        "none",
        description="none | asha: asynchronous successive halving ends a trial at a rung "
        "(grace_epochs x reduction_factor^k epochs) unless its validation objective there is "
        "in the top 1/reduction_factor of the trials that reached the rung",
    )
    grace_epochs: int = Field(
        2, ge=1, le=1000, description="asha: epochs every trial trains before it can be ended"
    )
    reduction_factor: int = Field(
        3, ge=2, le=100, description="asha: eta, the rungs' spacing and the share kept (1/eta)"
    )
    engine: Literal["local", "ray"] = Field(
        "local",
        description="local: hyperopt in this process, one trial at a time | ray: Ray Tune "
        "(pip install -e '.[ray]'), several trials at once, on this machine or a cluster",
    )
    max_concurrent: int = Field(1, ge=1, le=1000, description="ray: trials trained at once")
    cpus_per_trial: float = Field(
        1.0, gt=0, le=1024, description="ray: CPUs each trial holds (its torch threads)"
    )
    gpus_per_trial: float = Field(
        0.0, ge=0, le=64, description="ray: GPUs each trial holds; 0.25 packs four on one GPU"
    )
    ray_address: str = Field(
        "",
        description="ray: '' starts Ray on this machine; 'auto' or 'host:port' joins a running "
        "cluster (ray start --head)",
    )
    ray_storage: str = Field(
        "",
        description="ray: where Ray keeps trial checkpoints and its saved search; '' = under "
        "the run directory; on a cluster a path or URI every node can reach",
    )
    space: dict[str, Distribution] = Field(
        default_factory=dict, description="dotted config key -> hyperopt distribution"
    )
