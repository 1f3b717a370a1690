"""What every benchmark records beside its figures: the machine it ran on and the versions of
the packages it measured; and how it writes its results file (atomically, then echoed)."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from ecgtune.data.files import atomic_write


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what Python knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(packages: Sequence[str], **extra: Any) -> dict[str, Any]:
    """CPU, cores (all and usable by this process), Python, platform, the ``packages``'
    versions, and ``extra`` (e.g. the torch threads used)."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: version(name) for name in packages},
        **extra,
    }


def write_results(path: Path, result: dict[str, Any]) -> None:
    """The results as indented JSON, written atomically and printed."""
    text = json.dumps(result, indent=2) + "\n"
    with atomic_write(path) as stream:
        stream.write(text.encode("utf-8"))
    print(text)
