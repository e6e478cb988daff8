"""The kubernetes runtime end to end: real KubernetesPodOperator, real restic.

The API server is the fake in ``tests/kube`` and its kubelet really runs every agent
pod on this host with the pod's volumes bind-mounted at their mount paths, so the
snapshots hold ``/source/data`` exactly as in a cluster. Resources reach the DAG
factory the production way: ``stash sync`` writes the snapshot file it reads.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from containers import AGENT_IMAGE, Podman
from kube.fakeapi import Call
from kube.harness import Cluster, slot_lease, start_cluster
from stashtest import (
    PASSWORD,
    deployment_doc,
    make_tree,
    restic_doc,
    restic_snapshots,
    run_dag,
    secret_doc,
    task_states,
    tree_state,
)

from stash_plugin.runtime.nodeslots import HOLDER_LABEL

pytestmark = pytest.mark.slow
NS = "demo"
STASH = "stash.appscode.com/v1alpha1"
BACKUP_DAG = "stash-backup.demo.app-backup.deployment.app"


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Agent pods as host processes (the venv's ``stash-agent``)."""
    c = start_cluster(tmp_path, monkeypatch, namespace=NS)
    yield c
    c.stop()
    record_calls(c)


@pytest.fixture
def image_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, podman: Podman, agent_image: str
) -> Any:
    """Agent pods as containers of the agent image built from ``Dockerfile.agent``."""
    monkeypatch.setenv("AIRFLOW__STASH__AGENT_IMAGE", agent_image)
    c = start_cluster(tmp_path, monkeypatch, namespace=NS, podman=podman)
    yield c
    c.stop()
    record_calls(c)


def deployment(claim: str) -> dict[str, Any]:
    return deployment_doc(
        "app", NS, None, volume={"persistentVolumeClaim": {"claimName": claim}}, replicas=2
    )


def restic(mode: str = "Online") -> dict[str, Any]:
    return restic_doc(
        "app-backup", NS, "repo", "app", policy={"keepLast": 1, "prune": True}, backupMode=mode
    )


def recovery(name: str, claim: str, **restorer: Any) -> dict[str, Any]:
    return {
        "apiVersion": STASH,
        "kind": "Recovery",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "targetType": "Volume",
            "repository": {"name": "repo"},
            "volumeRestorer": {
                "repoDir": "/volumes/deployment/app",
                "recoverTo": [
                    {"mountPath": "/source/data", "persistentVolumeClaim": {"claimName": claim}}
                ],
                **restorer,
            },
        },
    }


# The API calls the code made in this module's tests, by who makes them in a cluster:
# `stash sync` or the Airflow tasks (and triggerer). The last test checks them
# against the chart's RBAC rules.
CALLS: dict[str, list[Call]] = {"sync": [], "tasks": []}


def record_calls(cluster: Cluster) -> None:
    """At the end of a test: every request that `sync()` did not make is the tasks'."""
    synced = {id(c) for c in CALLS["sync"]}
    CALLS["tasks"] += [c for c in cluster.requests if id(c) not in synced]


def sync(snapshot: Path, cluster: Cluster) -> int:
    from stash_plugin.cli import main

    start = len(cluster.requests)
    try:
        return main(["sync", "--once", "--output", str(snapshot)])
    finally:
        CALLS["sync"] += cluster.requests[start:]


def dags() -> dict[str, Any]:
    from stash_plugin.factory import build_dags
    from stash_plugin.settings import load_settings

    built, errors = build_dags(load_settings())
    assert errors == [], [str(e) for e in errors]
    return built


def replicas(cluster: Cluster) -> int:
    return int(cluster.get("Deployment", "app", NS)["spec"]["replicas"])


