"""``stash-agent``: the program every backup and recovery step runs, as a process or a pod.

It wraps restic with what a scheduled, unattended run needs and restic alone does not
do: create the repository on first use (but never over a wrong password, and never for
a target that has backups on record: that repository went missing), clear stale locks
left by a killed run while waiting for live ones, follow a linked source folder within
its volume, flag a backup of an empty or sharply shrunk source and protect the
snapshots before it from retention, turn restic's JSON into one result document, and
restore through a staging folder outside the target so that a failed or killed restore
never leaves anything in it.

The result (records of ``stash_plugin.protocol``) goes to ``$STASH_RESULT_FILE``
(local runtime) and, in a pod, to the container's termination message, which the
operator reads from the pod's status. Only the standard library is used, so the agent
image needs nothing of Airflow.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import json
import os
import posixpath
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

from stash_plugin.clusterdump import (
    Applier,
    ClusterError,
    Kube,
    Selection,
    dump,
    parse_resource,
    read_tree,
)
from stash_plugin.credentials import credential_files, tls_problem
from stash_plugin.databases import (
    Database,
    DatabaseError,
    ProcessSource,
    Source,
    StdinSource,
    complete_marker,
    database_from_env,
    engine_for,
    read_chunks,
    stop_process,
    write_all,
)
from stash_plugin.protocol import (
    BEFORE_DROP_TAG,
    END_OF_OPTIONS,
    ENGINES,
    ENV_AGENT_POD_PREFIX,
    ENV_BACKUP_GUARD,
    ENV_DEAD_LOCK_BEFORE,
    ENV_LIVE_AGENT_PODS,
    ENV_LOCK_WAIT,
    ENV_PASSWORD,
    ENV_REPOSITORY,
    ENV_REPOSITORY_RECORD,
    ENV_RESTIC_BINARY,
    ENV_RESULT_FILE,
    ENV_TERMINATION_MESSAGE,
    KEPT_IDS_LIMIT,
    REPOSITORY_RECORD_FILE,
    REPOSITORY_RECORD_TAG,
    SEPARATOR,
    TERMINATION_MESSAGE_LIMIT,
    BackupGuard,
    BackupResult,
    ForgetResult,
    MaintenanceResult,
    RestoreResult,
    RestoreRunResult,
    RunResult,
    SnapshotInfo,
    SnapshotList,
    encode,
    error_line,
    fit_termination_message,
    is_record,
    record_digest,
    source_drop,
    target_key,
)

LOCKED = "repository is already locked"
NO_REPOSITORY = "Is there a repository at the following location?"
WRONG_PASSWORD = "wrong password"


class AgentError(RuntimeError):
    """A failure with a message fit for the task log (never holding a secret)."""


RESTIC_OPTIONS: list[str] = []
"""Global options put before every restic command: ``--cacert=FILE`` when the storage
Secret has ``CA_CERT_DATA`` (set by ``main`` for the run, see ``credentials``)."""


def _restic() -> str:
    return os.environ.get(ENV_RESTIC_BINARY, "restic")


def log(message: str) -> None:
    print(f"stash-agent: {message}", file=sys.stderr, flush=True)


class Interrupted(BaseException):
    """The agent was told to stop (a task timeout, a stopped task, a deleted pod)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


RESTIC_STOP_GRACE = 30.0
"""Seconds restic gets to remove its lock after being interrupted."""


