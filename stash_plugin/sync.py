"""The cluster source: ``stash sync`` copies Stash objects and workloads into a file.

The DAG factory never calls the API server (parsing must be fast and must not depend
on the network); it reads the snapshot this writes. The file is replaced atomically
and only after a complete, successful listing, so when the API server is unreachable
the last snapshot stays and so do the DAGs. Secrets are never copied.

At 10,000 workloads and Restics a re-list every few seconds would load the API server
and the parsing processes for nothing, so each type is listed once in pages
(``limit``/``continue``) and then followed with a watch from the list's
``resourceVersion``; an expired version (410 Gone) means a fresh paged list. Only what
the planner reads is kept per object (no status, no managedFields, no resource
versions), so memory stays bounded and a status change (every backup writes one)
neither rewrites the file nor makes the dag-processor re-parse.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from stash_plugin import GROUP, VERSION

log = logging.getLogger(__name__)

Obj = dict[str, Any]
PAGE_SIZE = 500
"""Objects per list page: the API server's own default chunk size for kubectl."""
WATCH_SECONDS = 300
"""A watch is re-opened (from its last version) after this long, as client-go does."""
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


class Gone(Exception):
    """The resourceVersion (or continue token) expired: list again from scratch."""


def _stash_object(obj: Obj) -> Obj:
    """Spec and identity; status is the operators' business and changes every run."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")} | {
        "metadata": _metadata(obj, ("name", "namespace", "labels", "annotations"))
    }


def _workload(obj: Obj) -> Obj:
    """What ``parse_workload`` reads: uid, labels, Stash annotations, owner, replicas,
    template labels and volumes, claim template names; a Deployment's containers and
    status are dropped."""
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    pod_spec = template.get("spec") or {}
    kept: Obj = {"template": {"metadata": {}, "spec": {"volumes": pod_spec.get("volumes") or []}}}
    labels = (template.get("metadata") or {}).get("labels")
    if labels:
        kept["template"]["metadata"]["labels"] = labels
    if "replicas" in spec:
        kept["replicas"] = spec["replicas"]
    claims = [
        {"metadata": {"name": (t.get("metadata") or {}).get("name")}}
        for t in spec.get("volumeClaimTemplates") or []
        if isinstance(t, dict)
    ]
    if claims:
        kept["volumeClaimTemplates"] = claims
    meta = _metadata(obj, ("name", "namespace", "uid", "labels"))
    stash = {
        k: v
        for k, v in ((obj.get("metadata") or {}).get("annotations") or {}).items()
        if k.startswith(f"{GROUP}/")  # a tenant's template values; others change on rollouts
    }
    if stash:
        meta["annotations"] = stash
    owners = [
        {"kind": o.get("kind"), "name": o.get("name"), "controller": True}
        for o in (obj.get("metadata") or {}).get("ownerReferences") or []
        if isinstance(o, dict) and o.get("controller")
    ]
    if owners:
        meta["ownerReferences"] = owners
    return {"metadata": meta, "spec": kept}


def _node(obj: Obj) -> Obj:
    return {"metadata": _metadata(obj, ("name", "labels"))}


def _metadata(obj: Obj, keys: tuple[str, ...]) -> Obj:
    meta = obj.get("metadata") or {}
    kept = {k: meta[k] for k in keys if meta.get(k)}
    if _LAST_APPLIED in (kept.get("annotations") or {}):
        rest = {k: v for k, v in kept["annotations"].items() if k != _LAST_APPLIED}
        kept.pop("annotations")
        if rest:
            kept["annotations"] = rest
    return kept


@dataclass(frozen=True)
class Source:
    """One resource type ``stash sync`` copies, and how to reduce its objects."""

    kind: str
    api_version: str
    plural: str
    reduce: Callable[[Obj], Obj]
    optional: bool = False
    """A type that may not be installed (404): an empty list, not a failure."""

    @property
    def path(self) -> str:
        prefix = "/api" if "/" not in self.api_version else "/apis"
        return f"{prefix}/{self.api_version}/{self.plural}"

    def shape(self, obj: Obj) -> str:
        """The reduced object as compact JSON: a string costs a tenth of the dicts it
        stands for, and comparing two tells whether the snapshot changes."""
        doc = {"apiVersion": self.api_version, "kind": self.kind, **self.reduce(obj)}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))


_STASH = f"{GROUP}/{VERSION}"
SOURCES = (
    Source("Repository", _STASH, "repositories", _stash_object),
    Source("Restic", _STASH, "restics", _stash_object),
    Source("Recovery", _STASH, "recoveries", _stash_object),
    Source("BackupAgent", _STASH, "backupagents", _stash_object),
    Source("BackupTemplate", _STASH, "backuptemplates", _stash_object),
    # KubeDB's AppBindings, which a database Restic's AppRef names; a cluster without
    # KubeDB has no such type, and that is no reason to keep the last snapshot.
    Source("AppBinding", "appcatalog.appscode.com/v1alpha1", "appbindings", _stash_object, True),
    Source("Deployment", "apps/v1", "deployments", _workload),
    Source("StatefulSet", "apps/v1", "statefulsets", _workload),
    Source("DaemonSet", "apps/v1", "daemonsets", _workload),
    Source("ReplicaSet", "apps/v1", "replicasets", _workload),
    Source("ReplicationController", "v1", "replicationcontrollers", _workload),
    Source("Node", "v1", "nodes", _node),
)

STASH_PLURALS = {s.kind: s.plural for s in SOURCES if s.api_version == _STASH}


def _get(api_client: Any, path: str, query: list[tuple[str, Any]], timeout: float) -> Any:
    """A raw GET (no model deserialisation: 10,000 typed objects cost seconds and MBs)."""
    return api_client.call_api(
        path,
        "GET",
        query_params=query,
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
        _preload_content=False,
        _request_timeout=timeout,
    )


def _status(exc: Exception) -> int | None:
    return getattr(exc, "status", None)


@dataclass
class Mirror:
    """The reduced objects of one type, kept current by list + watch."""

    source: Source
    page_size: int = PAGE_SIZE
    objects: dict[tuple[str, str], str] = field(default_factory=dict)
    """Reduced objects (compact JSON) by (namespace, name)."""
    resource_version: str = ""
    listed: bool = False

    def fetch(self, api_client: Any) -> tuple[dict[tuple[str, str], str], str]:
        """A complete paged list: the reduced objects and the list's resourceVersion."""
        objects: dict[tuple[str, str], str] = {}
        token, meta = "", {}  # type: tuple[str, Obj]
        while True:
            query: list[tuple[str, Any]] = [("limit", self.page_size)]
            if token:
                query.append(("continue", token))
            try:
                page = json.loads(_get(api_client, self.source.path, query, 60).data)
            except Exception as exc:
                if self.source.optional and _status(exc) == 404:
                    page = {"items": [], "metadata": {}}
                elif token and _status(exc) == 410:  # the continue token expired
                    objects, token = {}, ""
                    continue
                else:
                    raise
            for obj in page.get("items") or []:
                objects[_key(obj)] = self.source.shape(obj)
            meta = page.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                return objects, meta.get("resourceVersion") or ""

    def replace(self, objects: dict[tuple[str, str], str], version: str) -> bool:
        """Take a fresh list; returns whether the reduced objects changed."""
        changed = not self.listed or objects != self.objects
        self.objects, self.resource_version, self.listed = objects, version, True
        return changed

    def events(self, api_client: Any, seconds: float) -> Iterator[Obj]:
        """The watch's events as they come (``apply`` each); raises Gone when the
        version is too old (the caller lists again)."""
        query = [
            ("watch", "true"),
            ("resourceVersion", self.resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", int(seconds)),
        ]
        try:
            resp = _get(api_client, self.source.path, query, seconds + 30)
        except Exception as exc:
            if _status(exc) == 410:
                raise Gone(self.source.kind) from exc
            if self.source.optional and _status(exc) == 404:
                return
            raise
        from kubernetes.watch.watch import iter_resp_lines

        try:
            for line in iter_resp_lines(resp):
                if line:
                    yield json.loads(line)
        finally:
            resp.release_conn()

    def apply(self, event: Obj) -> bool:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone(self.source.kind)
            raise RuntimeError(f"watch of {self.source.plural} failed: {obj.get('message')}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self.resource_version = version
        if kind == "BOOKMARK":
            return False
        key = _key(obj)
        if kind == "DELETED":
            return self.objects.pop(key, None) is not None
        shaped = self.source.shape(obj)
        if self.objects.get(key) == shaped:
            return False
        self.objects[key] = shaped
        return True


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


def _items(mirrors: list[Mirror]) -> list[str]:
    """Every object, ordered by kind, namespace and name (a stable file)."""
    return [
        m.objects[key]
        for m in sorted(mirrors, key=lambda m: m.source.kind)
        for key in sorted(m.objects)
    ]


def collect(api_client: Any, page_size: int = PAGE_SIZE) -> list[str]:
    """List everything the planner needs, page by page; raises if any listing fails."""
    mirrors = [Mirror(source, page_size) for source in SOURCES]
    for mirror in mirrors:
        mirror.replace(*mirror.fetch(api_client))
    return _items(mirrors)


def write_snapshot(items: list[str], path: Path) -> bool:
    """Atomically replace ``path`` with a ``kind: List`` of ``items`` (compact JSON
    objects, one a line); returns False (and writes nothing) when unchanged, so the
    dag-processor does not re-parse for nothing."""
    text = '{"apiVersion":"v1","kind":"List","items":[\n' + ",\n".join(items) + "\n]}\n"
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".stash-sync-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return True


def sync_once(api_client: Any, path: Path, page_size: int = PAGE_SIZE) -> bool:
    return write_snapshot(collect(api_client, page_size), path)


class _Follower(threading.Thread):
    """Keeps one mirror current: list, watch, re-watch, re-list on 410."""

    def __init__(
        self,
        mirror: Mirror,
        api_client_factory: Callable[[], Any],
        changed: threading.Condition,
        stop: threading.Event,
        watch_seconds: float,
        retry_seconds: float,
    ) -> None:
        super().__init__(name=f"stash-sync-{mirror.source.plural}", daemon=True)
        self.mirror, self.factory = mirror, api_client_factory
        self.changed, self.stop = changed, stop
        self.watch_seconds, self.retry_seconds = watch_seconds, retry_seconds
        self.version = 0
        """Bumped (under ``changed``) whenever the mirror's objects change."""

    def run(self) -> None:
        client = None
        must_list = True
        while not self.stop.is_set():
            try:
                client = client or self.factory()
                if must_list:
                    listed = self.mirror.fetch(client)
                    self._note(partial(self.mirror.replace, *listed))
                    must_list = False
                for event in self.mirror.events(client, self.watch_seconds):
                    self._note(partial(self.mirror.apply, event))
                    if self.stop.is_set():
                        return
            except Gone:
                log.info("%s: resource version expired, listing again", self.mirror.source.kind)
                must_list = True
            except Exception as exc:  # the API server is down or the watch broke
                log.warning("cluster sync of %s failed: %s", self.mirror.source.plural, exc)
                client = None
                self.stop.wait(self.retry_seconds)

    def _note(self, change: Callable[[], bool]) -> None:
        """Change the mirror under the lock the writer reads it with."""
        with self.changed:
            if change():
                self.version += 1
                self.changed.notify_all()


def sync_forever(
    api_client_factory: Callable[[], Any],
    path: Path,
    interval: float = 10.0,
    stop: threading.Event | None = None,
    watch_seconds: float = WATCH_SECONDS,
    retry_seconds: float = 5.0,
    page_size: int = PAGE_SIZE,
    on_write: Callable[[], None] | None = None,
) -> None:
    """List once, then follow watches; write the file at most once per ``interval``
    and only when something changed (then call ``on_write``: ``stash sync`` refreshes
    the DAG index there). An unreachable API server keeps the last file."""
    stop = stop or threading.Event()
    changed = threading.Condition()
    followers = [
        _Follower(
            Mirror(source, page_size),
            api_client_factory,
            changed,
            stop,
            watch_seconds,
            retry_seconds,
        )
        for source in SOURCES
    ]
    for follower in followers:
        follower.start()
    mirrors = [f.mirror for f in followers]

    def state() -> int:
        return sum(f.version for f in followers)

    written = -1
    while not stop.is_set():
        with changed:  # the first write as soon as every type is listed, then on changes
            while not stop.is_set() and (state() == written or not all(m.listed for m in mirrors)):
                changed.wait(1.0)
            if stop.is_set():
                break
            current, items = state(), _items(mirrors)
        try:
            if write_snapshot(items, path):
                log.info("cluster snapshot updated: %s", path)
                if on_write is not None:
                    on_write()
            written = current
        except OSError as exc:
            log.warning("cannot write the cluster snapshot %s: %s", path, exc)
        stop.wait(interval)  # at most one write per interval
    for follower in followers:
        follower.join(timeout=1.0)  # one blocked in a quiet watch is a daemon: let it be


def current_object(custom_api: Any, plural: str, namespace: str, name: str) -> Any:
    """The Stash object as the cluster has it, or None when there is none (any other
    API error is raised)."""
    from kubernetes.client.exceptions import ApiException

    try:
        return custom_api.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    except ApiException as exc:
        if exc.status != 404:
            raise
        return None


def apply_objects(api_client: Any, objects: list[dict[str, Any]]) -> list[str]:
    """Create each Stash object, or replace the one of the same name (a Stash 0.8
    Restic or Recovery becomes its new shape in place); returns what was done, one
    line per object. Stops at the first failure, naming the object."""
    from kubernetes import client

    custom = client.CustomObjectsApi(api_client)
    done = []
    for obj in objects:
        kind, meta = obj["kind"], obj["metadata"]
        ns, name = meta.get("namespace") or "default", meta["name"]
        where = (GROUP, VERSION, ns, STASH_PLURALS[kind])
        current = current_object(custom, STASH_PLURALS[kind], ns, name)
        if current is None:
            custom.create_namespaced_custom_object(*where, obj)
            done.append(f"created {kind} {ns}/{name}")
            continue
        version = (current.get("metadata") or {}).get("resourceVersion")
        body = {**obj, "metadata": {**meta, "resourceVersion": version}}
        custom.replace_namespaced_custom_object(*where, name, body)
        done.append(f"replaced {kind} {ns}/{name}")
    return done