def seed(
    cluster: Cluster, stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Path, Path]:
    """A Deployment with data on a claim, a Repository on another claim, a Restic; synced."""
    snapshot = stash_env["root"] / "cluster-snapshot.json"
    monkeypatch.setenv("AIRFLOW__STASH__RUNTIME", "kubernetes")
    monkeypatch.setenv("AIRFLOW__STASH__MANIFESTS_DIR", str(snapshot))
    monkeypatch.setenv("AIRFLOW__STASH__POLL_INTERVAL", "1")
    source = make_tree(cluster.pvc("app-data", NS), seed=3, small_files=300)
    repo_store = cluster.pvc("repo-store", NS)
    cluster.apply(secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD))
    cluster.apply(deployment("app-data"))
    cluster.apply(
        {
            "apiVersion": STASH,
            "kind": "Repository",
            "metadata": {"name": "repo", "namespace": NS},
            "spec": {
                "backend": {
                    "local": {
                        "mountPath": "/repo",
                        "persistentVolumeClaim": {"claimName": "repo-store"},
                    },
                    "storageSecretName": "repo-secret",
                }
            },
        }
    )
    cluster.apply(restic())
    cluster.wait_for(lambda: len(cluster.pods(NS, "app=app")) == 2, what="the workload's pods")
    assert sync(snapshot, cluster) == 0
    follow(snapshot, cluster)
    return snapshot, source, repo_store


