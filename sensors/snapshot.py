"""``verify``: make sure the snapshots the backup just made are in the repository.

A backup task that exited 0 reported each new snapshot's id from restic's own summary,
which restic prints only after the backend accepted the snapshot file. ``verify``
confirms each id from the cheapest source that is a listing of the repository:
retention's ``forget``, when it ran, lists the target's snapshots anyway. Otherwise the
sensor lists them itself (``restic snapshots``, scoped to this target, poked until they
show) on a target's first backup and every ``[stash] verify_every``-th one, and trusts
the backup's summary in between; a listing costs a repository opening (a key
derivation, most of a second, and a pod in the kubernetes runtime) on every run.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from stash_plugin.plan.model import Step
from stash_plugin.runtime.errors import StepFailed
from stash_plugin.runtime.steps import report_failure, run_step
from stash_plugin.settings import load_settings


def _missing(wanted: set[str], present: set[str]) -> list[str]:
    """The wanted ids no listed id starts with (restic prints short ids, 8 characters)."""
    return sorted(w for w in wanted if not any(p.startswith(w) for p in present))


class SnapshotSensor(BaseSensorOperator):
    ui_color = "#fff3e0"

    def __init__(self, *, step: Step, **kwargs: Any) -> None:
        kwargs.setdefault("poke_interval", 5)
        kwargs.setdefault("timeout", 600)
        kwargs.setdefault("mode", "poke")
        super().__init__(task_id=step.task_id, **kwargs)
        self.step = step

    def poke(self, context: Any) -> PokeReturnValue:
        # Imported here, not at the top: a worker builds this task's DAG before every
        # task, and these modules are only needed when the sensor runs.
        from stash_plugin.protocol import RunResult
        from stash_plugin.runtime.guard import HISTORY_KEY, TargetHistory, listing_due

        ti = context["ti"]
        made = RunResult.from_dict(ti.xcom_pull(task_ids="backup"))
        wanted = {b.snapshot_id for b in made.backups if b.snapshot_id}
        if not wanted:
            report_failure(context, "the backup task reported no snapshot to verify")
        history = TargetHistory.from_xcom(ti.xcom_pull(task_ids="backup", key=HISTORY_KEY))
        if not listing_due(history, load_settings().verify_every):
            assert history is not None  # listing_due is True without one
            forgets = RunResult.from_dict(ti.xcom_pull(task_ids="retention")).forgets
            if forgets and not _missing(wanted, {i for f in forgets for i in f.kept_ids}):
                self.log.info("snapshots %s listed by retention", ", ".join(sorted(wanted)))
                return self._done(wanted, sum(f.kept for f in forgets), "retention")
            if not forgets:
                count = history.snapshot_count
                self.log.info(
                    "snapshots %s confirmed by the backup's summary (the repository is "
                    "listed on every [stash] verify_every-th backup)",
                    ", ".join(sorted(wanted)),
                )
                return self._done(
                    wanted, None if count is None else count + len(wanted), "backup summary"
                )
        try:
            listed = RunResult.from_dict(run_step(self.step, context, may_defer=False)).snapshots
        except StepFailed as exc:
            report_failure(context, exc)
        present = {i for group in listed for s in group.snapshots for i in (s.id, s.short_id)}
        missing = _missing(wanted, present)
        if missing:
            self.log.info("snapshots %s not listed yet", ", ".join(missing))
            return PokeReturnValue(is_done=False)
        times = [g.oldest_time for g in listed if g.oldest_time]
        return self._done(
            wanted,
            sum(group.count for group in listed),
            "listing",
            # each run makes one snapshot per folder: the target's past runs, for a
            # status that lost its entry (runtime.outcomes.SnapshotHistory)
            backups_found=max((g.count for g in listed), default=0),
            oldest_time=min(times) if times else None,
        )

    @staticmethod
    def _done(wanted: set[str], count: int | None, source: str, **more: Any) -> PokeReturnValue:
        value: dict[str, Any] = {"confirmed": sorted(wanted), "confirmed_by": source, **more}
        if count is not None:
            value["snapshot_count"] = count
        return PokeReturnValue(is_done=True, xcom_value=value)
