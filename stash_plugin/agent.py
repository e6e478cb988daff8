"""``stash-agent``: the program every backup and recovery step runs, as a process or a pod.

It wraps restic with what a scheduled, unattended run needs and restic alone does not
do: create the repository on first use (but never over a wrong password), clear stale
locks left by a killed run while waiting for live ones, turn restic's JSON into one
result document, and restore through a staging folder so that a failed restore never
leaves a half-written target that looks complete.

The result (records of ``stash_plugin.protocol``) goes to ``$STASH_RESULT_FILE``
(local runtime) and, in a pod, to the container's termination message, which the
operator reads from the pod's status. Only the standard library is used, so the agent
image needs nothing of Airflow.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from stash_plugin.credentials import credential_files, tls_problem
from stash_plugin.protocol import (
    END_OF_OPTIONS,
    ENV_AGENT_POD_PREFIX,
    ENV_DEAD_LOCK_BEFORE,
    ENV_LIVE_AGENT_PODS,
    ENV_LOCK_WAIT,
    ENV_PASSWORD,
    ENV_REPOSITORY,
    ENV_RESTIC_BINARY,
    ENV_RESULT_FILE,
    ENV_TERMINATION_MESSAGE,
    SEPARATOR,
    TERMINATION_MESSAGE_LIMIT,
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


def _run_restic(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run restic with no terminal and no standard input (it must never wait for a
    password or confirmation). When the agent is told to stop, restic gets SIGINT, the
    one signal on which restic 0.14 removes its lock, and some time to do so."""
    proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate()
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
    args: Sequence[str], *, lock_wait: float = 0.0, echo: bool = True, clear_dead: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run one restic command, waiting (with backoff) while another run holds the lock;
    locks of deleted agent pods are removed first (``clear_dead_locks``)."""
    rest = args[1:] if args and args[0] == "restic" else args
    argv = [_restic(), *RESTIC_OPTIONS, *rest]
    deadline = time.monotonic() + lock_wait
    delay, clears = 2.0, 0
    while True:
        proc = _run_restic(argv)
        if proc.stderr and echo:
            sys.stderr.write(proc.stderr)
            sys.stderr.flush()
        if proc.returncode != 0 and (problem := tls_problem(proc.stderr, bool(RESTIC_OPTIONS))):
            raise AgentError(problem)
        if proc.returncode == 0 or LOCKED not in proc.stderr:
            return proc
        if clear_dead and clears < 3 and clear_dead_locks():
            clears += 1
            continue
        if time.monotonic() >= deadline:
            return proc
        log(f"repository is locked by another run; waiting {delay:.0f}s")
        time.sleep(delay)
        delay = min(delay * 2, 30.0)


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
    counts = {
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
) -> RunResult:
    """Run restic commands in order; stop at the first failure.

    Stale locks of a killed run are cleared first (``unlock``), so that no exclusive
    operation (retention, check) after this run trips over them. The repository is
    created (``init``) only when the first command finds none: probing for it first
    would cost a key derivation (most of a second) on every run. Every folder a backup
    reads must stay inside one of the ``within`` volumes once links are followed;
    this is checked for all of them before anything runs.
    """
    for cmd in commands:
        if cmd.verb == "backup":
            for path in cmd.positional:
                _check_inside(path, within)
    result = RunResult()
    if unlock:
        unlock_stale()
    for cmd in commands:
        proc = restic(cmd.args, lock_wait=lock_wait)
        if proc.returncode != 0 and WRONG_PASSWORD in proc.stderr:
            raise AgentError("wrong repository password (RESTIC_PASSWORD of the storage Secret)")
        if proc.returncode != 0 and init and NO_REPOSITORY in proc.stderr:
            ensure_repository()
            init = False
            proc = restic(cmd.args, lock_wait=lock_wait)
        if cmd.verb == "backup":
            result.backups.append(_checked_backup(cmd, proc, lock_wait))
        elif proc.returncode != 0:
            raise AgentError(f"restic {cmd.verb} failed (restic exit {proc.returncode})")
        elif cmd.verb == "forget":
            result.forgets.append(_forget_result(cmd, proc))
        elif cmd.verb == "snapshots":
            snaps: list[dict[str, Any]] = next(iter(_json_lines(proc.stdout)), []) or []
            infos = [_snapshot_info(s) for s in snaps]
            result.snapshots.append(SnapshotList(path=cmd.path, count=len(infos), snapshots=infos))
    return result


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
    return ForgetResult(
        path=cmd.path,
        kept=kept,
        removed=removed,
        bytes_freed=freed,
        dry_run="--dry-run" in cmd.args,
    )


# ----------------------------------------------------------------------------- restore


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _workload_path(snap: dict[str, Any]) -> str:
    """The path the workload saw: our ``path=`` tag, or (Stash 0.8) the snapshot path."""
    tagged = next(
        (t[len("path=") :] for t in snap.get("tags") or [] if t.startswith("path=")), None
    )
    return tagged or snap["paths"][0]


def _restic_snapshots(args: list[str], ref: str) -> list[dict[str, Any]]:
    proc = restic(["restic", "snapshots", "--json", *args], lock_wait=300)
    if proc.returncode != 0:
        if WRONG_PASSWORD in proc.stderr:
            raise AgentError("wrong repository password (RESTIC_PASSWORD of the storage Secret)")
        raise AgentError(f"cannot list snapshots {ref} (restic exit {proc.returncode})")
    return next(iter(_json_lines(proc.stdout)), []) or []


def _tagged(snap: dict[str, Any]) -> bool:
    """Whether Stash tagged the snapshot; Stash 0.8's snapshots carry no ``namespace=``."""
    return any(t.startswith("namespace=") for t in snap.get("tags") or [])


