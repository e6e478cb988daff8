"""What a run did, from what its tasks reported: status entry, failure text, metrics.

One test per way a run can end; each builds the plan the planner really makes (offline
mode included) and the task reports ``update_status`` would gather.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from stashtest import PASSWORD, deployment_doc, repository_doc, restic_doc, secret_doc

from stash_plugin.api import ResourceSet, parse_document
from stash_plugin.api.resources import RepositoryStatus
from stash_plugin.plan import BackupPlan, RecoveryPlan, make_plans
from stash_plugin.protocol import (
    BackupResult,
    ForgetResult,
    RestoreResult,
    RestoreRunResult,
    RunResult,
)
from stash_plugin.runtime.outcomes import (
    Metric,
    TaskReport,
    backup_report,
    record_in,
    recovery_report,
)

NS = "demo"
STARTED = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
NOW = 1_790_000_000.0


def _resources(docs: list[dict[str, Any]]) -> ResourceSet:
    rs = ResourceSet()
    for doc in docs:
        parsed = parse_document(doc)
        assert parsed is not None and not isinstance(parsed, list), parsed
        rs.add(parsed)
    return rs


def _backup_plan(offline: bool = False) -> BackupPlan:
    backend = {"local": {"mountPath": "/repo", "persistentVolumeClaim": {"claimName": "repo"}}}
    spec = {"backupMode": "Offline"} if offline else {}
    docs = [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        deployment_doc("app", NS, Path("/srv/app")),
        repository_doc("repo", NS, backend),
        restic_doc("rs", NS, "repo", "app", **spec),
    ]
    plans = make_plans(_resources(docs), "kubernetes")
    assert plans.errors == [], [str(e) for e in plans.errors]
    (plan,) = plans.backups.values()
    return plan


def _recovery_plan() -> RecoveryPlan:
    docs = [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        repository_doc("repo", NS, {"local": {"mountPath": "/r", "hostPath": {"path": "/srv/r"}}}),
        {
            "apiVersion": "stash.appscode.com/v1alpha1",
            "kind": "Recovery",
            "metadata": {"name": "rec", "namespace": NS},
            "spec": {
                "targetType": "Volume",
                "repository": {"name": "repo"},
                "volumeRestorer": {
                    "repoDir": "/volumes/deployment/app",
                    "recoverTo": [{"mountPath": "/source/data", "hostPath": {"path": "/srv/x"}}],
                },
            },
        },
    ]
    plans = make_plans(_resources(docs), "local")
    (plan,) = plans.recoveries.values()
    return plan


GOOD_BACKUP = RunResult(
    backups=[
        BackupResult(
            path="/source/data",
            snapshot_id="abcdef0123456789",
            files_new=3,
            files_changed=1,
            data_added=4096,
            duration_seconds=2.5,
        )
    ]
)
GOOD_FORGET = RunResult(
    forgets=[ForgetResult(path="/source/data", kept=5, removed=2, bytes_freed=1024)]
)


def _reports(plan: BackupPlan, **overrides: TaskReport) -> dict[str, TaskReport]:
    """Every task succeeded unless told otherwise."""
    good: dict[str, Any] = {
        "backup": GOOD_BACKUP.to_dict(),
        "retention": GOOD_FORGET.to_dict(),
        "verify": {"snapshot_count": 6, "confirmed": ["abcdef0123456789"]},
        "quiesce": {"replicas": 2},
        "resume": {"replicas": 2},
    }
    out = {t: TaskReport(t, "success", good.get(t)) for t in plan.task_ids}
    out.update(overrides)
    return out


def _metrics(metrics: tuple[Metric, ...]) -> dict[str, float]:
    return {m.name: m.value for m in metrics}


def _entry(plan: BackupPlan, reports: dict[str, TaskReport]) -> Any:
    report = backup_report(plan, reports, STARTED, NOW)
    _, entry = record_in(RepositoryStatus(), plan.target, report.outcome)
    return report, entry


def test_backup_ok() -> None:
    plan = _backup_plan()
    report, entry = _entry(plan, _reports(plan))
    assert not report.failed
    assert entry.backup_count == 1 and entry.failed_backup_count == 0
    assert entry.last_snapshot_id == "abcdef0123456789"
    assert entry.snapshot_count == 6
    assert entry.last_backup_duration == "2.5s"
    assert (entry.last_retention_removed, entry.last_retention_bytes_freed) == (2, 1024)
    assert entry.last_failure is None
    assert _metrics(report.metrics) == {
        "success": 1,
        "last_success_timestamp": int(NOW),
        "schedule_interval_seconds": 3600,  # the builder's schedule: @every 1h
        "duration": 2500.0,
        "last_duration_seconds": 2.5,
        "bytes_added": 4096,
        "files_new": 3,
        "files_changed": 1,
        "files_unmodified": 0,
        "snapshots": 6,
        "retention_snapshots_removed": 2,
        "retention_bytes_freed": 1024,
    }
    assert report.scope == ("backup", NS, "rs", "deployment.app", "repo", "volumes")


def test_a_target_without_status_counts_on_from_its_snapshots() -> None:
    """A lost status (a recreated Repository, a wiped state folder): the counters go on
    from what the repository holds, this run's snapshot among them; an entry that
    exists is never overridden by the snapshots (retention removes some)."""
    plan = _backup_plan()
    found = {"backups_found": 4, "oldest_time": "2026-01-02T03:04:05.123456789+00:00"}
    verify = TaskReport("verify", "success", {"snapshot_count": 4, "confirmed": ["abc"], **found})
    reports = _reports(plan, verify=verify)
    report, entry = _entry(plan, reports)
    assert entry.backup_count == 4
    assert entry.first_backup_time == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert entry.last_backup_time == STARTED
    status, _ = record_in(RepositoryStatus(), plan.target, report.outcome)
    _, again = record_in(status, plan.target, report.outcome)
    assert again.backup_count == 5
    assert again.first_backup_time == entry.first_backup_time


def test_a_true_first_backup_is_its_own_first_backup_time() -> None:
    """The only snapshot verify finds is this run's (stamped after the run started):
    the first backup time is this run's, as with a status that was never lost."""
    plan = _backup_plan()
    own = {"backups_found": 1, "oldest_time": "2099-01-02T03:04:05+00:00"}
    verify = TaskReport("verify", "success", {"snapshot_count": 1, "confirmed": ["abc"], **own})
    _, entry = _entry(plan, _reports(plan, verify=verify))
    assert entry.backup_count == 1
    assert entry.first_backup_time == entry.last_backup_time == STARTED