def _run_restic(argv: list[str], given: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run restic with no terminal and no standard input (it must never wait for a
    password or confirmation), or with ``given`` as its whole input. When the agent is
    told to stop, restic gets SIGINT, the one signal on which restic 0.14 removes its
    lock, and some time to do so."""
    proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
        argv,
        stdin=subprocess.DEVNULL if given is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(given)
    except Interrupted:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=RESTIC_STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def restic(
    args: Sequence[str],
    *,
    lock_wait: float = 0.0,
    echo: bool = True,
    clear_dead: bool = True,
    given: str | None = None,
    clear_stale: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run one restic command, waiting (with backoff) while another run holds the lock.

    When a lock is in the way, stale ones are cleared first (``clear_stale``: ``restic
    unlock``, once) and so are the locks of deleted agent pods (``clear_dead_locks``);
    only then is a live lock waited for. Clearing only on a conflict spares every
    unlocked run a key derivation (most of a second). The waits are jittered, so that
    two exclusive commands refused by each other's lock do not retry in step forever.
    """
    rest = args[1:] if args and args[0] == "restic" else args
    argv = [_restic(), *RESTIC_OPTIONS, *rest]
    deadline = time.monotonic() + lock_wait
    delay, clears = 2.0, 0
    while True:
        proc = _run_restic(argv, given)
        if proc.stderr and echo:
            sys.stderr.write(proc.stderr)
            sys.stderr.flush()
        if proc.returncode != 0 and (problem := tls_problem(proc.stderr, bool(RESTIC_OPTIONS))):
            raise AgentError(problem)
        if proc.returncode == 0 or LOCKED not in proc.stderr:
            return proc
        if clear_stale:
            clear_stale = False
            unlock_stale()
            continue
        if clear_dead and clears < 3 and clear_dead_locks():
            clears += 1
            continue
        if time.monotonic() >= deadline:
            return proc
        wait = _jittered(delay, deadline)
        log(f"repository is locked by another run; waiting {wait:.0f}s")
        time.sleep(wait)
        delay = min(delay * 2, 30.0)


def _local_locks() -> bool:
    """Whether a local repository holds any lock file. Free to ask (no key derivation),
    so a killed run's stale lock is cleared before the next run even when nothing of
    that run needs an exclusive lock (a ``restic check`` by hand would trip over it).
    Other backends clear stale locks when one is in the way (``restic``'s
    ``clear_stale``), since only restic itself can list them there."""
    url = os.environ.get(ENV_REPOSITORY, "")
    path = url.removeprefix("local:")
    if not path.startswith("/"):
        return False
    try:
        with os.scandir(os.path.join(path, "locks")) as entries:
            return any(True for _ in entries)
    except OSError:
        return False


def _jittered(delay: float, deadline: float) -> float:
    """``delay`` seconds give or take half, and never past ``deadline``."""
    spread = random.uniform(0.5, 1.5)  # noqa: S311 - spreads retries, no secret involved
    return max(min(delay * spread, deadline - time.monotonic()), 0.1)


def ensure_repository() -> None:
    """Create the repository when, and only when, there is none at the location."""
    probe = restic(["restic", "cat", "config"], echo=False)
    if probe.returncode == 0:
        return
    if WRONG_PASSWORD in probe.stderr:
        raise AgentError("wrong repository password (RESTIC_PASSWORD of the storage Secret)")
    if NO_REPOSITORY not in probe.stderr:
        sys.stderr.write(probe.stderr)
        raise AgentError(f"cannot open the repository (restic exit {probe.returncode})")
    log("no repository at the location yet; initialising it")
    init = restic(["restic", "init"])
    if init.returncode != 0:
        raise AgentError(
            f"cannot reach or create the repository (restic exit {init.returncode}); "
            "check the backend address, bucket and credentials"
        )


def unlock_stale() -> None:
    """``restic unlock`` removes only stale locks (dead process or older than 30 min)."""
    proc = restic(["restic", "unlock"])
    if proc.returncode != 0:
        log(f"could not clear stale locks (restic exit {proc.returncode}); continuing")


def _lock_ids() -> list[str] | None:
    proc = restic(["restic", "list", "locks", "--no-lock"], echo=False, clear_dead=False)
    return sorted(proc.stdout.split()) if proc.returncode == 0 else None


def _lock_time(lock: dict[str, Any]) -> float | None:
    """restic writes Go's RFC 3339 with nanoseconds; Python wants at most microseconds."""
    text = str(lock.get("time", ""))
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _dead_lock_rule() -> tuple[frozenset[str], str, float] | None:
    """The live agent pods, their name prefix and the listing instant, from the operator."""
    live, prefix = os.environ.get(ENV_LIVE_AGENT_PODS), os.environ.get(ENV_AGENT_POD_PREFIX)
    try:
        before = float(os.environ.get(ENV_DEAD_LOCK_BEFORE, ""))
    except ValueError:
        return None
    if live is None or not prefix:
        return None
    return frozenset(n for n in live.split(",") if n), prefix, before


def _is_dead(lock: dict[str, Any], live: frozenset[str], prefix: str, before: float) -> bool:
    host, created = str(lock.get("hostname", "")), _lock_time(lock)
    return host.startswith(prefix) and host not in live and created is not None and created < before


def clear_dead_locks() -> bool:
    """Remove the locks of agent pods that no longer exist; True if any were removed.

    In a pod the lock's host name is the pod's name, which no process will ever have
    again once the pod is gone, so restic would honour such a lock for 30 minutes. The
    operator lists the agent pods that exist just before it creates this one
    (``STASH_LIVE_AGENT_PODS``, names starting with ``STASH_AGENT_POD_PREFIX``). A lock
    is dead when its host name has the prefix, is not a listed pod, and the lock is
    older than the listing (``STASH_DEAD_LOCK_BEFORE``, the listing time less the
    allowed clock skew: a pod created after the listing is not in it). Locks of any
    other host are left to restic's own rule. restic 0.14 cannot remove one lock, so
    locks are removed (``unlock --remove-all``) only when every lock is dead and the
    set of locks did not change while they were read; one live lock: remove nothing.
    """
    rule = _dead_lock_rule()
    ids = _lock_ids() if rule is not None else None
    if rule is None or not ids:
        return False
    locks = []
    for lock_id in ids:
        proc = restic(
            ["restic", "cat", "--no-lock", END_OF_OPTIONS, "lock", lock_id],
            echo=False,
            clear_dead=False,
        )
        if proc.returncode != 0:
            return False  # gone meanwhile, or unreadable: decide again on the next try
        try:
            locks.append(json.loads(proc.stdout))
        except json.JSONDecodeError:
            return False
    live = [lk for lk in locks if not _is_dead(lk, *rule)]
    if live:
        holders = ", ".join(sorted({str(lk.get("hostname")) for lk in live}))
        log(f"the repository lock is held by a live run ({holders}); not removing it")
        return False
    if _lock_ids() != ids:
        return False
    proc = restic(["restic", "unlock", "--remove-all"], echo=False, clear_dead=False)
    if proc.returncode != 0:
        log(f"could not remove the locks of deleted agent pods (restic exit {proc.returncode})")
        return False
    hosts = ", ".join(sorted({str(lk.get("hostname")) for lk in locks}))
    log(f"removed {len(locks)} lock(s) left by agent pods that no longer exist: {hosts}")
    return True


def _json_lines(text: str) -> list[Any]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(("{", "[")):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


_SIZE_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_PRUNED = re.compile(r"^total prune:\s+\d+ blobs / ([0-9.]+) (B|KiB|MiB|GiB|TiB)\s*$", re.M)


def _bytes_pruned(text: str) -> int | None:
    """What ``forget --prune`` removed, from prune's summary line (restic 0.14 prints it
    as text after the JSON); None when prune did not run."""
    found = _PRUNED.search(text)
    return int(float(found.group(1)) * _SIZE_UNITS[found.group(2)]) if found else None


def _backup_result(path: str, proc: subprocess.CompletedProcess[str]) -> BackupResult:
    summary = next(
        (
            d
            for d in _json_lines(proc.stdout)
            if isinstance(d, dict) and d.get("message_type") == "summary"
        ),
        None,
    )
    if not summary:
        return BackupResult(path=path)
    counts: dict[str, Any] = {
        key: int(summary.get(key) or 0)
        for key in (
            "files_new",
            "files_changed",
            "files_unmodified",
            "dirs_new",
            "dirs_changed",
            "data_added",
            "total_files_processed",
            "total_bytes_processed",
        )
    }
    return BackupResult(
        path=path,
        snapshot_id=summary.get("snapshot_id"),
        duration_seconds=float(summary.get("total_duration") or 0.0),
        **counts,
    )


def _snapshot_info(snap: dict[str, Any]) -> SnapshotInfo:
    return SnapshotInfo(
        id=str(snap.get("id")),
        short_id=snap.get("short_id") or str(snap.get("id", ""))[:8],
        time=snap.get("time"),
        paths=list(snap.get("paths") or []),
        hostname=snap.get("hostname"),
        tags=list(snap.get("tags") or []),
    )


@dataclass(frozen=True)
class Command:
    """One restic command and the folder (as the workload sees it) it is about."""

    path: str
    args: list[str]

    @property
    def verb(self) -> str:
        return self.args[1] if len(self.args) > 1 else ""

    @property
    def positional(self) -> list[str]:
        """What restic reads as arguments, not options: everything after ``--``."""
        if END_OF_OPTIONS not in self.args:
            return []
        return self.args[self.args.index(END_OF_OPTIONS) + 1 :]


def _clean(path: str) -> bool:
    return path.startswith("/") and ".." not in path.split("/") and "\x00" not in path


def _resolves_inside(path: Path, root: Path, follow_last: bool = True) -> bool:
    """Whether ``path`` stays inside ``root`` once symbolic links are followed (a link
    inside a volume can point anywhere on the machine that runs the agent)."""
    real_root = os.path.realpath(root)
    if follow_last or path == root:
        real = os.path.realpath(path)
    else:  # the last item is replaced, never written through
        real = os.path.join(os.path.realpath(path.parent), path.name)
    return _under(real, real_root)


def _check_inside(path: str, roots: Sequence[str]) -> None:
    root = next((r for r in roots if _under(path, r)), None)
    if root is None:
        raise AgentError(f"{path} is not inside any volume given with --within")
    if not _resolves_inside(Path(path), Path(root)):
        raise AgentError(
            f"{path} leads outside its volume {root} through a symbolic link; nothing was backed up"
        )


def run_commands(
    commands: Sequence[Command],
    lock_wait: float,
    init: bool = False,
    unlock: bool = False,
    within: Sequence[str] = (),
    guard: BackupGuard | None = None,
) -> RunResult:
    """Run restic commands in order; stop at the first failure.

    Stale locks of a killed run are cleared (``unlock``) first when a local repository
    holds any lock (see :func:`_local_locks`), and on any backend when a command is
    refused by a lock (it clears them once and runs again), so an exclusive operation
    (retention, check) never trips over a killed backup's lock. The repository is
    created (``init``) only when the first command finds none: probing for it first
    would cost a key derivation (most of a second) on every run. Every folder a backup
    reads must stay inside one of the ``within`` volumes once links are followed;
    this is checked for all of them before anything runs. With a ``guard``, a target
    that has backups on record never gets a new repository, and each backup is checked
    against the previous one (see :func:`_flag_drop`).
    """
    for cmd in commands:
        if cmd.verb == "backup":
            for path in cmd.positional:
                _check_inside(path, within)
    result = RunResult()
    if unlock and _local_locks():
        unlock_stale()
    for cmd in commands:
        if cmd.verb == "backup":
            cmd = _followed_source(cmd)
        if cmd.verb == "forget" and _with_stash08(cmd):
            _check_stash08_folder(cmd)
        proc = restic(cmd.args, lock_wait=lock_wait, clear_stale=unlock)
        if proc.returncode != 0 and WRONG_PASSWORD in proc.stderr:
            raise AgentError("wrong repository password (RESTIC_PASSWORD of the storage Secret)")
        if proc.returncode != 0 and init and NO_REPOSITORY in proc.stderr:
            _refuse_new_repository(guard, proc.stderr)
            ensure_repository()
            init = False
            proc = restic(cmd.args, lock_wait=lock_wait, clear_stale=unlock)
        if cmd.verb == "backup":
            entry = _checked_backup(cmd, proc, lock_wait)
            result.backups.append(_flag_drop(cmd, entry, guard, lock_wait))
        elif proc.returncode != 0:
            raise AgentError(f"restic {cmd.verb} failed (restic exit {proc.returncode})")
        elif cmd.verb == "forget":
            result.forgets.append(_forget_result(cmd, proc))
        elif cmd.verb == "snapshots":
            snaps: list[dict[str, Any]] = next(iter(_json_lines(proc.stdout)), []) or []
            if _with_stash08(cmd):
                snaps = [s for s in snaps if _tagged(s) or _stash08_of(s, cmd.path)]
            infos = [_snapshot_info(s) for s in snaps if not is_record(s)]
            oldest = min((i.time for i in infos if i.time), default=None)
            result.snapshots.append(
                SnapshotList(path=cmd.path, count=len(infos), snapshots=infos, oldest_time=oldest)
            )
    return result


def _with_stash08(cmd: Command) -> bool:
    """Whether the command also selects Stash 0.8's snapshots (a second ``--tag``, the
    alternative the plan adds for a ``stash08Layout`` target)."""
    return len(_flag(cmd.args, "tag")) > 1


def _stash08_of(snap: dict[str, Any], path: str) -> bool:
    """A Stash 0.8 snapshot (none of our tags) of exactly the folder ``path``."""
    return not _tagged(snap) and list(snap.get("paths") or []) == [path]


def _check_stash08_folder(cmd: Command) -> None:
    """restic cannot filter by tags OR path: refuse a retention whose Stash 0.8
    alternative also selects snapshots of another folder (two file groups with the
    same tags), which it would count, and delete, as this folder's."""
    selector = [a for a in cmd.args[2:] if a.startswith(("--host=", "--tag=", "--path="))]
    others = sorted(
        {
            ", ".join(s.get("paths") or [])
            for s in _snapshots_json(selector)
            if not _tagged(s) and not _stash08_of(s, cmd.path)
        }
    )
    if others:
        raise AgentError(
            f"retention for {cmd.path}: Stash 0.8 snapshots of {'; '.join(others)} carry the "
            "same host and tags, so restic cannot keep them apart; retention did not run "
            "(give each file group its own tags, or tag those snapshots with restic tag)"
        )


def _checked_backup(
    cmd: Command, proc: subprocess.CompletedProcess[str], lock_wait: float
) -> BackupResult:
    entry = _backup_result(cmd.path, proc)
    if proc.returncode == 3 and entry.snapshot_id:
        # Some files could not be read: the snapshot is incomplete and must not count
        # as a good backup (nor shield an older good one from retention).
        restic(["restic", "forget", END_OF_OPTIONS, entry.snapshot_id], lock_wait=lock_wait)
        raise AgentError(
            f"backup of {cmd.path} could not read every file; the incomplete "
            f"snapshot {entry.snapshot_id} was removed"
        )
    if proc.returncode != 0:
        raise AgentError(f"backup of {cmd.path} failed (restic exit {proc.returncode})")
    log(
        f"snapshot {entry.snapshot_id} of {cmd.path}: {entry.files_new} new, "
        f"{entry.files_changed} changed files, {entry.data_added} bytes added"
    )
    return entry


def _forget_result(cmd: Command, proc: subprocess.CompletedProcess[str]) -> ForgetResult:
    groups: list[dict[str, Any]] = next(iter(_json_lines(proc.stdout)), []) or []
    kept = sum(len(g.get("keep") or []) for g in groups)
    removed = sum(len(g.get("remove") or []) for g in groups)
    freed = _bytes_pruned(proc.stdout + proc.stderr)
    log(f"retention for {cmd.path}: kept {kept}, removed {removed}")
    newest = sorted(
        (s for g in groups for s in g.get("keep") or [] if isinstance(s, dict)),
        key=lambda s: str(s.get("time", "")),
        reverse=True,
    )
    return ForgetResult(
        path=cmd.path,
        kept=kept,
        removed=removed,
        bytes_freed=freed,
        dry_run="--dry-run" in cmd.args,
        kept_ids=[str(s.get("short_id") or str(s.get("id", ""))[:8]) for s in newest][
            :KEPT_IDS_LIMIT
        ],
    )


# ----------------------------------------------------------------------------- data-loss guards


def public_url(url: str) -> str:
    """The repository URL fit for a message: without the user and password that
    :func:`_rest_credentials` may have put into it."""
    return re.sub(r"^((?:[a-z0-9]+:)?[a-z][a-z0-9+.-]*://)[^/@]*@", r"\1", url, flags=re.I)


_UNREACHABLE = (
    "dial tcp",
    "connection refused",
    "no such host",
    "i/o timeout",
    "network is unreachable",
    "deadline exceeded",
    "tls:",
    "x509:",
)
_DENIED = ("access denied", "forbidden", "permission denied", "403")


def _refuse_new_repository(guard: BackupGuard | None, stderr: str) -> None:
    """A target with backups on record whose repository is gone is an incident (an
    unmounted disk, a wrong bucket), not a first backup: creating a new, empty
    repository would make the run green while every earlier snapshot is out of reach.
    restic says "Is there a repository" for a backend it cannot reach too: that is
    told apart, so the message points at the right cause."""
    if guard is None or (guard.backups_on_record <= 0 and not guard.history_lost):
        return
    url = public_url(os.environ.get(ENV_REPOSITORY, ""))
    said = stderr.lower()
    if any(marker in said for marker in _UNREACHABLE):
        raise AgentError(
            f"cannot reach the repository {url}; check the backend address and that it is up"
        )
    if any(marker in said for marker in _DENIED):
        raise AgentError(f"access to the repository {url} is denied; check the credentials")
    if guard.backups_on_record <= 0:
        raise AgentError(
            f"repository {url} is missing and whether this target was backed up before is "
            f"unknown ({guard.history_lost}); not creating a new one. If this is its first "
            "backup or a new repository is intended, trigger the backup with "
            "new_repository=true"
        )
    raise AgentError(
        f"repository {url} is missing but this target has {guard.backups_on_record} "
        "backups on record; not creating a new one (an unmounted disk or a wrong bucket?). "
        "To start a new repository on purpose, trigger the backup with new_repository=true"
    )


def _followed_source(cmd: Command) -> Command:
    """Back up the folder a linked source points to, as Kubernetes mounts a hostPath
    that is a link: restic given a link saves the link, not the data. Only called
    once :func:`_check_inside` has found every link to stay inside its volume."""
    if END_OF_OPTIONS not in cmd.args:
        return cmd
    cut = cmd.args.index(END_OF_OPTIONS) + 1
    real = [os.path.realpath(p) for p in cmd.args[cut:]]
    for path, followed in zip(cmd.args[cut:], real, strict=True):
        if followed != path:
            log(f"source {path} is reached through a symbolic link; backing up {followed}")
    return Command(cmd.path, [*cmd.args[:cut], *real])


def _flag(args: Sequence[str], name: str) -> list[str]:
    return [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]


_IDENTITY_TAGS = ("namespace=", "restic=", "target=", "path=")


def _target_filter(cmd: Command, *extra_tags: str) -> list[str]:
    """restic filters selecting this folder's snapshots of this target (as retention
    selects them: its host and identity tags, not the user's extra tags), narrowed to
    those that also carry ``extra_tags``."""
    tags = [t for value in _flag(cmd.args, "tag") for t in value.split(",") if t]
    identity = [t for t in tags if t.startswith(_IDENTITY_TAGS)] or tags
    wanted = [*identity, *extra_tags]
    out = [f"--host={h}" for h in _flag(cmd.args, "host")]
    return out + ([f"--tag={','.join(wanted)}"] if wanted else [])


def _flag_drop(
    cmd: Command, entry: BackupResult, guard: BackupGuard | None, lock_wait: float
) -> BackupResult:
    """Flag a backup of an empty or sharply shrunk source, and protect what came before.

    The snapshot itself is kept (it is what the folder holds now); the newest
    ``keep_before_drop`` snapshots taken before it get :data:`BEFORE_DROP_TAG`, which
    retention always keeps, so the data from before the drop outlives any policy."""
    if guard is None or not entry.snapshot_id:
        return entry
    reason = source_drop(
        guard.baseline(cmd.path),
        entry.total_files_processed,
        entry.total_bytes_processed,
        guard.shrink_threshold,
    )
    if reason is None:
        return entry
    log(f"warning: {cmd.path}: {reason}")
    kept = _protect_before_drop(cmd, entry.snapshot_id, guard.keep_before_drop, lock_wait)
    if kept:
        log(f"kept {', '.join(kept)} (tag {BEFORE_DROP_TAG}): taken before the drop")
    return replace(entry, source_drop=reason, kept_before_drop=kept)


def _protect_before_drop(cmd: Command, new_id: str, keep: int, lock_wait: float) -> list[str]:
    """Tag the ``keep`` newest earlier snapshots of the folder; returns their ids (restic
    gives a snapshot a new id when its tags change). Costs three restic commands, only
    when a drop is flagged."""
    if keep <= 0:
        return []
    earlier = [
        s
        for s in _snapshots_json(_target_filter(cmd))
        if not str(s.get("id", "")).startswith(new_id) and s.get("short_id") != new_id
    ]
    earlier.sort(key=lambda s: str(s.get("time", "")), reverse=True)
    chosen = earlier[:keep]
    todo = [str(s["id"]) for s in chosen if BEFORE_DROP_TAG not in (s.get("tags") or [])]
    if todo:
        tagged = restic(
            ["restic", "tag", f"--add={BEFORE_DROP_TAG}", END_OF_OPTIONS, *todo],
            lock_wait=lock_wait,
        )
        if tagged.returncode != 0:
            raise AgentError(
                f"backup of {cmd.path} made snapshot {new_id} of a shrunk source, but the "
                f"snapshots before it could not be tagged {BEFORE_DROP_TAG} "
                f"(restic exit {tagged.returncode}); retention must not run"
            )
    if not chosen:
        return []
    found = _snapshots_json(_target_filter(cmd, BEFORE_DROP_TAG))
    found.sort(key=lambda s: str(s.get("time", "")), reverse=True)
    return [str(s.get("short_id") or str(s["id"])[:8]) for s in found[: len(chosen)]]


def _snapshots_json(selector: list[str]) -> list[dict[str, Any]]:
    proc = restic(["restic", "snapshots", "--json", *selector], lock_wait=300, echo=False)
    if proc.returncode != 0:
        raise AgentError(f"cannot list snapshots (restic exit {proc.returncode})")
    snaps: list[dict[str, Any]] = next(iter(_json_lines(proc.stdout)), []) or []
    return snaps


# ----------------------------------------------------------------------------- repository record


def store_record(guard: BackupGuard | None, lock_wait: float) -> str | None:
    """Keep the Repository object this backup ran for in the repository, so that a
    cluster that lost the object can get it back (``stash discover``).

    Called after a good backup, in the same agent process. It costs nothing when the
    status says the same record is stored already; otherwise one ``restic backup
    --stdin`` of a few hundred bytes (host and tag :data:`REPOSITORY_RECORD_TAG`, so
    that no selection of backups ever sees it) and a ``forget`` of the older record.
    A record that cannot be written only costs the next run another try: the backup
    itself is good. Returns the digest of the record the repository now holds."""
    text = os.environ.get(ENV_REPOSITORY_RECORD)
    if not text:
        return None
    digest = record_digest(text)
    if guard is not None and guard.record_stored == digest:
        return digest
    stored = restic(
        [
            "restic",
            "backup",
            "--json",
            "--quiet",
            "--stdin",
            f"--stdin-filename={REPOSITORY_RECORD_FILE}",
            f"--host={REPOSITORY_RECORD_TAG}",
            f"--tag={REPOSITORY_RECORD_TAG}",
        ],
        lock_wait=min(lock_wait, 60.0),
        given=text,
    )
    if stored.returncode != 0:
        log(f"could not keep the Repository record (restic exit {stored.returncode}); next run")
        return None
    older = restic(
        [
            "restic",
            "forget",
            f"--host={REPOSITORY_RECORD_TAG}",
            f"--tag={REPOSITORY_RECORD_TAG}",
            "--keep-last=1",
        ],
        lock_wait=min(lock_wait, 60.0),
        echo=False,
    )
    if older.returncode != 0:
        log(f"could not remove the older Repository record (restic exit {older.returncode})")
    log("kept the Repository object in the repository (tag " + REPOSITORY_RECORD_TAG + ")")
    return digest


# ----------------------------------------------------------------------------- restore


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _workload_path(snap: dict[str, Any]) -> str:
    """The path the workload saw: our ``path=`` tag, or (Stash 0.8) the snapshot path."""
    tagged = next(
        (t[len("path=") :] for t in snap.get("tags") or [] if t.startswith("path=")), None
    )
    return tagged or snap["paths"][0]


class NoSnapshot(AgentError):
    """Nothing to restore from: no repository at the location, or no snapshot of the
    target in it (an automatic restore skips; a Recovery fails)."""


def _restic_snapshots(args: list[str], ref: str) -> list[dict[str, Any]]:
    proc = restic(["restic", "snapshots", "--json", *args], lock_wait=300)
    if proc.returncode != 0:
        if WRONG_PASSWORD in proc.stderr:
            raise AgentError("wrong repository password (RESTIC_PASSWORD of the storage Secret)")
        if NO_REPOSITORY in proc.stderr:
            raise NoSnapshot(f"cannot list snapshots {ref}: there is no repository at the location")
        raise AgentError(f"cannot list snapshots {ref} (restic exit {proc.returncode})")
    return next(iter(_json_lines(proc.stdout)), []) or []


def _tagged(snap: dict[str, Any]) -> bool:
    """Whether Stash tagged the snapshot; Stash 0.8's snapshots carry no ``namespace=``."""
    return any(t.startswith("namespace=") for t in snap.get("tags") or [])


def _target_of(snap: dict[str, Any]) -> str:
    tags = snap.get("tags") or []
    return ", ".join(t for t in tags if t.startswith(("namespace=", "restic=", "target=")))


def _latest_candidates(tags: list[str], stash08_host: str | None = None) -> list[dict[str, Any]]:
    """Every snapshot carrying all ``tags``; none found is explained (nothing yet, only
    Stash 0.8 snapshots, or only other targets'), never answered with someone else's.

    With ``stash08_host`` (a Stash 0.8 repoDir, which held one target), that host's
    snapshots without our tags count too: Stash 0.8 made them for this target."""
    snaps = _restic_snapshots([f"--tag={','.join(tags)}"] if tags else [], "latest")
    if stash08_host:
        old = _restic_snapshots([f"--host={stash08_host}"], "latest")
        snaps += [s for s in old if not _tagged(s)]
    snaps = [s for s in snaps if not is_record(s)]
    if snaps:
        return snaps
    everything = [s for s in _restic_snapshots([], "latest") if not is_record(s)] if tags else []
    if not everything:
        raise NoSnapshot("no snapshot latest in the repository")
    wanted = ",".join(tags)
    if not any(_tagged(s) for s in everything):
        raise AgentError(
            f"no snapshot tagged {wanted}: the repository holds only snapshots without "
            f"Stash's tags ({len(everything)}, from Stash 0.8); restore one by its id "
            "(volumeRestorer.snapshot)"
        )
    raise NoSnapshot(
        f"no snapshot tagged {wanted}; the repository's {len(everything)} snapshot(s) "
        "belong to other targets"
    )


def _one_target(snaps: list[dict[str, Any]], tags: list[str]) -> None:
    """``latest`` of a repoDir that several targets share is refused until the Recovery
    says which one it means."""
    targets = sorted({_target_of(s) for s in snaps})
    if len(targets) > 1:
        raise AgentError(
            f"snapshots of {len(targets)} targets carry {','.join(tags) or 'no tag'}: "
            + "; ".join(targets)
            + "; name one with volumeRestorer.restic and volumeRestorer.target"
        )


def _check_explicit(snaps: list[dict[str, Any]], tags: list[str], ref: str) -> None:
    """An explicit id must be one of the permitted target's snapshots, or a Stash 0.8
    snapshot (no Stash tags) of a repository the Recovery may use."""
    for snap in snaps:
        if not _tagged(snap):
            log(f"snapshot {ref} has no Stash tags (a Stash 0.8 snapshot); restoring it by id")
            continue
        missing = [t for t in tags if t not in (snap.get("tags") or [])]
        if missing:
            raise AgentError(
                f"snapshot {ref} is not tagged {','.join(missing)}: it is another "
                "namespace's or target's (volumeRestorer.sourceNamespace, restic and target "
                "say whose snapshots a Recovery may restore)"
            )


def _select_snapshots(
    ref: str, tags: list[str], stash08_host: str | None = None
) -> list[dict[str, Any]]:
    """The snapshots a restore may use: ``latest`` looks only at those carrying ``tags``
    (``namespace=`` at least, when planned), an explicit id must carry them."""
    if ref == "latest":
        snaps = _latest_candidates(tags, stash08_host)
        _one_target([s for s in snaps if _tagged(s)] if stash08_host else snaps, tags)
    else:
        snaps = _restic_snapshots([END_OF_OPTIONS, ref], ref)
        if not snaps:
            raise AgentError(f"no snapshot {ref} in the repository")
        if any(is_record(s) for s in snaps):
            raise AgentError(
                f"snapshot {ref} is Stash's record of the Repository object (tag "
                f"{REPOSITORY_RECORD_TAG}), not a backup"
            )
        _check_explicit(snaps, tags, ref)
    return [s for s in snaps if s.get("paths")]


def _pick(snaps: list[dict[str, Any]], wanted: str, ref: str) -> list[dict[str, Any]]:
    """The snapshots to restore ``wanted`` from: the newest one that holds it, or, when
    ``wanted`` is a parent of several backed-up folders, the newest of each folder."""
    enclosing = [s for s in snaps if _under(wanted, _workload_path(s))]
    if enclosing:
        return [max(enclosing, key=lambda s: s.get("time", ""))]
    newest: dict[str, dict[str, Any]] = {}
    for snap in snaps:
        folder = _workload_path(snap)
        if _under(folder, wanted) and snap.get("time", "") >= newest.get(folder, {}).get(
            "time", ""
        ):
            newest[folder] = snap
    if not newest:
        raise AgentError(f"snapshot {ref} holds nothing under {wanted}")
    return [newest[k] for k in sorted(newest)]


def _is_empty(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def _is_empty_volume(path: Path) -> bool:
    """Empty, as a fresh volume is: nothing at all, or (at a mount point) only the empty
    ``lost+found`` folder that mkfs.ext4 makes. A link or a file is never empty."""
    if path.is_symlink():
        return False
    if _is_empty(path):
        return True
    if not path.is_dir() or not _is_mount_point(path):
        return False
    entries = list(path.iterdir())
    found = path / "lost+found"
    return entries == [found] and _real_dir(found) and not any(found.iterdir())


NOT_EMPTY = "not empty"


def _move_if_empty(src: Path, dest: Path) -> bool:
    """Move ``src`` to ``dest`` only if ``dest`` is an empty volume, checked at the last
    moment: one rename(2) where it can (the kernel refuses to replace a folder that is
    not empty, so nothing written meanwhile is lost), else a check just before the
    copy (a mount root, another filesystem). False when ``dest`` is not empty."""
    if not dest.exists() and not dest.is_symlink():
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(src, dest)
            return True
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                return False
            if exc.errno != errno.EXDEV:
                raise
    if not _is_empty_volume(dest):
        return False
    if _real_dir(src) and _real_dir(dest) and _replace_empty_dir(src, dest):
        return True
    if not _is_empty_volume(dest):
        return False
    _move_into(src, dest)
    return True


def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _remove(path: Path) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _replace_empty_dir(src: Path, dest: Path) -> bool:
    """One rename of ``src`` over the empty folder ``dest`` (rename(2) replaces an empty
    directory atomically); False when that cannot be done (not empty, a mount point,
    another filesystem)."""
    if any(dest.iterdir()):
        return False
    try:
        os.rename(src, dest)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY, errno.EXDEV, errno.EPERM):
            return False
        raise
    return True


def _move_into(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest``: in one rename when ``dest`` is missing or an empty
    folder, else merging directories and replacing files; by copying where a rename
    cannot cross (the target is another filesystem)."""
    if _real_dir(src) and _real_dir(dest):
        if _replace_empty_dir(src, dest):
            return
        for child in src.iterdir():
            _move_into(child, dest / child.name)
        shutil.copystat(src, dest, follow_symlinks=False)
        src.rmdir()
        return
    _remove(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_across(src, dest)
        _remove(src)


def _copy_across(src: Path, dest: Path) -> None:
    """Copy what a rename cannot move (another filesystem), keeping links, modes, times
    and, when running as root (as restic restores them), owners."""
    st = src.lstat()
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dest)
    elif stat.S_ISDIR(st.st_mode):
        dest.mkdir()
        for child in src.iterdir():
            _copy_across(child, dest / child.name)
    elif stat.S_ISREG(st.st_mode):
        shutil.copyfile(src, dest, follow_symlinks=False)
    elif stat.S_ISFIFO(st.st_mode):
        os.mkfifo(dest)
    else:
        log(f"not copying special file {dest} across filesystems")
        return
    if os.geteuid() == 0:
        os.chown(dest, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        shutil.copystat(src, dest, follow_symlinks=False)


# Staging: restic writes a restore into a folder outside the target (no process can
# clean up after SIGKILL, so nothing may ever be written inside the target before the
# final moves). Beside the target when it shares its filesystem (the moves are renames),
# else in the agent's temporary folder (a pod's volume is a mount root: its parent is the
# container's own filesystem), from which the files are copied.

STAGING_PREFIX = ".stash-restore-"


def _mount_points() -> set[str]:
    """Mount points of this process (bind mounts included, which os.path.ismount misses)."""
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return set()
    unescape = re.compile(r"\\([0-7]{3})")
    return {
        unescape.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        for fields in (line.split() for line in text.splitlines())
        if len(fields) > 4
    }


def _is_mount_point(path: Path) -> bool:
    return path.is_dir() and (os.path.ismount(path) or str(path) in _mount_points())


def _staging_homes(root: Path) -> list[Path]:
    homes = [] if _is_mount_point(root) else [root.parent]
    return [*homes, Path(tempfile.gettempdir())]


def _clear_stale_staging(home: Path, key: str) -> None:
    """Remove staging folders of earlier restores into the same target whose agent died
    (a live one holds a lock on its folder)."""
    for old in home.glob(f"{STAGING_PREFIX}{key}-*"):
        if old.is_symlink() or not old.is_dir():
            continue
        fd = os.open(old, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # another agent is restoring into this target right now
        else:
            log(f"removing {old}, left by a restore that was killed")
            shutil.rmtree(old, ignore_errors=True)
        finally:
            os.close(fd)


@contextmanager
def staging_folder(root: Path) -> Iterator[Path]:
    """A locked, empty folder outside ``root`` to restore into; removed afterwards (and,
    if this agent is killed, by the next restore into ``root``)."""
    key = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    problems = []
    for home in _staging_homes(root):
        try:
            home.mkdir(parents=True, exist_ok=True)
            _clear_stale_staging(home, key)
            staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{key}-", dir=home))
        except OSError as exc:
            problems.append(f"{home}: {exc.strerror}")
            continue
        fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            os.close(fd)
        return
    raise AgentError(f"no folder to stage the restore of {root} in ({'; '.join(problems)})")


def _restore_root(target: str) -> Path:
    """The folder a restore writes into. A target that is a symbolic link is restored
    through (the link stays, the folder it points to gets the data), as Kubernetes
    mounts a hostPath that is a link."""
    real = Path(os.path.realpath(target))
    if str(real) != posixpath.normpath(target):
        log(f"target {target} is reached through a symbolic link; restoring into {real}")
    return real


def _restore_one(
    snap: dict[str, Any],
    include: str,
    final: Path,
    wanted: str,
    root: Path,
    if_empty: bool = False,
) -> bool:
    """Restore ``include`` of ``snap`` into a staging folder outside the target
    (:func:`staging_folder`), then move it into place: a restore that fails or is killed
    leaves nothing at all inside the target. Nothing is written unless ``final`` stays
    inside ``root`` (the recoverTo folder) once links are followed; a link at ``final``
    itself is replaced, not written through. With ``if_empty`` nothing is moved into a
    ``final`` that is not empty by then (False)."""
    if not _under(os.path.normpath(final), str(root)) or not _resolves_inside(final, root, False):
        raise AgentError(f"{final} (for {wanted}) leads outside the restore target {root}")
    with staging_folder(root) as staging:
        proc = restic(
            [
                "restic",
                "restore",
                f"--target={staging}",
                f"--include={include}",
                END_OF_OPTIONS,
                str(snap["id"]),
            ],
            lock_wait=300,
        )
        restored = staging / include.lstrip("/")
        if proc.returncode != 0:
            raise AgentError(f"restore of {wanted} failed (restic exit {proc.returncode})")
        if not restored.exists() and not restored.is_symlink():
            raise AgentError(f"snapshot {snap['short_id']} has no {wanted}")
        if if_empty:
            return _move_if_empty(restored, final)
        final.parent.mkdir(parents=True, exist_ok=True)
        _move_into(restored, final)
    return True


def restore(
    snapshot: str,
    mounts: list[tuple[str, str]],
    paths: list[str],
    overwrite: bool,
    tags: Sequence[str] = (),
    stash08_host: str | None = None,
    if_empty: bool = False,
) -> RestoreRunResult:
    """Restore ``snapshot`` into the targets. With ``if_empty`` (an automatic restore) a
    target that is not empty is skipped, never written, and so is every target when
    there is nothing to restore yet; the result says which and why."""
    if any("," in t or not t for t in tags):
        raise AgentError("each --tag is one non-empty tag without commas")
    snaps = None if if_empty else _select_snapshots(snapshot, list(tags), stash08_host)
    wanted_all = paths or [m for m, _ in mounts]
    skipped: list[RestoreResult] = []
    # Refuse before writing anything: one non-empty target stops the whole recovery.
    plan: list[tuple[str, Path, Path]] = []
    for wanted in wanted_all:
        if not _clean(wanted):
            raise AgentError(f"path {wanted!r} is not a clean absolute path")
        found = next(((m, t) for m, t in mounts if _clean(m) and _under(wanted, m)), None)
        if found is None:
            raise AgentError(f"{wanted} is under no --mount-path")
        mount = Path(found[0])
        root = _restore_root(found[1])
        dest = root / posixpath.relpath(wanted, mount) if wanted != str(mount) else root
        if if_empty and not _is_empty_volume(dest):
            log(f"skipped {wanted}: {dest} is not empty")
            skipped.append(RestoreResult(path=wanted, target=str(dest), skipped=NOT_EMPTY))
            continue
        if not if_empty and not overwrite and not _is_empty(dest):
            raise AgentError(
                f"target {dest} (for {wanted}) is not empty; set volumeRestorer.overwrite: true "
                "to restore over existing files"
            )
        plan.append((wanted, dest, root))
    if snaps is None:
        if not plan:
            return RestoreRunResult(restores=skipped)  # the repository was never opened
        try:
            snaps = _select_snapshots(snapshot, list(tags), stash08_host)
        except NoSnapshot as exc:
            log(f"skipped {', '.join(w for w, _, _ in plan)}: {exc}")
            why = f"no snapshot to restore ({exc})"
            return RestoreRunResult(
                restores=skipped
                + [RestoreResult(path=w, target=str(d), skipped=why) for w, d, _ in plan]
            )
    stats: list[RestoreResult] = list(skipped)
    for wanted, dest, root in plan:
        started = time.monotonic()
        used = []
        moved = True
        for snap in _pick(snaps, wanted, snapshot):
            wpath = _workload_path(snap)
            if _under(wanted, wpath):
                include = posixpath.join(snap["paths"][0], posixpath.relpath(wanted, wpath))
                final = dest
            else:  # the snapshot is of a folder inside the wanted path
                include = snap["paths"][0]
                final = dest / posixpath.relpath(wpath, wanted)
            moved = _restore_one(snap, posixpath.normpath(include), final, wanted, root, if_empty)
            if not moved:
                break
            used.append(snap["id"])
        took = time.monotonic() - started
        if not moved:  # written to while the snapshot was being read
            log(f"skipped {wanted}: {dest} is no longer empty; nothing was moved into it")
            stats.append(RestoreResult(path=wanted, target=str(dest), skipped=NOT_EMPTY))
            continue
        log(f"restored {wanted} from snapshot(s) {', '.join(u[:8] for u in used)} in {took:.2f}s")
        stats.append(
            RestoreResult(path=wanted, target=str(dest), snapshot_ids=used, duration_seconds=took)
        )
    return RestoreRunResult(restores=stats)


# ----------------------------------------------------------------------------- maintain


def _target_key(snap: dict[str, Any]) -> str | None:
    return target_key(snap.get("tags") or [])


def maintain(read_data_subset: str | None = None) -> MaintenanceResult:
    """Check one repository and measure it.

    Only stale locks are removed: ``restic unlock`` without ``--remove-all`` drops a lock
    only when its process is gone (same host) or it was not refreshed for 30 minutes
    (restic refreshes the locks of a running command every 5 minutes), so a live
    backup's lock is never taken away. A check that finds damage is a result, not an
    error: it is reported, and the run goes on measuring the repository.
    """
    probe = restic(["restic", "cat", "config"], echo=False)
    if probe.returncode != 0:
        if WRONG_PASSWORD in probe.stderr:
            raise AgentError("wrong repository password (RESTIC_PASSWORD of the storage Secret)")
        if NO_REPOSITORY in probe.stderr:
            log("no repository at the location yet (nothing backed up there): nothing to check")
            return MaintenanceResult(exists=False)
        sys.stderr.write(probe.stderr)
        raise AgentError(f"cannot open the repository (restic exit {probe.returncode})")
    before = len(_lock_ids() or [])
    unlock_stale()
    removed = max(before - len(_lock_ids() or []), 0)
    check_args = ["restic", "check"]
    if read_data_subset:
        check_args.append(f"--read-data-subset={read_data_subset}")
    check = restic(check_args, lock_wait=600)
    error = (
        None if check.returncode == 0 else f"restic check failed (restic exit {check.returncode})"
    )
    log("restic check: " + (error or "no errors found"))
    snaps = [s for s in _restic_snapshots(["--no-lock"], "of the repository") if not is_record(s)]
    counts: dict[str, int] = {}
    for snap in snaps:
        key = _target_key(snap)
        if key:
            counts[key] = counts.get(key, 0) + 1
    stats = restic(["restic", "stats", "--mode=raw-data", "--json", "--no-lock"], echo=False)
    found = next(iter(_json_lines(stats.stdout)), None) if stats.returncode == 0 else None
    size = int(found["total_size"]) if isinstance(found, dict) and "total_size" in found else None
    return MaintenanceResult(
        exists=True,
        check_ok=error is None,
        check_error=error,
        stale_locks_removed=removed,
        size_bytes=size,
        snapshot_count=len(snaps),
        target_snapshots=counts,
    )


# ----------------------------------------------------------------------------- databases

_PR_SET_PDEATHSIG = 1


def _die_with_agent() -> Any:
    """A ``preexec_fn`` that kills restic when the agent dies, however it dies: a
    ``restic backup --stdin`` whose input closes early would otherwise save the
    partial dump as a snapshot."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the agent's own signal handling remains
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return preexec


def _read(file: Any) -> str:
    file.seek(0)
    return str(file.read().decode("utf-8", "replace"))


class _Retry(Exception):
    """restic gave up before reading the dump (locked, no repository yet): start again."""

    def __init__(self, reason: str, stderr: str = "") -> None:
        super().__init__(reason)
        self.reason, self.stderr = reason, stderr


def _stream_backup(cmd: Command, source: Source, what: str) -> BackupResult:
    """Stream ``source`` into ``restic backup --stdin``. restic finishes its snapshot
    only when the dump was complete; otherwise it is interrupted before it writes one
    (and any snapshot it made anyway is removed)."""
    if isinstance(source, ProcessSource):
        return _stream_direct(cmd, source, what)
    argv = [_restic(), *RESTIC_OPTIONS, *cmd.args[1:]]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
            argv, stdin=subprocess.PIPE, stdout=out, stderr=err, preexec_fn=_die_with_agent()
        )
        assert proc.stdin is not None
        broken = False
        try:
            for chunk in source.chunks():
                try:
                    write_all(proc.stdin.fileno(), chunk)
                except BrokenPipeError:
                    broken = True
                    break
            problem = None if broken else source.problem()
        except BaseException:  # interrupted, or the database connection failed
            source.stop()
            stop_process(proc, signal.SIGINT, RESTIC_STOP_GRACE)
            _forget_made(proc, out)
            raise
        if broken:
            source.stop()
            _restic_gave_up(proc, err, what)
        if problem is not None:
            stop_process(proc, signal.SIGINT, RESTIC_STOP_GRACE)
            removed = _forget_made(proc, out)
            sys.stderr.write(_read(err))
            kept = f"; snapshot {removed} was removed" if removed else "; no snapshot was made"
            raise AgentError(f"dump of {what} failed: {problem}{kept}")
        proc.stdin.close()
        code = proc.wait()
        done = subprocess.CompletedProcess(argv, code, _read(out), _read(err))
    return _finished_backup(cmd, done)


def _restic_gave_up(proc: subprocess.Popen[bytes], err: Any, what: str) -> NoReturn:
    """restic ended before the dump did: why, as an error or a reason to start again."""
    proc.wait()
    stderr = _read(err)
    sys.stderr.write(stderr)
    if WRONG_PASSWORD in stderr:
        raise AgentError("wrong repository password (RESTIC_PASSWORD of the storage Secret)")
    if LOCKED in stderr:
        raise _Retry("locked")
    if NO_REPOSITORY in stderr:
        raise _Retry("no repository", stderr)
    raise AgentError(f"backup of {what} failed (restic exit {proc.returncode})")


def _stream_direct(cmd: Command, source: ProcessSource, what: str) -> BackupResult:
    """The dump program writes straight into restic's input; the agent holds the pipe's
    write end too, and closes it (so restic finishes its snapshot) only after the
    program exited 0. Otherwise restic is interrupted before it writes a snapshot."""
    argv = [_restic(), *RESTIC_OPTIONS, *cmd.args[1:]]
    read_end, write_end = os.pipe()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
                argv, stdin=read_end, stdout=out, stderr=err, preexec_fn=_die_with_agent()
            )
        finally:
            os.close(read_end)
        try:
            source.start(write_end)
            while source.proc.poll() is None and proc.poll() is None:
                time.sleep(0.05)
            time.sleep(0.05)  # restic ending makes the dump fail: let restic's exit show
            if proc.poll() is not None:  # before its input ended: it gave up (no repository...)
                source.stop()
                _restic_gave_up(proc, err, what)
            problem = source.problem()
            if problem is not None:
                stop_process(proc, signal.SIGINT, RESTIC_STOP_GRACE)
                removed = _forget_made(proc, out)
                sys.stderr.write(_read(err))
                kept = f"; snapshot {removed} was removed" if removed else "; no snapshot was made"
                raise AgentError(f"dump of {what} failed: {problem}{kept}")
        except (AgentError, _Retry):
            raise
        except BaseException:  # interrupted
            source.stop()
            stop_process(proc, signal.SIGINT, RESTIC_STOP_GRACE)
            _forget_made(proc, out)
            raise
        finally:
            os.close(write_end)
        code = proc.wait()
        done = subprocess.CompletedProcess(argv, code, _read(out), _read(err))
    return _finished_backup(cmd, done)


