"""``update_status``: record what the run did, emit metrics, and fail if it failed.

It runs whatever happened upstream (trigger rule ``all_done``), because the record
of a failed backup matters as much as that of a good one. It reads the upstream
tasks' results and failure reasons from XCom.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from airflow.sdk import BaseOperator, TriggerRule

from stash_plugin.api.resources import RecoveryPathStats, RecoveryStatus
from stash_plugin.plan.model import BackupPlan, RecoveryPlan
from stash_plugin.runtime import metrics
from stash_plugin.runtime.status import BackupOutcome, LocalStatusStore, StatusStore, now
from stash_plugin.settings import load_settings

from .step import ERROR_KEY, StashStepOperator


def status_store() -> StatusStore:
    """The objects' own status in the cluster; a file per object in the local runtime."""
    settings = load_settings()
    if settings.runtime == "kubernetes":
        from stash_plugin.runtime.kube import KubeStatusStore, hook

        return KubeStatusStore(hook(settings.kubernetes_conn_id).custom_object_client)
    return LocalStatusStore(settings.state_dir)


def _started(context: Any) -> datetime:
    run = context.get("dag_run")
    start = getattr(run, "start_date", None) if run is not None else None
    return start.replace(microsecond=0) if start else now()


class StashBackupStatusOperator(BaseOperator):
    """Writes the target's ``status.backupRepos`` entry; fails when the backup failed."""

    ui_color = "#e8f5e9"

    def __init__(self, *, plan: BackupPlan, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE)
        super().__init__(task_id="update_status", **kwargs)
        self.plan = plan

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowException

        ti = context["ti"]
        upstream = (
            ["backup", "retention", "verify"] if self.plan.retention else ["backup", "verify"]
        )
        backup = ti.xcom_pull(task_ids="backup") or {}
        verify = ti.xcom_pull(task_ids="verify") or {}
        errors = [f"{t}: {e}" for t in upstream if (e := ti.xcom_pull(task_ids=t, key=ERROR_KEY))]
        backups = backup.get("backups") or []
        backed_up = len(backups) == len(self.plan.snapshot_paths)
        if not backed_up and not errors:
            errors.append("backup: did not finish (see the backup task's log)")
        if backed_up and not verify and not errors:
            errors.append(
                "verify: the new snapshots were not confirmed (see the verify task's log)"
            )
        started = _started(context)
        duration = sum(float(b.get("total_duration") or 0) for b in backups)
        outcome = BackupOutcome(
            succeeded=backed_up,
            started=started,
            duration_seconds=duration,
            snapshot_ids=tuple(str(b.get("snapshot_id")) for b in backups),
            snapshot_count=verify.get("snapshot_count"),
            failure="; ".join(errors) or None,
        )
        entry = status_store().record_backup(self.plan.target, outcome)
        t = self.plan.target
        totals = {
            key: sum(int(b.get(key) or 0) for b in backups)
            for key in ("data_added", "files_new", "files_changed")
        }
        metrics.emit_backup(
            t.restic_namespace,
            t.restic_name,
            t.target,
            t.repository_name,
            backed_up and not errors,
            duration,
            time.time(),
            outcome.snapshot_count,
            totals,
        )
        if errors:
            raise AirflowException("backup run failed: " + "; ".join(errors))
        return entry.model_dump(mode="json", by_alias=True, exclude_none=True)


class StashRestoreOperator(StashStepOperator):
    """The restore step; marks the Recovery ``Running`` before it starts."""

    def __init__(self, *, plan: RecoveryPlan, **kwargs: Any) -> None:
        super().__init__(step=plan.restore, **kwargs)
        self.plan = plan

    def execute(self, context: Any) -> dict[str, Any]:
        running = RecoveryStatus(
            phase="Running",
            stats=[RecoveryPathStats(path=p, phase="Running") for p in self.plan.paths],
        )
        status_store().record_recovery(self.plan.namespace, self.plan.name, running)
        return super().execute(context)


class StashRecoveryStatusOperator(BaseOperator):
    """Writes the Recovery's ``status`` (phase, per-path stats); fails when it failed."""

    ui_color = "#e8f5e9"

    def __init__(self, *, plan: RecoveryPlan, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE)
        super().__init__(task_id="update_status", **kwargs)
        self.plan = plan

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowException

        ti = context["ti"]
        result = ti.xcom_pull(task_ids="restore") or {}
        error = ti.xcom_pull(task_ids="restore", key=ERROR_KEY)
        if self.plan.offline is not None and not error:
            error = ti.xcom_pull(task_ids="resume", key=ERROR_KEY)
        restores = result.get("restores") or []
        ok = bool(restores) and not error
        stats = [
            RecoveryPathStats(path=r["path"], phase="Succeeded", duration=r.get("duration"))
            for r in restores
        ] or [RecoveryPathStats(path=p, phase="Failed") for p in self.plan.paths]
        status = RecoveryStatus(phase="Succeeded" if ok else "Failed", stats=stats)
        status_store().record_recovery(self.plan.namespace, self.plan.name, status)
        duration = sum(float(str(r.get("duration", "0s")).rstrip("s")) for r in restores)
        metrics.emit_recovery(self.plan.namespace, self.plan.name, ok, duration)
        if not ok:
            raise AirflowException(f"recovery failed: {error or 'restore did not finish'}")
        return status.model_dump(mode="json", by_alias=True)
