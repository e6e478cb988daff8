"""Status survives bad state: a corrupt, empty or wrongly shaped status file costs only
its own object. The next run keeps the bad file aside and records afresh; ``stash
status`` shows every other object and names the bad file; other files stay as they
were. Status files are readable by the group (0640 in 0750 folders).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from stashtest import (
    PASSWORD,
    deployment_doc,
    repository_doc,
    restic_doc,
    run_dag,
    secret_doc,
    task_states,
    write_manifests,
)

from stash_plugin.api.resources import RecoveryPathStats, RecoveryStatus
from stash_plugin.cli import main
from stash_plugin.plan.model import TargetRef
from stash_plugin.runtime.outcomes import BackupOutcome
from stash_plugin.runtime.status import BadStatusFile, LocalStatusStore

NS = "demo"
GOOD_ENTRY = {
    "type": "Volumes",
    "resticName": "r",
    "resticNamespace": NS,
    "repoDir": "/volumes/deployment/app",
}

# name -> bytes of a status file that is not a status
HOSTILE: dict[str, bytes] = {
    "empty": b"",
    "blank": b"  \n\t\n",
    "truncated-json": b'{"status": {"backupRepos": [{"type": "Vol',
    "not-utf8": b"\xff\xfe\x00garbage\x80",
    "nul-bytes": b"\x00" * 64,
    "deeply-nested": b"[" * 100_000,
    "a-list": b"[]",
    "null": b"null",
    "a-number": b"42",
    "no-status": b'{"backupRepos": []}',
    "status-is-a-list": b'{"status": []}',
    "status-is-a-string": b'{"status": "ok"}',
    "backup-repos-not-a-list": b'{"status": {"backupRepos": {"0": {}}}}',
    "entry-not-an-object": b'{"status": {"backupRepos": ["entry"]}}',
    "entry-missing-fields": b'{"status": {"backupRepos": [{"type": "Volumes"}]}}',
    "count-of-wrong-type": json.dumps(
        {"status": {"backupRepos": [{**GOOD_ENTRY, "backupCount": "many"}]}}
    ).encode(),
    "time-of-wrong-type": json.dumps(
        {"status": {"backupRepos": [{**GOOD_ENTRY, "lastBackupTime": [1, 2]}]}}
    ).encode(),
    "unknown-field": json.dumps({"status": {"backupRepos": [], "rogue": 1}}).encode(),
    "a-recovery-status": json.dumps({"status": {"phase": "Succeeded", "stats": []}}).encode(),
}
RECOVERY_HOSTILE = {
    "empty": b"",
    "truncated-json": b'{"status": {"phase": "Succ',
    "phase-unknown": b'{"status": {"phase": "Exploded"}}',
    "stats-not-a-list": b'{"status": {"phase": "Running", "stats": "all"}}',
    "a-repository-status": b'{"status": {"backupRepos": []}}',
}


def target(restic: str, repository: str = "repo") -> TargetRef:
    return TargetRef(
        type="Volumes",
        target="deployment.app",
        repository_namespace=NS,
        repository_name=repository,
        restic_namespace=NS,
        restic_name=restic,
        repo_dir="/volumes/deployment/app",
        workload_kind="Deployment",
        workload_name="app",
    )


def ok(snapshot: str = "abc123") -> BackupOutcome:
    return BackupOutcome(True, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), 2.5, (snapshot,), 1)


def aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.bad-*"))


@pytest.fixture
def store(tmp_path: Path) -> LocalStatusStore:
    """A store holding a good Repository (``other``) and a good Recovery next to the
    one that will be corrupted."""
    store = LocalStatusStore(tmp_path / "state")
    store.record_backup(target("r-other", "other"), ok("other1"))
    store.record_recovery(NS, "restored", RecoveryStatus(phase="Succeeded"))
    return store


def neighbours(store: LocalStatusStore) -> dict[Path, tuple[bytes, int]]:
    files = [store.repository_file(NS, "other"), store.recovery_file(NS, "restored")]
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


# ------------------------------------------------------------- the next run


@pytest.mark.parametrize("name", list(HOSTILE))
def test_backup_keeps_a_bad_repository_file_aside_and_records_afresh(
    name: str, store: LocalStatusStore, caplog: pytest.LogCaptureFixture
) -> None:
    path = store.repository_file(NS, "repo")
    path.write_bytes(HOSTILE[name])
    before = neighbours(store)
    with pytest.raises(BadStatusFile) as info:  # read alone, it is named, not guessed at
        store.repository_status(NS, "repo")
    assert str(path) in str(info.value)

    with caplog.at_level(logging.WARNING, logger="stash_plugin.runtime.status"):
        entry = store.record_backup(target("r"), ok())

    assert entry.backup_count == 1 and entry.last_snapshot_id == "abc123"
    status = store.repository_status(NS, "repo")
    assert [e.restic_name for e in status.backup_repos] == ["r"]
    [kept] = aside(path)
    assert kept.read_bytes() == HOSTILE[name]
    assert str(path) in caplog.text and str(kept) in caplog.text
    assert neighbours(store) == before  # other objects' files untouched


def test_a_status_folder_in_place_of_the_file_is_moved_aside(store: LocalStatusStore) -> None:
    path = store.repository_file(NS, "repo")
    (path / "inside").mkdir(parents=True)
    store.record_backup(target("r"), ok())
    assert store.repository_status(NS, "repo").backup_repos[0].backup_count == 1
    [kept] = aside(path)
    assert (kept / "inside").is_dir()


def test_a_second_run_builds_on_the_fresh_entry(store: LocalStatusStore) -> None:
    path = store.repository_file(NS, "repo")
    path.write_bytes(b"{oops")
    store.record_backup(target("r"), ok("one"))
    store.record_backup(target("r"), ok("two"))
    [entry] = store.repository_status(NS, "repo").backup_repos
    assert (entry.backup_count, entry.last_snapshot_id) == (2, "two")
    assert len(aside(path)) == 1  # the good file is not set aside again


@pytest.mark.parametrize("name", list(RECOVERY_HOSTILE))
def test_recovery_keeps_a_bad_file_aside_and_records_afresh(
    name: str, store: LocalStatusStore
) -> None:
    path = store.recovery_file(NS, "restore")
    path.write_bytes(RECOVERY_HOSTILE[name])
    before = neighbours(store)
    with pytest.raises(BadStatusFile):
        store.recovery_status(NS, "restore")
    running = RecoveryStatus(phase="Running", stats=[RecoveryPathStats(path="/d", phase="Running")])
    store.record_recovery(NS, "restore", running)
    assert store.recovery_status(NS, "restore") == running
    [kept] = aside(path)
    assert kept.read_bytes() == RECOVERY_HOSTILE[name]
    assert neighbours(store) == before


# ------------------------------------------------------------- stash status


def test_stash_status_shows_every_good_object_and_names_each_bad_file(
    store: LocalStatusStore, capsys: pytest.CaptureFixture[str]
) -> None:
    repo_file = store.repository_file(NS, "repo")
    repo_file.write_bytes(HOSTILE["backup-repos-not-a-list"])
    broken_recovery = store.recovery_file("other-ns", "broken")
    broken_recovery.parent.mkdir(parents=True)
    broken_recovery.write_bytes(b"")
    args = ["status", "--state-dir", str(store.state_dir)]

    assert main(args) == 1
    out, err = capsys.readouterr()
    assert "Repository demo/other" in out and "(demo/r-other)" in out
    assert "Recovery demo/restored\n  phase Succeeded" in out
    errors = err.splitlines()
    assert len(errors) == 2, err
    assert errors[0].startswith(f"error: Repository demo/repo: status file {repo_file}: ")
    assert "status.backupRepos" in errors[0]
    assert errors[1].startswith(f"error: Recovery other-ns/broken: status file {broken_recovery}")
    assert "empty" in errors[1]

    assert main([*args, "--json"]) == 1
    out, err = capsys.readouterr()
    assert set(json.loads(out)) == {"Repository demo/other", "Recovery demo/restored"}
    assert len(err.splitlines()) == 2

    # The next runs keep the bad files aside: status is whole again, exit 0.
    store.record_backup(target("r"), ok())
    store.record_recovery("other-ns", "broken", RecoveryStatus())
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "Repository demo/repo" in out and "Recovery other-ns/broken" in out


@pytest.mark.parametrize("name", ["entry-missing-fields", "count-of-wrong-type", "deeply-nested"])
def test_stash_status_does_not_crash_on_a_wrong_shape(
    name: str, store: LocalStatusStore, capsys: pytest.CaptureFixture[str]
) -> None:
    store.repository_file(NS, "repo").write_bytes(HOSTILE[name])
    assert main(["status", "--state-dir", str(store.state_dir)]) == 1
    out, err = capsys.readouterr()
    assert "Repository demo/other" in out
    assert err.startswith("error: Repository demo/repo: status file ")


def test_stash_status_on_an_empty_state_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--state-dir", str(tmp_path)]) == 0
    assert f"no status recorded yet under {tmp_path}" in capsys.readouterr().out


# ------------------------------------------------------------- file modes


@pytest.fixture
def strict_umask() -> Iterator[None]:
    old = os.umask(0o077)  # a hardened service account: the group would be locked out
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_status_files_and_folders_are_readable_by_the_group(
    tmp_path: Path, strict_umask: None
) -> None:
    store = LocalStatusStore(tmp_path / "state")
    store.record_backup(target("r"), ok())
    store.record_recovery(NS, "restore", RecoveryStatus())
    for path in (store.repository_file(NS, "repo"), store.recovery_file(NS, "restore")):
        assert mode(path) == 0o640, path
        for folder in (path.parent, path.parent.parent, store.state_dir):
            assert mode(folder) == 0o750, folder


def test_an_older_0600_file_becomes_group_readable_and_admin_folders_stay(
    tmp_path: Path, strict_umask: None
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o2770)  # the administrator's own choice: setgid, group-writable
    os.chmod(state, 0o2770)
    store = LocalStatusStore(state)
    path = store.repository_file(NS, "repo")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"status": {"backupRepos": [GOOD_ENTRY]}}))
    os.chmod(path, 0o600)
    store.record_backup(target("r"), ok())
    assert mode(path) == 0o640
    assert mode(state) == 0o2770


# ------------------------------------------------------------- a real DAG run


@pytest.mark.slow
def test_dag_run_over_a_corrupt_status_file_ends_with_a_good_status(
    stash_env: dict[str, Path],
    airflow_db: None,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from stash_plugin.factory import build_dags
    from stash_plugin.settings import load_settings

    root, state = stash_env["root"], stash_env["state"]
    (root / "data").mkdir()
    (root / "data" / "file.txt").write_text("precious\n")
    write_manifests(
        stash_env["manifests"],
        [
            secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
            deployment_doc("app", NS, root / "data"),
            repository_doc(
                "repo",
                NS,
                {"local": {"mountPath": "/repo", "hostPath": {"path": str(root / "backend")}}},
            ),
            restic_doc("app-backup", NS, "repo", "app"),
        ],
    )
    store = LocalStatusStore(state)
    store.record_backup(target("r-other", "other"), ok("other1"))
    other = store.repository_file(NS, "other").read_bytes()
    corrupt = store.repository_file(NS, "repo")
    corrupt.write_bytes(b'{"status": {"backupRepos": {"not": "a list"}}')
    assert main(["status", "--state-dir", str(state)]) == 1
    capsys.readouterr()

    dags, errors = build_dags(load_settings())
    assert errors == [] and set(dags) == {
        "stash-backup.demo.app-backup.deployment.app",
        "stash-maintenance.demo.repo",
    }
    dag = dags["stash-backup.demo.app-backup.deployment.app"]
    with caplog.at_level(logging.WARNING, logger="stash_plugin.runtime.status"):
        refused = run_dag(dag)

    # The bad file may have held this target's backups: with its repository missing,
    # a first backup cannot be told from a lost disk, so nothing is created.
    assert task_states(refused)["backup"] == "failed", task_states(refused)
    assert not (root / "backend").exists()
    [kept] = aside(corrupt)
    [entry] = json.loads(corrupt.read_text())["status"]["backupRepos"]
    assert entry["backupCount"] == 0 and entry["failedBackupCount"] == 1
    assert "whether this target was backed up before is unknown" in entry["lastFailure"]
    assert f"kept aside as {kept}" in entry["lastFailure"] or "unreadable" in entry["lastFailure"]
    assert "new_repository=true" in entry["lastFailure"]
    # The next scheduled run is still refused: the kept-aside file is the evidence.
    assert task_states(run_dag(dag))["backup"] == "failed"

    run = run_dag(dag, conf={"new_repository": True})
    assert set(task_states(run).values()) == {"success"}, task_states(run)
    [entry] = json.loads(corrupt.read_text())["status"]["backupRepos"]
    assert entry["resticName"] == "app-backup" and entry["backupCount"] == 1
    assert entry["lastSnapshotId"]
    assert aside(corrupt) == [kept]
    assert kept.read_bytes() == b'{"status": {"backupRepos": {"not": "a list"}}'
    assert f"kept aside as {kept}" in caplog.text
    assert store.repository_file(NS, "other").read_bytes() == other
    assert mode(corrupt) == 0o640

    assert main(["status", "--state-dir", str(state)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "Repository demo/repo" in out and "Repository demo/other" in out
