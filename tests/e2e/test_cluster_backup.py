"""Cluster backup and recovery through whole DAG runs: real Airflow, real restic, the
fake API server seeded with namespaces, Deployments (with their ReplicaSets and Pods),
Services, ConfigMaps, Secrets, PVCs, RBAC and a custom resource with its CRD.

The backup's snapshot holds the sanitized parents as a tree; the API is wiped; a dry
run changes nothing; a restore brings every parent back equal to the original (after
sanitizing both) in dependency order; a second restore over them changes nothing.
Secret data never shows in logs, XCom or status.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube.clusterseed import SECRET_PLAIN, SECRET_VALUE, SELECTOR, seed, wipe
from kube.harness import Cluster, start_cluster
from stashtest import (
    PASSWORD,
    build_dag,
    cluster_recovery_doc,
    cluster_restic_doc,
    repository_doc,
    run_dag,
    secret_doc,
    task_states,
    write_manifests,
    xcom,
)

from stash_plugin.clusterdump import sanitize

pytestmark = pytest.mark.slow
NS = "demo"
BACKUP_DAG = "stash-backup.demo.cluster-backup.cluster"
REPO_DIR = "/cluster/cluster-backup"
PARENT_KINDS = (
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ConfigMap",
    "Secret",
    "PersistentVolumeClaim",
    "Service",
    "Deployment",
    "Widget",
)
RANK = {
    "Namespace": 0,
    "CustomResourceDefinition": 1,
    "ServiceAccount": 2,
    "ClusterRole": 2,
    "Role": 2,
    "ClusterRoleBinding": 3,
    "RoleBinding": 3,
    "Secret": 4,
    "ConfigMap": 4,
    "PersistentVolumeClaim": 5,
    "Service": 6,
    "Deployment": 7,
    "Widget": 8,
}


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    c = start_cluster(tmp_path, monkeypatch, namespace=NS)
    yield c
    c.stop()


def parents(cluster: Cluster) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Every object of the seeded kinds (not Pods or ReplicaSets), sanitized, by
    (kind, namespace, name); the ``demo`` namespace of the test itself left out."""
    store = cluster.server.store
    out = {}
    for rt in list(store.types.values()):
        if rt.kind not in PARENT_KINDS:
            continue
        for obj in store.select(rt, None):
            meta = obj["metadata"]
            if meta.get("namespace") == NS or (rt.kind == "Namespace" and meta["name"] == NS):
                continue
            key = (rt.kind, meta.get("namespace", ""), meta["name"])
            out[key] = sanitize(copy.deepcopy(obj))
    return out


