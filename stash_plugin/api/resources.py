"""The four Stash custom resources in their new shape (``examples/`` shows each)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from ..protocol import ENV_LOCK_WAIT
from .backend import Backend, HostPathSource, NFSSource, PVCSource
from .clusterres import resource_problem, split_group
from .common import (
    AbsolutePath,
    AppRef,
    ConnectionURL,
    LabelSelector,
    LocalObjectReference,
    Model,
    Name,
    Namespace,
    ObjectMeta,
    ObjectRef,
    RelativePrefix,
    RetentionPolicy,
    path_under,
)

# --------------------------------------------------------------------------- Repository


class SourceSize(Model):
    """What one folder of a target held at its last good backup."""

    path: str
    files: int = 0
    bytes: int = 0


class BackupRepo(Model):
    """One target's record in ``Repository.status.backupRepos``.

    The first nine fields are the spec's sample; the rest are ours, kept next to them
    so that one glance at the Repository shows the target's health.
    """

    type: Literal["Volumes", "Database", "Cluster"]
    workload_kind: str | None = None
    workload_name: str | None = None
    restic_name: str
    restic_namespace: str
    repo_dir: str
    backup_count: int = 0
    first_backup_time: datetime | None = None
    last_backup_time: datetime | None = None
    last_backup_duration: str | None = None
    last_successful_backup_time: datetime | None = None
    snapshot_count: int | None = None
    last_snapshot_id: str | None = None
    failed_backup_count: int = 0
    last_failure_time: datetime | None = None
    last_failure: str | None = None
    last_retention_removed: int | None = None
    """Snapshots the last retention run removed."""
    last_retention_bytes_freed: int | None = None
    """Bytes the last retention run's prune freed (when the policy prunes)."""
    source_drop: str | None = None
    """Set while the newest snapshot is flagged: its source was empty or shrank sharply
    against the previous backup (which snapshots before it are kept, and why)."""
    source_drop_time: datetime | None = None
    """When the newest flagged backup ran (kept after the flag clears)."""
    source_sizes: list[SourceSize] = Field(default_factory=list)
    """Files and bytes of each folder in the last good backup: the next one's baseline."""
    repository_record: str | None = None
    """Digest of the Repository object kept in the target's repository (for ``stash
    discover``); a backup writes the record again only when it differs."""
    objects: dict[str, int] | None = None
    """A Cluster target: objects per kind (``apps/Deployment``) in the last good backup."""


class RepositoryCheck(Model):
    """The last maintenance run of a Repository (ours): ``restic check`` of every
    repoDir its targets use, and what it measured."""

    time: datetime
    result: Literal["Passed", "Failed"]
    failure: str | None = None
    stale_locks_removed: int = 0
    size_bytes: int | None = None
    """Bytes stored for all its targets (``restic stats --mode raw-data``)."""
    snapshot_count: int | None = None


class RepositoryStatus(Model):
    backup_repos: list[BackupRepo] = Field(default_factory=list)
    last_check: RepositoryCheck | None = None


class RepositorySpec(Model):
    backend: Backend
    wipe_out: bool = False
    allowed_namespaces: list[Namespace] = Field(default_factory=list)
    """Namespaces besides the Repository's own whose Restics and Recoveries may use it
    (ours; Stash 0.8 had no cross-namespace references). Everyone who may use a
    Repository holds its password, so they can read every snapshot in it: list only
    namespaces that may see each other's data."""


class Repository(Model):
    api_version: str
    kind: Literal["Repository"]
    metadata: ObjectMeta
    spec: RepositorySpec
    status: RepositoryStatus | None = None

    def allows(self, namespace: str) -> bool:
        """Whether a Restic or Recovery of ``namespace`` may use this Repository."""
        own = self.metadata.namespace or "default"
        return namespace == own or namespace in self.spec.allowed_namespaces


# --------------------------------------------------------------------------- pod settings


#: The powers of root the agent container keeps (``plan.pods.AGENT_SECURITY_CONTEXT``):
#: reading past permissions, changing owners, modes and times of files it does not own,
#: keeping set-group-id bits. A Restic may ask for fewer, never for more.
AGENT_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID")

