"""The statsd metrics of real DAG runs, caught by a real UDP receiver.

A good backup, a maintenance run, a recovery and a failed backup (wrong password) run
as whole DAGs against real restic; each sends exactly the metrics below to
Airflow's ``[metrics]`` statsd address, and each maps to its Prometheus series.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stashtest import (
    PASSWORD,
    build_dag,
    deployment_doc,
    make_tree,
    map_statsd,
    parse_statsd,
    recovery_doc,
    repository_doc,
    restic_doc,
    restic_snapshots,
    run_dag,
    secret_doc,
    task_states,
    write_manifests,
    xcom,
)

pytestmark = pytest.mark.slow
NS = "demo"
BACKUP = "airflow.stash.backup.demo.app-backup.deployment_app.repo.volumes."
RECOVERY = "airflow.stash.recovery.demo.restore.repo."
REPOSITORY = "airflow.stash.repository.demo.repo."


@pytest.fixture
def statsd(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A UDP socket where Airflow's [metrics] settings send statsd metrics."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_ON", "True")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PORT", str(sock.getsockname()[1]))
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PREFIX", "airflow")
    yield sock
    sock.close()


def received(sock: socket.socket) -> dict[str, tuple[float, str]]:
    """Stash's metrics that arrived since the last call: name -> (value, kind)."""
    sock.settimeout(1.0)
    out: dict[str, tuple[float, str]] = {}
    try:
        while True:
            for name, value, kind in parse_statsd(sock.recv(65536).decode()):
                if name.startswith("airflow.stash."):
                    assert name not in out, f"{name} sent twice in one run"
                    out[name] = (value, kind)
    except TimeoutError:
        return out


def docs(root: Path, password: str = PASSWORD) -> list[dict[str, Any]]:
    return [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=password),
        deployment_doc("app", NS, root / "source"),
        repository_doc(
            "repo", NS, {"local": {"mountPath": "/repo", "hostPath": {"path": str(root / "repo")}}}
        ),
        restic_doc("app-backup", NS, "repo", "app", policy={"keepLast": 5}),
        recovery_doc("restore", NS, "repo", root / "restored"),
    ]


def between(value: float, start: float) -> bool:
    return start - 1 <= value <= time.time() + 1


