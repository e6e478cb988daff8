"""``verify``: wait until the repository lists the snapshots the backup just made.

A backup task that exited 0 is not yet proof: the sensor asks the repository itself
(``restic snapshots``, scoped to this target) and only then counts the run as good.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from stash_plugin.plan.model import Step
from stash_plugin.protocol import RunResult
from stash_plugin.runtime.errors import StepFailed
from stash_plugin.runtime.steps import report_failure, run_step


class SnapshotSensor(BaseSensorOperator):
    ui_color = "#fff3e0"

    def __init__(self, *, step: Step, **kwargs: Any) -> None:
        kwargs.setdefault("poke_interval", 5)
        kwargs.setdefault("timeout", 600)
        kwargs.setdefault("mode", "poke")
        super().__init__(task_id=step.task_id, **kwargs)
        self.step = step

    def poke(self, context: Any) -> PokeReturnValue:
        made = RunResult.from_dict(context["ti"].xcom_pull(task_ids="backup"))
        wanted = {b.snapshot_id for b in made.backups if b.snapshot_id}
        if not wanted:
            report_failure(context, "the backup task reported no snapshot to verify")
        try:
            listed = RunResult.from_dict(run_step(self.step, context, may_defer=False)).snapshots
        except StepFailed as exc:
            report_failure(context, exc)
        present = {i for group in listed for s in group.snapshots for i in (s.id, s.short_id)}
        count = sum(group.count for group in listed)
        missing = sorted(w for w in wanted if not any(p.startswith(w) for p in present))
        if missing:
            self.log.info("snapshots %s not listed yet", ", ".join(missing))
            return PokeReturnValue(is_done=False)
        times = [g.oldest_time for g in listed if g.oldest_time]
        return PokeReturnValue(
            is_done=True,
            xcom_value={
                "snapshot_count": count,
                "confirmed": sorted(wanted),
                # each run makes one snapshot per folder: the target's past runs, for a
                # status that lost its entry (runtime.outcomes.SnapshotHistory)
                "backups_found": max((g.count for g in listed), default=0),
                "oldest_time": min(times) if times else None,
            },
        )
