"""Screenshots of what a user sees after a search: ``mlflow ui`` and TensorBoard in a real
(headless) browser, for the README and docs/search.md.

Runs a tiny search (3 trials, 2 records, a small CNN) in a temporary folder, starts
``mlflow ui`` and ``tensorboard`` on 127.0.0.1 (free ports, each in its own process group),
takes screenshots with Chromium's headless shell (Debian: ``apt-get install
chromium-headless-shell``), and stops both servers whatever happens.

    python tools/screenshots.py --raw-dir ../shared/data/mitdb --out docs/screenshots
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from mlflow import MlflowClient

REPO_ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium-headless-shell", "chromium", "google-chrome")
START_SECONDS = 120


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw-dir", type=Path, required=True, help="MIT-BIH records")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "screenshots")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    browser = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    if browser is None:
        print("no headless Chromium: apt-get install chromium-headless-shell", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        run_tiny_search(work, args.raw_dir.resolve())
        uri = f"sqlite:///{work / 'mlflow.db'}"
        experiment = MlflowClient(uri).get_experiment_by_name("screenshots")
        assert experiment is not None
        with serve(
            [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri], work
        ) as mlflow_url:
            page = f"#/experiments/{experiment.experiment_id}/runs"
            runs = f"{mlflow_url}/{page}?workflowType=machine_learning"
            shoot(browser, runs, args.out / "mlflow-runs.png")
        with serve(
            [sys.executable, "-m", "tensorboard.main", "--logdir", "logs"], work
        ) as tensorboard_url:
            shoot(browser, f"{tensorboard_url}/#hparams", args.out / "tensorboard-hparams.png")
            shoot(browser, f"{tensorboard_url}/#timeseries", args.out / "tensorboard-scalars.png")
    print(f"wrote 3 screenshots to {args.out}")
    return 0


def run_tiny_search(work: Path, raw_dir: Path) -> None:
    """``hypertune.py tune`` on 2 records, 3 trials of a small CNN, outputs in ``work``."""
    overrides = {
        "data.raw_dir": f'"{raw_dir}"',
        "data.records": '["100", "208"]',
        "data.max_beats_per_record": "600",
        "data.cache_dir": '"cache"',
        "training.epochs": "3",
        "search.max_evals": "3",
        "search.timeout": "600",
        "tracking.experiment": '"screenshots"',
    }
    command = [sys.executable, str(REPO_ROOT / "hypertune.py"), "tune", "--quiet"]
    command += ["--config", str(REPO_ROOT / "config.toml")]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    subprocess.run(command, cwd=work, check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serve(command: list[str], work: Path) -> Iterator[str]:
    """Start a web UI on a free port of 127.0.0.1 in its own process group; kill the group
    when the block ends."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "NO_PROXY": "127.0.0.1,localhost"},
    )
    try:
        wait_until_up(url, server)
        yield url
    finally:
        with suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


def wait_until_up(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer in {START_SECONDS} s")


def shoot(browser: str, url: str, target: Path) -> None:
    """A 1600x1000 screenshot after the page's scripts have had 20 s of virtual time."""
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    command += ["--window-size=1600,1000", "--virtual-time-budget=20000"]
    command += [f"--screenshot={target}", url]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


if __name__ == "__main__":
    sys.exit(main())
