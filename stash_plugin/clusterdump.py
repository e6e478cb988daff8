"""The agent's Kubernetes side of a Cluster target: read the selected API objects into
a folder tree, and apply such a tree back. Standard library only (the agent image has
nothing else), so the API is spoken here directly: discovery, paged lists, server-side
apply.

The tree is ``<namespace or _cluster>/<group or core>/<Kind>/<name>.yaml``. Each file
is YAML in its JSON form (YAML 1.2 reads JSON; ``kubectl apply -f`` takes it), written
as the object is read, so memory does not grow with the number of objects; restic then
backs up the folder. Object contents (Secret data above all) only ever go to these
files and to the API server: log lines and results name objects, never their values.
"""

from __future__ import annotations

import difflib
import http.client
import json
import os
import ssl
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from stash_plugin.protocol import (
    ENV_KUBE_CA_FILE,
    ENV_KUBE_CERT_FILE,
    ENV_KUBE_INSECURE,
    ENV_KUBE_KEY_FILE,
    ENV_KUBE_SERVER,
    ENV_KUBE_TOKEN,
    ClusterApply,
)

FIELD_MANAGER = "stash-airflow"
PAGE_SIZE = 500
CLUSTER_SCOPE = "_cluster"
"""The tree's folder for cluster-scoped objects (no namespace can start with ``_``)."""
CORE = "core"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
CRD_WAIT_SECONDS = 60.0


class ClusterError(RuntimeError):
    """A failure fit for the task log: names objects and fields, never their values."""


class KubeError(ClusterError):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status


