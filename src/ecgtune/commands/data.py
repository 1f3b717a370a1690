"""``hypertune.py data``: build (or load) the dataset and report what is in it."""

from __future__ import annotations

import json
from time import perf_counter

from ecgtune.commands.common import check_writable
from ecgtune.config import Config
from ecgtune.console import make_console
from ecgtune.console.data import data_progress, render_data_summary
from ecgtune.data import load_dataset
from ecgtune.data.summary import dataset_summary


def data_command(config: Config, as_json: bool) -> int:
    """Print beats per class per split as a table, or as JSON on stdout (``as_json``; nothing
    else goes to stdout then). Progress bars go to stderr."""
    check_writable({"data.cache_dir": config.data.cache_dir})
    start = perf_counter()
    dataset = load_dataset(config, data_progress(make_console(stderr=True)))
    summary = dataset_summary(dataset, seconds=perf_counter() - start)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        render_data_summary(summary, make_console())
    return 0
