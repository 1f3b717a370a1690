"""Record files: SHA-256 verification and download from a local HTTP server (PhysioNet stand-in)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.progress import Progress

from ecgtune.config import Config
from ecgtune.data import load_dataset
from ecgtune.data.physionet import ensure_records, record_file_names, sha256_of, verify_file
from ecgtune.errors import DataError
from ecgtune.mitdb import mitdb_record_names, published_digests


def flip_byte(path: Path, offset: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def copy_records(source: Path, target: Path, records: list[str]) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in (n for record in records for n in record_file_names(record)):
        shutil.copyfile(source / name, target / name)
    return target


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """No request log on stderr."""


TRICKLE_BYTES = 50
"""10 s at a byte per 0.2 s, five times the tests' deadline: without one, the download ends
with a digest mismatch and the test fails instead of hanging."""


class TrickleHandler(http.server.BaseHTTPRequestHandler):
    """Announces :data:`TRICKLE_BYTES`, then sends one byte per ``interval`` seconds until they
    are sent, the client leaves or ``stop`` is set: the server a deadline must cut short."""

    def __init__(self, *args: Any, interval: float, stop: threading.Event, **kwargs: Any) -> None:
        self.interval, self.stop = interval, stop
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(TRICKLE_BYTES))
        self.end_headers()
        with contextlib.suppress(ConnectionError):
            for _ in range(TRICKLE_BYTES):
                if self.stop.wait(self.interval):
                    return
                self.wfile.write(b"\0")

    def log_message(self, format: str, *args: object) -> None:
        """No request log on stderr."""


class JoiningServer(http.server.ThreadingHTTPServer):
    """``server_close`` waits for the request threads, so none outlives its test."""

    daemon_threads = False


@contextlib.contextmanager
def running_server(handler: Callable[..., socketserver.BaseRequestHandler]) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 (a free port, a thread) until the block ends; its base URL."""
    server = JoiningServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def serve() -> Iterator[Callable[[Path], str]]:
    """Serve a folder over HTTP; returns its base URL. Stopped when the test ends."""
    with contextlib.ExitStack() as servers:
        yield lambda folder: servers.enter_context(
            running_server(functools.partial(QuietHandler, directory=str(folder)))
        )


@pytest.fixture
def trickle() -> Iterator[Callable[[float], str]]:
    """Start a :class:`TrickleHandler` server sending a byte per ``interval`` s; its base URL.
    When the test ends its handlers are told to stop, then the server is shut down."""
    stop = threading.Event()
    with contextlib.ExitStack() as servers:
        try:
            yield lambda interval: servers.enter_context(
                running_server(functools.partial(TrickleHandler, interval=interval, stop=stop))
            )
        finally:
            stop.set()


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_digest_list_covers_every_record_file() -> None:
    names = mitdb_record_names()
    assert len(names) == 48 and names[0] == "100" and names[-1] == "234"
    assert len(published_digests()) == 48 * 3 + 1  # + RECORDS


def test_the_shared_records_verify(mitdb_dir: Path, tmp_path: Path) -> None:
    unreachable = "http://127.0.0.1:9/"  # nothing may be downloaded: every file is there
    records = list(mitdb_record_names())
    digests = ensure_records(mitdb_dir, unreachable, records, Progress(disable=True))
    names = [name for record in records for name in record_file_names(record)]
    assert digests == {name: published_digests()[name] for name in names}
    # The same check refuses a copy with one byte changed: the digests above were computed.
    raw = copy_records(mitdb_dir, tmp_path / "raw", ["100"])
    flip_byte(raw / "100.dat")
    with pytest.raises(DataError, match=r"100\.dat: corrupt file"):
        verify_file(raw / "100.dat")


def test_a_flipped_byte_is_named_with_both_digests_and_the_fix(
    mitdb_dir: Path, tmp_path: Path
) -> None:
    raw = copy_records(mitdb_dir, tmp_path / "raw", ["100"])
    flip_byte(raw / "100.dat")
    with pytest.raises(DataError) as caught:
        ensure_records(raw, "http://127.0.0.1:9/", ["100"], Progress(disable=True))
    message = str(caught.value)
    assert str(raw / "100.dat") in message
    assert published_digests()["100.dat"] in message
    assert sha256_of(raw / "100.dat") in message
    assert "delete it" in message


def test_missing_records_are_downloaded_and_verified(
    mitdb_dir: Path, tmp_path: Path, serve: Callable[[Path], str]
) -> None:
    url = serve(copy_records(mitdb_dir, tmp_path / "server", ["100", "114"]))
    raw = tmp_path / "raw"
    digests = ensure_records(raw, url, ["100", "114"], Progress(disable=True))
    assert leftovers(raw) == sorted(record_file_names("100") + record_file_names("114"))
    for name, digest in digests.items():
        assert (raw / name).read_bytes() == (mitdb_dir / name).read_bytes()
        assert digest == published_digests()[name]
    (tmp_path / "plain").write_bytes(b"")  # the mode open() gives a new file
    assert (raw / "100.dat").stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_load_dataset_downloads_what_is_missing(
    mitdb_dir: Path,
    tmp_path: Path,
    serve: Callable[[Path], str],
    small_config: Callable[..., Config],
) -> None:
    url = serve(copy_records(mitdb_dir, tmp_path / "server", ["100", "101"]))
    raw = copy_records(mitdb_dir, tmp_path / "raw", ["101"])
    config = small_config(data={"raw_dir": str(raw), "base_url": url, "records": ["100", "101"]})
    dataset = load_dataset(config)
    assert dataset.info["records"]["train"] == ["100", "101"]
    assert (raw / "100.dat").read_bytes() == (mitdb_dir / "100.dat").read_bytes()


