"""Planning a Cluster Restic (one backup of the selected API objects) and a Cluster
Recovery (those objects applied back).

The selection reaches the agent as ``--resource=GROUP[/VERSION]:RESOURCE`` and
``--namespace=NAME`` items (values the model checked: DNS names and lower-case
plurals, never an option), and the agent reads the API itself: through its pod's
ServiceAccount, or locally through the Airflow connection (``Step.cluster_access``).
"""

from __future__ import annotations

from ..api.common import RetentionPolicy
from ..api.resources import Recovery, Repository, Restic
from ..protocol import AGENT, SEPARATOR
from . import naming
from .commands import Agent
from .model import BackupPlan, PlanError, RecoveryPlan, Step, TargetRef
from .placement import Placement
from .recovery import recovery_plan, snapshot_ref
from .restic import agent_run, check_tag, forget_args, snapshots_args, tag_list
from .volume import restic_schedule

READER_ACCOUNT = "stash-cluster-reader"
"""The ServiceAccount a Cluster backup pod runs as unless ``runtimeSettings`` names
one: bound to a ClusterRole that may only get and list (the chart makes both)."""
RESTORER_ACCOUNT = "stash-cluster-restorer"
"""The ServiceAccount of a Cluster restore pod: may get, list, create and patch."""


def _policy(restic: Restic) -> RetentionPolicy | None:
    cr = restic.spec.cluster_resources
    assert cr is not None
    if not cr.retention_policy_name:
        return None
    policies = {p.name: p for p in restic.spec.retention_policies}
    if cr.retention_policy_name not in policies:
        known = ", ".join(sorted(policies)) or "none defined"
        raise PlanError(
            "spec.clusterResources.retentionPolicyName",
            f"no retention policy named {cr.retention_policy_name!r} (known: {known})",
        )
    return policies[cr.retention_policy_name]


def _default_agent_only(agent: Agent, field: str) -> None:
    """Cluster objects are read by the agent itself; a command cannot stand in for it."""
    if agent.commands:
        raise PlanError(
            field,
            f"BackupAgent {agent.name} has commands, but a Cluster target is dumped and "
            "restored by stash-agent itself; name an agent without commands (an image) "
            "or none",
        )


def _settings(obj: Restic | Recovery, account: str, placement: Placement) -> dict[str, object]:
    settings = obj.spec.runtime_settings.model_dump(by_alias=True, exclude_defaults=True)
    if placement.runtime == "kubernetes":
        pod = dict(settings.get("pod") or {})
        pod.setdefault("serviceAccountName", account)
        settings["pod"] = pod
    return settings


def resource_args(restic: Restic) -> list[str]:
    cr = restic.spec.cluster_resources
    assert cr is not None
    out = []
    for group in cr.resource_selector:
        gv = group.api_group + (f"/{group.version}" if group.version else "")
        out += [f"--resource={gv}:{r}" for r in group.resources]
    out += [f"--namespace={n}" for n in cr.namespaces]
    out += [f"--exclude-namespace={n}" for n in cr.exclude_namespaces]
    if cr.sanitize:
        out.append("--sanitize")
    if cr.parents_only:
        out.append("--parents-only")
    return out


