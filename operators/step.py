"""The operator that runs one planned step (backup, retention, restore).

The step stays plain data until ``execute``: constructing the task is cheap, which
keeps parsing a thousand backup DAGs fast. At run time the configured runtime turns it
into a local process (``local``) or, with the cluster runtime, a pod.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import BaseOperator

from stash_plugin.api.kube import Secret
from stash_plugin.plan.model import Step
from stash_plugin.runtime.local import StepFailed, StepOutput, resolve_secret_env, run_step
from stash_plugin.settings import load_settings

log = logging.getLogger(__name__)
ERROR_KEY = "stash_error"


def load_secrets() -> dict[tuple[str, str], Secret]:
    """Secrets of the directory source, read when a task runs (never at parse time)."""
    from stash_plugin.source import load_directory

    return load_directory(load_settings().manifests_dir).secrets


def execute_step(step: Step, context: Any) -> StepOutput:
    """Run ``step`` in the configured runtime; on failure leave a secret-free reason in XCom."""
    from airflow.sdk.exceptions import AirflowException
    from airflow.sdk.log import mask_secret

    settings = load_settings()
    if settings.runtime != "local":
        raise AirflowException(
            f"[stash] runtime = {settings.runtime}: only the local runtime can run steps in "
            "this release; the Kubernetes pod runtime is being built (set "
            "AIRFLOW__STASH__RUNTIME=local)"
        )
    secrets = load_secrets()
    try:
        for value in resolve_secret_env(step, secrets).values():
            mask_secret(value)
        return run_step(step, secrets, emit=log.info)
    except StepFailed as exc:
        context["ti"].xcom_push(key=ERROR_KEY, value=str(exc))
        raise AirflowException(str(exc)) from None


class StashStepOperator(BaseOperator):
    """Runs a Stash step with ``stash-agent``; returns the agent's result document."""

    ui_color = "#d9ecf7"
    template_fields = ()

    def __init__(self, *, step: Step, **kwargs: Any) -> None:
        super().__init__(task_id=step.task_id, **kwargs)
        self.step = step

    def execute(self, context: Any) -> dict[str, Any]:
        return execute_step(self.step, context).result


class StashRetentionOperator(StashStepOperator):
    """Retention, skipped when a manual run asks for ``retention: false``."""

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        if not context["params"].get("retention", True):
            raise AirflowSkipException(
                "retention skipped: the run was triggered with retention=false"
            )
        return super().execute(context)
