"""Stash 0.8's ``Restic`` and ``Recovery`` shapes, converted to the new ones in memory.

Same group, version and kinds as the new shapes, so an old object is told apart by
its fields (``fileGroups``, ``backend``, ``recoveredVolumes``...). Converting keeps
every backup where Stash 0.8 put it: the inline ``backend`` becomes a Repository of
the Restic's name in the Restic's namespace (same Secret, same prefix), and the new
Restic says ``stash08Layout: true`` so that its targets keep 0.8's folders
(``deployment/NAME``, ``statefulset/POD``, ``daemonset/NAME/NODE``) and restic hosts.

Every value is a tenant's and is checked here or by the new models it lands in: a
conversion never widens what an object may reach (its own namespace's Secret, its
own repository folder).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .common import clean_path, path_under
from .errors import FieldError
from .names import dns_subdomain

LEGACY_MARKERS = {
    "Restic": frozenset({"selector", "fileGroups", "backend", "volumeMounts", "type"}),
    "Recovery": frozenset({"snapshot", "paths", "recoveredVolumes", "nodeSelector"}),
}
"""Fields only the Stash 0.8 shapes have (the new shapes have ``targetType``)."""

_RESTIC_FIELDS = frozenset(
    {
        "selector",
        "fileGroups",
        "backend",
        "schedule",
        "volumeMounts",
        "resources",
        "retentionPolicies",
        "type",
        "paused",
        "imagePullSecrets",
    }
)
_RECOVERY_FIELDS = frozenset(
    {"repository", "snapshot", "paths", "recoveredVolumes", "nodeSelector", "imagePullSecrets"}
)
_FILE_GROUP_FIELDS = frozenset({"path", "tags", "retentionPolicyName"})
_META_KEPT = ("name", "namespace", "labels", "annotations")

HOSTNAME_LABEL = "kubernetes.io/hostname"
_SHORT_ID = re.compile(r"^[0-9a-f]{8}$")
_DEPLOYMENT_LIKE = ("deployment", "replicaset", "replicationcontroller")


def is_legacy(kind: str, spec: Any) -> bool:
    """Whether ``spec`` is Stash 0.8's shape of ``kind``."""
    markers = LEGACY_MARKERS.get(kind)
    return bool(
        markers and isinstance(spec, Mapping) and "targetType" not in spec and markers & set(spec)
    )


@dataclass(frozen=True)
class Converted:
    """What one Stash 0.8 document became: new-shape documents (a Restic's Repository
    first), and the deprecation note that names the old object."""

    kind: str
    namespace: str
    name: str
    documents: tuple[dict[str, Any], ...]

    @property
    def object_ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def note(self) -> str:
        made = ", ".join(
            f"{d['kind']} {self.namespace}/{d['metadata']['name']}" for d in self.documents
        )
        return (
            f"{self.object_ref}: the Stash 0.8 shape is deprecated; read as {made} "
            "(`stash migrate FILE` rewrites it)"
        )


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise FieldError(field, "must be a mapping")
    return value


