"""A table of the model's blocks, their output shapes and parameter counts.

The shapes are measured, not computed: one dummy batch runs through the model with forward
hooks on every block. A block is any module except the plain containers (``nn.Sequential``,
``nn.ModuleList``) that only group blocks, and the model itself; so the table shows conv
stages, attention, pooling and head layers, not every convolution inside them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from rich.table import Table
from torch import Tensor, nn

from ecgtune.config import Config
from ecgtune.data.beats import RR_COLUMNS

CONTAINERS = (nn.Sequential, nn.ModuleList)
ForwardHook = Callable[[nn.Module, Any, Any], None]
DUMMY_BATCH = 2


def model_summary(model: nn.Module, config: Config) -> Table:
    """One row per block (name, type, output shape per beat, parameters) and the total."""
    rows = list(_block_shapes_and_params(model, config))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    table = Table(title=f"{config.model.kind.upper()} model", title_justify="left")
    table.add_column("block")
    table.add_column("type")
    table.add_column("output shape", justify="right")
    table.add_column("parameters", justify="right")
    input_shape = (config.data.input_channels, config.data.beat_length)
    table.add_row("input", "", _format_shape(input_shape), "")
    for name, kind, shape, params in rows:
        table.add_row(name, kind, _format_shape(shape), f"{params:,}")
    table.add_section()
    trainable_note = "" if trainable == total else f" ({trainable:,} trainable)"
    table.add_row("total", "", "", f"{total:,}{trainable_note}", style="bold")
    return table


def summary_blocks(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The model's blocks with their dotted names, in registration (= forward) order; an
    ``Identity`` (the RR features' path under ``rr_head = "concat"``) does nothing and is left
    out."""
    for name, child in model.named_children():
        if isinstance(child, nn.Identity):
            continue
        if type(child) in CONTAINERS:
            yield from ((f"{name}.{inner}", block) for inner, block in summary_blocks(child))
        else:
            yield name, child


def _block_shapes_and_params(
    model: nn.Module, config: Config
) -> Iterator[tuple[str, str, tuple[int, ...], int]]:
    """Run a dummy batch in eval mode (batch norm would refuse statistics of a tiny batch)
    and record each block's output shape, without the batch dimension."""
    blocks = list(summary_blocks(model))
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [block.register_forward_hook(_shape_recorder(name, shapes)) for name, block in blocks]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*_dummy_inputs(model, config))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    for name, block in blocks:
        params = sum(p.numel() for p in block.parameters())
        yield name, type(block).__name__, shapes.get(name, ()), params


def _dummy_inputs(model: nn.Module, config: Config) -> tuple[Tensor, ...]:
    device = next(model.parameters()).device
    shape = (DUMMY_BATCH, config.data.input_channels, config.data.beat_length)
    signals = torch.zeros(shape, device=device)
    if config.model.rr_features == "none":
        return (signals,)
    return signals, torch.zeros(DUMMY_BATCH, len(RR_COLUMNS), device=device)


def _shape_recorder(name: str, shapes: dict[str, tuple[int, ...]]) -> ForwardHook:
    """A forward hook storing the block's output shape (the first output of a tuple)."""

    def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
        tensor = output[0] if isinstance(output, tuple) else output
        shapes[name] = tuple(tensor.shape[1:])

    return record


def _format_shape(shape: tuple[int, ...]) -> str:
    return " x ".join(str(size) for size in shape) if shape else "-"
