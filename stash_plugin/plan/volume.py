"""Planning a volume Restic: one backup plan per selected workload."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from ..api.common import LabelSelector, RetentionPolicy
from ..api.kubeobjects import WORKLOAD_KINDS, Workload
from ..api.resources import Repository, Restic
from ..api.resourceset import ResourceSet
from . import naming
from .commands import DEFAULT_AGENT, Agent, agent_step
from .model import BackupPlan, Mount, PlanError, QuiescedWorkload, Schedule, Step, TargetRef
from .placement import Instance, Placement
from .restic import (
    agent_run,
    backup_args,
    check_tag,
    forget_args,
    keep_last,
    snapshots_args,
    stash08_selection,
)
from .schedules import parse_schedule


@dataclass(frozen=True)
class _Dir:
    workload_path: str
    agent_path: str
    root: str
    """The volume as the agent sees it: ``agent_path`` never resolves outside it."""
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


def plan_volume_backups(
    restic: Restic,
    repository: Repository,
    resources: ResourceSet,
    placement: Placement,
    agent: Agent = DEFAULT_AGENT,
    *,
    index: WorkloadIndex | None = None,
    workloads: list[Workload] | None = None,
) -> list[BackupPlan]:
    """One plan per instance of each workload the Restic selects (or of ``workloads``,
    for a BackupTemplate's target, which its annotation selects instead)."""
    spec = restic.spec
    assert spec.volume_selector is not None
    ns = restic.metadata.namespace or "default"
    schedule = restic_schedule(restic)
    policies = _checked_policies(restic)
    if workloads is None:
        workloads = selected_workloads(restic, resources, index)
    if not workloads:
        raise PlanError(
            "spec.volumeSelector.selector",
            f"selects no workload in namespace {ns} (looked at "
            f"{', '.join(WORKLOAD_KINDS)} by their labels)",
        )
    return [
        _plan_instance(
            _Target(restic, repository, w, instance, placement, agent), schedule, policies
        )
        for w in workloads
        for instance in placement.instances(
            w, resources, naming.volume_prefix(spec.prefix, spec.stash08_layout)
        )
    ]


def _checked_policies(restic: Restic) -> dict[str, RetentionPolicy]:
    """The Restic's retention policies by name, after checking every directory's
    reference, path and tags."""
    spec = restic.spec
    assert spec.volume_selector is not None
    policies = {p.name: p for p in spec.retention_policies}
    for i, tv in enumerate(spec.volume_selector.target_volumes):
        for j, d in enumerate(tv.directories):
            field = f"spec.volumeSelector.targetVolumes[{i}].directories[{j}]"
            if d.retention_policy_name and d.retention_policy_name not in policies:
                known = ", ".join(sorted(policies)) or "none defined"
                raise PlanError(
                    f"{field}.retentionPolicyName",
                    f"no retention policy named {d.retention_policy_name!r} (known: {known})",
                )
            if "," in d.path:
                raise PlanError(
                    f"{field}.path", "paths with commas cannot be selected by restic tags"
                )
            for k, t in enumerate(d.tags):
                try:
                    check_tag(t)
                except ValueError as exc:
                    raise PlanError(f"{field}.tags[{k}]", str(exc)) from None
                if naming.reserved_tag_key(t):
                    raise PlanError(
                        f"{field}.tags[{k}]",
                        f"tag {t!r} spells a tag Stash sets itself ("
                        + ", ".join(f"{key}=" for key in naming.RESERVED_TAG_KEYS)
                        + "), which selects whose snapshots retention and restore see",
                    )
    return policies


@dataclass(frozen=True)
class _Target:
    """One backup target being planned: who asks, what it backs up, where it runs."""

    restic: Restic
    repository: Repository
    workload: Workload
    instance: Instance
    placement: Placement
    agent: Agent

    @property
    def namespace(self) -> str:
        return self.restic.metadata.namespace or "default"


def _offline(t: _Target) -> QuiescedWorkload | None:
    if t.restic.spec.backup_mode != "Offline":
        return None
    return t.placement.quiesced(t.workload, "spec.backupMode", "an Offline backup")


def _directories(
    t: _Target, policies: dict[str, RetentionPolicy]
) -> tuple[list[_Dir], list[Mount]]:
    """Every folder to back up (as the workload sees it and as the agent sees it), and
    the volumes the agent mounts for them. A folder backed up twice is an error."""
    spec = t.restic.spec
    assert spec.volume_selector is not None
    dirs: list[_Dir] = []
    mounts: list[Mount] = []
    owner: dict[str, str] = {}

    def add(d: _Dir, where: str, field: str) -> None:
        if d.workload_path in owner:
            raise PlanError(
                field, f"{d.workload_path} is already backed up by {owner[d.workload_path]}"
            )
        owner[d.workload_path] = where
        dirs.append(d)

    for i, tv in enumerate(spec.volume_selector.target_volumes):
        field = f"spec.volumeSelector.targetVolumes[{i}]"
        base, mount = t.placement.source(t.workload, t.instance, tv, field)
        mounts.append(mount)
        for j, d in enumerate(tv.directories or []):
            where = f"{field}.directories[{j}]"
            rel = posixpath.relpath(d.path, tv.mount_path)
            if rel == ".." or rel.startswith("../"):  # the models refuse it; never reach out
                raise PlanError(f"{where}.path", f"{d.path} is not under {tv.mount_path}")
            agent_path = posixpath.normpath(posixpath.join(base, rel))
            policy = policies.get(d.retention_policy_name or "")
            add(
                _Dir(posixpath.normpath(d.path), agent_path, base, policy, tuple(d.tags)),
                where,
                f"{where}.path",
            )
        if not tv.directories:
            whole = _Dir(
                posixpath.normpath(tv.mount_path), posixpath.normpath(base), base, None, ()
            )
            add(whole, field, f"{field}.mountPath")
    return dirs, mounts


def _plan_instance(
    t: _Target, schedule: Schedule, policies: dict[str, RetentionPolicy]
) -> BackupPlan:
    ns, name = t.namespace, t.restic.metadata.name
    instance = t.instance
    offline = _offline(t)
    access = t.placement.repository(t.repository, instance.repo_dir)
    dirs, volume_mounts = _directories(t, policies)
    ref = TargetRef(
        type="Volumes",
        target=instance.target,
        repository_namespace=t.repository.metadata.namespace or "default",
        repository_name=t.repository.metadata.name,
        restic_namespace=ns,
        restic_name=name,
        repo_dir=instance.repo_dir,
        workload_kind=t.workload.kind,
        workload_name=instance.host if t.workload.kind == "StatefulSet" else t.workload.name,
    )
    settings = t.restic.spec.runtime_settings.model_dump(by_alias=True, exclude_defaults=True)

    def step(task_id: str, argv: tuple[str, ...]) -> Step:
        return Step(
            task_id,
            argv,
            ns,
            t.placement.runtime,
            (("RESTIC_REPOSITORY", access.url),),
            access.secret_env,
            (*access.mounts, *volume_mounts),
            None,
            subject=f"Restic {ns}/{name}, Repository {ref.repository_namespace}/"
            f"{ref.repository_name} at {access.url}",
            labels=(("restic", name), ("target", instance.target)),
            node_name=instance.node,
            colocate=instance.colocate,
            runtime_settings=settings,
        )

    def tags(d: _Dir) -> list[str]:
        try:
            own = naming.snapshot_tags(ns, name, instance.target, d.workload_path)
        except ValueError as exc:
            raise PlanError("spec.volumeSelector", str(exc)) from None
        return own + list(d.tags)

    host = instance.host
    values = {
        "STASH_NAMESPACE": ns,
        "STASH_NAME": name,
        "STASH_TARGET": instance.target,
        "STASH_HOST": host,
        "STASH_REPO_DIR": instance.repo_dir,
    }

    def as_agent_runs(s: Step, operation: str) -> Step:
        return agent_step(s, t.agent, operation, values)

    within = [f"--within={r}" for r in sorted({d.root for d in dirs})]
    backup = step(
        "backup",
        agent_run(
            [(d.workload_path, backup_args(d.agent_path, host, tags(d))) for d in dirs],
            "--init",
            "--unlock",
            *within,
        ),
    )

    def old(d: _Dir) -> list[str]:
        """Stash 0.8's snapshots of the folder count as the target's (stash08Layout)."""
        if not t.restic.spec.stash08_layout:
            return []
        same_path = d.agent_path == d.workload_path  # the agent sees what the workload saw
        return stash08_selection(d.tags, d.workload_path if same_path else None)

    forgets = [
        (d.workload_path, forget_args(d.policy, host, tags(d)[:4], old(d)))
        for d in dirs
        if d.policy is not None
    ]
    retention = step("retention", agent_run(forgets, "--unlock")) if forgets else None
    verify = step(
        "verify",
        agent_run([(d.workload_path, snapshots_args(host, tags(d)[:4], old(d))) for d in dirs]),
    )
    backup = as_agent_runs(backup, "backup")
    verify = as_agent_runs(verify, "verify")
    retention = as_agent_runs(retention, "retention") if retention else None
    description = (
        f"Backs up {', '.join(d.workload_path for d in dirs)} of {t.workload.ref} into "
        f"Repository {ref.repository_namespace}/{ref.repository_name} ({access.url}) for "
        f"Restic {ns}/{name}."
    )
    return BackupPlan(
        dag_id=naming.backup_dag_id(ns, name, instance.target),
        target=ref,
        schedule=schedule,
        paused=t.restic.spec.paused,
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
        runtime=t.placement.runtime,
        offline=offline,
        retention_keep_last=min(
            (keep_last(d.policy) for d in dirs if d.policy is not None), default=None
        ),
    )
