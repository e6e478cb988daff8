"""Names that must stay stable: DAG ids, repository folders, restic hosts and tags.

Changing any of these orphans existing snapshots (retention and restore select by
host and tags), so they live in one place and follow Stash 0.8's layout.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the models are not needed to name things (a worker's one DAG)
    from ..api.kubeobjects import Workload


def backup_dag_id(namespace: str, restic: str, target: str) -> str:
    return f"stash-backup.{namespace}.{restic}.{target}"


def recovery_dag_id(namespace: str, recovery: str) -> str:
    return f"stash-recovery.{namespace}.{recovery}"


def maintenance_dag_id(namespace: str, repository: str) -> str:
    return f"stash-maintenance.{namespace}.{repository}"


def workload_target(workload: Workload) -> str:
    """``deployment.stash-demo``: also Stash 0.8's Repository object name for the target."""
    return f"{workload.kind.lower()}.{workload.name}"


STASH08_ROOT = ""
"""The ``prefix`` of a target in Stash 0.8's layout (``stash08Layout``): its folder sits
right under the backend's own prefix, with no ``volumes/`` in between."""


def _volume_dir(prefix: str | None, *parts: str) -> str:
    root = "volumes" if prefix is None else prefix.strip("/")
    return "/" + "/".join(p for p in (root, *parts) if p)


def volume_prefix(prefix: str | None, stash08_layout: bool) -> str | None:
    """The prefix a Restic's targets are planned with: a Stash 0.8 target without a
    ``prefix`` of its own keeps 0.8's folders."""
    return STASH08_ROOT if stash08_layout and not prefix else prefix


def volume_repo_dir(workload: Workload, prefix: str | None = None) -> str:
    """``/volumes/deployment/NAME``; Stash 0.8 used ``deployment/NAME`` for all of
    Deployment, ReplicaSet and ReplicationController, kept here for compatibility."""
    kind = workload.kind.lower()
    if kind in ("replicaset", "replicationcontroller"):
        kind = "deployment"
    return _volume_dir(prefix, kind, workload.name)


def statefulset_pod_target(workload: Workload, pod: str, prefix: str | None) -> tuple[str, str]:
    """(target, repoDir) of one StatefulSet pod: each pod has its own claims."""
    return f"statefulset.{pod}", _volume_dir(prefix, "statefulset", pod)


def daemonset_node_target(workload: Workload, node: str, prefix: str | None) -> tuple[str, str]:
    """(target, repoDir) of a DaemonSet's pod on one node (hostPath data differs per node)."""
    return (
        f"daemonset.{workload.name}.{node}",
        _volume_dir(prefix, "daemonset", workload.name, node),
    )


RESERVED_TAG_KEYS = ("namespace", "restic", "target", "path", "engine", "dump")
"""Tag keys (``KEY=value``) that Stash sets itself and selects snapshots by: a user's tag
that spells one could make another tenant's retention or restore pick its snapshots."""


def reserved_tag_key(tag: str) -> str | None:
    """The reserved key ``tag`` spells (``namespace`` for ``namespace=x``), if any."""
    key, sep, _ = tag.partition("=")
    return key if sep and key in RESERVED_TAG_KEYS else None


def snapshot_tags(namespace: str, restic: str, target: str, path: str) -> list[str]:
    """Tags that select exactly one directory of one target of one Restic.

    Every value is one tag: a comma would split it into two (restic's tag lists are
    comma-separated) and let a name spell another tenant's tag."""
    values = {"namespace": namespace, "restic": restic, "target": target, "path": path}
    for key, value in values.items():
        if not value or "," in value:
            raise ValueError(f"{key} {value!r} cannot be a snapshot tag (empty or has a comma)")
    return [f"{key}={value}" for key, value in values.items()]


def cluster_target(restic: str, prefix: str | None) -> tuple[str, str, str]:
    """(target, repoDir, restic host) of a Cluster Restic: ``/cluster/NAME``."""
    return "cluster", f"/{(prefix or 'cluster').strip('/')}/{restic}", "cluster"


CLUSTER_PATH = "/cluster"
"""What a Cluster snapshot is about (its ``path=`` tag and the status' folder): the
tree ``<namespace or _cluster>/<group or core>/<Kind>/<name>.yaml``."""


# --------------------------------------------------------------------------- databases

_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_component(value: str) -> str:
    """``value`` as one safe name component (DAG id, tag, folder, file name).

    A database name is a tenant's free text (``x; touch pwned``, ``../..``): anything
    but letters, digits, ``_`` and ``-`` becomes ``-``, and a name that had to change
    gets a short hash of the original, so two names never meet in one folder.
    """
    clean = _SAFE.sub("-", value).strip("-")[:80]
    if clean == value and clean:
        return clean
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return f"{clean}-{digest}" if clean else f"db-{digest}"


def database_host_label(host: str, port: int | None) -> str:
    """``db.demo.svc`` or ``127.0.0.1-5433``: the server part of a connection URL's names."""
    return f"{host}-{port}" if port else host


def appbinding_target(name: str, prefix: str | None) -> tuple[str, str, str]:
    """(target, repoDir, restic host) of a database named by an AppBinding."""
    return (
        f"appbinding.{name}",
        f"/{(prefix or 'databases').strip('/')}/appbinding/{name}",
        name,
    )


def url_target(host_label: str, database: str, prefix: str | None) -> tuple[str, str, str]:
    """(target, repoDir, restic host) of a database reached by connection URL."""
    db = safe_component(database)
    return (
        f"{host_label}.{db}",
        f"/{(prefix or 'databases').strip('/')}/{host_label}/{db}",
        host_label,
    )


def dump_file(engine: str, database: str) -> str:
    """The file name the dump has in its snapshot (``restic --stdin-filename``)."""
    if engine == "redis":
        return "dump.rdb"
    return f"{safe_component(database)}.sql"


POOL_PREFIX = "stash-ns-"


def pool_name(namespace: str) -> str:
    """The Airflow pool of a namespace's agent steps (``[stash] pools``): a namespace is
    a DNS label, so the name is always a valid pool name."""
    return f"{POOL_PREFIX}{namespace}"
