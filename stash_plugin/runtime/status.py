"""Where outcomes are recorded: the Repository/Recovery ``status``.

The local runtime keeps each object's status in a JSON file under the state folder
(``repositories/NS/NAME.json``, ``recoveries/NS/NAME.json``), shaped exactly like the
object's ``status``; the cluster runtime will patch the objects' ``status``
subresource through the same interface.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from ..api.errors import field_path
from ..api.resources import BackupRepo, RecoveryStatus, RepositoryCheck, RepositoryStatus
from ..plan.model import Runtime, TargetRef
from .checks import record_check_in
from .outcomes import BackupOutcome, entry_of, record_in

log = logging.getLogger(__name__)


class StatusStore(Protocol):
    def record_backup(self, target: TargetRef, outcome: BackupOutcome) -> BackupRepo: ...

    def backup_entry(self, target: TargetRef) -> BackupRepo | None:
        """The target's current entry (None before its first recorded run)."""
        ...

    def lost_history(self, target: TargetRef) -> str:
        """Why the target's history may have been lost ("" when nothing says so)."""
        ...

    def record_recovery(self, namespace: str, name: str, status: RecoveryStatus) -> None: ...

    def record_check(
        self,
        namespace: str,
        name: str,
        check: RepositoryCheck,
        counts: tuple[tuple[TargetRef, int], ...],
    ) -> None: ...


FILE_MODE = 0o640  # the user and group that run Airflow (and `stash status`) read it
DIR_MODE = 0o750

_Status = TypeVar("_Status", bound=BaseModel)