def _finished_backup(cmd: Command, done: subprocess.CompletedProcess[str]) -> BackupResult:
    if done.stderr:
        sys.stderr.write(done.stderr)
    if done.returncode != 0 and WRONG_PASSWORD in done.stderr:
        raise AgentError("wrong repository password (RESTIC_PASSWORD of the storage Secret)")
    if done.returncode != 0 and not _backup_result(cmd.path, done).snapshot_id:
        if LOCKED in done.stderr:
            raise _Retry("locked")
        if NO_REPOSITORY in done.stderr:
            raise _Retry("no repository", done.stderr)
    return _checked_backup(cmd, done, 0)


def _forget_made(proc: subprocess.Popen[bytes], out: Any) -> str | None:
    """If restic saved a snapshot although it was stopped, remove it; its id or None."""
    made = _backup_result("", subprocess.CompletedProcess([], 0, _read(out), "")).snapshot_id
    if made:
        restic(["restic", "forget", END_OF_OPTIONS, made], lock_wait=60)
    return made


def dump_backup(
    cmd: Command,
    db: Database,
    from_stdin: bool,
    lock_wait: float,
    init: bool,
    unlock: bool,
    guard: BackupGuard | None = None,
) -> RunResult:
    """Back up one database: its dump (run here, or piped to the agent by a
    BackupAgent's command) streamed into ``restic backup --stdin``.

    Stale locks (``unlock``) are cleared only when the backup finds the repository
    locked, and the repository is created (``init``) only when it finds none: each
    restic command costs a key derivation (a second here), which would otherwise be
    a fifth of a small database's backup. A dump the agent runs itself is simply
    started again; a piped dump cannot be, so the repository is made sure of first."""
    if "--stdin" not in cmd.args or cmd.verb != "backup":
        raise AgentError("a database backup is one 'restic backup --stdin ...' command")
    if init and from_stdin:  # a piped dump cannot be read twice: make sure first
        probe = restic(["restic", "cat", "config"], echo=False)
        if probe.returncode != 0 and NO_REPOSITORY in probe.stderr:
            _refuse_new_repository(guard, probe.stderr)
        ensure_repository()
    what = db.describe()
    deadline = time.monotonic() + lock_wait
    delay = 2.0
    with engine_for(db) as engine:
        while True:
            if from_stdin:
                source: Source = StdinSource(complete_marker(db.engine, db.everything), "dump")
            else:
                source = engine.dump()
            try:
                entry = _stream_backup(cmd, source, what)
                return RunResult(backups=[_flag_drop(cmd, entry, guard, lock_wait)])
            except _Retry as retry:
                if from_stdin:
                    raise AgentError(
                        f"backup of {what} failed: the repository is {retry.reason}"
                    ) from None
                if retry.reason == "no repository":
                    _refuse_new_repository(guard, retry.stderr)
                    if not init:
                        raise AgentError(f"no repository at {os.environ[ENV_REPOSITORY]}") from None
                    ensure_repository()
                    init = False
                    continue
                if unlock:  # a killed run's stale lock: cleared once, then start again
                    unlock_stale()
                    unlock = False
                    continue
                if clear_dead_locks():  # a deleted agent pod's lock: gone, start again
                    continue
                if time.monotonic() >= deadline:
                    raise AgentError(
                        f"backup of {what} failed: the repository stayed locked"
                    ) from None
                wait = _jittered(delay, deadline)
                log(f"repository is locked by another run; starting the dump again in {wait:.0f}s")
                time.sleep(wait)
                delay = min(delay * 2, 30.0)


