"""A fake Kubernetes API server: an in-memory object store behind ``http.server``.

Why our own fake rather than a library (see docs/architecture.md, "Kubernetes test harness"):
the real KubernetesPodOperator needs label selectors that really filter, pods that
get a uid and a phase on create, a chunked ``log`` subresource with timestamps and
``watch`` streams; our own code needs custom objects with a ``status`` subresource
and optimistic concurrency, ``scale``, and discovery. This file provides exactly
that, and answers any other route with a loud 500 recorded in ``unhandled``, so a
provider upgrade that adds a call fails a test at once instead of passing by luck.

Objects are plain JSON dicts. A global ``resourceVersion`` counter and a history of
(ADDED | MODIFIED | DELETED) events drive watches, the test kubelet and the tiny
workload controller (Deployment/StatefulSet replicas -> "workload pods").

Where it knowingly differs from a real server (each difference keeps tests simple
and none hides a bug of ours we know of):
- namespaces spring into being on first use; deletes are immediate (no grace
  period, finalizers or cascading, except workload pods and ReplicaSets);
- Leases (coordination.k8s.io) are plain objects: nothing expires them; updates
  with a stale ``resourceVersion`` and deletes with stale ``preconditions`` are
  409 Conflict, as for every type;
- strategic merge patches are applied as JSON merge patches (lists replace);
  JSON patch and deletecollection are unhandled (loud);
- server-side apply (``application/apply-patch+yaml``, JSON bodies only) creates the
  object or merges the applied fields into it (fields a manager stops applying are
  not removed; no conflicts are detected); an apply that changes nothing keeps the
  resourceVersion; ``dryRun=All`` answers without storing (apply, create);
- lists honour ``limit``/``continue`` (the token is the last key returned and the
  list's version); a ``continue`` page is cut from the current objects, not from the
  first page's snapshot; ``compact()`` expires older versions (410 Gone) at once,
  for continue tokens and watches; watches last at most 30 s;
- creating a CustomResourceDefinition serves its resource at once (discovery
  included) and marks it Established; deleting it removes its objects;
- a resource type not registered is an unhandled route: add one with
  ``server.store.register(ResourceType(...))``;
- ServiceAccounts, minimally: a pod naming a ``serviceAccountName`` other than
  ``default`` that does not exist is refused (403, as by the ServiceAccount admission
  plugin); a token from ``store.issue_token`` (the kubelet mounts one in such pods)
  authenticates as that account and may use only the verbs ``server.grant`` gave it
  (discovery always), anything else is 403 Forbidden; any other token is an admin.
  ``serve_tls`` adds an HTTPS port for in-cluster clients.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import secrets
import socket
import ssl
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Obj = dict[str, Any]

#: Pods made by the workload controller carry this annotation ("Kind/name" of the
#: workload); the test kubelet never runs them.
WORKLOAD_ANNOTATION = "fakekube.test/workload"
#: Any pod with this annotation is left alone by the kubelet (stays Pending).
NO_KUBELET_ANNOTATION = "fakekube.test/no-kubelet"
#: Seconds the kubelet keeps a pod Pending (scheduled, "pulling") before starting it.
START_DELAY_ANNOTATION = "fakekube.test/start-delay"
#: Longest a watch stays open, whatever the client asked (a followed log lasts as
#: long as its container, like the real one).
MAX_STREAM_SECONDS = 30.0


def now_rfc3339(nanos: bool = False) -> str:
    t = datetime.now(UTC)
    if nanos:  # what the kubelet puts in front of log lines under timestamps=true
        return t.strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    subresources: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def builtin(self) -> bool:
        """Built-in types accept an update without resourceVersion; custom ones do not."""
        return self.group in (
            "",
            "apps",
            "rbac.authorization.k8s.io",
            "apiextensions.k8s.io",
            "coordination.k8s.io",
        )


def crd_types(crd: Obj) -> list[ResourceType]:
    """The resource types a CustomResourceDefinition serves (one per served version)."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    out = []
    for version in spec.get("versions") or []:
        if version.get("served", True):
            subs = (
                ("status",) if (version.get("subresources") or {}).get("status") is not None else ()
            )
            out.append(
                ResourceType(
                    spec["group"],
                    version["name"],
                    names["plural"],
                    names["kind"],
                    spec.get("scope", "Namespaced") == "Namespaced",
                    subs,
                )
            )
    return out


def crd_status(crd: Obj) -> Obj:
    now = now_rfc3339()
    return {
        "acceptedNames": dict((crd.get("spec") or {}).get("names") or {}),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "lastTransitionTime": now},
        ],
        "storedVersions": [
            v["name"] for v in (crd.get("spec") or {}).get("versions") or [] if v.get("storage")
        ],
    }


_CORE_AND_APPS = [
    ResourceType("", "v1", "pods", "Pod", True, ("log", "status")),
    ResourceType("", "v1", "events", "Event"),
    ResourceType("", "v1", "secrets", "Secret"),
    ResourceType("", "v1", "configmaps", "ConfigMap"),
    ResourceType("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, ("status",)),
    ResourceType("", "v1", "persistentvolumes", "PersistentVolume", False, ("status",)),
    ResourceType("", "v1", "namespaces", "Namespace", False, ("status",)),
    ResourceType("", "v1", "nodes", "Node", False, ("status",)),
    ResourceType("", "v1", "replicationcontrollers", "ReplicationController", True, ("status",)),
    ResourceType("apps", "v1", "deployments", "Deployment", True, ("scale", "status")),
    ResourceType("apps", "v1", "statefulsets", "StatefulSet", True, ("scale", "status")),
    ResourceType("apps", "v1", "replicasets", "ReplicaSet", True, ("scale", "status")),
    ResourceType("apps", "v1", "daemonsets", "DaemonSet", True, ("status",)),
    ResourceType("", "v1", "services", "Service", True, ("status",)),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount"),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease"),
    ResourceType("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    ResourceType("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    ResourceType("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    ResourceType(
        "rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False
    ),
    ResourceType(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        ("status",),
    ),
]
_STASH = [
    ResourceType("stash.appscode.com", "v1alpha1", "repositories", "Repository", True, ("status",)),
    ResourceType("stash.appscode.com", "v1alpha1", "restics", "Restic", True, ("status",)),
    ResourceType("stash.appscode.com", "v1alpha1", "recoveries", "Recovery", True, ("status",)),
    ResourceType(
        "stash.appscode.com", "v1alpha1", "backupagents", "BackupAgent", False, ("status",)
    ),
    ResourceType(
        "stash.appscode.com", "v1alpha1", "backuptemplates", "BackupTemplate", False, ("status",)
    ),
    ResourceType("appcatalog.appscode.com", "v1alpha1", "appbindings", "AppBinding"),
]
DEFAULT_RESOURCES = _CORE_AND_APPS + _STASH
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]