def follow(snapshot: Path, cluster: Cluster) -> None:
    """`stash sync` as the chart runs it (list, then watch) writes what `--once` wrote."""
    from stash_plugin.runtime.kube import hook
    from stash_plugin.sync import SOURCES, sync_forever

    once = snapshot.read_text()
    snapshot.unlink()
    start, stop = len(cluster.requests), threading.Event()
    args = (lambda: hook().api_client, snapshot)
    thread = threading.Thread(target=sync_forever, args=args, kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        cluster.wait_for(snapshot.exists, what="the watching sync's snapshot")
        watching = lambda: sum(c.query.get("watch") == "true" for c in cluster.requests[start:])  # noqa: E731
        cluster.wait_for(lambda: watching() >= len(SOURCES), what="a watch of each type")
    finally:
        stop.set()
        thread.join(timeout=5)
        CALLS["sync"] += cluster.requests[start:]
    assert snapshot.read_text() == once


def give_owners(source: Path) -> None:
    """Files of several users, some only their owner may read (the agent reads them all)."""
    for path, uid, gid, mode in (
        ("private.key", 1000, 1000, 0o600),
        ("readonly", 1001, 2000, 0o750),
        ("readonly/ro.txt", 1001, 2000, 0o400),
        ("big", 65534, 65534, 0o700),
        ("big/blob0.bin", 65534, 65534, 0o600),
    ):
        os.chown(source / path, uid, gid)
        os.chmod(source / path, mode)


def test_backup_and_recovery_through_pods(
    image_cluster: Cluster,
    airflow_db: None,
    stash_env: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Every agent pod runs the agent image (podman), as on a node."""
    cluster = image_cluster
    snapshot, source, repo_store = seed(cluster, stash_env, monkeypatch)
    give_owners(source)

    # Online backup: a pod mounts the claim, restic stores /source/data.
    run = run_dag(dags()[BACKUP_DAG])
    assert task_states(run) == {
        k: "success" for k in ("backup", "retention", "verify", "update_status")
    }
    # [stash] node_slots is 0 by default: no cap, not one Lease call.
    assert not [c for c in cluster.requests if "/leases" in c.path]
    repo = repo_store / "volumes" / "deployment" / "app"
    snaps = restic_snapshots(repo)
    assert [s["paths"] for s in snaps] == [["/source/data"]]
    assert snaps[0]["hostname"] == "app"
    status = cluster.get("repositories", "repo", NS)["status"]["backupRepos"]
    assert [(e["resticName"], e["backupCount"], e["snapshotCount"]) for e in status] == [
        ("app-backup", 1, 1)
    ]
    assert status[0]["lastSnapshotId"] == snaps[0]["short_id"]

    # Recovery into a new claim, byte-identical; the Recovery object's status says so.
    restored = cluster.pvc("restored", NS)
    cluster.apply(recovery("to-new-claim", "restored"))
    assert sync(snapshot, cluster) == 0
    rec = run_dag(dags()["stash-recovery.demo.to-new-claim"])
    assert task_states(rec) == {"restore": "success", "update_status": "success"}
    assert tree_state(restored, owners=True) == tree_state(source, owners=True)
    assert {image for _, image in cluster.kubelet.started} == {AGENT_IMAGE}
    rstatus = cluster.get("recoveries", "to-new-claim", NS)["status"]
    assert rstatus["phase"] == "Succeeded" and rstatus["stats"][0]["path"] == "/source/data"

    # Edited in the cluster -> a different DAG after sync: offline mode scales to zero and back.
    cluster.apply(restic(mode="Offline"))
    assert sync(snapshot, cluster) == 0
    offline_dag = dags()[BACKUP_DAG]
    assert {"quiesce", "wait_quiesced", "resume", "wait_ready"} <= set(offline_dag.task_ids)
    (source / "offline.txt").write_text("written before the offline backup\n")
    run = run_dag(offline_dag)
    assert set(task_states(run).values()) == {"success"}
    scaled = [
        r
        for r in cluster.requests
        if r.method == "PATCH" and r.path.endswith("/deployments/app/scale")
    ]
    assert len(scaled) == 2  # to zero (wait_quiesced then saw no pod), and back
    assert replicas(cluster) == 2
    assert "stash.appscode.com/original-replicas" not in (
        cluster.get("Deployment", "app", NS)["metadata"].get("annotations") or {}
    )
    assert len(restic_snapshots(repo)) == 1  # keepLast 1

    # A failed backup still scales the workload back, and the run shows red.
    cluster.apply(secret_doc("repo-secret", NS, RESTIC_PASSWORD="wrong-password"))
    failed = run_dag(dags()[BACKUP_DAG])
    states = task_states(failed)
    assert states["backup"] == "failed" and states["resume"] == "success"
    assert states["update_status"] == "failed"
    assert replicas(cluster) == 2
    entry = cluster.get("repositories", "repo", NS)["status"]["backupRepos"][0]
    assert "wrong repository password" in entry["lastFailure"]
    assert entry["backupCount"] == 2

    # API server down: sync fails, the snapshot and every DAG stay.
    before = snapshot.read_text()
    cluster.down()
    assert sync(snapshot, cluster) == 1
    assert snapshot.read_text() == before
    assert set(dags()) == {
        BACKUP_DAG,
        "stash-recovery.demo.to-new-claim",
        "stash-maintenance.demo.repo",
    }
    cluster.up()

    # Deleted in the cluster -> its DAG goes away after sync.
    cluster.delete("restics", "app-backup", NS)
    assert sync(snapshot, cluster) == 0
    assert set(dags()) == {"stash-recovery.demo.to-new-claim"}

    # The password is nowhere: not in pod specs (the failed pod is kept), logs or XCom.
    out, err = capfd.readouterr()
    assert PASSWORD not in out + err
    pods = cluster.pods(NS, "stash.appscode.com/restic=app-backup")
    assert pods, "the failed agent pod is kept for inspection"
    assert PASSWORD not in json.dumps(pods)
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        for row in session.scalars(select(XComModel)):
            assert PASSWORD not in json.dumps(row.value, default=str)


def test_recovery_into_the_workloads_own_volume_deferrable(
    cluster: Cluster,
    airflow_db: None,
    stash_env: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stash issue 600: stop the workload, restore into its own claim, start it again;
    with ``[stash] deferrable`` the pods are awaited by the trigger, not a worker.
    With ``[stash] node_slots`` each agent pod next to the workload's claim holds a
    slot of that node (a Lease) from before its creation until it has finished, across
    the deferral; a slot left by a holder that is gone is taken over."""
    snapshot, source, _ = seed(cluster, stash_env, monkeypatch)
    monkeypatch.setenv("AIRFLOW__STASH__DEFERRABLE", "true")
    monkeypatch.setenv("AIRFLOW__STASH__NODE_SLOTS", "1")
    monkeypatch.setenv("AIRFLOW__STASH__LEASE_NAMESPACE", "stash-system")
    node = cluster.pods(NS, "app=app")[0]["spec"]["nodeName"]
    stale = lease_of_a_lost_worker(cluster, node)
    assert set(task_states(run_dag(dags()[BACKUP_DAG])).values()) == {"success"}
    held, pods = slot_holds(cluster), slot_pods(cluster)
    assert len(pods) == 3  # backup, retention, verify: each with its own slot
    for pod, holder in pods.items():
        took, gave_back = held[holder]
        phases = pod_phases(cluster, pod)
        assert took < phases["Pending"] and phases["Succeeded"] < gave_back, (pod, held)
    spans = sorted(span for holder, span in held.items() if holder != stale)
    assert held[stale][1] == spans[0][0]  # the first pod's task took the lost slot over
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:], strict=False))  # one at a time
    assert cluster.objects("Lease", "stash-system") == []
    original = tree_state(source)
    for child in ("small", "exec.sh", "link-to-exec"):
        path = source / child
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    assert tree_state(source) != original
    cluster.apply(
        recovery(
            "in-place",
            "app-data",
            overwrite=True,
            workload={"kind": "Deployment", "name": "app"},
        )
    )
    assert sync(snapshot, cluster) == 0
    dag = dags()["stash-recovery.demo.in-place"]
    assert [t.task_id for t in dag.topological_sort()][:3] == [
        "quiesce",
        "wait_quiesced",
        "restore",
    ]
    run = run_dag(dag)
    assert set(task_states(run).values()) == {"success"}
    assert tree_state(source) == original
    assert replicas(cluster) == 2
    assert cluster.get("recoveries", "in-place", NS)["status"]["phase"] == "Succeeded"
    # The trigger (kubernetes_asyncio) waited for the pods: the deferrable path really ran.
    assert any("OpenAPI-Generator" in r.user_agent for r in cluster.requests)