def test_metrics_of_backups_a_recovery_and_a_maintenance_run(
    tmp_path: Path, airflow_db: None, stash_env: dict[str, Path], statsd: socket.socket
) -> None:
    make_tree(tmp_path / "source", seed=3, small_files=50)
    (tmp_path / "repo").mkdir()
    write_manifests(stash_env["manifests"], docs(tmp_path))

    # A good backup.
    start = time.time()
    run = run_dag(build_dag("stash-backup.demo.app-backup.deployment.app"))
    assert task_states(run)["update_status"] == "success"
    made = xcom(run, "backup")["backups"][0]
    got = received(statsd)
    assert between(got.pop(BACKUP + "last_success_timestamp")[0], start)
    duration = made["duration_seconds"]
    assert got.pop(BACKUP + "duration") == (pytest.approx(duration * 1000, abs=0.001), "observer")
    assert got.pop(BACKUP + "last_duration_seconds") == (pytest.approx(duration), "gauge")
    assert got == {
        BACKUP + "success": (1, "counter"),
        BACKUP + "schedule_interval_seconds": (3600, "gauge"),
        BACKUP + "bytes_added": (made["data_added"], "gauge"),
        BACKUP + "files_new": (made["files_new"], "gauge"),
        BACKUP + "files_changed": (0, "gauge"),
        BACKUP + "files_unmodified": (0, "gauge"),
        BACKUP + "snapshots": (1, "gauge"),
        BACKUP + "retention_snapshots_removed": (0, "gauge"),
    }
    assert made["files_new"] > 50 and made["data_added"] > 0
    assert map_statsd(BACKUP + "success", "counter") == (
        "stash_backup_success_total",
        {
            "namespace": "demo",
            "restic": "app-backup",
            "target": "deployment_app",
            "repository": "repo",
            "target_type": "volumes",
        },
    )

    # The Repository's maintenance: restic check, size, snapshots.
    start = time.time()
    run = run_dag(build_dag("stash-maintenance.demo.repo"))
    assert task_states(run) == {"check": "success", "update_status": "success"}
    checked = xcom(run, "check")
    assert checked["repo_dir"] == "/volumes/deployment/app"
    size = checked["result"]["size_bytes"]
    got = received(statsd)
    assert between(got.pop(REPOSITORY + "last_check_timestamp")[0], start)
    assert got == {
        REPOSITORY + "check_success": (1, "gauge"),
        REPOSITORY + "size_bytes": (size, "gauge"),
        REPOSITORY + "snapshots": (1, "gauge"),
        REPOSITORY + "stale_locks_removed": (0, "gauge"),
        BACKUP + "snapshots": (1, "gauge"),
    }
    assert size > made["data_added"] / 2
    assert map_statsd(REPOSITORY + "check_success", "gauge") == (
        "stash_repository_check_success",
        {"namespace": "demo", "repository": "repo"},
    )

    # A recovery.
    run = run_dag(build_dag("stash-recovery.demo.restore"))
    assert task_states(run)["update_status"] == "success"
    took = xcom(run, "restore")["restores"][0]["duration_seconds"]
    assert received(statsd) == {
        RECOVERY + "success": (1, "counter"),
        RECOVERY + "duration": (pytest.approx(took * 1000, abs=0.001), "observer"),
    }

    # A failed backup: the wrong password.
    write_manifests(stash_env["manifests"], docs(tmp_path, password="wrong-password"))
    start = time.time()
    run = run_dag(build_dag("stash-backup.demo.app-backup.deployment.app"))
    assert task_states(run)["update_status"] == "failed"
    got = received(statsd)
    assert between(got.pop(BACKUP + "last_failure_timestamp")[0], start)
    assert got == {
        BACKUP + "failure": (1, "counter"),
        BACKUP + "schedule_interval_seconds": (3600, "gauge"),
    }
    assert map_statsd(BACKUP + "failure", "counter") is not None
    assert len(restic_snapshots(tmp_path / "repo" / "volumes" / "deployment" / "app")) == 1

    # A damaged repository: the maintenance run says so, in metrics and in the status.
    write_manifests(stash_env["manifests"], docs(tmp_path))
    repo = tmp_path / "repo" / "volumes" / "deployment" / "app"
    next(p for p in sorted((repo / "data").rglob("*")) if p.is_file()).unlink()
    run = run_dag(build_dag("stash-maintenance.demo.repo"))
    assert task_states(run) == {
        "check": "success",  # the check ran; it found damage
        "update_status": "failed",
    }
    got = received(statsd)
    assert got[REPOSITORY + "check_success"] == (0, "gauge")
    status = json.loads((stash_env["state"] / "repositories" / NS / "repo.json").read_text())
    check = status["status"]["lastCheck"]
    assert check["result"] == "Failed"
    assert check["failure"] == "/volumes/deployment/app: restic check failed (restic exit 1)"
    assert status["status"]["backupRepos"][0]["backupCount"] == 1  # the history stays


def test_maintenance_run_checks_every_repo_dir_each_in_its_own_mapped_instance(
    tmp_path: Path, airflow_db: None, stash_env: dict[str, Path], statsd: socket.socket
) -> None:
    """Two targets, two repoDirs, one mapped ``check`` task: each repoDir gets its own
    instance, labelled with it in the UI, and the status names the one that failed."""
    import os
    import subprocess

    for name, password in (("app", PASSWORD), ("app2", "another-password")):
        where = tmp_path / "repo" / "volumes" / "deployment" / name
        env = {**os.environ, "RESTIC_REPOSITORY": str(where), "RESTIC_PASSWORD": password}
        subprocess.run(["restic", "init"], env=env, check=True, capture_output=True)
    write_manifests(
        stash_env["manifests"],
        [
            *docs(tmp_path),
            deployment_doc("app2", NS, tmp_path / "source2"),
            restic_doc("app2-backup", NS, "repo", "app2"),
        ],
    )
    run = run_dag(build_dag("stash-maintenance.demo.repo"))
    checks = {
        ti.rendered_map_index: str(ti.state)
        for ti in run.get_task_instances()
        if ti.task_id == "check"
    }
    # app2's repository does not open with the Repository's password: that check fails.
    assert checks == {"/volumes/deployment/app": "success", "/volumes/deployment/app2": "failed"}
    assert task_states(run)["update_status"] == "failed"
    status = json.loads((stash_env["state"] / "repositories" / NS / "repo.json").read_text())
    check = status["status"]["lastCheck"]
    assert check["result"] == "Failed"
    assert check["failure"].startswith("check.volumes.deployment.app2: ")
    assert "wrong repository password" in check["failure"]
    assert "deployment.app:" not in check["failure"]
    assert check["snapshotCount"] == 0  # the good one was counted
    assert received(statsd)[REPOSITORY + "check_success"] == (0, "gauge")
