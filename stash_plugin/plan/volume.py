"""Planning a volume Restic: one backup plan per selected workload."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from ..api.common import LabelSelector, RetentionPolicy
from ..api.kube import WORKLOAD_KINDS, Workload
from ..api.resources import Repository, Restic
from ..api.resourceset import ResourceSet
from . import naming
from .model import BackupPlan, Mount, Runtime, Schedule, Step, TargetRef, WorkloadRef
from .restic import (
    PlanError,
    agent_run,
    backup_args,
    check_tag,
    forget_args,
    repository_env,
    repository_mounts,
    repository_url,
    snapshots_args,
)
from .schedules import parse_schedule

# StatefulSet pods each have their own claims and DaemonSet pods live on one node each:
# both need the cluster to say which pod/node holds the data.
LOCAL_WORKLOAD_KINDS = ("Deployment", "ReplicaSet", "ReplicationController")


@dataclass(frozen=True)
class _Dir:
    workload_path: str
    agent_path: str
    policy: RetentionPolicy | None
    tags: tuple[str, ...]


def restic_schedule(restic: Restic) -> Schedule:
    spec = restic.spec
    if spec.backup_type == "Instant":
        return Schedule("once")
    assert spec.schedule is not None  # the model requires it for Scheduled
    try:
        return parse_schedule(spec.schedule)
    except ValueError as exc:
        raise PlanError("spec.schedule", str(exc)) from None


class WorkloadIndex:
    """Workloads by namespace and by label, in the resource set's key order.

    Planning N Restics used to scan (and sort) every workload once per Restic, which is
    quadratic; make_plans builds this once and every Restic looks up its candidates.
    """

    def __init__(self, resources: ResourceSet) -> None:
        self.by_namespace: dict[str, list[Workload]] = {}
        self.by_label: dict[tuple[str, str, str], list[Workload]] = {}
        for (_, ns, _), w in sorted(resources.workloads.items()):
            if w.controlled:  # a Deployment's ReplicaSet is backed up through the Deployment
                continue
            self.by_namespace.setdefault(ns, []).append(w)
            for key, value in w.labels.items():
                self.by_label.setdefault((ns, key, value), []).append(w)

    def select(self, namespace: str | None, selector: LabelSelector) -> list[Workload]:
        if namespace is None:
            return []
        if selector.match_labels:  # every match must carry this label: a narrow start
            key, value = next(iter(selector.match_labels.items()))
            candidates = self.by_label.get((namespace, key, value), [])
        else:
            candidates = self.by_namespace.get(namespace, [])
        return [w for w in candidates if selector.matches(dict(w.labels))]


def selected_workloads(
    restic: Restic, resources: ResourceSet, index: WorkloadIndex | None = None
) -> list[Workload]:
    assert restic.spec.volume_selector is not None
    selector = restic.spec.volume_selector.selector
    return (index or WorkloadIndex(resources)).select(restic.metadata.namespace, selector)


@dataclass(frozen=True)
class _Instance:
    """One backup target of a workload: the workload, one StatefulSet pod, or one
    DaemonSet node (kubernetes runtime)."""

    target: str
    repo_dir: str
    host: str
    claims: dict[str, str]
    """Volume name -> the claim this instance's pod mounts (StatefulSet templates)."""
    node: str | None = None
    colocate: tuple[tuple[str, str], ...] = ()


def _instances(
    workload: Workload, resources: ResourceSet, runtime: Runtime, prefix: str | None
) -> list[_Instance]:
    has_claims = any("persistentVolumeClaim" in v for v in workload.volumes.values())
    if runtime == "local" or workload.kind in LOCAL_WORKLOAD_KINDS:
        colocate = tuple(sorted(workload.pod_labels.items())) if has_claims else ()
        return [
            _Instance(
                naming.workload_target(workload),
                naming.volume_repo_dir(workload, prefix),
                workload.name,
                {},
                colocate=colocate if runtime == "kubernetes" else (),
            )
        ]
    if workload.kind == "StatefulSet":
        out = []
        for ordinal in range(workload.replicas if workload.replicas is not None else 1):
            pod = f"{workload.name}-{ordinal}"
            target, repo_dir = naming.statefulset_pod_target(workload, pod, prefix)
            claims = {t: f"{t}-{pod}" for t in workload.claim_templates}
            out.append(
                _Instance(
                    target,
                    repo_dir,
                    pod,
                    claims,
                    colocate=(("statefulset.kubernetes.io/pod-name", pod),),
                )
            )
        return out
    # DaemonSet: its hostPath data differs per node.
    if not resources.nodes:
        raise PlanError(
            "spec.volumeSelector.selector",
            f"selects {workload.ref}, which runs on every node, but the source lists no "
            "Node (`stash sync` copies them)",
        )
    out = []
    for node in sorted(resources.nodes):
        target, repo_dir = naming.daemonset_node_target(workload, node, prefix)
        out.append(_Instance(target, repo_dir, node, {}, node=node))
    return out


