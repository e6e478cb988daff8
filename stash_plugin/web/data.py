"""What the Stash page shows, assembled from the resources, the plans and the status.

Nothing here talks to a backend: snapshot listings come from :class:`SnapshotCache`,
which runs them in a worker thread and answers at once with what it has (and its age),
so a slow or unreachable backend never holds up the page.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..api.backend import Backend
from ..api.resources import BackupRepo, Repository, RepositoryStatus
from ..api.resourceset import ResourceSet
from ..plan.maintenance import MaintenancePlan
from ..plan.model import BackupPlan, PlanSet
from ..plan.schedules import describe_schedule
from ..protocol import RunResult
from ..runtime.status import BadStatusFile, LocalStatusStore

log = logging.getLogger(__name__)


def _strip_userinfo(url: str) -> str:
    """A URL without ``user:password@`` (a REST URL may carry them)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def backend_location(backend: Backend) -> str:
    """Where a backend keeps its data, without any credential."""
    if backend.local is not None:
        source = backend.local.host_path.path if backend.local.host_path else None
        return f"local volume at {source or backend.local.mount_path}"
    if backend.s3 is not None:
        s3 = backend.s3
        where = "/".join(p for p in (s3.bucket, s3.prefix) if p)
        return f"s3 {_strip_userinfo(s3.endpoint or 's3.amazonaws.com')} bucket {where}"
    for kind in ("gcs", "azure", "swift", "b2"):
        spec = getattr(backend, kind)
        if spec is not None:
            container = getattr(spec, "bucket", None) or getattr(spec, "container", None)
            prefix = getattr(spec, "prefix", None)
            return f"{kind} {'/'.join(p for p in (container, prefix) if p)}"
    assert backend.rest is not None
    return f"rest {_strip_userinfo(backend.rest.url)}"


def repository_status(
    repository: Repository, store: LocalStatusStore | None
) -> tuple[RepositoryStatus, str | None]:
    """The Repository's status (the local runtime's file, or the object's own status as
    the cluster source copied it), and why it could not be read, if so."""
    meta = repository.metadata
    if store is None:
        return repository.status or RepositoryStatus(), None
    try:
        return store.repository_status(meta.namespace or "default", meta.name), None
    except BadStatusFile as exc:
        return RepositoryStatus(), str(exc)


def _entry_for(status: RepositoryStatus, plan: BackupPlan) -> BackupRepo | None:
    t = plan.target
    return next(
        (
            e
            for e in status.backup_repos
            if (e.restic_namespace, e.restic_name, e.repo_dir)
            == (t.restic_namespace, t.restic_name, t.repo_dir)
        ),
        None,
    )


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True) if model else None


def target_view(plan: BackupPlan, entry: BackupRepo | None) -> dict[str, Any]:
    t = plan.target
    last_ok = entry.last_successful_backup_time if entry else None
    last_failed = entry.last_failure_time if entry else None
    if last_failed and (not last_ok or last_failed >= last_ok):
        outcome = "Failed"
    elif last_ok:
        outcome = "Succeeded"
    else:
        outcome = None
    return {
        "dagId": plan.dag_id,
        "type": t.type,
        "target": t.target,
        "restic": f"{t.restic_namespace}/{t.restic_name}",
        "repoDir": t.repo_dir,
        "paths": list(plan.snapshot_paths),
        "schedule": describe_schedule(plan.schedule, plan.paused),
        "lastBackupTime": (last_failed if outcome == "Failed" else last_ok),
        "lastOutcome": outcome,
        "lastFailure": entry.last_failure if entry and outcome == "Failed" else None,
        "backupCount": entry.backup_count if entry else 0,
        "failedBackupCount": entry.failed_backup_count if entry else 0,
        "snapshotCount": entry.snapshot_count if entry else None,
        "hasRetention": plan.retention is not None,
    }


def overview(
    resources: ResourceSet,
    plans: PlanSet,
    store: LocalStatusStore | None,
    allowed: Callable[[str], bool],
) -> dict[str, Any]:
    """Every Repository with the targets (and Recoveries) the user may see.

    ``allowed(dag_id)`` says whether the user may read that DAG's runs; a Repository
    shows when the user may see one of its targets, Recoveries or its maintenance."""
    repos = []
    for (ns, name), repository in sorted(resources.repositories.items()):
        status, problem = repository_status(repository, store)
        targets = [
            target_view(p, _entry_for(status, p))
            for p in plans.backups.values()
            if (p.target.repository_namespace, p.target.repository_name) == (ns, name)
            and allowed(p.dag_id)
        ]
        recoveries = [
            _recovery_view(r.dag_id, r.namespace, r.name, r.paths, resources, store)
            for r in plans.recoveries.values()
            if (r.repository_namespace, r.repository_name) == (ns, name) and allowed(r.dag_id)
        ]
        maintenance = next(
            (m for m in plans.maintenance.values() if (m.namespace, m.name) == (ns, name)),
            None,
        )
        if not targets and not recoveries:
            continue
        repos.append(
            {
                "namespace": ns,
                "name": name,
                "backend": repository.spec.backend.kind,
                "location": backend_location(repository.spec.backend),
                "snapshotCount": _snapshot_total(status, targets),
                "lastCheck": _dump(status.last_check),
                "sizeBytes": status.last_check.size_bytes if status.last_check else None,
                "maintenanceDagId": _maintenance_id(maintenance, allowed),
                "statusProblem": problem,
                "targets": targets,
                "recoveries": recoveries,
            }
        )
    return {"repositories": repos, "errors": len(plans.errors)}