def lease_of_a_lost_worker(cluster: Cluster, node: str) -> str:
    """The slot Lease of a worker that died long ago (its pod is long gone)."""
    holder = "0" * 32
    cluster.apply(slot_lease(node, holder, datetime(2020, 1, 1, tzinfo=UTC), "stash-system", NS))
    return holder


def slot_holds(cluster: Cluster) -> dict[str, tuple[int, int]]:
    """Holder -> (version at which it got a slot Lease, version at which it lost it:
    deleted, or taken over by another holder)."""
    spans: dict[str, list[int]] = {}
    current: dict[str, str] = {}  # Lease name -> its holder now
    for ev in cluster.server.store.history:
        if ev.rt.kind != "Lease":
            continue
        name, holder = ev.obj["metadata"]["name"], ev.obj["spec"]["holderIdentity"]
        before = current.get(name)
        if before is not None and (ev.type == "DELETED" or before != holder):
            spans[before][1] = ev.rv
            del current[name]
        if ev.type != "DELETED" and before != holder:
            current[name] = holder
            spans[holder] = [ev.rv, 0]
    return {k: (v[0], v[1]) for k, v in spans.items()}


def slot_pods(cluster: Cluster) -> dict[str, str]:
    """Agent pods created as a slot's holder (kept or deleted since): name -> holder."""
    return {
        ev.obj["metadata"]["name"]: ev.obj["metadata"]["labels"][HOLDER_LABEL]
        for ev in cluster.server.store.history
        if ev.rt.kind == "Pod"
        and ev.type == "ADDED"
        and HOLDER_LABEL in (ev.obj["metadata"].get("labels") or {})
    }


