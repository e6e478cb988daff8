"""The few plain Kubernetes objects Stash reads: Secrets and workloads.

They are not Stash's to validate, so they are read leniently: only the fields a
backup needs are picked out, and everything else is left alone.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .common import clean_path
from .errors import FieldError
from .names import dns_label, dns_subdomain

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController")


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    """An optional mapping (absent or empty is ``{}``); anything else names the field."""
    if not value:
        return {}
    if not isinstance(value, Mapping):
        raise FieldError(field, f"must be a mapping, not {type(value).__name__}")
    return value


def _list(value: Any, field: str) -> list[Any]:
    """An optional list (absent or empty is ``[]``); anything else names the field."""
    if not value:
        return []
    if not isinstance(value, list):
        raise FieldError(field, f"must be a list, not {type(value).__name__}")
    return value


@dataclass(frozen=True)
class Secret:
    """A Secret's keys; values stay encoded until a runtime asks for one."""

    namespace: str
    name: str
    data: Mapping[str, str] = field(repr=False)
    """Base64 values, as in the manifest (``stringData`` is encoded on load)."""

    def value(self, key: str) -> str | None:
        raw = self.data.get(key)
        if raw is None:
            return None
        return base64.b64decode(raw).decode()

    def __repr__(self) -> str:  # never print values
        return f"Secret({self.namespace}/{self.name}, keys={sorted(self.data)})"


@dataclass(frozen=True)
class Workload:
    """A workload whose pods mount the volumes to back up."""

    kind: str
    namespace: str
    name: str
    labels: Mapping[str, str]
    replicas: int | None
    volumes: Mapping[str, Mapping[str, Any]]
    """Pod template volumes by name (the raw volume source mappings)."""
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    """Labels of the pod template (what the workload's pods carry)."""
    claim_templates: tuple[str, ...] = ()
    """Names of a StatefulSet's volumeClaimTemplates (each pod has its own claim)."""
    controlled: bool = False
    """Managed by another workload (a Deployment's ReplicaSet): backed up through its owner."""
    annotations: Mapping[str, str] = field(default_factory=dict)
    """Its own annotations (``stash.appscode.com/backup-template``...): a tenant's values."""
    uid: str | None = None
    """``metadata.uid`` where the source has it (the cluster): a recreated workload has a
    new one."""

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class Node:
    """A cluster node, for DaemonSets whose data lives on every node."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


def parse_secret(doc: Mapping[str, Any], namespace: str, name: str) -> Secret:
    """Build a Secret; raises ValueError naming the key (never the value) when malformed."""
    data: dict[str, str] = {}
    for key, value in _mapping(doc.get("data"), "data").items():
        try:
            base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise FieldError(f"data.{key}", "not valid base64") from None
        data[str(key)] = str(value)
    for key, value in _mapping(doc.get("stringData"), "stringData").items():
        data[str(key)] = base64.b64encode(str(value).encode()).decode()
    return Secret(namespace=namespace, name=name, data=data)


def _kube_names(name: str, namespace: str | None = None) -> None:
    """A workload's or node's name becomes a restic host and part of a snapshot tag and
    a repository folder: only a real Kubernetes name may, so that no name can spell
    another target's tag (``x,namespace=other``) or folder (``../x``)."""
    try:
        dns_subdomain(name)
    except ValueError as exc:
        raise FieldError("metadata.name", str(exc)) from None
    if namespace is not None:
        try:
            dns_label(namespace)
        except ValueError as exc:
            raise FieldError("metadata.namespace", str(exc)) from None


def _clean_host_path(path: str, where: str) -> str:
    try:
        return clean_path(path)
    except ValueError as exc:
        raise FieldError(f"{where}.hostPath.path", str(exc)) from None


def _volume(vol: Any, index: int) -> tuple[str, Mapping[str, Any]]:
    """A pod-template volume by name; a ``hostPath`` path is checked like every path
    of a Stash resource (the local runtime backs it up and mounts it as given)."""
    where = f"spec.template.spec.volumes[{index}]"
    if not isinstance(vol, Mapping) or not isinstance(vol.get("name"), str):
        raise FieldError(f"{where}.name", "missing")
    host = vol.get("hostPath")
    if host is not None:
        path = host.get("path") if isinstance(host, Mapping) else None
        if not isinstance(path, str):
            raise FieldError(f"{where}.hostPath.path", "missing")
        host = {**host, "path": _clean_host_path(path, where)}
        vol = {**vol, "hostPath": host}
    return vol["name"], {k: v for k, v in vol.items() if k != "name"}


def parse_workload(doc: Mapping[str, Any], namespace: str, name: str) -> Workload:
    """Pick a workload's labels, replicas and pod-template volumes."""
    _kube_names(name, namespace)
    meta = _mapping(doc.get("metadata"), "metadata")
    spec = _mapping(doc.get("spec"), "spec")
    pod_template = _mapping(spec.get("template"), "spec.template")
    template = _mapping(pod_template.get("spec"), "spec.template.spec")
    volumes: dict[str, Mapping[str, Any]] = {}
    for i, vol in enumerate(_list(template.get("volumes"), "spec.template.spec.volumes")):
        key, source = _volume(vol, i)
        volumes[key] = source
    replicas = spec.get("replicas")
    claims = tuple(
        str(t["metadata"]["name"])
        for t in _list(spec.get("volumeClaimTemplates"), "spec.volumeClaimTemplates")
        if isinstance(t, Mapping)
        and isinstance(t.get("metadata"), Mapping)
        and t["metadata"].get("name")
    )
    return Workload(
        kind=str(doc["kind"]),
        namespace=namespace,
        name=name,
        labels={str(k): str(v) for k, v in _mapping(meta.get("labels"), "metadata.labels").items()},
        replicas=int(replicas) if isinstance(replicas, int) else None,
        volumes=volumes,
        pod_labels={
            str(k): str(v)
            for k, v in _mapping(
                _mapping(pod_template.get("metadata"), "spec.template.metadata").get("labels"),
                "spec.template.metadata.labels",
            ).items()
        },
        claim_templates=claims,
        annotations={
            str(k): str(v)
            for k, v in _mapping(meta.get("annotations"), "metadata.annotations").items()
        },
        uid=str(meta["uid"]) if isinstance(meta.get("uid"), str) and meta["uid"] else None,
        controlled=any(
            isinstance(o, Mapping) and o.get("controller") and o.get("kind") in WORKLOAD_KINDS
            for o in _list(meta.get("ownerReferences"), "metadata.ownerReferences")
        ),
    )


def parse_node(doc: Mapping[str, Any], name: str) -> Node:
    _kube_names(name)
    meta = _mapping(doc.get("metadata"), "metadata")
    labels = _mapping(meta.get("labels"), "metadata.labels")
    return Node(name=name, labels={str(k): str(v) for k, v in labels.items()})
