"""Plans: what each DAG will do, as plain data.

A plan holds everything needed to run a backup or a recovery (argv, environment,
secret references, mounts) and nothing that needs Airflow or a cluster to compute, so
the same plan can become a local process or a Kubernetes pod.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..api.errors import ResourceError

if TYPE_CHECKING:
    from .maintenance import MaintenancePlan

Runtime = Literal["local", "kubernetes"]
"""Where steps run: ``local`` (child processes of the worker, volumes are host paths)
or ``kubernetes`` (agent pods). Decided once, when planning, and carried by every step."""


class PlanError(ValueError):
    """A resource that cannot be planned; ``field`` names where the problem is."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class SecretEnv:
    """An environment variable whose value comes from a key of a Secret."""

    name: str
    secret: str
    key: str
    optional: bool = False
    namespace: str | None = None
    """The Secret's namespace: the Repository's, which may differ from the step's."""


@dataclass(frozen=True)
class Mount:
    """A volume the agent needs, and where it sees it.

    In the local runtime ``path`` is the host path itself and ``source`` is the
    ``hostPath`` volume source it came from.
    """

    name: str
    path: str
    source: Mapping[str, Any]
    read_only: bool = False


@dataclass(frozen=True)
class Step:
    """One unit of work: a command run by the agent, as a process or a pod.

    ``argv`` starts with ``stash-agent``; values from resources are separate argv
    items (never pasted into a shell string) and secrets only travel as ``secret_env``.
    """

    task_id: str
    argv: tuple[str, ...]
    namespace: str
    runtime: Runtime
    env: tuple[tuple[str, str], ...] = ()
    secret_env: tuple[SecretEnv, ...] = ()
    mounts: tuple[Mount, ...] = ()
    image: str | None = None
    subject: str = ""
    """Who the step works for (``Restic ns/name, Repository ns/name``), for error messages."""
    labels: tuple[tuple[str, str], ...] = ()
    """Labels for the agent pod, naming the resource it works for."""
    runtime_settings: Mapping[str, Any] = field(default_factory=dict)
    """``spec.runtimeSettings`` of the Restic/Recovery (camelCase, as written)."""
    node_name: str | None = None
    """Run on this node (a DaemonSet's hostPath data lives on one node)."""
    colocate: tuple[tuple[str, str], ...] = ()
    """Run next to a running pod with these labels, found when the step runs, so that
    a ReadWriteOnce claim mounted by the workload can be mounted by the agent too."""
    keep_entrypoint: bool = False
    """In a pod, ``argv`` is the container's ``args`` (the image's entrypoint runs it)
    rather than its ``command``: how a BackupAgent's plain commands are written."""
    cluster_access: Literal["read", "write"] | None = None
    """The step talks to the Kubernetes API (a Cluster target): in a pod through its
    ServiceAccount; locally through the Airflow connection, which the runtime hands
    over only to namespaces ``[stash] cluster_namespaces`` lists."""


@dataclass(frozen=True)
class Schedule:
    """A normalised schedule.

    ``kind`` is ``cron`` (value: a cron expression or an Airflow preset such as
    ``@daily``), ``every`` (value: seconds between runs, from Stash's ``@every 1h30m``),
    ``once`` (``backupType: Instant``) or ``none`` (manual runs only).
    """

    kind: Literal["cron", "every", "once", "none"]
    value: str | int | None = None
    spread_from: str | None = None
    """The preset or ``@every`` this cron expression spreads over its interval
    (``schedules.spread_schedule``); None for a schedule that runs as written."""


@dataclass(frozen=True)
class TargetRef:
    """Which Repository status entry a backup plan reports into."""

    type: Literal["Volumes", "Database", "Cluster"]
    target: str
    """``deployment.NAME``, a database accessor's name, or ``cluster``."""
    repository_namespace: str
    repository_name: str
    restic_namespace: str
    restic_name: str
    repo_dir: str
    workload_kind: str | None = None
    workload_name: str | None = None


@dataclass(frozen=True)
class QuiescedWorkload:
    """A workload stopped before and started after a step (offline backup, restore into
    a running workload's own volume)."""

    kind: str
    namespace: str
    name: str
    pod_labels: tuple[tuple[str, str], ...]
    """Labels of its pods, to wait until they are gone."""


@dataclass(frozen=True)
class BackupPlan:
    """One backup target of one Restic: the source of one backup DAG."""

    dag_id: str
    target: TargetRef
    schedule: Schedule
    paused: bool
    tags: tuple[str, ...]
    description: str
    backup: Step
    retention: Step | None
    verify: Step
    snapshot_paths: tuple[str, ...]
    """The workload paths (one snapshot each) that a run must produce."""
    runtime: Runtime = "local"
    origin: str | None = None
    offline: QuiescedWorkload | None = None
    """Set in offline mode: scale this workload to zero around the backup."""
    repository_record: str | None = None
    """The Repository object, sanitised (``plan.records``), that the backup keeps in
    the repository for disaster recovery."""
    owner: tuple[str, str, str] | None = None
    """(kind, namespace, name) of the workload whose annotation asked for this DAG (a
    BackupTemplate's target); None for a Restic's target."""
    retention_keep_last: int | None = None
    """The smallest ``--keep-last`` of the retention commands (at least 1): while the
    target holds no more snapshots than this, retention cannot remove any and is
    skipped. None: always run retention."""

    @property
    def task_ids(self) -> tuple[str, ...]:
        """Every task of the DAG before ``update_status``, in the order they run."""
        around = ("quiesce", "wait_quiesced")
        after = ("resume", "wait_ready")
        return (
            *(around if self.offline else ()),
            "backup",
            *(after if self.offline else ()),
            *(("retention",) if self.retention else ()),
            "verify",
        )


@dataclass(frozen=True)
class RecoveryPlan:
    """One Recovery: the source of one recovery DAG (runs once)."""

    dag_id: str
    namespace: str
    name: str
    repository_namespace: str
    repository_name: str
    tags: tuple[str, ...]
    description: str
    restore: Step
    paths: tuple[str, ...]
    runtime: Runtime = "local"
    origin: str | None = None
    offline: QuiescedWorkload | None = None
    """Set when restoring into a running workload's own volume."""
    owner: tuple[str, str, str] | None = None
    """(kind, namespace, name) of the workload whose annotation asked for this DAG (an
    automatic restore-if-empty); None for a Recovery's."""
    records_status: bool = True
    """Whether the outcome is written to a status: a Recovery's object, or the local
    state folder. An automatic restore in the cluster has no object to write to: its
    outcome is the run's (the update_status task's log and return value)."""

    @property
    def task_ids(self) -> tuple[str, ...]:
        """Every task of the DAG before ``update_status``, in the order they run."""
        if self.offline is None:
            return ("restore",)
        return ("quiesce", "wait_quiesced", "restore", "resume", "wait_ready")


@dataclass
class PlanSet:
    """All plans made from one resource set, and every error met on the way."""

    backups: dict[str, BackupPlan] = field(default_factory=dict)
    recoveries: dict[str, RecoveryPlan] = field(default_factory=dict)
    errors: list[ResourceError] = field(default_factory=list)
    maintenance: dict[str, MaintenancePlan] = field(default_factory=dict)
    """One per Repository that backup targets write into."""
    warnings: list[ResourceError] = field(default_factory=list)
    """Objects read in a deprecated shape (Stash 0.8's); they are planned all the same."""

    @property
    def dag_ids(self) -> list[str]:
        return sorted([*self.backups, *self.recoveries, *self.maintenance])