def _target_of(snap: dict[str, Any]) -> str:
    tags = snap.get("tags") or []
    return ", ".join(t for t in tags if t.startswith(("namespace=", "restic=", "target=")))


def _latest_candidates(tags: list[str]) -> list[dict[str, Any]]:
    """Every snapshot carrying all ``tags``; none found is explained (nothing yet, only
    Stash 0.8 snapshots, or only other targets'), never answered with someone else's."""
    snaps = _restic_snapshots([f"--tag={','.join(tags)}"] if tags else [], "latest")
    if snaps:
        return snaps
    everything = _restic_snapshots([], "latest") if tags else []
    if not everything:
        raise AgentError("no snapshot latest in the repository")
    wanted = ",".join(tags)
    if not any(_tagged(s) for s in everything):
        raise AgentError(
            f"no snapshot tagged {wanted}: the repository holds only snapshots without "
            f"Stash's tags ({len(everything)}, from Stash 0.8); restore one by its id "
            "(volumeRestorer.snapshot)"
        )
    raise AgentError(
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


def _select_snapshots(ref: str, tags: list[str]) -> list[dict[str, Any]]:
    """The snapshots a restore may use: ``latest`` looks only at those carrying ``tags``
    (``namespace=`` at least, when planned), an explicit id must carry them."""
    if ref == "latest":
        snaps = _latest_candidates(tags)
        _one_target(snaps, tags)
    else:
        snaps = _restic_snapshots([END_OF_OPTIONS, ref], ref)
        if not snaps:
            raise AgentError(f"no snapshot {ref} in the repository")
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


def _move_into(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest``, merging directories and replacing files."""
    if src.is_dir() and not src.is_symlink() and dest.is_dir() and not dest.is_symlink():
        for child in src.iterdir():
            _move_into(child, dest / child.name)
        shutil.copystat(src, dest, follow_symlinks=False)
        src.rmdir()
        return
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.is_dir():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.rename(src, dest)


def _restore_one(
    snap: dict[str, Any], include: str, final: Path, wanted: str, target: Path
) -> None:
    """Restore ``include`` of ``snap`` into a staging folder beside ``final``, then move
    it into place: a failed restore leaves nothing half-written at ``final``.

    The staging folder sits inside ``final`` when that is an existing folder (a mounted
    volume's root), else beside it, so the final moves never cross filesystems. Nothing
    is written unless ``final`` stays inside ``target`` (the recoverTo volume) once
    links are followed."""
    if not _under(os.path.normpath(final), str(target)) or not _resolves_inside(
        final, target, False
    ):
        raise AgentError(f"{final} (for {wanted}) leads outside the restore target {target}")
    final.parent.mkdir(parents=True, exist_ok=True)
    home = final if final.is_dir() and not final.is_symlink() else final.parent
    staging = Path(tempfile.mkdtemp(prefix=".stash-restore-", dir=home))
    try:
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
        _move_into(restored, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def restore(
    snapshot: str,
    mounts: list[tuple[str, str]],
    paths: list[str],
    overwrite: bool,
    tags: Sequence[str] = (),
) -> RestoreRunResult:
    if any("," in t or not t for t in tags):
        raise AgentError("each --tag is one non-empty tag without commas")
    snaps = _select_snapshots(snapshot, list(tags))
    wanted_all = paths or [m for m, _ in mounts]
    # Refuse before writing anything: one non-empty target stops the whole recovery.
    plan: list[tuple[str, Path, Path]] = []
    for wanted in wanted_all:
        if not _clean(wanted):
            raise AgentError(f"path {wanted!r} is not a clean absolute path")
        found = next(((m, t) for m, t in mounts if _clean(m) and _under(wanted, m)), None)
        if found is None:
            raise AgentError(f"{wanted} is under no --mount-path")
        mount, root = Path(found[0]), Path(found[1])
        dest = root / posixpath.relpath(wanted, mount) if wanted != str(mount) else root
        if not overwrite and not _is_empty(dest):
            raise AgentError(
                f"target {dest} (for {wanted}) is not empty; set volumeRestorer.overwrite: true "
                "to restore over existing files"
            )
        plan.append((wanted, dest, root))
    stats: list[RestoreResult] = []
    for wanted, dest, root in plan:
        started = time.monotonic()
        used = []
        for snap in _pick(snaps, wanted, snapshot):
            wpath = _workload_path(snap)
            if _under(wanted, wpath):
                include = posixpath.join(snap["paths"][0], posixpath.relpath(wanted, wpath))
                final = dest
            else:  # the snapshot is of a folder inside the wanted path
                include = snap["paths"][0]
                final = dest / posixpath.relpath(wpath, wanted)
            _restore_one(snap, posixpath.normpath(include), final, wanted, root)
            used.append(snap["id"])
        took = time.monotonic() - started
        log(f"restored {wanted} from snapshot(s) {', '.join(u[:8] for u in used)} in {took:.2f}s")
        stats.append(
            RestoreResult(path=wanted, target=str(dest), snapshot_ids=used, duration_seconds=took)
        )
    return RestoreRunResult(restores=stats)


# ----------------------------------------------------------------------------- maintain

_TARGET_TAGS = ("namespace=", "restic=", "target=")


def _target_key(snap: dict[str, Any]) -> str | None:
    tags = snap.get("tags") or []
    parts = [next((t for t in tags if t.startswith(p)), None) for p in _TARGET_TAGS]
    return ",".join(p for p in parts if p) if all(parts) else None


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
    snaps = _restic_snapshots(["--no-lock"], "of the repository")
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


# ----------------------------------------------------------------------------- main


def _split_commands(rest: list[str]) -> list[Command]:
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
        if command.verb == "backup" and (
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
    run_p.add_argument("--unlock", action="store_true", help="clear stale locks first")
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
    res_p.add_argument("--tag", action="append", default=[], help="a tag snapshots must carry")
    main_p = sub.add_parser("maintain", help="check the repository, clear stale locks, measure it")
    main_p.add_argument("--read-data-subset", default=None, help="restic check's data subset")
    head = argv[: argv.index(SEPARATOR)] if SEPARATOR in argv else argv
    tail = argv[len(head) :]
    args = parser.parse_args(head)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupted)
    try:
        if ENV_REPOSITORY not in os.environ or ENV_PASSWORD not in os.environ:
            raise AgentError(f"{ENV_REPOSITORY} and {ENV_PASSWORD} must be set")
        _rest_credentials()
        with credential_files(os.environ) as options:
            RESTIC_OPTIONS[:] = options
            if args.verb == "run":
                commands = _split_commands(tail)
                result: RunResult | RestoreRunResult | MaintenanceResult = run_commands(
                    commands, args.lock_wait, args.init, args.unlock, args.within
                )
            elif args.verb == "maintain":
                result = maintain(args.read_data_subset)
            else:
                if len(args.mount_path) != len(args.target) or not args.target:
                    raise AgentError("give --mount-path and --target in pairs")
                result = restore(
                    args.snapshot,
                    list(zip(args.mount_path, args.target, strict=True)),
                    args.path,
                    args.overwrite,
                    args.tag,
                )
    except AgentError as exc:
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