def _engine_of(snap: dict[str, Any]) -> str | None:
    return next(
        (t[len("engine=") :] for t in snap.get("tags") or [] if t.startswith("engine=")), None
    )


def _same_family(a: str | None, b: str) -> bool:
    mysql = ("mysql", "mariadb")
    return a == b or (a in mysql and b in mysql)


def _database_snapshot(ref: str, tags: list[str], engine: str) -> dict[str, Any]:
    """The snapshot to restore: ``latest`` or an id, among this namespace's database
    snapshots of the right engine."""
    args = ["restic", "snapshots", "--json", *[f"--tag={t}" for t in tags]]
    proc = restic(args, lock_wait=300)
    if proc.returncode != 0:
        if WRONG_PASSWORD in proc.stderr:
            raise AgentError("wrong repository password (RESTIC_PASSWORD of the storage Secret)")
        raise AgentError(f"cannot list snapshots (restic exit {proc.returncode})")
    snaps: list[dict[str, Any]] = next(iter(_json_lines(proc.stdout)), []) or []
    dumps = [s for s in snaps if s.get("paths") and _engine_of(s)]
    if ref != "latest":
        dumps = [s for s in dumps if str(s.get("id", "")).startswith(ref)]
    if not dumps:
        scope = f" with tags {', '.join(tags)}" if tags else ""
        raise AgentError(f"no database snapshot {ref} in the repository{scope}")
    snap = max(dumps, key=lambda s: s.get("time", ""))
    if not _same_family(_engine_of(snap), engine):
        raise AgentError(
            f"snapshot {snap.get('short_id')} is a {_engine_of(snap)} dump; it cannot be "
            f"restored into {engine}"
        )
    return snap


