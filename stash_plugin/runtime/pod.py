"""Running a step as a pod with the real KubernetesPodOperator.

The Stash task keeps its step as data at parse time (cheap to build) and creates the
KubernetesPodOperator only when it runs, so pod creation, log streaming, reattaching
to a pod of an earlier try, deferral and cleanup are the provider's own code paths.
The agent's result comes back in the container's termination message.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from ..plan.model import Step
from ..plan.pods import AGENT_POD_PREFIX, CONTAINER, pod_manifest
from ..protocol import parse_error
from ..settings import Settings
from .errors import StepFailed


def _pod_operator_class() -> type:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    class StashPod(KubernetesPodOperator):  # type: ignore[misc]
        """Remembers the finished pod so the termination message can be read."""

        final_pod: Any = None

        def cleanup(self, pod: Any, remote_pod: Any, *args: Any, **kwargs: Any) -> None:
            self.final_pod = remote_pod
            super().cleanup(pod, remote_pod, *args, **kwargs)

    return StashPod


def colocated(step: Step, settings: Settings) -> Step:
    """Pin the agent to the node of a running workload pod when the step asks for it
    (a ReadWriteOnce claim can only be mounted there). No running pod: no constraint."""
    if not step.colocate or step.node_name:
        return step
    from kubernetes import client

    from .kube import hook

    core = client.CoreV1Api(hook(settings.kubernetes_conn_id).api_client)
    selector = ",".join(f"{k}={v}" for k, v in step.colocate)
    for pod in core.list_namespaced_pod(step.namespace, label_selector=selector).items:
        if pod.status and pod.status.phase == "Running" and pod.spec and pod.spec.node_name:
            return replace(step, node_name=pod.spec.node_name)
    return step


def with_lock_env(manifest: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Tell the agent which agent pods exist, listed right before its pod is created, so
    that it can remove the locks of deleted ones. Set last: the pod's own ``env`` from
    runtimeSettings cannot override them."""
    from kubernetes import client

    from .kube import dead_lock_env, hook

    core = client.CoreV1Api(hook(settings.kubernetes_conn_id).api_client)
    env = dead_lock_env(core, AGENT_POD_PREFIX, settings.lock_clock_skew)
    container = manifest["spec"]["containers"][0]
    container["env"] = [e for e in container["env"] if e["name"] not in env]
    container["env"] += [{"name": k, "value": v} for k, v in env.items()]
    return manifest


def build_pod_operator(
    step: Step, task_id: str, settings: Settings, slot_holder: str | None = None
) -> Any:
    """The operator for ``step``, placed already (``colocated``); ``slot_holder`` labels
    the pod as the holder of a node slot (``runtime.nodeslots``), so that others can
    tell whether it still runs."""
    image = step.image or settings.agent_image
    manifest = pod_manifest(step, image)
    if slot_holder:
        from .nodeslots import HOLDER_LABEL

        manifest["metadata"]["labels"][HOLDER_LABEL] = slot_holder
    return _pod_operator_class()(
        task_id=task_id,
        name=f"{AGENT_POD_PREFIX}{task_id}",
        namespace=step.namespace,
        image=image,
        pod_template_dict=with_lock_env(manifest, settings),
        kubernetes_conn_id=settings.kubernetes_conn_id,
        get_logs=True,
        do_xcom_push=False,
        deferrable=settings.deferrable,
        on_finish_action=settings.on_finish_action,
        startup_check_interval_seconds=max(1, int(settings.poll_interval)),
        poll_interval=settings.poll_interval,
        log_events_on_failure=True,
    )


def termination_message(pod: Any) -> str | None:
    try:
        statuses = pod.status.container_statuses or []
        status = next((s for s in statuses if s.name == CONTAINER), None)
        return str(status.state.terminated.message) if status else None
    except AttributeError:
        return None


def result_of(pod: Any) -> dict[str, Any]:
    message = termination_message(pod)
    if not message:
        return {}
    try:
        value = json.loads(message)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def failure_reason(pod: Any) -> str | None:
    """The agent's own error line from the termination message, if it wrote one."""
    message = termination_message(pod) or ""
    return parse_error(message) or (message.strip()[-500:] or None)


def _exit_code(pod: Any) -> int:
    try:
        return int(pod.status.container_statuses[0].state.terminated.exit_code)
    except (AttributeError, IndexError, TypeError):
        return 1


def api_refusal(exc: Any, step: Step) -> str:
    """The API server's own reason for refusing a call of the operator (most often the
    pod's creation: a missing ServiceAccount, a quota, a pod security rule), which the
    provider only raises as an exception with a traceback."""
    try:
        message = str(json.loads(exc.body).get("message") or "")
    except (TypeError, ValueError, AttributeError):
        message = ""
    reason = f"the Kubernetes API answered {exc.status} {exc.reason}: {message or '(no message)'}"
    if step.cluster_access and "service account" in message:
        reason += (
            " (the chart makes the ServiceAccounts of Cluster targets in the namespaces "
            "listed in rbac.clusterBackupNamespaces)"
        )
    return reason[:1000]


def run_pod(step: Step, context: Any, settings: Settings, event: Any = None) -> dict[str, Any]:
    """Run ``step`` as a pod (or, with ``event``, finish a deferred one); returns the
    agent's result. Deferral propagates as Airflow's ``TaskDeferred``.

    With ``[stash] node_slots``, a pod pinned to a node first takes one of the node's
    slots (a Lease, ``runtime.nodeslots``), held until the pod has finished: across a
    deferral too, since the task that resumes from the trigger gives it back."""
    from airflow.sdk.exceptions import AirflowException, TaskDeferred
    from kubernetes.client.exceptions import ApiException

    slots, holder = None, None
    if settings.node_slots and (step.node_name or step.colocate):
        from .nodeslots import holder_token, lease_slots

        slots = lease_slots(settings.kubernetes_conn_id, settings.lease_namespace)
        holder = holder_token(context)
    pod_op = None
    deferred = False
    try:
        # Placed once: a second lookup could pin the pod to a node whose slot was not
        # taken (its workload pod started in between).
        step = colocated(step, settings)
        if event is None and slots is not None:
            if step.node_name:
                slots.take(
                    step.node_name,
                    settings.node_slots,
                    holder or "",
                    step.namespace,
                    settings.poll_interval,
                )
            else:  # the scheduler places it: no node, no slot
                slots = None
        pod_op = build_pod_operator(
            step, context["ti"].task_id, settings, holder if slots is not None else None
        )
        _RUNNING.add(pod_op)
        if event is None:
            pod_op.execute(context)
        else:
            pod_op.trigger_reentry(context, event)
    except TaskDeferred:
        deferred = True
        raise
    except AirflowException as exc:
        pod = pod_op.final_pod if pod_op is not None else None
        reason = failure_reason(pod) if pod is not None else str(exc)
        raise StepFailed(step.task_id, _exit_code(pod), reason, step.subject) from None
    except ApiException as exc:
        raise StepFailed(step.task_id, 1, api_refusal(exc, step), step.subject) from None
    finally:
        _RUNNING.discard(pod_op)
        if slots is not None and holder and not deferred:
            slots.release(holder)
    return result_of(pod_op.final_pod)


_RUNNING: set[Any] = set()


def stop_all() -> None:
    """Delete the pods this process waits for (the task's ``on_kill``): the agent gets
    SIGTERM and interrupts restic so that it removes its lock."""
    for pod_op in list(_RUNNING):
        pod_op.on_kill()
