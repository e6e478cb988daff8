"""What the agent and the Airflow side tell each other: one module both import.

The agent (``stash_plugin.agent``) runs in a pod image with nothing of Airflow, and
the Airflow side (runtime, operators) reads what it reports. Both sides import this
module, which uses only the standard library, so the environment names, the error
line and the result records cannot drift apart. Durations are seconds (floats);
the Go-style ``3.2s`` text of Stash's status is made only where status is written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

# --------------------------------------------------------------------------- environment

ENV_REPOSITORY = "RESTIC_REPOSITORY"
ENV_PASSWORD = "RESTIC_PASSWORD"
ENV_RESULT_FILE = "STASH_RESULT_FILE"
"""Local runtime: where the agent writes its result document."""
ENV_TERMINATION_MESSAGE = "STASH_TERMINATION_MESSAGE_PATH"
"""Pods: the container's termination message file; the operator reads it back."""
ENV_RESTIC_BINARY = "STASH_RESTIC_BINARY"
"""Which restic to run (default ``restic`` on PATH)."""
ENV_LOCK_WAIT = "STASH_LOCK_WAIT"
"""Seconds to wait for a live repository lock when ``--lock-wait`` is not given."""
ENV_LIVE_AGENT_PODS = "STASH_LIVE_AGENT_PODS"
"""Pods: host names of the agent pods that existed just before this one was created,
comma-separated (``stash_plugin.agent.clear_dead_locks``)."""
ENV_AGENT_POD_PREFIX = "STASH_AGENT_POD_PREFIX"
"""Pods: how agent pod names (so their lock host names) start."""
ENV_DEAD_LOCK_BEFORE = "STASH_DEAD_LOCK_BEFORE"
"""Pods: the listing time less the allowed clock skew (Unix seconds); only a lock older
than this can be judged by the listing."""
ENV_REPOSITORY_RECORD = "STASH_REPOSITORY_RECORD"
"""A backup step: the Repository object it backs up for, sanitised (no status, no
Secret data; see ``plan.records``), as JSON. The agent keeps it in the repository
(:data:`REPOSITORY_RECORD_TAG`) so that ``stash discover`` can recreate the object."""
ENV_BACKUP_GUARD = "STASH_BACKUP_GUARD"
"""A backup step: the target's history the agent cannot see (a :class:`BackupGuard`
as JSON), added by the runtime when the step runs."""

# Database targets: where the database is and who logs in. The plan sets them (the
# user and password from Secret references only); the agent hands the password to the
# database tool as its own variable or a private option file, never as an argument.
ENV_DB_HOST = "DB_HOST"
ENV_DB_PORT = "DB_PORT"
ENV_DB_NAME = "DB_NAME"
"""One database, or ``all`` (every database of the server)."""
ENV_DB_USER = "DB_USER"
ENV_DB_PASSWORD = "DB_PASSWORD"
ALL_DATABASES = "all"
ENGINES = ("postgres", "mysql", "mariadb", "redis")
"""Database engines the default agent dumps and restores."""

# Cluster targets in the local runtime: the Kubernetes API of the Airflow connection,
# handed over by the runtime when the step runs (the token as a secret: environment
# only, masked in logs). In a pod the agent uses its ServiceAccount instead.
ENV_KUBE_SERVER = "STASH_KUBE_SERVER"
ENV_KUBE_TOKEN = "STASH_KUBE_TOKEN"
ENV_KUBE_CA_FILE = "STASH_KUBE_CA_FILE"
ENV_KUBE_CERT_FILE = "STASH_KUBE_CERT_FILE"
ENV_KUBE_KEY_FILE = "STASH_KUBE_KEY_FILE"
ENV_KUBE_INSECURE = "STASH_KUBE_INSECURE"

AGENT = "stash-agent"
"""The agent program, first item of every default step's argv."""
SEPARATOR = "::"
"""Separates the agent's own options from each command it runs. It is not ``--``:
every restic command carries its own ``--`` before its positional arguments, so
that no value can ever be read as a restic option. No planned value can be ``::``
(paths start with ``/``, every other value is a ``--flag=value`` item)."""
END_OF_OPTIONS = "--"
"""What restic (cobra/pflag) and the agent read as "only arguments from here"."""

