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

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController")


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
    for key, value in (doc.get("data") or {}).items():
        try:
            base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"data.{key}: not valid base64") from None
        data[str(key)] = str(value)
    for key, value in (doc.get("stringData") or {}).items():
        data[str(key)] = base64.b64encode(str(value).encode()).decode()
    return Secret(namespace=namespace, name=name, data=data)


def parse_workload(doc: Mapping[str, Any], namespace: str, name: str) -> Workload:
    """Pick a workload's labels, replicas and pod-template volumes."""
    meta = doc.get("metadata") or {}
    spec = doc.get("spec") or {}
    template = (spec.get("template") or {}).get("spec") or {}
    volumes: dict[str, Mapping[str, Any]] = {}
    for i, vol in enumerate(template.get("volumes") or []):
        if not isinstance(vol, Mapping) or not isinstance(vol.get("name"), str):
            raise ValueError(f"spec.template.spec.volumes[{i}].name: missing")
        volumes[vol["name"]] = {k: v for k, v in vol.items() if k != "name"}
    replicas = spec.get("replicas")
    claims = tuple(
        str((t.get("metadata") or {}).get("name"))
        for t in spec.get("volumeClaimTemplates") or []
        if isinstance(t, Mapping) and (t.get("metadata") or {}).get("name")
    )
    return Workload(
        kind=str(doc["kind"]),
        namespace=namespace,
        name=name,
        labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        replicas=int(replicas) if isinstance(replicas, int) else None,
        volumes=volumes,
        pod_labels={
            str(k): str(v)
            for k, v in (
                ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
            ).items()
        },
        claim_templates=claims,
        controlled=any(
            isinstance(o, Mapping) and o.get("controller") and o.get("kind") in WORKLOAD_KINDS
            for o in meta.get("ownerReferences") or []
        ),
    )


def parse_node(doc: Mapping[str, Any], name: str) -> Node:
    meta = doc.get("metadata") or {}
    return Node(name=name, labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()})
