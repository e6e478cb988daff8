"""Cluster backup and recovery in the ``kubernetes`` runtime: real KubernetesPodOperator,
real restic, the agent pods run on this host by the test kubelet.

Each agent pod reaches the API as a pod does, by in-cluster config: the kubelet gives
a pod of a ServiceAccount ``KUBERNETES_SERVICE_HOST``/``PORT`` and a token, CA and
namespace under ``/var/run/secrets/kubernetes.io/serviceaccount``; the fake API serves
that address over TLS with a throwaway CA. The accounts and their verbs are the
chart's (``rbac.clusterBackupNamespaces``), and the fake refuses any other verb: the
backup pod reads, the restore pod writes, a restore run as the reader writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e.test_cluster_backup import (
    BACKUP_DAG,
    NS,
    REPO_DIR,
    _all_xcom,
    _group,
    backup_restic,
    parents,
    snapshot_tree,
)
from kube.clusterseed import SECRET_PLAIN, SECRET_VALUE, seed, wipe
from kube.harness import Cluster, start_cluster
from stashtest import (
    PASSWORD,
    cluster_recovery_doc,
    repository_doc,
    run_dag,
    secret_doc,
    task_states,
    xcom,
)

pytestmark = pytest.mark.slow
READER = f"system:serviceaccount:{NS}:stash-cluster-reader"
RESTORER = f"system:serviceaccount:{NS}:stash-cluster-restorer"


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    c = start_cluster(tmp_path, monkeypatch, namespace=NS)
    yield c
    c.stop()


def chart_accounts(cluster: Cluster) -> None:
    """The chart's Cluster ServiceAccounts for ``NS``, created in the fake, each granted
    the verbs of the ClusterRole the chart binds it to."""
    from deploy.test_chart import render

    docs = render({"rbac": {"create": True, "clusterBackupNamespaces": [NS]}})
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    for binding in (d for d in docs if d["kind"] == "ClusterRoleBinding"):
        for subject in binding["subjects"]:
            if subject["kind"] == "ServiceAccount" and subject["namespace"] == NS:
                rules = roles[binding["roleRef"]["name"]]["rules"]
                verbs = [v for rule in rules for v in rule["verbs"]]
                cluster.server.grant(NS, subject["name"], verbs)
    for doc in docs:
        if doc["kind"] == "ServiceAccount" and doc["metadata"].get("namespace") == NS:
            cluster.apply(doc)
    assert set(cluster.server.grants) == {
        (NS, "stash-cluster-reader"),
        (NS, "stash-cluster-restorer"),
    }


def setup_stash(cluster: Cluster, root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The kubernetes runtime, a Repository on a claim and the Cluster Restic, synced."""
    snapshot = root / "cluster-snapshot.json"
    monkeypatch.setenv("AIRFLOW__STASH__RUNTIME", "kubernetes")
    monkeypatch.setenv("AIRFLOW__STASH__MANIFESTS_DIR", str(snapshot))
    monkeypatch.setenv("AIRFLOW__STASH__POLL_INTERVAL", "1")
    cluster.pvc("repo-store", NS)
    cluster.apply(secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD))
    backend = {"mountPath": "/repo", "persistentVolumeClaim": {"claimName": "repo-store"}}
    cluster.apply(repository_doc("repo", NS, {"local": backend}))
    cluster.apply(backup_restic())
    sync(snapshot)
    return snapshot


def sync(snapshot: Path) -> None:
    from stash_plugin.cli import main

    assert main(["sync", "--once", "--output", str(snapshot)]) == 0


def dags() -> dict[str, Any]:
    from stash_plugin.factory import build_dags
    from stash_plugin.settings import load_settings

    built, errors = build_dags(load_settings())
    assert errors == [], [str(e) for e in errors]
    return built


def recover(cluster: Cluster, snapshot: Path, name: str, account: str = "") -> Any:
    doc = cluster_recovery_doc(name, NS, "repo", REPO_DIR)
    if account:
        doc["spec"]["runtimeSettings"] = {"pod": {"serviceAccountName": account}}
    cluster.apply(doc)
    sync(snapshot)
    return run_dag(dags()[f"stash-recovery.{NS}.{name}"])


def calls_by(cluster: Cluster, user: str) -> list[tuple[str, str, int]]:
    return [(c.method, c.path, c.status) for c in cluster.requests if c.user == user]