def _maintenance_id(plan: MaintenancePlan | None, allowed: Callable[[str], bool]) -> str | None:
    return plan.dag_id if plan is not None and allowed(plan.dag_id) else None


def _snapshot_total(status: RepositoryStatus, targets: list[dict[str, Any]]) -> int | None:
    counts = [t["snapshotCount"] for t in targets if t["snapshotCount"] is not None]
    if status.last_check and status.last_check.snapshot_count is not None and not counts:
        return status.last_check.snapshot_count
    return sum(counts) if counts else None


def _recovery_view(
    dag_id: str,
    namespace: str,
    name: str,
    paths: tuple[str, ...],
    resources: ResourceSet,
    store: LocalStatusStore | None,
) -> dict[str, Any]:
    status = None
    problem = None
    if store is not None:
        try:
            status = store.recovery_status(namespace, name)
        except BadStatusFile as exc:
            problem = str(exc)
    else:
        found = resources.recoveries.get((namespace, name))
        status = found.status if found else None
    return {
        "dagId": dag_id,
        "namespace": namespace,
        "name": name,
        "phase": status.phase if status else "Pending",
        "stats": [_dump(s) for s in status.stats] if status else [{"path": p} for p in paths],
        "statusProblem": problem,
    }


# --------------------------------------------------------------------------- snapshots


@dataclass
class Listing:
    """One target's snapshots as last listed."""

    snapshots: list[dict[str, Any]] = field(default_factory=list)
    listed_at: float | None = None
    error: str | None = None
    running: bool = False


class SnapshotCache:
    """Snapshot listings per DAG, run in worker threads and served from memory.

    ``get`` answers at once: with the last listing and its age, starting a new one in the
    background when it is older than ``max_age`` (one listing per target at a time)."""

    def __init__(self, max_age: float = 60.0, workers: int = 2) -> None:
        self.max_age = max_age
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stash-list")
        self._lock = threading.Lock()
        self._listings: dict[str, Listing] = {}

    def get(
        self, dag_id: str, lister: Callable[[], list[dict[str, Any]]], refresh: bool = False
    ) -> dict[str, Any]:
        now = time.time()
        with self._lock:
            listing = self._listings.setdefault(dag_id, Listing())
            stale = listing.listed_at is None or now - listing.listed_at > self.max_age
            if (stale or refresh) and not listing.running:
                listing.running = True
                self._pool.submit(self._list, dag_id, lister)
            return {
                "snapshots": list(listing.snapshots),
                "ageSeconds": None if listing.listed_at is None else round(now - listing.listed_at),
                "listedAt": listing.listed_at,
                "refreshing": listing.running,
                "error": listing.error,
            }

    def _list(self, dag_id: str, lister: Callable[[], list[dict[str, Any]]]) -> None:
        try:
            found, error = lister(), None
        except Exception as exc:  # shown on the page; the last good listing stays
            log.warning("Stash page: listing the snapshots of %s failed: %s", dag_id, exc)
            found, error = None, str(exc)
        with self._lock:
            listing = self._listings[dag_id]
            listing.running = False
            listing.error = error
            if found is not None:
                listing.snapshots = found
                listing.listed_at = time.time()


def snapshot_rows(result: dict[str, Any], sizes: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """The agent's ``snapshots`` result as table rows, newest first; ``sizes`` (from the
    backup runs' results, by snapshot id) adds what each snapshot held."""
    rows = []
    for group in RunResult.from_dict(result).snapshots:
        for snap in group.snapshots:
            size = sizes.get(snap.id) or {}
            rows.append(
                {
                    "id": snap.id,
                    "shortId": snap.short_id or snap.id[:8],
                    "time": snap.time,
                    "host": snap.hostname,
                    "path": group.path,
                    "paths": snap.paths,
                    "sizeBytes": size.get("total_bytes_processed"),
                    "addedBytes": size.get("data_added"),
                }
            )
    return sorted(rows, key=lambda r: r["time"] or "", reverse=True)
