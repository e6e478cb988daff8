"""Operators that run one planned step (backup, retention, restore).

The step stays plain data until ``execute``: constructing the task is cheap, which
keeps parsing a thousand backup DAGs fast. What only running needs (the history
guard, the status store, the result document) is imported when the task runs: a
worker builds the DAG before every task, and those modules' pydantic models and
dataclasses were most of that import. At run time the step runner
(``stash_plugin.runtime.steps``) runs it where the plan placed it: a local process, or
a pod run by the real KubernetesPodOperator.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

from stash_plugin.plan.maintenance import CHECK_TASK_ID, MaintenancePlan
from stash_plugin.plan.model import BackupPlan, RecoveryPlan, Step
from stash_plugin.runtime.errors import StepFailed
from stash_plugin.runtime.steps import (
    ERROR_KEY,
    report_failure,
    resume_step,
    run_step,
    stop_running,
)
from stash_plugin.settings import load_settings


class StashStepOperator(BaseOperator):
    """Runs a Stash step with ``stash-agent``; returns the agent's result document."""

    ui_color = "#d9ecf7"
    template_fields = ()

    def __init__(self, *, step: Step, **kwargs: Any) -> None:
        super().__init__(task_id=step.task_id, **kwargs)
        self.step = step

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowTaskTimeout

        try:
            return run_step(self.step_to_run(context), context)
        except StepFailed as exc:
            report_failure(context, exc)
        except AirflowTaskTimeout:
            context["ti"].xcom_push(key=ERROR_KEY, value=self.timeout_reason())
            raise

    def timeout_reason(self) -> str:
        return (
            f"timed out after {self.execution_timeout} (the [stash] timeout of this kind "
            "of step); the step was stopped"
        )

    def step_to_run(self, context: Any) -> Step:
        """The planned step, completed with what is only known when it runs."""
        return self.step

    def on_kill(self) -> None:
        """The task was stopped (timeout, marked failed): stop its step too."""
        stop_running()

    def trigger_reentry(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """Resume after a deferred pod (``[stash] deferrable``) finished."""
        try:
            return resume_step(self.step, context, event)
        except StepFailed as exc:
            report_failure(context, exc)


class StashBackupOperator(StashStepOperator):
    """The backup step, told its target's history when it runs: a target with backups
    on record never gets a new repository, and a drop of its source is flagged."""

    def __init__(self, *, plan: BackupPlan, **kwargs: Any) -> None:
        super().__init__(step=plan.backup, **kwargs)
        self.plan = plan

    def step_to_run(self, context: Any) -> Step:
        from stash_plugin.runtime.guard import HISTORY_KEY, guarded_backup_and_history

        new_repository = bool(context["params"].get("new_repository", False))
        step, history = guarded_backup_and_history(
            self.plan, load_settings(), new_repository=new_repository
        )
        context["ti"].xcom_push(key=HISTORY_KEY, value=history.to_xcom())
        return step


class StashRetentionOperator(StashStepOperator):
    """Retention, skipped when a manual run asks for ``retention: false`` and when the
    policy cannot remove anything yet (no restic call, no pod: see
    :func:`~stash_plugin.runtime.guard.retention_skip_reason`)."""

    def __init__(self, *, step: Step, keep_last: int | None = None, **kwargs: Any) -> None:
        super().__init__(step=step, **kwargs)
        self.keep_last = keep_last

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from stash_plugin.protocol import RunResult
        from stash_plugin.runtime.guard import HISTORY_KEY, TargetHistory, retention_skip_reason

        if not context["params"].get("retention", True):
            raise AirflowSkipException(
                "retention skipped: the run was triggered with retention=false"
            )
        ti = context["ti"]
        made = RunResult.from_dict(ti.xcom_pull(task_ids="backup"))
        history = TargetHistory.from_xcom(ti.xcom_pull(task_ids="backup", key=HISTORY_KEY))
        new = sum(1 for b in made.backups if b.snapshot_id)
        reason = retention_skip_reason(self.keep_last, history, new)
        if reason is not None:
            raise AirflowSkipException(reason)
        return super().execute(context)


class StashRestoreOperator(StashStepOperator):
    """The restore step; marks the Recovery ``Running`` before it starts."""

    def __init__(self, *, plan: RecoveryPlan, **kwargs: Any) -> None:
        super().__init__(step=plan.restore, **kwargs)
        self.plan = plan

    def execute(self, context: Any) -> dict[str, Any]:
        from stash_plugin.runtime.outcomes import running_status
        from stash_plugin.runtime.status import status_store

        settings = load_settings()
        store = status_store(self.plan.runtime, settings.state_dir, settings.kubernetes_conn_id)
        store.record_recovery(self.plan.namespace, self.plan.name, running_status(self.plan))
        return super().execute(context)


class StashCheckOperator(StashStepOperator):
    """One repoDir's ``restic check`` (the maintenance DAG maps this task over its
    repoDirs). What it leaves names the repoDir: ``update_status`` pulls every
    instance's result and reason at once, without map indexes."""

    def __init__(self, *, plan: MaintenancePlan, repo_dir: str, **kwargs: Any) -> None:
        kwargs.setdefault("task_id", CHECK_TASK_ID)
        BaseOperator.__init__(self, **kwargs)
        self.repo_dir = repo_dir
        self.step = plan.check_of(repo_dir).step

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowException, AirflowTaskTimeout

        ti = context["ti"]
        try:
            return {"repo_dir": self.repo_dir, "result": run_step(self.step, context)}
        except StepFailed as exc:
            ti.xcom_push(key=ERROR_KEY, value={"repo_dir": self.repo_dir, "error": str(exc)})
            raise AirflowException(str(exc)) from None
        except AirflowTaskTimeout:
            ti.xcom_push(
                key=ERROR_KEY, value={"repo_dir": self.repo_dir, "error": self.timeout_reason()}
            )
            raise