def log(message: str) -> None:
    print(f"stash-agent: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the API


class Kube:
    """A tiny API client: one kept-alive connection, bearer token or client certificate."""

    def __init__(
        self,
        server: str,
        token: str | None = None,
        ca_file: str | None = None,
        cert: tuple[str, str] | None = None,
        insecure: bool = False,
    ) -> None:
        url = urlsplit(server)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ClusterError(f"the Kubernetes API address {server!r} is not an http(s) URL")
        self.scheme, self.host = url.scheme, url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.base = url.path.rstrip("/")
        self.token = token
        self.context: ssl.SSLContext | None = None
        if url.scheme == "https":
            self.context = ssl.create_default_context(cafile=ca_file)
            if insecure:
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE
            if cert:
                self.context.load_cert_chain(*cert)
        self._conn: http.client.HTTPConnection | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Kube:
        """The API the runtime handed over (local runtime), or the pod's own (in-cluster)."""
        if env.get(ENV_KUBE_SERVER):
            cert = None
            if env.get(ENV_KUBE_CERT_FILE) and env.get(ENV_KUBE_KEY_FILE):
                cert = (env[ENV_KUBE_CERT_FILE], env[ENV_KUBE_KEY_FILE])
            return cls(
                env[ENV_KUBE_SERVER],
                env.get(ENV_KUBE_TOKEN) or None,
                env.get(ENV_KUBE_CA_FILE) or None,
                cert,
                env.get(ENV_KUBE_INSECURE, "") in ("1", "true"),
            )
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        token_file = Path(SERVICE_ACCOUNT_DIR, "token")
        if host and port and token_file.exists():
            if ":" in host:
                host = f"[{host}]"
            return cls(
                f"https://{host}:{port}",
                token_file.read_text().strip(),
                str(Path(SERVICE_ACCOUNT_DIR, "ca.crt")),
            )
        raise ClusterError(
            "no Kubernetes API to talk to: not in a pod with a ServiceAccount token, and "
            f"{ENV_KUBE_SERVER} is not set (the local runtime sets it from the Airflow connection)"
        )

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.scheme == "https":
                self._conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=60, context=self.context
                )
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        return self._conn

    def request(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        target = self.base + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": "application/json", "User-Agent": "stash-agent"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, target, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._conn = None
                if attempt == 2:
                    raise ClusterError(f"{method} {path}: {exc}") from None
        if response.status >= 400:
            try:
                status = json.loads(raw)
                reason, message = status.get("reason", ""), status.get("message", "")
            except ValueError:
                reason, message = response.reason, ""
            raise KubeError(response.status, str(reason), str(message)[:500])
        return json.loads(raw) if raw else None


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def label(self) -> str:
        """``apps/Deployment``, ``core/ConfigMap``: the tree's folders and the counts' keys."""
        return f"{self.group or CORE}/{self.kind}"

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        out = self.prefix
        if self.namespaced and namespace:
            out += f"/namespaces/{quote(namespace, safe='')}"
        out += f"/{self.plural}"
        return out + (f"/{quote(name, safe='')}" if name else "")


class Discovery:
    """What the server serves (``/api``, ``/apis``, ``/apis/GROUP/VERSION``), read as needed."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._groups: dict[str, str] | None = None  # group -> preferred version
        self._lists: dict[tuple[str, str], list[Resource]] = {}

    def refresh(self) -> None:
        self._groups = None
        self._lists.clear()

    def groups(self) -> dict[str, str]:
        if self._groups is None:
            core = self.kube.request("GET", "/api") or {}
            groups = {"": (core.get("versions") or ["v1"])[0]}
            for g in (self.kube.request("GET", "/apis") or {}).get("groups") or []:
                groups[g["name"]] = g["preferredVersion"]["version"]
            self._groups = groups
        return self._groups

    def resources(self, group: str, version: str | None = None) -> list[Resource]:
        groups = self.groups()
        if group not in groups:
            hint = difflib.get_close_matches(group, [g for g in groups if g], n=1)
            near = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ClusterError(f"API group {group!r} is not served by the cluster{near}")
        version = version or groups[group]
        key = (group, version)
        if key not in self._lists:
            path = f"/apis/{group}/{version}" if group else f"/api/{version}"
            try:
                listed = self.kube.request("GET", path) or {}
            except KubeError as exc:
                if exc.status == 404:
                    raise ClusterError(
                        f"API version {group or 'core'}/{version} is not served"
                    ) from None
                raise
            self._lists[key] = [
                Resource(
                    group,
                    version,
                    r["name"],
                    r["kind"],
                    bool(r.get("namespaced")),
                    tuple(r.get("verbs") or ()),
                )
                for r in listed.get("resources") or []
                if "/" not in r["name"]
            ]
        return self._lists[key]

    def resource(self, group: str, version: str | None, plural: str) -> list[Resource]:
        """The resources ``plural`` names (``*``: every listable one of the group);
        an unknown name is an error naming it and the closest served name."""
        served = self.resources(group, version)
        if plural == "*":
            return [r for r in served if "list" in r.verbs]
        found = [r for r in served if r.plural == plural]
        if not found:
            names = sorted(r.plural for r in served)
            hint = difflib.get_close_matches(plural, names, n=1, cutoff=0.6)
            near = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ClusterError(
                f"resource {plural!r} is not served in group {group or 'core'!r}{near}"
            )
        return found

    def by_kind(self, api_version: str, kind: str) -> Resource:
        group, _, version = api_version.rpartition("/")
        for r in self.resources(group, version):
            if r.kind == kind:
                return r
        raise ClusterError(f"the cluster serves no {kind} in {api_version}")


# --------------------------------------------------------------------------- sanitizing

_SERVER_META = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
)
_SERVER_ANNOTATIONS = (
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "pv.kubernetes.io/provisioned-by",
    "volume.beta.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/selected-node",
)
_JOB_LABELS = (
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "job-name",
    "batch.kubernetes.io/job-name",
)


def sanitize(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` without what the API server fills in, so that applying it creates the
    object afresh: status, identity, bookkeeping, allocated addresses and ports."""
    obj.pop("status", None)
    meta = obj.get("metadata") or {}
    for key in _SERVER_META:
        meta.pop(key, None)
    annotations = meta.get("annotations") or {}
    bound_by_controller = annotations.get("pv.kubernetes.io/bound-by-controller") == "yes"
    for key in _SERVER_ANNOTATIONS:
        annotations.pop(key, None)
    if not annotations:
        meta.pop("annotations", None)
    for ref in meta.get("ownerReferences") or []:
        ref.pop("uid", None)
    spec = obj.get("spec")
    kind = obj.get("kind")
    if kind == "Namespace":
        obj.pop("spec", None)  # only the server's "kubernetes" finalizer
    elif kind == "Service" and isinstance(spec, dict):
        if spec.get("clusterIP") != "None":
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
        spec.pop("healthCheckNodePort", None)
        for port in spec.get("ports") or []:
            port.pop("nodePort", None)
    elif kind == "PersistentVolumeClaim" and isinstance(spec, dict) and bound_by_controller:
        spec.pop("volumeName", None)
    elif kind == "ServiceAccount":
        obj.pop("secrets", None)
    elif kind == "Pod" and isinstance(spec, dict):
        spec.pop("nodeName", None)
    elif kind == "Job" and isinstance(spec, dict) and not spec.get("manualSelector"):
        spec.pop("selector", None)
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        for key in _JOB_LABELS:
            labels.pop(key, None)
    return obj


def skipped_by_sanitize(obj: Mapping[str, Any]) -> bool:
    """Objects the server makes itself and a restore must not bring back."""
    return obj.get("kind") == "Secret" and obj.get("type") == "kubernetes.io/service-account-token"


# --------------------------------------------------------------------------- the tree


def _segment(value: str, what: str) -> str:
    """One folder or file name of the tree: never empty, ``.``, ``..``, or holding ``/``."""
    if not value or value in (".", "..") or "/" in value or "\x00" in value:
        raise ClusterError(f"{what} {value!r} cannot be a name in the backup tree")
    return value


def object_file(root: Path, r: Resource, namespace: str | None, name: str) -> Path:
    scope = _segment(namespace, "namespace") if r.namespaced and namespace else CLUSTER_SCOPE
    return (
        root
        / scope
        / _segment(r.group or CORE, "group")
        / _segment(r.kind, "kind")
        / (_segment(name, "name") + ".yaml")
    )


def _write(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


@dataclass
class Selection:
    resources: list[tuple[str, str | None, str]]
    """(group, version or None, plural) as planned (``--resource=GROUP[/VERSION]:NAME``)."""
    namespaces: list[str] = field(default_factory=list)
    exclude_namespaces: list[str] = field(default_factory=list)
    sanitize: bool = True
    parents_only: bool = False


def parse_resource(text: str) -> tuple[str, str | None, str]:
    gv, sep, plural = text.rpartition(":")
    if not sep or not plural:
        raise ClusterError(f"--resource={text!r}: expected GROUP[/VERSION]:RESOURCE")
    group, _, version = gv.partition("/")
    return group, version or None, plural


def _pages(kube: Kube, path: str) -> Iterator[list[dict[str, Any]]]:
    """A list read in pages (``limit``/``continue``): one page in memory at a time."""
    token = ""
    while True:
        query = {"limit": str(PAGE_SIZE)}
        if token:
            query["continue"] = token
        page = kube.request("GET", path, query) or {}
        yield page.get("items") or []
        token = (page.get("metadata") or {}).get("continue") or ""
        if not token:
            return


def dump(kube: Kube, selection: Selection, root: Path) -> dict[str, int]:
    """Write every selected object under ``root``; the number written per kind.

    Every name is checked against discovery before anything is read, so a typo fails
    the run at once, naming the resource and the closest served one."""
    discovery = Discovery(kube)
    chosen: dict[tuple[str, str], Resource] = {}
    for group, version, plural in selection.resources:
        for r in discovery.resource(group, version, plural):
            if "list" not in r.verbs:
                raise ClusterError(f"resource {r.plural!r} of {r.api_version} cannot be listed")
            chosen.setdefault((r.group, r.plural), r)
    counts: dict[str, int] = {}
    excluded = set(selection.exclude_namespaces)
    for r in chosen.values():
        scopes: list[str | None] = [None]
        if r.namespaced and selection.namespaces:
            scopes = list(selection.namespaces)
        for scope in scopes:
            for items in _pages(kube, r.path(scope)):
                for obj in items:
                    _dump_one(obj, r, selection, excluded, root, counts)
    return counts


def _dump_one(
    obj: dict[str, Any],
    r: Resource,
    selection: Selection,
    excluded: set[str],
    root: Path,
    counts: dict[str, int],
) -> None:
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace") if r.namespaced else None
    if namespace in excluded:
        return
    if r.kind == "Namespace" and (
        meta.get("name") in excluded
        or (selection.namespaces and meta.get("name") not in selection.namespaces)
    ):
        return
    if selection.parents_only and meta.get("ownerReferences"):
        return
    obj["apiVersion"], obj["kind"] = r.api_version, r.kind  # list items may lack them
    if selection.sanitize:
        if skipped_by_sanitize(obj):
            return
        sanitize(obj)
    _write(object_file(root, r, namespace, str(meta.get("name") or "")), obj)
    counts[r.label] = counts.get(r.label, 0) + 1


# --------------------------------------------------------------------------- restore

_ORDER: dict[str, int] = {
    "Namespace": 0,
    "CustomResourceDefinition": 1,
    "PriorityClass": 2,
    "StorageClass": 2,
    "ServiceAccount": 3,
    "ClusterRole": 3,
    "Role": 3,
    "ClusterRoleBinding": 4,
    "RoleBinding": 4,
    "Secret": 5,
    "ConfigMap": 5,
    "LimitRange": 5,
    "ResourceQuota": 5,
    "PersistentVolume": 6,
    "PersistentVolumeClaim": 7,
    "Service": 8,
    "Deployment": 9,
    "StatefulSet": 9,
    "DaemonSet": 9,
    "ReplicaSet": 9,
    "ReplicationController": 9,
    "Job": 9,
    "CronJob": 9,
    "Pod": 10,
}
REST = 11
"""Everything else (custom resources, Ingresses, policies...) comes last."""


@dataclass(frozen=True, order=True)
class TreeEntry:
    rank: int
    namespace: str  # "" for cluster-scoped objects
    group: str
    kind: str
    name: str
    path: Path = field(compare=False)

    @property
    def ref(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.group}/{self.kind} {where}{self.name}"


def read_tree(
    root: Path, namespaces: Sequence[str] = (), kinds: Sequence[str] = ()
) -> list[TreeEntry]:
    """The tree's objects in the order they are applied (paths only: each file is read
    when its turn comes). With ``namespaces``, only their objects and Namespaces."""
    entries = []
    for scope in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        for group in sorted(p for p in scope.iterdir() if p.is_dir() and not p.is_symlink()):
            for kind in sorted(p for p in group.iterdir() if p.is_dir() and not p.is_symlink()):
                if kinds and kind.name not in kinds:
                    continue
                for file in sorted(kind.iterdir()):
                    if file.suffix != ".yaml" or not file.is_file() or file.is_symlink():
                        continue
                    namespace = "" if scope.name == CLUSTER_SCOPE else scope.name
                    if namespaces and not _wanted(namespace, kind.name, file.stem, namespaces):
                        continue
                    rank = _ORDER.get(kind.name, REST)
                    entries.append(
                        TreeEntry(rank, namespace, group.name, kind.name, file.stem, file)
                    )
    return sorted(entries)


def _wanted(namespace: str, kind: str, name: str, namespaces: Sequence[str]) -> bool:
    if namespace:
        return namespace in namespaces
    return kind == "Namespace" and name in namespaces


@dataclass
class Applier:
    """Applies tree entries one by one; one failure never stops the others."""

    kube: Kube
    overwrite: bool = False
    dry_run: bool = False
    report: Callable[[str], None] = log
    discovery: Discovery = field(init=False)
    result: ClusterApply = field(init=False)
    failures: list[str] = field(default_factory=list)
    dry_crds: set[tuple[str, str]] = field(default_factory=set)
    """(group, kind) of custom resources whose CRD a dry run would create."""

    def __post_init__(self) -> None:
        self.discovery = Discovery(self.kube)
        self.result = ClusterApply(dry_run=self.dry_run)

    def apply_all(self, entries: Sequence[TreeEntry]) -> ClusterApply:
        crds_pending: list[str] = []
        for entry in entries:
            if crds_pending and entry.rank > _ORDER["CustomResourceDefinition"]:
                self._wait_established(crds_pending)
                crds_pending = []
            name = self._apply_one(entry)
            if name and entry.kind == "CustomResourceDefinition":
                crds_pending.append(name)
        if crds_pending:
            self._wait_established(crds_pending)
        return self.result

    def _count(self, action: str, entry: TreeEntry) -> None:
        self.result.actions[action] = self.result.actions.get(action, 0) + 1
        label = f"{entry.group}/{entry.kind}"
        self.result.kinds[label] = self.result.kinds.get(label, 0) + 1
        self.report(f"{action}: {entry.ref}")

    def _apply_one(self, entry: TreeEntry) -> str | None:
        try:
            obj = self._load(entry)
            if self.dry_run and (entry.group, entry.kind) in self.dry_crds:
                # Its CRD would be created by this restore: nothing to ask the API yet.
                self._count("would create", entry)
                return None
            r = self.discovery.by_kind(obj["apiVersion"], obj["kind"])
            meta = obj["metadata"]
            namespace = meta.get("namespace") if r.namespaced else None
            if r.namespaced and not namespace:
                raise ClusterError("a namespaced object without metadata.namespace")
            existing = self._get(r, namespace, meta["name"])
            if existing is not None and not self.overwrite:
                self._count("exists, left alone", entry)
                return None
            self._fill_owner_uids(obj, namespace)
            query = {"fieldManager": FIELD_MANAGER, "force": "true"}
            if self.dry_run:
                query["dryRun"] = "All"
            applied = self.kube.request(
                "PATCH",
                r.path(namespace, meta["name"]),
                query,
                obj,
                "application/apply-patch+yaml",
            )
            self._count(_action(existing, applied, self.dry_run), entry)
            if self.dry_run and existing is None and entry.kind == "CustomResourceDefinition":
                spec = obj.get("spec") or {}
                self.dry_crds.add(
                    (str(spec.get("group")), str((spec.get("names") or {}).get("kind")))
                )
            return str(meta["name"])
        except (ClusterError, KeyError, TypeError, ValueError) as exc:
            message = f"{entry.ref}: {_reason(exc)}"
            self.failures.append(message)
            self.result.failed.append(message)
            self.report(f"failed: {message}")
            return None

    def _load(self, entry: TreeEntry) -> dict[str, Any]:
        """The object of ``entry``, which must be what its place in the tree says."""
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as f:
            obj = json.load(f)
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
            raise ClusterError("the file holds no Kubernetes object")
        meta = obj["metadata"]
        group = str(obj.get("apiVersion", "")).rpartition("/")[0] or CORE
        if (
            obj.get("kind") != entry.kind
            or group != entry.group
            or meta.get("name") != entry.name
            or (meta.get("namespace") or "") != entry.namespace
            and entry.namespace
        ):
            raise ClusterError("the file's object is not the one its place in the tree names")
        if entry.namespace:
            meta["namespace"] = entry.namespace
        else:
            meta.pop("namespace", None)
        return obj

    def _get(self, r: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self.kube.request("GET", r.path(namespace, name))  # type: ignore[no-any-return]
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def _fill_owner_uids(self, obj: dict[str, Any], namespace: str | None) -> None:
        """A sanitized owner reference lost its uid; the restored owner gives it back."""
        for ref in obj["metadata"].get("ownerReferences") or []:
            if ref.get("uid"):
                continue
            owner_r = self.discovery.by_kind(ref["apiVersion"], ref["kind"])
            owner = self._get(owner_r, namespace, ref["name"])
            if owner is None:
                if self.dry_run:
                    continue
                raise ClusterError(f"its owner {ref['kind']} {ref['name']} does not exist")
            ref["uid"] = owner["metadata"]["uid"]

    def _wait_established(self, names: list[str]) -> None:
        """Custom resources can be applied once their CRDs are established."""
        if self.dry_run:
            return
        crd = self.discovery.by_kind("apiextensions.k8s.io/v1", "CustomResourceDefinition")
        deadline = time.monotonic() + CRD_WAIT_SECONDS
        for name in names:
            while True:
                obj = self._get(crd, None, name) or {}
                conditions = (obj.get("status") or {}).get("conditions") or []
                if any(
                    c.get("type") == "Established" and c.get("status") == "True" for c in conditions
                ):
                    break
                if time.monotonic() > deadline:
                    self.failures.append(
                        f"CustomResourceDefinition {name}: not established in time"
                    )
                    break
                time.sleep(0.5)
        self.discovery.refresh()


def _action(existing: Any, applied: Any, dry_run: bool) -> str:
    if existing is None:
        return "would create" if dry_run else "created"
    before = (existing.get("metadata") or {}).get("resourceVersion")
    after = (
        (applied.get("metadata") or {}).get("resourceVersion")
        if isinstance(applied, dict)
        else None
    )
    if dry_run:
        same = _comparable(existing) == _comparable(applied)
        return "unchanged" if same else "would change"
    return "unchanged" if before == after else "changed"


def _comparable(obj: Any) -> Any:
    if not isinstance(obj, dict):
        return obj
    out = {k: v for k, v in obj.items() if k != "status"}
    meta = dict(out.get("metadata") or {})
    for key in ("resourceVersion", "managedFields", "generation"):
        meta.pop(key, None)
    out["metadata"] = meta
    return out


def _reason(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"the object has no {exc.args[0]!r}"
    return str(exc)