def _list(value: Any, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise FieldError(field, "must be a list")
    return value


def _unknown(given: Mapping[str, Any], known: frozenset[str], field: str) -> None:
    extra = sorted(str(k) for k in given if k not in known)
    if extra:
        raise FieldError(f"{field}.{extra[0]}", "unknown field of the Stash 0.8 shape")


def _path(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise FieldError(field, "must be an absolute path")
    try:
        return clean_path(value)
    except ValueError as exc:
        raise FieldError(field, str(exc)) from None


def _metadata(doc: Mapping[str, Any], namespace: str, name: str) -> dict[str, Any]:
    meta = doc.get("metadata") or {}
    kept = {k: meta[k] for k in _META_KEPT if k in meta}
    return {**kept, "name": name, "namespace": namespace}


# --------------------------------------------------------------------------- Restic


def _target_volumes(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each file group goes into the volume mount that holds it (the deepest one)."""
    mounts = []
    for i, m in enumerate(_list(spec.get("volumeMounts"), "spec.volumeMounts")):
        m = _mapping(m, f"spec.volumeMounts[{i}]")
        if not isinstance(m.get("name"), str) or not m["name"]:
            raise FieldError(f"spec.volumeMounts[{i}].name", "required")
        mounts.append((m["name"], _path(m.get("mountPath"), f"spec.volumeMounts[{i}].mountPath")))
    groups = _list(spec.get("fileGroups"), "spec.fileGroups")
    if not groups:
        raise FieldError("spec.fileGroups", "required: the folders to back up")
    volumes: dict[int, list[dict[str, Any]]] = {}
    for j, g in enumerate(groups):
        field = f"spec.fileGroups[{j}]"
        g = _mapping(g, field)
        _unknown(g, _FILE_GROUP_FIELDS, field)
        path = _path(g.get("path"), f"{field}.path")
        holders = [i for i, (_, mp) in enumerate(mounts) if path_under(path, mp)]
        if not holders:
            raise FieldError(
                f"{field}.path",
                f"{path} is not under any spec.volumeMounts mountPath "
                f"({', '.join(mp for _, mp in mounts) or 'none given'})",
            )
        best = max(holders, key=lambda i: len(mounts[i][1]))
        directory: dict[str, Any] = {"path": path}
        if g.get("retentionPolicyName") is not None:
            directory["retentionPolicyName"] = g["retentionPolicyName"]
        if g.get("tags"):
            directory["tags"] = _list(g["tags"], f"{field}.tags")
        volumes.setdefault(best, []).append(directory)
    return [
        {"name": mounts[i][0], "mountPath": mounts[i][1], "directories": dirs}
        for i, dirs in sorted(volumes.items())
    ]


def _runtime_settings(spec: Mapping[str, Any], pod_only: bool = False) -> dict[str, Any]:
    pod: dict[str, Any] = {}
    if spec.get("imagePullSecrets"):
        pod["imagePullSecrets"] = spec["imagePullSecrets"]
    if spec.get("nodeSelector"):
        pod["nodeSelector"] = spec["nodeSelector"]
    out: dict[str, Any] = {"pod": pod} if pod else {}
    if not pod_only and spec.get("resources"):
        out["container"] = {"resources": spec["resources"]}
    return out


def convert_restic(doc: Mapping[str, Any], namespace: str, name: str) -> Converted:
    """A Stash 0.8 Restic as a Repository (its backend) and a new-shape Restic."""
    spec = _mapping(doc.get("spec"), "spec")
    _unknown(spec, _RESTIC_FIELDS, "spec")
    backend = dict(_mapping(spec.get("backend"), "spec.backend"))
    if "storageSecretName" not in backend:
        raise FieldError("spec.backend.storageSecretName", "required: the Secret of the backend")
    if spec.get("type", "online") not in ("online", "offline"):
        raise FieldError("spec.type", f"{spec.get('type')!r} is not online or offline")
    if not spec.get("schedule"):
        raise FieldError("spec.schedule", "required: Stash 0.8 backed up on a schedule")
    new_spec: dict[str, Any] = {
        "targetType": "Volume",
        "schedule": spec["schedule"],
        "repository": {"name": name},
        "stash08Layout": True,
        "volumeSelector": {
            "selector": spec.get("selector") or {},
            "targetVolumes": _target_volumes(spec),
        },
    }
    if spec.get("type") == "offline":
        new_spec["backupMode"] = "Offline"
    if spec.get("paused"):
        new_spec["paused"] = True
    if spec.get("retentionPolicies"):
        new_spec["retentionPolicies"] = spec["retentionPolicies"]
    settings = _runtime_settings(spec)
    if settings:
        new_spec["runtimeSettings"] = settings
    api_version = doc.get("apiVersion")
    repository = {
        "apiVersion": api_version,
        "kind": "Repository",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"backend": backend},
    }
    restic = {
        "apiVersion": api_version,
        "kind": "Restic",
        "metadata": _metadata(doc, namespace, name),
        "spec": new_spec,
    }
    return Converted("Restic", namespace, name, (repository, restic))


# --------------------------------------------------------------------------- Recovery


@dataclass(frozen=True)
class LegacyRepository:
    """A Stash 0.8 Repository name (``deployment.NAME``...) read back into its parts."""

    kind: str
    """``deployment``, ``replicaset``, ``replicationcontroller``, ``statefulset`` or
    ``daemonset``: the workload kind, lower-cased."""
    workload: str
    """The workload's name (a StatefulSet's, without the pod's ordinal)."""
    repo_dir: str
    host: str


def legacy_repository(name: str, node: str | None, field: str) -> LegacyRepository:
    """Where Stash 0.8 kept the repository it named ``name``, and its restic host."""
    kind, dot, rest = name.partition(".")
    try:
        dns_subdomain(rest)
    except ValueError:
        rest = ""
    if not dot or not rest:
        raise FieldError(
            field,
            f"{name!r} is not a Stash 0.8 repository name (deployment.NAME, "
            "replicaset.NAME, replicationcontroller.NAME, statefulset.POD, daemonset.NAME)",
        )
    if kind in _DEPLOYMENT_LIKE:
        return LegacyRepository(kind, rest, f"/deployment/{rest}", rest)
    if kind == "statefulset":
        workload, dash, ordinal = rest.rpartition("-")
        if not dash or not ordinal.isdigit():
            raise FieldError(field, f"{name!r}: a StatefulSet's repository is statefulset.NAME-N")
        return LegacyRepository(kind, workload, f"/statefulset/{rest}", rest)
    if kind == "daemonset":
        if node is None:
            raise FieldError(
                "spec.nodeSelector",
                f"Stash 0.8 kept {name} in one folder per node: name the node with "
                f"spec.nodeSelector {HOSTNAME_LABEL}",
            )
        return LegacyRepository(kind, rest, f"/daemonset/{rest}/{node}", node)
    raise FieldError(field, f"{name!r}: {kind!r} is not a workload kind Stash 0.8 backed up")


_KINDS = {
    "deployment": "Deployment",
    "replicaset": "ReplicaSet",
    "replicationcontroller": "ReplicationController",
    "statefulset": "StatefulSet",
    "daemonset": "DaemonSet",
}


def workload_of(repository: str) -> tuple[str, str]:
    """(Kind, name) of the workload a Stash 0.8 repository name was made for."""
    kind, _, rest = repository.partition(".")
    if kind == "statefulset":
        rest = rest.rpartition("-")[0] or rest
    return _KINDS.get(kind, kind), rest


def _node(spec: Mapping[str, Any]) -> str | None:
    selector = spec.get("nodeSelector")
    if selector is None:
        return None
    node = _mapping(selector, "spec.nodeSelector").get(HOSTNAME_LABEL)
    if node is None:
        return None
    field = f"spec.nodeSelector[{HOSTNAME_LABEL!r}]"
    if not isinstance(node, str):
        raise FieldError(field, "must be a node name")
    try:
        return dns_subdomain(node)
    except ValueError as exc:
        raise FieldError(field, str(exc)) from None


def _snapshot(value: Any, repository: str) -> str | None:
    """``REPOSITORY-ID8`` as Stash 0.8 named it (the id is the last dash token)."""
    if value is None or value == "":
        return None
    field = "spec.snapshot"
    if not isinstance(value, str):
        raise FieldError(field, "must be a snapshot name")
    owner, dash, short = value.rpartition("-")
    if not dash or not _SHORT_ID.match(short):
        raise FieldError(
            field,
            f"{value!r} is not a Stash 0.8 snapshot name (the repository's name, '-' and "
            "8 hexadecimal characters of the restic id)",
        )
    if owner != repository:
        raise FieldError(field, f"{value!r} is a snapshot of {owner!r}, not of {repository!r}")
    return value


def _recover_to(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for i, v in enumerate(_list(spec.get("recoveredVolumes"), "spec.recoveredVolumes")):
        field = f"spec.recoveredVolumes[{i}]"
        v = dict(_mapping(v, field))
        v["mountPath"] = _path(v.get("mountPath"), f"{field}.mountPath")
        v.pop("name", None)  # a volume's name; the new shape names volumes itself
        out.append(v)
    if not out:
        raise FieldError("spec.recoveredVolumes", "required: where to restore to")
    return out


def convert_recovery(doc: Mapping[str, Any], namespace: str, name: str) -> Converted:
    """A Stash 0.8 Recovery as a new-shape one.

    ``spec.repository`` still names the 0.8 Repository (``deployment.NAME``) until
    :func:`repository_for` finds the converted Restic whose backend holds it."""
    spec = _mapping(doc.get("spec"), "spec")
    _unknown(spec, _RECOVERY_FIELDS, "spec")
    ref = _mapping(spec.get("repository"), "spec.repository")
    repo_name = ref.get("name")
    if not isinstance(repo_name, str):
        raise FieldError("spec.repository.name", "required")
    ref_ns = ref.get("namespace")
    if ref_ns not in (None, "", namespace):
        raise FieldError(
            "spec.repository.namespace",
            f"names namespace {ref_ns!r}: a Stash 0.8 Recovery is converted within its own "
            f"namespace {namespace} only (restore another namespace's data from there)",
        )
    where = legacy_repository(repo_name, _node(spec), "spec.repository.name")
    restorer: dict[str, Any] = {
        "repoDir": where.repo_dir,
        "stash08Host": where.host,
        "recoverTo": _recover_to(spec),
    }
    snapshot = _snapshot(spec.get("snapshot"), repo_name)
    if snapshot:
        restorer["snapshot"] = snapshot
    paths = [
        _path(p, f"spec.paths[{i}]") for i, p in enumerate(_list(spec.get("paths"), "spec.paths"))
    ]
    if paths:
        restorer["paths"] = paths
    new_spec: dict[str, Any] = {
        "targetType": "Volume",
        "repository": {"name": repo_name},
        "volumeRestorer": restorer,
    }
    settings = _runtime_settings(spec, pod_only=True)
    if settings:
        new_spec["runtimeSettings"] = settings
    recovery = {
        "apiVersion": doc.get("apiVersion"),
        "kind": "Recovery",
        "metadata": _metadata(doc, namespace, name),
        "spec": new_spec,
    }
    return Converted("Recovery", namespace, name, (recovery,))


def convert(doc: Mapping[str, Any], kind: str, namespace: str, name: str) -> Converted:
    if kind == "Restic":
        return convert_restic(doc, namespace, name)
    return convert_recovery(doc, namespace, name)
