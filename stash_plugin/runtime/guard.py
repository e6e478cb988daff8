"""What a backup step is told about its target's history before it runs.

The agent sees only a repository URL and a folder. Whether a missing repository is a
first backup or a lost disk, and how big the source was last time, are in the target's
status, which only the Airflow side reads: this module turns that status into the
:class:`~stash_plugin.protocol.BackupGuard` the agent enforces (see ``stash_plugin.agent``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..api.resources import BackupRepo
from ..plan.model import BackupPlan, Step
from ..protocol import ENV_BACKUP_GUARD, ENV_REPOSITORY_RECORD, BackupGuard, SourceSize, encode
from ..settings import Settings
from .status import StatusStore, status_store


def backup_guard(
    entry: BackupRepo | None,
    settings: Settings,
    *,
    new_repository: bool = False,
    history_lost: str = "",
) -> BackupGuard:
    """The guard for a target whose status entry is ``entry``.

    ``new_repository`` (a manual run's param) lets a target with backups on record, or
    whose history was lost with an unreadable status, start a new repository on
    purpose, after a deliberate move or wipe."""
    on_record = entry.backup_count if entry is not None else 0
    previous = [
        SourceSize(path=s.path, files=s.files, bytes=s.bytes)
        for s in (entry.source_sizes if entry is not None else [])
    ]
    return BackupGuard(
        backups_on_record=0 if new_repository else on_record,
        previous=previous,
        shrink_threshold=settings.shrink_threshold,
        keep_before_drop=settings.shrink_keep,
        history_lost="" if new_repository or on_record else history_lost,
        record_stored=entry.repository_record if entry is not None else None,
    )


def guarded_backup(
    plan: BackupPlan,
    settings: Settings,
    *,
    new_repository: bool = False,
    store: StatusStore | None = None,
) -> Step:
    """The plan's backup step with its guard in the environment, read from the status
    when the step runs (not when the DAG is parsed: the history changes every run)."""
    return guarded_backup_and_history(plan, settings, new_repository=new_repository, store=store)[0]


HISTORY_KEY = "stash_history"
"""XCom key under which the backup task leaves the :class:`TargetHistory` it read, so
that retention and verify decide without reading the status again."""


@dataclass(frozen=True)
class TargetHistory:
    """What the status said about the target when its backup started."""

    backups_on_record: int = 0
    snapshot_count: int | None = None
    """The target's snapshots after its last recorded run; None when unknown."""

    @classmethod
    def of(cls, entry: BackupRepo | None) -> TargetHistory:
        if entry is None:
            return cls()
        return cls(entry.backup_count, entry.snapshot_count)

    @classmethod
    def from_xcom(cls, value: Any) -> TargetHistory | None:
        """None for anything but what :meth:`to_xcom` wrote (an older backup task)."""
        if not isinstance(value, dict):
            return None
        count = value.get("snapshot_count")
        try:
            return cls(int(value["backups_on_record"]), None if count is None else int(count))
        except (KeyError, TypeError, ValueError):
            return None

    def to_xcom(self) -> dict[str, Any]:
        return {"backups_on_record": self.backups_on_record, "snapshot_count": self.snapshot_count}


def guarded_backup_and_history(
    plan: BackupPlan,
    settings: Settings,
    *,
    new_repository: bool = False,
    store: StatusStore | None = None,
) -> tuple[Step, TargetHistory]:
    """:func:`guarded_backup`, and the history it was made from (one status read)."""
    store = store or status_store(plan.runtime, settings.state_dir, settings.kubernetes_conn_id)
    entry = store.backup_entry(plan.target)
    lost = "" if entry is not None and entry.backup_count else store.lost_history(plan.target)
    guard = backup_guard(entry, settings, new_repository=new_repository, history_lost=lost)
    step = plan.backup
    ours = (ENV_BACKUP_GUARD, ENV_REPOSITORY_RECORD)
    env = [(k, v) for k, v in step.env if k not in ours]
    env.append((ENV_BACKUP_GUARD, encode(guard)))
    if plan.repository_record:
        env.append((ENV_REPOSITORY_RECORD, plan.repository_record))
    return replace(step, env=tuple(env)), TargetHistory.of(entry)


def retention_skip_reason(
    keep_last: int | None, history: TargetHistory | None, new_snapshots: int
) -> str | None:
    """Why retention can remove nothing this run, or None when it must run.

    A snapshot is removed only when no rule keeps it, and ``--keep-last N`` keeps the
    newest N of each folder: a target holding at most N snapshots in all (N the
    smallest keep-last of its folders) loses none, whatever the other rules say, and
    prune only runs after forget removed something. The count is the recorded one plus
    this run's new snapshots; when it is unknown retention runs. A count that is too
    low (snapshots added by hand) only delays retention until the count catches up or
    the maintenance DAG recounts; it never removes more.
    """
    if keep_last is None or history is None or history.snapshot_count is None:
        return None
    count = history.snapshot_count + new_snapshots
    if count > keep_last:
        return None
    return (
        f"retention skipped: the target holds {count} snapshot(s) and the policy keeps the "
        f"last {keep_last}, so nothing can be removed"
    )


def listing_due(history: TargetHistory | None, verify_every: int) -> bool:
    """Whether ``verify`` lists the repository this run rather than trusting the
    backup's own summary: on the first backup of a target, when the history is
    unknown, and on every ``verify_every``-th backup (``[stash] verify_every``; 1: every
    run)."""
    if history is None or verify_every <= 1:
        return True
    return history.backups_on_record % verify_every == 0


__all__ = [
    "HISTORY_KEY",
    "TargetHistory",
    "backup_guard",
    "guarded_backup",
    "guarded_backup_and_history",
    "listing_due",
    "retention_skip_reason",
]
