"""Memory of every process of the stack, read from ``/proc``, and how it grew.

The stack's processes are the descendants of one process: this one when the soak starts the stack
itself, or the ``python -m serving.stack`` process of a running ``make run``. Each child is a service
(Triton, the S3 server, the facade, the dashboard) and everything below it belongs to that service
(Triton's Python-backend stubs are children of ``tritonserver``). A service is followed across restarts:
a restarted Triton is the same service with new processes.

Growth is measured per service on its total resident memory (RSS): the median over a window at the
start of the steady phase against the median over a window at the end of the run. Medians, because a
Python process's RSS wobbles by a few MB from one sample to the next.

RSS counts a page shared by several processes (a shared library's code, a file mapped by every Python-backend
stub) once in each of them, so the sum of RSS over a stack of a dozen processes overstates what the stack holds.
Each sample also carries the process's PSS (proportional set size, ``/proc/<pid>/smaps_rollup``: its private pages
plus its share of each shared page), whose sum over the stack is the memory the stack occupies.
"""

from __future__ import annotations

import os
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
ALL_SERVICES = "whole stack"


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    ppid: int
    state: str
    argv: tuple[str, ...]

    @property
    def program(self) -> str:
        return Path(self.argv[0]).name if self.argv else "?"


@dataclass(frozen=True)
class RssSample:
    """One process's resident memory at ``t_s`` seconds from the start of the traffic."""

    t_s: float
    service: str
    pid: int
    label: str
    rss_bytes: int
    pss_bytes: int | None = None
    """None where ``smaps_rollup`` cannot be read (a kernel without it, another user's process)."""


def read_process(pid: int, proc: Path = PROC) -> ProcessInfo | None:
    """``/proc/<pid>/stat`` and ``cmdline``; None when it is gone or not readable."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        argv = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces and parentheses itself.
    fields = stat[stat.rindex(")") + 2 :].split()
    return ProcessInfo(
        pid=pid, ppid=int(fields[1]), state=fields[0], argv=tuple(a.decode(errors="replace") for a in argv if a)
    )


def process_table(proc: Path = PROC) -> dict[int, ProcessInfo]:
    table = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            info = read_process(int(entry.name), proc)
            if info is not None:
                table[info.pid] = info
    return table


def rss_bytes(pid: int, proc: Path = PROC) -> int | None:
    """Resident memory of ``pid`` (``/proc/<pid>/statm``, field 2 in pages)."""
    try:
        return int((proc / str(pid) / "statm").read_text().split()[1]) * PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return None


def pss_bytes(pid: int, proc: Path = PROC) -> int | None:
    """Proportional set size of ``pid`` (the ``Pss:`` line of ``/proc/<pid>/smaps_rollup``, in kB)."""
    try:
        text = (proc / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Pss:"):
            fields = line.split()
            return int(fields[1]) * 1024 if len(fields) >= 2 and fields[1].isdigit() else None
    return None


def service_of(info: ProcessInfo) -> str | None:
    """Which service a child of the stack's process is; None for anything else (a short-lived helper)."""
    argv = info.argv
    if info.program == "tritonserver":
        return "Triton"
    if info.program == "weed":
        return "S3 server (SeaweedFS)"
    if "frontend_api" in argv or any(a.startswith("frontend_api.") for a in argv):
        return "facade"
    if "dashboard" in argv:
        return "dashboard"
    return None


def label_of(info: ProcessInfo) -> str:
    """A short name: the program, the model of a Python-backend stub, the module of a Python process."""
    argv = info.argv
    if info.program == "triton_python_backend_stub":
        # Triton 2.51's stub arguments: model file, shm region, sizes, parent pid, backend dir, ipc handle, then
        # the model instance's name (``<model>_<group>_<instance>``).
        return f"stub {argv[8]}" if len(argv) > 8 else "stub"
    if info.program.startswith("python") and "-m" in argv[:-1]:
        return f"python -m {argv[argv.index('-m') + 1]}"
    return info.program