# --------------------------------------------------------------------------- errors

ERROR_PREFIX = "stash-agent: error: "
TERMINATION_MESSAGE_LIMIT = 4096
"""Kubernetes keeps at most this many bytes of a termination message."""


def error_line(message: str) -> str:
    """The line the agent prints (and leaves as termination message) when it fails."""
    return f"{ERROR_PREFIX}{message}"


def parse_error(text: str | None) -> str | None:
    """The agent's own reason from its output: the last error line, secret-free by
    construction (the agent never puts a secret in one)."""
    lines = [ln for ln in (text or "").splitlines() if ERROR_PREFIX in ln]
    return lines[-1].split(ERROR_PREFIX, 1)[1].strip() if lines else None


# --------------------------------------------------------------------------- results

R = TypeVar("R", bound="Record")


class Record:
    """A result record: JSON out, JSON in; unknown keys are dropped on reading, so an
    older Airflow side can read a newer agent's results."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload, no-any-return]

    @classmethod
    def from_dict(cls: type[R], data: Any) -> R:
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class BackupResult(Record):
    """One ``restic backup`` of one folder."""

    path: str
    """The folder as the workload sees it (what status and restores name)."""
    snapshot_id: str | None = None
    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    dirs_new: int = 0
    dirs_changed: int = 0
    data_added: int = 0
    """Bytes added to the repository (after deduplication and compression)."""
    total_files_processed: int = 0
    total_bytes_processed: int = 0
    duration_seconds: float = 0.0
    source_drop: str | None = None
    """Why this snapshot is flagged (the source is empty or shrank sharply against the
    previous one); None when it is not."""
    kept_before_drop: list[str] = field(default_factory=list)
    """Snapshots taken before a flagged drop, now tagged :data:`BEFORE_DROP_TAG`."""


BEFORE_DROP_TAG = "stash-before-drop"
"""Reserved snapshot tag: the last snapshots before a flagged drop carry it, and
retention always keeps snapshots that carry it (until someone removes the tag)."""

REPOSITORY_RECORD_TAG = "stash-repository"
"""Reserved snapshot tag (and host) of the tiny snapshot that holds the Repository
object a target backs up for: how a lost object is found again from the backend. It is
never a backup: it carries none of the tags that retention, ``latest``, verification
and status counts select by, and restore refuses it by id."""
REPOSITORY_RECORD_FILE = "stash-repository.json"
"""The record's file name inside its snapshot (``restic --stdin-filename``)."""
RESERVED_TAGS = (BEFORE_DROP_TAG, REPOSITORY_RECORD_TAG)
"""Tags only Stash sets; a user's tag may not spell one."""


