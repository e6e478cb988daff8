"""Manifests as plain dicts: the one set of builders the demo, the tests and the
benchmarks write their resources with, so that all of them describe a Stash setup the
same way a user would write it in YAML.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from . import API_VERSION

DATA_MOUNT = "/source/data"
"""Where the sample workloads mount the volume that is backed up."""


def secret_doc(name: str, namespace: str, **values: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    }


def deployment_doc(
    name: str,
    namespace: str,
    host_path: Path | str | None,
    labels: dict[str, str] | None = None,
    *,
    volume: dict[str, Any] | None = None,
    volume_name: str = "data",
    replicas: int = 1,
    container: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Deployment mounting ``host_path`` (or the ``volume`` source) at /source/data."""
    labels = labels or {"app": name}
    pod_container = {"name": "app", "image": "busybox", **(container or {})}
    pod_container["volumeMounts"] = [{"name": volume_name, "mountPath": DATA_MOUNT}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        # Copies, not one shared dict: YAML would write a shared dict as an alias.
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "containers": [pod_container],
                    "volumes": [
                        {"name": volume_name, **(volume or {"hostPath": {"path": str(host_path)}})}
                    ],
                },
            },
        },
    }


def repository_doc(
    name: str, namespace: str, backend: dict[str, Any], secret: str = "repo-secret"
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Repository",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"backend": {**backend, "storageSecretName": secret}},
    }


def restic_doc(
    name: str,
    namespace: str,
    repository: str,
    app: str,
    *,
    schedule: str = "@every 1h",
    policy: dict[str, Any] | None = None,
    policy_name: str = "policy",
    volume_name: str = "data",
    **spec: Any,
) -> dict[str, Any]:
    """A volume Restic backing up /source/data of the workloads labelled ``app``."""
    policy = policy if policy is not None else {"keepLast": 5, "prune": True}
    return {
        "apiVersion": API_VERSION,
        "kind": "Restic",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "targetType": "Volume",
            "schedule": schedule,
            "repository": {"name": repository},
            "volumeSelector": {
                "selector": {"matchLabels": {"app": app}},
                "targetVolumes": [
                    {
                        "name": volume_name,
                        "mountPath": DATA_MOUNT,
                        "directories": [{"path": DATA_MOUNT, "retentionPolicyName": policy_name}],
                    }
                ],
            },
            "retentionPolicies": [{"name": policy_name, **policy}],
            **spec,
        },
    }


def backup_template_doc(
    name: str,
    repository: str,
    *,
    schedule: str | None = "@every 1h",
    policy: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A BackupTemplate backing up the ``data`` volume at /source/data of the workloads
    that name it, into the Repository ``repository`` of each workload's namespace."""
    policy = policy if policy is not None else {"keepLast": 5, "prune": True}
    body: dict[str, Any] = {
        "repository": {"name": repository},
        "targetVolumes": [{"name": "data", "mountPath": DATA_MOUNT}],
        "retentionPolicies": [{"name": "policy", **policy}],
        "retentionPolicyName": "policy",
        **spec,
    }
    if schedule is not None:
        body["schedule"] = schedule
    return {
        "apiVersion": API_VERSION,
        "kind": "BackupTemplate",
        "metadata": {"name": name},
        "spec": body,
    }


def recovery_doc(
    name: str,
    namespace: str,
    repository: str,
    target: Path | str,
    *,
    snapshot: str | None = None,
    paths: list[str] | None = None,
    repo_dir: str = "/volumes/deployment/app",
    **restorer: Any,
) -> dict[str, Any]:
    """A volume Recovery of ``repo_dir`` into the host folder ``target``."""
    vr: dict[str, Any] = {
        "repoDir": repo_dir,
        "recoverTo": [{"mountPath": DATA_MOUNT, "hostPath": {"path": str(target)}}],
        **restorer,
    }
    if snapshot:
        vr["snapshot"] = snapshot
    if paths:
        vr["paths"] = paths
    return {
        "apiVersion": API_VERSION,
        "kind": "Recovery",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"targetType": "Volume", "repository": {"name": repository}, "volumeRestorer": vr},
    }


def appbinding_doc(
    name: str, namespace: str, url: str, db_type: str, secret: str | None = None
) -> dict[str, Any]:
    """An AppBinding as KubeDB publishes one: type, address, login Secret."""
    spec: dict[str, Any] = {"type": db_type, "clientConfig": {"url": url}}
    if secret:
        spec["secret"] = {"name": secret}
    return {
        "apiVersion": "appcatalog.appscode.com/v1alpha1",
        "kind": "AppBinding",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def database_restic_doc(
    name: str,
    namespace: str,
    repository: str,
    accessor: dict[str, Any],
    *,
    schedule: str = "@every 1h",
    policy: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A database Restic; ``accessor`` is ``{"connectionURL": {...}}`` or ``{"AppRef": {...}}``
    (or ``{"databaseAccessors": [...]}``)."""
    policy = policy if policy is not None else {"keepLast": 5, "prune": True}
    return {
        "apiVersion": API_VERSION,
        "kind": "Restic",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "targetType": "Database",
            "schedule": schedule,
            "repository": {"name": repository},
            "databaseSelector": {**accessor, "retentionPolicyName": "policy"},
            "retentionPolicies": [{"name": "policy", **policy}],
            **spec,
        },
    }


def database_recovery_doc(
    name: str,
    namespace: str,
    repository: str,
    repo_dir: str,
    recover_to: dict[str, Any],
    *,
    snapshot: str | None = None,
    **restorer: Any,
) -> dict[str, Any]:
    """A Database Recovery of ``repo_dir`` into ``recover_to`` (an AppRef or connectionURL)."""
    dr: dict[str, Any] = {"repoDir": repo_dir, "recoverTo": recover_to, **restorer}
    if snapshot:
        dr["snapshot"] = snapshot
    return {
        "apiVersion": API_VERSION,
        "kind": "Recovery",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "targetType": "Database",
            "repository": {"name": repository},
            "databaseRestorer": dr,
        },
    }


def cluster_restic_doc(
    name: str,
    namespace: str,
    repository: str,
    selector: list[dict[str, Any]],
    *,
    schedule: str = "@every 1h",
    policy: dict[str, Any] | None = None,
    **cluster: Any,
) -> dict[str, Any]:
    """A Cluster Restic; ``selector`` is its ``resourceSelector``, ``cluster`` the other
    ``clusterResources`` fields (``parentsOnly``, ``namespaces``...)."""
    policy = policy if policy is not None else {"keepLast": 5, "prune": True}
    return {
        "apiVersion": API_VERSION,
        "kind": "Restic",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "targetType": "Cluster",
            "schedule": schedule,
            "repository": {"name": repository},
            "clusterResources": {
                "resourceSelector": selector,
                "retentionPolicyName": "policy",
                **cluster,
            },
            "retentionPolicies": [{"name": "policy", **policy}],
        },
    }


def cluster_recovery_doc(
    name: str, namespace: str, repository: str, repo_dir: str, **restorer: Any
) -> dict[str, Any]:
    """A Cluster Recovery; ``restorer`` holds ``overwrite``, ``dryRun``, ``namespaces``..."""
    return {
        "apiVersion": API_VERSION,
        "kind": "Recovery",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "targetType": "Cluster",
            "repository": {"name": repository},
            "clusterRestorer": {"repoDir": repo_dir, **restorer},
        },
    }


def write_manifests(folder: Path, docs: list[dict[str, Any]], filename: str = "all.yaml") -> Path:
    """All ``docs`` as one multi-document YAML file in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / filename).write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return folder
