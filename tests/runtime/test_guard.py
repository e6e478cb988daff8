"""What a backup step is told about its target's history, and the drop rule the agent
applies with it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_outcomes import GOOD_BACKUP, STARTED, _backup_plan, _reports

from stash_plugin.api.resources import BackupRepo, SourceSize
from stash_plugin.protocol import ENV_BACKUP_GUARD, BackupGuard, source_drop
from stash_plugin.protocol import SourceSize as Baseline
from stash_plugin.runtime.guard import backup_guard, guarded_backup
from stash_plugin.runtime.outcomes import backup_report
from stash_plugin.runtime.status import LocalStatusStore
from stash_plugin.settings import Settings

SETTINGS = Settings(Path("/nowhere"), "local", Path("/nowhere"), shrink_threshold=0.3)


def _entry(**fields: object) -> BackupRepo:
    base = {"type": "Volumes", "restic_name": "rs", "restic_namespace": "demo", "repo_dir": "/x"}
    return BackupRepo.model_validate({**base, **fields})


def test_a_target_without_history_may_get_a_new_repository() -> None:
    guard = backup_guard(None, SETTINGS)
    assert guard.backups_on_record == 0 and guard.previous == []
    assert (guard.shrink_threshold, guard.keep_before_drop) == (0.3, 1)


def test_the_history_and_baseline_come_from_the_status_entry() -> None:
    entry = _entry(backup_count=7, source_sizes=[SourceSize(path="/d", files=5, bytes=9)])
    guard = backup_guard(entry, SETTINGS)
    assert guard.backups_on_record == 7
    assert guard.baseline("/d") == Baseline("/d", 5, 9) and guard.baseline("/e") is None
    assert backup_guard(entry, SETTINGS, new_repository=True).backups_on_record == 0


def test_the_guard_is_read_from_the_status_when_the_step_runs(tmp_path: Path) -> None:
    plan = _backup_plan()
    store = LocalStatusStore(tmp_path)
    report = backup_report(plan, _reports(plan), STARTED, 0.0)
    store.record_backup(plan.target, report.outcome)
    step = guarded_backup(plan, SETTINGS, store=store)
    guard = BackupGuard.from_dict(json.loads(dict(step.env)[ENV_BACKUP_GUARD]))
    assert guard.backups_on_record == 1
    size = GOOD_BACKUP.backups[0]
    assert guard.previous == [Baseline(size.path, size.total_files_processed, 0)]
    assert step.argv == plan.backup.argv and ENV_BACKUP_GUARD not in dict(plan.backup.env)
    # Run again (a retry): one guard, never two.
    again = guarded_backup(replace(plan, backup=step), SETTINGS, store=store)
    assert [k for k, _ in again.env].count(ENV_BACKUP_GUARD) == 1


def test_an_unreadable_status_leaves_the_history_unknown_until_a_backup_succeeds(
    tmp_path: Path,
) -> None:
    plan = _backup_plan()
    store = LocalStatusStore(tmp_path)

    def guard() -> BackupGuard:
        step = guarded_backup(plan, SETTINGS, store=store)
        return BackupGuard.from_dict(json.loads(dict(step.env)[ENV_BACKUP_GUARD]))

    assert guard().history_lost == ""  # nothing on record, nothing lost: a first backup
    path = store.repository_file(plan.target.repository_namespace, plan.target.repository_name)
    path.parent.mkdir(parents=True)
    path.write_text('{"status": ')
    assert "is unreadable: not JSON" in guard().history_lost
    # A failed run records afresh and keeps the bad file aside: still unknown after it.
    store.record_backup(plan.target, backup_report(plan, {}, STARTED, 0.0).outcome)
    assert "was unreadable and is kept aside as" in guard().history_lost
    new = guarded_backup(plan, SETTINGS, store=store, new_repository=True)
    assert BackupGuard.from_dict(json.loads(dict(new.env)[ENV_BACKUP_GUARD])).history_lost == ""
    # A good backup on record settles it.
    store.record_backup(plan.target, backup_report(plan, _reports(plan), STARTED, 0.0).outcome)
    assert guard().history_lost == "" and guard().backups_on_record == 1


@pytest.mark.parametrize(
    ("previous", "files", "size", "flagged"),
    [
        (None, 0, 0, "the source is empty (no files)"),
        (Baseline("/d", 100, 1000), 0, 0, "the source is empty (no files)"),
        (None, 5, 10, None),
        (Baseline("/d", 100, 1000), 50, 500, None),  # exactly half: not more than half
        (Baseline("/d", 100, 1000), 49, 1000, "from 100 to 49 files (-51%)"),
        (Baseline("/d", 100, 1000), 100, 400, "from 1000 to 400 bytes (-60%)"),
        (Baseline("/d", 100, 1000), 500, 9000, None),  # growth is never flagged
    ],
)
def test_the_drop_rule(
    previous: Baseline | None, files: int, size: int, flagged: str | None
) -> None:
    reason = source_drop(previous, files, size, 0.5)
    assert (reason is None) is (flagged is None)
    if flagged:
        assert reason is not None and flagged in reason


def test_retention_is_skipped_only_while_keep_last_keeps_everything() -> None:
    from stash_plugin.runtime.guard import TargetHistory, retention_skip_reason

    four = TargetHistory(backups_on_record=4, snapshot_count=4)
    assert "nothing can be removed" in str(retention_skip_reason(5, four, 1))
    assert retention_skip_reason(5, TargetHistory(5, 5), 1) is None  # 6 > 5
    assert retention_skip_reason(5, TargetHistory(3, None), 1) is None  # count unknown
    assert retention_skip_reason(None, four, 1) is None  # no keep-last known
    assert retention_skip_reason(5, None, 1) is None  # no history (an older backup task)


def test_verify_lists_the_repository_on_the_first_and_every_nth_backup() -> None:
    from stash_plugin.runtime.guard import TargetHistory, listing_due

    due = [n for n in range(25) if listing_due(TargetHistory(n, n), 10)]
    assert due == [0, 10, 20]
    assert all(listing_due(TargetHistory(n, n), 1) for n in range(5))
    assert listing_due(None, 10)
    assert TargetHistory.from_xcom(TargetHistory(3, None).to_xcom()) == TargetHistory(3, None)
    assert TargetHistory.from_xcom({"snapshot_count": 2}) is None