#: Environment names the agent and restic read (repository, credentials, the agent's own
#: switches, the loader and interpreter): a tenant's ``container.env`` setting one of
#: them would point the agent at another repository or run code of its choosing.
RESERVED_ENV_PREFIXES = (
    "RESTIC_",
    "STASH_",
    "AWS_",
    "GOOGLE_",
    "AZURE_",
    "B2_",
    "OS_",
    "ST_",
    "DB_",
    "LD_",
    "PYTHON",
)
RESERVED_ENV_NAMES = frozenset({"PATH", "CA_CERT_DATA"})
#: The agent's switches a tenant may tune for its own runs.
TENANT_ENV_NAMES = frozenset({ENV_LOCK_WAIT})


def _host_process(settings: dict[str, Any] | None) -> bool:
    return bool(((settings or {}).get("windowsOptions") or {}).get("hostProcess"))


def _container_security_problem(context: dict[str, Any]) -> str | None:
    """Why a tenant's container ``securityContext`` would give the agent more than it has.

    The agent pod runs in the tenant's namespace but from the administrator's image,
    with the tenant's volumes and the repository's credentials: a privileged or
    escalating container there is a way onto the node, so only narrowing is allowed.
    """
    if context.get("privileged"):
        return "privileged: true is not allowed for the agent container"
    if context.get("allowPrivilegeEscalation"):
        return "allowPrivilegeEscalation: true is not allowed for the agent container"
    added = (context.get("capabilities") or {}).get("add") or []
    extra = sorted(
        str(c) for c in added if str(c).upper().removeprefix("CAP_") not in AGENT_CAPABILITIES
    )
    if extra:
        return (
            f"capabilities.add {extra} goes beyond the agent's own "
            f"({', '.join(AGENT_CAPABILITIES)})"
        )
    if context.get("procMount") not in (None, "Default"):
        return "procMount: only Default is allowed for the agent container"
    if _host_process(context):
        return "windowsOptions.hostProcess: true is not allowed for the agent container"
    return None


class PodRuntimeSettings(Model):
    """Pod-level settings for the agent pod (Stash issue 621), passed through as given."""

    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] | None = None
    security_context: dict[str, Any] | None = None
    service_account_name: str | None = None
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    priority_class_name: str | None = None

    @model_validator(mode="after")
    def _no_host_process(self) -> PodRuntimeSettings:
        if _host_process(self.security_context):
            raise ValueError(
                "securityContext.windowsOptions.hostProcess: true is not allowed for agent pods"
            )
        return self


class ContainerRuntimeSettings(Model):
    """Container-level settings for the agent container: a tenant may narrow the agent's
    powers and add its own environment, never widen the one or override the other."""

    env: list[dict[str, Any]] = Field(default_factory=list)
    resources: dict[str, Any] | None = None
    security_context: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _only_narrower(self) -> ContainerRuntimeSettings:
        problem = _container_security_problem(self.security_context or {})
        if problem:
            raise ValueError(f"securityContext.{problem}")
        for i, entry in enumerate(self.env):
            name = str(entry.get("name", ""))
            if name in TENANT_ENV_NAMES:
                continue
            if name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIXES):
                raise ValueError(
                    f"env[{i}].name: {name!r} is set by Stash for the agent "
                    "(repository, credentials, agent settings): choose another name"
                )
        return self


class RuntimeSettings(Model):
    """Extra settings for the pods that run a backup or recovery (kubernetes runtime)."""

    pod: PodRuntimeSettings = Field(default_factory=PodRuntimeSettings)
    container: ContainerRuntimeSettings = Field(default_factory=ContainerRuntimeSettings)


# --------------------------------------------------------------------------- Restic


class Directory(Model):
    """A directory inside a target volume, as the workload sees it."""

    path: AbsolutePath
    retention_policy_name: str | None = None
    tags: list[str] = Field(default_factory=list)


class TargetVolume(Model):
    """A volume of the workload's pod template, by name, and what to back up in it."""

    name: str = Field(min_length=1)
    mount_path: AbsolutePath
    directories: list[Directory] = Field(default_factory=list)

    @model_validator(mode="after")
    def _directories_inside_mount(self) -> TargetVolume:
        for d in self.directories:
            if not path_under(d.path, self.mount_path):
                raise ValueError(f"directory {d.path} is not inside mountPath {self.mount_path}")
        return self


class VolumeSelector(Model):
    selector: LabelSelector
    target_volumes: list[TargetVolume] = Field(min_length=1)


