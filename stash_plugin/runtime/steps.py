"""The one step runner: every task that runs a step (operators and sensors) calls it.

The runtime was decided when planning and travels with the step (``step.runtime``);
nothing here reads it again from the configuration.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import replace
from typing import Any, NoReturn

from ..plan.model import Step
from ..settings import Settings, load_settings
from .errors import StepFailed

log = logging.getLogger(__name__)
ERROR_KEY = "stash_error"
"""XCom key of a failed task's secret-free reason; ``update_status`` reads it."""


def run_step(
    step: Step, context: Any, *, may_defer: bool = True, settings: Settings | None = None
) -> dict[str, Any]:
    """Run ``step`` where it was planned to run; returns the agent's result document.

    ``may_defer=False`` for callers that cannot resume from a trigger (a sensor's poke).
    Raises :class:`StepFailed` with the agent's own reason.
    """
    settings = settings or load_settings()
    if step.runtime == "kubernetes":
        from .pod import run_pod

        if not may_defer:
            settings = replace(settings, deferrable=False)
        return run_pod(step, context, settings)
    from airflow.sdk.log import mask_secret

    from .local import load_secrets, run_process
    from .nodeslots import local_slot

    extra = None
    if step.cluster_access:
        from .kube import agent_api_env

        extra = agent_api_env(step, settings)
    secrets = load_secrets(settings.manifests_dir)
    node = step.node_name or socket.gethostname()
    # Who holds the slot, for the log of those who wait (no repository URL: it may
    # carry credentials).
    names = "".join(f", {k}={v}" for k, v in step.labels)
    holder = f"pid {os.getpid()}: {step.task_id} ({step.namespace}{names})"
    with local_slot(node, settings.node_slots, settings.state_dir, holder, settings.poll_interval):
        return run_process(step, secrets, log.info, mask_secret, extra)


def resume_step(step: Step, context: Any, event: Any) -> dict[str, Any]:
    """Finish a step whose pod the triggerer waited for (``[stash] deferrable``)."""
    from .pod import run_pod

    return run_pod(step, context, load_settings(), event)


def report_failure(context: Any, exc: StepFailed | str) -> NoReturn:
    """Leave the reason where ``update_status`` finds it, then fail the task."""
    from airflow.sdk.exceptions import AirflowException

    context["ti"].xcom_push(key=ERROR_KEY, value=str(exc))
    raise AirflowException(str(exc)) from None


def stop_running() -> None:
    """Stop every step this task runs, in either runtime (the task's ``on_kill``)."""
    from . import local, pod

    local.stop_all()
    pod.stop_all()
