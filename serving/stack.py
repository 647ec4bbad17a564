"""``make run``: the whole platform on one machine, stopped cleanly with Ctrl-C.

1. builds the demo models (``export build --profile quick``) for tasks that have none;
2. starts the local S3 server (SeaweedFS, data in ``.cache/s3``, kept across runs) and pushes
   ``model_repository/`` into it (only files whose size or MD5 changed move);
3. starts Triton on ``s3://...`` (poll mode: a pushed version is picked up without a restart);
4. starts the facade (uvicorn) and the dashboard (panel serve), prints their URLs;
5. on Ctrl-C, SIGTERM or SIGHUP (also during start-up), or when any of them dies, stops all of them
   in reverse order.
"""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving.processes import ManagedProcess, ProcessStartError, python_module, stop_on_signals
from serving.s3 import S3Server
from serving.triton import PROJECT_ROOT, TritonServer, TritonStartError
from taskspec import TASKS


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

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"


def missing_models(repository: Path) -> list[str]:
    """Tasks without a servable version: none published, or (tasks with a CPU variant) the latest one lacks
    the file that ``configs/cpu.pbtxt`` serves (published before the variant existed)."""
    from export.publish import latest_version_dir

    missing = []
    for name, spec in TASKS.items():
        latest = latest_version_dir(repository, name)
        if latest is None or (spec.cpu is not None and not (latest / spec.cpu.model_file).is_file()):
            missing.append(name)
    return missing


def build_models(repository: Path, tasks: list[str]) -> None:
    print(f"==> No servable model for {', '.join(tasks)}: building the quick demo models (about 5-10 minutes)")
    command = python_module(
        "export", "build", "--profile", "quick", "--repository", str(repository), "--tasks", ",".join(tasks)
    )
    if subprocess.run(command, check=False).returncode != 0:
        raise SystemExit("error: building the demo models failed (see above); `make models` retries")


def s3_env(settings: StackSettings) -> dict[str, str]:
    """The local S3 server's credentials (it accepts only these) and no metadata-address lookups."""
    return {
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local-secret",  # the loopback-only local server's key, not a secret
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def start(stack: ExitStack, name: str, service: ManagedProcess | S3Server | TritonServer) -> None:
    """Start ``service`` now; stop it (saying how long that took) when ``stack`` unwinds."""

    def stop() -> None:
        began = time.monotonic()
        service.stop()
        print(f"    stopped {name} ({time.monotonic() - began:.1f}s)", flush=True)

    service.start()
    stack.callback(stop)


def main() -> int:
    stop_on_signals()  # SIGTERM / SIGHUP stop every child like Ctrl-C, from the first line on
    try:
        return run()
    except KeyboardInterrupt:  # the ExitStack in run() has stopped everything it started
        print("==> Stopped.")
        return 0


def run() -> int:
    settings = StackSettings()
    repository = settings.model_repository.resolve()
    missing = missing_models(repository)
    if missing and settings.build_missing_models:
        build_models(repository, missing)
        missing = missing_models(repository)
    if missing:
        print(f"warning: no model for {', '.join(missing)}; those endpoints will report not ready", file=sys.stderr)

    host, logs = settings.host, settings.log_dir
    env = s3_env(settings)

    with ExitStack() as stack:
        try:
            print(f"==> S3 server on {settings.s3_endpoint} (data in {settings.s3_data_dir})")
            s3_server = S3Server(
                settings.s3_data_dir,
                logs / "s3.log",
                access_key_id=env["AWS_ACCESS_KEY_ID"],
                secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                host=host,
                port=settings.s3_port,
            )
            start(stack, "S3 server", s3_server)
            model_repository = str(repository)
            if settings.serve_from_s3:
                from export.s3sync import S3Location, S3Settings, ensure_bucket, make_client, push

                s3 = S3Settings(
                    url=f"s3://{settings.models_bucket}/{settings.models_prefix}",
                    endpoint_url=settings.s3_endpoint,
                    access_key_id=env["AWS_ACCESS_KEY_ID"],
                    secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                )
                client = make_client(s3)
                for bucket in (settings.models_bucket, settings.uploads_bucket):
                    ensure_bucket(client, bucket)
                print(f"==> Pushed {repository} to {s3.url}: {push(repository, s3.url, client, progress=False)}")
                model_repository = S3Location.parse(s3.url).triton_url(settings.s3_endpoint)

            print(f"==> Triton on {model_repository}")
            triton = TritonServer(
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
            )
            start(stack, "Triton", triton)

            api_env = {
                **env,
                "MTC_API_TRITON_URL": f"{host}:{settings.triton_http_port}",
                "MTC_API_MODEL_REPOSITORY": str(repository),
                "MTC_API_S3_ENDPOINT_URL": settings.s3_endpoint,
                "MTC_API_UPLOAD_BUCKET": settings.uploads_bucket,
                "MTC_API_ALLOWED_HTTP_HOSTS": f'["{host}:{settings.s3_port}"]',
            }
            print(f"==> Facade on http://{host}:{settings.api_port}")
            api = ManagedProcess(
                name="facade",
                command=python_module(
                    "uvicorn", "frontend_api.app:app", "--host", host, "--port", str(settings.api_port)
                ),
                ready_url=f"http://{host}:{settings.api_port}/healthz",
                log_file=logs / "api.log",
                env=api_env,
                cwd=PROJECT_ROOT,
            )
            start(stack, "facade", api)

            dashboard_origin = f"{host}:{settings.dashboard_port}"
            print(f"==> Dashboard on http://{dashboard_origin}")
            dashboard = ManagedProcess(
                name="dashboard",
                command=python_module(
                    "panel",
                    "serve",
                    str(PROJECT_ROOT / "dashboard" / "app.py"),
                    "--address",
                    host,
                    "--port",
                    str(settings.dashboard_port),
                    "--allow-websocket-origin",
                    dashboard_origin,
                    "--allow-websocket-origin",
                    f"localhost:{settings.dashboard_port}",
                ),
                ready_url=f"http://{dashboard_origin}/app",
                log_file=logs / "dashboard.log",
                env={"MTC_DASHBOARD_API_URL": f"http://{host}:{settings.api_port}"},
                cwd=PROJECT_ROOT,
            )
            start(stack, "dashboard", dashboard)
        except (TritonStartError, ProcessStartError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

        print(
            f"\nThe platform is up (logs in {logs}):\n"
            f"  Dashboard     http://{dashboard_origin}/app\n"
            f"  REST API      http://{host}:{settings.api_port}/docs\n"
            f"  Triton        {triton.url} (gRPC {triton.grpc_url}, metrics {triton.metrics_url})\n"
            f"  S3            {settings.s3_endpoint}\n"
            "Press Ctrl-C to stop everything.",
            flush=True,
        )
        services: dict[str, ManagedProcess | TritonServer] = {"Triton": triton, "facade": api, "dashboard": dashboard}
        try:
            while True:
                dead = [name for name, service in services.items() if not service.running]
                if dead:
                    print(f"error: {', '.join(dead)} stopped unexpectedly; see {logs}", file=sys.stderr)
                    return 1
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("\n==> Stopping...", flush=True)
    print("==> Stopped.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
