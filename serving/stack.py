"""``make run``: the whole platform on one machine, kept running, stopped cleanly.

1. builds the demo models (``export build --profile quick``) for tasks that have none;
2. starts the local S3 server (SeaweedFS, data in ``.cache/s3``, kept across runs) and pushes
   ``model_repository/`` into it (only files whose size or MD5 changed move);
3. starts Triton on ``s3://...`` (poll mode: a pushed version is picked up without a restart);
4. starts the facade (``python -m frontend_api``) and the dashboard (``python -m dashboard``), prints their URLs;
5. restarts any of them that dies (exponential backoff; the others keep running), and stops all of
   them in reverse order on Ctrl-C, SIGTERM or SIGHUP, or when one crash-loops
   (``MTC_MAX_RESTARTS`` restarts within ``MTC_RESTART_WINDOW_S``).

:class:`LocalStack` is the library (tests start it with their own settings); :func:`main` only adds
the model build, signal handling and messages.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving.processes import ManagedProcess, ProcessStartError, free_ports, python_module, stop_on_signals
from serving.prometheus import INSTALL_HINT as PROMETHEUS_INSTALL_HINT
from serving.prometheus import find_prometheus, prometheus_process, write_local_config
from serving.s3 import S3Server
from serving.supervisor import CrashLoop, RestartPolicy, Supervisor
from serving.triton import PROJECT_ROOT, TritonServer, port_in_use
from taskspec import TASKS

PROMETHEUS_MISSING = (
    f"==> Prometheus is not installed: not started ({PROMETHEUS_INSTALL_HINT}; "
    "MTC_START_PROMETHEUS=false skips it without this message)"
)
LOCAL_S3_ACCESS_KEY_ID = "local"
LOCAL_S3_SECRET_ACCESS_KEY = "local-secret"  # the loopback-only local server's key, not a secret


class StackSettings(BaseSettings):
    """Ports and locations of the local stack (environment variables with the ``MTC_`` prefix)."""

    model_config = SettingsConfigDict(env_prefix="MTC_", env_file=".env", extra="ignore")

    host: str = Field("127.0.0.1", description="Address every local service binds to")
    triton_http_port: int = Field(8000, description="Triton HTTP/REST port")
    triton_grpc_port: int = Field(8001, description="Triton gRPC port")
    triton_metrics_port: int = Field(8002, description="Triton Prometheus metrics port")
    api_port: int = Field(8080, description="Facade (FastAPI) port")
    dashboard_port: int = Field(5006, description="Dashboard (Panel) port")
    s3_port: int = Field(9000, description="Local S3 server (SeaweedFS) port; its other components use free ports")
    s3_data_dir: Path = Field(
        PROJECT_ROOT / ".cache" / "s3", description="Where the local S3 server keeps its data (kept across runs)"
    )
    model_repository: Path = Field(PROJECT_ROOT / "model_repository", description="Local model repository")
    serve_from_s3: bool = Field(True, description="Push the repository to the local S3 server and serve it from there")
    models_bucket: str = Field("mtc-models", description="Bucket holding the model repository")
    models_prefix: str = Field("model_repository", description="Key prefix of the model repository")
    uploads_bucket: str = Field("mtc-uploads", description="Bucket for images uploaded through presigned URLs")
    log_dir: Path = Field(PROJECT_ROOT / ".cache" / "logs", description="Where each service writes its log")
    build_missing_models: bool = Field(True, description="Run `export build --profile quick` when models are missing")
    start_dashboard: bool = Field(True, description="Start the dashboard (false: S3, Triton and the facade only)")
    max_restarts: int = Field(5, description="Restarts of one service within restart_window_s before giving up")
    start_prometheus: bool = Field(
        True,
        description="Start a Prometheus server scraping the facade and Triton (when the `prometheus` binary is "
        "installed; otherwise a message says how to install it)",
    )
    prometheus_port: int = Field(9090, description="Prometheus port")
    prometheus_data_dir: Path = Field(
        PROJECT_ROOT / ".cache" / "prometheus", description="Where Prometheus keeps its time series (3 days)"
    )
    otlp_endpoint: str | None = Field(
        None,
        description="OpenTelemetry collector (OTLP/HTTP, http://host:4318): the facade and Triton (its OpenTelemetry "
        "trace mode) send their spans there; unset (the default): no tracing",
    )
    restart_window_s: float = Field(300.0, description="Window (seconds) in which max_restarts is counted")

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @classmethod
    def on_free_ports(cls, **overrides: Any) -> StackSettings:
        """Loopback settings with every port free right now (tests, benchmarks, a second stack beside
        ``make run``); ``overrides`` set the other fields. Prometheus is off unless ``start_prometheus=True`` is
        given (with a ``prometheus_data_dir`` of its own: two servers cannot share one)."""
        http, grpc, metrics, api, dashboard, s3, prometheus = free_ports(7)
        ports = {
            "prometheus_port": prometheus,
            "triton_http_port": http,
            "triton_grpc_port": grpc,
            "triton_metrics_port": metrics,
            "api_port": api,
            "dashboard_port": dashboard,
            "s3_port": s3,
        }
        return cls(**{"host": "127.0.0.1", "start_prometheus": False, **ports, **overrides})


def missing_models(repository: Path) -> list[str]:
    """Tasks without a servable version: none published, or (tasks with a CPU variant) the latest one lacks
    the file that ``configs/cpu.pbtxt`` serves (published before the variant existed); and the parent of such a
    variant (``sentiment_tiny``) when the parent has no trained checkpoint to distil from."""
    from export.publish import latest_version_dir

    missing = []
    for name, spec in TASKS.items():
        latest = latest_version_dir(repository, name)
        if latest is None or (spec.cpu is not None and not (latest / spec.cpu.model_file).is_file()):
            missing.append(name)
    # A variant is distilled from its task's trained checkpoint (export.build.find_teacher): a task published
    # without one (by a build from before the variants) is rebuilt with it, before it (TASKS order).
    for name in list(missing):
        parent = TASKS[name].variant_of
        if parent is not None and parent not in missing and not _has_checkpoint(repository, parent):
            missing.append(parent)
    return [name for name in TASKS if name in missing]


def _has_checkpoint(repository: Path, task: str) -> bool:
    from export.hf_checkpoint import checkpoint_dir
    from export.publish import latest_version_dir

    latest = latest_version_dir(repository, task)
    return latest is not None and (checkpoint_dir(repository, task, latest.name) / "config.json").is_file()


def build_models(repository: Path, tasks: list[str]) -> None:
    from export.recipes import quick_build_estimate

    print(
        f"==> No servable model for {', '.join(tasks)}: building the quick demo models ({quick_build_estimate(tasks)})"
    )
    command = python_module(
        "export", "build", "--profile", "quick", "--repository", str(repository), "--tasks", ",".join(tasks)
    )
    if subprocess.run(command, check=False).returncode != 0:
        raise SystemExit("error: building the demo models failed (see above); `make models` retries")


def s3_env(settings: StackSettings) -> dict[str, str]:
    """The local S3 server's credentials (it accepts only these) and no metadata-address lookups."""
    return {
        "AWS_ACCESS_KEY_ID": LOCAL_S3_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": LOCAL_S3_SECRET_ACCESS_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


class LocalStack:
    """S3 server, Triton, facade and dashboard on one machine, under one :class:`Supervisor`.

    ``start()`` starts them in order (and stops what it started if one fails), ``watch()`` keeps them
    running until ``until()`` is true or a crash loop (:class:`CrashLoop`), ``stop()`` stops all.
    """

    def __init__(self, settings: StackSettings, *, echo: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.repository = settings.model_repository.resolve()
        self._echo = echo or (lambda line: print(line, flush=True))
        self.supervisor = Supervisor(
            RestartPolicy(max_restarts=settings.max_restarts, window_s=settings.restart_window_s), echo=self._echo
        )
        host, logs, env = settings.host, settings.log_dir, s3_env(settings)
        self.s3 = S3Server(
            settings.s3_data_dir,
            logs / "s3.log",
            access_key_id=env["AWS_ACCESS_KEY_ID"],
            secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            host=host,
            port=settings.s3_port,
        )
        model_repository = str(self.repository)
        if settings.serve_from_s3:
            from export.s3sync import S3Location

            model_repository = S3Location.parse(self.models_url).triton_url(settings.s3_endpoint)
        self.triton = TritonServer(
            model_repository=model_repository,
            host=host,
            http_port=settings.triton_http_port,
            grpc_port=settings.triton_grpc_port,
            metrics_port=settings.triton_metrics_port,
            model_control_mode="poll",
            repository_poll_secs=10,
            log_file=logs / "triton.log",
            extra_env=env,
            startup_timeout=180,
            otlp_endpoint=settings.otlp_endpoint or None,
        )
        tracing = {"MTC_API_OTLP_ENDPOINT": settings.otlp_endpoint} if settings.otlp_endpoint else {}
        self.api = ManagedProcess(
            name="facade",
            # The checked launcher: it refuses a bind beyond loopback without API keys (docs/api.md).
            command=python_module("frontend_api"),
            ready_url=f"{self.api_url}/healthz",
            log_file=logs / "api.log",
            env={
                **env,
                "MTC_API_HOST": host,
                "MTC_API_PORT": str(settings.api_port),
                "MTC_API_TRITON_URL": f"{host}:{settings.triton_http_port}",
                "MTC_API_TRITON_GRPC_URL": f"{host}:{settings.triton_grpc_port}",
                "MTC_API_MODEL_REPOSITORY": str(self.repository),
                "MTC_API_S3_ENDPOINT_URL": settings.s3_endpoint,
                "MTC_API_UPLOAD_BUCKET": settings.uploads_bucket,
                "MTC_API_ALLOWED_HTTP_HOSTS": f'["{host}:{settings.s3_port}"]',
                **tracing,
            },
            cwd=PROJECT_ROOT,
        )
        self.prometheus: ManagedProcess | None = None
        self.prometheus_config = settings.log_dir / "prometheus.yml"
        self.prometheus_missing = False
        self.prometheus_targets = {
            "mtc-api": [f"{host}:{settings.api_port}"],
            "triton": [f"{host}:{settings.triton_metrics_port}"],
        }
        if settings.start_prometheus:
            binary = find_prometheus()
            self.prometheus_missing = binary is None
            if binary is not None:
                self.prometheus = prometheus_process(
                    binary,
                    self.prometheus_config,
                    host=host,
                    port=settings.prometheus_port,
                    data_dir=settings.prometheus_data_dir,
                    log_file=logs / "prometheus.log",
                )
        dashboard_origin = f"{host}:{settings.dashboard_port}"
        self.dashboard: ManagedProcess | None = None
        if settings.start_dashboard:
            self.dashboard = ManagedProcess(
                name="dashboard",
                # The checked launcher: it refuses a bind beyond loopback without a login (docs/dashboard.md).
                command=python_module("dashboard"),
                ready_url=f"http://{dashboard_origin}/app",
                log_file=logs / "dashboard.log",
                env={
                    "MTC_DASHBOARD_API_URL": self.api_url,
                    "MTC_DASHBOARD_ADDRESS": host,
                    "MTC_DASHBOARD_PORT": str(settings.dashboard_port),
                    "MTC_DASHBOARD_ORIGINS": f"{dashboard_origin},localhost:{settings.dashboard_port}",
                    # the Monitoring tab's live charts from Prometheus (its own samples when it is not there)
                    **({"MTC_DASHBOARD_PROMETHEUS_URL": self.prometheus_url} if self.prometheus is not None else {}),
                },
                cwd=PROJECT_ROOT,
            )

    @property
    def models_url(self) -> str:
        return f"s3://{self.settings.models_bucket}/{self.settings.models_prefix}"

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.api_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.prometheus_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.dashboard_port}/app"

    def start(self) -> None:
        """Start every service in order; on any failure (or Ctrl-C) stop what started, then raise."""
        try:
            self._start_all()
        except BaseException:
            self.stop()
            raise

    def _start_all(self) -> None:
        settings = self.settings
        self._echo(f"==> S3 server on {settings.s3_endpoint} (data in {settings.s3_data_dir})")
        self.supervisor.start(self.s3)
        from export.s3sync import S3Settings, ensure_bucket, make_client, push

        client = make_client(
            S3Settings(
                url=self.models_url,
                endpoint_url=settings.s3_endpoint,
                access_key_id=self.s3.access_key_id,
                secret_access_key=self.s3.secret_access_key,
            )
        )
        for bucket in (settings.models_bucket, settings.uploads_bucket):
            ensure_bucket(client, bucket)
        if settings.serve_from_s3:
            report = push(self.repository, self.models_url, client, progress=False)
            self._echo(f"==> Pushed {self.repository} to {self.models_url}: {report}")
        self._echo(f"==> Triton on {self.triton.model_repository}")
        self.supervisor.start(self.triton)
        self._echo(f"==> Facade on {self.api_url}")
        self.supervisor.start(self.api)
        if self.prometheus is not None:
            self._start_prometheus(self.prometheus)
        elif self.prometheus_missing:
            self._echo(PROMETHEUS_MISSING)
        if self.dashboard is not None:
            self._echo(f"==> Dashboard on {self.dashboard_url}")
            self.supervisor.start(self.dashboard)

    def _start_prometheus(self, prometheus: ManagedProcess) -> None:
        """Prometheus watches the platform; it is not part of it: when it cannot start, say why and go on."""
        settings = self.settings
        if port_in_use(settings.host, settings.prometheus_port):
            self._echo(
                f"==> Prometheus not started: port {settings.prometheus_port} is in use (a system Prometheus? "
                "`systemctl disable --now prometheus`, or set MTC_PROMETHEUS_PORT)"
            )
            self.prometheus = None
            return
        write_local_config(self.prometheus_config, self.prometheus_targets)
        self._echo(f"==> Prometheus on {self.prometheus_url} (data in {settings.prometheus_data_dir})")
        try:
            self.supervisor.start(prometheus)
        except ProcessStartError as exc:
            self._echo(f"==> Prometheus not started, going on without it: {exc}")
            self.prometheus = None

    def summary(self) -> str:
        lines = [f"The platform is up (logs in {self.settings.log_dir}):"]
        if self.dashboard is not None:
            lines.append(f"  Dashboard     {self.dashboard_url}")
        lines += [
            f"  REST API      {self.api_url}/docs",
            f"  Triton        {self.triton.url} (gRPC {self.triton.grpc_url}, metrics {self.triton.metrics_url})",
            f"  S3            {self.settings.s3_endpoint} (data in {self.settings.s3_data_dir})",
        ]
        if self.prometheus is not None:
            lines.append(f"  Prometheus    {self.prometheus_url} (recording rules: observability/prometheus/rules.yml)")
        lines += [
            "A service that dies is restarted. Press Ctrl-C to stop everything.",
        ]
        return "\n".join(lines)

    def watch(self, until: Callable[[], bool] = lambda: False) -> None:
        """Keep every service running until ``until()``; raises :class:`CrashLoop`."""
        self.supervisor.watch(until)

    def stop(self) -> None:
        self.supervisor.stop()

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line takes no options (settings come from ``MTC_*`` variables); ``--help`` lists them."""
    prefix = StackSettings.model_config.get("env_prefix", "")
    settings = "\n".join(
        f"  {prefix}{name.upper():<28} {field.description or ''}" for name, field in StackSettings.model_fields.items()
    )
    parser = argparse.ArgumentParser(
        prog="python -m serving.stack",
        description="Start S3 (SeaweedFS), Triton, the facade, the dashboard and Prometheus (what `make run` does); "
        "build the quick models first where the repository has none. Ctrl-C stops everything.",
        epilog=f"settings (environment variables or .env):\n{settings}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    parse_args(argv)  # --help prints the settings instead of starting (and building) anything
    stop_on_signals()  # SIGTERM / SIGHUP stop every child like Ctrl-C, from the first line on
    settings = StackSettings()
    repository = settings.model_repository.resolve()
    try:
        missing = missing_models(repository)
        if missing and settings.build_missing_models:
            build_models(repository, missing)
            missing = missing_models(repository)
        if missing:
            print(f"warning: no model for {', '.join(missing)}; those endpoints will report not ready", file=sys.stderr)
        stack = LocalStack(settings)
    except KeyboardInterrupt:
        return 130
    except ProcessStartError as exc:  # e.g. the SeaweedFS binary is missing
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        stack.start()
        print(f"\n{stack.summary()}", flush=True)
        stack.watch()
    except KeyboardInterrupt:
        print("\n==> Stopping...", flush=True)
    except CrashLoop as exc:
        print(f"error: {exc} (logs in {settings.log_dir})", file=sys.stderr)
        return 1
    except ProcessStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
    print("==> Stopped.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
