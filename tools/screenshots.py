"""Screenshots of what a user sees after a search: ``mlflow ui`` and TensorBoard in a real
(headless) browser, for the README and docs/search.md.

Runs the search of ``configs/quick.toml`` in a work folder (its records from ``--raw-dir``),
starts ``mlflow ui`` and ``tensorboard`` on 127.0.0.1 (free ports, each in its own process
group), drives Debian's Chromium (``apt-get install chromium``) with Playwright (``pip install
playwright``; no browser download: it launches ``--browser``) and stops both servers whatever
happens. Pictures: the runs table with the search expanded and its columns, the search's
description (its table of trials), every trial's per-epoch curves and the HParams parallel
view.

    python tools/screenshots.py --raw-dir ../shared/data/mitdb --out docs/screenshots

``--work DIR`` keeps the search in DIR, and a second run with the same DIR photographs that
search again without running it.
"""

from __future__ import annotations

import argparse
import json
import os
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
from typing import Any

from mlflow import MlflowClient
from PIL import Image
from playwright.sync_api import Page, sync_playwright

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "quick"
START_SECONDS = 120
VIEWPORT = {"width": 1500, "height": 900}
WIDE_VIEWPORT = {"width": 2000, "height": 1400}
"""The run page puts the description in its left half: wide enough for the trials table."""
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""Chromium without a GPU, a sandbox, or any call home."""
PICTURES = (
    "mlflow-runs.png",
    "mlflow-description.png",
    "tensorboard-curves.png",
    "tensorboard-hparams.png",
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw-dir", type=Path, required=True, help="MIT-BIH records")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "screenshots")
    parser.add_argument("--work", type=Path, help="keep (or reuse) the search in this folder")
    parser.add_argument("--browser", default="/usr/bin/chromium", help="Chromium's executable")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override for the search, e.g. training.num_threads=1 on a shared machine",
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if not Path(args.browser).is_file():
        print(f"no Chromium at {args.browser}: apt-get install chromium", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        work = (args.work or Path(folder)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        if not (work / "runs" / EXPERIMENT / "report.json").is_file():
            run_quick_search(work, args.raw_dir.resolve(), args.set)
        with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=args.browser, args=CHROMIUM_FLAGS, viewport=VIEWPORT
            )
            try:
                page = context.new_page()
                shoot_mlflow(page, work, args.out)
                shoot_tensorboard(page, work, args.out)
            finally:
                context.close()
    for picture in PICTURES:
        shrink(args.out / picture)
    print(f"wrote {', '.join(PICTURES)} to {args.out}")
    return 0


def run_quick_search(work: Path, raw_dir: Path, overrides: list[str]) -> None:
    """``hypertune.py tune --config configs/quick.toml``, its outputs in ``work``."""
    command = [sys.executable, str(REPO_ROOT / "hypertune.py"), "tune", "--quiet"]
    command += ["--config", str(REPO_ROOT / "configs" / "quick.toml")]
    for item in [f"data.raw_dir={json.dumps(str(raw_dir))}", *overrides]:
        command += ["--set", item]
    subprocess.run(command, cwd=work, check=True)


def shoot_mlflow(page: Page, work: Path, out: Path) -> None:
    """The runs table (the search expanded) and the search's description."""
    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    report = json.loads((work / "runs" / EXPERIMENT / "report.json").read_text())
    parent = report["mlflow"]["parent_run_id"]
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    with serve(command, work) as url:
        page.goto(runs_table_url(url, experiment.experiment_id))
        page.get_by_text("search-", exact=False).first.wait_for(timeout=60_000)
        close_panels(page)
        page.locator(".ag-row").first.locator("button").first.click()  # expand the search
        page.get_by_text("trial-000").first.wait_for(timeout=30_000)
        page.wait_for_timeout(2_000)
        page.screenshot(path=out / "mlflow-runs.png")
        run_page = f"#/experiments/{experiment.experiment_id}/runs/{parent}"
        page.set_viewport_size(WIDE_VIEWPORT)
        page.goto(f"{url}/{run_page}?workflowType=machine_learning")
        page.get_by_text("Show more").first.click(timeout=60_000)
        close_panels(page)
        page.wait_for_timeout(1_500)
        description = page.locator("div", has=page.get_by_text("Trials (")).filter(
            has=page.get_by_text("Test split (")
        )
        description.last.screenshot(path=out / "mlflow-description.png")
        page.set_viewport_size(VIEWPORT)


def runs_table_url(address: str, experiment_id: str) -> str:
    """The address ecgtune prints for the runs table, on this server."""
    query = "workflowType=machine_learning&viewStateShareKey=ecgtune-search"
    return f"{address}/#/experiments/{experiment_id}/runs?{query}"


def close_panels(page: Page) -> None:
    """Close MLflow's assistant panel and the shared-view banner, which cover the page."""
    for label in ("Close", "Hide banner"):
        button = page.get_by_role("button", name=label, exact=True)
        if button.count():
            button.first.click()


def shoot_tensorboard(page: Page, work: Path, out: Path) -> None:
    """Every trial's validation curve, and the HParams parallel coordinates view."""
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", "logs"]
    with serve(command, work) as url:
        page.goto(f"{url}/?tagFilter=valid%2Fmacro_f1#timeseries")
        page.get_by_text("valid/macro_f1").first.wait_for(timeout=60_000)
        unsmoothed_full_width(page)
        page.wait_for_timeout(3_000)
        page.screenshot(path=out / "tensorboard-curves.png")
        page.goto(f"{url}/#hparams")
        page.get_by_text("PARALLEL COORDINATES VIEW").click(timeout=60_000)
        page.wait_for_timeout(5_000)
        page.screenshot(path=out / "tensorboard-hparams.png")


def unsmoothed_full_width(page: Page) -> None:
    """TensorBoard's curves as logged (no smoothing, every point in the chart's range), the
    card full width, the settings panel closed."""
    smoothing = page.locator("input.slider-input[type=number]").first
    smoothing.fill("0")
    smoothing.dispatch_event("change")
    smoothing.press("Tab")
    page.get_by_text("Ignore outliers in chart scaling").click()
    page.get_by_role("button", name="Close side pane").click()
    page.get_by_role("button", name="Toggle full size mode").first.click()


def shrink(path: Path) -> None:
    """A screenshot in 256 colours: a UI's few flat colours survive, the file is a third."""
    with Image.open(path) as picture:
        small = picture.convert("RGB").quantize(colors=256)
    small.save(path, optimize=True)


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


def wait_until_up(url: str, server: subprocess.Popen[Any]) -> None:
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


if __name__ == "__main__":
    sys.exit(main())
