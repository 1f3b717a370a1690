"""Per-record adaptation without labels: batch-norm statistics re-estimated on each record's
own beats (AdaBN, Li, Wang, Shi, Liu and Hou 2016).

A network's batch-norm layers normalise with the mean and variance of the *training* patients'
features. A new patient's beats (another gain, electrode position, QRS shape) shift those
statistics, and everything after the layer sees the shift. Re-estimating them on the record
being classified, from its unlabelled beats, normalises each patient by their own statistics:
a per-record gain, for instance, is then removed exactly by the first batch-norm layer after
a convolution. No label is read, so a test record may adapt the model (the inter-patient
protocol forbids its labels, not its signal).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def batch_norms(model: nn.Module) -> list[_BatchNorm]:
    """Every batch-norm layer of the model (of each member, for an ensemble)."""
    return [module for module in model.modules() if isinstance(module, _BatchNorm)]


@contextmanager
def record_statistics(
    model: nn.Module, signals: Tensor, rr: Tensor, batch_size: int
) -> Iterator[nn.Module]:
    """The model, in eval mode, with its batch-norm statistics those of ``signals`` (one
    record's beats), for the ``with`` block; the training statistics are put back afterwards,
    whatever happens in it."""
    norms = batch_norms(model)
    saved = [
        (norm.momentum, {k: v.clone() for k, v in norm.state_dict().items()}) for norm in norms
    ]
    try:
        estimate_statistics(model, norms, signals, rr, batch_size)
        yield model
    finally:
        for norm, (momentum, state) in zip(norms, saved, strict=True):
            norm.load_state_dict(state)
            norm.momentum = momentum


def estimate_statistics(
    model: nn.Module, norms: list[_BatchNorm], signals: Tensor, rr: Tensor, batch_size: int
) -> None:
    """Replace the ``norms``' statistics by those of ``signals``, in chunks of ``batch_size``
    to bound memory, each weighted by its beats (the means are exact, the variances the
    chunks' own, averaged); the model is left in eval mode."""
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.train()
    with torch.no_grad():
        for start in range(0, len(signals), batch_size):
            chunk = slice(start, start + batch_size)
            for norm in norms:  # the running mean of every beat so far
                norm.momentum = len(signals[chunk]) / min(len(signals), chunk.stop)
            model(signals[chunk], rr[chunk])
    model.eval()
