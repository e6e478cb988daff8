"""The Repository status written concurrently by many targets: no entry is lost.

Real HTTP against the fake API server, which answers 409 to a replace carrying a
stale resourceVersion, exactly as the real API server does.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kube.harness import start_cluster

from stash_plugin.plan.model import TargetRef
from stash_plugin.runtime.kube import KubeStatusStore, hook
from stash_plugin.runtime.status import BackupOutcome


def target(i: int) -> TargetRef:
    return TargetRef(
        type="Volumes",
        target=f"deployment.app{i}",
        repository_namespace="demo",
        repository_name="repo",
        restic_namespace="demo",
        restic_name=f"r{i}",
        repo_dir=f"/volumes/deployment/app{i}",
        workload_kind="Deployment",
        workload_name=f"app{i}",
    )


def test_concurrent_status_updates_keep_every_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = start_cluster(tmp_path, monkeypatch, namespace="demo")
    try:
        cluster.apply(
            {
                "apiVersion": "stash.appscode.com/v1alpha1",
                "kind": "Repository",
                "metadata": {"name": "repo", "namespace": "demo"},
                "spec": {"backend": {"rest": {"url": "http://x/"}, "storageSecretName": "s"}},
                "status": {"note": "kept"},
            }
        )
        errors: list[BaseException] = []

        def writer(i: int) -> None:
            store = KubeStatusStore(hook().custom_object_client, attempts=50)
            try:
                for n in range(3):
                    ok = BackupOutcome(True, datetime.now(UTC), 1.5, (f"id{i}{n}",), n + 1)
                    store.record_backup(target(i), ok)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        status = cluster.get("repositories", "repo", "demo")["status"]
        entries = {e["resticName"]: e for e in status["backupRepos"]}
        assert sorted(entries) == [f"r{i}" for i in range(6)]
        assert all(e["backupCount"] == 3 and e["snapshotCount"] == 3 for e in entries.values())
        assert status["note"] == "kept"
        conflicts = [r for r in cluster.requests if r.status == 409]
        assert conflicts, "the writers never collided, so the retry was not exercised"
    finally:
        cluster.stop()
