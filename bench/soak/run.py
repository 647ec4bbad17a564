"""One soak run: start the stack (or attach to a running one), drive the traffic and the faults, sample
memory, and hand everything to :mod:`bench.soak.report`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.soak.findings import MAX_RSS_GROWTH, SoakReport, summarise
from bench.soak.rss import RssSample, StackProcesses
from bench.soak.timeline import Phase, Schedule, Timeline
from bench.soak.traffic import ImageUrls, Inputs, Outcome, TrafficSettings, make_session, run_clients, wait_or_stop
from serving.stack import LocalStack, StackSettings, missing_models
from serving.triton import PROJECT_ROOT

DEFAULT_OUT = PROJECT_ROOT / "bench" / "results" / "soak"
DEFAULT_S3_DATA = PROJECT_ROOT / ".cache" / "soak-s3"


class SoakSetupError(RuntimeError):
    """The soak cannot run (no models, a stack that does not start, nothing to attach to)."""


@dataclass(frozen=True)
class SoakConfig:
    """What to soak and how."""

    schedule: Schedule
    repository: Path | None = PROJECT_ROOT / "model_repository"
    """Published models for a stack started here; None with ``url``."""
    url: str | None = None
    """A running stack's facade (``make run``), with ``stack_pid``: its ``python -m serving.stack`` process."""
    stack_pid: int | None = None
    tasks: tuple[str, ...] = ("sentiment", "disaster", "pose")
    clients: int = 64
    client_timeout_s: float = 60.0
    api_key: str | None = field(default=None, repr=False)
    out: Path = DEFAULT_OUT
    s3_data_dir: Path = DEFAULT_S3_DATA
    sample_every_s: float = 2.0
    idle_after_s: float = 5.0
    """Seconds without requests after the traffic before the last memory sample (what the stack holds idle)."""
    max_rss_growth: float = MAX_RSS_GROWTH


@dataclass
class Triton:
    """How the run finds Triton's process (it changes on restart), and what it froze (to thaw it whatever happens)."""

    pid: Callable[[], int | None]
    frozen: int | None = None

    def signal(self, sig: signal.Signals, pid: int) -> None:
        """``sig`` to Triton's whole process group: the server and its Python-backend stubs."""
        os.killpg(pid, sig)
        self.frozen = pid if sig == signal.SIGSTOP else None if sig in (signal.SIGCONT, signal.SIGKILL) else self.frozen

    def thaw(self) -> None:
        if self.frozen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.frozen, signal.SIGCONT)
            self.frozen = None


@dataclass
class Recorder:
    """What the run collects while it runs."""

    outcomes: list[Outcome] = field(default_factory=list)
    samples: list[RssSample] = field(default_factory=list)
    timeline: Timeline = field(default_factory=Timeline)
    recovery_s: float | None = None
    stack_lines: list[tuple[float, str]] = field(default_factory=list)
    """(time.monotonic(), line) of what the stack's supervisor said (restarts)."""
    uploads: int = 0
    upload_failures: list[str] = field(default_factory=list)
    unplanned_deaths: int = 0
    """Tritons that died on their own outside the fault windows (each fails the run)."""
    idle: list[RssSample] = field(default_factory=list)
    """Every process once, ``SoakConfig.idle_after_s`` after the traffic ended."""


async def sleep_until(clock: Callable[[], float], at_s: float) -> None:
    await asyncio.sleep(max(0.0, at_s - clock()))