def plan_cluster_backup(
    restic: Restic, repository: Repository, placement: Placement, agent: Agent
) -> BackupPlan:
    spec = restic.spec
    ns, name = restic.metadata.namespace or "default", restic.metadata.name
    schedule = restic_schedule(restic)
    policy = _policy(restic)
    _default_agent_only(agent, "spec.backupAgent")
    target, repo_dir, host = naming.cluster_target(name, spec.prefix)
    access = placement.repository(repository, repo_dir)
    path = naming.CLUSTER_PATH
    ref = TargetRef(
        type="Cluster",
        target=target,
        repository_namespace=repository.metadata.namespace or "default",
        repository_name=repository.metadata.name,
        restic_namespace=ns,
        restic_name=name,
        repo_dir=repo_dir,
    )
    subject = (
        f"Restic {ns}/{name}, Repository {ref.repository_namespace}/{ref.repository_name} "
        f"at {access.url}"
    )
    tags = naming.snapshot_tags(ns, name, target, path)
    for t in tags:
        check_tag(t)

    def step(task_id: str, argv: tuple[str, ...], access_kind: str | None = None) -> Step:
        return Step(
            task_id,
            argv,
            ns,
            placement.runtime,
            (("RESTIC_REPOSITORY", access.url),),
            access.secret_env,
            access.mounts,
            agent.image,
            subject=subject,
            labels=(("restic", name), ("target", target)),
            runtime_settings=_settings(restic, READER_ACCOUNT, placement)
            if access_kind
            else restic.spec.runtime_settings.model_dump(by_alias=True, exclude_defaults=True),
            cluster_access="read" if access_kind else None,
        )

    restic_backup = ["restic", "backup", "--json", "--quiet", f"--host={host}"]
    restic_backup.append(f"--tag={tag_list(tags)}")
    argv = (
        AGENT,
        "cluster-dump",
        "--init",
        "--unlock",
        *resource_args(restic),
        SEPARATOR,
        path,
        *restic_backup,
    )
    backup = step("backup", argv, "read")
    verify = step("verify", agent_run([(path, snapshots_args(host, tags))]))
    retention = None
    if policy is not None:
        retention = step(
            "retention", agent_run([(path, forget_args(policy, host, tags))], "--unlock")
        )
    return BackupPlan(
        dag_id=naming.backup_dag_id(ns, name, target),
        target=ref,
        schedule=schedule,
        paused=spec.paused,
        tags=(
            "stash",
            "backup",
            f"namespace:{ns}",
            "type:cluster",
            f"repository:{ref.repository_name}",
        ),
        description=(
            f"Backs up the cluster's API objects ({_selection(restic)}) as YAML into "
            f"Repository {ref.repository_namespace}/{ref.repository_name} ({access.url}) "
            f"for Restic {ns}/{name}."
        ),
        backup=backup,
        retention=retention,
        verify=verify,
        snapshot_paths=(path,),
        runtime=placement.runtime,
    )


def _selection(restic: Restic) -> str:
    cr = restic.spec.cluster_resources
    assert cr is not None
    parts = [f"{g.api_group or 'core'}: {', '.join(g.resources)}" for g in cr.resource_selector]
    if cr.namespaces:
        parts.append(f"namespaces {', '.join(cr.namespaces)}")
    if cr.exclude_namespaces:
        parts.append(f"not namespaces {', '.join(cr.exclude_namespaces)}")
    return "; ".join(parts)


def plan_cluster_recovery(
    recovery: Recovery, repository: Repository, placement: Placement, agent: Agent
) -> RecoveryPlan:
    cr = recovery.spec.cluster_restorer
    assert cr is not None
    ns, name = recovery.metadata.namespace or "default", recovery.metadata.name
    _default_agent_only(agent, "spec.recoveryAgent")
    access = placement.repository(repository, cr.repo_dir)
    snapshot = snapshot_ref(cr.snapshot, "spec.clusterRestorer.snapshot")
    tags = [f"namespace={ns}", "target=cluster"] + ([f"restic={cr.restic}"] if cr.restic else [])
    argv = [AGENT, "cluster-restore", f"--snapshot={snapshot}", *(f"--tag={t}" for t in tags)]
    argv += [f"--namespace={n}" for n in cr.namespaces]
    argv += [f"--kind={k}" for k in cr.kinds]
    if cr.overwrite:
        argv.append("--overwrite")
    if cr.dry_run:
        argv.append("--dry-run")
    repo_ns = repository.metadata.namespace or "default"
    step = Step(
        "restore",
        tuple(argv),
        ns,
        placement.runtime,
        (("RESTIC_REPOSITORY", access.url),),
        access.secret_env,
        access.mounts,
        agent.image,
        subject=f"Recovery {ns}/{name}, Repository {repo_ns}/{repository.metadata.name} "
        f"at {access.url}",
        labels=(("recovery", name),),
        runtime_settings=_settings(recovery, RESTORER_ACCOUNT, placement),
        cluster_access="write",
    )
    limits = []
    if cr.namespaces:
        limits.append(f"namespaces {', '.join(cr.namespaces)}")
    if cr.kinds:
        limits.append(f"kinds {', '.join(cr.kinds)}")
    what = f" ({'; '.join(limits)})" if limits else ""
    mode = (
        "dry run: reports what would change"
        if cr.dry_run
        else "replacing existing objects"
        if cr.overwrite
        else "existing objects left alone"
    )
    return recovery_plan(
        recovery,
        repository,
        "cluster",
        description=(
            f"Applies the API objects of snapshot {snapshot} of {cr.repo_dir} in Repository "
            f"{repo_ns}/{repository.metadata.name} ({access.url}){what} to the cluster, in "
            f"dependency order, for Recovery {ns}/{name} ({mode})."
        ),
        restore=step,
        paths=(cr.repo_dir,),
        runtime=placement.runtime,
    )
