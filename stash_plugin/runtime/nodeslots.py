"""A cap on concurrent agents per node (``[stash] node_slots``): a run-time semaphore.

Why not an Airflow pool, like the per-namespace cap (``runtime.pools``): a task has
one pool, fixed when its DAG is parsed, while the node an agent runs on is known only
when the step runs (``runtime.pod.colocated`` finds the node of a running workload
pod). So a step takes one of the node's ``node_slots`` slots right before its agent
starts and gives it back when the agent has finished:

- local runtime: an ``fcntl.flock`` on one of the slot files
  ``state_dir/node-slots/<digest of the node>/slot-<i>``; the kernel releases it when
  the worker dies, so a dead holder never keeps a slot;
- kubernetes runtime: one of the Leases ``stash-node-<digest>-<i>`` in
  ``[stash] lease_namespace``, taken by creating it (409: taken), so two workers
  never both win a slot. A Lease survives a deferral (the triggerer waits for the
  pod; the resumed task gives the slot back). A Lease whose holder is gone (no pod
  of its holder exists or every one has finished, after ``HOLDER_GRACE`` seconds for
  the pod to be created) is taken over by an update that carries the Lease's
  ``resourceVersion``, so of two workers taking it over only one wins.

Only agents whose node is known before they start take a slot in the kubernetes
runtime: pods pinned to a node (a DaemonSet target's node, the node of the workload
pod a ReadWriteOnce claim is mounted on), which are the pods that read a node's
disks. A pod the Kubernetes scheduler places has no node until it exists; cap those
with cluster-side limits (resource requests, a ResourceQuota). Node names come from
the cluster or from files: they only ever appear in object names and file names as
a digest.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import GROUP
from .kube import FINISHED
from .status import FILE_MODE, make_folders

log = logging.getLogger(__name__)

SLOT_FOLDER = "node-slots"
"""Folder of the local runtime's slot files, under ``[stash] state_dir``."""
NODE_LABEL = f"{GROUP}/node-slot"
"""Label of a slot Lease: the digest of its node (a label value cannot hold every node name)."""
HOLDER_LABEL = f"{GROUP}/slot-holder"
"""Label of a slot Lease and of its holder's agent pod: the holder's token."""
NODE_ANNOTATION = f"{GROUP}/node"
"""The node's name as it is, for people reading the Lease."""
HOLDER_NAMESPACE_ANNOTATION = f"{GROUP}/holder-namespace"
"""Where the holder's agent pod runs, to find out whether it still does."""
HOLDER_GRACE = 120.0
"""Seconds a taken Lease counts as held even though its pod does not exist yet: the
time from taking the slot to creating the pod, plus clock differences between workers."""
_TOKEN = re.compile(r"^[0-9a-f]{1,63}$")


