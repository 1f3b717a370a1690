"""What proposes and ends the trials, on the driver: hyperopt through
:class:`SeededHyperOptSearch`, :class:`LiveConcurrencyLimiter` and, with
``search.pruning = "asha"``, Ray's ASHA. Ray pickles the searcher and the limiter with its
experiment: they hold nothing of the driver and read the attached one
(:func:`~ecgtune.search.ray.driver.attached_driver`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.hyperopt import HyperOptSearch

from ecgtune.config import Config
from ecgtune.metrics import minimises
from ecgtune.search.loop import seeded_by_trial, suggest_function
from ecgtune.search.ray.driver import _DRIVER, attached_driver
from ecgtune.search.ray.trial import BEST, EPOCH, FAILURE, NUMBER, OBJECTIVE, SAMPLE
from ecgtune.search.space import SearchSpace


class SeededHyperOptSearch(HyperOptSearch):
    """Ray's ``HyperOptSearch`` proposing what the local engine proposes: the space's own
    hyperopt expression, the base config first (already in hyperopt's terms: choice indices),
    ``search.algorithm`` with ``startup_evals`` random trials, each trial's draw seeded by
    ``seed`` and its number. A trial's config is ``{number, sample}``; a failed trial is
    told to hyperopt as an error, as ``fmin`` records it."""

    def __init__(self, config: Config, space: SearchSpace) -> None:
        objective = config.training.objective
        super().__init__(
            space=space.expression,
            metric=BEST,
            mode="min" if minimises(objective) else "max",
            points_to_evaluate=[space.base_point],
            n_initial_points=config.search.startup_evals,
            random_state_seed=config.seed,
        )
        self.algo: Callable[..., Any] = seeded_by_trial(suggest_function(config), config.seed)
        self.proposed = 0

    def _convert_categories_to_indices(self, config: dict[str, Any]) -> None:
        """The base point holds hyperopt's choice indices already (``space.base_point``)."""

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if not attached_driver().may_propose(self.proposed):
            return Searcher.FINISHED  # type: ignore[return-value]  # Ray's own end signal
        sample = super().suggest(trial_id)
        number, self.proposed = self.proposed, self.proposed + 1
        return {NUMBER: number, SAMPLE: sample}

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        failed = error or result is None or FAILURE in result or BEST not in result
        super().on_trial_complete(trial_id, None if failed else result, error=failed)


class LiveConcurrencyLimiter(ConcurrencyLimiter):
    """Ray's ``ConcurrencyLimiter`` with this run's ``search.max_concurrent``: Ray restores the
    limiter of the search's first run, and a resumed search may change it."""

    @property
    def max_concurrent(self) -> int:
        driver = _DRIVER.get()
        return self.first_max_concurrent if driver is None else driver.config.search.max_concurrent

    @max_concurrent.setter
    def max_concurrent(self, value: int) -> None:
        """Ray sets the first run's value, which holds until a driver is attached."""
        self.first_max_concurrent = value


def asha_scheduler(config: Config) -> ASHAScheduler | None:
    """Ray's ASHA with the rungs of ``search.pruning = "asha"`` (:mod:`ecgtune.search.pruning`
    documents the rule both engines share)."""
    search = config.search
    if search.pruning != "asha":
        return None
    return ASHAScheduler(
        time_attr=EPOCH,
        metric=OBJECTIVE,
        mode="min" if minimises(config.training.objective) else "max",
        max_t=config.training.epochs,
        grace_period=search.grace_epochs,
        reduction_factor=search.reduction_factor,
    )
