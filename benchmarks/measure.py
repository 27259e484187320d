"""Measurement helpers shared by the benchmarks: peak RSS, machine and versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

MIB = 1024 * 1024
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> int:
    """Reset the kernel's peak RSS mark to the current RSS; return it in bytes.

    Writing ``5`` to ``/proc/self/clear_refs`` resets ``VmHWM`` (Linux 4.0+).
    """
    _CLEAR_REFS.write_text("5")
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    """Return the peak RSS since the last reset, in bytes."""
    return _status_kib("VmHWM") * 1024


def cpu_model() -> str:
    """Return the CPU model from ``/proc/cpuinfo``, or an empty string."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def machine() -> dict[str, object]:
    """Describe the CPU, memory and operating system."""
    model = cpu_model()
    memory = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = int(line.split()[1]) * 1024
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory / 1024**3, 1),
        "kernel": platform.release(),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", ""),
        # Other processes on the machine slow every timing; this records how busy
        # it was when the run started.
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def versions() -> dict[str, str]:
    """Versions of Python and the packages the benchmarks compare or run on."""
    found = {"python": platform.python_version()}
    for package in ("numpy", "flwr", "moto", "boto3"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def run_json_worker(module: str, *args: str, timeout: float = 900) -> str:
    """Run ``python -m module args`` in a fresh process; return its last stdout line."""
    completed = subprocess.run(
        [sys.executable, "-m", module, *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return completed.stdout.strip().splitlines()[-1]