def test_the_stored_repository_record_is_remembered() -> None:
    plan = _backup_plan()
    backup = TaskReport("backup", "success", {**GOOD_BACKUP.to_dict(), "record_digest": "d1"})
    report, entry = _entry(plan, _reports(plan, backup=backup))
    assert entry.repository_record == "d1"
    status, _ = record_in(RepositoryStatus(), plan.target, report.outcome)
    _, kept = record_in(
        status, plan.target, backup_report(plan, _reports(plan), STARTED, NOW).outcome
    )
    assert kept.repository_record == "d1"  # a run that did not store one keeps the digest


def test_backup_failed() -> None:
    plan = _backup_plan()
    reports = _reports(
        plan,
        backup=TaskReport("backup", "failed", None, "step backup failed with exit code 1: boom"),
        retention=TaskReport("retention", "upstream_failed"),
        verify=TaskReport("verify", "upstream_failed"),
    )
    report, entry = _entry(plan, reports)
    assert report.failed
    assert report.outcome.failure == "backup: step backup failed with exit code 1: boom"
    assert entry.backup_count == 0 and entry.failed_backup_count == 1
    assert entry.last_failure == report.outcome.failure
    assert _metrics(report.metrics) == {
        "failure": 1,
        "last_failure_timestamp": int(NOW),
        "schedule_interval_seconds": 3600,
    }


