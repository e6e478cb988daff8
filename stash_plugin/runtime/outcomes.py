"""What a run did, decided from what its tasks reported: status entries and metrics.

Pure functions, no Airflow: ``update_status`` gathers one :class:`TaskReport` per task
of the plan (its state, result and failure reason) and hands them here. Every task of
the plan is looked at, in the order the DAG runs them, so a failure is reported by
the task that failed (a workload that did not start again after a good backup is a
``resume`` failure, not a missing verification).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from ..api.resources import (
    BackupRepo,
    RecoveryPathStats,
    RecoveryStatus,
    RepositoryStatus,
    SourceSize,
)
from ..plan.model import BackupPlan, RecoveryPlan, TargetRef
from ..plan.schedules import schedule_interval
from ..protocol import BEFORE_DROP_TAG, BackupResult, RestoreRunResult, RunResult

FAILED_STATES = ("failed",)


@dataclass(frozen=True)
class TaskReport:
    """What one upstream task left behind."""

    task_id: str
    state: str | None = None
    """Airflow's state (``success``, ``failed``, ``skipped``, ``upstream_failed``), or None
    when it could not be read."""
    result: Any = None
    """The task's return value (XCom)."""
    error: str | None = None
    """The secret-free reason the task pushed when it failed."""


@dataclass(frozen=True)
class Metric:
    """One statsd value; ``name`` is relative to the run's scope."""

    name: str
    kind: Literal["incr", "gauge", "timing"]
    value: float


def go_duration(seconds: float) -> str:
    """``3.026137088s``: how Stash (Go) wrote durations in the status."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


@dataclass(frozen=True)
class BackupOutcome:
    """What one backup run did, as recorded in the target's status entry."""

    succeeded: bool
    """Every folder of the target has its new snapshot."""
    started: datetime
    duration_seconds: float
    snapshot_ids: tuple[str, ...] = ()
    snapshot_count: int | None = None
    failure: str | None = None
    """Why the run is red; set also when the backup itself succeeded but a later task
    (retention, verify, resume) failed."""
    snapshots_removed: int | None = None
    bytes_freed: int | None = None
    source_drop: str | None = None
    """Why the new snapshots are flagged (an empty or sharply shrunk source)."""
    source_sizes: tuple[SourceSize, ...] = ()
    """Files and bytes of each folder backed up: the next run's baseline."""
    record_digest: str | None = None
    """Digest of the Repository record the repository holds after the run."""
    found: SnapshotHistory | None = None
    """The target's snapshots as verification listed them (this run's included)."""
    objects: dict[str, int] | None = None
    """A Cluster backup: API objects per kind (``apps/Deployment``)."""


@dataclass(frozen=True)
class SnapshotHistory:
    """What a target's snapshots say about its past: how many backups (the most
    snapshots any one folder has; each run makes one per folder) and since when.
    Only used when the status has no entry for the target (a lost status store, a
    recreated Repository object): its counters continue from the repository instead of
    starting at zero. Retention may have removed older snapshots: then the count is
    what the repository still holds."""

    backups: int
    oldest: datetime | None = None


def _restic_time(text: Any) -> datetime | None:
    """restic's RFC 3339 time (nanoseconds, offset) as a whole-second datetime."""
    if not isinstance(text, str) or not text:
        return None
    head, dot, rest = text.replace("Z", "+00:00").partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        head += rest[digits:]
    try:
        return datetime.fromisoformat(head)
    except ValueError:
        return None


def snapshot_history(confirmed: Mapping[str, Any]) -> SnapshotHistory | None:
    """The history in what the verify task returned, if it says any."""
    count = confirmed.get("backups_found")
    if not isinstance(count, int) or count <= 0:
        return None
    return SnapshotHistory(backups=count, oldest=_restic_time(confirmed.get("oldest_time")))


@dataclass(frozen=True)
class BackupReport:
    outcome: BackupOutcome
    metrics: tuple[Metric, ...]
    scope: tuple[str, ...]
    """Where the metrics belong: ``backup``, namespace, Restic, target, repository,
    target type."""

    @property
    def failed(self) -> bool:
        return self.outcome.failure is not None