def test_a_corrupted_download_is_refused_and_leaves_nothing(
    mitdb_dir: Path, tmp_path: Path, serve: Callable[[Path], str]
) -> None:
    served = copy_records(mitdb_dir, tmp_path / "server", ["100"])
    flip_byte(served / "100.dat", offset=500_000)
    url = serve(served)
    raw = tmp_path / "raw"
    with pytest.raises(DataError) as caught:
        ensure_records(raw, url, ["100"], Progress(disable=True))
    message = str(caught.value)
    assert f"{url}100.dat" in message and published_digests()["100.dat"] in message
    assert leftovers(raw) == ["100.hea"]  # fetched and verified before 100.dat; no partial file


def test_a_truncated_download_is_refused(
    mitdb_dir: Path, tmp_path: Path, serve: Callable[[Path], str]
) -> None:
    served = copy_records(mitdb_dir, tmp_path / "server", ["100"])
    (served / "100.atr").write_bytes((mitdb_dir / "100.atr").read_bytes()[:-100])
    raw = copy_records(mitdb_dir, tmp_path / "raw", ["100"])
    (raw / "100.atr").unlink()
    with pytest.raises(DataError, match=r"100.atr: SHA-256"):
        ensure_records(raw, serve(served), ["100"], Progress(disable=True))
    assert "100.atr" not in leftovers(raw) and len(leftovers(raw)) == 2


def test_a_missing_remote_file_is_a_clear_error(
    mitdb_dir: Path, tmp_path: Path, serve: Callable[[Path], str]
) -> None:
    served = copy_records(mitdb_dir, tmp_path / "server", ["100"])
    (served / "100.atr").unlink()
    url = serve(served)
    raw = tmp_path / "raw"
    with pytest.raises(DataError, match=f"download failed: {url}100.atr: HTTP 404"):
        ensure_records(raw, url, ["100"], Progress(disable=True))
    assert leftovers(raw) == ["100.dat", "100.hea"]


def test_an_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(DataError, match=f"download failed: {url}100.hea"):
        ensure_records(tmp_path / "raw", url, ["100"], Progress(disable=True))
    assert leftovers(tmp_path / "raw") == []


@pytest.mark.parametrize("interval", [0.2, 8.0], ids=["trickling", "stalled"])
def test_a_slow_server_hits_the_deadline_and_leaves_nothing(
    tmp_path: Path, trickle: Callable[[float], str], interval: float
) -> None:
    url = trickle(interval)
    raw = tmp_path / "raw"
    start = time.monotonic()
    with pytest.raises(DataError) as caught:
        ensure_records(raw, url, ["100"], Progress(disable=True), deadline_seconds=2.0)
    # A hang guard, not a speed check: without the deadline the download takes 10 s (trickling)
    # or 8 s per byte (stalled); with it, the one read under way ends by the deadline.
    assert time.monotonic() - start < 2.0 + 4.0
    message = str(caught.value)
    assert message.startswith(f"download failed: {url}100.hea: not complete after the 2 s deadline")
    received = re.search(r"\((\d+) bytes received\)", message)
    assert received is not None and "\n" not in message
    bytes_received = int(received.group(1))
    assert bytes_received > 0 if interval < 1 else bytes_received == 0
    assert leftovers(raw) == []


SIGTERM_DOWNLOAD = """
import signal, sys
from pathlib import Path
from rich.progress import Progress
from ecgtune.data.physionet import ensure_records

def interrupt(*_):
    raise KeyboardInterrupt

signal.signal(signal.SIGTERM, interrupt)
ensure_records(Path(sys.argv[1]), sys.argv[2], ["100"], Progress(disable=True))
"""
"""Downloads record 100; SIGTERM raises KeyboardInterrupt (as the CLI's handler does)."""


def wait_for_partial_file(folder: Path, process: subprocess.Popen[bytes]) -> None:
    """Until the download's temporary file is in ``folder`` (hang guard: 60 s)."""
    give_up = time.monotonic() + 60
    while not any(name.endswith(".part") for name in leftovers(folder)):
        assert process.poll() is None, process.communicate()[1].decode()
        assert time.monotonic() < give_up, "the download never started"
        time.sleep(0.05)


def test_sigterm_during_a_download_leaves_no_partial_file(
    tmp_path: Path, trickle: Callable[[float], str]
) -> None:
    raw = tmp_path / "raw"
    command = [sys.executable, "-c", SIGTERM_DOWNLOAD, str(raw), trickle(0.2)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_partial_file(raw, process)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)  # hang guard: the download must end
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode != 0 and b"KeyboardInterrupt" in stderr  # stopped mid-download
    assert leftovers(raw) == []


def test_an_unwritable_raw_dir_is_a_one_line_error(unwritable_dir: Path) -> None:
    unreachable = "http://127.0.0.1:9/"  # the folder is refused before anything is fetched
    with pytest.raises(DataError) as caught:
        ensure_records(unwritable_dir, unreachable, ["100"], Progress(disable=True))
    message = str(caught.value)
    assert message.startswith(f"cannot write to data.raw_dir = {unwritable_dir}: ")
    assert "\n" not in message
