"""Ray for the search: started on this machine (sized to it) or joined at
``search.ray_address``, and what can be refused before any trial runs: GPUs asked of a machine
without CUDA, an address where nothing answers, a trial larger than every node."""

from __future__ import annotations

import logging
import os
import socket
import warnings
from typing import Any

import ray
import torch

from ecgtune.config import SearchConfig
from ecgtune.errors import ConfigError

CONNECT_SECONDS = 5.0
"""How long a ``host:port`` ray_address may take to answer before it is refused."""
RAY_ENVIRONMENT = {
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",  # a failed trial's report has no metric
    "TUNE_DISABLE_SIGINT_HANDLER": "1",  # Ctrl-C ends the search as with the local engine
    "RAY_AIR_NEW_OUTPUT": "0",  # Tune's own tables and banners: the display shows the trials
    # Ray warns when a trial's checkpoints force snapshots of its state: wanted here (every
    # best epoch is kept, and a resumed search needs the state)
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}
"""Set on the driver before Ray starts; the user's own settings win."""


def check_local_settings(search: SearchConfig) -> None:
    """What can be refused before Ray starts: GPUs asked of a machine without CUDA (when Ray
    starts here) and a ``host:port`` where nothing answers (Ray would retry for minutes)."""
    if search.gpus_per_trial and not search.ray_address and not torch.cuda.is_available():
        raise ConfigError(
            f"search.gpus_per_trial = {search.gpus_per_trial:g}: this machine has no CUDA GPU; "
            f"use 0 (CPU trials) or join a cluster with GPUs (search.ray_address)"
        )
    if search.ray_address not in ("", "auto"):
        check_reachable(search.ray_address)


def check_reachable(address: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"search.ray_address = {address!r} is not '', 'auto' or host:port (the head's "
            f"address, as `ray start --head` prints it)"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS):
            pass
    except OSError as exc:
        raise ConfigError(
            f"search.ray_address = {address!r}: nothing answers there "
            f"({exc.strerror or type(exc).__name__}); start the head with `ray start --head`, "
            f"or use '' to start Ray on this machine"
        ) from None


def connect(search: SearchConfig) -> None:
    """Start Ray here (sized to the machine) or join the cluster, then check that a trial
    fits on it: a trial no node can hold would wait forever."""
    for name, value in RAY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    address = search.ray_address or "local"
    warnings.filterwarnings("ignore", "Tip: In future versions of Ray", FutureWarning)
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"search.ray_address = {search.ray_address!r}: cannot join the Ray cluster "
            f"({first_line[:200]}); start one with `ray start --head`, or use '' to start Ray "
            f"on this machine"
        ) from None
    try:
        check_cluster_fits(search, [node for node in ray.nodes() if node.get("Alive")])
    except ConfigError:
        ray.shutdown()
        raise


def check_cluster_fits(search: SearchConfig, nodes: list[dict[str, Any]]) -> None:
    """A trial holds its CPUs and GPUs on one node: some node must have them all."""
    for key, asked in (("CPU", search.cpus_per_trial), ("GPU", search.gpus_per_trial)):
        largest = max((node["Resources"].get(key, 0.0) for node in nodes), default=0.0)
        if asked > largest:
            setting = f"search.{key.lower()}s_per_trial"
            hint = "" if key == "CPU" else " (no CUDA GPU where Ray runs?); use 0 for CPU trials"
            raise ConfigError(
                f"{setting} = {asked:g}: no node of the Ray cluster has that many {key}s (the "
                f"largest has {largest:g}), so no trial could start{hint}"
            )
