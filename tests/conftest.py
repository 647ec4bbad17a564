"""Shared fixtures: a tiny ONNX classifier published like a real task, the local S3 server, and a
session-end check that nothing a test started is still running.

Leak check: every process a test starts inherits ``MTC_RUN_ID=<this session's id>`` (set below, before
any test runs), and Triton's shared-memory regions carry that id in their names. When the session ends
(after every fixture's teardown), any process whose ``/proc/<pid>/environ`` holds the id, or any
``/dev/shm/mtc_<id>_*`` region, was left behind by a test: it is reported, killed / removed, and the
session fails. (Only this session's id counts: other sessions on the same machine are not ours.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.triton_config import write_model_config
from serving.processes import RUN_ID_ENV
from serving.s3 import S3Server
from serving.triton import shm_regions
from taskspec import BatchingSpec, TaskSpec, TensorSpec

# The local S3 server accepts exactly these keys; tests never use real AWS credentials.
os.environ["AWS_ACCESS_KEY_ID"] = "test"
os.environ["AWS_SECRET_ACCESS_KEY"] = "test-secret"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
for _variable in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
    os.environ.pop(_variable, None)

RUN_ID = uuid.uuid4().hex[:12]
os.environ[RUN_ID_ENV] = RUN_ID  # inherited by every child: how the leak check finds them


def processes_with_run_id(run_id: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose environment holds ``MTC_RUN_ID=run_id``."""
    needle = f"{RUN_ID_ENV}={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found.append((int(entry.name), command or "(zombie)"))
    return found


_leak_report: list[str] = []


@pytest.hookimpl(trylast=True)  # after the runner's own session teardown (matters on -x / Ctrl-C)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    survivors = processes_with_run_id(RUN_ID)
    regions = sorted(shm_regions(RUN_ID))
    if not survivors and not regions:
        return
    _leak_report.append(f"a test left {len(survivors)} process(es) and {len(regions)} /dev/shm region(s) behind:")
    for pid, command in survivors:
        _leak_report.append(f"  process {pid}: {command[:200]}")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for region in regions:
        _leak_report.append(f"  region {region}")
        region.unlink(missing_ok=True)
    _leak_report.append("(killed and removed now; find the fixture or test that does not stop what it starts)")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _leak_report:
        terminalreporter.section("leak check FAILED", sep="=", red=True, bold=True)
        for line in _leak_report:
            terminalreporter.line(line, red=True)


TINY = TaskSpec(
    name="tiny",
    title="Tiny test classifier",
    modality="text",
    labels=("red", "green", "blue"),
    inputs=(TensorSpec("features", "TYPE_FP32", (4,)),),
    output=TensorSpec("logits", "TYPE_FP32", (3,)),
    # A long queue delay makes the batching test deterministic on a loaded 2-core machine.
    batching=BatchingSpec(max_batch_size=8, preferred_batch_sizes=(4, 8), max_queue_delay_us=50_000),
)


def tiny_weights(scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(4, 3)) * scale).astype(np.float32), np.array([0.1, -0.2, 0.3], np.float32)


def write_tiny_onnx(path: Path, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """logits = features @ W + b, with a dynamic batch axis and named tensors."""
    weight, bias = tiny_weights(scale)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return weight, bias


def make_tiny_repository(root: Path) -> Path:
    """``root/tiny/{config.pbtxt,labels.txt,1/model.onnx}``."""
    write_tiny_onnx(root / TINY.name / "1" / "model.onnx")
    write_model_config(TINY, root / TINY.name)
    return root


@pytest.fixture
def tiny_repository(tmp_path: Path) -> Path:
    return make_tiny_repository(tmp_path / "repo")


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 server (SeaweedFS) over HTTP on free local ports, data in a temp folder, for the session.

    It accepts only the session's keys (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY above); bucket names
    need 3 or more characters.
    """
    root = tmp_path_factory.mktemp("s3")
    server = S3Server(
        root / "data",
        root / "s3.log",
        access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    )
    with server:
        yield server.endpoint
