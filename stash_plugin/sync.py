"""The cluster source: ``stash sync`` copies Stash objects and workloads into a file.

The DAG factory never calls the API server (parsing must be fast and must not depend
on the network); it reads the snapshot this writes. The file is replaced atomically
and only after a complete, successful listing, so when the API server is unreachable
the last snapshot stays and so do the DAGs. Secrets are never copied.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stash_plugin import GROUP, VERSION

log = logging.getLogger(__name__)

STASH_PLURALS = {
    "Repository": "repositories",
    "Restic": "restics",
    "Recovery": "recoveries",
    "BackupAgent": "backupagents",
    "BackupTemplate": "backuptemplates",
}
WORKLOAD_LISTS = {
    # kind: (api attribute, list method)
    "Deployment": ("apps", "list_deployment_for_all_namespaces"),
    "StatefulSet": ("apps", "list_stateful_set_for_all_namespaces"),
    "DaemonSet": ("apps", "list_daemon_set_for_all_namespaces"),
    "ReplicaSet": ("apps", "list_replica_set_for_all_namespaces"),
    "ReplicationController": ("core", "list_replication_controller_for_all_namespaces"),
}
_DROP_METADATA = ("managedFields",)
APPBINDINGS = ("appcatalog.appscode.com", "v1alpha1", "appbindings")
"""KubeDB's AppBindings, which a database Restic's AppRef names; optional (a cluster
without KubeDB has no such type, and that is no reason to keep the last snapshot)."""


def _clean(obj: dict[str, Any], kind: str, api_version: str) -> dict[str, Any]:
    obj = dict(obj)
    obj["kind"] = kind
    obj["apiVersion"] = api_version
    meta = dict(obj.get("metadata") or {})
    for key in _DROP_METADATA:
        meta.pop(key, None)
    obj["metadata"] = meta
    return obj


def collect(api_client: Any) -> list[dict[str, Any]]:
    """List everything the planner needs; raises if any listing fails."""
    from kubernetes import client

    custom = client.CustomObjectsApi(api_client)
    apis = {"apps": client.AppsV1Api(api_client), "core": client.CoreV1Api(api_client)}
    items: list[dict[str, Any]] = []
    for kind, plural in STASH_PLURALS.items():
        listing = custom.list_cluster_custom_object(GROUP, VERSION, plural)
        items += [_clean(o, kind, f"{GROUP}/{VERSION}") for o in listing.get("items", [])]
    items += _appbindings(custom)
    for kind, (api, method) in WORKLOAD_LISTS.items():
        listing = getattr(apis[api], method)()
        version = "v1" if api == "core" else "apps/v1"
        for obj in listing.items:
            data = api_client.sanitize_for_serialization(obj)
            data.pop("status", None)
            items.append(_clean(data, kind, version))
    for node in apis["core"].list_node().items:
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": node.metadata.name, "labels": node.metadata.labels or {}},
            }
        )
    items.sort(
        key=lambda o: (o["kind"], o["metadata"].get("namespace") or "", o["metadata"]["name"])
    )
    return items


def _appbindings(custom: Any) -> list[dict[str, Any]]:
    from kubernetes.client.exceptions import ApiException

    group, version, plural = APPBINDINGS
    try:
        listing = custom.list_cluster_custom_object(group, version, plural)
    except ApiException as exc:
        if exc.status == 404:  # the type is not installed
            return []
        raise
    return [_clean(o, "AppBinding", f"{group}/{version}") for o in listing.get("items", [])]


def write_snapshot(items: list[dict[str, Any]], path: Path) -> bool:
    """Atomically replace ``path``; returns False (and writes nothing) when unchanged,
    so the dag-processor does not re-parse for nothing."""
    text = json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": items}, indent=1, sort_keys=True
    )
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".stash-sync-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return True


def sync_once(api_client: Any, path: Path) -> bool:
    return write_snapshot(collect(api_client), path)


def sync_forever(
    api_client_factory: Callable[[], Any],
    path: Path,
    interval: float = 10.0,
    rounds: int | None = None,
) -> None:
    """Re-list every ``interval`` seconds; an unreachable API server keeps the last file."""
    done = 0
    while rounds is None or done < rounds:
        try:
            if sync_once(api_client_factory(), path):
                log.info("cluster snapshot updated: %s", path)
        except Exception as exc:  # keep the last snapshot whatever went wrong
            log.warning("cluster sync failed, keeping the last snapshot: %s", exc)
        done += 1
        if rounds is None or done < rounds:
            time.sleep(interval)


def apply_objects(api_client: Any, objects: list[dict[str, Any]]) -> list[str]:
    """Create each Stash object, or replace the one of the same name (a Stash 0.8
    Restic or Recovery becomes its new shape in place); returns what was done, one
    line per object. Stops at the first failure, naming the object."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    custom = client.CustomObjectsApi(api_client)
    done = []
    for obj in objects:
        kind, meta = obj["kind"], obj["metadata"]
        ns, name = meta.get("namespace") or "default", meta["name"]
        where = (GROUP, VERSION, ns, STASH_PLURALS[kind])
        try:
            current = custom.get_namespaced_custom_object(*where, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            custom.create_namespaced_custom_object(*where, obj)
            done.append(f"created {kind} {ns}/{name}")
            continue
        version = (current.get("metadata") or {}).get("resourceVersion")
        body = {**obj, "metadata": {**meta, "resourceVersion": version}}
        custom.replace_namespaced_custom_object(*where, name, body)
        done.append(f"replaced {kind} {ns}/{name}")
    return done
