"""The command line: ``tune`` (default), ``train``, ``data`` and ``evaluate``.

Each command loads the config and hands over to the module that does the job. Bad input
(:class:`~ecgtune.errors.UserError`) is printed as one line on stderr with exit status 2;
Ctrl-C exits with 130 after the command has saved what it finished.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from ecgtune.config import describe_error, load_config
from ecgtune.errors import ConfigError, UserError

EXIT_USER_ERROR, EXIT_INTERRUPTED = 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hypertune.py",
        description="Train and tune ECG heartbeat classifiers from a TOML config.",
    )
    commands = parser.add_subparsers(dest="command")

    def add_command(name: str, help_text: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument(
            "--config", type=Path, default=Path("config.toml"), help="experiment config (TOML)"
        )
        return command

    tune = add_command("tune", "run the hyperparameter search (the default command)")
    tune.add_argument("--max-evals", type=int, help="total trials (overrides search.max_evals)")
    tune.add_argument("--fresh", action="store_true", help="start over; the old search is kept")
    tune.add_argument("--quiet", action="store_true", help="log lines instead of a live display")
    train = add_command("train", "train the base config once and evaluate it on the test split")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    data = add_command("data", "download, verify and build the dataset; print class counts")
    data.add_argument("--json", action="store_true", help="print the summary as JSON")
    evaluate = add_command("evaluate", "re-evaluate a saved model on the test split")
    evaluate.add_argument("run_dir", type=Path, help="directory holding best_model.pt")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help")):
        args_list.insert(0, "tune")
    args = build_parser().parse_args(args_list)
    try:
        return run_command(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted: finished work is saved", file=sys.stderr)
        return EXIT_INTERRUPTED


def run_command(args: argparse.Namespace) -> int:
    """Dispatch to the module that owns the command (imported late: torch loads slowly)."""
    if args.command == "evaluate":
        from ecgtune.training import evaluate_command

        return evaluate_command(args.run_dir)
    config = load_config(args.config)
    if args.command == "data":
        from ecgtune.data import data_command

        return data_command(config, as_json=args.json)
    if args.command == "train":
        from ecgtune.training import train_command

        return train_command(config, quiet=args.quiet)
    from ecgtune.search import tune_command

    if args.max_evals is not None:
        try:
            config.search.max_evals = args.max_evals
        except ValidationError as exc:
            raise ConfigError(f"--max-evals: {describe_error(exc)}") from None
    return tune_command(config, fresh=args.fresh, quiet=args.quiet)
