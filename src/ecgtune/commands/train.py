"""``hypertune.py train``: train the base config once (no search) and evaluate it once on the
test split.

Every training gets its own result folder ``<output_dir>/<experiment>/train-<time>/``, its own
TensorBoard folder of the same name and its own MLflow run (no parent), with the params and
per-epoch metrics a search trial gets, so ``mlflow ui`` shows every training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from importlib.metadata import version

from ecgtune.commands.common import (
    check_model_size,
    check_outputs,
    device_and_threads,
    quiet_library_logs,
    run_lock,
    timestamped_dir,
)
from ecgtune.config import Config, config_toml
from ecgtune.console import make_console
from ecgtune.console.data import data_progress
from ecgtune.console.search import run_header
from ecgtune.console.training import TrainingDisplay, metrics_table
from ecgtune.data import load_dataset
from ecgtune.errors import ConfigError, interruption
from ecgtune.export.card import write_model_card
from ecgtune.report import CHECKPOINT_NAME, save_checkpoint, write_report
from ecgtune.search.folds import fit
from ecgtune.tracking.local_store import artifact_location
from ecgtune.tracking.mlflow_model import log_model
from ecgtune.tracking.mlflow_runs import (
    OVERRIDES_TAG,
    TENSORBOARD_TAG,
    MlflowEpochLogger,
    MlflowTracker,
    result_metrics,
    run_params,
)
from ecgtune.tracking.tensorboard import TensorBoardEpochs
from ecgtune.training import ObserverFanOut, TrainingDiverged, evaluate_test_split

ENGINE = "one training of the base config (no search)"


def train_command(
    config: Config,
    quiet: bool = False,
    overrides: Sequence[str] = (),
    source: str = "config.toml",
) -> int:
    """Train, save the best epoch's model, evaluate it once on the test split; 0 when done."""
    check_model_size(config)
    check_outputs(config)
    quiet_library_logs(config.tracking.verbose)
    console = make_console()
    with run_lock(config.run_dir, "train"):
        tracker = MlflowTracker(
            config.tracking.mlflow_uri, config.tracking.experiment, artifact_location(config)
        )
        dataset = load_dataset(config, data_progress(console))
        console.print(run_header(config, dataset, *device_and_threads(config), ENGINE))
        run_dir = timestamped_dir(config.run_dir, "train")
        tensorboard_dir = config.tracking.tensorboard_dir / config.tracking.experiment
        tensorboard_dir /= run_dir.name
        tensorboard_dir.mkdir(parents=True)
        tensorboard = TensorBoardEpochs(tensorboard_dir)
        tags = {TENSORBOARD_TAG: str(tensorboard_dir.resolve()), OVERRIDES_TAG: " ".join(overrides)}
        run_id = tracker.start_run(run_dir.name, run_params(config), tags)
        tracker.log_text(run_id, config_toml(config), "config.toml")
        display = TrainingDisplay(console, progress=not quiet, summary=True)
        observer = ObserverFanOut([display, tensorboard, MlflowEpochLogger(tracker, run_id)])
        try:
            result = fit(config, dataset, observer)
            save_checkpoint(run_dir / CHECKPOINT_NAME, result.model, config, dataset.class_names)
            metrics = evaluate_test_split(result.model, dataset, config)
            extra = {
                "split": "test",
                "created": datetime.now().isoformat(timespec="seconds"),
                "ecgtune_version": version("ecgtune"),
                "source_config": source,
                "overrides": list(overrides),
                "mlflow": {
                    "tracking_uri": config.tracking.mlflow_uri,
                    "experiment": config.tracking.experiment,
                    "run_id": run_id,
                },
                "tensorboard_dir": str(tensorboard_dir),
                "checkpoint": CHECKPOINT_NAME,
                "best_epoch": result.best_epoch,
                "stop_reason": result.stop_reason,
                "seconds": result.seconds,
                "train_counts": result.train_counts,
                "best_valid": result.best_valid,
                "config": config.model_dump(mode="json"),
                "history": [asdict(record) for record in result.history],
            }
            title = f"test split, {run_dir.name} (best epoch {result.best_epoch})"
            write_report(run_dir, metrics, dataset.class_names, extra, title=title)
            write_model_card(run_dir, dataset)
        except KeyboardInterrupt as exc:
            tracker.end_early(run_id, interruption(exc), "KILLED")
            raise
        except TrainingDiverged as exc:
            tracker.end_early(run_id, f"diverged: {exc}", "FAILED")
            raise ConfigError(f"training diverged: {exc}") from None
        except Exception as exc:
            tracker.end_early(run_id, f"{type(exc).__name__}: {exc}", "FAILED")
            raise
        finally:
            tensorboard.close()
        test = {f"test/{name}": value for name, value in metrics.as_flat_dict().items()}
        tracker.finish(run_id, {**result_metrics(result), **test})
        tracker.log_artifacts(run_id, sorted(run_dir.iterdir()))
        log_model(
            tracker,
            run_id,
            run_dir,
            dataset.valid,
            config.tracking.register_model,
            metrics.as_flat_dict(),
        )
    console.print(metrics_table(metrics, title=f"Test split ({metrics.n_beats:,} beats)"))
    console.print(f"Wrote {CHECKPOINT_NAME}, report.json and confusion_matrix.png to {run_dir}")
    return 0