def plan_volume_backups(
    restic: Restic,
    repository: Repository,
    resources: ResourceSet,
    runtime: Runtime,
    image: str | None = None,
    *,
    index: WorkloadIndex | None = None,
) -> list[BackupPlan]:
    spec = restic.spec
    assert spec.volume_selector is not None
    ns = restic.metadata.namespace or "default"
    schedule = restic_schedule(restic)
    policies = {p.name: p for p in spec.retention_policies}
    for i, tv in enumerate(spec.volume_selector.target_volumes):
        for j, d in enumerate(tv.directories):
            if d.retention_policy_name and d.retention_policy_name not in policies:
                known = ", ".join(sorted(policies)) or "none defined"
                raise PlanError(
                    f"spec.volumeSelector.targetVolumes[{i}].directories[{j}].retentionPolicyName",
                    f"no retention policy named {d.retention_policy_name!r} (known: {known})",
                )
            if "," in d.path:
                raise PlanError(
                    f"spec.volumeSelector.targetVolumes[{i}].directories[{j}].path",
                    "paths with commas cannot be selected by restic tags",
                )
            for t in d.tags:
                try:
                    check_tag(t)
                except ValueError as exc:
                    raise PlanError(
                        f"spec.volumeSelector.targetVolumes[{i}].directories[{j}].tags", str(exc)
                    ) from None
    workloads = selected_workloads(restic, resources, index)
    if not workloads:
        raise PlanError(
            "spec.volumeSelector.selector",
            f"selects no workload in namespace {ns} (looked at "
            f"{', '.join(WORKLOAD_KINDS)} by their labels)",
        )
    return [
        _plan_workload(restic, repository, w, instance, schedule, policies, runtime, image)
        for w in workloads
        for instance in _instances(w, resources, runtime, spec.prefix)
    ]


