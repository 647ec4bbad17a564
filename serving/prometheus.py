"""A local Prometheus server for ``make run``: Debian's ``prometheus`` package, scraping the facade and Triton.

The repository's ``observability/prometheus/`` holds the compose configuration and the recording rules
(``rules.yml``); here the same rules are loaded by a configuration written for local addresses
(:func:`write_local_config`: JSON, which is YAML). The server keeps its data in ``data_dir`` (3 days by
default) and listens on loopback like every local service. :func:`find_prometheus` says where the binary is, or
None (the stack then says how to install it and goes on without it).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from serving.processes import ManagedProcess
from serving.triton import PROJECT_ROOT

OBSERVABILITY_DIR = PROJECT_ROOT / "observability"
RULES_FILE = OBSERVABILITY_DIR / "prometheus" / "rules.yml"
SCRAPE_INTERVAL_S = 5
INSTALL_HINT = "apt-get install prometheus (Debian/Ubuntu), or put a `prometheus` binary on PATH"


def find_prometheus() -> Path | None:
    """The ``prometheus`` binary on PATH (Debian installs /usr/bin/prometheus), or None."""
    found = shutil.which("prometheus")
    return Path(found) if found else None


def local_config(targets: Mapping[str, Sequence[str]], rules: Path = RULES_FILE) -> dict[str, object]:
    """A Prometheus configuration scraping ``targets`` (job name -> ``host:port`` list) and loading ``rules``."""
    return {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(addresses)}]} for job, addresses in targets.items()
        ],
    }


def write_local_config(path: Path, targets: Mapping[str, Sequence[str]]) -> Path:
    """Write :func:`local_config` to ``path`` (JSON is YAML); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(local_config(targets), indent=2) + "\n")
    return path


def prometheus_process(
    binary: Path, config: Path, *, host: str, port: int, data_dir: Path, log_file: Path, retention: str = "3d"
) -> ManagedProcess:
    """Prometheus as a :class:`ManagedProcess` reading ``config``, keeping its data in ``data_dir``, serving on
    ``host:port`` (ready when ``/-/ready`` answers 200)."""
    return ManagedProcess(
        name="Prometheus",
        command=[
            str(binary),
            f"--config.file={config}",
            f"--storage.tsdb.path={data_dir}",
            f"--storage.tsdb.retention.time={retention}",
            f"--web.listen-address={host}:{port}",
        ],
        ready_url=f"http://{host}:{port}/-/ready",
        log_file=log_file,
    )
