"""What ``python -m bench`` measures and for how long."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from serving.triton import PROJECT_ROOT

# Four levels over 1-64 keep `make bench` to a few minutes on 2 cores; --full doubles from 1 to 64.
DEFAULT_CONCURRENCIES = (1, 4, 16, 64)
FULL_CONCURRENCIES = (1, 2, 4, 8, 16, 32, 64)
QUICK_CONCURRENCIES = (1, 16)


@dataclass
class BenchConfig:
    """What to measure and for how long (``python -m bench --quick`` trims levels for a smoke run)."""

    repository: Path = PROJECT_ROOT / "model_repository"
    out: Path = PROJECT_ROOT / "bench" / "results"
    tasks: tuple[str, ...] = ("sentiment", "disaster", "pose")
    concurrencies: tuple[int, ...] = DEFAULT_CONCURRENCIES
    duration_s: float = 2.0
    warmup_s: float = 0.5
    batching_concurrencies: tuple[int, ...] = (1, 64)
    int8_concurrencies: tuple[int, ...] = (1, 16)
    run_facade_comparisons: bool = True