def _plan_workload(
    restic: Restic,
    repository: Repository,
    workload: Workload,
    instance: _Instance,
    schedule: Schedule,
    policies: dict[str, RetentionPolicy],
    runtime: Runtime,
    image: str | None,
) -> BackupPlan:
    spec = restic.spec
    assert spec.volume_selector is not None
    ns = restic.metadata.namespace or "default"
    name = restic.metadata.name
    if runtime == "local" and workload.kind not in LOCAL_WORKLOAD_KINDS:
        raise PlanError(
            "spec.volumeSelector.selector",
            f"selects {workload.ref}; {workload.kind} volumes need the kubernetes runtime "
            f"(the local runtime backs up {', '.join(LOCAL_WORKLOAD_KINDS)})",
        )
    offline = None
    if spec.backup_mode == "Offline":
        if runtime == "local":
            raise PlanError(
                "spec.backupMode",
                "Offline backups stop the workload, which needs the kubernetes runtime",
            )
        if workload.kind not in ("Deployment", "StatefulSet", "ReplicaSet"):
            raise PlanError(
                "spec.backupMode",
                f"Offline needs a workload that scales to zero; {workload.ref} does not",
            )
        offline = WorkloadRef(
            workload.kind,
            workload.namespace,
            workload.name,
            tuple(sorted(workload.pod_labels.items())),
        )
    target, repo_dir = instance.target, instance.repo_dir
    backend = repository.spec.backend
    try:
        url = repository_url(backend, repo_dir, runtime)
        secret_env = repository_env(backend)
    except PlanError as exc:
        raise PlanError(
            None,
            f"Repository {repository.metadata.namespace}/{repository.metadata.name}: "
            f"{exc.field}: {exc}",
        ) from None
    mounts = list(repository_mounts(backend, runtime))
    dirs: list[_Dir] = []
    seen: dict[str, str] = {}
    for i, tv in enumerate(spec.volume_selector.target_volumes):
        field = f"spec.volumeSelector.targetVolumes[{i}]"
        source = workload.volumes.get(tv.name)
        if tv.name in instance.claims:
            source = {"persistentVolumeClaim": {"claimName": instance.claims[tv.name]}}
        if source is None:
            raise PlanError(f"{field}.name", f"{workload.ref} has no volume named {tv.name!r}")
        if runtime == "local":
            host = source.get("hostPath")
            if not isinstance(host, dict) or not isinstance(host.get("path"), str):
                raise PlanError(
                    f"{field}.name",
                    f"volume {tv.name!r} of {workload.ref} is not a hostPath volume; the local "
                    "runtime backs up hostPath volumes only",
                )
            base = host["path"]
        else:
            base = tv.mount_path
        mounts.append(Mount(tv.name, base, source, read_only=True))
        for j, d in enumerate(tv.directories or []):
            rel = posixpath.relpath(d.path, tv.mount_path)
            agent_path = posixpath.normpath(posixpath.join(base, rel))
            wpath = posixpath.normpath(d.path)
            if wpath in seen:
                raise PlanError(
                    f"{field}.directories[{j}].path",
                    f"{wpath} is already backed up by {seen[wpath]}",
                )
            seen[wpath] = f"{field}.directories[{j}]"
            policy = policies.get(d.retention_policy_name or "")
            dirs.append(_Dir(wpath, agent_path, policy, tuple(d.tags)))
        if not tv.directories:
            wpath = posixpath.normpath(tv.mount_path)
            if wpath in seen:
                raise PlanError(
                    f"{field}.mountPath", f"{wpath} is already backed up by {seen[wpath]}"
                )
            seen[wpath] = field
            dirs.append(_Dir(wpath, posixpath.normpath(base), None, ()))

    host = instance.host
    env = (("RESTIC_REPOSITORY", url),)
    ref = TargetRef(
        type="Volumes",
        target=target,
        repository_namespace=repository.metadata.namespace or "default",
        repository_name=repository.metadata.name,
        restic_namespace=ns,
        restic_name=name,
        repo_dir=repo_dir,
        workload_kind=workload.kind,
        workload_name=instance.host if workload.kind == "StatefulSet" else workload.name,
    )

    def step(task_id: str, argv: tuple[str, ...]) -> Step:
        return Step(
            task_id,
            argv,
            ns,
            env,
            secret_env,
            tuple(mounts),
            image,
            subject=f"Restic {ns}/{name}, Repository {ref.repository_namespace}/"
            f"{ref.repository_name} at {url}",
            labels=(("restic", name), ("target", target)),
            node_name=instance.node,
            colocate=instance.colocate,
            runtime_settings=spec.runtime_settings.model_dump(by_alias=True, exclude_defaults=True),
        )

    def tags(d: _Dir) -> list[str]:
        return naming.snapshot_tags(ns, name, target, d.workload_path) + list(d.tags)

    backup = step(
        "backup",
        agent_run([backup_args(d.agent_path, host, tags(d)) for d in dirs], "--init", "--unlock"),
    )
    forgets = [forget_args(d.policy, host, tags(d)[:4]) for d in dirs if d.policy is not None]
    retention = step("retention", agent_run(forgets, "--unlock")) if forgets else None
    verify = step("verify", agent_run([snapshots_args(host, tags(d)[:4]) for d in dirs]))
    dag_id = naming.backup_dag_id(ns, name, target)
    description = (
        f"Backs up {', '.join(d.workload_path for d in dirs)} of {workload.ref} into "
        f"Repository {ref.repository_namespace}/{ref.repository_name} ({url}) for "
        f"Restic {ns}/{name}."
    )
    return BackupPlan(
        dag_id=dag_id,
        target=ref,
        schedule=schedule,
        paused=spec.paused,
        tags=(
            "stash",
            "backup",
            f"namespace:{ns}",
            "type:volume",
            f"repository:{ref.repository_name}",
        ),
        description=description,
        backup=backup,
        retention=retention,
        verify=verify,
        snapshot_paths=tuple(d.workload_path for d in dirs),
        offline=offline,
    )