@dataclass(frozen=True)
class RecoveryReport:
    status: RecoveryStatus
    metrics: tuple[Metric, ...]
    scope: tuple[str, ...]
    failure: str | None = None
    duration_seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.failure is not None


def _failures(task_ids: tuple[str, ...], reports: Mapping[str, TaskReport]) -> list[str]:
    """``task: reason`` for each task that failed, in run order. A task that failed
    without a reason (killed, timed out, a sensor) is named with a pointer to its log;
    tasks that only did not run (upstream failed, skipped) are not failures of their own."""
    out = []
    for task_id in task_ids:
        report = reports.get(task_id) or TaskReport(task_id)
        if report.error:
            out.append(f"{task_id}: {report.error}")
        elif report.state in FAILED_STATES:
            out.append(f"{task_id}: failed (see the {task_id} task's log)")
    return out


def _run_result(report: TaskReport | None) -> RunResult:
    return RunResult.from_dict(report.result if report else None)


def drop_flag(backups: list[BackupResult]) -> str | None:
    """The flag of a run whose source was empty or shrank sharply, naming each folder
    and the snapshots kept from before the drop."""
    parts = []
    for b in backups:
        if b.source_drop:
            kept = (
                f"; kept {', '.join(b.kept_before_drop)} from before it (tag {BEFORE_DROP_TAG})"
                if b.kept_before_drop
                else ""
            )
            parts.append(f"{b.path}: {b.source_drop}{kept}")
    return "; ".join(parts) or None


def backup_report(
    plan: BackupPlan,
    reports: Mapping[str, TaskReport],
    started: datetime,
    now: float,
    *,
    shrink_fails: bool = True,
) -> BackupReport:
    """The status outcome and metrics of one backup run.

    A backup of an empty or sharply shrunk source still counts (its snapshot is what
    the folder holds now, and the snapshots before it are kept), but with
    ``shrink_fails`` (``[stash] shrink_action = fail``) the run is red, so that the
    alerting a platform team has on failed runs sees it once; the next backup is
    compared with this one and is green again."""
    made = _run_result(reports.get("backup"))
    backups = made.backups
    forgets = _run_result(reports.get("retention")).forgets
    verify = reports.get("verify")
    confirmed = verify.result if verify and isinstance(verify.result, dict) else {}
    backed_up = len(plan.snapshot_paths) > 0 and {b.path for b in backups if b.snapshot_id} >= set(
        plan.snapshot_paths
    )
    errors = _failures(plan.task_ids, reports)
    drop = drop_flag(backups) if backed_up else None
    if drop and shrink_fails:
        errors.insert(0, f"backup: flagged: {drop}")
    if not backed_up and not errors:
        errors.append("backup: did not finish (see the backup task's log)")
    if backed_up and not confirmed and not errors:
        errors.append("verify: the new snapshots were not confirmed (see the verify task's log)")
    duration = sum(b.duration_seconds for b in backups)
    count = confirmed.get("snapshot_count")
    removed = sum(f.removed for f in forgets) if forgets else None
    freed_values = [f.bytes_freed for f in forgets if f.bytes_freed is not None]
    outcome = BackupOutcome(
        succeeded=backed_up,
        started=started,
        duration_seconds=duration,
        snapshot_ids=tuple(str(b.snapshot_id) for b in backups if b.snapshot_id),
        snapshot_count=int(count) if count is not None else None,
        failure="; ".join(errors) or None,
        snapshots_removed=removed,
        bytes_freed=sum(freed_values) if freed_values else None,
        source_drop=drop,
        source_sizes=tuple(
            SourceSize(path=b.path, files=b.total_files_processed, bytes=b.total_bytes_processed)
            for b in backups
            if b.snapshot_id
        ),
        record_digest=made.record_digest,
        found=snapshot_history(confirmed) if isinstance(confirmed, dict) else None,
        objects=made.objects if backed_up else None,
    )
    metrics = backup_metrics(plan, backups, outcome, ok=backed_up and not errors, now=now)
    return BackupReport(outcome, tuple(metrics), backup_scope(plan.target))


