"""Offline mode: stop the workload before the backup and always start it again.

The replica count to restore is kept in an annotation on the workload itself, so a
run that died between ``quiesce`` and ``resume`` never makes the next run believe
that zero replicas is what the user wanted.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator, TriggerRule

from stash_plugin import GROUP
from stash_plugin.plan.model import QuiescedWorkload
from stash_plugin.runtime.steps import report_failure

ANNOTATION = f"{GROUP}/original-replicas"


class StashQuiesceOperator(BaseOperator):
    """Scale the workload to zero, remembering its replica count."""

    ui_color = "#fce4ec"

    def __init__(self, *, workload: QuiescedWorkload, **kwargs: Any) -> None:
        super().__init__(task_id="quiesce", **kwargs)
        self.workload = workload

    def execute(self, context: Any) -> dict[str, Any]:
        from stash_plugin.runtime.kube import workloads  # run time only (see the sensors)

        ref = self.workload
        wl = workloads()
        remembered = wl.annotation(ref.kind, ref.namespace, ref.name, ANNOTATION)
        if remembered is not None:
            replicas = int(remembered)
        else:
            replicas = wl.replicas(ref.kind, ref.namespace, ref.name)
            wl.annotate(ref.kind, ref.namespace, ref.name, ANNOTATION, str(replicas))
        self.log.info("scaling %s %s/%s from %d to 0", ref.kind, ref.namespace, ref.name, replicas)
        wl.scale(ref.kind, ref.namespace, ref.name, 0)
        return {"replicas": replicas}


class StashResumeOperator(BaseOperator):
    """Scale the workload back, whatever happened to the backup (trigger rule all_done)."""

    ui_color = "#fce4ec"

    def __init__(self, *, workload: QuiescedWorkload, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE)
        super().__init__(task_id="resume", **kwargs)
        self.workload = workload

    def execute(self, context: Any) -> dict[str, Any]:
        from stash_plugin.runtime.kube import workloads

        ref = self.workload
        wl = workloads()
        saved = (context["ti"].xcom_pull(task_ids="quiesce") or {}).get("replicas")
        remembered = wl.annotation(ref.kind, ref.namespace, ref.name, ANNOTATION)
        replicas = saved if saved is not None else remembered
        if replicas is None:
            self.log.info("the workload was not stopped; nothing to resume")
            return {"replicas": None}
        try:
            wl.scale(ref.kind, ref.namespace, ref.name, int(replicas))
            wl.annotate(ref.kind, ref.namespace, ref.name, ANNOTATION, None)
        except Exception as exc:
            report_failure(
                context, f"could not scale {ref.kind} {ref.namespace}/{ref.name} back: {exc}"
            )
        self.log.info("scaled %s %s/%s back to %s", ref.kind, ref.namespace, ref.name, replicas)
        return {"replicas": int(replicas)}
