"""The operator that runs one planned step (backup, retention, restore).

The step stays plain data until ``execute``: constructing the task is cheap, which
keeps parsing a thousand backup DAGs fast. At run time the configured runtime turns it
into a local process (``local``) or a pod run by KubernetesPodOperator (``kubernetes``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, NoReturn

from airflow.sdk import BaseOperator

from stash_plugin.api.kube import Secret
from stash_plugin.plan.model import Step
from stash_plugin.runtime.local import StepFailed, StepOutput, resolve_secret_env, run_step
from stash_plugin.settings import Settings, load_settings

log = logging.getLogger(__name__)
ERROR_KEY = "stash_error"


def load_secrets() -> dict[tuple[str, str], Secret]:
    """Secrets of the directory source, read when a task runs (never at parse time)."""
    from stash_plugin.source import load_directory

    return load_directory(load_settings().manifests_dir).secrets


def execute_step(step: Step, context: Any, *, may_defer: bool = True) -> StepOutput:
    """Run ``step`` in the configured runtime; on failure leave a secret-free reason in XCom.

    ``may_defer=False`` for callers that cannot resume from a trigger (a sensor's poke).
    """
    settings = load_settings()
    if settings.runtime == "kubernetes":
        if not may_defer:
            settings = replace(settings, deferrable=False)
        return _run_pod(step, context, settings)
    return _run_local(step, context)


def _fail(step: Step, context: Any, exc: StepFailed) -> NoReturn:
    from airflow.sdk.exceptions import AirflowException

    context["ti"].xcom_push(key=ERROR_KEY, value=str(exc))
    raise AirflowException(str(exc)) from None


def _run_local(step: Step, context: Any) -> StepOutput:
    from airflow.sdk.log import mask_secret

    secrets = load_secrets()
    try:
        for value in resolve_secret_env(step, secrets).values():
            mask_secret(value)
        return run_step(step, secrets, emit=log.info)
    except StepFailed as exc:
        _fail(step, context, exc)


def _run_pod(step: Step, context: Any, settings: Settings, event: Any = None) -> StepOutput:
    from airflow.sdk.exceptions import AirflowException, TaskDeferred

    from .pod import build_pod_operator, failure_reason, result_of

    pod_op = build_pod_operator(step, context["ti"].task_id, settings)
    try:
        if event is None:
            pod_op.execute(context)
        else:
            pod_op.trigger_reentry(context, event)
    except TaskDeferred:
        raise
    except AirflowException as exc:
        reason = failure_reason(pod_op.final_pod) if pod_op.final_pod is not None else str(exc)
        _fail(
            step,
            context,
            StepFailed(step.task_id, _exit_code(pod_op.final_pod), reason, step.subject),
        )
    return StepOutput(result=result_of(pod_op.final_pod))


def _exit_code(pod: Any) -> int:
    try:
        return int(pod.status.container_statuses[0].state.terminated.exit_code)
    except (AttributeError, IndexError, TypeError):
        return 1


class StashStepOperator(BaseOperator):
    """Runs a Stash step with ``stash-agent``; returns the agent's result document."""

    ui_color = "#d9ecf7"
    template_fields = ()

    def __init__(self, *, step: Step, **kwargs: Any) -> None:
        super().__init__(task_id=step.task_id, **kwargs)
        self.step = step

    def execute(self, context: Any) -> dict[str, Any]:
        return execute_step(self.step, context).result

    def trigger_reentry(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """Resume after a deferred pod (``[stash] deferrable``) finished."""
        return _run_pod(self.step, context, load_settings(), event).result


class StashRetentionOperator(StashStepOperator):
    """Retention, skipped when a manual run asks for ``retention: false``."""

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        if not context["params"].get("retention", True):
            raise AirflowSkipException(
                "retention skipped: the run was triggered with retention=false"
            )
        return super().execute(context)