def snapshot_tree(repo: Path, into: Path) -> dict[str, dict[str, Any]]:
    """The latest snapshot's files, by path below the tree's root."""
    env = {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": PASSWORD}
    subprocess.run(
        ["restic", "restore", "latest", "--tag=target=cluster", f"--target={into}"],
        env=env,
        check=True,
        capture_output=True,
    )
    roots = list(into.glob("**/cluster"))
    assert len(roots) == 1, roots
    return {
        str(p.relative_to(roots[0])): json.loads(p.read_text()) for p in roots[0].rglob("*.yaml")
    }


def backup_restic() -> dict[str, Any]:
    """The Cluster Restic both runtimes' tests back up with."""
    return cluster_restic_doc(
        "cluster-backup",
        NS,
        "repo",
        SELECTOR,
        parentsOnly=True,
        sanitize=True,
        excludeNamespaces=[NS],  # the test's own namespace: Stash's objects, not the app's
    )


def docs(repo_root: Path, *extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        repository_doc(
            "repo", NS, {"local": {"mountPath": "/repo", "hostPath": {"path": str(repo_root)}}}
        ),
        backup_restic(),
        *extra,
    ]


def test_cluster_backup_wipe_and_restore(
    cluster: Cluster,
    airflow_db: None,
    stash_env: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AIRFLOW__STASH__CLUSTER_NAMESPACES", NS)
    root, manifests, state = stash_env["root"], stash_env["manifests"], stash_env["state"]
    repo_root = root / "backend"
    repo_root.mkdir()
    seed(cluster.server)
    cluster.wait_for(lambda: len(cluster.pods("shop")) == 1, what="the shop Deployment's pod")
    assert cluster.objects("replicasets", "shop")
    original = parents(cluster)
    assert len(original) == 23

    # 1. Backup: one snapshot holding the sanitized parents as a tree.
    write_manifests(manifests, docs(repo_root))
    run = run_dag(build_dag(BACKUP_DAG))
    assert set(task_states(run).values()) == {"success"}, task_states(run)
    tree = snapshot_tree(repo_root / REPO_DIR.strip("/"), root / "snapshot")
    expected = {
        f"{ns or '_cluster'}/{_group(obj)}/{kind}/{name}.yaml"
        for (kind, ns, name), obj in original.items()
    }
    assert set(tree) == expected  # no ReplicaSet or Pod: they have owners
    assert tree["shop/apps/Deployment/web.yaml"] == original[("Deployment", "shop", "web")]
    service = tree["shop/core/Service/web.yaml"]
    assert "clusterIP" not in service["spec"] and "nodePort" not in service["spec"]["ports"][0]
    for obj in tree.values():
        meta = obj["metadata"]
        assert "status" not in obj and not {"uid", "resourceVersion", "managedFields"} & set(meta)
        assert "kubectl.kubernetes.io/last-applied-configuration" not in meta.get("annotations", {})
    assert tree["blog/core/Secret/web-secret.yaml"]["data"] == {"token": SECRET_VALUE}
    entry = _status(state)["backupRepos"][0]
    assert entry["type"] == "Cluster" and entry["backupCount"] == 1
    assert entry["objects"]["apps/Deployment"] == 2
    assert entry["objects"]["example.com/Widget"] == 2
    backup_xcom = xcom(run, "backup")
    assert backup_xcom["objects"] == entry["objects"]

    # 2. The API is wiped, the CRD (so the Widget resource) included.
    wipe(cluster.server, keep=NS)
    assert parents(cluster) == {}
    assert "widgets" not in {rt.plural for rt in cluster.server.store.types.values()}

    # 3. A dry run reports what it would create and changes nothing.
    dry = cluster_recovery_doc("dry", NS, "repo", REPO_DIR, dryRun=True)
    write_manifests(manifests, docs(repo_root, dry))
    run = run_dag(build_dag("stash-recovery.demo.dry"))
    assert task_states(run) == {"restore": "success", "update_status": "success"}
    assert parents(cluster) == {}
    result = xcom(run, "restore")["cluster"]
    assert result["dry_run"] is True and result["actions"] == {"would create": 23}

    # 4. The restore brings every parent back, equal to the original, in dependency order.
    cluster.server.applied.clear()
    restore = cluster_recovery_doc("restore", NS, "repo", REPO_DIR)
    write_manifests(manifests, docs(repo_root, dry, restore))
    run = run_dag(build_dag("stash-recovery.demo.restore"))
    assert task_states(run) == {"restore": "success", "update_status": "success"}
    assert xcom(run, "restore")["cluster"]["actions"] == {"created": 23}
    restored = parents(cluster)
    assert restored.keys() == original.keys()
    for key, obj in original.items():
        assert restored[key] == obj, key
    order = [RANK[kind] for kind, _, _, dry_run in cluster.server.applied if not dry_run]
    assert len(order) == 23 and order == sorted(order), cluster.server.applied
    crd = cluster.get("customresourcedefinitions", "widgets.example.com")
    assert {c["type"] for c in crd["status"]["conditions"]} >= {"Established"}

    # 5. A second restore over the existing objects changes nothing: no apply call at
    # all, and every object as it was (its content, not its resourceVersion: the fake's
    # workload controller keeps writing the restored Deployments' status meanwhile).
    before = parents(cluster)
    cluster.server.applied.clear()
    again = cluster_recovery_doc("again", NS, "repo", REPO_DIR)
    write_manifests(manifests, docs(repo_root, dry, restore, again))
    run = run_dag(build_dag("stash-recovery.demo.again"))
    assert task_states(run) == {"restore": "success", "update_status": "success"}
    assert xcom(run, "restore")["cluster"]["actions"] == {"exists, left alone": 23}
    assert cluster.server.applied == [] and parents(cluster) == before

    # Secret data stayed in the encrypted repository.
    out, err = capfd.readouterr()
    seen = out + err + json.dumps(_status(state)) + _all_xcom()
    seen += "".join(p.read_text() for p in state.rglob("*.json"))
    for value in (SECRET_VALUE, SECRET_PLAIN, PASSWORD):
        assert value not in seen
    assert "token" in json.dumps(tree["blog/core/Secret/web-secret.yaml"])  # the check can fail


def _group(obj: dict[str, Any]) -> str:
    return str(obj["apiVersion"]).rpartition("/")[0] or "core"


def _status(state: Path) -> dict[str, Any]:
    return json.loads((state / "repositories" / NS / "repo.json").read_text())["status"]  # type: ignore[no-any-return]


def _all_xcom() -> str:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return "".join(json.dumps(v, default=str) for v in session.scalars(select(XComModel.value)))