def restore_database(db: Database, ref: str, tags: list[str], overwrite: bool) -> RestoreRunResult:
    """``restic dump`` of the snapshot streamed into the database's restore tool; a
    stream that fails or ends early is never committed."""
    snap = _database_snapshot(ref, tags, db.engine)
    path = snap["paths"][0]
    started = time.monotonic()
    with engine_for(db) as engine:
        engine.check_empty(overwrite)
        engine.prepare(overwrite)
        restorer = engine.restore()
        argv = [_restic(), *RESTIC_OPTIONS, "dump", END_OF_OPTIONS, str(snap["id"]), path]
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
                argv, stdout=subprocess.PIPE, stderr=err, preexec_fn=_die_with_agent()
            )
            assert proc.stdout is not None
            tail = bytearray()
            try:
                for chunk in read_chunks(proc.stdout.fileno(), tail):
                    restorer.write(chunk)
                code = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                restorer.abort()
                raise
            sys.stderr.write(_read(err))
        marker = complete_marker(_engine_of(snap) or db.engine, "all" in path.rsplit("/", 1)[-1])
        if code != 0 or (marker is not None and marker not in tail):
            restorer.abort()
            why = f"restic exit {code}" if code != 0 else "the dump in the snapshot is incomplete"
            raise AgentError(f"restore of {db.describe()} failed ({why}); nothing was committed")
        restorer.finish()
    took = time.monotonic() - started
    log(f"restored {db.describe()} from snapshot {snap['short_id']} in {took:.2f}s")
    return RestoreRunResult(
        restores=[
            RestoreResult(
                path=path, target=db.describe(), snapshot_ids=[snap["id"]], duration_seconds=took
            )
        ]
    )