def backup_scope(target: TargetRef) -> tuple[str, ...]:
    """Where a target's backup metrics belong: ``backup``, namespace, Restic, target,
    Repository, target type (the labels of ``monitoring/statsd-mapping.yml``)."""
    return (
        "backup",
        target.restic_namespace,
        target.restic_name,
        target.target,
        target.repository_name,
        target.type.lower(),
    )


def backup_metrics(
    plan: BackupPlan,
    backups: list[BackupResult],
    outcome: BackupOutcome,
    *,
    ok: bool,
    now: float,
) -> list[Metric]:
    """Every metric of one backup run; ``monitoring/statsd-mapping.yml`` turns each into
    a labelled Prometheus series (``stash_backup_...``)."""
    metrics = [Metric("success" if ok else "failure", "incr", 1)]
    # A good snapshot whose retention or verification failed is both: the data is safe
    # (no "backup missed" alert) and the run is red (the "backup failing" alert).
    if outcome.succeeded:
        metrics.append(Metric("last_success_timestamp", "gauge", int(now)))
    if not ok:
        metrics.append(Metric("last_failure_timestamp", "gauge", int(now)))
    interval = None if plan.paused else schedule_interval(plan.schedule)
    if interval:
        metrics.append(Metric("schedule_interval_seconds", "gauge", interval))
    if outcome.succeeded:
        metrics += [
            Metric("duration", "timing", outcome.duration_seconds * 1000),
            Metric("last_duration_seconds", "gauge", outcome.duration_seconds),
            Metric("bytes_added", "gauge", sum(b.data_added for b in backups)),
            Metric("files_new", "gauge", sum(b.files_new for b in backups)),
            Metric("files_changed", "gauge", sum(b.files_changed for b in backups)),
            Metric("files_unmodified", "gauge", sum(b.files_unmodified for b in backups)),
        ]
    if outcome.source_drop is not None:
        metrics.append(Metric("source_dropped", "incr", 1))
    if outcome.objects is not None:
        metrics.append(Metric("objects", "gauge", sum(outcome.objects.values())))
    if outcome.snapshot_count is not None:
        metrics.append(Metric("snapshots", "gauge", outcome.snapshot_count))
    if outcome.snapshots_removed is not None:
        metrics.append(Metric("retention_snapshots_removed", "gauge", outcome.snapshots_removed))
    if outcome.bytes_freed is not None:
        metrics.append(Metric("retention_bytes_freed", "gauge", outcome.bytes_freed))
    return metrics


def recovery_report(plan: RecoveryPlan, reports: Mapping[str, TaskReport]) -> RecoveryReport:
    """The Recovery's status and metrics after a run."""
    restore = reports.get("restore")
    restores = RestoreRunResult.from_dict(restore.result if restore else None).restores
    errors = _failures(plan.task_ids, reports)
    if not restores and not errors:
        errors.append("restore: did not finish (see the restore task's log)")
    ok = bool(restores) and not errors
    stats = [
        RecoveryPathStats(path=r.path, phase="Skipped", reason=r.skipped)
        if r.skipped
        else RecoveryPathStats(
            path=r.path, phase="Succeeded", duration=go_duration(r.duration_seconds)
        )
        for r in restores
    ] or [RecoveryPathStats(path=p, phase="Failed") for p in plan.paths]
    status = RecoveryStatus(phase="Succeeded" if ok else "Failed", stats=stats)
    duration = sum(r.duration_seconds for r in restores)
    metrics = [Metric("success" if ok else "failure", "incr", 1)]
    if ok:
        metrics.append(Metric("duration", "timing", duration * 1000))
    applied = RestoreRunResult.from_dict(restore.result if restore else None).cluster
    if applied is not None:
        metrics.append(Metric("objects", "gauge", sum(applied.kinds.values())))
    failure = "; ".join(errors) or None
    scope = ("recovery", plan.namespace, plan.name, plan.repository_name)
    return RecoveryReport(status, tuple(metrics), scope, failure, duration)


def running_status(plan: RecoveryPlan) -> RecoveryStatus:
    """What a Recovery shows while its restore runs."""
    return RecoveryStatus(
        phase="Running", stats=[RecoveryPathStats(path=p, phase="Running") for p in plan.paths]
    )


