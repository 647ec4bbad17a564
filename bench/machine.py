"""Describe the machine a benchmark ran on: numbers from different machines are not comparable."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _gpus() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


MEASURED_PACKAGES = ("onnxruntime", "onnxruntime-gpu", "tritonclient", "fastapi", "uvicorn", "torch", "transformers")


@dataclass
class Machine:
    """The machine a benchmark ran on."""

    cpu: str
    cores: int | None
    memory_gib: float | None
    gpus: list[str]
    os: str
    python: str
    load_average_at_start: list[float] | None
    """1, 5 and 15-minute load averages when the run started: how busy the machine already was."""
    packages: dict[str, str] = field(default_factory=dict)
    """Versions of the packages on the measured path (those installed)."""
    triton: str | None = None
    """Triton's version, once a run has started it."""

    def summary(self) -> str:
        """One line for a report: CPU, cores, memory and the load average at the start."""
        return (
            f"{self.cpu}, {self.cores} cores, {self.memory_gib} GiB; load average at start {self.load_average_at_start}"
        )


def describe_machine() -> Machine:
    """CPU, cores, memory, GPU(s), OS and the versions of the packages on the measured path."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    versions = {name: _version(name) for name in MEASURED_PACKAGES}
    return Machine(
        cpu=_cpu_model(),
        cores=os.cpu_count(),
        memory_gib=_memory_gib(),
        gpus=_gpus(),
        os=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        load_average_at_start=[round(x, 2) for x in load] if load else None,
        packages={name: version for name, version in versions.items() if version},
    )