# ----------------------------------------------------------------------------- cluster


def cluster_backup(
    cmd: Command,
    selection: Selection,
    lock_wait: float,
    init: bool,
    unlock: bool,
    guard: BackupGuard | None = None,
) -> RunResult:
    """Write the selected API objects into a private folder as they are read, then back
    the folder up with the planned ``restic backup`` (which names no folder: this one is
    added here). The folder is removed afterwards; only the encrypted repository keeps
    the objects (Secret data included)."""
    if cmd.verb != "backup" or cmd.positional or "--stdin" in cmd.args:
        raise AgentError("a cluster backup is one 'restic backup ...' command without a path")
    kube = Kube.from_env(os.environ)
    with tempfile.TemporaryDirectory(prefix="stash-cluster-") as tmp:
        os.chmod(tmp, 0o700)
        tree = Path(tmp, "cluster")
        tree.mkdir(mode=0o700)
        started = time.monotonic()
        counts = dump(kube, selection, tree)
        log(
            f"wrote {sum(counts.values())} objects of {len(counts)} kinds in "
            f"{time.monotonic() - started:.1f}s: "
            + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")
        )
        full = Command(cmd.path, [*cmd.args, END_OF_OPTIONS, str(tree)])
        result = run_commands([full], lock_wait, init, unlock, [str(tree)], guard=guard)
    return replace(result, objects=counts)


