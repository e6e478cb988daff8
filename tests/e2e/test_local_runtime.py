"""Whole backup and recovery DAG runs on the local runtime, with real restic.

One module-wide story keeps the number of DAG runs modest: three backups (the second
incremental, the third trimmed by retention), restores of the latest snapshot, of a
named older one and of a subset, a refused restore, and failed runs that must leave
the last good status and every snapshot intact. Nothing may leak the password.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from stashtest import (
    PASSWORD,
    build_dag,
    deployment_doc,
    make_tree,
    recovery_doc,
    repository_doc,
    restic_doc,
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
BACKUP_DAG = "stash-backup.demo.app-backup.deployment.app"
REPO_DIR = "volumes/deployment/app"
build = build_dag


def repo_status(state: Path) -> dict[str, Any]:
    return json.loads((state / "repositories" / NS / "repo.json").read_text())["status"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("local-runtime")
    source = make_tree(root / "source", seed=7, small_files=2000)
    repo_root = root / "backend"
    repo_root.mkdir()
    return {"root": root, "source": source, "repo_root": repo_root, "repo": repo_root / REPO_DIR}


def base_docs(world: dict[str, Path], password: str = PASSWORD) -> list[dict[str, Any]]:
    return [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=password),
        deployment_doc("app", NS, world["source"]),
        repository_doc(
            "repo",
            NS,
            {"local": {"mountPath": "/repo", "hostPath": {"path": str(world["repo_root"])}}},
        ),
        restic_doc("app-backup", NS, "repo", "app", policy={"keepLast": 2, "prune": True}),
    ]


def test_backup_retention_and_recovery(
    world: dict[str, Path],
    airflow_db: None,
    stash_env: dict[str, Path],
    capfd: pytest.CaptureFixture[str],
) -> None:
    manifests, state, source = stash_env["manifests"], stash_env["state"], world["source"]
    write_manifests(manifests, base_docs(world))

    # 1. First backup: the repository is created and holds one snapshot of the tree.
    first = run_dag(build(BACKUP_DAG))
    assert task_states(first) == {
        k: "success" for k in ("backup", "retention", "verify", "update_status")
    }
    made = xcom(first, "backup")["backups"][0]
    assert made["path"] == "/source/data"
    assert made["files_new"] >= 2000
    snaps = restic_snapshots(world["repo"])
    assert len(snaps) == 1
    assert snaps[0]["paths"] == [str(source)]
    assert snaps[0]["hostname"] == "app"
    assert "namespace=demo" in snaps[0]["tags"] and "path=/source/data" in snaps[0]["tags"]
    entry = repo_status(state)["backupRepos"][0]
    assert entry["backupCount"] == 1
    assert entry["repoDir"] == "/volumes/deployment/app"
    assert entry["workloadKind"] == "Deployment" and entry["workloadName"] == "app"
    assert entry["resticName"] == "app-backup" and entry["resticNamespace"] == NS
    assert entry["snapshotCount"] == 1
    assert entry["lastBackupDuration"].endswith("s")
    assert entry["firstBackupTime"] == entry["lastBackupTime"]

    # 2. Second backup after a small change is incremental.
    (source / "added-later.txt").write_text("second backup\n")
    state_2 = tree_state(source)
    second = run_dag(build(BACKUP_DAG))
    assert task_states(second)["update_status"] == "success"
    # Two snapshots under keepLast 2: retention can remove nothing and does not open the
    # repository; verify trusts the backup's summary (the first backup was listed).
    assert task_states(second)["retention"] == "skipped"
    assert xcom(second, "verify") == {
        "confirmed": [xcom(second, "backup")["backups"][0]["snapshot_id"]],
        "confirmed_by": "backup summary",
        "snapshot_count": 2,
    }
    assert repo_status(state)["backupRepos"][0]["snapshotCount"] == 2
    made2 = xcom(second, "backup")["backups"][0]
    assert made2["files_new"] == 1
    assert made2["files_unmodified"] >= 2000
    assert made2["data_added"] < 50_000
    snapshot_2 = made2["snapshot_id"]

    # 3. Third backup: keepLast 2 leaves exactly the two newest snapshots.
    (source / "small" / "d01" / "e1" / "f00001.txt").write_text("changed in the third\n")
    (source / "added-later.txt").unlink()
    state_3 = tree_state(source)
    third = run_dag(build(BACKUP_DAG))
    assert task_states(third)["update_status"] == "success"
    snapshot_3 = xcom(third, "backup")["backups"][0]["snapshot_id"]
    kept = sorted(s["short_id"] for s in restic_snapshots(world["repo"]))
    assert kept == sorted([snapshot_2, snapshot_3])
    forget = xcom(third, "retention")["forgets"][0]
    assert sorted(forget.pop("kept_ids")) == kept
    assert xcom(third, "verify")["confirmed_by"] == "retention"  # forget listed them
    freed = forget.pop("bytes_freed")
    assert forget == {"path": "/source/data", "kept": 2, "removed": 1, "dry_run": False}
    assert freed > 0  # the policy prunes: the data only the first snapshot had is gone
    entry = repo_status(state)["backupRepos"][0]
    assert entry["backupCount"] == 3 and entry["snapshotCount"] == 2
    assert entry["lastSnapshotId"] == snapshot_3
    # Retention's result reaches the status too.
    assert (entry["lastRetentionRemoved"], entry["lastRetentionBytesFreed"]) == (1, freed)

    # 4. Recoveries: latest (whole), a named older snapshot, and a subset of paths.
    restored = world["root"] / "restored-latest"
    older = world["root"] / "restored-older"
    subset = world["root"] / "restored-subset"
    docs = base_docs(world) + [
        recovery_doc("latest", NS, "repo", restored),
        recovery_doc("older", NS, "repo", older, snapshot=f"deployment.app-{snapshot_2}"),
        recovery_doc(
            "subset", NS, "repo", subset, paths=["/source/data/small/d01", "/source/data/exec.sh"]
        ),
    ]
    write_manifests(manifests, docs)
    for name in ("latest", "older", "subset"):
        run = run_dag(build(f"stash-recovery.demo.{name}"))
        assert task_states(run) == {"restore": "success", "update_status": "success"}, name
    assert tree_state(restored) == state_3
    assert tree_state(older) == state_2
    assert tree_state(subset / "small" / "d01") == {
        k.removeprefix("small/d01/"): v for k, v in state_3.items() if k.startswith("small/d01/")
    }
    assert (subset / "exec.sh").read_text() == (source / "exec.sh").read_text()
    assert os.stat(subset / "exec.sh").st_mode & 0o777 == 0o755
    assert sorted(p.name for p in subset.iterdir()) == ["exec.sh", "small"]
    rec = json.loads((state / "recoveries" / NS / "subset.json").read_text())["status"]
    assert rec["phase"] == "Succeeded"
    assert [s["path"] for s in rec["stats"]] == ["/source/data/small/d01", "/source/data/exec.sh"]

    # 5. A Recovery into a non-empty folder is refused and touches nothing.
    busy = world["root"] / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("precious\n")
    write_manifests(manifests, base_docs(world) + [recovery_doc("busy", NS, "repo", busy)])
    refused = run_dag(build("stash-recovery.demo.busy"))
    assert task_states(refused) == {"restore": "failed", "update_status": "failed"}
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
    rec = json.loads((state / "recoveries" / NS / "busy.json").read_text())["status"]
    assert rec["phase"] == "Failed"

    # 6. A wrong password fails the run clearly and keeps status and snapshots.
    before = repo_status(state)["backupRepos"][0]
    write_manifests(manifests, base_docs(world, password="not-the-password"))
    bad = run_dag(build(BACKUP_DAG))
    states = task_states(bad)
    assert states["backup"] == "failed" and states["update_status"] == "failed"
    after = repo_status(state)["backupRepos"][0]
    assert after["lastFailure"].startswith("backup: step backup (Restic demo/app-backup")
    assert "wrong repository password" in after["lastFailure"]
    for key in ("backupCount", "lastBackupTime", "lastSnapshotId", "snapshotCount"):
        assert after[key] == before[key]
    assert after["failedBackupCount"] == 1
    assert sorted(s["short_id"] for s in restic_snapshots(world["repo"])) == kept

    # 7. An unreachable backend fails clearly, naming Restic and Repository.
    write_manifests(
        manifests,
        base_docs(world)[:2]
        + [
            repository_doc("repo", NS, {"rest": {"url": "http://127.0.0.1:9/"}}),
            restic_doc("app-backup", NS, "repo", "app", policy={"keepLast": 2, "prune": True}),
        ],
    )
    down = run_dag(build(BACKUP_DAG))
    assert task_states(down)["backup"] == "failed"
    failure = repo_status(state)["backupRepos"][0]["lastFailure"]
    assert "Repository demo/repo at rest:http://127.0.0.1:9/volumes/deployment/app" in failure
    # This target has backups on record: the agent never creates a repository for it.
    assert "cannot reach the repository" in failure
    assert repo_status(state)["backupRepos"][0]["backupCount"] == 3

    # 8. The password never shows: not in task logs, XCom or the serialised DAGs.
    out, err = capfd.readouterr()
    assert PASSWORD not in out + err
    assert "wrong repository password" in out + err  # the logs were really captured
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        for row in session.scalars(select(XComModel)):
            assert PASSWORD not in json.dumps(row.value, default=str)
        for sdag in session.scalars(select(SerializedDagModel)):
            assert PASSWORD not in json.dumps(sdag.data, default=str)
    shutil.rmtree(world["root"] / "restored-latest")