def descendants(root: int, table: dict[int, ProcessInfo]) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for info in table.values():
        children[info.ppid].append(info.pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


class StackProcesses:
    """The services below ``root`` (their children included); ``exclude``: pids that are not the stack's."""

    def __init__(self, root: int, exclude: Iterable[int] = (), proc: Path = PROC) -> None:
        self.root, self.exclude, self.proc = root, set(exclude), proc

    def services(self) -> dict[int, str]:
        """pid -> service of each live process of the stack."""
        table = process_table(self.proc)
        found = {}
        for info in table.values():
            if info.ppid != self.root or info.pid in self.exclude or info.state == "Z":
                continue
            service = service_of(info)
            if service is None:
                continue
            for pid in [info.pid, *descendants(info.pid, table)]:
                if table[pid].state != "Z":
                    found[pid] = service
        return found

    def service_pid(self, service: str) -> int | None:
        """The pid of the service's own process (a child of ``root``), e.g. Triton's."""
        table = process_table(self.proc)
        for info in table.values():
            if info.ppid == self.root and info.state != "Z" and service_of(info) == service:
                return info.pid
        return None

    def sample(self, t_s: float) -> list[RssSample]:
        out = []
        for pid, service in sorted(self.services().items()):
            info, rss = read_process(pid, self.proc), rss_bytes(pid, self.proc)
            if info is not None and rss is not None:
                out.append(RssSample(t_s, service, pid, label_of(info), rss, pss_bytes(pid, self.proc)))
        return out


@dataclass(frozen=True)
class Growth:
    """A service's (or the whole stack's) RSS at the start of the steady phase and at the end of the run."""

    service: str
    baseline_bytes: float
    end_bytes: float
    peak_bytes: int
    baseline_pss_bytes: float | None = None
    end_pss_bytes: float | None = None
    """PSS medians over the same windows; None where a sample of the window has no PSS."""

    @property
    def growth(self) -> float:
        """(end - baseline) / baseline."""
        return (self.end_bytes - self.baseline_bytes) / self.baseline_bytes if self.baseline_bytes else 0.0


def totals(samples: Sequence[RssSample]) -> dict[str, dict[float, int]]:
    """service -> sample time -> summed RSS of its processes (and the whole stack as :data:`ALL_SERVICES`)."""
    out: dict[str, dict[float, int]] = defaultdict(lambda: defaultdict(int))
    for s in samples:
        out[s.service][s.t_s] += s.rss_bytes
        out[ALL_SERVICES][s.t_s] += s.rss_bytes
    return out


def pss_totals(samples: Sequence[RssSample]) -> dict[str, dict[float, int | None]]:
    """As :func:`totals`, of PSS: None at a time where a process of the service had no PSS reading."""
    out: dict[str, dict[float, int | None]] = defaultdict(lambda: defaultdict(int))
    for s in samples:
        for service in (s.service, ALL_SERVICES):
            total = out[service][s.t_s]
            out[service][s.t_s] = None if total is None or s.pss_bytes is None else total + s.pss_bytes
    return out


def _window_median(series: Mapping[float, int | None], window: tuple[float, float]) -> float | None:
    """The median of ``series`` over ``window`` (inclusive bounds); None if the window is empty or has a gap."""
    values = [v for t, v in series.items() if window[0] <= t <= window[1]]
    if not values or any(v is None for v in values):
        return None
    return statistics.median(v for v in values if v is not None)


def growth(
    samples: Sequence[RssSample], baseline: tuple[float, float], end: tuple[float, float], *, after: float = 0.0
) -> list[Growth]:
    """Each service's median total RSS in the ``baseline`` window against the ``end`` window (inclusive
    bounds, seconds); the peak counts samples from ``after`` on. Services missing from either window
    are left out."""
    rows = []
    pss = pss_totals(samples)
    for service, series in sorted(totals(samples).items(), key=lambda item: (item[0] == ALL_SERVICES, item[0])):
        first, last = _window_median(series, baseline), _window_median(series, end)
        if first is None or last is None:
            continue
        peak = max((v for t, v in series.items() if t >= after), default=0)
        rows.append(
            Growth(
                service, first, last, peak, _window_median(pss[service], baseline), _window_median(pss[service], end)
            )
        )
    return rows


@dataclass(frozen=True)
class ProcessLife:
    """One process over the run: when it was seen and its RSS first, last and at most."""

    pid: int
    service: str
    label: str
    first_s: float
    last_s: float
    first_bytes: int
    last_bytes: int
    peak_bytes: int
    last_pss_bytes: int | None = None


def lives(samples: Sequence[RssSample], *, after: float = 0.0) -> list[ProcessLife]:
    """Every process seen from ``after`` on (e.g. the end of the warm-up), in order of appearance."""
    by_pid: dict[int, list[RssSample]] = defaultdict(list)
    for s in samples:
        if s.t_s >= after:
            by_pid[s.pid].append(s)
    out = []
    for pid, seen in by_pid.items():
        out.append(
            ProcessLife(
                pid=pid,
                service=seen[0].service,
                label=seen[-1].label,
                first_s=seen[0].t_s,
                last_s=seen[-1].t_s,
                first_bytes=seen[0].rss_bytes,
                last_bytes=seen[-1].rss_bytes,
                peak_bytes=max(s.rss_bytes for s in seen),
                last_pss_bytes=seen[-1].pss_bytes,
            )
        )
    return sorted(out, key=lambda life: (life.service, life.first_s, life.pid))
