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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from ..api.resources import BackupRepo, RecoveryStatus, RepositoryStatus
from ..plan.model import Runtime, TargetRef
from .outcomes import BackupOutcome, record_in


class StatusStore(Protocol):
    def record_backup(self, target: TargetRef, outcome: BackupOutcome) -> BackupRepo: ...

    def record_recovery(self, namespace: str, name: str, status: RecoveryStatus) -> None: ...


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


def status_store(runtime: Runtime, state_dir: Path, kubernetes_conn_id: str) -> StatusStore:
    """The objects' own status in the cluster; a file per object in the local runtime."""
    if runtime == "kubernetes":
        from .kube import KubeStatusStore, hook

        return KubeStatusStore(hook(kubernetes_conn_id).custom_object_client)
    return LocalStatusStore(state_dir)


__all__ = ["LocalStatusStore", "StatusStore", "now", "status_store"]