async def drive_faults(
    schedule: Schedule,
    recorder: Recorder,
    clock: Callable[[], float],
    triton: Triton,
    ready: Callable[[], Awaitable[bool]],
) -> None:
    """The phases in order: freeze Triton, thaw it, kill it, wait until the stack serves again."""
    timeline = recorder.timeline
    await sleep_until(clock, schedule.warmup_s)
    timeline.begin(Phase.STEADY, clock())

    await sleep_until(clock, schedule.freeze_at_s)
    pid = triton.pid()
    if pid is None:
        raise SoakSetupError("Triton is not running at the time of the freeze")
    triton.signal(signal.SIGSTOP, pid)
    timeline.begin(Phase.FROZEN, clock())
    timeline.note(clock(), f"Triton frozen: SIGSTOP to process group {pid} (server and stubs)")
    try:
        await sleep_until(clock, schedule.freeze_at_s + schedule.freeze_s)
    finally:
        triton.thaw()
    thawed = clock()
    timeline.note(thawed, f"Triton thawed: SIGCONT to process group {pid}")
    # A freeze can outlive itself: Triton 2.51's Python backend (every model on a CPU host) has been seen to
    # abort within a few seconds of a 30 s SIGSTOP (boost::interprocess::lock_exception in libtriton_python.so).
    # A Triton that dies within settle_s of the thaw died of the freeze: the freeze's window then lasts until
    # the stack serves again from a new Triton. A death after that counts against the run.
    while clock() - thawed < schedule.settle_s:
        if not process_alive(pid):
            timeline.note(clock(), f"Triton died after the thaw (pid {pid}); the freeze's window lasts until it serves")
            if await serving_again(schedule, timeline, clock, triton, ready, pid) is None:
                return
            await asyncio.sleep(schedule.settle_s)
            break
        await asyncio.sleep(0.1)
    timeline.begin(Phase.AFTER_THAW, clock())

    await sleep_until(clock, schedule.kill_at_s)
    pid = triton.pid()
    if pid is None or not process_alive(pid):
        # Died on its own after the freeze's window: the run fails (the report says why), but it goes on, so
        # the report still shows what the clients saw and whether the kill and the restart after it work.
        recorder.unplanned_deaths += 1
        timeline.note(clock(), "Triton not running at the kill: it died on its own; waiting for the next one")
        if await serving_again(schedule, timeline, clock, triton, ready, pid) is None:
            return
        pid = triton.pid()
        assert pid is not None  # serving_again saw it
    triton.signal(signal.SIGKILL, pid)
    killed = clock()
    timeline.begin(Phase.RESTARTING, killed)
    timeline.note(killed, f"Triton killed: SIGKILL to process group {pid}; the stack's supervisor restarts it")
    recorder.recovery_s = await serving_again(schedule, timeline, clock, triton, ready, pid)
    if recorder.recovery_s is None:
        return
    await asyncio.sleep(schedule.settle_s)
    timeline.begin(Phase.RECOVERED, clock())


async def serving_again(
    schedule: Schedule,
    timeline: Timeline,
    clock: Callable[[], float],
    triton: Triton,
    ready: Callable[[], Awaitable[bool]],
    dead: int | None,
) -> float | None:
    """Seconds until the facade is ready again with a new Triton (not ``dead``), or None after the restart timeout."""
    began = clock()
    while clock() - began < schedule.restart_timeout_s:
        if triton.pid() not in (None, dead) and await ready():
            timeline.note(clock(), f"the facade is ready again (/readyz 200), a new Triton serving: pid {triton.pid()}")
            return clock() - began
        await asyncio.sleep(0.5)
    timeline.note(clock(), f"Triton did not serve again within {schedule.restart_timeout_s:g} s")
    return None


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


