"""Kubernetes API access for run time: the Repository/Recovery status, workload scale.

Clients come from the Airflow connection (``kubernetes_default`` by default) through
KubernetesHook, so in-cluster config, a kubeconfig file or connection extras all
work the usual Airflow way. Imports are deferred: parsing DAGs never loads them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .. import GROUP, VERSION
from ..api.resources import BackupRepo, RecoveryStatus, RepositoryCheck, RepositoryStatus
from ..plan.model import Step, TargetRef
from ..protocol import (
    ENV_AGENT_POD_PREFIX,
    ENV_DEAD_LOCK_BEFORE,
    ENV_KUBE_CA_FILE,
    ENV_KUBE_CERT_FILE,
    ENV_KUBE_INSECURE,
    ENV_KUBE_KEY_FILE,
    ENV_KUBE_SERVER,
    ENV_KUBE_TOKEN,
    ENV_LIVE_AGENT_PODS,
)
from ..settings import Settings
from .checks import record_check_in
from .errors import StepFailed
from .outcomes import BackupOutcome, entry_of, record_in

log = logging.getLogger(__name__)

SCALABLE = {"Deployment": "deployment", "StatefulSet": "stateful_set", "ReplicaSet": "replica_set"}
#: Every agent pod carries one of these labels (``plan.pods``): backup steps, recoveries.
AGENT_LABELS = (f"{GROUP}/restic", f"{GROUP}/recovery")
FINISHED = ("Succeeded", "Failed")  # restartPolicy Never: no container runs any more


def hook(conn_id: str = "kubernetes_default") -> Any:
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    return KubernetesHook(conn_id=conn_id)


def _conflict(exc: Exception) -> bool:
    return getattr(exc, "status", None) == 409


class KubeStatusStore:
    """Status in the objects' ``status`` subresource, written with optimistic locking.

    Each update reads the object, changes only this target's entry, and replaces the
    status with the read ``resourceVersion``; on a conflict (someone else wrote in
    between, e.g. another target's backup) it reads again and retries, so entries of
    other targets are never clobbered.
    """

    def __init__(self, custom_api: Any, attempts: int = 8) -> None:
        self.api = custom_api
        self.attempts = attempts

    def _update_status(self, namespace: str, plural: str, name: str, change: Any) -> Any:
        for attempt in range(self.attempts):
            obj = self.api.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
            obj["status"], result = change(obj.get("status") or {})
            try:
                self.api.replace_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, plural, name, obj
                )
                return result
            except Exception as exc:
                if not _conflict(exc) or attempt == self.attempts - 1:
                    raise
                log.info("status of %s %s/%s changed meanwhile; retrying", plural, namespace, name)
                time.sleep(0.05 * (attempt + 1))
        raise RuntimeError("unreachable")

    def backup_entry(self, target: TargetRef) -> BackupRepo | None:
        obj = self.api.get_namespaced_custom_object(
            GROUP, VERSION, target.repository_namespace, "repositories", target.repository_name
        )
        status = RepositoryStatus.model_validate(
            {"backupRepos": (obj.get("status") or {}).get("backupRepos", [])}
        )
        return entry_of(status, target)

    def lost_history(self, target: TargetRef) -> str:
        """A Repository's status is read whole or not at all (a bad one fails the step)."""
        return ""

    def record_backup(self, target: TargetRef, outcome: BackupOutcome) -> BackupRepo:
        def change(status: dict[str, Any]) -> tuple[dict[str, Any], BackupRepo]:
            # Only our entries are read: other fields (Stash 0.8's backupCount, a
            # controller's observedGeneration...) are kept as they are.
            current = RepositoryStatus.model_validate(
                {"backupRepos": status.get("backupRepos", [])}
            )
            updated, entry = record_in(current, target, outcome)
            new = {
                **status,
                **updated.model_dump(mode="json", by_alias=True, exclude_none=True),
            }
            return new, entry

        return self._update_status(  # type: ignore[no-any-return]
            target.repository_namespace, "repositories", target.repository_name, change
        )

    def record_check(
        self,
        namespace: str,
        name: str,
        check: RepositoryCheck,
        counts: tuple[tuple[TargetRef, int], ...],
    ) -> None:
        def change(status: dict[str, Any]) -> tuple[dict[str, Any], None]:
            current = RepositoryStatus.model_validate(
                {"backupRepos": status.get("backupRepos", [])}
            )
            updated = record_check_in(current, check, counts)
            return {
                **status,
                **updated.model_dump(mode="json", by_alias=True, exclude_none=True),
            }, None

        self._update_status(namespace, "repositories", name, change)

    def record_recovery(self, namespace: str, name: str, status: RecoveryStatus) -> None:
        def change(old: dict[str, Any]) -> tuple[dict[str, Any], None]:
            return {**old, **status.model_dump(mode="json", by_alias=True)}, None

        self._update_status(namespace, "recoveries", name, change)


class Workloads:
    """Scale a workload and watch its pods: the offline-mode and recovery helpers."""

    def __init__(self, apps_api: Any, core_api: Any) -> None:
        self.apps = apps_api
        self.core = core_api

    def _call(self, verb: str, kind: str, suffix: str = "") -> Any:
        if kind not in SCALABLE:
            raise ValueError(f"{kind} cannot be scaled (Deployment, StatefulSet, ReplicaSet can)")
        return getattr(self.apps, f"{verb}_namespaced_{SCALABLE[kind]}{suffix}")

    def _scale_call(self, verb: str, kind: str) -> Any:
        return self._call(verb, kind, "_scale")

    def annotation(self, kind: str, namespace: str, name: str, key: str) -> str | None:
        annotations = self._call("read", kind)(name, namespace).metadata.annotations or {}
        value = annotations.get(key)
        return str(value) if value is not None else None

    def annotate(self, kind: str, namespace: str, name: str, key: str, value: str | None) -> None:
        """Set (or, with None, remove) one annotation."""
        self._call("patch", kind)(name, namespace, {"metadata": {"annotations": {key: value}}})

    def replicas(self, kind: str, namespace: str, name: str) -> int:
        scale = self._scale_call("read", kind)(name, namespace)
        return int(scale.spec.replicas or 0)

    def scale(self, kind: str, namespace: str, name: str, replicas: int) -> None:
        self._scale_call("patch", kind)(name, namespace, {"spec": {"replicas": replicas}})

    def pods(self, namespace: str, selector: dict[str, str]) -> list[Any]:
        label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        pods = self.core.list_namespaced_pod(namespace, label_selector=label_selector).items
        return [p for p in pods if not (p.metadata.labels or {}).get(f"{GROUP}/restic")]

    def ready(self, kind: str, namespace: str, name: str, replicas: int) -> bool:
        obj = self._call("read", kind)(name, namespace)
        status = obj.status
        return (
            int(status.ready_replicas or 0) >= replicas
            and int(status.replicas or 0) == replicas
            and (status.observed_generation or 0) >= (obj.metadata.generation or 0)
        )


def workloads(conn_id: str | None = None) -> Workloads:
    """Workload access through the configured Kubernetes connection."""
    from kubernetes import client

    from ..settings import load_settings

    api = hook(conn_id or load_settings().kubernetes_conn_id).api_client
    return Workloads(client.AppsV1Api(api), client.CoreV1Api(api))


def pod_hostname(pod: Any) -> str:
    """The host name a pod's processes see, which restic writes into its locks."""
    spec_hostname = getattr(pod.spec, "hostname", None) if pod.spec else None
    return str(spec_hostname or pod.metadata.name[:63].rstrip("-."))


def live_agent_hosts(core_api: Any) -> list[str]:
    """Host names of the agent pods, in every namespace, whose containers may still run.

    Every namespace, because a repository can be shared by Repositories of several
    namespaces and a host name does not say which namespace its pod was in. A pod
    whose phase is Unknown (its node is unreachable) counts as live: its process may be.
    """
    hosts: set[str] = set()
    for label in AGENT_LABELS:
        for pod in core_api.list_pod_for_all_namespaces(label_selector=label).items:
            if (pod.status.phase if pod.status else None) not in FINISHED:
                hosts.add(pod_hostname(pod))
    return sorted(hosts)


def dead_lock_env(core_api: Any, prefix: str, clock_skew: float) -> dict[str, str]:
    """What the agent needs to remove the locks of agent pods that no longer exist
    (``stash_plugin.agent.clear_dead_locks``); nothing when the pods cannot be listed,
    and then the agent leaves such locks to restic (stale after 30 minutes)."""
    listed_at = time.time()
    try:
        hosts = live_agent_hosts(core_api)
    except Exception as exc:  # noqa: BLE001 - a step must not fail for want of this list
        log.warning("cannot list agent pods (%s); locks of deleted pods stay until stale", exc)
        return {}
    return {
        ENV_LIVE_AGENT_PODS: ",".join(hosts),
        ENV_AGENT_POD_PREFIX: prefix,
        ENV_DEAD_LOCK_BEFORE: f"{listed_at - clock_skew:.3f}",
    }


def agent_api_env(step: Step, settings: Settings) -> dict[str, str]:
    """What a local Cluster step needs to reach the Kubernetes API: the Airflow
    connection's address and credentials (the token as a secret: environment only).

    The connection usually may read and write everything, so it is handed over only to
    namespaces the administrator lists in ``[stash] cluster_namespaces``: a tenant's
    Restic must not read every Secret of the cluster through it."""
    if step.namespace not in settings.cluster_namespaces:
        allowed = ", ".join(settings.cluster_namespaces) or "none"
        raise StepFailed(
            step.task_id,
            1,
            f"a Cluster target reads and writes the whole cluster through the Airflow "
            f"connection {settings.kubernetes_conn_id!r}; namespace {step.namespace} may not "
            f"use it (an administrator lists it in [stash] cluster_namespaces; now: {allowed})",
            step.subject,
        )
    config = hook(settings.kubernetes_conn_id).api_client.configuration
    env = {ENV_KUBE_SERVER: str(config.host)}
    token = config.get_api_key_with_prefix("authorization") or ""
    if token:
        env[ENV_KUBE_TOKEN] = token.removeprefix("Bearer ").strip()
    for name, value in (
        (ENV_KUBE_CA_FILE, config.ssl_ca_cert),
        (ENV_KUBE_CERT_FILE, config.cert_file),
        (ENV_KUBE_KEY_FILE, config.key_file),
    ):
        if value:
            env[name] = str(value)
    if not config.verify_ssl:
        env[ENV_KUBE_INSECURE] = "1"
    return env