def cluster_restore(
    ref: str,
    tags: list[str],
    namespaces: list[str],
    kinds: list[str],
    overwrite: bool,
    dry_run: bool,
) -> RestoreRunResult:
    """Apply the objects of a Cluster snapshot in dependency order (server-side apply).

    The snapshot is restored into a private folder first; each object is then read and
    applied in turn. An object that fails is named and the others still go; the run
    fails if any did."""
    snaps = [s for s in _select_snapshots(ref, tags) if "target=cluster" in (s.get("tags") or [])]
    if not snaps:
        raise AgentError(f"snapshot {ref} is not a Cluster backup (no tag target=cluster)")
    snap = max(snaps, key=lambda s: s.get("time", ""))
    kube = Kube.from_env(os.environ)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stash-cluster-restore-") as tmp:
        os.chmod(tmp, 0o700)
        proc = restic(
            ["restic", "restore", f"--target={tmp}", END_OF_OPTIONS, str(snap["id"])],
            lock_wait=300,
        )
        if proc.returncode != 0:
            raise AgentError(
                f"restore of snapshot {snap['short_id']} failed (restic exit {proc.returncode})"
            )
        root = Path(tmp, str(snap["paths"][0]).lstrip("/"))
        if not _clean(str(snap["paths"][0])) or not root.is_dir() or root.is_symlink():
            raise AgentError(f"snapshot {snap['short_id']} holds no object tree")
        entries = read_tree(root, namespaces, kinds)
        applier = Applier(kube, overwrite=overwrite, dry_run=dry_run)
        applied = applier.apply_all(entries)
    took = time.monotonic() - started
    summary = ", ".join(f"{k} {v}" for k, v in sorted(applied.actions.items())) or "nothing"
    log(f"snapshot {snap['short_id']}: {len(entries)} objects ({summary}) in {took:.1f}s")
    if applier.failures:
        shown = "; ".join(applier.failures[:10])
        more = f" (and {len(applier.failures) - 10} more)" if len(applier.failures) > 10 else ""
        raise AgentError(
            f"{len(applier.failures)} of {len(entries)} objects could not be applied: {shown}{more}"
        )
    restored = RestoreResult(
        path="/cluster", target="cluster", snapshot_ids=[snap["id"]], duration_seconds=took
    )
    return RestoreRunResult(restores=[restored], cluster=applied)


# ----------------------------------------------------------------------------- main


def _split_commands(rest: list[str], stdin: bool = False, cluster: bool = False) -> list[Command]:
    """``:: PATH restic ARGS... :: PATH restic ARGS...``: each command names the folder
    it is about (as the workload sees it) before its restic argv, so results never have
    to be guessed back from the arguments. What a backup reads comes after restic's
    own ``--`` and is a clean absolute path: never an option, never ``..``."""
    groups: list[list[str]] = []
    for item in rest:
        if item == SEPARATOR:
            groups.append([])
        elif not groups:
            raise AgentError(f"unexpected argument {item!r} before {SEPARATOR!r}")
        else:
            groups[-1].append(item)
    commands = []
    for group in (g for g in groups if g):
        if len(group) < 3 or not _clean(group[0]) or group[1] != "restic":
            raise AgentError(
                f"each command is '{SEPARATOR} PATH restic VERB ...' with a clean absolute PATH"
            )
        command = Command(group[0], group[1:])
        if stdin:  # a database dump: restic reads its standard input and no path
            if command.verb != "backup" or "--stdin" not in command.args or command.positional:
                raise AgentError("a database backup is 'restic backup --stdin ...' with no path")
        elif cluster:  # the agent adds the folder it wrote the objects into
            if command.verb != "backup" or command.positional or "--stdin" in command.args:
                raise AgentError("a cluster backup is 'restic backup ...' with no path")
        elif command.verb == "backup" and (
            not command.positional or not all(_clean(p) for p in command.positional)
        ):
            raise AgentError(f"a backup reads clean absolute paths given after '{END_OF_OPTIONS}'")
        commands.append(command)
    return commands