def node_digest(node: str) -> str:
    """The node's name as it appears in file and object names: never the name itself."""
    return hashlib.sha256(node.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def lease_name(node: str, slot: int) -> str:
    return f"stash-node-{node_digest(node)}-{slot}"


def holder_token(context: Any) -> str:
    """Who holds a slot in the kubernetes runtime: one try of one task instance. The
    same before and after a deferral, so the resumed task finds its Lease again."""
    ti = context["ti"]
    ident = f"{ti.dag_id}\0{ti.task_id}\0{ti.run_id}\0{ti.map_index}\0{ti.try_number}"
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


# ----------------------------------------------------------------------------- local


@contextmanager
def local_slot(
    node: str,
    slots: int,
    state_dir: Path,
    holder: str,
    poll: float,
    emit: Callable[[str], None] = log.info,
) -> Iterator[None]:
    """Hold one of ``node``'s ``slots`` slot files while the block runs (waiting, at
    ``poll`` seconds, for one to be free); ``slots`` 0: no cap, no file."""
    if slots <= 0:
        yield
        return
    folder = state_dir / SLOT_FOLDER / node_digest(node)
    make_folders(state_dir, folder)
    while True:
        for slot in range(slots):
            fd = os.open(folder / f"slot-{slot}", os.O_RDWR | os.O_CREAT, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, holder.encode(), 0)  # who holds it, for those who wait
                yield
            finally:
                os.close(fd)  # closing releases the lock
            return
        held = [_read(folder / f"slot-{slot}") for slot in range(slots)]
        emit(f"node {node!r}: all {slots} agent slots are taken ({'; '.join(held)}); waiting")
        time.sleep(poll)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip() or "?"
    except OSError:
        return "?"


# ------------------------------------------------------------------------ kubernetes


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseSlots:
    """The kubernetes runtime's slots: Leases in one namespace (``[stash] lease_namespace``)."""

    def __init__(
        self, coordination_api: Any, core_api: Any, namespace: str, grace: float = HOLDER_GRACE
    ) -> None:
        self.leases = coordination_api
        self.core = core_api
        self.namespace = namespace
        self.grace = grace

    def _lease(self, node: str, slot: int, token: str, pod_namespace: str) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": lease_name(node, slot),
                "labels": {NODE_LABEL: node_digest(node), HOLDER_LABEL: token},
                "annotations": {
                    NODE_ANNOTATION: node[:253],
                    HOLDER_NAMESPACE_ANNOTATION: pod_namespace,
                },
            },
            "spec": {"holderIdentity": token, "acquireTime": _now()},
        }

    def holder_pods(self, lease: Any) -> list[str] | None:
        """The holder's agent pods that have not finished (``namespace/name``); None
        while the Lease is younger than the grace period (its pod may not exist yet)."""
        spec, meta = lease.spec, lease.metadata
        acquired = spec.acquire_time if spec else None
        if acquired is not None and time.time() - acquired.timestamp() < self.grace:
            return None
        token = (spec.holder_identity if spec else None) or ""
        namespace = (meta.annotations or {}).get(HOLDER_NAMESPACE_ANNOTATION) or ""
        if not _TOKEN.match(token) or not namespace:
            return []
        pods = self.core.list_namespaced_pod(
            namespace, label_selector=f"{HOLDER_LABEL}={token}"
        ).items
        return [
            f"{namespace}/{p.metadata.name}"
            for p in pods
            if (p.status.phase if p.status else None) not in FINISHED
        ]

    def take(
        self,
        node: str,
        slots: int,
        token: str,
        pod_namespace: str,
        poll: float,
        emit: Callable[[str], None] = log.info,
    ) -> str:
        """Take a free slot of ``node`` for ``token`` (waiting at ``poll`` seconds while
        none is free); returns the Lease's name."""
        while True:
            holders: list[str] = []
            for slot in range(slots):
                body = self._lease(node, slot, token, pod_namespace)
                name = body["metadata"]["name"]
                try:
                    self.leases.create_namespaced_lease(self.namespace, body)
                    return name
                except Exception as exc:
                    if getattr(exc, "status", None) != 409:
                        raise
                try:
                    lease = self.leases.read_namespaced_lease(name, self.namespace)
                except Exception as exc:
                    if getattr(exc, "status", None) == 404:  # released meanwhile
                        continue
                    raise
                pods = self.holder_pods(lease)
                if pods:
                    holders += pods
                    continue
                if pods is None:
                    holders.append(f"{name} (its pod is starting)")
                    continue
                body["metadata"]["resourceVersion"] = lease.metadata.resource_version
                try:
                    self.leases.replace_namespaced_lease(name, self.namespace, body)
                except Exception as exc:
                    if getattr(exc, "status", None) not in (404, 409):
                        raise
                    continue  # someone else took it over (409) or released it (404) first
                log.info("took over node slot %s: its holder's pod is gone or finished", name)
                return name
            emit(
                f"node {node!r}: all {slots} agent slots are held by {', '.join(holders)}; waiting"
            )
            time.sleep(poll)

    def release(self, token: str) -> None:
        """Delete the Leases ``token`` holds (none if another worker took them over).
        A failure is only logged: the step's outcome stands, and the slot is taken
        over once its pod has finished and the grace period has passed."""
        from kubernetes import client

        try:
            found = self.leases.list_namespaced_lease(
                self.namespace, label_selector=f"{HOLDER_LABEL}={token}"
            ).items
        except Exception as exc:  # noqa: BLE001 - see above
            log.warning("cannot list node slot Leases to release them (%s)", exc)
            return
        for lease in found:
            if lease.spec is None or lease.spec.holder_identity != token:
                continue
            precondition = client.V1Preconditions(resource_version=lease.metadata.resource_version)
            try:
                self.leases.delete_namespaced_lease(
                    lease.metadata.name,
                    self.namespace,
                    body=client.V1DeleteOptions(preconditions=precondition),
                )
            except Exception as exc:  # noqa: BLE001 - see above
                if getattr(exc, "status", None) not in (404, 409):
                    log.warning("cannot release node slot %s (%s)", lease.metadata.name, exc)


def lease_slots(conn_id: str, namespace: str) -> LeaseSlots:
    """Slots through the configured Kubernetes connection."""
    from kubernetes import client

    from .kube import hook

    api = hook(conn_id).api_client
    return LeaseSlots(client.CoordinationV1Api(api), client.CoreV1Api(api), namespace)
