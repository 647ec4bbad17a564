"""Launch a real NVIDIA Triton Inference Server on a machine without Docker or a GPU.

The ``tritonserver`` binary comes from the ``nvidia-pytriton`` wheel (Triton 2.51, the same
release as the NGC 24.10 container), installed in its own virtual environment
(``.venv-triton``: numpy < 2 and onnxruntime, which the Python backend stub needs). The wheel
has only the Python backend, so every launch assembles a backend directory holding:

- ``python/``: a real copy of ``libtriton_python.so`` (Triton refuses a symlink that escapes the
  backend directory), ``triton_python_backend_utils.py`` and a symlink to the stub of the
  environment's Python version;
- ``onnxruntime/model.py``: this project's Python-based ONNX Runtime backend
  (``serving/backends/onnxruntime``), so NGC-style ``backend: "onnxruntime"`` configs load as is.

A CPU-only server starts with ``--model-config-name=cpu``: models with a ``configs/cpu.pbtxt`` (the
text models: int8, one thread per instance) load that, the others their ``config.pbtxt``.

Start-up is bounded (``/v2/health/ready``), failures raise :class:`TritonStartError` with the tail
of the server log, and :meth:`TritonServer.stop` sends SIGINT, then SIGKILL to the whole process
group, and removes the shared-memory regions of this launch (``/dev/shm/mtc_[<run id>_]<launch id>_*``;
the run id is ``$MTC_RUN_ID`` when set, e.g. by the test session). ``python -m serving.triton`` stops
the server the same way on Ctrl-C, SIGTERM or SIGHUP.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

from serving.processes import (
    RUN_ID_ENV,
    ProcessStartError,
    append_note,
    serve_until_stopped,
    stop_on_signals,
    wait_until_ready,
)
from taskspec import CPU_CONFIG_NAME

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ENV_DIR = PROJECT_ROOT / ".venv-triton"
MALLOC_ARENA_MAX = "2"
"""glibc's heap arenas per process for the server and its stubs (``MALLOC_ARENA_MAX``; glibc's default is 8 per core;
the caller's environment wins). The server downloads the models of an S3 repository on several threads and each
thread's arena kept what it freed: with 2 the idle local stack held ~100 MiB less in ``tritonserver``, at the same
throughput (docs/benchmarks.md, "MALLOC_ARENA_MAX for Triton, measured again")."""
BACKENDS_SOURCE = Path(__file__).resolve().parent / "backends"
SHM_DIR = Path("/dev/shm")

ModelControlMode = Literal["none", "poll", "explicit"]
TRITON_SERVICE_NAME = "triton"
"""``service.name`` of Triton's spans."""


