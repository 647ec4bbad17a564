"""``make run``'s stack keeps itself running: the supervisor (unit tests with fake services) and the real
stack restarting a killed Triton while the facade keeps answering."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from serving.processes import ProcessStartError
from serving.stack import LocalStack, StackSettings
from serving.supervisor import CrashLoop, RestartPolicy, Supervisor


class FakeService:
    """Implements serving.processes.Service; `die()` simulates a crash."""

    def __init__(self, name: str, *, fail_starts: int = 0) -> None:
        self.name = name
        self.fail_starts = fail_starts
        self.starts = 0
        self.stops = 0
        self.notes: list[str] = []
        self._alive = False
        self._code: int | None = None

    @property
    def running(self) -> bool:
        return self._alive

    @property
    def pid(self) -> int | None:
        return 1000 + self.starts if self._alive else None

    @property
    def returncode(self) -> int | None:
        return self._code

    def start(self) -> FakeService:
        self.starts += 1
        if self.fail_starts:
            self.fail_starts -= 1
            raise ProcessStartError(f"{self.name} exited with code 1 during start-up.\nlog tail")
        self._alive, self._code = True, None
        return self

    def stop(self) -> None:
        self.stops += 1
        self._alive, self._code = False, None

    def note(self, message: str) -> None:
        self.notes.append(message)

    def die(self, code: int = -9) -> None:
        self._alive, self._code = False, code


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def supervisor(clock: Clock, **policy: float) -> tuple[Supervisor, list[str]]:
    lines: list[str] = []
    return Supervisor(RestartPolicy(**policy), echo=lines.append, clock=clock), lines  # type: ignore[arg-type]


def test_a_dead_service_is_restarted_after_a_growing_backoff_while_the_others_keep_running() -> None:
    clock = Clock()
    sup, lines = supervisor(clock, backoff_s=1, max_backoff_s=30)
    triton, facade = FakeService("Triton"), FakeService("facade")
    sup.start(triton)
    sup.start(facade)

    triton.die(-9)
    sup.check()
    assert not triton.running and triton.stops == 1  # its process group is cleaned up before the restart
    assert "Triton was killed by SIGKILL; restarting in 1s (restart 1 of at most 5 within 300s)" in lines[-1]
    clock.now = 0.9
    sup.check()
    assert triton.starts == 1
    clock.now = 1.0
    sup.check()
    assert triton.running and triton.starts == 2
    assert triton.notes[-1].startswith("Triton restarted")
    assert facade.running and facade.starts == 1 and facade.stops == 0

    triton.die(1)
    clock.now = 2.0
    sup.check()
    assert "Triton exited with code 1; restarting in 2s (restart 2" in lines[-1]  # doubled
    clock.now = 4.0
    sup.check()
    assert triton.running and triton.starts == 3


def test_a_crash_loop_raises_with_a_clear_message_and_supervisor_stop_stops_all() -> None:
    clock = Clock()
    sup, _ = supervisor(clock, max_restarts=2, window_s=60, backoff_s=1)
    s3, triton = FakeService("S3 server"), FakeService("Triton")
    sup.start(s3)
    sup.start(triton)
    for _ in range(2):
        triton.die(-11)
        sup.check()
        clock.now += 5
        sup.check()
        assert triton.running
    triton.die(-11)
    with pytest.raises(CrashLoop, match=r"Triton was killed by SIGSEGV; it was restarted 2 times within 60s"):
        sup.check()
    assert "crash loop" in triton.notes[-1]
    sup.stop()
    assert not s3.running and not triton.running and s3.stops == 1


def test_restarts_outside_the_window_do_not_count_towards_a_crash_loop() -> None:
    clock = Clock()
    sup, _ = supervisor(clock, max_restarts=1, window_s=60, backoff_s=1)
    facade = FakeService("facade")
    sup.start(facade)
    for _ in range(3):
        facade.die(1)
        sup.check()
        clock.now += 61  # each death more than a window after the previous restart
        sup.check()
        assert facade.running
    assert sup.restarts("facade") == 1


def test_a_restart_that_fails_counts_as_another_death() -> None:
    clock = Clock()
    sup, lines = supervisor(clock, max_restarts=5, backoff_s=1)
    facade = FakeService("facade")
    sup.start(facade)
    facade.fail_starts = 1
    facade.die(1)
    sup.check()
    clock.now = 1
    sup.check()
    assert not facade.running and "facade did not come back: facade exited with code 1" in lines[-1]
    sup.check()  # seen dead again: next attempt after 2 s
    assert "restarting in 2s (restart 2" in lines[-1]
    clock.now = 3
    sup.check()
    assert facade.running


def classify(api_url: str) -> int:
    try:
        response = httpx.post(f"{api_url}/v1/disaster", json={"texts": ["Forest fire near the town"]}, timeout=30)
    except httpx.HTTPError:
        return 0
    if response.status_code == 200:
        assert response.json()["predictions"][0]["label"] in {"not_disaster", "disaster"}
    return response.status_code


@pytest.mark.integration
@pytest.mark.slow
def test_a_killed_triton_is_restarted_by_the_stack_and_the_facade_answers_again(tmp_path: Path) -> None:
    from tests.support.tiny_models import build_tiny_repository

    repository = build_tiny_repository(tmp_path, tasks=("disaster",))
    settings = StackSettings.on_free_ports(
        s3_data_dir=tmp_path / "s3",
        model_repository=repository,
        log_dir=tmp_path / "logs",
        start_dashboard=False,
    )
    lines: list[str] = []
    stack = LocalStack(settings, echo=lines.append)
    done = threading.Event()
    failures: list[BaseException] = []

    def watch() -> None:
        try:
            stack.watch(done.is_set)
        except BaseException as exc:
            failures.append(exc)

    watcher = threading.Thread(target=watch)
    try:
        stack.start()
        watcher.start()
        assert classify(stack.api_url) == 200
        triton_pid, facade_pid, s3_pid = stack.triton.pid, stack.api.pid, stack.s3.pid
        assert triton_pid is not None

        os.killpg(triton_pid, signal.SIGKILL)  # the server and every stub, as a crash under load would
        deadline = time.monotonic() + 240
        status = classify(stack.api_url)
        while status != 200 and time.monotonic() < deadline:
            time.sleep(1)
            status = classify(stack.api_url)
        assert status == 200, f"the facade did not answer again: {lines}"
        assert not failures, failures
        assert stack.triton.pid not in (None, triton_pid)
        assert any("Triton was killed by SIGKILL; restarting in 1s" in line for line in lines), lines
        assert any(line.startswith("==> Triton restarted") for line in lines), lines
        assert (stack.api.pid, stack.s3.pid) == (facade_pid, s3_pid)  # the others kept running
        log = (settings.log_dir / "triton.log").read_text()
        assert "restarting in 1s" in log and "Triton restarted" in log  # recorded next to the crash
    finally:
        done.set()
        if watcher.is_alive():
            watcher.join()
        stack.stop()