VERSION = {
    "major": "1",
    "minor": "30",
    "gitVersion": "v1.30.0-fakekube",
    "gitCommit": "0" * 40,
    "gitTreeState": "clean",
    "buildDate": "2024-04-17T00:00:00Z",
    "goVersion": "go1.22.2",
    "compiler": "gc",
    "platform": "linux/amd64",
}
#: Status fields the real types always serialise, zero included (the others are omitempty).
ALWAYS_IN_STATUS: dict[str, Obj] = {
    "StatefulSet": {"replicas": 0, "availableReplicas": 0},
    "ReplicaSet": {"replicas": 0},
    "ReplicationController": {"replicas": 0},
    "Namespace": {"phase": "Active"},
    "DaemonSet": {
        "currentNumberScheduled": 0,
        "numberMisscheduled": 0,
        "desiredNumberScheduled": 0,
        "numberReady": 0,
    },
}

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


class ApiError(Exception):
    """An error the real API server would answer with a ``Status`` body."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def body(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


class Unhandled(Exception):
    """A route or verb this fake does not implement: answered 500 and recorded."""


# ----------------------------------------------------------------------------- selectors

_REQUIREMENT = re.compile(
    r"\s*(?:!\s*(?P<absent>[^\s,=!()]+)"
    r"|(?P<key>[^\s,=!()]+)(?:\s*(?P<op>==|=|!=)\s*(?P<value>[^\s,=!()]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?)\s*(?:,|$)"
)


def parse_label_selector(text: str) -> list[tuple[str, str, set[str]]]:
    """``k=v``, ``k==v``, ``k!=v``, ``!k``, ``k``, ``k in (a,b)``, ``k notin (a,b)``."""
    reqs: list[tuple[str, str, set[str]]] = []
    pos = 0
    while pos < len(text):
        m = _REQUIREMENT.match(text, pos)
        if not m or m.end() == pos:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {text[pos:]!r}")
        pos = m.end()
        if m["absent"]:
            reqs.append((m["absent"], "!", set()))
        elif m["op"]:
            reqs.append((m["key"], "!=" if m["op"] == "!=" else "=", {m["value"]}))
        elif m["setop"]:
            values = {v.strip() for v in m["values"].split(",") if v.strip()}
            reqs.append((m["key"], m["setop"], values))
        else:
            reqs.append((m["key"], "exists", set()))
    return reqs


def labels_match(reqs: list[tuple[str, str, set[str]]], labels: dict[str, str]) -> bool:
    for key, op, values in reqs:
        present, value = key in labels, labels.get(key)
        ok = {
            "=": present and value in values,
            "in": present and value in values,
            "!=": not present or value not in values,
            "notin": not present or value not in values,
            "!": not present,
            "exists": present,
        }[op]
        if not ok:
            return False
    return True


def dig(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def fields_match(selector: str, obj: Obj) -> bool:
    """Field selectors (``involvedObject.name=NAME``, ``status.phase!=Running``) on any path."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        m = re.fullmatch(r"([\w.]+)\s*(==|=|!=)\s*(.*)", term)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid field selector: {term!r}")
        actual = dig(obj, m[1])
        equal = ("" if actual is None else str(actual)) == m[3]
        if equal != (m[2] != "!="):
            return False
    return True


# ----------------------------------------------------------------------------- patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386. Strategic merge is treated the same (lists replace, no ``$patch``)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _apply_merge(target: Any, applied: Any) -> Any:
    """The applied fields merged in (maps merge, lists and scalars replace); the
    object's identity and bookkeeping in ``metadata`` stay the server's."""
    if not isinstance(applied, dict) or not isinstance(target, dict):
        return copy.deepcopy(applied)
    result = dict(target)
    for key, value in applied.items():
        if key == "metadata" and isinstance(value, dict):
            value = {
                k: v
                for k, v in value.items()
                if k not in ("uid", "resourceVersion", "generation", "creationTimestamp")
            }
        result[key] = _apply_merge(result.get(key), value)
    return result


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace", ""), meta.get("name", ""))


# ----------------------------------------------------------------------------- store


@dataclass
class ContainerLog:
    lines: list[tuple[str, bytes]] = field(default_factory=list)  # (RFC 3339 time, raw line)
    done: bool = False


@dataclass
class Event:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    rt: ResourceType
    obj: Obj


