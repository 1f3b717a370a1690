"""Asynchronous successive halving (ASHA, Li et al., https://arxiv.org/abs/1810.05934):
``search.pruning = "asha"`` ends a trial early when it falls behind the trials before it.

The rungs are at ``grace_epochs x reduction_factor^k`` epochs (eta = ``reduction_factor``). A
trial that finishes an epoch that is a rung goes on only if its validation objective at that
epoch is in the top 1/eta of the values recorded there; otherwise its training stops after that
epoch (:class:`~ecgtune.training.StopTraining`) and the trial counts with its best epoch so far.

The rule is Ray Tune's ``ASHAScheduler`` (``ray/tune/schedulers/async_hyperband.py``,
``_Bracket.on_result``) with one bracket, one report per epoch (``training_iteration``),
``max_t = training.epochs`` and ``stop_last_trials = True``, so that a Ray engine given the
same grace period and reduction factor prunes the same trials. Its details, matched here:

- the cutoff is ``numpy.nanpercentile`` (linear interpolation) at ``(1 - 1/eta) x 100`` of the
  recorded values, with Ray's sign (``metric_op``): a minimised objective is negated, so higher
  is better throughout;
- the recorded values are those of the earlier trials at that rung: Ray records a trial's value
  after deciding on it, so a trial is not part of its own cutoff;
- ties go on: a trial stops only when it is strictly worse than the cutoff;
- the first trial at a rung has nothing to compare with and goes on; with fewer than eta
  recorded values the same interpolated percentile applies (one value: a trial goes on only if
  at least as good; two values a < b, eta 3: only if at least a + 2/3 (b - a));
- a rung's value is the objective of that epoch, not the best so far;
- every trial that reached a rung recorded its value there: the pruned ones (Ray records the
  value of a trial it stops) and the failed ones (at the rungs they passed) too;
- no decision at a trial's last epoch (its ``training.epochs``): Ray stops a trial at ``max_t``
  before asking its bracket, so such a trial ends as trained in full, not pruned.

Ray keeps the recorded values in memory; here they are the per-epoch curves saved with every
finished trial (``"curve"`` in its result document), so a resumed search prunes alike. The
trials run one after another, so "earlier" means finished; their order does not change a
percentile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from ecgtune.config import Config
from ecgtune.errors import ConfigError
from ecgtune.metrics import minimises
from ecgtune.search.space import SearchSpace
from ecgtune.training import EpochRecord, StopTraining, TrainingObserver


@dataclass(frozen=True)
class Asha:
    """The rule: rungs at ``grace x eta^k`` epochs, the top 1/eta of a rung go on."""

    grace: int
    eta: int
    objective: str

    def rung(self, epoch: int) -> int | None:
        """The rung's number (1 at ``grace`` epochs, 2 at ``grace x eta``, ...) when
        ``epoch`` is one, else None."""
        milestone, number = self.grace, 1
        while milestone < epoch:
            milestone, number = milestone * self.eta, number + 1
        return number if milestone == epoch else None

    def signed(self, value: float) -> float:
        """Ray's sign: higher is better (its own inverse)."""
        return -value if minimises(self.objective) else value

    def cutoff(self, recorded: Sequence[float]) -> float | None:
        """The worst value that goes on at a rung where ``recorded`` are the earlier trials'
        values (in the objective's terms); None when there are none."""
        if not recorded:
            return None
        signed = [self.signed(value) for value in recorded]
        return self.signed(float(np.nanpercentile(signed, (1 - 1 / self.eta) * 100)))

    def stop_reason(
        self, epoch: int, value: float, earlier: Sequence[Sequence[float]]
    ) -> str | None:
        """Why a trial whose objective after ``epoch`` is ``value`` stops there, given the
        ``earlier`` trials' curves (objective per epoch, from epoch 1); None when it goes on."""
        rung = self.rung(epoch)
        if rung is None:
            return None
        recorded = [curve[epoch - 1] for curve in earlier if len(curve) >= epoch]
        cutoff = self.cutoff(recorded)
        if cutoff is None or self.signed(value) >= self.signed(cutoff):
            return None
        return (
            f"pruned at epoch {epoch} (ASHA rung {rung}): validation {self.objective} "
            f"{value:.4f} is worse than {cutoff:.4f}, the cutoff for the top 1/{self.eta} of "
            f"the {len(recorded)} earlier trials there"
        )


