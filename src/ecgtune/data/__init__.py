"""The heartbeat data layer: MIT-BIH records (downloaded and verified) or Kaggle beat files ->
187-sample beats -> three disjoint splits, cached on disk.

``load_dataset(config, progress)`` is the one entry point. The rules (lead, windows, beats,
AAMI labels, RR, splits) are stated in the docstrings of :mod:`~ecgtune.data.records`,
:mod:`~ecgtune.data.beats` and :mod:`~ecgtune.data.splits`.
"""

from ecgtune.data.build import load_dataset
from ecgtune.data.dataset import BeatSet, Dataset
from ecgtune.data.progress import DataProgress

__all__ = ["BeatSet", "DataProgress", "Dataset", "load_dataset"]
