"""The command line: ``tune`` (default), ``train``, ``data``, ``evaluate`` and ``predict``.

Each command loads the config (with its ``--set KEY=VALUE`` overrides applied before
validation) and hands over to :mod:`ecgtune.commands`; ``predict`` and ``evaluate --database``
read no config (the model and its beat rules come from the checkpoint). Exit status: 0 done;
2 bad input or surroundings (:class:`~ecgtune.errors.UserError`, a failed write), printed as
one line on stderr; 130 after Ctrl-C and 143 after SIGTERM, once the command has saved what
it finished and closed its runs.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from ecgtune.config import load_config
from ecgtune.errors import Terminated, UserError

EXIT_USER_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 130, 143


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
        command.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, VALUE in TOML syntax (repeatable), e.g. "
            '--set training.epochs=2 --set \'data.records=["100","101"]\'',
        )
        return command

    tune = add_command("tune", "run the hyperparameter search (the default command)")
    tune.add_argument("--max-evals", type=int, help="total trials (same as --set search.max_evals)")
    tune.add_argument("--fresh", action="store_true", help="start over; the old search is kept")
    tune.add_argument("--quiet", action="store_true", help="log lines instead of a live display")
    train = add_command("train", "train the base config once and evaluate it on the test split")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    data = add_command("data", "download, verify and build the dataset; print class counts")
    data.add_argument("--json", action="store_true", help="print the summary as JSON")
    evaluate = add_command(
        "evaluate",
        "re-evaluate a saved model on the test split (paths come from --config, not the model), "
        "or with --database on every annotated beat of a WFDB database (no config is read)",
    )
    evaluate.add_argument("run_dir", type=Path, help="directory holding best_model.pt")
    evaluate.add_argument(
        "--database", type=Path, metavar="DIR", help="a WFDB database folder (RECORDS or .hea)"
    )
    evaluate.add_argument("--records", nargs="+", metavar="R", help="only these records")
    evaluate.add_argument(
        "--annotator", metavar="EXT", help="reference beat annotations (default: atr)"
    )
    add_record_options(evaluate)
    predict = commands.add_parser(
        "predict",
        help="label every beat of WFDB records",
        description="Label every beat of WFDB records with a saved model: writes RECORD.ecgtune "
        "(WFDB annotations) and RECORD.csv (label and class probabilities per beat).",
    )
    predict.add_argument("run_dir", type=Path, help="directory holding best_model.pt")
    predict.add_argument(
        "records", nargs="+", type=Path, metavar="RECORD", help="record path, no extension"
    )
    predict.add_argument(
        "--annotator",
        metavar="EXT",
        help="take beat positions from RECORD.EXT where it exists (default: the XQRS detector)",
    )
    predict.add_argument(
        "--out", type=Path, metavar="DIR", help="output folder (default: beside each record)"
    )
    predict.add_argument(
        "--onnx", type=Path, metavar="FILE", help="run the beats through this exported model"
    )
    add_record_options(predict)
    export = commands.add_parser(
        "export",
        help="write a saved model as ONNX with a JSON sidecar (beat rules, classes)",
        description="Write RUN_DIR/best_model.pt as ONNX (inputs beats and rr, output logits, "
        "dynamic batch) with a JSON sidecar, checked against torch with ONNX Runtime.",
    )
    export.add_argument("run_dir", type=Path, help="directory holding best_model.pt")
    export.add_argument("--format", choices=["onnx"], default="onnx", help="onnx (the default)")
    export.add_argument("--out", type=Path, metavar="FILE", help="default: RUN_DIR/model.onnx")
    return parser


def add_record_options(command: argparse.ArgumentParser) -> None:
    """How ``evaluate --database`` and ``predict`` pick the leads of a record."""
    command.add_argument(
        "--lead",
        dest="leads",
        action="append",
        metavar="NAME",
        help="lead name, once per model input channel, in channel order (--lead MLII --lead "
        "V1; default: the model's data.leads)",
    )
    command.add_argument(
        "--first-channel",
        action="store_true",
        help="a record lacking a lead reads its first channel not taken by another lead in "
        "its place (default: an error)",
    )
    command.add_argument(
        "--strict",
        action="store_true",
        help="refuse a record with beats outside its signal or at its edges, or unknown "
        "annotation symbols (default: they are skipped and counted)",
    )


def parse_command_line(argv: Sequence[str]) -> argparse.Namespace:
    """The arguments of ``hypertune.py``, ``tune`` when no command is named (a bare
    ``python hypertune.py`` or one starting with an option); the README's commands are checked
    with this same function, so they cannot drift from what the program accepts."""
    args_list = list(argv)
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help")):
        args_list.insert(0, "tune")
    return build_parser().parse_args(args_list)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_command_line(sys.argv[1:] if argv is None else argv)
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return run_command(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Terminated:
        print("terminated (SIGTERM): finished work is saved", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("interrupted: finished work is saved", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)


def raise_terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (a scheduler or container stop) ends the command as Ctrl-C does."""
    raise Terminated()


def describe_os_error(exc: OSError) -> str:
    """A failed read or write in one line: the file, then the system's reason."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc} (finished work is saved; free space or fix permissions)"


def run_command(args: argparse.Namespace) -> int:
    """Dispatch to the command (imported late: torch loads slowly)."""
    if args.command == "evaluate":
        check_record_options(args)
    if args.command == "predict":
        from ecgtune.commands.predict import predict_command

        return predict_command(
            args.run_dir,
            args.records,
            args.leads,
            args.annotator,
            args.out,
            args.first_channel,
            args.onnx,
            args.strict,
        )
    if args.command == "export":
        from ecgtune.commands.export import export_command

        return export_command(args.run_dir, args.format, args.out)
    if args.command == "evaluate" and args.database is not None:
        from ecgtune.commands.evaluate import evaluate_database_command

        return evaluate_database_command(
            args.run_dir,
            args.database,
            args.leads,
            args.records,
            args.annotator or "atr",
            args.first_channel,
            args.strict,
        )
    overrides: list[str] = list(args.overrides)
    if getattr(args, "max_evals", None) is not None:
        overrides.append(f"search.max_evals={args.max_evals}")
    config = load_config(args.config, overrides)
    if args.command == "evaluate":
        from ecgtune.commands.evaluate import evaluate_command

        return evaluate_command(args.run_dir, config)
    if args.command == "data":
        from ecgtune.commands.data import data_command

        return data_command(config, as_json=args.json)
    if args.command == "train":
        from ecgtune.commands.train import train_command

        return train_command(config, quiet=args.quiet, overrides=overrides, source=str(args.config))
    from ecgtune.commands.tune import tune_command

    return tune_command(
        config, fresh=args.fresh, quiet=args.quiet, overrides=overrides, source=str(args.config)
    )


def check_record_options(args: argparse.Namespace) -> None:
    """``evaluate``'s record options need ``--database``, which reads no config (``--set``
    would change nothing)."""
    options = {
        "--records": args.records,
        "--annotator": args.annotator,
        "--lead": args.leads,
        "--first-channel": args.first_channel,
        "--strict": args.strict,
    }
    given = [option for option, value in options.items() if value]
    if args.database is None and given:
        raise UserError(f"{given[0]} needs --database DIR (it chooses records of a database)")
    if args.database is not None and args.overrides:
        raise UserError(
            "--set: evaluate --database reads no config (the model and its beat rules come "
            "from RUN_DIR/best_model.pt); leave --set out"
        )
