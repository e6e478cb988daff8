"""Faults: a killed backup, a disk that fills during a restore, backups racing a prune.

Real restic throughout; the agent is driven the way both runtimes drive it (argv
and environment only).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from stashtest import PASSWORD, make_tree, tree_state

from stash_plugin.api.common import RetentionPolicy
from stash_plugin.plan.restic import agent_run, backup_args, forget_args

pytestmark = pytest.mark.slow
AGENT = [sys.executable, "-m", "stash_plugin.agent"]


def env_for(repo: Path, result: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": PASSWORD}
    if result is not None:
        env["STASH_RESULT_FILE"] = str(result)
    return env


def agent(
    argv: tuple[str, ...] | list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGENT, *argv[1:]], env=env, capture_output=True, text=True, timeout=300)


def restic_json(repo: Path, *args: str) -> Any:
    out = subprocess.run(
        ["restic", *args, "--json"], env=env_for(repo), capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def tags(target: str) -> list[str]:
    return ["namespace=demo", f"restic=r-{target}", f"target={target}", "path=/source/data"]


def _become_subreaper() -> None:
    """Orphans of a killed process group become our children, so we can reap them
    (as a node does when a pod dies); otherwise they may linger as zombies that restic
    takes for live lock holders."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_CHILD_SUBREAPER = 36
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _reap_group(pgid: int) -> None:
    while True:
        try:
            os.waitpid(-pgid, 0)
        except ChildProcessError:
            return


def test_a_backup_killed_mid_run_leaves_nothing_the_next_run_cannot_fix(tmp_path: Path) -> None:
    _become_subreaper()
    data = make_tree(tmp_path / "data", seed=11, small_files=4000)
    repo = tmp_path / "repo"
    argv = agent_run(
        [("/source/data", backup_args(str(data), "app", tags("a")))],
        "--init",
        "--unlock",
        f"--within={data}",
    )
    proc = subprocess.Popen(
        [*AGENT, *argv[1:]],
        env=env_for(repo),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    locks = repo / "locks"
    deadline = time.monotonic() + 60
    while not (locks.is_dir() and any(locks.iterdir())):
        assert proc.poll() is None, "the backup finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    _reap_group(proc.pid)
    assert any(locks.iterdir()), "the killed run left its lock"

    again = agent(argv, env_for(repo, tmp_path / "result.json"))
    assert again.returncode == 0, again.stderr
    made = json.loads((tmp_path / "result.json").read_text())["backups"][0]
    assert made["total_files_processed"] >= 4000
    check = subprocess.run(["restic", "check"], env=env_for(repo), capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert [s["short_id"] for s in restic_json(repo, "snapshots")] == [made["snapshot_id"]]


def test_backups_racing_a_prune_lose_nothing(tmp_path: Path) -> None:
    """Two targets share one restic repository; one backs up while the other prunes."""
    data_a = make_tree(tmp_path / "a", seed=1, small_files=300)
    data_b = make_tree(tmp_path / "b", seed=2, small_files=300)
    repo = tmp_path / "repo"
    keep2 = RetentionPolicy(name="k", keep_last=2, prune=True)
    backup_a = agent_run(
        [("/source/data", backup_args(str(data_a), "a", tags("a")))],
        "--init",
        "--unlock",
        f"--within={data_a}",
    )
    backup_b = agent_run(
        [("/source/data", backup_args(str(data_b), "b", tags("b")))],
        "--init",
        "--unlock",
        f"--within={data_b}",
    )
    prune_b = agent_run([("/source/data", forget_args(keep2, "b", tags("b")))], "--unlock")
    assert agent(backup_a, env_for(repo)).returncode == 0
    results: list[subprocess.CompletedProcess[str]] = []

    def run(argv: tuple[str, ...]) -> None:
        results.append(agent(argv, env_for(repo)))

    for round_ in range(3):
        (data_a / f"round-{round_}.txt").write_text(f"a {round_}\n")
        (data_b / f"round-{round_}.txt").write_text(f"b {round_}\n")
        assert agent(backup_b, env_for(repo)).returncode == 0
        workers = [threading.Thread(target=run, args=(argv,)) for argv in (backup_a, prune_b)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    assert [r.returncode for r in results] == [0] * 6, [r.stderr[-500:] for r in results]
    snaps = restic_json(repo, "snapshots")
    by_host: dict[str, int] = {}
    for s in snaps:
        by_host[s["hostname"]] = by_host.get(s["hostname"], 0) + 1
    assert by_host == {"a": 4, "b": 2}  # every backup of a; b pruned to its policy only
    check = subprocess.run(["restic", "check"], env=env_for(repo), capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)])
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_during_a_restore_fails_clearly_and_leaves_no_partial_target(
    tmp_path: Path, tiny_disk: Path
) -> None:
    data = make_tree(tmp_path / "data", seed=5, small_files=50)  # over 1 MiB of blobs
    repo = tmp_path / "repo"
    argv = agent_run(
        [("/source/data", backup_args(str(data), "app", tags("a")))], "--init", f"--within={data}"
    )
    assert agent(argv, env_for(repo)).returncode == 0
    target = tiny_disk / "restored"
    target.mkdir()
    (tiny_disk / "filler").write_bytes(b"\0" * 1024)
    restore = [
        "stash-agent",
        "restore",
        "--snapshot=latest",
        "--mount-path=/source/data",
        f"--target={target}",
    ]
    failed = agent(restore, env_for(repo, tmp_path / "result.json"))
    assert failed.returncode == 1
    assert "stash-agent: error: restore of /source/data failed" in failed.stderr
    assert not (tmp_path / "result.json").exists(), "no result is reported for a failed restore"
    assert list(target.iterdir()) == [], "nothing half-restored is left in the target"
    # With room, the same restore succeeds and is complete.
    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)
    ok = agent(restore, env_for(repo))
    assert ok.returncode == 0, ok.stderr
    assert tree_state(target) == tree_state(data)
