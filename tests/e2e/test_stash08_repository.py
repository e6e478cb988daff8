"""A repository written the way Stash 0.8 wrote it keeps working after migration.

Stash 0.8's sidecar ran ``restic backup PATH --force --hostname NAME`` into
``BACKEND/deployment/NAME``, PATH being the folder as the workload saw it. Here
restic does exactly that (PATH is a folder that only exists in a private mount
namespace, as the workload's mount only existed in its pod), then the 0.8-shaped
Restic and Recoveries run through their DAGs: ``latest`` finds the old snapshots,
retention counts old and new together, and an old snapshot named the old way
restores byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from stashtest import (
    PASSWORD,
    build_dag,
    deployment_doc,
    make_tree,
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
OLD_PATH = "/mnt/stash08/source/data"
"""The folder as Stash 0.8's sidecar saw it (the workload's mountPath)."""
BACKUP_DAG = "stash-backup.demo.app-backup.deployment.app"


def old_backup(repo: Path, source: Path, *tags: str) -> str:
    """``restic backup OLD_PATH --force --hostname app [--tag T]`` as Stash 0.8 ran it,
    with ``source`` seen at OLD_PATH; returns the snapshot's short id."""
    env = {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": PASSWORD}
    backup = ["restic", "backup", OLD_PATH, "--force", "--hostname", "app"]
    for tag in tags:
        backup += ["--tag", tag]
    script = (
        'mount -t tmpfs tmpfs /mnt && mkdir -p "$1" && mount --bind "$2" "$1" && shift 2 && "$@"'
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
        + [OLD_PATH, str(source), *backup],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 and "mount" in done.stderr and "restic" not in done.stderr:
        pytest.skip(f"cannot make a private mount namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    return sorted(restic_snapshots(repo), key=lambda s: s["time"])[-1]["short_id"]


def old_restic(backend: Path) -> dict[str, Any]:
    return {
        "apiVersion": "stash.appscode.com/v1alpha1",
        "kind": "Restic",
        "metadata": {"name": "app-backup", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "app"}},
            "fileGroups": [{"path": OLD_PATH, "retentionPolicyName": "keep-last-2"}],
            "backend": {
                "local": {"mountPath": "/safe/data", "hostPath": {"path": str(backend)}},
                "storageSecretName": "app-secret",
            },
            "schedule": "@every 1h",
            "volumeMounts": [{"name": "source-data", "mountPath": OLD_PATH}],
            "retentionPolicies": [{"name": "keep-last-2", "keepLast": 2, "prune": True}],
        },
    }


def old_recovery(name: str, target: Path, snapshot: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "repository": {"name": "deployment.app", "namespace": NS},
        "paths": [OLD_PATH],
        "recoveredVolumes": [{"mountPath": OLD_PATH, "hostPath": {"path": str(target)}}],
    }
    if snapshot:
        spec["snapshot"] = snapshot
    return {
        "apiVersion": "stash.appscode.com/v1alpha1",
        "kind": "Recovery",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def test_stash08_repository_keeps_working(
    tmp_path: Path, airflow_db: None, stash_env: dict[str, Path]
) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is needed to back up the way Stash 0.8 did")
    source = make_tree(tmp_path / "source", seed=8, small_files=60)
    backend = tmp_path / "backend"
    repo = backend / "deployment" / "app"  # MOUNTPATH/deployment/NAME, as Stash 0.8 had it
    repo.mkdir(parents=True)
    env = {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": PASSWORD}
    subprocess.run(["restic", "init"], env=env, check=True, capture_output=True)
    old_1 = old_backup(repo, source)
    (source / "old-2.txt").write_text("written before the second Stash 0.8 backup\n")
    state_old_2 = tree_state(source)
    old_2 = old_backup(repo, source)
    docs = [
        secret_doc("app-secret", NS, RESTIC_PASSWORD=PASSWORD),
        deployment_doc("app", NS, source, volume_name="source-data"),
        old_restic(backend),
    ]

    # latest, with only Stash 0.8's snapshots in the repository, is the newest of them.
    latest_dir = tmp_path / "restored-latest"
    write_manifests(stash_env["manifests"], [*docs, old_recovery("latest", latest_dir)])
    latest = run_dag(build_dag("stash-recovery.demo.latest"))
    assert task_states(latest) == {"restore": "success", "update_status": "success"}
    assert tree_state(latest_dir) == state_old_2

    # A backup of the migrated Restic goes into the same folder, with the same host;
    # keepLast 2 over 2 old + 1 new removes the oldest old one.
    (source / "new.txt").write_text("written after the migration\n")
    run = run_dag(build_dag(BACKUP_DAG))
    assert set(task_states(run).values()) == {"success"}, task_states(run)
    new = xcom(run, "backup")["backups"][0]["snapshot_id"]
    snaps = {s["short_id"]: s for s in restic_snapshots(repo)}
    assert set(snaps) == {old_2, new}, (old_1, old_2, new)
    assert snaps[new]["hostname"] == snaps[old_2]["hostname"] == "app"
    assert "namespace=demo" in snaps[new]["tags"] and snaps[old_2].get("tags") is None
    forget = xcom(run, "retention")["forgets"][0]
    assert (forget["kept"], forget["removed"]) == (2, 1)
    status = json.loads((stash_env["state"] / "repositories" / NS / "app-backup.json").read_text())
    entry = status["status"]["backupRepos"][0]
    assert entry["repoDir"] == "/deployment/app" and entry["snapshotCount"] == 2

    # The old snapshot, named the old way, restores byte for byte.
    named_dir = tmp_path / "restored-named"
    write_manifests(
        stash_env["manifests"], [*docs, old_recovery("named", named_dir, f"deployment.app-{old_2}")]
    )
    named = run_dag(build_dag("stash-recovery.demo.named"))
    assert task_states(named) == {"restore": "success", "update_status": "success"}
    assert tree_state(named_dir) == state_old_2
