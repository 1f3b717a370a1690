"""The trial lifecycle as every search engine reports it, and as the display, MLflow and
TensorBoard hear it.

A search engine tells its :class:`TrialObserver` three things per trial: it started (with its
config and searched values; the observer answers with the :class:`TrainingObserver` that hears
the trial's epochs), and it ended (ok, failed, or killed by Ctrl-C/SIGTERM), as one
:class:`TrialOutcome`. Nothing here knows the console, MLflow or TensorBoard: they implement
the interface, so a second engine reuses them unchanged.

A pruned trial (``search.pruning``: its training was ended at a rung) is a finished trial: it
counts with its best epoch so far, as a trial that trained in full does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ecgtune.config import Config
from ecgtune.metrics import minimises
from ecgtune.training import ObserverFanOut, TrainingObserver, TrainResult

TrialStatus = Literal["ok", "pruned", "failed", "killed"]
FINISHED_STATUSES: tuple[TrialStatus, ...] = ("ok", "pruned")
"""Statuses of trials that finished with an objective (their best epoch's)."""


@dataclass(frozen=True)
class TrialRow:
    """One finished trial as tables, reports and the saved search show it."""

    number: int
    status: TrialStatus
    values: dict[str, Any]
    objective: float | None
    epochs: int
    seconds: float
    note: str
    """The failure reason, or why training stopped (for a pruned trial: at which epoch and
    rung)."""

    @property
    def ok(self) -> bool:
        """Finished with an objective: trained to its own end, or pruned."""
        return self.status in FINISHED_STATUSES


@dataclass(frozen=True)
class TrialStart:
    """A trial about to train: its number, validated config and searched values."""

    number: int
    config: Config
    values: dict[str, Any]


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended; ``result`` is the training run when it finished (status ok or
    pruned)."""

    row: TrialRow
    result: TrainResult | None = None


class TrialObserver:
    """Hears the trials of a search; every method is a no-op, subclasses override what they
    need."""

    def trial_started(self, trial: TrialStart) -> TrainingObserver:
        """A trial starts; returns the observer of its training run (its epochs)."""
        return TrainingObserver()

    def trial_ended(self, outcome: TrialOutcome) -> None:
        """A trial finished (trained in full or pruned), failed or was killed."""


class TrialObserverFanOut(TrialObserver):
    """Several trial observers heard as one. Ending a trial tells every observer even when one
    fails (a lost tracking server must not leave the others' runs open); the first error is
    raised afterwards."""

    def __init__(self, observers: Sequence[TrialObserver]) -> None:
        self.observers = list(observers)

    def trial_started(self, trial: TrialStart) -> TrainingObserver:
        return ObserverFanOut([observer.trial_started(trial) for observer in self.observers])

    def trial_ended(self, outcome: TrialOutcome) -> None:
        errors: list[Exception] = []
        for observer in self.observers:
            try:
                observer.trial_ended(outcome)
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def short_value(value: Any, separator: str = ",") -> str:
    """A searched value in few characters: numbers in 3 significant figures, a list's entries
    joined by ``separator`` (``8,16,32``: without spaces a terminal's table cell never wraps
    inside one)."""
    if isinstance(value, list):
        return separator.join(short_value(item, separator) for item in value)
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def ranked_rows(rows: Sequence[TrialRow], objective: str) -> list[TrialRow]:
    """The finished trials, best first (ties: the earlier trial first)."""
    sign = 1.0 if minimises(objective) else -1.0
    finished = [row for row in rows if row.ok and row.objective is not None]
    return sorted(finished, key=lambda row: (sign * (row.objective or 0.0), row.number))


def best_row(rows: Sequence[TrialRow], objective: str) -> TrialRow | None:
    """The finished trial with the best objective, or None when none finished."""
    ranked = ranked_rows(rows, objective)
    return ranked[0] if ranked else None