class BadStatusFile(ValueError):
    """A status file that cannot be read as its object's status; names the file."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def make_folders(state_dir: Path, folder: Path) -> None:
    """Create the missing folders from ``state_dir`` down to ``folder`` as 0750,
    whatever the umask (a 077 umask would lock the group out); folders that exist
    are left as the administrator made them."""
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    parts = folder.relative_to(state_dir).parts
    for depth in range(len(parts) + 1):
        path = state_dir.joinpath(*parts[:depth])
        with suppress(FileExistsError):  # or another run made it meanwhile
            path.mkdir()
            os.chmod(path, DIR_MODE)


class LocalStatusStore:
    """Status files under ``state_dir``, updated under an exclusive file lock.

    A file that is not its object's status (corrupt, empty, wrongly shaped) only costs
    that object its history: the next record moves it aside as ``NAME.json.bad-TIME``
    and starts afresh; every other object's file is left as it is.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)

    def repository_file(self, namespace: str, name: str) -> Path:
        return self.state_dir / "repositories" / namespace / f"{name}.json"

    def recovery_file(self, namespace: str, name: str) -> Path:
        return self.state_dir / "recoveries" / namespace / f"{name}.json"

    @contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        make_folders(self.state_dir, path.parent)
        fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, FILE_MODE)
        with os.fdopen(fd, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _write(path: Path, data: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600: the group could not read it
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)

    @staticmethod
    def _read(path: Path, model: type[_Status]) -> _Status | None:
        """The status in ``path``; None when there is none yet, BadStatusFile when the
        file is there but is not a status of this kind."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise BadStatusFile(path, f"unreadable ({exc.__class__.__name__})") from None
        if not text.strip():
            raise BadStatusFile(path, "empty")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # RecursionError: [[[[... nested deep
            raise BadStatusFile(path, f"not JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("status"), dict):
            raise BadStatusFile(path, 'not an object with a "status" object')
        try:
            return model.model_validate(data["status"])
        except ValidationError as exc:
            error = exc.errors(include_input=False, include_url=False)[0]
            where = field_path(("status", *error["loc"]))
            raise BadStatusFile(path, f"{where}: {error['msg']}") from None

    def _read_or_set_aside(self, path: Path, model: type[_Status]) -> _Status | None:
        """Under the lock: the current status, or None after moving a bad file aside."""
        try:
            return self._read(path, model)
        except BadStatusFile as bad:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            aside = path.with_name(f"{path.name}.bad-{stamp}")
            os.replace(path, aside)
            log.warning("%s; kept aside as %s, starting a fresh status", bad, aside)
            return None

    def repository_status(self, namespace: str, name: str) -> RepositoryStatus:
        """Raises BadStatusFile for a file that is not a Repository status."""
        path = self.repository_file(namespace, name)
        return self._read(path, RepositoryStatus) or RepositoryStatus()

    def backup_entry(self, target: TargetRef) -> BackupRepo | None:
        """None also for a bad file: it has lost the target's history already (the
        record after this run moves it aside), so the run goes on without it."""
        try:
            status = self.repository_status(target.repository_namespace, target.repository_name)
        except BadStatusFile as bad:
            log.warning("%s; this backup runs without the target's history", bad)
            return None
        return entry_of(status, target)

    def lost_history(self, target: TargetRef) -> str:
        """A Repository status file that is unreadable now or was set aside before may
        have held this target's backups: until a backup succeeds, or a run starts a new
        repository on purpose, nobody can tell a first backup from a lost disk."""
        path = self.repository_file(target.repository_namespace, target.repository_name)
        repository = f"Repository {target.repository_namespace}/{target.repository_name}"
        try:
            self._read(path, RepositoryStatus)
        except BadStatusFile as bad:
            return f"the status of {repository} is unreadable: {bad.reason}"
        aside = sorted(path.parent.glob(f"{path.name}.bad-*"))
        if aside:
            return f"the status of {repository} was unreadable and is kept aside as {aside[-1]}"
        return ""

    def record_backup(self, target: TargetRef, outcome: BackupOutcome) -> BackupRepo:
        path = self.repository_file(target.repository_namespace, target.repository_name)
        with self._locked(path):
            status = self._read_or_set_aside(path, RepositoryStatus) or RepositoryStatus()
            new, entry = record_in(status, target, outcome)
            self._write(
                path, {"status": new.model_dump(mode="json", by_alias=True, exclude_none=True)}
            )
        return entry

    def record_check(
        self,
        namespace: str,
        name: str,
        check: RepositoryCheck,
        counts: tuple[tuple[TargetRef, int], ...],
    ) -> None:
        path = self.repository_file(namespace, name)
        with self._locked(path):
            status = self._read_or_set_aside(path, RepositoryStatus) or RepositoryStatus()
            new = record_check_in(status, check, counts)
            self._write(
                path, {"status": new.model_dump(mode="json", by_alias=True, exclude_none=True)}
            )

    def record_recovery(self, namespace: str, name: str, status: RecoveryStatus) -> None:
        path = self.recovery_file(namespace, name)
        with self._locked(path):
            self._read_or_set_aside(path, RecoveryStatus)  # a bad file is kept, not lost
            self._write(path, {"status": status.model_dump(mode="json", by_alias=True)})

    def recovery_status(self, namespace: str, name: str) -> RecoveryStatus | None:
        """Raises BadStatusFile for a file that is not a Recovery status."""
        return self._read(self.recovery_file(namespace, name), RecoveryStatus)

    def all_statuses(self) -> tuple[dict[str, dict[str, Any]], dict[str, BadStatusFile]]:
        """Every readable status, keyed ``Kind namespace/name``, and every file that is
        not one (for ``stash status``: one bad file hides no other object)."""
        out: dict[str, dict[str, Any]] = {}
        bad: dict[str, BadStatusFile] = {}
        kinds: tuple[tuple[str, str, type[BaseModel]], ...] = (
            ("Repository", "repositories", RepositoryStatus),
            ("Recovery", "recoveries", RecoveryStatus),
        )
        for kind, folder, model in kinds:
            for path in sorted((self.state_dir / folder).glob("*/*.json")):
                key = f"{kind} {path.parent.name}/{path.stem}"
                try:
                    status = self._read(path, model)
                except BadStatusFile as exc:
                    bad[key] = exc
                    continue
                if status is not None:  # None: removed since the listing
                    out[key] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
        return out, bad


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def status_store(runtime: Runtime, state_dir: Path, kubernetes_conn_id: str) -> StatusStore:
    """The objects' own status in the cluster; a file per object in the local runtime."""
    if runtime == "kubernetes":
        from .kube import KubeStatusStore, hook

        return KubeStatusStore(hook(kubernetes_conn_id).custom_object_client)
    return LocalStatusStore(state_dir)


__all__ = ["BadStatusFile", "LocalStatusStore", "StatusStore", "now", "status_store"]