def test_backup_killed_without_a_reason_points_at_its_log() -> None:
    plan = _backup_plan()
    reports = _reports(plan, backup=TaskReport("backup", "failed"))
    report, entry = _entry(plan, reports)
    assert report.outcome.failure == "backup: failed (see the backup task's log)"
    assert entry.failed_backup_count == 1


def test_retention_failed_after_a_good_backup() -> None:
    plan = _backup_plan()
    reports = _reports(
        plan,
        retention=TaskReport("retention", "failed", None, "restic forget failed (restic exit 1)"),
        verify=TaskReport("verify", "success", {"snapshot_count": 7}),
    )
    report, entry = _entry(plan, reports)
    assert report.failed
    assert report.outcome.failure == "retention: restic forget failed (restic exit 1)"
    # The backup itself counts: its snapshot exists and is the newest good one.
    assert entry.backup_count == 1 and entry.failed_backup_count == 1
    assert entry.last_snapshot_id == "abcdef0123456789"
    assert entry.last_retention_removed is None
    metrics = _metrics(report.metrics)
    assert metrics["failure"] == 1 and "success" not in metrics
    # The snapshot is good (no "backup missed" alert) and the run is red (failing).
    assert metrics["last_success_timestamp"] == metrics["last_failure_timestamp"] == int(NOW)
    assert metrics["snapshots"] == 7 and metrics["bytes_added"] == 4096


def test_verify_failed() -> None:
    plan = _backup_plan()
    reports = _reports(
        plan, verify=TaskReport("verify", "failed", None, "cannot list snapshots (restic exit 1)")
    )
    report, entry = _entry(plan, reports)
    assert report.outcome.failure == "verify: cannot list snapshots (restic exit 1)"
    assert entry.backup_count == 1 and entry.failed_backup_count == 1
    assert entry.snapshot_count is None


def test_verify_sensor_timed_out_without_a_reason() -> None:
    plan = _backup_plan()
    report, _ = _entry(plan, _reports(plan, verify=TaskReport("verify", "failed")))
    assert report.outcome.failure == "verify: failed (see the verify task's log)"


def test_resume_failed_after_a_good_offline_backup() -> None:
    plan = _backup_plan(offline=True)
    assert plan.task_ids == (
        "quiesce",
        "wait_quiesced",
        "backup",
        "resume",
        "wait_ready",
        "retention",
        "verify",
    )
    reason = "could not scale Deployment demo/app back: 500 Internal Server Error"
    reports = _reports(
        plan,
        resume=TaskReport("resume", "failed", None, reason),
        wait_ready=TaskReport("wait_ready", "upstream_failed"),
        retention=TaskReport("retention", "upstream_failed"),
        verify=TaskReport("verify", "upstream_failed"),
    )
    report, entry = _entry(plan, reports)
    # The workload is down: that is what the run reports, not a missing verification.
    assert report.outcome.failure == f"resume: {reason}"
    assert "verify" not in report.outcome.failure
    assert entry.backup_count == 1 and entry.failed_backup_count == 1
    assert _metrics(report.metrics)["failure"] == 1


def test_backup_that_did_not_run_at_all() -> None:
    """A quiesce that failed: the backup never ran; the quiesce is the reason."""
    plan = _backup_plan(offline=True)
    reports = {t: TaskReport(t, "upstream_failed") for t in plan.task_ids}
    reports["quiesce"] = TaskReport("quiesce", "failed", None, "Forbidden")
    reports["resume"] = TaskReport("resume", "success", {"replicas": None})
    report, entry = _entry(plan, reports)
    assert report.outcome.failure == "quiesce: Forbidden"
    assert entry.backup_count == 0 and entry.failed_backup_count == 1


def test_missing_reports_still_give_a_reason() -> None:
    plan = _backup_plan()
    report, _ = _entry(plan, {})
    assert report.outcome.failure == "backup: did not finish (see the backup task's log)"