async def sample_memory(
    processes: StackProcesses, recorder: Recorder, clock: Callable[[], float], every_s: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        now = clock()
        recorder.samples.extend(await asyncio.to_thread(processes.sample, now))
        await wait_or_stop(stop, every_s)


async def is_ready(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with asyncio.timeout(5):
            async with session.get(f"{url}/readyz") as response:
                await response.read()
                return response.status == 200
    except (TimeoutError, aiohttp.ClientError, OSError):
        return False


async def soak(
    config: SoakConfig, url: str, processes: StackProcesses, triton: Triton, inputs: Inputs, recorder: Recorder
) -> float:
    """Traffic, faults and memory samples for the planned time; returns ``time.monotonic()`` at the start of
    the traffic (every time in ``recorder`` counts from it)."""
    schedule = config.schedule
    settings = TrafficSettings(
        url=url, tasks=config.tasks, clients=config.clients, timeout_s=config.client_timeout_s, api_key=config.api_key
    )
    async with make_session(settings) as session:
        deadline = time.monotonic() + 300
        while not await is_ready(session, url):
            if time.monotonic() > deadline:
                raise SoakSetupError(f"the facade at {url} is not ready (/readyz) after 300 s")
            await asyncio.sleep(1)
        images = None
        if inputs.images:
            images = ImageUrls(session, settings, inputs.images)
            await images.refresh()
        started = time.monotonic()

        def clock() -> float:
            return time.monotonic() - started

        stop = asyncio.Event()
        clients = asyncio.create_task(
            run_clients(session, settings, inputs, images, clock=clock, stop=stop, record=recorder.outcomes.append)
        )
        helpers = [asyncio.create_task(sample_memory(processes, recorder, clock, config.sample_every_s, stop))]
        if images is not None:
            helpers.append(asyncio.create_task(images.keep_fresh(stop)))
        try:
            await drive_faults(schedule, recorder, clock, triton, lambda: is_ready(session, url))
            recovered = next((s for p, s, _ in recorder.timeline.windows() if p == Phase.RECOVERED), None)
            end = (
                schedule.duration_s
                if recovered is None
                else max(schedule.duration_s, recovered + schedule.min_recovered_s)
            )
            await sleep_until(clock, end)
        finally:
            triton.thaw()
            stop.set()
            recorder.timeline.end_s = clock()
            recorder.timeline.note(recorder.timeline.end_s, "traffic stopped; waiting for the requests in flight")
            await clients  # every request in flight ends: answered, failed, or lost at its deadline
            await asyncio.gather(*helpers)
        await asyncio.sleep(config.idle_after_s)
        recorder.idle = await asyncio.to_thread(processes.sample, clock())
        if images is not None:
            recorder.uploads, recorder.upload_failures = images.uploads, images.failures
        return started


@contextmanager
def local_stack(config: SoakConfig, recorder: Recorder) -> Iterator[LocalStack]:
    """S3 server, Triton and the facade on free ports, watched by the stack's supervisor in a thread."""
    assert config.repository is not None
    repository = config.repository.resolve()
    missing = [task for task in missing_models(repository) if task in config.tasks]
    if missing:
        raise SoakSetupError(f"no servable model for {', '.join(missing)} in {repository} (`make models`)")
    settings = StackSettings.on_free_ports(
        s3_data_dir=config.s3_data_dir,
        model_repository=repository,
        log_dir=config.out / "logs",
        start_dashboard=False,
        build_missing_models=False,
    )

    def echo(line: str) -> None:
        recorder.stack_lines.append((time.monotonic(), line))
        print(f"    [stack] {line}", flush=True)

    stack = LocalStack(settings, echo=echo)
    done = threading.Event()

    def watch() -> None:
        try:
            stack.watch(done.is_set)
        except Exception as exc:  # a crash loop: the report shows what the clients saw meanwhile
            echo(f"supervisor stopped: {type(exc).__name__}: {exc}")

    watcher = threading.Thread(target=watch, name="soak-stack-supervisor")
    stack.start()
    try:
        watcher.start()
        yield stack
    finally:
        done.set()
        if watcher.is_alive():
            watcher.join()
        stack.stop()


def run(config: SoakConfig) -> SoakReport:
    """Run the soak and return its report (not yet written)."""
    from bench.machine import describe_machine

    problems = config.schedule.problems()
    if problems:
        raise SoakSetupError("impossible schedule: " + "; ".join(problems))
    machine = describe_machine()  # before starting anything: the load average says how busy the machine was
    wall = time.monotonic()
    began = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    inputs = Inputs.load(config.tasks)
    recorder = Recorder()
    triton = Triton(pid=lambda: None)
    try:
        if config.url is None:
            print(f"==> starting the stack on {config.repository} (S3 data in {config.s3_data_dir})", flush=True)
            with local_stack(config, recorder) as stack:
                triton.pid = lambda: stack.triton.pid
                processes = StackProcesses(os.getpid())
                description = (
                    f"S3 server (SeaweedFS), Triton and the facade started here by serving.stack.LocalStack on "
                    f"{config.repository}"
                )
                print(f"==> soaking {stack.api_url} for {config.schedule.duration_s:g} s", flush=True)
                started = asyncio.run(soak(config, stack.api_url, processes, triton, inputs, recorder))
        else:
            if config.stack_pid is None:
                raise SoakSetupError(
                    "--url needs --stack-pid: the stack's process, whose children are frozen, killed and measured"
                )
            processes = StackProcesses(config.stack_pid)
            triton.pid = lambda: processes.service_pid("Triton")
            if triton.pid() is None:
                raise SoakSetupError(
                    f"process {config.stack_pid} has no tritonserver child: is it `python -m serving.stack`?"
                )
            description = f"the running stack at {config.url} (process {config.stack_pid})"
            print(f"==> soaking {config.url} for {config.schedule.duration_s:g} s", flush=True)
            started = asyncio.run(soak(config, config.url, processes, triton, inputs, recorder))
    finally:
        triton.thaw()
    for at, line in recorder.stack_lines:
        if at >= started:
            recorder.timeline.note(at - started, f"stack: {line}")
    recorder.timeline.events.sort(key=lambda event: event.at_s)
    report = summarise(
        recorder.outcomes,
        recorder.samples,
        recorder.timeline,
        config.schedule,
        stack=description,
        clients=config.clients,
        client_timeout_s=config.client_timeout_s,
        recovery_s=recorder.recovery_s,
        unplanned_deaths=recorder.unplanned_deaths,
        max_rss_growth=config.max_rss_growth,
    )
    report.machine = machine
    report.inputs = inputs.sources
    report.started = began
    report.wall_s = time.monotonic() - wall
    report.uploads = recorder.uploads
    report.upload_failures = recorder.upload_failures
    report.idle_memory, report.idle_after_s = recorder.idle, config.idle_after_s
    return report