class DatabaseAccessor(Model):
    app_ref: AppRef | None = Field(default=None, validation_alias=AliasChoices("AppRef", "appRef"))
    connection_url: ConnectionURL | None = Field(
        default=None, validation_alias=AliasChoices("connectionURL", "connectionUrl")
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> DatabaseAccessor:
        if (self.app_ref is None) == (self.connection_url is None):
            raise ValueError("give exactly one of AppRef or connectionURL")
        return self


class DatabaseSelector(Model):
    app_ref: AppRef | None = Field(default=None, validation_alias=AliasChoices("AppRef", "appRef"))
    connection_url: ConnectionURL | None = Field(
        default=None, validation_alias=AliasChoices("connectionURL", "connectionUrl")
    )
    database_accessors: list[DatabaseAccessor] = Field(default_factory=list)
    retention_policy_name: str | None = None

    @model_validator(mode="after")
    def _some_database(self) -> DatabaseSelector:
        given = [self.app_ref, self.connection_url]
        if sum(x is not None for x in given) + bool(self.database_accessors) != 1:
            raise ValueError("give exactly one of AppRef, connectionURL or databaseAccessors")
        return self

    def accessors(self) -> list[DatabaseAccessor]:
        """The selected databases, whichever form named them."""
        if self.database_accessors:
            return list(self.database_accessors)
        return [DatabaseAccessor(app_ref=self.app_ref, connection_url=self.connection_url)]


class ResourceGroup(Model):
    """Resources of one API group. ``group`` is ``""`` (core), ``apps``, or written with
    a version as the specification's sample does (``apps/v1``)."""

    group: str
    resources: list[str] = Field(min_length=1)

    @field_validator("group")
    @classmethod
    def _group(cls, value: str) -> str:
        split_group(value)
        return value

    @model_validator(mode="after")
    def _known_resources(self) -> ResourceGroup:
        group, _ = split_group(self.group)
        problems = [p for p in (resource_problem(group, r) for r in self.resources) if p]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def api_group(self) -> str:
        return split_group(self.group)[0]

    @property
    def version(self) -> str | None:
        return split_group(self.group)[1]


class ClusterResources(Model):
    """What a Cluster target backs up: objects of the selected resources, as YAML."""

    retention_policy_name: str | None = None
    sanitize: bool = True
    """Drop what the API server fills in (status, uid, resourceVersion, managedFields,
    a Service's allocated clusterIP...), so a restore recreates the objects afresh."""
    parents_only: bool = False
    """Skip objects with an owner reference (a Deployment's ReplicaSets and Pods)."""
    resource_selector: list[ResourceGroup] = Field(min_length=1)
    namespaces: list[Namespace] = Field(default_factory=list)
    """Back up namespaced objects of these namespaces only (default: every namespace)."""
    exclude_namespaces: list[Namespace] = Field(default_factory=list)

    @model_validator(mode="after")
    def _namespaces(self) -> ClusterResources:
        both = sorted(set(self.namespaces) & set(self.exclude_namespaces))
        if both:
            raise ValueError(f"namespaces both included and excluded: {', '.join(both)}")
        return self


class ResticSpec(Model):
    target_type: Literal["Volume", "Database", "Cluster"]
    backup_type: Literal["Scheduled", "Instant"] = "Scheduled"
    schedule: str | None = None
    backup_mode: Literal["Online", "Offline"] = "Online"
    backup_agent: str | None = None
    prefix: RelativePrefix | None = None
    repository: ObjectRef
    paused: bool = False
    volume_selector: VolumeSelector | None = None
    database_selector: DatabaseSelector | None = None
    cluster_resources: ClusterResources | None = None
    retention_policies: list[RetentionPolicy] = Field(default_factory=list)
    runtime_settings: RuntimeSettings = Field(default_factory=RuntimeSettings)
    stash08_layout: bool = False
    """(ours) Keep using the repository Stash 0.8 wrote for this target: its folder
    (``deployment/NAME`` right under the backend's prefix, no ``volumes/``), its restic
    host, and retention, verify and status counting its snapshots, which carry none of
    our tags, together with the new ones. Set by the conversion of a Stash 0.8 Restic."""

    @model_validator(mode="after")
    def _selector_matches_type(self) -> ResticSpec:
        needed = {
            "Volume": "volumeSelector",
            "Database": "databaseSelector",
            "Cluster": "clusterResources",
        }[self.target_type]
        given = {
            "volumeSelector": self.volume_selector,
            "databaseSelector": self.database_selector,
            "clusterResources": self.cluster_resources,
        }
        if given[needed] is None:
            raise ValueError(f"targetType {self.target_type} needs {needed}")
        extra = [k for k, v in given.items() if v is not None and k != needed]
        if extra:
            raise ValueError(f"targetType {self.target_type} does not take {', '.join(extra)}")
        if self.backup_type == "Scheduled" and not self.schedule:
            raise ValueError("backupType Scheduled needs a schedule")
        names = [p.name for p in self.retention_policies]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"retentionPolicies names repeat: {', '.join(dupes)}")
        return self


