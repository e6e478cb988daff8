"""What a backup step is told about its target's history before it runs.

The agent sees only a repository URL and a folder. Whether a missing repository is a
first backup or a lost disk, and how big the source was last time, are in the target's
status, which only the Airflow side reads: this module turns that status into the
:class:`~stash_plugin.protocol.BackupGuard` the agent enforces (see ``stash_plugin.agent``).
"""

from __future__ import annotations

from dataclasses import replace

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
    return replace(step, env=tuple(env))


__all__ = ["backup_guard", "guarded_backup"]
