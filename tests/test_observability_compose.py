"""The compose observability profiles (tracing: Jaeger; monitoring: Prometheus + Grafana), rendered by the real
Compose v2 binary, and the Grafana dashboard JSON they provision."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from frontend_api.settings import ApiSettings
from tests.test_deploy_compose import BASE, CPU, DASHBOARD_KEY, REQUIRED_ENV, ROOT, compose_binary, rendered

GRAFANA = ROOT / "observability" / "grafana"
RULES = ROOT / "observability" / "prometheus" / "rules.yml"


def with_profiles(tmp_path: Path, env: dict[str, str], *profiles: str, files: tuple[Path, ...] = (BASE,)) -> Any:
    env_file = tmp_path / "profiles.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    args = [str(compose_binary()), "--project-directory", str(ROOT), "--env-file", str(env_file)]
    for path in files:
        args += ["-f", str(path)]
    for profile in profiles:
        args += ["--profile", profile]
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        [*args, "config", "--format", "json"], capture_output=True, text=True, env=clean, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def trace_setting(command: list[str], key: str) -> str:
    """The value of Triton's ``--trace-config=<key>=<value>`` flag (given once)."""
    values = [arg.removeprefix(f"--trace-config={key}=") for arg in command if arg.startswith(f"--trace-config={key}=")]
    assert len(values) == 1, command
    return values[0]


def test_observability_services_start_only_with_their_profile(tmp_path: Path) -> None:
    base = rendered(tmp_path, [BASE], REQUIRED_ENV)
    assert not {"jaeger", "prometheus", "grafana"} & set(base)
    assert "jaeger" in with_profiles(tmp_path, REQUIRED_ENV, "tracing")["services"]
    assert {"prometheus", "grafana"} <= set(with_profiles(tmp_path, REQUIRED_ENV, "monitoring")["services"])


def test_tracing_is_off_unless_configured_and_then_reaches_jaeger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for files in ((BASE,), (BASE, CPU)):
        off = with_profiles(tmp_path, REQUIRED_ENV, files=files)["services"]
        for key, value in off["api"]["environment"].items():
            monkeypatch.setenv(key, value)
        assert ApiSettings(_env_file=None).otlp_endpoint is None  # type: ignore[call-arg]
        assert trace_setting(off["triton"]["command"], "level") == "OFF"
        env = {**REQUIRED_ENV, "MTC_OTLP_ENDPOINT": "http://jaeger:4318", "MTC_TRITON_TRACE_LEVEL": "TIMESTAMPS"}
        on = with_profiles(tmp_path, env, "tracing", files=files)
        services = on["services"]
        assert services["api"]["environment"]["MTC_API_OTLP_ENDPOINT"] == "http://jaeger:4318"
        command = services["triton"]["command"]
        assert "--trace-config=mode=opentelemetry" in command
        assert trace_setting(command, "level") == "TIMESTAMPS"
        assert trace_setting(command, "opentelemetry,url") == "http://jaeger:4318/v1/traces"
        jaeger = services["jaeger"]
        assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
        assert [(p["host_ip"], int(p["target"])) for p in jaeger["ports"]] == [("127.0.0.1", 16686)]


def test_prometheus_reads_the_repository_config_and_the_dashboard_key(tmp_path: Path) -> None:
    services = with_profiles(tmp_path, REQUIRED_ENV, "monitoring")
    prometheus = services["services"]["prometheus"]
    mounts = {
        v["target"]: (v["source"], v.get("read_only", False)) for v in prometheus["volumes"] if v["type"] == "bind"
    }
    assert mounts["/etc/prometheus"] == (str(RULES.parent), True)
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    # the secret is the dashboard's key, which the facade accepts; the config reads it from /run/secrets
    assert [s["source"] for s in prometheus["secrets"]] == ["mtc_metrics_key"]
    assert services["secrets"]["mtc_metrics_key"]["environment"] == "MTC_DASHBOARD_API_KEY"
    assert DASHBOARD_KEY in json.loads(REQUIRED_ENV["MTC_API_API_KEYS"])
    config = (RULES.parent / "prometheus.yml").read_text()
    assert "/run/secrets/mtc_metrics_key" in config and '"api:8080"' in config and '"triton:8002"' in config
    assert prometheus["depends_on"]["api"]["condition"] == "service_healthy"
    assert all(p["host_ip"] == "127.0.0.1" for p in prometheus["ports"])


def test_grafana_has_no_default_login_and_provisions_the_dashboard(tmp_path: Path) -> None:
    services = with_profiles(tmp_path, REQUIRED_ENV, "monitoring")["services"]
    grafana = services["grafana"]
    environment = grafana["environment"]
    assert environment["GF_SECURITY_ADMIN_PASSWORD"] == REQUIRED_ENV["MTC_DASHBOARD_PASSWORD"]
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and environment["GF_USERS_ALLOW_SIGN_UP"] == "false"
    mounts = {v["target"]: v["source"] for v in grafana["volumes"] if v["type"] == "bind"}
    assert mounts["/etc/grafana/provisioning"] == str(GRAFANA / "provisioning")
    assert mounts["/var/lib/grafana/dashboards"] == str(GRAFANA / "dashboards")
    provider = (GRAFANA / "provisioning" / "dashboards" / "mtc.yml").read_text()
    assert "path: /var/lib/grafana/dashboards" in provider
    home = environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (GRAFANA / "dashboards" / Path(home).name).is_file() and home.startswith("/var/lib/grafana/dashboards/")
    assert all(p["host_ip"] == "127.0.0.1" for p in grafana["ports"])


def dashboard_expressions() -> list[str]:
    document = json.loads((GRAFANA / "dashboards" / "mtc.json").read_text())
    return [target["expr"] for panel in document["panels"] for target in panel["targets"]]


def test_dashboard_panels_use_the_provisioned_data_source_and_known_series() -> None:
    document = json.loads((GRAFANA / "dashboards" / "mtc.json").read_text())
    datasource = (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    uid = re.search(r"uid: (\S+)", datasource)
    assert uid is not None and "url: http://prometheus:9090" in datasource
    assert document["uid"] and document["time"]["from"] == "now-15m"
    recorded = set(re.findall(r"- record: (\S+)", RULES.read_text()))
    for panel in document["panels"]:
        assert panel["datasource"]["uid"] == uid.group(1), panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"[a-z_]+:[a-z0-9_:]+|mtc_api_[a-z_]+|nv_[a-z_]+", target["expr"]))
            unknown = {n for n in names if ":" in n and n not in recorded}
            assert not unknown, (panel["title"], unknown)
    # every recording rule the issue asks for has a panel
    used = " ".join(dashboard_expressions())
    for rule in (
        "task:mtc_api_requests:rate1m",
        "task:mtc_api_errors:rate1m",
        "task:mtc_api_request_duration_seconds:p95_1m",
        "model:nv_inference_queue_ms:avg1m",
        "model:nv_inference_batch_size:avg1m",
    ):
        assert rule in used