# --------------------------------------------------------------------------- status entries


def apply_outcome(
    entry: BackupRepo | None, target: TargetRef, outcome: BackupOutcome
) -> BackupRepo:
    """The new status entry of a target. A failure only adds failure fields, so the
    last good backup's record stays intact."""
    base = entry or BackupRepo(
        type=target.type,
        workload_kind=target.workload_kind,
        workload_name=target.workload_name,
        restic_name=target.restic_name,
        restic_namespace=target.restic_namespace,
        repo_dir=target.repo_dir,
    )
    if entry is None and outcome.succeeded and outcome.found is not None:
        # No record of this target (a lost status): continue from its snapshots, this
        # run's among them, rather than from zero. Only a snapshot older than this run
        # says when the first backup was (this run's own is stamped after it started).
        oldest = outcome.found.oldest
        earlier = oldest is not None and oldest < outcome.started
        base = base.model_copy(
            update={
                "backup_count": outcome.found.backups - 1,
                "first_backup_time": oldest if earlier else None,
            }
        )
    if not outcome.succeeded:
        return base.model_copy(
            update={
                "failed_backup_count": base.failed_backup_count + 1,
                "last_failure_time": outcome.started,
                "last_failure": outcome.failure or "backup failed",
            }
        )
    update: dict[str, Any] = {
        "backup_count": base.backup_count + 1,
        "first_backup_time": base.first_backup_time or outcome.started,
        "last_backup_time": outcome.started,
        "last_successful_backup_time": outcome.started,
        "last_backup_duration": go_duration(outcome.duration_seconds),
        "last_snapshot_id": outcome.snapshot_ids[-1] if outcome.snapshot_ids else None,
        # The flag describes the newest snapshot: a backup that is not flagged clears it.
        "source_drop": outcome.source_drop,
        "source_sizes": list(outcome.source_sizes) or base.source_sizes,
        "repository_record": outcome.record_digest or base.repository_record,
        "objects": outcome.objects if outcome.objects is not None else base.objects,
    }
    if outcome.source_drop:
        update["source_drop_time"] = outcome.started
    if outcome.snapshot_count is not None:
        update["snapshot_count"] = outcome.snapshot_count
    if outcome.snapshots_removed is not None:
        update["last_retention_removed"] = outcome.snapshots_removed
        update["last_retention_bytes_freed"] = outcome.bytes_freed
    if outcome.failure:  # succeeded backup, but a later task (retention, resume) failed
        update.update(
            failed_backup_count=base.failed_backup_count + 1,
            last_failure_time=outcome.started,
            last_failure=outcome.failure,
        )
    return base.model_copy(update=update)


def _same_target(entry: BackupRepo, target: TargetRef) -> bool:
    return (
        entry.restic_namespace == target.restic_namespace
        and entry.restic_name == target.restic_name
        and entry.repo_dir == target.repo_dir
    )


def entry_of(status: RepositoryStatus, target: TargetRef) -> BackupRepo | None:
    """The target's entry in a Repository's status, if it has one."""
    return next((e for e in status.backup_repos if _same_target(e, target)), None)


def record_in(
    status: RepositoryStatus, target: TargetRef, outcome: BackupOutcome
) -> tuple[RepositoryStatus, BackupRepo]:
    """The status with this target's entry updated (or added); other entries untouched.
    Shared by the file store and the cluster store."""
    entries = list(status.backup_repos)
    index = next((i for i, e in enumerate(entries) if _same_target(e, target)), None)
    entry = apply_outcome(entries[index] if index is not None else None, target, outcome)
    if index is None:
        entries.append(entry)
    else:
        entries[index] = entry
    return status.model_copy(update={"backup_repos": entries}), entry


__all__ = [
    "BackupOutcome",
    "BackupReport",
    "Metric",
    "RecoveryReport",
    "SnapshotHistory",
    "TaskReport",
    "apply_outcome",
    "backup_report",
    "backup_scope",
    "drop_flag",
    "entry_of",
    "go_duration",
    "record_in",
    "recovery_report",
    "running_status",
    "snapshot_history",
]