class Store:
    """All objects, container logs and the change history, under one condition variable.

    Everything that waits (watches, followed logs, the kubelet, the controller)
    waits on ``cond``; every write notifies it.
    """

    def __init__(self, resources: list[ResourceType]) -> None:
        self.cond = threading.Condition()
        self.types: dict[tuple[str, str, str], ResourceType] = {}
        self.objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {}
        self.history: list[Event] = []
        self.logs: dict[tuple[str, str], ContainerLog] = {}  # (pod uid, container)
        self.rv = 0
        self.compacted = 0  # versions up to this one are gone (410) for watches and continues
        self.stopping = False
        self.tokens: dict[str, tuple[str, str]] = {}  # token -> ServiceAccount (namespace, name)
        for rt in resources:
            self.register(rt)

    def issue_token(self, namespace: str, account: str) -> str:
        """A fresh bearer token that authenticates as ServiceAccount ``namespace/account``."""
        token = secrets.token_urlsafe(24)
        with self.cond:
            self.tokens[token] = (namespace, account)
        return token

    def register(self, rt: ResourceType) -> None:
        with self.cond:
            self.types[(rt.group, rt.version, rt.plural)] = rt
            self.objects.setdefault((rt.group, rt.plural), {})

    def type_of(self, api_version: str, kind: str) -> ResourceType:
        for rt in self.types.values():
            if rt.api_version == api_version and rt.kind == kind:
                return rt
        raise KeyError(f"fake kube API: no resource type {api_version} {kind}; register it")

    def type_named(self, kind_or_plural: str) -> ResourceType:
        for rt in self.types.values():
            if kind_or_plural in (rt.kind, rt.plural):
                return rt
        raise KeyError(f"fake kube API: no resource type {kind_or_plural!r}")

    # -- reads
    def get(self, rt: ResourceType, ns: str, name: str) -> Obj:
        with self.cond:
            obj = self.objects[(rt.group, rt.plural)].get((ns if rt.namespaced else "", name))
            if obj is None:
                raise ApiError(
                    404, "NotFound", f'{rt.plural}.{rt.group or "core"} "{name}" not found'
                )
            return copy.deepcopy(obj)

    def select(
        self,
        rt: ResourceType,
        ns: str | None,
        labels: str = "",
        fields: str = "",
        after: tuple[str, str] | None = None,
        limit: int = 0,
    ) -> list[Obj]:
        """Copies of the matching objects in (namespace, name) order; ``after`` and
        ``limit`` cut one page of a paged list (copying only that page)."""
        reqs = parse_label_selector(labels or "")
        with self.cond:
            objs = list(self.objects[(rt.group, rt.plural)].items())
        out = [
            obj
            for key, obj in sorted(objs, key=lambda kv: kv[0])
            if (ns is None or key[0] == ns)
            and (after is None or key > after)
            and labels_match(reqs, obj["metadata"].get("labels") or {})
            and fields_match(fields or "", obj)
        ]
        return [copy.deepcopy(obj) for obj in (out[:limit] if limit else out)]

    # -- writes
    def _commit(self, rt: ResourceType, type_: str, obj: Obj) -> Obj:
        """Every write, a delete included, takes the next resourceVersion (as watches expect)."""
        with self.cond:
            key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
            table = self.objects[(rt.group, rt.plural)]
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            if type_ == "DELETED":
                table.pop(key, None)
            else:
                table[key] = obj
            self.history.append(Event(self.rv, type_, rt, copy.deepcopy(obj)))
            self.cond.notify_all()
            return copy.deepcopy(obj)

    def create(
        self, rt: ResourceType, ns: str, obj: Obj, *, from_api: bool = True, dry_run: bool = False
    ) -> Obj:
        """A new object. From the API, ``status`` is reset like the real server does."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        validate_meta(meta)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        _fold_string_data(obj)
        with self.cond:
            if rt.namespaced:
                meta["namespace"] = ns
                if not dry_run:
                    self._ensure_namespace(ns)
            else:
                meta.pop("namespace", None)
            if (meta.get("namespace", ""), meta["name"]) in self.objects[(rt.group, rt.plural)]:
                raise ApiError(409, "AlreadyExists", f'{rt.plural} "{meta["name"]}" already exists')
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
            if dry_run:
                return copy.deepcopy(obj)
            if rt.kind == "CustomResourceDefinition":
                for served in crd_types(obj):
                    self.register(served)
                obj["status"] = crd_status(obj)
            elif rt.kind == "Pod" and (from_api or "status" not in obj):
                obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
            elif from_api and "status" in rt.subresources:
                obj["status"] = dict(ALWAYS_IN_STATUS.get(rt.kind, {}))
            return self._commit(rt, "ADDED", obj)

    def _ensure_namespace(self, ns: str) -> None:
        """Namespaces spring into being on first use (a real server would answer 404)."""
        table = self.objects[("", "namespaces")]
        if ("", ns) not in table:
            obj = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "status": {"phase": "Active"},
                "metadata": {
                    "name": ns,
                    "uid": str(uuid.uuid4()),
                    "creationTimestamp": now_rfc3339(),
                },
            }
            self._commit(self.type_of("v1", "Namespace"), "ADDED", obj)

    def update(
        self,
        rt: ResourceType,
        ns: str,
        name: str,
        change: Callable[[Obj], Obj],
        *,
        subresource: str | None = None,
        expected_rv: str | None = None,
        dry_run: bool = False,
        skip_noop: bool = False,
    ) -> Obj:
        """Read, change, write, with the real server's rules for status and generation.

        The main resource keeps its old ``status`` if the type has a status
        subresource; the ``status`` subresource changes nothing but ``.status``.
        A stale ``expected_rv`` is a 409 Conflict.
        """
        with self.cond:
            old = self.get(rt, ns, name)
            if expected_rv and expected_rv != old["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {rt.plural} "{name}": '
                    "the object has been modified; please apply your changes to the latest "
                    "version and try again",
                )
            new = change(copy.deepcopy(old))
            if subresource == "status":
                old["status"] = new.get("status", {})
                new = old
            else:
                meta = new.setdefault("metadata", {})
                validate_meta(meta)
                for k in ("name", "namespace", "uid", "creationTimestamp", "generation"):
                    if k in old["metadata"]:
                        meta[k] = old["metadata"][k]
                new["apiVersion"], new["kind"] = rt.api_version, rt.kind
                _fold_string_data(new)
                if subresource == "api" and "status" in rt.subresources:
                    new["status"] = old.get("status", {})
                strip = ("metadata", "status")
                if {k: v for k, v in new.items() if k not in strip} != {
                    k: v for k, v in old.items() if k not in strip
                }:
                    meta["generation"] = old["metadata"].get("generation", 1) + 1
            if dry_run or (skip_noop and new == old):
                return new
            return self._commit(rt, "MODIFIED", new)

    def delete(self, rt: ResourceType, ns: str, name: str) -> Obj:
        with self.cond:
            obj = self.get(rt, ns, name)
            if rt.kind == "CustomResourceDefinition":
                for served in crd_types(obj):
                    self.types.pop((served.group, served.version, served.plural), None)
                self.objects[(obj["spec"]["group"], obj["spec"]["names"]["plural"])] = {}
            obj["metadata"]["deletionTimestamp"] = now_rfc3339()
            self.logs = {k: v for k, v in self.logs.items() if k[0] != obj["metadata"]["uid"]}
            return self._commit(rt, "DELETED", obj)

    def events_after(self, rv: int) -> list[Event]:
        with self.cond:
            i = len(self.history)
            while i > 0 and self.history[i - 1].rv > rv:
                i -= 1
            return self.history[i:]

    def compact(self) -> None:
        """What etcd compaction does to clients: every version so far is gone, watches
        from one end with a 410 ERROR event and continue tokens stop working."""
        with self.cond:
            self.compacted = self.rv
            self.history.clear()
            self.cond.notify_all()

    def wait(self, timeout: float) -> None:
        with self.cond:
            if not self.stopping:
                self.cond.wait(timeout)


def _fold_string_data(obj: Obj) -> None:
    """A Secret's ``stringData`` is write-only: the server stores it base64 in ``data``."""
    if obj.get("kind") == "Secret" and "stringData" in obj:
        plain = obj.pop("stringData") or {}
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in plain.items()}
        obj["data"] = {**(obj.get("data") or {}), **encoded}


