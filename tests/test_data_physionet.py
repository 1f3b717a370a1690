"""Record files: SHA-256 verification and download from a local HTTP server (PhysioNet stand-in)."""

from __future__ import annotations

import functools
import http.server
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rich.progress import Progress

from ecgtune.config import Config
from ecgtune.data import load_dataset
from ecgtune.data.physionet import (
    ensure_records,
    mitdb_record_names,
    published_digests,
    record_file_names,
    sha256_of,
    verify_file,
)
from ecgtune.errors import DataError


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


@pytest.fixture
def serve() -> Iterator[Callable[[Path], str]]:
    """Serve a folder over HTTP on 127.0.0.1 (a free port, a thread); returns its base URL."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(folder: Path) -> str:
        handler = functools.partial(QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_digest_list_covers_every_record_file() -> None:
    names = mitdb_record_names()
    assert len(names) == 48 and names[0] == "100" and names[-1] == "234"
    assert len(published_digests()) == 48 * 3 + 1  # + RECORDS


def test_the_shared_records_verify(mitdb_dir: Path) -> None:
    for name in record_file_names("100") + record_file_names("114"):
        assert verify_file(mitdb_dir / name) == published_digests()[name]


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