def pod_phases(cluster: Cluster, pod: str) -> dict[str, int]:
    """The version at which ``pod`` first had each phase."""
    seen: dict[str, int] = {}
    for ev in cluster.server.store.history:
        if ev.rt.kind == "Pod" and ev.obj["metadata"]["name"] == pod:
            seen.setdefault(ev.obj["status"].get("phase", ""), ev.rv)
    return seen


def lock_hosts(repo: Path) -> list[str]:
    """The host names in the repository's locks, read with restic."""
    env = {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": PASSWORD}

    def restic_out(*args: str) -> str:
        return subprocess.run(
            ["restic", *args, "--no-lock"], env=env, capture_output=True, text=True, check=True
        ).stdout

    return sorted(
        json.loads(restic_out("cat", "lock", i))["hostname"]
        for i in restic_out("list", "locks").split()
    )


def backup_in_progress(cluster: Cluster, name: str) -> int:
    """An agent pod of the backup step (its labels, env, Secret refs and mounts), named as
    the operator names agent pods, whose backup never ends: restic reads a stream that
    stays open (the agent gives restic no stdin, so restic runs directly) and holds its
    lock. Returns the pid of the pod's process group once the lock is there."""
    from kubernetes import client, config

    from stash_plugin.plan.pods import pod_manifest

    step = dags()[BACKUP_DAG].get_task("backup").step
    pod = pod_manifest(step, "stash-airflow/agent:test")
    pod["metadata"]["name"] = name
    pod["spec"]["containers"][0]["command"] = [
        "sh",
        "-c",
        "sleep 600 | restic backup --stdin --stdin-filename=stream --host=app",
    ]
    api = config.new_client_from_config(str(cluster.kubeconfig))
    client.CoreV1Api(api).create_namespaced_pod(NS, pod)
    uid = cluster.wait_for(lambda: cluster.get("Pod", name, NS)["metadata"]["uid"])
    proc = cluster.wait_for(lambda: cluster.kubelet.procs.get(uid), what="the pod's process")
    repo = cluster.pv_path(NS, "repo-store") / "volumes" / "deployment" / "app"
    cluster.wait_for(lambda: lock_hosts(repo) == [name], timeout=30, what="the pod's lock")
    return int(proc.pid)


def agent_log(cluster: Cluster, task: str) -> str:
    """The logs of every kept agent pod of ``task`` (oldest first)."""
    pods = sorted(
        (p for p in cluster.pods(NS) if p["metadata"]["name"].startswith(f"stash-{task}-")),
        key=lambda p: p["metadata"]["creationTimestamp"],
    )
    return "".join(cluster.logs(p["metadata"]["name"], namespace=NS) for p in pods)


def test_locks_of_deleted_agent_pods_are_removed_never_live_ones(
    cluster: Cluster,
    airflow_db: None,
    stash_env: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A killed agent pod's lock names a host that will never exist again: restic would
    honour it for 30 minutes. The next run removes it once the pod is gone, never while
    the pod exists."""
    snapshot, _, repo_store = seed(cluster, stash_env, monkeypatch)
    monkeypatch.setenv("AIRFLOW__STASH__LOCK_CLOCK_SKEW", "1")
    monkeypatch.setenv("AIRFLOW__STASH__ON_FINISH_ACTION", "keep_pod")
    short_wait = {"container": {"env": [{"name": "STASH_LOCK_WAIT", "value": "3"}]}}
    cluster.apply(
        restic_doc(
            "app-backup",
            NS,
            "repo",
            "app",
            policy={"keepLast": 1, "prune": True},
            runtimeSettings=short_wait,
        )
    )
    assert sync(snapshot, cluster) == 0
    assert set(task_states(run_dag(dags()[BACKUP_DAG])).values()) == {"success"}
    repo = repo_store / "volumes" / "deployment" / "app"
    holder = "stash-backup-k7x2m9qd"
    pid = backup_in_progress(cluster, holder)

    # The pod exists: retention waits its lock wait, then fails; the lock stays.
    states = task_states(run_dag(dags()[BACKUP_DAG]))
    assert (states["backup"], states["retention"]) == ("success", "failed")
    assert f"held by a live run ({holder})" in agent_log(cluster, "retention")
    assert lock_hosts(repo) == [holder]
    assert cluster.get("Pod", holder, NS)["status"]["phase"] == "Running"
    os.killpg(pid, 0)  # its backup still runs

    # Killed mid-backup (OOM, node lost: no chance to unlock), then the pod is deleted.
    os.killpg(pid, signal.SIGKILL)
    cluster.wait_for(lambda: not _group_alive(pid), what="the pod's processes to end")
    cluster.delete("Pod", holder, NS)
    assert lock_hosts(repo) == [holder]

    # ... and the next run removes it and succeeds without waiting.
    run = run_dag(dags()[BACKUP_DAG])
    assert set(task_states(run).values()) == {"success"}
    assert lock_hosts(repo) == []
    retention = agent_log(cluster, "retention")
    assert f"left by agent pods that no longer exist: {holder}" in retention
    assert len(restic_snapshots(repo)) == 1  # keepLast 1: retention really ran


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs. Zombies do not count: an earlier test
    may have made this process a child subreaper, and orphans it never reaps would
    otherwise look alive forever."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


# --------------------------------------------------------------------------- RBAC


def api_call(call: Call) -> tuple[str, str, str] | None:
    """(API group, resource[/subresource], verb) of a request; None for discovery."""
    parts = [p for p in call.path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) > 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    named = len(rest) > 1
    watch = call.query.get("watch", "").lower() in ("true", "1")
    verb = {
        "GET": "watch" if watch else ("get" if named else "list"),
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if named else "deletecollection",
    }[call.method]
    return group, resource, verb


def chart_rules() -> dict[str, set[tuple[str, str, str]]]:
    """(group, resource, verb) each of the chart's service accounts may use."""
    from deploy.test_chart import render

    docs = render()
    values = {"sync": "stash-airflow-sync", "tasks": "stash-airflow-tasks"}
    roles = {
        (d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in ("ClusterRole", "Role")
    }
    out: dict[str, set[tuple[str, str, str]]] = {k: set() for k in values}
    for binding in (d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        ref = binding["roleRef"]
        for who, account in values.items():
            if any(s["name"] == account for s in binding["subjects"]):
                for rule in roles[(ref["kind"], ref["name"])]["rules"]:
                    out[who] |= {
                        (g, r, v)
                        for g in rule["apiGroups"]
                        for r in rule["resources"]
                        for v in rule["verbs"]
                    }
    return out


def test_chart_rbac_allows_every_call_made_above_and_nothing_unused() -> None:
    """Runs after the tests above (same module): their calls, against the chart's roles."""
    if not CALLS["sync"] or not CALLS["tasks"]:
        pytest.fail("no API calls recorded: run this module's tests together")
    from stash_plugin.runtime.kube import SCALABLE

    rules = chart_rules()
    # runtime.kube.Workloads calls the same way for every kind it scales; the tests
    # above scale Deployments only, so their calls stand for every SCALABLE kind.
    plurals = [f"{kind.lower()}s" for kind in SCALABLE]
    for who, calls in CALLS.items():
        made = {a for a in map(api_call, calls) if a is not None}
        made |= {
            (g, r.replace("deployments", plural, 1), v)
            for g, r, v in made
            if r.split("/")[0] == "deployments"
            for plural in plurals
        }
        assert sorted(made - rules[who]) == [], f"{who}: calls its role does not allow"
        unused = sorted(rules[who] - made)
        assert unused == [], f"{who}: rules no call needs: {unused}"
