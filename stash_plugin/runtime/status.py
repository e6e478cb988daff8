"""Where outcomes are recorded: the Repository/Recovery ``status``.

The local runtime keeps each object's status in a JSON file under the state folder
(``repositories/NS/NAME.json``, ``recoveries/NS/NAME.json``), shaped exactly like the
object's ``status``; the cluster runtime will patch the objects' ``status``
subresource through the same interface.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from ..api.resources import BackupRepo, RecoveryPathStats, RecoveryStatus, RepositoryStatus
from ..plan.model import TargetRef


def go_duration(seconds: float) -> str:
    """``3.026137088s``: how Stash (Go) wrote durations in the status."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


@dataclass(frozen=True)
class BackupOutcome:
    """What one backup run did, as recorded in the target's status entry."""

    succeeded: bool
    started: datetime
    duration_seconds: float
    snapshot_ids: tuple[str, ...] = ()
    snapshot_count: int | None = None
    failure: str | None = None


class StatusStore(Protocol):
    def record_backup(self, target: TargetRef, outcome: BackupOutcome) -> BackupRepo: ...

    def record_recovery(self, namespace: str, name: str, status: RecoveryStatus) -> None: ...


def apply_outcome(
    entry: BackupRepo | None, target: TargetRef, outcome: BackupOutcome
) -> BackupRepo:
    """The new status entry of a target. A failure only adds failure fields, so the
    last good backup's record stays intact."""
    base = entry or BackupRepo(
        type=target.type,
        workload_kind=target.workload_kind,
        workload_name=target.workload_name,
        restic_name=target.restic_name,
        restic_namespace=target.restic_namespace,
        repo_dir=target.repo_dir,
    )
    if not outcome.succeeded:
        return base.model_copy(
            update={
                "failed_backup_count": base.failed_backup_count + 1,
                "last_failure_time": outcome.started,
                "last_failure": outcome.failure or "backup failed",
            }
        )
    update: dict[str, Any] = {
        "backup_count": base.backup_count + 1,
        "first_backup_time": base.first_backup_time or outcome.started,
        "last_backup_time": outcome.started,
        "last_successful_backup_time": outcome.started,
        "last_backup_duration": go_duration(outcome.duration_seconds),
        "last_snapshot_id": outcome.snapshot_ids[-1] if outcome.snapshot_ids else None,
    }
    if outcome.snapshot_count is not None:
        update["snapshot_count"] = outcome.snapshot_count
    if outcome.failure:  # succeeded backup, but a later step (retention) failed
        update.update(
            failed_backup_count=base.failed_backup_count + 1,
            last_failure_time=outcome.started,
            last_failure=outcome.failure,
        )
    return base.model_copy(update=update)


def _same_target(entry: BackupRepo, target: TargetRef) -> bool:
    return (
        entry.restic_namespace == target.restic_namespace
        and entry.restic_name == target.restic_name
        and entry.repo_dir == target.repo_dir
    )


def record_in(
    status: RepositoryStatus, target: TargetRef, outcome: BackupOutcome
) -> tuple[RepositoryStatus, BackupRepo]:
    """The status with this target's entry updated (or added); other entries untouched.
    Shared by the file store and the cluster store."""
    entries = list(status.backup_repos)
    index = next((i for i, e in enumerate(entries) if _same_target(e, target)), None)
    entry = apply_outcome(entries[index] if index is not None else None, target, outcome)
    if index is None:
        entries.append(entry)
    else:
        entries[index] = entry
    return RepositoryStatus(backup_repos=entries), entry


class LocalStatusStore:
    """Status files under ``state_dir``, updated under an exclusive file lock."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)

    def repository_file(self, namespace: str, name: str) -> Path:
        return self.state_dir / "repositories" / namespace / f"{name}.json"

    def recovery_file(self, namespace: str, name: str) -> Path:
        return self.state_dir / "recoveries" / namespace / f"{name}.json"

    @contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _write(path: Path, data: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)

    def repository_status(self, namespace: str, name: str) -> RepositoryStatus:
        path = self.repository_file(namespace, name)
        if not path.exists():
            return RepositoryStatus()
        return RepositoryStatus.model_validate(json.loads(path.read_text())["status"])

    def record_backup(self, target: TargetRef, outcome: BackupOutcome) -> BackupRepo:
        path = self.repository_file(target.repository_namespace, target.repository_name)
        with self._locked(path):
            status = self.repository_status(target.repository_namespace, target.repository_name)
            new, entry = record_in(status, target, outcome)
            self._write(
                path, {"status": new.model_dump(mode="json", by_alias=True, exclude_none=True)}
            )
        return entry

    def record_recovery(self, namespace: str, name: str, status: RecoveryStatus) -> None:
        path = self.recovery_file(namespace, name)
        with self._locked(path):
            self._write(path, {"status": status.model_dump(mode="json", by_alias=True)})

    def recovery_status(self, namespace: str, name: str) -> RecoveryStatus | None:
        path = self.recovery_file(namespace, name)
        if not path.exists():
            return None
        return RecoveryStatus.model_validate(json.loads(path.read_text())["status"])

    def all_statuses(self) -> dict[str, dict[str, Any]]:
        """Every recorded status, keyed ``Kind namespace/name`` (for ``stash status``)."""
        out: dict[str, dict[str, Any]] = {}
        for kind, folder in (("Repository", "repositories"), ("Recovery", "recoveries")):
            for path in sorted((self.state_dir / folder).glob("*/*.json")):
                out[f"{kind} {path.parent.name}/{path.stem}"] = json.loads(path.read_text())[
                    "status"
                ]
        return out


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


__all__ = [
    "BackupOutcome",
    "LocalStatusStore",
    "RecoveryPathStats",
    "RecoveryStatus",
    "StatusStore",
    "apply_outcome",
    "go_duration",
    "now",
]
