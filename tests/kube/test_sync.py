"""``stash sync`` against the fake API server: paged lists, watches, 410 Gone, outages.

The fake serves ``limit``/``continue`` pages and watch streams like a real server;
``store.compact()`` expires every older version (what etcd compaction does).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kube.fakeapi import Call, FakeKubeServer, Obj
from stashtest import deployment_doc, repository_doc, restic_doc

from stash_plugin.api.kubeobjects import parse_workload
from stash_plugin.sync import sync_forever, sync_once

NS = "shop"


@pytest.fixture
def server() -> Iterator[FakeKubeServer]:
    fake = FakeKubeServer().start()
    try:
        yield fake
    finally:
        fake.stop()
        assert fake.unhandled == []


def api_client(server: FakeKubeServer) -> Any:
    from kubernetes import client

    config = client.Configuration()
    config.host = server.url
    return client.ApiClient(config)


def put(server: FakeKubeServer, doc: Obj) -> Obj:
    store = server.store
    return store.create(store.type_of(doc["apiVersion"], doc["kind"]), NS, doc, from_api=False)


def snapshot_items(path: Path) -> dict[tuple[str, str], Obj]:
    items = json.loads(path.read_text())["items"]
    return {(o["kind"], o["metadata"]["name"]): o for o in items}


def lists(server: FakeKubeServer, plural: str) -> list[Call]:
    """The list calls (not watches) made for one resource type."""
    return [
        c
        for c in server.requests
        if c.path.endswith(f"/{plural}") and c.query.get("watch") != "true"
    ]


def heavy_deployment(name: str, settled: bool = False) -> Obj:
    """A Deployment as a real cluster returns it: managedFields, last-applied, status
    (``settled``: already observed, so the fake's controller adds no ReplicaSet)."""
    doc = deployment_doc(name, NS, f"/data/{name}")
    doc["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": json.dumps(doc),
        "deployment.kubernetes.io/revision": "3",
        "stash.appscode.com/backup-template": "nightly",
    }
    doc["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    doc["status"] = {"replicas": 1, "conditions": [{"type": "Available", "status": "True"}]}
    if settled:
        doc["status"]["observedGeneration"] = 1
    return doc


def test_sync_lists_in_pages_and_keeps_only_what_the_planner_reads(
    server: FakeKubeServer, tmp_path: Path
) -> None:
    full = {f"app-{i}": put(server, heavy_deployment(f"app-{i}", settled=True)) for i in range(7)}
    put(server, repository_doc("repo", NS, {"local": {"path": "/repo"}}))
    put(server, restic_doc("app-backup", NS, "repo", "app-1"))
    out = tmp_path / "snapshot.json"

    assert sync_once(api_client(server), out, page_size=3) is True

    pages = lists(server, "deployments")
    assert [c.query.get("limit") for c in pages] == ["3", "3", "3"]
    assert [bool(c.query.get("continue")) for c in pages] == [False, True, True]
    items = snapshot_items(out)
    assert sorted(n for k, n in items if k == "Deployment") == sorted(full)
    for name, obj in full.items():
        kept = items[("Deployment", name)]
        assert "status" not in kept and "managedFields" not in kept["metadata"]
        assert "resourceVersion" not in kept["metadata"]
        assert kept["metadata"]["annotations"] == {"stash.appscode.com/backup-template": "nightly"}
        # What the planner reads is all there (the revision annotation it ignores).
        assert parse_workload(kept, NS, name) == replace(
            parse_workload(obj, NS, name), annotations=kept["metadata"]["annotations"]
        )
        assert parse_workload(kept, NS, name).uid == obj["metadata"]["uid"]
    assert (
        items[("Restic", "app-backup")]["spec"]
        == restic_doc("app-backup", NS, "repo", "app-1")["spec"]
    )
    # Unchanged cluster, unchanged file: nothing for the dag-processor to re-parse.
    assert sync_once(api_client(server), out, page_size=3) is False


def start_sync(server: FakeKubeServer, out: Path) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(
        target=sync_forever,
        kwargs={
            "api_client_factory": lambda: api_client(server),
            "path": out,
            "interval": 0.1,
            "stop": stop,
            "watch_seconds": 2,
            "retry_seconds": 0.2,
            "page_size": 2,
        },
        daemon=True,
    )
    thread.start()
    return thread, stop


def wait_until(check: Any, what: str, timeout: float = 10) -> None:
    event = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        event.wait(0.05)
    pytest.fail(f"timed out waiting for {what}")


def has(out: Path, kind: str, name: str) -> bool:
    return out.exists() and (kind, name) in snapshot_items(out)


def test_sync_follows_changes_with_a_watch_and_writes_only_on_change(
    server: FakeKubeServer, tmp_path: Path
) -> None:
    put(server, repository_doc("repo", NS, {"local": {"path": "/repo"}}))
    put(server, heavy_deployment("app"))
    out = tmp_path / "snapshot.json"
    thread, stop = start_sync(server, out)
    try:
        wait_until(lambda: has(out, "Deployment", "app"), "the first snapshot")
        listed = {p: len(lists(server, p)) for p in ("restics", "deployments", "repositories")}

        server.store.create(
            server.store.type_named("Restic"), NS, restic_doc("app-backup", NS, "repo", "app")
        )
        wait_until(lambda: has(out, "Restic", "app-backup"), "the new Restic")
        wait_until(
            lambda: any(k == "ReplicaSet" for k, _ in snapshot_items(out)),
            "the Deployment's ReplicaSet (the fake's controller makes it)",
        )
        written = out.stat().st_mtime_ns, out.stat().st_ino
        text = out.read_text()

        # Every backup writes the Repository's status and a controller the Deployment's:
        # neither is in the snapshot, so the file stays as it is.
        repos, deps = server.store.type_named("Repository"), server.store.type_named("Deployment")
        server.store.update(
            repos, NS, "repo", lambda o: {**o, "status": {"backupRepos": [{"backupCount": 1}]}}
        )
        server.store.update(deps, NS, "app", lambda o: {**o, "status": {"replicas": 3}})
        threading.Event().wait(1.0)
        assert out.read_text() == text
        assert (out.stat().st_mtime_ns, out.stat().st_ino) == written

        server.store.delete(server.store.type_named("Restic"), NS, "app-backup")
        wait_until(lambda: not has(out, "Restic", "app-backup"), "the deleted Restic to go")
        # Changes came by watch (re-opened after its 2 s timeout), never by a re-list.
        wait_until(
            lambda: len([c for c in server.requests if c.query.get("watch") == "true"]) > 22,
            "the watches to be re-opened",
        )
        assert {p: len(lists(server, p)) for p in listed} == listed
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()


def test_sync_lists_again_when_its_version_expired(server: FakeKubeServer, tmp_path: Path) -> None:
    put(server, heavy_deployment("app"))
    out = tmp_path / "snapshot.json"
    thread, stop = start_sync(server, out)
    try:
        wait_until(lambda: has(out, "Deployment", "app"), "the first snapshot")
        before = len(lists(server, "deployments"))
        server.down(refuse=True)  # watches break while the cluster moves on
        deps = server.store.type_named("Deployment")
        server.store.create(deps, NS, deployment_doc("late", NS, "/data/late"), from_api=False)
        server.store.compact()  # ... and the versions they knew are compacted away
        server.up()
        wait_until(lambda: has(out, "Deployment", "late"), "the change made while away")
        assert len(lists(server, "deployments")) > before
    finally:
        stop.set()
        thread.join(timeout=5)


def test_an_unreachable_api_server_keeps_the_last_snapshot(
    server: FakeKubeServer, tmp_path: Path
) -> None:
    out = tmp_path / "snapshot.json"
    out.write_text('{"apiVersion": "v1", "kind": "List", "items": []}')
    put(server, heavy_deployment("app"))
    server.down()
    thread, stop = start_sync(server, out)
    try:
        wait_until(lambda: len(server.requests) > 20, "sync to retry")
        assert json.loads(out.read_text())["items"] == []
        server.up()
        wait_until(lambda: has(out, "Deployment", "app"), "the snapshot once the server is back")
    finally:
        stop.set()
        thread.join(timeout=5)


def test_stash_sync_refreshes_the_dag_index_after_writing_a_changed_snapshot(
    kube_cluster: Any,
    stash_env: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The DAG processor then finds the index fresh: no shard plans 10,000 targets
    within its import timeout."""
    from stash_plugin.cli import main

    monkeypatch.setenv("AIRFLOW__STASH__RUNTIME", "kubernetes")  # a cluster's snapshot
    from stash_plugin.factory import fresh_index
    from stash_plugin.settings import load_settings

    kube_cluster.apply(deployment_doc("app-1", "default", "/data/app-1"))
    backend = {"local": {"mountPath": "/repo", "hostPath": {"path": str(stash_env["root"])}}}
    kube_cluster.apply(repository_doc("repo", "default", backend))
    kube_cluster.apply(restic_doc("app-backup", "default", "repo", "app-1"))
    index_file = stash_env["state"] / "dag-index.pickle"
    out = stash_env["manifests"] / "cluster.json"
    # The fake's controller adds the Deployment's ReplicaSet (which sync copies) on its
    # own time: let it, or the second sync below would rightly see a change.
    store = kube_cluster.server.store
    replica_sets = store.type_named("ReplicaSet")
    wait_until(lambda: bool(store.select(replica_sets, "default")), "the ReplicaSet")

    assert main(["sync", "--once", "--output", str(out)]) == 0
    assert capsys.readouterr().out == f"{out} updated\n"
    index = fresh_index(load_settings())
    assert index is not None
    assert "stash-backup.default.app-backup.deployment.app-1" in index.dag_ids
    built = index_file.stat().st_mtime_ns

    # Unchanged cluster: the snapshot and the index stay as they are.
    assert main(["sync", "--once", "--output", str(out)]) == 0
    assert capsys.readouterr().out == f"{out} unchanged\n"
    assert index_file.stat().st_mtime_ns == built

    kube_cluster.apply(restic_doc("other", "default", "repo", "app-1", schedule="@every 2h"))
    assert main(["sync", "--once", "--output", str(out)]) == 0
    index = fresh_index(load_settings())
    assert index is not None and "stash-backup.default.other.deployment.app-1" in index.dag_ids