def record_digest(text: str) -> str:
    """Short digest of a Repository record: the status keeps the stored one, so the
    agent writes the record again only when the object changed."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


TARGET_TAG_KEYS = ("namespace=", "restic=", "target=")


def target_key(tags: list[str]) -> str | None:
    """``namespace=N,restic=R,target=T``: which target a snapshot belongs to, from the
    tags Stash gives every backup; None for a snapshot without them (Stash 0.8's)."""
    parts = [next((t for t in tags if t.startswith(p)), None) for p in TARGET_TAG_KEYS]
    return ",".join(p for p in parts if p) if all(parts) else None


def is_record(snapshot: dict[str, Any]) -> bool:
    """Whether a snapshot (as restic lists it) is a Repository record, not a backup."""
    return REPOSITORY_RECORD_TAG in (snapshot.get("tags") or [])


@dataclass(frozen=True)
class SourceSize(Record):
    """What one folder's last good backup held: the baseline of the next one."""

    path: str
    files: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class BackupGuard(Record):
    """What the Airflow side knows about a target and the agent cannot see.

    The agent only sees a repository URL: whether a missing repository is a first
    backup or an unmounted disk, and how big the source was last time, come from the
    target's status. Without a guard the agent checks neither (a bare ``stash-agent``).
    """

    backups_on_record: int = 0
    """Successful backups the status records; above zero a missing repository is an
    error, never created afresh."""
    previous: list[SourceSize] = field(default_factory=list)
    shrink_threshold: float = 0.5
    """A drop of more than this share of the files or of the bytes flags the backup."""
    keep_before_drop: int = 1
    """How many snapshots before a flagged drop get :data:`BEFORE_DROP_TAG`."""
    history_lost: str = ""
    """Why the target's history is unknown (its status was unreadable and set aside):
    with no backups on record, a missing repository is then an error too, since it may
    as well be a lost disk as a first backup."""
    record_stored: str | None = None
    """Digest of the Repository record the status says the repository holds; the
    agent writes the record only when it differs (no cost on an ordinary run)."""

    @classmethod
    def from_dict(cls, data: Any) -> BackupGuard:
        base = super().from_dict(data)
        previous = [
            p if isinstance(p, SourceSize) else SourceSize.from_dict(p) for p in base.previous
        ]
        return cls(
            backups_on_record=int(base.backups_on_record),
            previous=previous,
            shrink_threshold=float(base.shrink_threshold),
            keep_before_drop=int(base.keep_before_drop),
            history_lost=str(base.history_lost),
            record_stored=str(base.record_stored) if base.record_stored else None,
        )

    def baseline(self, path: str) -> SourceSize | None:
        return next((p for p in self.previous if p.path == path), None)


def source_drop(previous: SourceSize | None, files: int, size: int, threshold: float) -> str | None:
    """Why a backup of ``files`` files and ``size`` bytes is suspicious, or None.

    An empty source is always flagged (a wrong or unmounted volume looks exactly like
    this); a shrink is flagged when more than ``threshold`` of the files or of the bytes
    of the previous backup are gone (``threshold >= 1`` never flags a shrink)."""
    if files == 0:
        return "the source is empty (no files)"
    if previous is None:
        return None
    for what, before, now in (("files", previous.files, files), ("bytes", previous.bytes, size)):
        if before > 0 and (before - now) / before > threshold:
            share = round(100 * (before - now) / before)
            return (
                f"the source shrank from {before} to {now} {what} (-{share}%) since the "
                f"previous backup (more than {threshold:.0%})"
            )
    return None


KEPT_IDS_LIMIT = 20


@dataclass(frozen=True)
class ForgetResult(Record):
    """Retention of one folder's snapshots."""

    path: str
    kept: int = 0
    removed: int = 0
    bytes_freed: int | None = None
    """What prune reported removing; None when nothing was pruned."""
    dry_run: bool = False
    kept_ids: list[str] = field(default_factory=list)
    """Short ids of the newest kept snapshots (at most :data:`KEPT_IDS_LIMIT` per
    folder): restic listed them from the repository, so ``verify`` needs no listing of
    its own to confirm the snapshot the backup just made."""


@dataclass(frozen=True)
class SnapshotInfo(Record):
    id: str
    short_id: str = ""
    time: str | None = None
    paths: list[str] = field(default_factory=list)
    hostname: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SnapshotList(Record):
    """The snapshots of one folder of one target."""

    path: str
    count: int = 0
    snapshots: list[SnapshotInfo] = field(default_factory=list)
    """The newest ones; all of them unless the list had to be cut to fit a pod's
    termination message (``count`` stays the real number)."""
    oldest_time: str | None = None
    """When the oldest of them was taken (kept when the list is cut): with ``count``,
    what a target's lost status is rebuilt from."""

    @classmethod
    def from_dict(cls, data: Any) -> SnapshotList:
        base = super().from_dict(data)
        snaps = [
            s if isinstance(s, SnapshotInfo) else SnapshotInfo.from_dict(s) for s in base.snapshots
        ]
        oldest = base.oldest_time or min((s.time for s in snaps if s.time), default=None)
        return cls(
            path=base.path, count=base.count or len(snaps), snapshots=snaps, oldest_time=oldest
        )


@dataclass(frozen=True)
class RunResult(Record):
    """What ``stash-agent run`` did: one record per restic command of each verb."""

    backups: list[BackupResult] = field(default_factory=list)
    forgets: list[ForgetResult] = field(default_factory=list)
    snapshots: list[SnapshotList] = field(default_factory=list)
    record_digest: str | None = None
    """Digest of the Repository record the repository holds after this run (set by a
    backup that was given one and found it stored or stored it)."""
    objects: dict[str, int] | None = None
    """A Cluster backup: objects written per kind (``apps/Deployment``)."""

    @classmethod
    def from_dict(cls, data: Any) -> RunResult:
        data = data if isinstance(data, dict) else {}
        digest = data.get("record_digest")
        objects = data.get("objects")
        return cls(
            backups=[BackupResult.from_dict(b) for b in data.get("backups") or []],
            forgets=[ForgetResult.from_dict(f) for f in data.get("forgets") or []],
            snapshots=[SnapshotList.from_dict(s) for s in data.get("snapshots") or []],
            record_digest=digest if isinstance(digest, str) else None,
            objects={str(k): int(v) for k, v in objects.items()}
            if isinstance(objects, dict)
            else None,
        )


@dataclass(frozen=True)
class RestoreResult(Record):
    """One restored (or, with ``skipped``, deliberately untouched) path."""

    path: str
    target: str
    snapshot_ids: list[str] = field(default_factory=list)
    duration_seconds: float = 0.0
    skipped: str | None = None
    """Why nothing was written (``restore --if-empty``): ``not empty``, or no snapshot
    to restore yet."""


@dataclass
class ClusterApply(Record):
    """What a Cluster restore did to the API objects of its snapshot."""

    dry_run: bool = False
    actions: dict[str, int] = field(default_factory=dict)
    """Objects per outcome: ``created``, ``changed``, ``unchanged``, ``exists, left
    alone``; in a dry run ``would create`` and ``would change``."""
    kinds: dict[str, int] = field(default_factory=dict)
    """Objects looked at per kind (``apps/Deployment``)."""
    failed: list[str] = field(default_factory=list)
    """``group/Kind namespace/name: reason`` of each object that could not be applied."""


@dataclass(frozen=True)
class RestoreRunResult(Record):
    restores: list[RestoreResult] = field(default_factory=list)
    cluster: ClusterApply | None = None

    @classmethod
    def from_dict(cls, data: Any) -> RestoreRunResult:
        data = data if isinstance(data, dict) else {}
        cluster = data.get("cluster")
        return cls(
            restores=[RestoreResult.from_dict(r) for r in data.get("restores") or []],
            cluster=ClusterApply.from_dict(cluster) if isinstance(cluster, dict) else None,
        )


@dataclass(frozen=True)
class MaintenanceResult(Record):
    """What ``stash-agent maintain`` found in one restic repository (one repoDir)."""

    exists: bool = True
    """False when nothing was backed up there yet: nothing to check."""
    check_ok: bool | None = None
    """``restic check`` passed; None when it did not run."""
    check_error: str | None = None
    stale_locks_removed: int = 0
    size_bytes: int | None = None
    """Bytes the repository stores (``restic stats --mode raw-data``)."""
    snapshot_count: int = 0
    target_snapshots: dict[str, int] = field(default_factory=dict)
    """Snapshots per target, keyed by its tags ``namespace=N,restic=R,target=T``."""


def encode(result: Record) -> str:
    return json.dumps(result.to_dict(), separators=(",", ":"))


def fit_termination_message(result: RunResult | RestoreRunResult | MaintenanceResult) -> str:
    """The result as JSON within Kubernetes' termination message limit: long snapshot
    lists keep their count and their newest entries, ids only."""
    text = encode(result)
    if len(text) <= TERMINATION_MESSAGE_LIMIT or not isinstance(result, RunResult):
        return text
    for keep in (20, 5, 0):
        lists = [
            SnapshotList(
                path=g.path,
                count=g.count,
                oldest_time=g.oldest_time,
                snapshots=[SnapshotInfo(id=s.id, short_id=s.short_id) for s in g.snapshots[-keep:]]
                if keep
                else [],
            )
            for g in result.snapshots
        ]
        text = encode(RunResult(result.backups, result.forgets, lists, result.record_digest))
        if len(text) <= TERMINATION_MESSAGE_LIMIT:
            break
    return text