def asha_rule(config: Config) -> Asha | None:
    """The search's pruning rule, or None when ``search.pruning = "none"``."""
    search = config.search
    if search.pruning != "asha":
        return None
    return Asha(search.grace_epochs, search.reduction_factor, config.training.objective)


def expected_epochs(rule: Asha | None, epochs: int, done: int, earlier: Sequence[int]) -> float:
    """The epochs a trial of ``training.epochs = epochs`` is expected to train in all, once it
    has trained ``done`` (still running), given the epochs the ``earlier`` trials trained.

    Epoch ``e`` is trained only if the trial went on at every rung before it that is still
    undecided (a rung at ``done`` or later; none at the last epoch, which Ray never decides).
    At a rung that an earlier trial reached, the top 1/eta go on: taking a trial's rank among
    the rung's values as uniform (nothing known of its score yet), it goes on with chance
    1/eta; at a rung no earlier trial reached it always goes on. So the first trial counts all
    its epochs, and a later one ``grace + (grace x eta - grace) / eta + ...``: 8.7 of 30 with a
    grace of 4 and eta 3. Early stopping, which can only shorten a trial, is not counted."""
    if rule is None:
        return float(max(epochs, done))
    total, chance = float(done), 1.0
    for epoch in range(done + 1, epochs + 1):
        rung = epoch - 1
        undecided = rung >= max(done, 1) and rule.rung(rung) is not None
        if undecided and any(trained >= rung for trained in earlier):
            chance /= rule.eta
        total += chance
    return total


class TrialPruner(TrainingObserver):
    """One trial's side of the search's pruning: keeps the trial's validation objective of
    every epoch (its ``curve``, saved with the trial for the trials after it) and, with
    ``search.pruning = "asha"``, ends its training at a rung where it falls behind the
    ``earlier`` trials' curves."""

    def __init__(self, config: Config, earlier: Sequence[Sequence[float]]) -> None:
        """``config`` is the search's base config: its objective and ``search`` keys."""
        self.objective = config.training.objective
        self.rule = asha_rule(config)
        self.earlier = earlier
        self.last_epoch = config.training.epochs
        self.curve: list[float] = []

    def on_train_start(self, config: Config, model: nn.Module, n_train: int) -> None:
        self.last_epoch = config.training.epochs  # the trial's own, which may be searched

    def on_epoch_end(self, record: EpochRecord) -> None:
        value = record.valid_metrics[self.objective]
        self.curve.append(value)
        if self.rule is None or record.epoch >= self.last_epoch:
            return
        reason = self.rule.stop_reason(record.epoch, value, self.earlier)
        if reason is not None:
            raise StopTraining(reason)


def check_pruning(space: SearchSpace) -> None:
    """The search's pruning against its trials, before any work. Checked for a search only:
    ``train`` trains one config to its end and never prunes, so its ``search`` keys may be
    anything the schema allows (``train --set training.epochs=2`` on a pruned default)."""
    search = space.base.search
    if search.pruning == "none":
        return
    if search.folds:
        raise ConfigError(
            f"search.pruning = {search.pruning!r} with search.folds = {search.folds}: a "
            f"trial's folds are separate trainings with no one curve to prune; use one"
        )
    drawn = space.candidate_values("training.epochs")
    epochs = min([space.base.training.epochs, *drawn])
    if search.grace_epochs >= epochs:
        which = "the fewest training.epochs the space draws" if drawn else "training.epochs"
        fixes = grace_fixes(search.grace_epochs, epochs, bool(drawn))
        raise ConfigError(
            f"search.grace_epochs = {search.grace_epochs} must be below {which} = {epochs} "
            f"when search.pruning = {search.pruning!r}: a trial ends at training.epochs "
            f"anyway, so none could be pruned; {fixes}"
        )


def grace_fixes(grace: int, epochs: int, drawn: bool) -> str:
    """The settings that would pass :func:`check_pruning`'s grace rule, in words."""
    more = f"training.epochs to {grace + 1} or more" + (" (in search.space)" if drawn else "")
    fixes = [more, "search.pruning = 'none'"]
    if epochs > 1:  # grace_epochs is at least 1
        fixes.insert(0, f"search.grace_epochs to {epochs - 1} or less")
    return "set " + ", or ".join(fixes)