class TritonStartError(ProcessStartError):
    """The server could not be started; the message says why and carries the log tail."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the pieces of a pip-installed Triton live, for one virtual environment."""

    env_dir: Path
    server_dir: Path
    libs_dir: Path
    python_libdir: str
    python_version: str

    @classmethod
    def discover(cls, env_dir: Path = DEFAULT_ENV_DIR) -> TritonInstall:
        python = env_dir / "bin" / "python"
        if not python.exists():
            raise TritonStartError(
                f"no Triton environment at {env_dir}: run `make triton-env` "
                "(a venv with nvidia-pytriton==0.7.0, numpy<2 and onnxruntime)"
            )
        probe = (
            "import json, sys, sysconfig; print(json.dumps({'purelib': sysconfig.get_paths()['purelib'],"
            " 'libdir': sysconfig.get_config_var('LIBDIR'), 'version': '%d.%d' % sys.version_info[:2]}))"
        )
        out = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True).stdout
        info = json.loads(out)
        site = Path(info["purelib"])
        install = cls(
            env_dir=env_dir,
            server_dir=site / "pytriton" / "tritonserver",
            libs_dir=site / "nvidia_pytriton.libs",
            python_libdir=info["libdir"],
            python_version=info["version"],
        )
        if not install.binary.exists():
            raise TritonStartError(f"{install.binary} is missing: install nvidia-pytriton==0.7.0 into {env_dir}")
        if not install.stub.exists():
            raise TritonStartError(
                f"no Python backend stub for Python {install.python_version} in {install.server_dir}"
            )
        return install

    @property
    def binary(self) -> Path:
        return self.server_dir / "bin" / "tritonserver"

    @property
    def stub(self) -> Path:
        return self.server_dir / "python_backend_stubs" / self.python_version / "triton_python_backend_stub"

    def build_backend_dir(self, target: Path) -> Path:
        """Assemble ``python/`` and the local ``onnxruntime/`` backend under ``target``."""
        python_dir = target / "python"
        python_dir.mkdir(parents=True, exist_ok=True)
        source = self.server_dir / "backends" / "python"
        shutil.copy2(source / "libtriton_python.so", python_dir / "libtriton_python.so")
        shutil.copy2(source / "triton_python_backend_utils.py", python_dir / "triton_python_backend_utils.py")
        (python_dir / "triton_python_backend_stub").symlink_to(self.stub)
        for backend in BACKENDS_SOURCE.iterdir():
            if (backend / "model.py").is_file():
                shutil.copytree(backend, target / backend.name, ignore=shutil.ignore_patterns("__pycache__"))
        return target

    def environment(self, base: Mapping[str, str], cpu_only: bool) -> dict[str, str]:
        """Process environment for the server and its Python stubs."""
        env = dict(base)
        # The stub embeds CPython in isolated mode and finds packages through `python3` on PATH,
        # and must load the libpython of that same interpreter, not the system's.
        env["PATH"] = f"{self.env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        lib_path = [self.python_libdir, str(self.libs_dir)]
        if env.get("LD_LIBRARY_PATH"):
            lib_path.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_path)
        env.pop("VIRTUAL_ENV", None)
        env.pop("PYTHONHOME", None)
        if cpu_only:
            env["TRITON_SERVER_CPU_ONLY"] = "1"
        # Never let the AWS SDK inside Triton query the cloud metadata address.
        env.setdefault("AWS_DEFAULT_REGION", env.get("AWS_REGION", "us-east-1"))
        env["AWS_EC2_METADATA_DISABLED"] = "true"
        env.setdefault("MALLOC_ARENA_MAX", MALLOC_ARENA_MAX)
        return env


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port that nothing listens on right now (for tests and parallel servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class TritonServer:
    """One local ``tritonserver`` process. Use as a context manager, or call start()/stop()."""

    model_repository: str
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    model_control_mode: ModelControlMode = "none"
    load_models: Sequence[str] = ()
    repository_poll_secs: int = 2
    model_config_name: str | None = None
    """``--model-config-name``; None: ``cpu`` when ``cpu_only`` (models with ``configs/cpu.pbtxt`` load their CPU
    variant, the others ``config.pbtxt``), else none. "" passes no flag even on a CPU-only server."""
    startup_timeout: float = 90.0
    exit_timeout: int = 10
    cpu_only: bool = True
    env_dir: Path = DEFAULT_ENV_DIR
    log_file: Path | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    extra_args: Sequence[str] = ()
    name: str = "Triton"
    otlp_endpoint: str | None = None
    """OpenTelemetry collector (OTLP/HTTP, ``http://host:port``): Triton traces every inference request in its
    OpenTelemetry trace mode, continuing the trace of the request's W3C ``traceparent`` (the facade sends it),
    and exports the spans (JSON) to ``<endpoint>/v1/traces``. None (the default): no tracing flags at all."""
    trace_rate: int = 1
    """With ``otlp_endpoint``: trace one request in ``trace_rate``."""

    def __post_init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._shm_prefix = shm_prefix()
        self._log_path: Path | None = None
        self._starts = 0

    @classmethod
    def on_free_ports(cls, model_repository: str | Path, **kwargs: object) -> TritonServer:
        """A server on three free local ports (tests, benchmarks, parallel runs)."""
        ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
        return cls(model_repository=str(model_repository), **{**ports, **kwargs})  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit status of a server that exited by itself (None while running or once stopped)."""
        return self._process.poll() if self._process else None

    def note(self, message: str) -> None:
        """Append a line to the server log (the supervisor records restarts there)."""
        append_note(self._log_path, message)

    def command(self, install: TritonInstall, backend_dir: Path) -> list[str]:
        args = [
            str(install.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_dir}",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            "--pinned-memory-pool-byte-size=0",
            f"--exit-timeout-secs={self.exit_timeout}",
            f"--model-control-mode={self.model_control_mode}",
            "--strict-readiness=true",
        ]
        if self.model_control_mode == "poll":
            args.append(f"--repository-poll-secs={self.repository_poll_secs}")
        args += [f"--load-model={m}" for m in self.load_models]
        config_name = self.model_config_name
        if config_name is None:
            config_name = CPU_CONFIG_NAME if self.cpu_only else ""
        if config_name:
            args.append(f"--model-config-name={config_name}")
        return [*args, *self.trace_args(), *self.extra_args]

    def trace_args(self) -> list[str]:
        """Triton 2.51's OpenTelemetry trace mode (``--trace-config``), when ``otlp_endpoint`` is set."""
        if not self.otlp_endpoint:
            return []
        return [
            "--trace-config=mode=opentelemetry",
            "--trace-config=level=TIMESTAMPS",
            f"--trace-config=rate={self.trace_rate}",
            "--trace-config=count=-1",
            f"--trace-config=opentelemetry,url={self.otlp_endpoint.rstrip('/')}/v1/traces",
            f"--trace-config=opentelemetry,resource=service.name={TRITON_SERVICE_NAME}",
        ]

    def _preflight(self) -> None:
        repo = self.model_repository
        if "://" not in repo:
            path = Path(repo)
            if not path.is_dir():
                raise TritonStartError(f"model repository {path} does not exist or is not a directory")
        for name, port in (("HTTP", self.http_port), ("gRPC", self.grpc_port), ("metrics", self.metrics_port)):
            if port_in_use(self.host, port):
                raise TritonStartError(
                    f"Triton {name} port {self.host}:{port} is already in use "
                    "(another Triton running? stop it or choose other ports)"
                )

    def start(self) -> TritonServer:
        if self._process is not None:
            raise TritonStartError("server already started")
        self._preflight()
        install = TritonInstall.discover(self.env_dir)
        self._workdir = Path(tempfile.mkdtemp(prefix="mtc-triton-"))
        backend_dir = install.build_backend_dir(self._workdir / "backends")
        self._log_path = self.log_file or self._workdir / "tritonserver.log"
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        env = install.environment({**os.environ, **self.extra_env}, cpu_only=self.cpu_only)
        self._starts += 1
        try:
            # A restart appends to a given log file: the crash it follows stays readable above it.
            with open(self._log_path, "wb" if self._starts == 1 or self.log_file is None else "ab") as log:
                self._process = subprocess.Popen(
                    self.command(install, backend_dir),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,  # its own process group: stubs are killed with it
                )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._process is not None
        wait_until_ready(
            self._process,
            self.is_ready,
            self.startup_timeout,
            exited=lambda code: TritonStartError(
                f"tritonserver exited with code {code} during start-up.\n{self.log_tail()}"
            ),
            timed_out=lambda: TritonStartError(
                f"tritonserver was not ready after {self.startup_timeout:.0f}s (stopped it).\n{self.log_tail()}"
            ),
        )

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 40) -> str:
        if not self._log_path or not self._log_path.exists():
            return "(no server log)"
        text = self._log_path.read_text(errors="replace").splitlines()
        tail = "\n".join(text[-lines:])
        return f"--- last {min(lines, len(text))} lines of {self._log_path} ---\n{tail}"

    def stop(self) -> None:
        """SIGINT, wait for Triton's own exit timeout, then SIGKILL the group; clean /dev/shm."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=self.exit_timeout + 5)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # stubs left behind by a hung server die with the group
            process.wait()
        for region in SHM_DIR.glob(f"{self._shm_prefix}*"):
            region.unlink(missing_ok=True)
        if self._workdir is not None:
            keep_log = self.log_file is None and self._log_path is not None and self._log_path.exists()
            if keep_log and self._log_path is not None:
                # keep the log of a finished run next to the temp dir's parent for post-mortems
                final = Path(tempfile.gettempdir()) / f"{self._workdir.name}.log"
                shutil.move(str(self._log_path), final)
                self._log_path = final
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def shm_prefix(run_id: str | None = None) -> str:
    """A fresh ``shm-region-prefix-name`` for one launch: ``mtc_[<run id>_]<launch id>_``.

    ``run_id`` (default ``$MTC_RUN_ID``) groups the regions of every launch of one run (a test
    session), so whatever a run left behind can be told from another run's live regions.
    """
    run = re.sub(r"[^A-Za-z0-9]", "", os.environ.get(RUN_ID_ENV, "") if run_id is None else run_id)[:16]
    return f"mtc_{run}_{uuid.uuid4().hex[:10]}_" if run else f"mtc_{uuid.uuid4().hex[:10]}_"


def shm_regions(run_id: str | None = None) -> Iterator[Path]:
    """Python-backend shared-memory regions created by this launcher: any launch, or those of ``run_id``."""
    return SHM_DIR.glob(f"mtc_{run_id}_*" if run_id else "mtc_*")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local Triton Inference Server until Ctrl-C or SIGTERM.")
    parser.add_argument("--model-repository", default=str(PROJECT_ROOT / "model_repository"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--model-control-mode", choices=["none", "poll", "explicit"], default="none")
    parser.add_argument("--startup-timeout", type=float, default=90.0)
    args = parser.parse_args(argv)
    stop_on_signals()
    server = TritonServer(
        model_repository=args.model_repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        model_control_mode=args.model_control_mode,
        startup_timeout=args.startup_timeout,
    )
    return serve_until_stopped(
        server,
        ready=lambda: f"Triton ready: HTTP {server.url}  gRPC {server.grpc_url}  metrics {server.metrics_url}",
        died=lambda: f"tritonserver exited unexpectedly.\n{server.log_tail()}",
    )


if __name__ == "__main__":
    raise SystemExit(main())