class Restic(Model):
    api_version: str
    kind: Literal["Restic"]
    metadata: ObjectMeta
    spec: ResticSpec


# --------------------------------------------------------------------------- Recovery


class RecoverTo(Model):
    """Where the data that the workload saw at ``mountPath`` is restored to.

    ``hostPath`` and ``persistentVolumeClaim`` work in both runtimes; the other volume
    sources (as a Stash 0.8 Recovery's ``recoveredVolumes`` named them) are passed to
    the agent pod as given (``kubernetes`` runtime)."""

    mount_path: AbsolutePath
    host_path: HostPathSource | None = None
    persistent_volume_claim: PVCSource | None = None
    nfs: NFSSource | None = None
    empty_dir: dict[str, Any] | None = None
    gce_persistent_disk: dict[str, Any] | None = None
    aws_elastic_block_store: dict[str, Any] | None = None
    azure_disk: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> RecoverTo:
        sources = (
            self.host_path,
            self.persistent_volume_claim,
            self.nfs,
            self.empty_dir,
            self.gce_persistent_disk,
            self.aws_elastic_block_store,
            self.azure_disk,
        )
        if sum(s is not None for s in sources) != 1:
            raise ValueError(
                "give exactly one volume source (hostPath, persistentVolumeClaim, nfs, emptyDir, "
                "gcePersistentDisk, awsElasticBlockStore or azureDisk)"
            )
        return self


class WorkloadRef(Model):
    kind: Literal["Deployment", "StatefulSet", "ReplicaSet"]
    name: Name


class VolumeRestorer(Model):
    repo_dir: AbsolutePath
    snapshot: str | None = None
    paths: list[AbsolutePath] = Field(default_factory=list)
    recover_to: list[RecoverTo] = Field(min_length=1)
    overwrite: bool = False
    """Restore into a non-empty target, replacing files of the same name. Off by
    default: a Recovery never clobbers data unless it says so."""
    workload: WorkloadRef | None = None
    """The workload that uses the target volume (recovery into the same volume, Stash
    issue 600): scaled to zero during the restore and back afterwards."""
    source_namespace: Namespace | None = None
    """Restore the snapshots another namespace made (default: the Recovery's own); that
    namespace, like the Recovery's, must be allowed to use the Repository."""
    restic: Name | None = None
    """The Restic whose snapshots to restore, where a repoDir holds several."""
    target: Name | None = None
    """The target whose snapshots to restore (``deployment.NAME``, ``replicaset.NAME``,
    ``statefulset.POD``), where a repoDir holds several."""
    stash08_host: Name | None = None
    """(ours) The restic host Stash 0.8 backed this repoDir up as: ``latest`` then also
    considers that host's snapshots without our tags (Stash 0.8's own), since a
    Stash 0.8 repoDir held one target only. Set by the conversion of a 0.8 Recovery."""


