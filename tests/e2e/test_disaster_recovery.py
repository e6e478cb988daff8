"""Disaster recovery: every Repository object and the status store are lost; the
backend alone gives them back.

Two targets back up through whole DAG runs, one into a local folder and one into S3
(moto, with access keys checked). Then the Repository objects and the status store
are deleted, as a lost cluster would lose them. ``stash discover`` (the real command,
a separate process) reads each backend, writes the Repository objects to recreate,
and the next runs with those objects back up again (counting on from the snapshots,
not from zero) and restore both trees byte for byte. Nothing leaks a secret.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from stashtest import (
    PASSWORD,
    build_dag,
    deployment_doc,
    green,
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
)

pytestmark = pytest.mark.slow
NS = "demo"
PREFIX = "dr"
LOCAL_DAG = f"stash-backup.{NS}.backup-one.deployment.one"
S3_DAG = f"stash-backup.{NS}.backup-two.deployment.two"
STASH = str(Path(sys.executable).with_name("stash"))


def _entry(state: Path, repo: str) -> dict[str, Any]:
    data = json.loads((state / "repositories" / NS / f"{repo}.json").read_text())
    (entry,) = data["status"]["backupRepos"]
    return dict(entry)


def _discover(url: str, secret_file: Path, out: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_", "AWS_"))}
    return subprocess.run(  # noqa: S603
        [STASH, "discover", url, f"--secret={secret_file}", f"--out={out}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_repositories_and_status_come_back_from_the_backend(
    airflow_db: None, stash_env: dict[str, Path], moto_s3: dict[str, Any]
) -> None:
    root, manifests, state = stash_env["root"], stash_env["manifests"], stash_env["state"]
    one = make_tree(root / "one", seed=3, small_files=200)
    two = make_tree(root / "two", seed=4, small_files=200)
    backend = root / "backend"
    backend.mkdir()
    keys, endpoint, bucket = moto_s3["keys"], moto_s3["endpoint"], moto_s3["bucket"]
    secret = secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD, **keys)
    local_repo = repository_doc(
        "local-repo",
        NS,
        {"local": {"mountPath": "/repo", "hostPath": {"path": str(backend)}}},
    )
    local_repo["metadata"]["labels"] = {"team": "one"}
    local_repo["metadata"]["annotations"] = {"note": "not kept"}
    s3_repo = repository_doc(
        "s3-repo", NS, {"s3": {"endpoint": endpoint, "bucket": bucket, "prefix": PREFIX}}
    )
    workloads = [
        secret,
        deployment_doc("one", NS, one),
        deployment_doc("two", NS, two),
        restic_doc("backup-one", NS, "local-repo", "one", policy={"keepLast": 10}),
        restic_doc("backup-two", NS, "s3-repo", "two", policy={"keepLast": 10}),
    ]
    write_manifests(manifests, [*workloads, local_repo, s3_repo])

    # Three backups of one, one of two: each keeps its Repository in its repository.
    backup_times = []
    for dag_id in (LOCAL_DAG, LOCAL_DAG, LOCAL_DAG, S3_DAG):
        run = run_dag(build_dag(dag_id))
        assert green(run), task_states(run)
        if dag_id == LOCAL_DAG:
            backup_times.append(_entry(state, "local-repo")["lastBackupTime"])
    assert _entry(state, "local-repo")["backupCount"] == 3
    first_time = _entry(state, "local-repo")["firstBackupTime"]
    assert first_time == backup_times[0]
    local_path = backend / "volumes" / "deployment" / "one"
    records = [
        s for s in restic_snapshots(local_path, records=True) if "stash-repository" in s["tags"]
    ]
    assert len(records) == 1  # written once: the object did not change between runs
    assert len(restic_snapshots(local_path)) == 3  # the record is not a backup

    # The disaster: no Repository object, no status.
    write_manifests(manifests, workloads)
    shutil.rmtree(state)

    secret_file = root / "secret.yaml"
    secret_file.write_text(yaml.safe_dump(secret))
    found = manifests / "found"
    local = _discover(str(backend), secret_file, found)
    assert local.returncode == 0, local.stderr
    assert f"{local_path}: 3 backup snapshot(s)" in local.stderr
    assert "target namespace=demo,restic=backup-one,target=deployment.one: 3" in local.stderr
    s3_url = f"s3:{endpoint}/{bucket}/{PREFIX}"
    remote = _discover(s3_url, secret_file, found)
    assert remote.returncode == 0, remote.stderr
    assert f"{s3_url}/volumes/deployment/two: 1 backup snapshot(s)" in remote.stderr
    for proc in (local, remote):
        for value in (PASSWORD, *keys.values()):
            assert value not in proc.stdout + proc.stderr
    # What comes back is the object as written, without what is not the spec's.
    recreated = yaml.safe_load((found / "repository.demo.local-repo.yaml").read_text())
    assert recreated == {
        "apiVersion": local_repo["apiVersion"],
        "kind": "Repository",
        "metadata": {"name": "local-repo", "namespace": NS, "labels": {"team": "one"}},
        "spec": local_repo["spec"],
    }
    assert (
        yaml.safe_load((found / "repository.demo.s3-repo.yaml").read_text())["spec"]
        == (s3_repo["spec"])
    )

    # With the recreated objects, backups go on, counting on from the snapshots.
    run = run_dag(build_dag(LOCAL_DAG))
    assert green(run), task_states(run)
    entry = _entry(state, "local-repo")
    assert entry["backupCount"] == 4
    # the first snapshot's own time: a little after its run started, before the next
    assert first_time <= entry["firstBackupTime"] < backup_times[1]
    run = run_dag(build_dag(S3_DAG))
    assert green(run), task_states(run)
    assert _entry(state, "s3-repo")["backupCount"] == 2

    # And both trees are restored byte for byte from the recreated Repositories.
    write_manifests(
        manifests,
        [
            recovery_doc(
                "restore-one",
                NS,
                "local-repo",
                root / "back-one",
                repo_dir="/volumes/deployment/one",
            ),
            recovery_doc(
                "restore-two", NS, "s3-repo", root / "back-two", repo_dir="/volumes/deployment/two"
            ),
        ],
        filename="recoveries.yaml",
    )
    for name in ("one", "two"):
        run = run_dag(build_dag(f"stash-recovery.{NS}.restore-{name}"))
        assert green(run), task_states(run)
    assert tree_state(root / "back-one") == tree_state(one)
    assert tree_state(root / "back-two") == tree_state(two)
