"""``stash-agent`` against real restic: repository creation, locks, REST credentials."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stash_plugin.protocol import SEPARATOR

AGENT = [sys.executable, "-m", "stash_plugin.agent"]


def agent(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENT, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def repo(tmp_path: Path) -> dict[str, str]:
    return {
        "RESTIC_REPOSITORY": str(tmp_path / "repo"),
        "RESTIC_PASSWORD": "agent-test-password",
        "STASH_RESULT_FILE": str(tmp_path / "result.json"),
    }


def backup_args(path: Path) -> list[str]:
    return [
        f"--within={path}",
        SEPARATOR,
        "/data",
        "restic",
        "backup",
        "--json",
        "--quiet",
        "--host=h",
        "--tag=path=/data",
        "--",
        str(path),
    ]


@pytest.mark.slow
def test_creates_repository_once_and_never_over_a_wrong_password(
    repo: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    first = agent(repo, "run", "--init", *backup_args(data))
    assert first.returncode == 0, first.stderr
    assert "initialising it" in first.stderr
    result = json.loads(Path(repo["STASH_RESULT_FILE"]).read_text())
    assert result["backups"][0]["path"] == "/data" and result["backups"][0]["files_new"] == 1
    config = Path(repo["RESTIC_REPOSITORY"], "config").read_bytes()

    again = agent(repo, "run", "--init", *backup_args(data))
    assert again.returncode == 0 and "initialising" not in again.stderr

    wrong = agent({**repo, "RESTIC_PASSWORD": "nope"}, "run", "--init", *backup_args(data))
    assert wrong.returncode == 1
    assert "error: wrong repository password" in wrong.stderr
    assert Path(repo["RESTIC_REPOSITORY"], "config").read_bytes() == config


def _hold_lock(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``restic backup --stdin`` keeps its lock while it waits for input."""
    proc = subprocess.Popen(
        ["restic", "backup", "--stdin", "--stdin-filename=held", "--host=holder"],
        env={**os.environ, **env},
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    locks = Path(env["RESTIC_REPOSITORY"], "locks")
    deadline = time.monotonic() + 30
    while not any(locks.iterdir()):
        assert time.monotonic() < deadline, "restic never took its lock"
        time.sleep(0.1)
    return proc


@pytest.mark.slow
def test_clears_a_stale_lock_and_waits_for_a_live_one(repo: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    assert agent(repo, "run", "--init", *backup_args(data)).returncode == 0
    forget = [SEPARATOR, "/data", "restic", "forget", "--json", "--keep-last=1", "--prune"]

    # A run killed with SIGKILL leaves its lock behind: the next run clears it.
    killed = _hold_lock(repo)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert any(Path(repo["RESTIC_REPOSITORY"], "locks").iterdir())
    after_kill = agent(repo, "run", "--unlock", "--lock-wait=0", *forget)
    assert after_kill.returncode == 0, after_kill.stderr

    # A live lock is waited for, not broken.
    live = _hold_lock(repo)
    waiting = subprocess.Popen(
        [*AGENT, "run", "--unlock", "--lock-wait=60", *forget],
        env={**os.environ, **repo},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(4)
    assert waiting.poll() is None, "the agent did not wait for the live lock"
    assert live.poll() is None, "the live run was disturbed"
    assert live.stdin is not None
    live.stdin.write(b"late data")
    live.stdin.close()
    assert live.wait(timeout=30) == 0
    out, err = waiting.communicate(timeout=90)
    assert waiting.returncode == 0, err
    assert "locked by another run; waiting" in err


def _hold_lock_as(env: dict[str, str], host: str) -> subprocess.Popen[bytes]:
    """A restic run holding a lock under ``host``, as a process in a pod of that name
    (its own UTS namespace: restic writes ``os.Hostname()`` into the lock)."""
    before = _lock_hosts(env)
    script = 'printf %s "$0" > /proc/sys/kernel/hostname && exec restic "$@"'
    proc = subprocess.Popen(
        ["unshare", "--uts", "sh", "-c", script, host, "backup", "--stdin", "--host=holder"],
        env={**os.environ, **env},
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:  # a lock restic can read (its file is written to a temp name first)
        try:
            if _lock_hosts(env) == sorted([*before, host]):
                return proc
        except subprocess.CalledProcessError:
            pass
        assert proc.poll() is None, "restic in a UTS namespace failed (needs root)"
        assert time.monotonic() < deadline, "restic never took its lock"
        time.sleep(0.1)


def _killed(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _lock_hosts(env: dict[str, str]) -> list[str]:
    hosts = []
    for lock in Path(env["RESTIC_REPOSITORY"], "locks").iterdir():
        if "-tmp-" in lock.name:  # being written
            continue
        shown = subprocess.run(
            ["restic", "cat", "lock", lock.name, "--no-lock"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        )
        hosts.append(json.loads(shown.stdout)["hostname"])
    return sorted(hosts)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root")
def test_removes_locks_of_deleted_agent_pods_never_of_live_ones(
    repo: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    assert agent(repo, "run", "--init", *backup_args(data)).returncode == 0
    forget = [SEPARATOR, "/data", "restic", "forget", "--json", "--keep-last=1", "--prune"]

    def pods(live: str, before: float | None = None) -> dict[str, str]:
        return {
            **repo,
            "STASH_LIVE_AGENT_PODS": live,
            "STASH_AGENT_POD_PREFIX": "stash-",
            "STASH_DEAD_LOCK_BEFORE": str(time.time() if before is None else before),
        }

    # The pod of a killed run is gone: its lock goes at once (restic would keep it 30 min).
    _killed(_hold_lock_as(repo, "stash-backup-dead0001"))
    live = _hold_lock_as(repo, "stash-backup-live0001")
    assert _lock_hosts(repo) == ["stash-backup-dead0001", "stash-backup-live0001"]

    # ... but not while a listed pod holds a lock: nothing is removed, the run gives up.
    blocked = agent(pods("stash-backup-live0001,stash-verify-x"), "run", "--lock-wait=0", *forget)
    assert blocked.returncode == 1 and "held by a live run (stash-backup-live0001" in blocked.stderr
    assert _lock_hosts(repo) == ["stash-backup-dead0001", "stash-backup-live0001"]
    assert live.poll() is None
    assert live.stdin is not None
    live.stdin.write(b"late data")
    live.stdin.close()
    assert live.wait(timeout=30) == 0

    cleared = agent(pods("stash-backup-live0001"), "run", "--lock-wait=0", *forget)
    assert cleared.returncode == 0, cleared.stderr
    assert "removed 1 lock(s) left by agent pods that no longer exist: stash-backup-dead0001" in (
        cleared.stderr
    )
    assert _lock_hosts(repo) == []

    # A lock newer than the pod listing may be a pod the listing missed; one of a host
    # that is no agent pod (a workstation) is left to restic's own rule. Both stay.
    _killed(_hold_lock_as(repo, "stash-backup-new0001"))
    listed_earlier = agent(pods("", time.time() - 60), "run", "--lock-wait=0", *forget)
    assert listed_earlier.returncode == 1
    _killed(_hold_lock_as(repo, "workstation"))
    kept = agent(pods(""), "run", "--unlock", "--lock-wait=0", *forget)
    assert kept.returncode == 1 and "held by a live run (workstation)" in kept.stderr
    assert _lock_hosts(repo) == ["stash-backup-new0001", "workstation"]

    # Without the operator's list (the local runtime) nothing but restic's rule applies.
    _killed(_hold_lock_as(repo, "stash-backup-dead0002"))
    alone = agent(repo, "run", "--lock-wait=0", *forget)
    assert alone.returncode == 1 and "held by a live run" not in alone.stderr
    assert len(_lock_hosts(repo)) == 3


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("2026-11-25T10:26:39.449655317Z", 1795602399.449655),
        ("2026-11-25T11:26:39.4+01:00", 1795602399.4),
        ("2026-11-25T10:26:39Z", 1795602399.0),
        ("yesterday", None),
    ],
)
def test_lock_time_reads_what_restic_writes(written: str, expected: float | None) -> None:
    from stash_plugin.agent import _lock_time

    assert _lock_time({"time": written}) == (
        pytest.approx(expected) if expected is not None else None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_rest_credentials_come_from_the_environment(repo: dict[str, str], tmp_path: Path) -> None:
    port = _free_port()
    server = subprocess.Popen(
        [
            "rclone",
            "serve",
            "restic",
            f"--addr=127.0.0.1:{port}",
            "--user=stash",
            "--pass=rest-pass-123",
            str(tmp_path / "rest"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        data = tmp_path / "data"
        data.mkdir()
        (data / "f").write_text("x")
        env = {**repo, "RESTIC_REPOSITORY": f"rest:http://127.0.0.1:{port}/volumes/x"}
        denied = agent(env, "run", "--init", *backup_args(data))
        assert denied.returncode == 1
        creds = {"RESTIC_REST_USERNAME": "stash", "RESTIC_REST_PASSWORD": "rest-pass-123"}
        ok = agent({**env, **creds}, "run", "--init", *backup_args(data))
        assert ok.returncode == 0, ok.stderr
        assert "rest-pass-123" not in ok.stderr + ok.stdout
        assert (tmp_path / "rest" / "volumes" / "x" / "config").exists()
    finally:
        server.terminate()
        server.wait(timeout=10)


def _records(env: dict[str, str]) -> list[dict[str, object]]:
    listed = subprocess.run(
        ["restic", "snapshots", "--json", "--tag=stash-repository"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return list(json.loads(listed.stdout))


@pytest.mark.slow
def test_the_repository_record_is_written_when_it_changed_and_is_never_a_backup(
    repo: dict[str, str], tmp_path: Path
) -> None:
    """The record is stored after a good backup, not again while the status says it is
    stored, replaced when the object changes; ``latest`` and an explicit id never
    restore it, and it holds no secret."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    record = '{"kind":"Repository","metadata":{"name":"r"}}'
    env = {**repo, "STASH_REPOSITORY_RECORD": record}
    first = agent(env, "run", "--init", *backup_args(data))
    assert first.returncode == 0, first.stderr
    digest = json.loads(Path(repo["STASH_RESULT_FILE"]).read_text())["record_digest"]
    (stored,) = _records(repo)
    guard = json.dumps({"backups_on_record": 1, "record_stored": digest})
    same = agent({**env, "STASH_BACKUP_GUARD": guard}, "run", *backup_args(data))
    assert same.returncode == 0 and "kept the Repository object" not in same.stderr
    assert [r["id"] for r in _records(repo)] == [stored["id"]]
    changed = {**env, "STASH_REPOSITORY_RECORD": record.replace('"r"', '"r2"')}
    again = agent({**changed, "STASH_BACKUP_GUARD": guard}, "run", *backup_args(data))
    assert again.returncode == 0 and "kept the Repository object" in again.stderr
    (newer,) = _records(repo)  # the older record is forgotten
    assert newer["id"] != stored["id"]
    assert repo["RESTIC_PASSWORD"] not in json.dumps(newer)

    target = tmp_path / "restored"
    restore = ["restore", "--mount-path=/data", f"--target={target}"]
    latest = agent(repo, *restore)
    assert latest.returncode == 0, latest.stderr
    assert (target / "f").read_text() == "x"
    by_id = agent(repo, *restore, f"--snapshot={newer['short_id']}", "--overwrite")
    assert by_id.returncode == 1
    assert "record of the Repository object" in by_id.stderr


def _restore_if_empty(repo: dict[str, str], target: Path) -> subprocess.CompletedProcess[str]:
    return agent(
        repo,
        "restore",
        "--if-empty",
        "--tag=path=/data",
        "--mount-path=/data",
        f"--target={target}",
    )


def test_restore_if_empty_skips_when_there_is_nothing_to_restore_yet(
    repo: dict[str, str], tmp_path: Path
) -> None:
    """A new workload with restore-if-empty and no backup yet: skipped, not failed, and
    a target that holds data is skipped before the repository is even opened."""
    target = tmp_path / "target"
    target.mkdir()
    done = _restore_if_empty(repo, target)
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(Path(repo["STASH_RESULT_FILE"]).read_text())["restores"]
    assert result["skipped"].startswith("no snapshot to restore")
    assert "no repository at the location" in result["skipped"]
    assert not Path(repo["RESTIC_REPOSITORY"]).exists()  # never created by a restore

    (target / "kept.txt").write_text("mine\n")
    wrong = {**repo, "RESTIC_PASSWORD": "not the password", "RESTIC_REPOSITORY": "/nonexistent"}
    done = _restore_if_empty(wrong, target)
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(Path(repo["STASH_RESULT_FILE"]).read_text())["restores"]
    assert result["skipped"] == "not empty"
    assert (target / "kept.txt").read_text() == "mine\n"


def test_restore_if_empty_refuses_overwrite(repo: dict[str, str], tmp_path: Path) -> None:
    done = agent(
        repo, "restore", "--if-empty", "--overwrite", "--mount-path=/data", f"--target={tmp_path}"
    )
    assert done.returncode == 1 and "--if-empty never writes over data" in done.stderr


@pytest.mark.slow
def test_two_retention_runs_on_one_repository_take_turns(
    repo: dict[str, str], tmp_path: Path
) -> None:
    """forget --prune takes restic's exclusive lock: a second retention of the same
    repository started at the same moment waits for it (jittered, so two runs refused
    by each other's lock do not retry in step) instead of failing or racing it."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        (data / f"f{i}").write_bytes(os.urandom(200_000))
        assert agent(repo, "run", "--init", *backup_args(data)).returncode == 0
    forget = [SEPARATOR, "/data", "restic", "forget", "--json", "--host=h", "--keep-last=1"]
    results = [tmp_path / "first.json", tmp_path / "second.json"]
    runs = [
        subprocess.Popen(
            [*AGENT, "run", "--unlock", "--lock-wait=120", *forget, "--prune"],
            env={**os.environ, **repo, "STASH_RESULT_FILE": str(result)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for result in results
    ]
    outputs = [run.communicate(timeout=180) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-800:] for _, err in outputs]
    # One of them met the other's exclusive lock, and still did its work after it.
    assert any("already locked" in err for _, err in outputs), outputs
    forgets = [json.loads(r.read_text())["forgets"][0] for r in results]
    assert sorted(f["removed"] for f in forgets) == [0, 3]  # one removed, one found nothing
    assert all(f["kept"] == 1 for f in forgets)
    env = {**os.environ, **repo}
    check = subprocess.run(["restic", "check"], env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    listed = subprocess.run(
        ["restic", "snapshots", "--json"], env=env, capture_output=True, text=True, check=True
    )
    assert len(json.loads(listed.stdout)) == 1
