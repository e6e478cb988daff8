"""What a maintenance run found, decided from what its check tasks reported.

Pure functions, like ``outcomes``: the Repository's ``status.lastCheck``, the
refreshed snapshot counts of its targets, and the metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from ..api.resources import RepositoryCheck, RepositoryStatus
from ..plan.maintenance import MaintenancePlan
from ..plan.model import TargetRef
from ..protocol import MaintenanceResult
from .outcomes import Metric, TaskReport, _failures, backup_scope


@dataclass(frozen=True)
class MaintenanceReport:
    check: RepositoryCheck
    target_snapshots: tuple[tuple[TargetRef, int], ...]
    """Each target's snapshot count, as the repository lists them now."""
    metrics: tuple[tuple[tuple[str, ...], tuple[Metric, ...]], ...]
    """(scope, metrics) pairs: the Repository's, then each target's snapshot count."""

    @property
    def failed(self) -> bool:
        return self.check.result == "Failed"


def target_key(target: TargetRef) -> str:
    """How ``stash-agent maintain`` keys a target's snapshots: by the tags it selects."""
    return f"namespace={target.restic_namespace},restic={target.restic_name},target={target.target}"


def _result(report: TaskReport | None) -> MaintenanceResult | None:
    if report is None or not isinstance(report.result, dict):
        return None
    return MaintenanceResult.from_dict(report.result)


def maintenance_report(
    plan: MaintenancePlan, reports: Mapping[str, TaskReport], started: datetime, now: float
) -> MaintenanceReport:
    """The Repository's check record, its targets' snapshot counts and the metrics."""
    errors = _failures(plan.task_ids, reports)
    results: dict[str, MaintenanceResult] = {}
    for check in plan.checks:
        found = _result(reports.get(check.step.task_id))
        if found is None:
            if not any(e.startswith(f"{check.step.task_id}:") for e in errors):
                errors.append(f"{check.step.task_id}: did not finish (see its log)")
            continue
        results[check.repo_dir] = found
        if found.check_ok is False:
            errors.append(f"{check.repo_dir}: {found.check_error or 'restic check failed'}")
    sizes = [r.size_bytes for r in results.values() if r.size_bytes is not None]
    record = RepositoryCheck(
        time=started,
        result="Failed" if errors else "Passed",
        failure="; ".join(errors) or None,
        stale_locks_removed=sum(r.stale_locks_removed for r in results.values()),
        size_bytes=sum(sizes) if sizes else None,
        snapshot_count=sum(r.snapshot_count for r in results.values()),
    )
    counts: list[tuple[TargetRef, int]] = []
    for check in plan.checks:
        found = results.get(check.repo_dir)
        if found is not None:
            counts += [(t, found.target_snapshots.get(target_key(t), 0)) for t in check.targets]
    repo_metrics = [
        Metric("check_success", "gauge", 0 if errors else 1),
        Metric("last_check_timestamp", "gauge", int(now)),
        Metric("stale_locks_removed", "gauge", record.stale_locks_removed),
        Metric("snapshots", "gauge", record.snapshot_count or 0),
    ]
    if record.size_bytes is not None:
        repo_metrics.append(Metric("size_bytes", "gauge", record.size_bytes))
    scoped: list[tuple[tuple[str, ...], tuple[Metric, ...]]] = [
        (("repository", plan.namespace, plan.name), tuple(repo_metrics))
    ]
    scoped += [(backup_scope(t), (Metric("snapshots", "gauge", n),)) for t, n in counts]
    return MaintenanceReport(record, tuple(counts), tuple(scoped))


def record_check_in(
    status: RepositoryStatus, check: RepositoryCheck, counts: tuple[tuple[TargetRef, int], ...]
) -> RepositoryStatus:
    """The status with ``lastCheck`` set and the listed targets' snapshot counts
    refreshed; entries of targets that never reported are left out (their first backup
    makes them)."""
    entries = []
    for entry in status.backup_repos:
        fresh = next(
            (
                n
                for t, n in counts
                if (t.restic_namespace, t.restic_name, t.repo_dir)
                == (entry.restic_namespace, entry.restic_name, entry.repo_dir)
            ),
            None,
        )
        entries.append(
            entry if fresh is None else entry.model_copy(update={"snapshot_count": fresh})
        )
    return status.model_copy(update={"backup_repos": entries, "last_check": check})
