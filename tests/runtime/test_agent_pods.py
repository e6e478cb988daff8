"""Which agent pods count as live for the agent's lock rule, listed over real HTTP."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from kube.fakeapi import NO_KUBELET_ANNOTATION
from kube.harness import start_cluster

from stash_plugin.runtime.kube import dead_lock_env, hook


def pod(name: str, ns: str, phase: str, labels: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels,
            "annotations": {NO_KUBELET_ANNOTATION: "true"},
        },
        "spec": {"containers": [{"name": "base", "image": "agent"}], **spec},
        "status": {"phase": phase},
    }


def test_live_agent_pods_of_every_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubernetes import client

    cluster = start_cluster(tmp_path, monkeypatch, namespace="demo")
    try:
        backup, recovery = {"stash.appscode.com/restic": "r"}, {"stash.appscode.com/recovery": "x"}
        long_name = "stash-retention-" + "a" * 50 + "-b.c"
        for doc in (
            pod("stash-backup-aaaa1111", "demo", "Running", backup),
            pod("stash-restore-bbbb2222", "other", "Pending", recovery),
            pod("stash-backup-lost3333", "other", "Unknown", backup),  # node gone: may run
            pod("stash-backup-done4444", "demo", "Succeeded", backup),
            pod("stash-backup-oom55555", "demo", "Failed", backup),
            pod("stash-app-66666666", "demo", "Running", {"app": "stash"}),  # no agent pod
            pod("stash-verify-77777777", "demo", "Running", backup, hostname="custom-host"),
            pod(long_name, "demo", "Running", backup),
        ):
            cluster.apply(doc)
        core = client.CoreV1Api(hook().api_client)
        before = time.time()
        env = dead_lock_env(core, "stash-", clock_skew=30)
        assert env["STASH_LIVE_AGENT_PODS"].split(",") == sorted(
            [
                "stash-backup-aaaa1111",
                "stash-restore-bbbb2222",
                "stash-backup-lost3333",
                "custom-host",
                long_name[:63].rstrip("-."),  # what the kubelet makes the host name
            ]
        )
        assert env["STASH_AGENT_POD_PREFIX"] == "stash-"
        assert before - 30.001 <= float(env["STASH_DEAD_LOCK_BEFORE"]) <= time.time() - 30

        cluster.down(refuse=True)  # no listing, no rule: the agent then only applies restic's own
        assert dead_lock_env(core, "stash-", clock_skew=30) == {}
        cluster.up()
    finally:
        cluster.stop()