def test_recovery_succeeded() -> None:
    plan = _recovery_plan()
    result = RestoreRunResult(
        restores=[
            RestoreResult(
                path="/source/data", target="/srv/x", snapshot_ids=["abc"], duration_seconds=1.25
            )
        ]
    )
    report = recovery_report(plan, {"restore": TaskReport("restore", "success", result.to_dict())})
    assert not report.failed
    assert report.status.phase == "Succeeded"
    assert [(s.path, s.phase, s.duration) for s in report.status.stats] == [
        ("/source/data", "Succeeded", "1.25s")
    ]
    assert _metrics(report.metrics) == {"success": 1, "duration": 1250.0}
    assert report.scope == ("recovery", NS, "rec", "repo")


@pytest.mark.parametrize(
    ("restore", "failure"),
    [
        (
            TaskReport("restore", "failed", None, "no snapshot latest in the repository"),
            "restore: no snapshot latest in the repository",
        ),
        (TaskReport("restore", "failed"), "restore: failed (see the restore task's log)"),
        (TaskReport("restore", None), "restore: did not finish (see the restore task's log)"),
    ],
)
def test_recovery_failed(restore: TaskReport, failure: str) -> None:
    plan = _recovery_plan()
    report = recovery_report(plan, {"restore": restore})
    assert report.failure == failure
    assert report.status.phase == "Failed"
    assert [(s.path, s.phase) for s in report.status.stats] == [("/source/data", "Failed")]
    assert _metrics(report.metrics) == {"failure": 1}


# --------------------------------------------------------------------------- source drops

SHRUNK_BACKUP = RunResult(
    backups=[
        BackupResult(
            path="/source/data",
            snapshot_id="0123abcd",
            total_files_processed=10,
            total_bytes_processed=500,
            source_drop="the source shrank from 2000 to 10 files (-100%) since the previous "
            "backup (more than 50%)",
            kept_before_drop=["feed0001"],
        )
    ]
)


@pytest.mark.parametrize("shrink_fails", [True, False])
def test_a_flagged_drop_counts_the_backup_and_flags_the_status(shrink_fails: bool) -> None:
    """``[stash] shrink_action``: ``fail`` makes the run red, ``warn`` keeps it green; both
    count the snapshot and flag the status, naming what was kept from before."""
    plan = _backup_plan()
    reports = _reports(plan, backup=TaskReport("backup", "success", SHRUNK_BACKUP.to_dict()))
    report = backup_report(plan, reports, STARTED, NOW, shrink_fails=shrink_fails)
    _, entry = record_in(RepositoryStatus(), plan.target, report.outcome)
    assert report.failed is shrink_fails
    assert entry.backup_count == 1 and entry.last_snapshot_id == "0123abcd"
    assert entry.source_drop == (
        "/source/data: the source shrank from 2000 to 10 files (-100%) since the previous "
        "backup (more than 50%); kept feed0001 from before it (tag stash-before-drop)"
    )
    assert entry.source_drop_time == STARTED
    assert [(s.path, s.files, s.bytes) for s in entry.source_sizes] == [("/source/data", 10, 500)]
    metrics = _metrics(report.metrics)
    assert metrics["source_dropped"] == 1
    assert ("failure" in metrics) is shrink_fails
    if shrink_fails:
        assert entry.last_failure is not None
        assert entry.last_failure.startswith("backup: flagged: /source/data: the source shrank")
    else:
        assert entry.last_failure is None and entry.failed_backup_count == 0


def test_the_next_normal_backup_clears_the_flag_and_a_failure_keeps_the_baseline() -> None:
    plan = _backup_plan()
    flagged = _reports(plan, backup=TaskReport("backup", "success", SHRUNK_BACKUP.to_dict()))
    status, _ = record_in(
        RepositoryStatus(), plan.target, backup_report(plan, flagged, STARTED, NOW).outcome
    )
    failed = _reports(plan, backup=TaskReport("backup", "failed", None, error="boom"))
    status, entry = record_in(
        status, plan.target, backup_report(plan, failed, STARTED, NOW).outcome
    )
    assert entry.source_drop is not None and entry.source_sizes[0].files == 10
    _, entry = record_in(
        status, plan.target, backup_report(plan, _reports(plan), STARTED, NOW).outcome
    )
    assert entry.source_drop is None and entry.source_drop_time == STARTED
    assert entry.backup_count == 2