def _rest_credentials() -> None:
    """restic 0.14 takes REST credentials only inside the URL: add them from the
    environment here, at run time, so they never appear in a plan or a DAG."""
    user = os.environ.get("RESTIC_REST_USERNAME")
    repo = os.environ.get("RESTIC_REPOSITORY", "")
    if not user or not repo.startswith("rest:http"):
        return
    scheme, rest = repo[len("rest:") :].split("://", 1)
    password = os.environ.get("RESTIC_REST_PASSWORD", "")
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    os.environ["RESTIC_REPOSITORY"] = f"rest:{scheme}://{auth}@{rest}"


def _json_env(name: str, kind: type) -> Any:
    """A JSON value the runtime or the plan passed in the environment (None if unset)."""
    text = os.environ.get(name)
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AgentError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        raise AgentError(f"{name} must be a JSON {kind.__name__}")
    return value


def _guard_from_env() -> BackupGuard | None:
    data = _json_env(ENV_BACKUP_GUARD, dict)
    if data is None:
        return None
    try:
        return BackupGuard.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise AgentError(f"{ENV_BACKUP_GUARD} is not a backup guard: {exc}") from None


def _write_result(result: RunResult | RestoreRunResult | MaintenanceResult) -> None:
    """Hand the result to whoever runs the agent: a file (local runtime) or the
    container's termination message (pods; Kubernetes keeps up to 4 KiB of it)."""
    target = os.environ.get(ENV_RESULT_FILE)
    if target:
        Path(target).write_text(encode(result))
    message = os.environ.get(ENV_TERMINATION_MESSAGE)
    if message:
        Path(message).write_text(fit_termination_message(result))


def _write_error(message: str) -> None:
    path = os.environ.get(ENV_TERMINATION_MESSAGE)
    if path:
        Path(path).write_text(error_line(message)[:TERMINATION_MESSAGE_LIMIT])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="stash-agent")
    sub = parser.add_subparsers(dest="verb", required=True)
    run_p = sub.add_parser("run", help=f"run restic commands, each after a '{SEPARATOR}'")
    run_p.add_argument("--init", action="store_true", help="create the repository if missing")
    run_p.add_argument(
        "--unlock", action="store_true", help="clear stale locks when one is in the way"
    )
    run_p.add_argument(
        "--lock-wait",
        type=float,
        default=os.environ.get(ENV_LOCK_WAIT) or "600",  # argparse applies ``type``
        help="seconds to wait for a live lock (default: $STASH_LOCK_WAIT, else 600)",
    )
    run_p.add_argument(
        "--within",
        action="append",
        default=[],
        help="a volume every backed-up folder must stay inside (links followed)",
    )
    res_p = sub.add_parser("restore", help="restore a snapshot into target folders")
    res_p.add_argument("--snapshot", default="latest")
    res_p.add_argument("--mount-path", action="append", default=[])
    res_p.add_argument("--target", action="append", default=[])
    res_p.add_argument("--path", action="append", default=[])
    res_p.add_argument("--overwrite", action="store_true")
    res_p.add_argument(
        "--if-empty",
        action="store_true",
        help="restore only into empty targets; skip (never touch) the others",
    )
    res_p.add_argument("--tag", action="append", default=[], help="a tag snapshots must carry")
    res_p.add_argument(
        "--stash08-host", default=None, help="latest also considers this host's 0.8 snapshots"
    )
    main_p = sub.add_parser("maintain", help="check the repository, clear stale locks, measure it")
    main_p.add_argument("--read-data-subset", default=None, help="restic check's data subset")
    dump_p = sub.add_parser("dump", help="stream a database dump into restic backup --stdin")
    dump_p.add_argument("--engine", choices=ENGINES, required=True)
    dump_p.add_argument("--init", action="store_true", help="create the repository if missing")
    dump_p.add_argument(
        "--unlock", action="store_true", help="clear stale locks when one is in the way"
    )
    dump_p.add_argument("--lock-wait", type=float, default=os.environ.get(ENV_LOCK_WAIT) or "600")
    dump_p.add_argument("--stdin", action="store_true", help="the dump is piped to the agent")
    rdb_p = sub.add_parser("restore-database", help="restore a database dump snapshot")
    rdb_p.add_argument("--engine", choices=ENGINES, required=True)
    rdb_p.add_argument("--snapshot", default="latest")
    rdb_p.add_argument("--tag", action="append", default=[])
    rdb_p.add_argument("--overwrite", action="store_true")
    cd_p = sub.add_parser("cluster-dump", help="back up API objects as a YAML tree")
    cd_p.add_argument("--resource", action="append", default=[], help="GROUP[/VERSION]:RESOURCE")
    cd_p.add_argument("--namespace", action="append", default=[])
    cd_p.add_argument("--exclude-namespace", action="append", default=[])
    cd_p.add_argument("--sanitize", action="store_true")
    cd_p.add_argument("--parents-only", action="store_true")
    cd_p.add_argument("--init", action="store_true", help="create the repository if missing")
    cd_p.add_argument("--unlock", action="store_true", help="clear stale locks first")
    cd_p.add_argument("--lock-wait", type=float, default=os.environ.get(ENV_LOCK_WAIT) or "600")
    cr_p = sub.add_parser("cluster-restore", help="apply the API objects of a Cluster snapshot")
    cr_p.add_argument("--snapshot", default="latest")
    cr_p.add_argument("--tag", action="append", default=[])
    cr_p.add_argument("--namespace", action="append", default=[])
    cr_p.add_argument("--kind", action="append", default=[])
    cr_p.add_argument("--overwrite", action="store_true")
    cr_p.add_argument("--dry-run", action="store_true")
    head = argv[: argv.index(SEPARATOR)] if SEPARATOR in argv else argv
    tail = argv[len(head) :]
    args = parser.parse_args(head)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupted)
    try:
        if ENV_REPOSITORY not in os.environ or ENV_PASSWORD not in os.environ:
            raise AgentError(f"{ENV_REPOSITORY} and {ENV_PASSWORD} must be set")
        _rest_credentials()
        db = database_from_env(args.engine, os.environ) if hasattr(args, "engine") else None
        result: RunResult | RestoreRunResult | MaintenanceResult
        with credential_files(os.environ) as options:
            RESTIC_OPTIONS[:] = options
            if args.verb == "dump":
                assert db is not None
                commands = _split_commands(tail, stdin=True)
                if len(commands) != 1:
                    raise AgentError("a database backup is exactly one restic command")
                guard = _guard_from_env()
                result = dump_backup(
                    commands[0],
                    db,
                    args.stdin,
                    args.lock_wait,
                    args.init,
                    args.unlock,
                    guard,
                )
                result = replace(result, record_digest=store_record(guard, args.lock_wait))
            elif args.verb == "cluster-dump":
                commands = _split_commands(tail, stdin=False, cluster=True)
                if len(commands) != 1:
                    raise AgentError("a cluster backup is exactly one restic command")
                selection = Selection(
                    [parse_resource(r) for r in args.resource],
                    args.namespace,
                    args.exclude_namespace,
                    args.sanitize,
                    args.parents_only,
                )
                if not selection.resources:
                    raise AgentError("name at least one --resource")
                guard = _guard_from_env()
                result = cluster_backup(
                    commands[0], selection, args.lock_wait, args.init, args.unlock, guard
                )
                result = replace(result, record_digest=store_record(guard, args.lock_wait))
            elif args.verb == "cluster-restore":
                result = cluster_restore(
                    args.snapshot, args.tag, args.namespace, args.kind, args.overwrite, args.dry_run
                )
            elif args.verb == "restore-database":
                assert db is not None
                result = restore_database(db, args.snapshot, args.tag, args.overwrite)
            elif args.verb == "run":
                commands = _split_commands(tail)
                guard = _guard_from_env()
                result = run_commands(
                    commands,
                    args.lock_wait,
                    args.init,
                    args.unlock,
                    args.within,
                    guard=guard,
                )
                if result.backups:
                    result = replace(result, record_digest=store_record(guard, args.lock_wait))
            elif args.verb == "maintain":
                result = maintain(args.read_data_subset)
            else:
                if len(args.mount_path) != len(args.target) or not args.target:
                    raise AgentError("give --mount-path and --target in pairs")
                if args.if_empty and args.overwrite:
                    raise AgentError("--if-empty never writes over data: drop --overwrite")
                result = restore(
                    args.snapshot,
                    list(zip(args.mount_path, args.target, strict=True)),
                    args.path,
                    args.overwrite,
                    args.tag,
                    args.stash08_host,
                    args.if_empty,
                )
    except (AgentError, DatabaseError, ClusterError) as exc:
        print(error_line(str(exc)), file=sys.stderr, flush=True)
        _write_error(str(exc))
        return 1
    except Interrupted as exc:
        message = f"stopped by {exc} (a task timeout or a stopped task); restic was interrupted"
        print(error_line(message), file=sys.stderr, flush=True)
        _write_error(message)
        return 128 + exc.signum
    except FileNotFoundError as exc:
        print(error_line(f"{exc.strerror}: {exc.filename}"), file=sys.stderr, flush=True)
        _write_error(f"{exc.strerror}: {exc.filename}")
        return 1
    _write_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
