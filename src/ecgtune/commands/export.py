"""``hypertune.py export RUN_DIR [--format onnx] [--out FILE]``: the saved model as a file
another program runs without ecgtune.

Writes ``RUN_DIR/model.onnx`` (or ``--out``) and its beat spec beside it (same name,
``.json``), then runs the same beats through ONNX Runtime and through torch and refuses a file
that disagrees. The beats are seeded random ones of the model's input shape: export reads no
data; the tests check the agreement on every beat of a real test split.
"""

from __future__ import annotations

from pathlib import Path

from ecgtune.commands.common import check_writable, run_checkpoint
from ecgtune.console import make_console
from ecgtune.errors import UserError
from ecgtune.export import synthetic_inputs
from ecgtune.export.onnx import (
    ONNX_NAME,
    check_parity,
    export_onnx,
    refuse_adaptation,
    sidecar_path,
)
from ecgtune.report import load_checkpoint

FORMATS = ("onnx",)
PARITY_BEATS = 512
"""Beats the export is checked on (one forward pass of each runtime)."""


def export_command(run_dir: Path, fmt: str = "onnx", out: Path | None = None) -> int:
    """Export ``run_dir/best_model.pt`` as ``fmt`` to ``out`` (default ``run_dir/model.onnx``)
    with its sidecar; 0 when done and the export agrees with torch."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: not a format ecgtune exports; use {', '.join(FORMATS)}")
    target = out or run_dir / ONNX_NAME
    if target.suffix != ".onnx":
        raise UserError(
            f"--out {target}: the file name must end in .onnx (the beat spec is written "
            f"beside it, as {target.stem}.json)"
        )
    model, config, class_names = load_checkpoint(run_checkpoint(run_dir))
    refuse_adaptation(config, f"export {run_dir}")
    check_writable({"--out" if out else "RUN_DIR": target.parent})
    spec = export_onnx(model, config, class_names, target)
    parity = check_parity(target, model, synthetic_inputs(spec, PARITY_BEATS))
    if not parity.holds:
        target.unlink()
        sidecar_path(target).unlink()
        raise UserError(
            f"{target}: ONNX Runtime disagrees with torch ({parity.describe()}); the export was "
            f"removed"
        )
    console = make_console()
    console.print(f"Wrote {target} and {sidecar_path(target).name} beside it")
    console.print(
        f"ONNX Runtime and torch on {PARITY_BEATS} seeded random beats: {parity.describe()}"
    )
    return 0
