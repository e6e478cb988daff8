"""``verify``: wait until the repository lists the snapshots the backup just made.

A backup task that exited 0 is not yet proof: the sensor asks the repository itself
(``restic snapshots``, scoped to this target) and only then counts the run as good.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from stash_plugin.operators.step import execute_step

from stash_plugin.plan.model import Step


class SnapshotSensor(BaseSensorOperator):
    ui_color = "#fff3e0"

    def __init__(self, *, step: Step, **kwargs: Any) -> None:
        kwargs.setdefault("poke_interval", 5)
        kwargs.setdefault("timeout", 600)
        kwargs.setdefault("mode", "poke")
        super().__init__(task_id=step.task_id, **kwargs)
        self.step = step

    def poke(self, context: Any) -> PokeReturnValue:
        made = context["ti"].xcom_pull(task_ids="backup") or {}
        wanted = {str(b["snapshot_id"]) for b in made.get("backups") or [] if b.get("snapshot_id")}
        if not wanted:
            from airflow.sdk.exceptions import AirflowException

            raise AirflowException("the backup task reported no snapshot to verify")
        listed = execute_step(self.step, context, may_defer=False).result.get("snapshots") or []
        present: set[str] = set()
        count = 0
        for group in listed:
            count += int(group.get("count", len(group.get("snapshots") or [])))
            for snap in group.get("snapshots") or []:
                present.update({str(snap.get("id")), str(snap.get("short_id"))})
        missing = sorted(w for w in wanted if not any(p.startswith(w) for p in present))
        if missing:
            self.log.info("snapshots %s not listed yet", ", ".join(missing))
            return PokeReturnValue(is_done=False)
        return PokeReturnValue(
            is_done=True, xcom_value={"snapshot_count": count, "confirmed": sorted(wanted)}
        )
