"""The Ray Tune engine (``search.engine = "ray"``): the local engine's search, from the same
config, with ``search.max_concurrent`` trials at once on this machine or on a Ray cluster.

What runs where:

- The driver (this process) holds the search: hyperopt proposes every trial through
  :class:`SeededHyperOptSearch` (Ray's ``HyperOptSearch`` fed the same expression, the base
  config as the first point, the same algorithm and the same per-trial seeds as the local
  engine, so one trial at a time draws what the local engine draws), a
  :class:`LiveConcurrencyLimiter` keeps ``max_concurrent`` trials running, and with
  ``search.pruning = "asha"`` Ray's ``ASHAScheduler`` ends trials at the rungs that
  :mod:`ecgtune.search.pruning` reproduces for the local engine.
- A worker trains one trial (:func:`run_trial`): the dataset comes once from the object store
  (``tune.with_parameters``), the trial's config is the base config with its sample in place
  and ``training.num_threads`` = its CPUs; it reports every epoch's validation figures and,
  whenever an epoch is its best so far, that epoch's model as a Ray checkpoint, so a trial
  that ASHA ends keeps its best model as a pruned trial of the local engine does. A failure
  of the trial itself (a diverged loss, a network too large) is its result, reported once;
  only a lost worker (a dead process or node) is an error, which Ray retries
  (``MAX_FAILURES``).
- Everything else happens on the driver, in :class:`RayDriver`, which Ray calls through
  :class:`DriverEvents`: it turns Ray's trial events into the :class:`TrialObserver` calls
  of the local engine (the display, one MLflow child run per trial with its epochs,
  TensorBoard), records every finished trial in ``ray_trials.json``, and copies the best
  trial's model where ``evaluate_rows`` finds it. Workers never touch the MLflow store.

Resuming: the same command after a crash, kill -9 or Ctrl-C restores Ray's experiment
(``Tuner.restore``: unfinished trials run again from their start, :class:`TrainsFromItsStart`)
and the driver skips the trials it has already recorded, so no trial gets a second finished
MLflow run. Ray pickles
its callbacks, searcher and limiter with the experiment; they hold nothing of the driver and
read it (and this run's ``max_concurrent``, ``max_evals``, ``no_progress_evals`` and
``timeout``) from :func:`attached_driver`, so a resumed search runs with the settings it was
resumed with.

The modules: :mod:`.cluster` (starting or joining Ray, the checks before any trial),
:mod:`.trial` (the worker's side), :mod:`.searcher` (hyperopt, the limiter, ASHA),
:mod:`.driver` (Ray's events to the trial lifecycle) and :mod:`.engine` (:class:`RaySearch`).
"""

from ecgtune.search.ray.driver import RayDriver
from ecgtune.search.ray.engine import RaySearch
from ecgtune.search.ray.trial import NODE, NUMBER

__all__ = ["NODE", "NUMBER", "RayDriver", "RaySearch"]
