"""Train a tiny CNN with the code of f65a9ef and save it with its probabilities on the first
400 beats of record 100 (README.md beside this file says how it was run)."""

import sys
from pathlib import Path

import numpy as np

from ecgtune.config import validate_config
from ecgtune.data import load_dataset
from ecgtune.data.beats import segment_record
from ecgtune.data.build import pool_record_beats
from ecgtune.data.records import read_annotations, read_named_leads
from ecgtune.report import save_checkpoint
from ecgtune.training import predict_proba, train_model

MITDB = Path("/work/shared/data/mitdb")
TINY_CNN_WITH_RR = {
    "conv_layers": 2,
    "channels": [8, 16],
    "kernel_sizes": [7, 5],
    "dilations": [1, 1],
    "pooling": ["max", "max"],
    "se_blocks": True,
    "residual": [False, True],
    "fc_sizes": [32],
    "rr_features": "all",
}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    records = ["100", "106", "119", "208", "209", "232"]
    data = {"raw_dir": str(MITDB), "records": records, "max_beats_per_record": 400}
    training = {"epochs": 2, "batch_size": 64, "num_threads": 1, "device": "cpu"}
    config = validate_config(
        {"seed": 7, "data": {**data, "cache_dir": "/tmp/old-cache"}, "model": TINY_CNN_WITH_RR,
         "training": training}
    )  # fmt: skip
    dataset = load_dataset(config)
    model = train_model(config, dataset).model
    save_checkpoint(out / "best_model.pt", model, config, dataset.class_names)
    leads = read_named_leads(MITDB / "100", ["MLII"], first_channel=True)
    cut = segment_record("100", leads, read_annotations(MITDB, "100"), config.data)
    np.save(out / "record_100_probabilities.npy", predict_proba(model, pool_record_beats([cut])))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
