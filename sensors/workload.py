"""Sensors for offline mode: the workload's pods are gone; the workload is ready again."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseSensorOperator

from stash_plugin.plan.model import QuiescedWorkload


class WorkloadStoppedSensor(BaseSensorOperator):
    """Waits until no pod of the workload runs, so the volume is quiet for the backup."""

    ui_color = "#fff3e0"

    def __init__(self, *, workload: QuiescedWorkload, **kwargs: Any) -> None:
        kwargs.setdefault("poke_interval", 2)
        kwargs.setdefault("timeout", 600)
        super().__init__(task_id="wait_quiesced", **kwargs)
        self.workload = workload

    def poke(self, context: Any) -> bool:
        # Imported when the sensor runs: a worker builds the DAG before every task, and
        # the client module (with the status models) is not needed for that.
        from stash_plugin.runtime.kube import workloads

        wl = workloads()
        left = wl.pods(self.workload.namespace, dict(self.workload.pod_labels))
        if left:
            self.log.info("%d pod(s) still running", len(left))
        return not left


class WorkloadReadySensor(BaseSensorOperator):
    """Waits until the workload has all its replicas ready again."""

    ui_color = "#fff3e0"

    def __init__(self, *, workload: QuiescedWorkload, **kwargs: Any) -> None:
        kwargs.setdefault("poke_interval", 2)
        kwargs.setdefault("timeout", 900)
        super().__init__(task_id="wait_ready", **kwargs)
        self.workload = workload

    def poke(self, context: Any) -> bool:
        replicas = (context["ti"].xcom_pull(task_ids="resume") or {}).get("replicas")
        if replicas is None:
            return True
        from stash_plugin.runtime.kube import workloads

        wl = workloads()
        ref = self.workload
        return bool(wl.ready(ref.kind, ref.namespace, ref.name, int(replicas)))
