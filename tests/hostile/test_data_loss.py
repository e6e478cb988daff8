"""Never a green run that lost data: whole DAG runs on the local runtime, real restic.

Each test is one way a scheduled backup or a restore can quietly lose data: a
repository that vanished between two backups (an unmounted disk), a source that was
emptied or shrank, a source or restore target that is a symbolic link, and a restore
killed part way.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from stashtest import (
    PASSWORD,
    build_dag,
    deployment_doc,
    make_tree,
    recovery_doc,
    repository_doc,
    restic_doc,
    restic_snapshots,
    run_dag,
    secret_doc,
    task_states,
    tree_state,
    write_manifests,
    xcom,
)

pytestmark = pytest.mark.slow
NS = "demo"
BACKUP_DAG = "stash-backup.demo.app-backup.deployment.app"
REPO_DIR = "volumes/deployment/app"
BACKUP_TASKS = ("backup", "retention", "verify", "update_status")


def docs(
    source: Path, repo_root: Path, policy: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    return [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        deployment_doc("app", NS, source),
        repository_doc(
            "repo", NS, {"local": {"mountPath": "/repo", "hostPath": {"path": str(repo_root)}}}
        ),
        restic_doc("app-backup", NS, "repo", "app", policy=policy or {"keepLast": 5}),
    ]


def entry(state: Path) -> dict[str, Any]:
    status = json.loads((state / "repositories" / NS / "repo.json").read_text())["status"]
    (only,) = status["backupRepos"]
    return only  # type: ignore[no-any-return]


def backup(expect: str = "success", conf: dict[str, Any] | None = None) -> Any:
    run = run_dag(build_dag(BACKUP_DAG), conf)
    states = task_states(run)
    assert states["backup"] == "success", states
    assert states["update_status"] == expect, states
    return run


def snapshot_tags(repo: Path) -> dict[str, list[str]]:
    return {s["short_id"]: s.get("tags") or [] for s in restic_snapshots(repo)}


def test_a_repository_moved_away_fails_the_next_backup_and_keeps_the_history(
    tmp_path: Path, airflow_db: None, stash_env: dict[str, Path]
) -> None:
    source = make_tree(tmp_path / "source", seed=3, small_files=40)
    repo_root = tmp_path / "disk"
    repo = repo_root / REPO_DIR
    write_manifests(stash_env["manifests"], docs(source, repo_root))
    backup()
    before = entry(stash_env["state"])
    assert before["backupCount"] == 1

    # The disk is not mounted any more: the repository folder is gone.
    shutil.move(repo_root, tmp_path / "disk-elsewhere")
    run = run_dag(build_dag(BACKUP_DAG))
    states = task_states(run)
    assert states["backup"] == "failed" and states["update_status"] == "failed", states
    assert not repo_root.exists(), "no new repository was created in place of the old one"
    after = entry(stash_env["state"])
    assert (
        f"repository {repo} is missing but this target has 1 backups on record; not creating "
        "a new one (an unmounted disk or a wrong bucket?)"
    ) in after["lastFailure"]
    for key in ("backupCount", "lastBackupTime", "lastSnapshotId", "snapshotCount"):
        assert after[key] == before[key], key
    assert after["failedBackupCount"] == 1

    # Starting afresh on purpose is a manual run's explicit choice.
    backup(conf={"new_repository": True})
    assert len(restic_snapshots(repo)) == 1
    assert entry(stash_env["state"])["backupCount"] == 2


def test_an_emptied_or_shrunk_source_is_flagged_and_retention_keeps_what_came_before(
    tmp_path: Path,
    airflow_db: None,
    stash_env: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = make_tree(tmp_path / "source", seed=4, small_files=200)
    repo = tmp_path / "disk" / REPO_DIR
    # keepLast 1: without the protection every run would leave only its own snapshot.
    write_manifests(
        stash_env["manifests"], docs(source, tmp_path / "disk", {"keepLast": 1, "prune": True})
    )
    first = xcom(backup(), "backup")["backups"][0]["snapshot_id"]
    assert "sourceDrop" not in entry(stash_env["state"])

    # 1. Most of the files vanish: the backup is made and counted, the run is red
    #    ([stash] shrink_action = fail, the default), the snapshot before it is kept.
    shutil.rmtree(source / "small")
    run = backup(expect="failed")
    made = xcom(run, "backup")["backups"][0]
    assert "shrank from" in made["source_drop"] and "files" in made["source_drop"]
    status = entry(stash_env["state"])
    assert status["backupCount"] == 2 and status["lastSnapshotId"] == made["snapshot_id"]
    assert status["sourceDrop"].startswith("/source/data: the source shrank from")
    assert status["lastFailure"].startswith("backup: flagged: /source/data: the source shrank")
    (kept,) = made["kept_before_drop"]
    assert f"kept {kept} from before it (tag stash-before-drop)" in status["sourceDrop"]
    tags = snapshot_tags(repo)
    assert set(tags) == {kept, made["snapshot_id"]}, "retention removed nothing"
    assert "stash-before-drop" in tags[kept]
    # The kept snapshot is the first backup (restic gave it a new id with the tag).
    assert len(restic_snapshots(repo)) == 2 and kept != first

    # 2. The next backup of the same (smaller) source is normal again: green, flag
    #    cleared, and retention trims only the unprotected snapshots.
    third = xcom(backup(), "backup")["backups"][0]
    assert third["source_drop"] is None
    status = entry(stash_env["state"])
    assert "sourceDrop" not in status and "sourceDropTime" in status
    assert set(snapshot_tags(repo)) == {kept, third["snapshot_id"]}

    # 3. An emptied source with shrink_action = warn: a green run, flagged in the
    #    status, and the snapshot before it is kept as well.
    for child in source.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    monkeypatch.setenv("AIRFLOW__STASH__SHRINK_ACTION", "warn")
    empty = xcom(backup(), "backup")["backups"][0]
    assert empty["source_drop"] == "the source is empty (no files)"
    status = entry(stash_env["state"])
    assert status["sourceDrop"].startswith("/source/data: the source is empty (no files)")
    assert status["backupCount"] == 4 and status["failedBackupCount"] == 1
    tags = snapshot_tags(repo)
    assert len(tags) == 3 and empty["snapshot_id"] in tags
    assert sum("stash-before-drop" in t for t in tags.values()) == 2


def test_a_linked_source_is_backed_up_as_its_folder_and_a_linked_target_restored_through(
    tmp_path: Path, airflow_db: None, stash_env: dict[str, Path]
) -> None:
    real = make_tree(tmp_path / "releases" / "v2", seed=5, small_files=30)
    link = tmp_path / "current"
    link.symlink_to(real)  # the hostPath is a link, as a deploy tool leaves it
    repo_root = tmp_path / "disk"
    write_manifests(stash_env["manifests"], docs(link, repo_root))
    made = xcom(backup(), "backup")["backups"][0]
    assert made["total_files_processed"] >= 30 and made["source_drop"] is None
    (snap,) = restic_snapshots(repo_root / REPO_DIR)
    assert "path=/source/data" in snap["tags"]

    volume = tmp_path / "restore-volume"
    volume.mkdir()
    target = tmp_path / "restore-link"
    target.symlink_to(volume)
    write_manifests(
        stash_env["manifests"],
        docs(link, repo_root) + [recovery_doc("back", NS, "repo", target)],
    )
    run = run_dag(build_dag("stash-recovery.demo.back"))
    assert task_states(run) == {"restore": "success", "update_status": "success"}
    assert target.is_symlink() and os.readlink(target) == str(volume), "the link stays"
    assert tree_state(volume) == tree_state(real)


# ----------------------------------------------------------------------------- killed restore


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry_ in Path("/proc").iterdir():
        if not entry_.name.isdigit():
            continue
        try:
            stat_line = (entry_ / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat_line.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(entry_.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def _descendants(pid: int) -> list[int]:
    children, out, todo = _children(), [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_restore_when(ready: Any, stop: threading.Event) -> threading.Thread:
    """SIGKILL the restoring agent of this test process and everything it started (as
    a node does to a pod) as soon as ``ready()``; runs beside the DAG run."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            agents = [
                p for p in _descendants(os.getpid()) if "stash_plugin.agent restore" in _cmdline(p)
            ]
            if agents and ready():
                for pid in agents:
                    for victim in [pid, *_descendants(pid)]:
                        try:
                            os.kill(victim, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_restore_killed_part_way_leaves_nothing_inside_the_target(
    tmp_path: Path,
    airflow_db: None,
    stash_env: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = make_tree(tmp_path / "source", seed=6, small_files=60)
    repo_root = tmp_path / "disk"
    volume = tmp_path / "volume"
    volume.mkdir()  # an empty, mounted volume waiting for its data
    write_manifests(
        stash_env["manifests"],
        docs(source, repo_root) + [recovery_doc("back", NS, "repo", volume)],
    )
    backup()

    # restic finishes writing, then the step hangs before the data is moved into place.
    slow = tmp_path / "slow-restic"
    slow.write_text(
        '#!/bin/sh\nrestic "$@"; code=$?\n[ "$1" = restore ] && sleep 300\nexit $code\n'
    )
    slow.chmod(0o755)
    monkeypatch.setenv("STASH_RESTIC_BINARY", str(slow))

    def staged() -> list[Path]:
        """Staging folders holding restored data, wherever the agent put them."""
        found = [*tmp_path.glob(".stash-restore-*"), *volume.glob(".stash-restore-*")]
        return [p for p in found if any(p.rglob("exec.sh"))]

    stop = threading.Event()
    watcher = kill_restore_when(lambda: bool(staged()), stop)
    try:
        killed = run_dag(build_dag("stash-recovery.demo.back"))
    finally:
        stop.set()
        watcher.join()
    assert task_states(killed) == {"restore": "failed", "update_status": "failed"}
    assert staged(), "the agent was killed after restic had written the data"
    assert list(volume.iterdir()) == [], "nothing at all inside the target"
    status = json.loads((stash_env["state"] / "recoveries" / NS / "back.json").read_text())
    assert status["status"]["phase"] == "Failed"

    # The next try removes what the killed one left and restores completely.
    monkeypatch.delenv("STASH_RESTIC_BINARY")
    again = run_dag(build_dag("stash-recovery.demo.back"))
    assert task_states(again) == {"restore": "success", "update_status": "success"}
    assert tree_state(volume) == tree_state(source)
    assert list(tmp_path.glob(".stash-restore-*")) == []
