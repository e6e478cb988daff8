"""Default backup and automatic restore, whole DAG runs with real restic: a workload
that names a BackupTemplate is backed up with no Restic; its restore-if-empty DAG
restores the latest snapshot into its volume when that is empty (the workload
recreated on a fresh node) and leaves a volume that holds data byte for byte as it was,
saying "skipped: not empty" in the run and the status."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from stashtest import (
    PASSWORD,
    backup_template_doc,
    build_dag,
    deployment_doc,
    make_tree,
    repository_doc,
    restic_snapshots,
    run_dag,
    secret_doc,
    task_states,
    tree_state,
    write_manifests,
    xcom,
)

pytestmark = pytest.mark.slow
NS = "demo"
BACKUP_DAG = "stash-backup.demo.template-default.deployment.app"
RESTORE_DAG = "stash-recovery.demo.if-empty.deployment.app"


def docs(root: Path, source: Path) -> list[dict[str, Any]]:
    app = deployment_doc("app", NS, source)
    app["metadata"]["annotations"] = {
        "stash.appscode.com/backup-template": "default",
        "stash.appscode.com/restore-if-empty": "true",
    }
    return [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        repository_doc(
            "repo", NS, {"local": {"mountPath": "/repo", "hostPath": {"path": str(root / "repo")}}}
        ),
        backup_template_doc("default", "repo"),
        app,
    ]


def recovery_status(state: Path) -> dict[str, Any]:
    path = state / "recoveries" / NS / "if-empty.deployment.app.json"
    status: dict[str, Any] = json.loads(path.read_text())["status"]
    return status


def test_restore_if_empty_restores_an_empty_volume_and_never_touches_a_full_one(
    airflow_db: None, stash_env: dict[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    root, state = stash_env["root"], stash_env["state"]
    source = make_tree(root / "volume", seed=11, small_files=300)
    original = tree_state(source)
    write_manifests(stash_env["manifests"], docs(root, source))

    # 1. The template's backup DAG backs the workload up, as a Restic's would.
    backup = run_dag(build_dag(BACKUP_DAG))
    assert set(task_states(backup).values()) == {"success"}
    (snap,) = restic_snapshots(root / "repo" / "volumes" / "deployment" / "app")
    assert "restic=template-default" in snap["tags"] and "target=deployment.app" in snap["tags"]

    # 2. The workload comes back on a fresh node: its volume is an empty folder.
    shutil.rmtree(source)
    source.mkdir()
    restored = run_dag(build_dag(RESTORE_DAG))
    assert task_states(restored) == {"restore": "success", "update_status": "success"}
    assert tree_state(source) == original
    assert recovery_status(state)["phase"] == "Succeeded"
    assert [(s["path"], s["phase"]) for s in recovery_status(state)["stats"]] == [
        ("/source/data", "Succeeded")
    ]

    # 3. A volume that holds data (even other data than the snapshot's) is left alone.
    (source / "written-by-the-app.txt").write_text("new data, not in any snapshot\n")
    shutil.rmtree(source / "small")
    before = tree_state(source)
    capfd.readouterr()
    skipped = run_dag(build_dag(RESTORE_DAG))
    assert task_states(skipped) == {"restore": "success", "update_status": "success"}
    assert tree_state(source) == before
    (result,) = xcom(skipped, "restore")["restores"]
    assert result["skipped"] == "not empty" and result["snapshot_ids"] == []
    stats = xcom(skipped, "update_status")["stats"]
    assert stats == [
        {"path": "/source/data", "phase": "Skipped", "reason": "not empty", "duration": None}
    ]
    assert recovery_status(state)["stats"] == stats
    out = capfd.readouterr()
    assert "/source/data: skipped: not empty" in out.out + out.err
    assert PASSWORD not in out.out + out.err
    assert not list(root.glob(".stash-restore-*"))  # no staging left beside the volume