class DatabaseRecoverTo(Model):
    app_ref: AppRef | None = Field(default=None, validation_alias=AliasChoices("AppRef", "appRef"))
    connection_url: ConnectionURL | None = Field(
        default=None, validation_alias=AliasChoices("connectionURL", "connectionUrl")
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> DatabaseRecoverTo:
        if (self.app_ref is None) == (self.connection_url is None):
            raise ValueError("give exactly one of AppRef or connectionURL")
        return self


class DatabaseRestorer(Model):
    repo_dir: AbsolutePath
    snapshot: str | None = None
    recover_to: DatabaseRecoverTo
    overwrite: bool = False
    """Restore into a database that holds data, replacing it. Off by default: a
    Recovery never clobbers a database unless it says so."""


class ClusterRestorer(Model):
    """Objects of a Cluster snapshot applied back to the cluster, in dependency order."""

    repo_dir: AbsolutePath
    snapshot: str | None = None
    namespaces: list[Namespace] = Field(default_factory=list)
    """Restore the objects of these namespaces only (and no cluster-scoped ones)."""
    kinds: list[str] = Field(default_factory=list)
    """Restore objects of these kinds only (``Deployment``, ``ConfigMap``...)."""
    overwrite: bool = False
    """Apply over objects that exist. Off by default: an existing object is left as it
    is and reported."""
    dry_run: bool = False
    """Ask the API server what would be created or changed; change nothing."""
    restic: Name | None = None
    """The Restic whose snapshots to restore, where a repoDir holds several."""

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, value: list[str]) -> list[str]:
        bad = [k for k in value if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{0,62}", k)]
        if bad:
            raise ValueError(f"not kind names (such as Deployment): {', '.join(map(repr, bad))}")
        return value


class RecoveryPathStats(Model):
    path: str
    phase: Literal["Pending", "Running", "Succeeded", "Skipped", "Failed", "Unknown"]
    duration: str | None = None
    reason: str | None = None
    """Why a path was left alone (``Skipped``: an automatic restore found it not empty,
    or found no snapshot to restore)."""


class RecoveryStatus(Model):
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"] = "Pending"
    stats: list[RecoveryPathStats] = Field(default_factory=list)


class RecoverySpec(Model):
    target_type: Literal["Volume", "Database", "Cluster"]
    recovery_agent: str | None = None
    repository: ObjectRef
    volume_restorer: VolumeRestorer | None = None
    database_restorer: DatabaseRestorer | None = None
    cluster_restorer: ClusterRestorer | None = None
    runtime_settings: RuntimeSettings = Field(default_factory=RuntimeSettings)

    @model_validator(mode="after")
    def _restorer_matches_type(self) -> RecoverySpec:
        given = {
            "volumeRestorer": self.volume_restorer,
            "databaseRestorer": self.database_restorer,
            "clusterRestorer": self.cluster_restorer,
        }
        needed = f"{self.target_type[0].lower()}{self.target_type[1:]}Restorer"
        if given[needed] is None:
            raise ValueError(f"targetType {self.target_type} needs {needed}")
        extra = [k for k, v in given.items() if v is not None and k != needed]
        if extra:
            raise ValueError(f"targetType {self.target_type} does not take {', '.join(extra)}")
        return self


class Recovery(Model):
    api_version: str
    kind: Literal["Recovery"]
    metadata: ObjectMeta
    spec: RecoverySpec
    status: RecoveryStatus | None = None


# --------------------------------------------------------------------------- BackupAgent


class AgentCommands(Model):
    backup: list[str] = Field(default_factory=list)
    recovery: list[str] = Field(default_factory=list)


class BackupAgentSpec(Model):
    image: str = Field(min_length=1)
    commands: AgentCommands = Field(default_factory=AgentCommands)


class BackupAgent(Model):
    """Which image (and command) runs a kind of backup; cluster-scoped."""

    api_version: str
    kind: Literal["BackupAgent"]
    metadata: ObjectMeta
    spec: BackupAgentSpec


# --------------------------------------------------------------------------- BackupTemplate


class BackupTemplateSpec(Model):
    """A volume Restic's spec without a selector: the workloads that name the template in
    their ``stash.appscode.com/backup-template`` annotation are its targets."""

    target_type: Literal["Volume"] = "Volume"
    backup_type: Literal["Scheduled", "Instant"] = "Scheduled"
    schedule: str | None = None
    """The default schedule; a workload's ``backup-schedule`` annotation replaces it."""
    backup_mode: Literal["Online", "Offline"] = "Online"
    backup_agent: str | None = None
    prefix: RelativePrefix | None = None
    repository: LocalObjectReference
    """A Repository by name only, always the one in the workload's own namespace: a
    template every tenant may name must never hand one tenant another's Repository."""
    paused: bool = False
    target_volumes: list[TargetVolume] = Field(min_length=1)
    retention_policies: list[RetentionPolicy] = Field(default_factory=list)
    retention_policy_name: str | None = None
    """The policy of every folder that names none (folders from the ``backup-paths``
    annotation, whole volumes)."""
    runtime_settings: RuntimeSettings = Field(default_factory=RuntimeSettings)

    @model_validator(mode="after")
    def _policies(self) -> BackupTemplateSpec:
        names = [p.name for p in self.retention_policies]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"retentionPolicies names repeat: {', '.join(dupes)}")
        if self.retention_policy_name and self.retention_policy_name not in names:
            known = ", ".join(sorted(names)) or "none defined"
            raise ValueError(
                f"retentionPolicyName {self.retention_policy_name!r} is not a policy (known: "
                f"{known})"
            )
        return self


class BackupTemplate(Model):
    """Default backup of annotated workloads (Stash issue 367); cluster-scoped, written
    by the administrator."""

    api_version: str
    kind: Literal["BackupTemplate"]
    metadata: ObjectMeta
    spec: BackupTemplateSpec


StashResource = Repository | Restic | Recovery | BackupAgent | BackupTemplate