def all_logs(cluster: Cluster) -> str:
    """Every container log the kubelet kept, of pods deleted since included."""
    return b"".join(
        line for log in cluster.server.store.logs.values() for _, line in log.lines
    ).decode()


def test_cluster_backup_and_restore_through_service_account_pods(
    cluster: Cluster,
    airflow_db: None,
    stash_env: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    seed(cluster.server)
    cluster.wait_for(lambda: len(cluster.pods("shop")) == 1, what="the shop Deployment's pod")
    original = parents(cluster)
    assert len(original) == 23
    chart_accounts(cluster)
    snapshot = setup_stash(cluster, stash_env["root"], monkeypatch)
    repo = cluster.pv_path(NS, "repo-store") / REPO_DIR.strip("/")

    # 1. The backup pod, as the reader, lists the API over TLS and only reads.
    run = run_dag(dags()[BACKUP_DAG])
    assert set(task_states(run).values()) == {"success"}, task_states(run)
    tree = snapshot_tree(repo, stash_env["root"] / "snapshot")
    expected = {
        f"{ns or '_cluster'}/{_group(obj)}/{kind}/{name}.yaml"
        for (kind, ns, name), obj in original.items()
    }
    assert set(tree) == expected
    assert tree["shop/apps/Deployment/web.yaml"] == original[("Deployment", "shop", "web")]
    assert tree["blog/core/Secret/web-secret.yaml"]["data"] == {"token": SECRET_VALUE}
    read = calls_by(cluster, READER)
    assert any(path == "/api/v1/secrets" for _, path, _ in read), read
    assert {method for method, _, _ in read} == {"GET"} and all(s == 200 for *_, s in read)
    entry = cluster.get("repositories", "repo", NS)["status"]["backupRepos"][0]
    assert entry["type"] == "Cluster" and entry["objects"]["apps/Deployment"] == 2
    assert xcom(run, "backup")["objects"] == entry["objects"]

    # 2. The API is wiped. A restore run as the reader is refused every write: it fails
    # naming the objects and the missing verb, and nothing comes back.
    wipe(cluster.server, keep=NS)
    assert parents(cluster) == {}
    run = recover(cluster, snapshot, "as-reader", "stash-cluster-reader")
    assert task_states(run) == {"restore": "failed", "update_status": "failed"}
    assert parents(cluster) == {}
    writes = [c for c in calls_by(cluster, READER) if c[0] != "GET"]
    assert writes and all(status == 403 for *_, status in writes), writes
    failure = xcom(run, "restore", "stash_error")
    assert "core/Namespace shop" in failure and "cannot patch" in failure, failure
    status = cluster.get("recoveries", "as-reader", NS)["status"]
    assert status["phase"] == "Failed"

    # 3. The restore pod, as the restorer, brings every object back in order.
    run = recover(cluster, snapshot, "restore")
    assert task_states(run) == {"restore": "success", "update_status": "success"}
    assert xcom(run, "restore")["cluster"]["actions"] == {"created": 23}
    restored = parents(cluster)
    assert restored.keys() == original.keys()
    for key, obj in original.items():
        assert restored[key] == obj, key
    assert any(method == "PATCH" for method, *_ in calls_by(cluster, RESTORER))
    assert cluster.get("recoveries", "restore", NS)["status"]["phase"] == "Succeeded"

    # Secret data stayed in the encrypted repository: not in any pod's log, XCom or status.
    out, err = capfd.readouterr()
    seen = out + err + all_logs(cluster) + _all_xcom()
    seen += json.dumps([cluster.objects("repositories", NS), cluster.objects("recoveries", NS)])
    assert "stash-agent" in all_logs(cluster)  # the logs are there to look into
    for value in (SECRET_VALUE, SECRET_PLAIN, PASSWORD):
        assert value not in seen

    # 4. Without its ServiceAccount the backup pod is never made; the run fails naming it.
    cluster.delete("ServiceAccount", "stash-cluster-reader", NS)
    run = run_dag(dags()[BACKUP_DAG])
    assert task_states(run)["backup"] == "failed"
    entry = cluster.get("repositories", "repo", NS)["status"]["backupRepos"][0]
    failure = entry["lastFailure"]
    assert '403 Forbidden: pods "stash-backup-' in failure, failure
    assert (
        'service account demo/stash-cluster-reader: serviceaccount "stash-cluster-reader" not found'
        in failure
    )
    assert "rbac.clusterBackupNamespaces" in failure
