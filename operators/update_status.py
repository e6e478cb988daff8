"""``update_status``: record what the run did, emit metrics, and fail if it failed.

It runs whatever happened upstream (trigger rule ``all_done``), because the record
of a failed backup matters as much as that of a good one. This operator only gathers
what each upstream task left (state, result, failure reason); what that means for the
status and the metrics is decided by ``stash_plugin.runtime.outcomes``, imported when
the task runs: a worker builds the DAG before every task, and those modules' models
were most of that import.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, TriggerRule

from stash_plugin.plan.maintenance import CHECK_TASK_ID, MaintenancePlan
from stash_plugin.plan.model import BackupPlan, RecoveryPlan, Runtime
from stash_plugin.runtime.steps import ERROR_KEY
from stash_plugin.settings import load_settings

if TYPE_CHECKING:
    from stash_plugin.runtime.outcomes import TaskReport
    from stash_plugin.runtime.status import StatusStore


def _store(runtime: Runtime) -> StatusStore:
    from stash_plugin.runtime.status import status_store

    settings = load_settings()
    return status_store(runtime, settings.state_dir, settings.kubernetes_conn_id)


def _states(context: Any, task_ids: tuple[str, ...]) -> dict[str, str]:
    """Airflow's state of each upstream task of this run; empty when it cannot be read
    (the reasons pushed to XCom still name every Stash failure)."""
    ti = context["ti"]
    try:
        found = ti.get_task_states(
            dag_id=ti.dag_id, task_ids=list(task_ids), run_ids=[ti.run_id]
        ).get(ti.run_id, {})
    except Exception:  # an older execution API or a test runner without it
        return {}
    return {k: str(v) for k, v in found.items() if v is not None}


def gather(context: Any, task_ids: tuple[str, ...]) -> dict[str, TaskReport]:
    from stash_plugin.runtime.outcomes import TaskReport

    ti = context["ti"]
    states = _states(context, task_ids)
    return {
        t: TaskReport(
            t,
            state=states.get(t),
            result=ti.xcom_pull(task_ids=t),
            error=ti.xcom_pull(task_ids=t, key=ERROR_KEY),
        )
        for t in task_ids
    }


def gather_checks(context: Any, plan: MaintenancePlan) -> dict[str, TaskReport]:
    """Every mapped ``check`` instance's result and reason, keyed by the check's step
    (two XCom reads for the whole DAG, whatever its number of repoDirs)."""
    from stash_plugin.runtime.outcomes import TaskReport

    ti = context["ti"]
    reports: dict[str, TaskReport] = {}
    for key in (None, ERROR_KEY):
        pulled = ti.xcom_pull(task_ids=CHECK_TASK_ID, key=key or "return_value")
        for item in pulled if isinstance(pulled, list) else [pulled]:
            if not isinstance(item, dict) or not isinstance(item.get("repo_dir"), str):
                continue
            try:
                task_id = plan.check_of(item["repo_dir"]).step.task_id
            except KeyError:  # a repoDir the plan no longer has
                continue
            report = reports.get(task_id) or TaskReport(task_id)
            if key is None:
                reports[task_id] = TaskReport(task_id, "success", item.get("result"), None)
            else:
                reports[task_id] = TaskReport(task_id, "failed", report.result, item.get("error"))
    return reports


def _started(context: Any) -> datetime:
    from stash_plugin.runtime.status import now

    run = context.get("dag_run")
    start = getattr(run, "start_date", None) if run is not None else None
    return start.replace(microsecond=0) if start else now()


class StashBackupStatusOperator(BaseOperator):
    """Writes the target's ``status.backupRepos`` entry; fails when the run failed."""

    ui_color = "#e8f5e9"

    def __init__(self, *, plan: BackupPlan, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE)
        super().__init__(task_id="update_status", **kwargs)
        self.plan = plan

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowException

        from stash_plugin.runtime import metrics
        from stash_plugin.runtime.outcomes import backup_report

        reports = gather(context, self.plan.task_ids)
        shrink_fails = load_settings().shrink_action == "fail"
        report = backup_report(
            self.plan, reports, _started(context), time.time(), shrink_fails=shrink_fails
        )
        entry = _store(self.plan.runtime).record_backup(self.plan.target, report.outcome)
        metrics.emit(report.scope, report.metrics)
        if report.failed:
            raise AirflowException(f"backup run failed: {report.outcome.failure}")
        return entry.model_dump(mode="json", by_alias=True, exclude_none=True)


class StashRecoveryStatusOperator(BaseOperator):
    """Writes the Recovery's ``status`` (phase, per-path stats); fails when it failed."""

    ui_color = "#e8f5e9"

    def __init__(self, *, plan: RecoveryPlan, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE)
        super().__init__(task_id="update_status", **kwargs)
        self.plan = plan

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowException

        from stash_plugin.runtime import metrics
        from stash_plugin.runtime.outcomes import recovery_report

        report = recovery_report(self.plan, gather(context, self.plan.task_ids))
        for path in report.status.stats:
            if path.phase == "Skipped":  # an automatic restore that left a folder alone
                self.log.info("%s: skipped: %s", path.path, path.reason)
        if self.plan.records_status:
            _store(self.plan.runtime).record_recovery(
                self.plan.namespace, self.plan.name, report.status
            )
        metrics.emit(report.scope, report.metrics)
        if report.failed:
            raise AirflowException(f"recovery failed: {report.failure}")
        return report.status.model_dump(mode="json", by_alias=True)


class StashMaintenanceStatusOperator(BaseOperator):
    """Writes the Repository's ``status.lastCheck`` and its targets' snapshot counts;
    fails when a check failed or found damage."""

    ui_color = "#e8f5e9"

    def __init__(self, *, plan: MaintenancePlan, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE)
        super().__init__(task_id="update_status", **kwargs)
        self.plan = plan

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowException

        from stash_plugin.runtime import metrics
        from stash_plugin.runtime.checks import maintenance_report

        reports = gather_checks(context, self.plan)
        report = maintenance_report(self.plan, reports, _started(context), time.time())
        _store(self.plan.runtime).record_check(
            self.plan.namespace, self.plan.name, report.check, report.target_snapshots
        )
        for scope, values in report.metrics:
            metrics.emit(scope, values)
        if report.failed:
            raise AirflowException(f"repository check failed: {report.check.failure}")
        return report.check.model_dump(mode="json", by_alias=True, exclude_none=True)