def validate_meta(meta: Obj) -> None:
    """The checks that bite in production: object names and label syntax (422 Invalid)."""
    name = meta.get("name") or ""
    if not _NAME.match(name):
        raise ApiError(
            422, "Invalid", f"metadata.name: Invalid value: {name!r}: not a DNS-1123 name"
        )
    for key, value in (meta.get("labels") or {}).items():
        if (
            not _LABEL_NAME.match(key)
            or not isinstance(value, str)
            or not _LABEL_VALUE.match(value)
        ):
            raise ApiError(422, "Invalid", f"metadata.labels: Invalid value: {key}={value!r}")


# ----------------------------------------------------------------------------- HTTP


@dataclass
class Call:
    """One request as the server saw it (``query`` holds the last value of each key)."""

    method: str
    path: str
    query: dict[str, str]
    status: int = 0
    user_agent: str = ""
    user: str = ""
    """``system:serviceaccount:NS:NAME`` for a ServiceAccount's token, else empty."""


def _flag(query: dict[str, str], name: str) -> bool:
    return query.get(name, "").lower() in ("true", "1")


class FakeKubeServer:
    """The HTTP front of the store. ``start()`` serves on 127.0.0.1, port 0, daemon threads."""

    def __init__(self, resources: list[ResourceType] | None = None) -> None:
        self.store = Store(resources or DEFAULT_RESOURCES)
        self.requests: list[Call] = []
        self.unhandled: list[str] = []
        self.applied: list[tuple[str, str, str, bool]] = []
        """Every server-side apply, in order: (kind, namespace, name, dry run)."""
        self.state = "up"  # up | 503 | refused
        self.port = 0
        self.tls_port = 0
        self.grants: dict[tuple[str, str], frozenset[str]] = {}
        """Verbs a ServiceAccount (namespace, name) may use on every resource."""
        self._tls: ssl.SSLContext | None = None
        self.controller = WorkloadController(self.store)
        self._httpd: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeKubeServer:
        self._listen()
        self.controller.start()
        return self

    def serve_tls(self, cert_file: str, key_file: str) -> None:
        """Also serve HTTPS (on ``tls_port``), as in-cluster clients expect."""
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(cert_file, key_file)
        self._tls_httpd = self._serve(self.tls_port, self._tls)
        self.tls_port = self._tls_httpd.server_address[1]

    def grant(self, namespace: str, account: str, verbs: list[str]) -> None:
        self.grants[(namespace, account)] = frozenset(verbs)

    def _listen(self) -> None:
        self._httpd = self._serve(self.port)
        self.port = self._httpd.server_address[1]
        if self._tls is not None and self.tls_port:
            self._tls_httpd = self._serve(self.tls_port, self._tls)

    def _serve(self, port: int, tls: ssl.SSLContext | None = None) -> ThreadingHTTPServer:
        server = self

        class Handler(_Handler):
            fake = server

        httpd = _HTTPServer(("127.0.0.1", port), Handler)
        if tls is not None:  # the handshake happens in each handler's thread
            httpd.socket = tls.wrap_socket(
                httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        threading.Thread(
            target=httpd.serve_forever, args=(0.05,), name="fake-kube-api", daemon=True
        ).start()
        return httpd

    def _close_listener(self) -> None:
        for httpd in (self._httpd, getattr(self, "_tls_httpd", None)):
            if httpd:
                httpd.shutdown()
                httpd.server_close()
        self._httpd = self._tls_httpd = None
        with self._lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def down(self, refuse: bool = False) -> None:
        """API server outage: answer every request 503, or (``refuse``) refuse connections."""
        self.state = "refused" if refuse else "503"
        if refuse:
            self._close_listener()

    def up(self) -> None:
        if self.state == "refused":
            self._listen()  # same port: SO_REUSEADDR is on
        self.state = "up"

    def stop(self) -> None:
        with self.store.cond:
            self.store.stopping = True
            self.store.cond.notify_all()
        self.controller.stop()
        self._close_listener()

    def authorize(self, call: Call, authorization: str) -> None:
        """403 for a ServiceAccount token's call with a verb the account was not granted."""
        account = self.store.tokens.get(authorization.removeprefix("Bearer ").strip())
        if account is None:
            return
        call.user = f"system:serviceaccount:{account[0]}:{account[1]}"
        parts = [p for p in call.path.split("/") if p]
        if (
            parts[:1] == ["version"]
            or parts in (["api"], ["api", "v1"])
            or (parts[:1] == ["apis"] and len(parts) <= 3)
        ):
            return  # discovery: every authenticated user may
        group = "" if parts[:1] == ["api"] else parts[1]
        rest = parts[2:] if group == "" else parts[3:]
        namespace = rest[1] if rest[:1] == ["namespaces"] and len(rest) > 2 else ""
        rest = rest[2:] if namespace else rest
        named = len(rest) > 1
        verb = {
            "GET": "watch" if _flag(call.query, "watch") else ("get" if named else "list"),
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete",
        }[call.method]
        if verb in self.grants.get(account, frozenset()):
            return
        where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
        what = f'{rest[0]} "{rest[1]}"' if named else rest[0]
        raise ApiError(
            403,
            "Forbidden",
            f'{what} is forbidden: User "{call.user}" '
            f'cannot {verb} resource "{rest[0]}" in API group "{group}"{where}',
        )

    # -- routing
    def route(self, method: str, path: str, query: dict[str, str], body: Any, ctype: str) -> Any:
        """Return ``(code, json)`` or an iterator of byte chunks to stream."""
        parts = [p for p in path.split("/") if p]
        if method == "GET" and parts == ["version"]:
            return 200, VERSION
        if method == "GET" and (
            parts in (["api"], ["apis"]) or parts[:1] == ["apis"] and len(parts) == 2
        ):
            return 200, self._discovery_root(parts)
        if method == "GET" and (
            parts == ["api", "v1"] or parts[:1] == ["apis"] and len(parts) == 3
        ):
            return 200, self._resource_list(*(("", "v1") if parts[0] == "api" else parts[1:3]))
        if parts[:2] == ["api", "v1"] and len(parts) > 2:
            group, version, rest = "", "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) > 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise Unhandled(path)
        ns: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        plural, name, sub = (rest + ["", ""])[:3]
        rt = self.store.types.get((group, version, plural))
        if rt is None or len(rest) > 3 or (ns is not None and not rt.namespaced):
            raise Unhandled(f"{method} {path}")
        if rt.namespaced and ns is None and (name or method != "GET"):
            raise Unhandled(f"{method} {path} (namespaced resource without a namespace)")
        ns = ns or ""
        if sub and sub not in rt.subresources:
            raise Unhandled(f"{method} {path} (subresource {sub!r})")
        handler = getattr(self, f"_{(method + '_' + ('item' if name else 'list')).lower()}", None)
        if sub:
            handler = getattr(self, f"_{method.lower()}_{sub}", None)
        if handler is None:
            raise Unhandled(f"{method} {path}")
        return handler(rt, ns, name, query, body, ctype)

    def _discovery_root(self, parts: list[str]) -> Obj:
        if parts == ["api"]:
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}
                ],
            }
        groups: dict[str, list[str]] = {}
        for rt in self.store.types.values():
            if rt.group and rt.version not in groups.setdefault(rt.group, []):
                groups[rt.group].append(rt.version)
        listed = [
            {
                "name": g,
                "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]},
            }
            for g, vs in groups.items()
            if len(parts) == 1 or g == parts[1]
        ]
        if len(parts) == 2:
            if not listed:
                raise ApiError(404, "NotFound", f"group {parts[1]} not found")
            return {"kind": "APIGroup", "apiVersion": "v1", **listed[0]}
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": listed}

    def _resource_list(self, group: str, version: str) -> Obj:
        types = [
            rt for rt in self.store.types.values() if (rt.group, rt.version) == (group, version)
        ]
        if not types:
            raise ApiError(404, "NotFound", f"the server could not find {group}/{version}")
        resources = []
        for rt in types:
            resources.append(
                {
                    "name": rt.plural,
                    "singularName": rt.kind.lower(),
                    "kind": rt.kind,
                    "namespaced": rt.namespaced,
                    "verbs": VERBS,
                }
            )
            for sub in rt.subresources:
                kind = {"scale": "Scale"}.get(sub, rt.kind)
                verbs = ["get"] if sub == "log" else ["get", "patch", "update"]
                resources.append(
                    {
                        "name": f"{rt.plural}/{sub}",
                        "singularName": "",
                        "kind": kind,
                        "namespaced": rt.namespaced,
                        "verbs": verbs,
                    }
                )
        gv = f"{group}/{version}" if group else version
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": gv,
            "resources": resources,
        }

    # -- verbs on collections and items
    def _get_list(self, rt: ResourceType, ns: str, _: Any, q: dict[str, str], *__: Any) -> Any:
        scope = ns if rt.namespaced and ns else None
        if _flag(q, "watch"):
            return self._watch(rt, scope, q)
        rv, after, limit = self.store.rv, None, int(q.get("limit") or 0)
        if q.get("continue"):
            token = json.loads(base64.urlsafe_b64decode(q["continue"]))
            if token["rv"] < self.store.compacted:
                raise ApiError(410, "Expired", "The provided continue parameter is too old")
            rv, after = token["rv"], (token["after"][0], token["after"][1])
        selectors = q.get("labelSelector", ""), q.get("fieldSelector", "")
        items = self.store.select(
            rt, scope, *selectors, after=after, limit=limit + 1 if limit else 0
        )
        meta: Obj = {"resourceVersion": str(rv)}
        if limit and len(items) > limit:
            items = items[:limit]
            token = {"rv": rv, "after": _key(items[-1])}
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
        return 200, {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version,
            "items": items,
            "metadata": meta,
        }

    def _post_list(self, rt: ResourceType, ns: str, _: Any, q: Any, body: Any, __: Any) -> Any:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of a create must be an object")
        account = (body.get("spec") or {}).get("serviceAccountName") or "default"
        if rt.kind == "Pod" and account != "default":
            try:
                self.store.get(self.store.type_of("v1", "ServiceAccount"), ns, account)
            except ApiError:
                raise ApiError(
                    403,
                    "Forbidden",
                    f'pods "{body["metadata"].get("name", "")}" is forbidden: error looking up '
                    f'service account {ns}/{account}: serviceaccount "{account}" not found',
                ) from None
        return 201, self.store.create(rt, ns, body, dry_run=q.get("dryRun") == "All")

    def _get_item(self, rt: ResourceType, ns: str, name: str, *_: Any) -> Any:
        return 200, self.store.get(rt, ns, name)

    def _put_item(
        self, rt: ResourceType, ns: str, name: str, q: Any, body: Any, _: Any, sub: str = "api"
    ) -> Any:
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if not rv and not rt.builtin:
            raise ApiError(
                422,
                "Invalid",
                "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
            )
        if (body.get("metadata") or {}).get("name", name) != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the URL")
        return 200, self.store.update(rt, ns, name, lambda _: body, subresource=sub, expected_rv=rv)

    def _patch_item(
        self, rt: ResourceType, ns: str, name: str, q: Any, body: Any, ctype: str, sub: str = "api"
    ) -> Any:
        if "apply-patch" in ctype and sub == "api":
            return self._apply(rt, ns, name, q, body)
        if "merge-patch" not in ctype:
            raise Unhandled(f"PATCH with content type {ctype!r} (only merge patches are done)")
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "a merge patch must be an object")
        rv = (body.get("metadata") or {}).get("resourceVersion")
        return 200, self.store.update(
            rt, ns, name, lambda o: merge_patch(o, body), subresource=sub, expected_rv=rv
        )

    def _apply(self, rt: ResourceType, ns: str, name: str, q: dict[str, str], body: Any) -> Any:
        """Server-side apply: create the object, or merge the applied fields into it."""
        if not q.get("fieldManager"):
            raise ApiError(422, "Invalid", "PatchOptions.meta.k8s.io: fieldManager is required")
        if not isinstance(body, dict) or (body.get("metadata") or {}).get("name") != name:
            raise ApiError(400, "BadRequest", "the applied object must name the object of the URL")
        if body.get("apiVersion") != rt.api_version or body.get("kind") != rt.kind:
            raise ApiError(400, "BadRequest", "apiVersion and kind must match the URL")
        dry_run = q.get("dryRun") == "All"
        self.applied.append((rt.kind, ns, name, dry_run))
        try:
            self.store.get(rt, ns, name)
        except ApiError:
            return 201, self.store.create(rt, ns, body, dry_run=dry_run)
        applied = {k: v for k, v in body.items() if k != "status"}
        return 200, self.store.update(
            rt,
            ns,
            name,
            lambda o: _apply_merge(o, applied),
            subresource="api",
            dry_run=dry_run,
            skip_noop=True,
        )

    def _delete_item(self, rt: ResourceType, ns: str, name: str, q: Any, body: Any, _: Any) -> Any:
        """DeleteOptions' ``preconditions`` (uid, resourceVersion) are checked: 409 if stale."""
        wanted = (body or {}).get("preconditions") or {} if isinstance(body, dict) else {}
        with self.store.cond:
            meta = self.store.get(rt, ns, name)["metadata"]
            for key in ("uid", "resourceVersion"):
                if wanted.get(key) and wanted[key] != meta.get(key):
                    raise ApiError(
                        409,
                        "Conflict",
                        f'Operation cannot be fulfilled on {rt.plural} "{name}": '
                        f"Precondition failed: {key} in precondition: {wanted[key]}, "
                        f"{key} in object meta: {meta.get(key)}",
                    )
            return 200, self.store.delete(rt, ns, name)

    # -- subresources
    def _get_status(self, rt: ResourceType, ns: str, name: str, *_: Any) -> Any:
        return 200, self.store.get(rt, ns, name)

    def _put_status(self, rt: ResourceType, ns: str, name: str, q: Any, body: Any, c: str) -> Any:
        return self._put_item(rt, ns, name, q, body, c, sub="status")

    def _patch_status(self, rt: ResourceType, ns: str, name: str, q: Any, body: Any, c: str) -> Any:
        return self._patch_item(rt, ns, name, q, body, c, sub="status")

    def _scale_of(self, rt: ResourceType, obj: Obj) -> Obj:
        selector = (obj["spec"].get("selector") or {}).get("matchLabels") or {}
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: obj["metadata"][k]
                for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            },
            "spec": {"replicas": obj["spec"].get("replicas", 1)},
            "status": {
                "replicas": (obj.get("status") or {}).get("replicas", 0),
                "selector": ",".join(f"{k}={v}" for k, v in selector.items()),
            },
        }

    def _get_scale(self, rt: ResourceType, ns: str, name: str, *_: Any) -> Any:
        return 200, self._scale_of(rt, self.store.get(rt, ns, name))

    def _write_scale(self, rt: ResourceType, ns: str, name: str, scale: Obj) -> Any:
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise ApiError(422, "Invalid", f"spec.replicas: Invalid value: {replicas!r}")
        rv = (scale.get("metadata") or {}).get("resourceVersion")

        def change(obj: Obj) -> Obj:
            obj["spec"]["replicas"] = replicas
            return obj

        return 200, self._scale_of(rt, self.store.update(rt, ns, name, change, expected_rv=rv))

    def _put_scale(self, rt: ResourceType, ns: str, name: str, q: Any, body: Any, _: Any) -> Any:
        return self._write_scale(rt, ns, name, body)

    def _patch_scale(
        self, rt: ResourceType, ns: str, name: str, q: Any, body: Any, ctype: str
    ) -> Any:
        current = self._scale_of(rt, self.store.get(rt, ns, name))
        if "merge-patch" not in ctype:
            raise Unhandled(f"PATCH of a scale with content type {ctype!r}")
        return self._write_scale(rt, ns, name, merge_patch(current, body))

    def _get_log(self, rt: ResourceType, ns: str, name: str, q: dict[str, str], *_: Any) -> Any:
        """The container log; followed while the container runs; chunked like the kubelet's."""
        pod = self.store.get(rt, ns, name)
        names = [
            c["name"] for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
        ]
        container = q.get("container") or (names[0] if len(pod["spec"]["containers"]) == 1 else "")
        if container not in names:
            raise ApiError(
                400,
                "BadRequest",
                f"a container name must be specified for pod {name}, choose one of: {names}",
            )
        uid = pod["metadata"]["uid"]
        log = self.store.logs.get((uid, container))
        if log is None:
            raise ApiError(
                400,
                "BadRequest",
                f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating',
            )
        cutoff = None
        if q.get("sinceSeconds"):
            t = datetime.fromtimestamp(time.time() - float(q["sinceSeconds"]), UTC)
            cutoff = t.strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
        tail = int(q["tailLines"]) if q.get("tailLines") else None
        follow, stamps = _flag(q, "follow"), _flag(q, "timestamps")
        return self._stream_log(uid, container, log, follow, stamps, cutoff, tail)

    def _stream_log(
        self,
        uid: str,
        container: str,
        log: ContainerLog,
        follow: bool,
        stamps: bool,
        cutoff: str | None,
        tail: int | None,
    ) -> Iterator[bytes]:
        with self.store.cond:
            lines = [entry for entry in log.lines if not cutoff or entry[0] >= cutoff]
            pos = len(log.lines) - len(lines[-tail:] if tail is not None else lines)
        while True:
            with self.store.cond:
                batch, pos = log.lines[pos:], len(log.lines)
                finished = log.done or (uid, container) not in self.store.logs
                if not batch and not finished and follow and not self.store.stopping:
                    self.store.cond.wait(0.5)
            for stamp, line in batch:
                yield (stamp.encode() + b" " + line) if stamps else line
            if not follow or (finished and not batch) or self.store.stopping:
                return

    def _watch(self, rt: ResourceType, ns: str | None, q: dict[str, str]) -> Iterator[bytes]:
        """A watch stream: the current objects as ADDED (unless resumed), then changes."""
        timeout = min(float(q.get("timeoutSeconds") or MAX_STREAM_SECONDS), MAX_STREAM_SECONDS)
        deadline = time.monotonic() + timeout
        labels, fields = q.get("labelSelector", ""), q.get("fieldSelector", "")
        reqs = parse_label_selector(labels)
        with self.store.cond:
            start = q.get("resourceVersion") or "0"
            rv = int(start) if start != "0" else self.store.rv
            initial = [] if start != "0" else self.store.select(rt, ns, labels, fields)
        for obj in initial:
            yield json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n"
        while time.monotonic() < deadline and not self.store.stopping:
            if rv < self.store.compacted:
                gone = ApiError(410, "Expired", f"too old resource version: {rv}")
                yield json.dumps({"type": "ERROR", "object": gone.body()}).encode() + b"\n"
                return
            events = self.store.events_after(rv)
            if not events:
                self.store.wait(min(0.5, max(deadline - time.monotonic(), 0)))
                continue
            for ev in events:
                rv = max(rv, ev.rv)
                meta = ev.obj["metadata"]
                if (
                    ev.rt == rt
                    and (ns is None or meta.get("namespace") == ns)
                    and labels_match(reqs, meta.get("labels") or {})
                    and fields_match(fields, ev.obj)
                ):
                    yield json.dumps({"type": ev.type, "object": ev.obj}).encode() + b"\n"


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up mid-stream is normal here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeKubeServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.fake._lock:
            self.fake._connections.add(self.connection)

    def finish(self) -> None:
        with self.fake._lock:
            self.fake._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        fake = self.fake
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        call = Call(method, url.path, query, user_agent=self.headers.get("User-Agent", ""))
        fake.requests.append(call)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if fake.state == "refused":  # an outage that began while this connection was open
            self.close_connection = True
            return
        try:
            if fake.state == "503":
                raise ApiError(503, "ServiceUnavailable", "fake kube API is down (server.down())")
            fake.authorize(call, self.headers.get("Authorization", ""))
            body = json.loads(raw) if raw else None
            result = fake.route(method, url.path, query, body, self.headers.get("Content-Type", ""))
        except ApiError as e:
            call.status = e.code
            return self._reply(e.code, e.body())
        except Unhandled as e:
            message = (
                f"fake kube API: unhandled route {method} {self.path} ({e}); "
                "add it to tests/kube/fakeapi.py"
            )
            fake.unhandled.append(message)
            call.status = 500
            return self._reply(500, ApiError(500, "InternalError", message).body())
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            call.status = 400  # a malformed body or query, e.g. a PUT whose body is not an object
            return self._reply(400, ApiError(400, "BadRequest", f"{type(e).__name__}: {e}").body())
        except Exception as e:  # a bug in this fake: make it as loud as an unhandled route
            fake.unhandled.append(f"fake kube API crashed on {method} {self.path}: {e!r}")
            call.status = 500
            return self._reply(500, ApiError(500, "InternalError", repr(e)).body())
        if isinstance(result, tuple):
            call.status = result[0]
            return self._reply(*result)
        call.status = 200
        self._stream(result, "text/plain" if url.path.endswith("/log") else "application/json")

    def _reply(self, code: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, chunks: Iterator[bytes], content_type: str) -> None:
        """Chunked transfer: clients read each chunk as it comes (not only at EOF)."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        try:
            for chunk in chunks:
                if chunk:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True


# ----------------------------------------------------------------------------- workloads


class WorkloadController:
    """Deployments and StatefulSets get "workload pods" a short delay after a change.

    The pods are Running and ready at once but never executed (they carry
    ``WORKLOAD_ANNOTATION``), so a test can scale an app to zero, see its pods go,
    and see them come back, as a backup of a scaled-down workload needs. A
    Deployment's pods hang off a ReplicaSet named by a template hash, as in a real
    cluster; a StatefulSet's pods are ``NAME-0..N-1`` with their claim templates
    turned into Bound PVCs. Status counts follow the pods.
    """

    KINDS = ("Deployment", "StatefulSet")

    def __init__(self, store: Store, delay: float = 0.5) -> None:
        self.store, self.delay = store, delay
        self._due: dict[tuple[str, str, str], float] = {}
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="fake-kube-controller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._thread.join(timeout=5)

    def _run(self) -> None:
        rv = 0
        while not self.store.stopping:
            for ev in self.store.events_after(rv):
                rv = max(rv, ev.rv)
                meta = ev.obj["metadata"]
                owner = (meta.get("annotations") or {}).get(WORKLOAD_ANNOTATION, "")
                if ev.rt.kind in self.KINDS:
                    status = ev.obj.get("status") or {}
                    stale = status.get("observedGeneration") != meta["generation"]
                    if ev.type == "DELETED" or stale:
                        key = (ev.rt.kind, meta["namespace"], meta["name"])
                        self._due.setdefault(key, time.monotonic() + self.delay)
                elif ev.rt.kind == "Pod" and ev.type == "DELETED" and owner:
                    kind, _, name = owner.partition("/")  # a workload pod deleted: replace it
                    self._due.setdefault(
                        (kind, meta["namespace"], name), time.monotonic() + self.delay
                    )
            for key, due in list(self._due.items()):
                if due <= time.monotonic():
                    del self._due[key]
                    try:
                        self.reconcile(*key)
                    except ApiError:
                        pass  # changed under our feet: the next event brings it back
                    except Exception:  # a bug here must fail the test, not hang it
                        self.errors.append(
                            f"workload controller on {key}:\n{traceback.format_exc()}"
                        )
            self.store.wait(0.1)

    def _owned(self, kind: str, ns: str, name: str) -> list[Obj]:
        pods = self.store.select(self.store.type_of("v1", "Pod"), ns)
        return [
            p
            for p in pods
            if (p["metadata"].get("annotations") or {}).get(WORKLOAD_ANNOTATION) == f"{kind}/{name}"
        ]

    def reconcile(self, kind: str, ns: str, name: str) -> None:
        rt = self.store.type_of("apps/v1", kind)
        pod_rt, rs_rt = self.store.type_of("v1", "Pod"), self.store.type_of("apps/v1", "ReplicaSet")
        try:
            obj = self.store.get(rt, ns, name)
        except ApiError:
            obj = None
        pods = self._owned(kind, ns, name)
        if obj is None:  # garbage collection
            for pod in pods:
                self.store.delete(pod_rt, ns, pod["metadata"]["name"])
            for rs in self.store.select(rs_rt, ns):
                refs = rs["metadata"].get("ownerReferences", [])
                if any(o.get("kind") == kind and o.get("name") == name for o in refs):
                    self.store.delete(rs_rt, ns, rs["metadata"]["name"])
            return
        template, want = obj["spec"]["template"], obj["spec"].get("replicas", 1)
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        owner = {
            "apiVersion": "apps/v1",
            "kind": kind,
            "name": name,
            "uid": obj["metadata"]["uid"],
            "controller": True,
        }
        if kind == "Deployment":
            owner = self._replicaset(obj, template, digest, want, owner)
            for pod in [
                p for p in pods if p["metadata"]["labels"].get("pod-template-hash") != digest
            ]:
                self.store.delete(pod_rt, ns, pod["metadata"]["name"])  # a rollout: old template
                pods.remove(pod)
        pods.sort(key=lambda p: _ordinal(p["metadata"]["name"]))
        for pod in pods[want:]:
            self.store.delete(pod_rt, ns, pod["metadata"]["name"])
        names = {p["metadata"]["name"] for p in pods[:want]}
        ordinal = 0
        while len(names) < want:
            pod_name = (
                f"{name}-{ordinal}"
                if kind == "StatefulSet"
                else f"{owner['name']}-{uuid.uuid4().hex[:5]}"
            )
            ordinal += 1
            if pod_name not in names:
                self.store.create(
                    pod_rt, ns, self._pod(obj, kind, pod_name, digest, owner), from_api=False
                )
                names.add(pod_name)

        def status(o: Obj) -> Obj:
            o["status"] = workload_status(kind, want, o["metadata"]["generation"])
            return o

        self.store.update(rt, ns, name, status, subresource="status")

    def _replicaset(self, dep: Obj, template: Obj, digest: str, want: int, owner: Obj) -> Obj:
        ns, rs_name = dep["metadata"]["namespace"], f"{dep['metadata']['name']}-{digest}"
        rs_rt = self.store.type_of("apps/v1", "ReplicaSet")
        for rs in self.store.select(rs_rt, ns):
            refs = rs["metadata"].get("ownerReferences", [])
            if rs["metadata"]["name"] != rs_name and any(o["uid"] == owner["uid"] for o in refs):
                self.store.delete(rs_rt, ns, rs["metadata"]["name"])  # an older template
        labels = {**(template.get("metadata") or {}).get("labels", {}), "pod-template-hash": digest}
        rs = {
            "metadata": {"name": rs_name, "labels": labels, "ownerReferences": [owner]},
            "spec": {
                "replicas": want,
                "selector": {"matchLabels": labels},
                "template": merge_patch(template, {"metadata": {"labels": labels}}),
            },
            "status": workload_status("ReplicaSet", want, 1),
        }
        try:
            rs = self.store.update(
                rs_rt, ns, rs_name, lambda o: {**merge_patch(o, rs), "status": rs["status"]}
            )
        except ApiError:
            rs = self.store.create(rs_rt, ns, rs, from_api=False)
        return {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": rs_name,
            "uid": rs["metadata"]["uid"],
            "controller": True,
        }

    def _pod(self, obj: Obj, kind: str, pod_name: str, digest: str, owner: Obj) -> Obj:
        template = copy.deepcopy(obj["spec"]["template"])
        meta = template.get("metadata") or {}
        labels = dict(meta.get("labels") or {})
        spec = template.get("spec") or {}
        if kind == "Deployment":
            labels["pod-template-hash"] = digest
        else:
            labels["statefulset.kubernetes.io/pod-name"] = pod_name
            for claim in obj["spec"].get("volumeClaimTemplates") or []:
                claim_name = f"{claim['metadata']['name']}-{pod_name}"
                self._bound_claim(obj["metadata"]["namespace"], claim_name, claim, labels)
                spec.setdefault("volumes", []).append(
                    {
                        "name": claim["metadata"]["name"],
                        "persistentVolumeClaim": {"claimName": claim_name},
                    }
                )
        annotations = {
            **(meta.get("annotations") or {}),
            WORKLOAD_ANNOTATION: f"{kind}/{obj['metadata']['name']}",
        }
        t = now_rfc3339()
        statuses = [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "ready": True,
                "restartCount": 0,
                "started": True,
                "state": {"running": {"startedAt": t}},
            }
            for c in spec.get("containers", [])
        ]
        conditions = [
            {"type": c, "status": "True", "lastTransitionTime": t}
            for c in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        return {
            "metadata": {
                "name": pod_name,
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [owner],
            },
            "spec": {**spec, "nodeName": "fakekube-node"},
            "status": {
                "phase": "Running",
                "conditions": conditions,
                "startTime": t,
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "containerStatuses": statuses,
            },
        }

    def _bound_claim(self, ns: str, name: str, template: Obj, labels: dict[str, str]) -> None:
        rt = self.store.type_of("v1", "PersistentVolumeClaim")
        try:
            self.store.get(rt, ns, name)
        except ApiError:
            claim = {
                "metadata": {
                    "name": name,
                    "labels": dict((template.get("metadata") or {}).get("labels") or {}),
                },
                "spec": template.get("spec") or {},
                "status": {"phase": "Bound"},
            }
            self.store.create(rt, ns, claim, from_api=False)


def workload_status(kind: str, ready: int, generation: int) -> Obj:
    """All ``ready``: zero counts omitted unless the real type always serialises them."""
    counts = {
        "replicas": ready,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "updatedReplicas": ready,
        "currentReplicas": ready,
    }
    if kind == "ReplicaSet":
        counts = {
            k: v for k, v in counts.items() if k not in ("updatedReplicas", "currentReplicas")
        }
    if kind == "Deployment":
        counts.pop("currentReplicas")
    status = {**ALWAYS_IN_STATUS.get(kind, {}), **{k: v for k, v in counts.items() if v}}
    return {**status, "observedGeneration": generation}


def _ordinal(name: str) -> tuple[int, str]:
    tail = name.rsplit("-", 1)[-1]
    return (int(tail), name) if tail.isdigit() else (0, name)
