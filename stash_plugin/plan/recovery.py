"""Planning a Recovery: one restore step into the places ``recoverTo`` names."""

from __future__ import annotations

import re

from ..api.common import path_under
from ..api.resources import Recovery, Repository
from ..api.resourceset import ResourceSet
from ..protocol import AGENT
from . import naming
from .commands import DEFAULT_AGENT, Agent, agent_step
from .model import Mount, PlanError, QuiescedWorkload, RecoveryPlan, Runtime, Step
from .placement import Placement

_HEX_ID = re.compile(r"^[0-9a-f]{8,64}$")


def snapshot_ref(ref: str | None, field: str) -> str:
    """``latest``, a restic id, or a Stash name ``<repository>-<8-char id>``: the id restic
    takes."""
    if not ref or ref == "latest":
        return "latest"
    if _HEX_ID.match(ref):
        return ref
    _, sep, tail = ref.rpartition("-")
    if sep and _HEX_ID.match(tail):
        return tail
    raise PlanError(
        field,
        f"{ref!r} is not 'latest', a restic snapshot id, or a Stash snapshot name such as "
        "deployment.stash-demo-e0e9c272",
    )


def _workload(
    recovery: Recovery, resources: ResourceSet | None, placement: Placement
) -> QuiescedWorkload | None:
    vr = recovery.spec.volume_restorer
    if vr is None or vr.workload is None:
        return None
    field = "spec.volumeRestorer.workload"
    ns = recovery.metadata.namespace or "default"
    found = (resources.workloads if resources else {}).get((vr.workload.kind, ns, vr.workload.name))
    if found is None:
        if placement.runtime == "local":  # say what cannot work before what is missing
            raise PlanError(field, "stopping a workload needs the kubernetes runtime")
        raise PlanError(field, f"{vr.workload.kind} {ns}/{vr.workload.name} not found")
    return placement.quiesced(found, field, "restoring into a running workload")


def snapshot_selection(recovery: Recovery, repository: Repository) -> list[str]:
    """The tags a snapshot must carry for this Recovery to restore it.

    ``latest`` is the newest snapshot with these tags and an explicit id must carry them
    too (or none of Stash's tags: a Stash 0.8 snapshot), so a repoDir shared by two
    namespaces, two Restics or a Deployment and a ReplicaSet of the same name never
    hands one of them the other's data. By default the snapshots are the Recovery's
    own namespace's; another namespace's only when ``sourceNamespace`` names it and
    the Repository allows that namespace.
    """
    vr = recovery.spec.volume_restorer
    assert vr is not None
    source = vr.source_namespace or recovery.metadata.namespace or "default"
    if not repository.allows(source):
        meta = repository.metadata
        allowed = ", ".join([meta.namespace or "default", *repository.spec.allowed_namespaces])
        raise PlanError(
            "spec.volumeRestorer.sourceNamespace",
            f"Repository {meta.namespace}/{meta.name} does not allow namespace {source} "
            f"(allowed: {allowed}), so its snapshots cannot be restored through it",
        )
    tags = [f"namespace={source}"]
    if vr.restic:
        tags.append(f"restic={vr.restic}")
    if vr.target:
        tags.append(f"target={vr.target}")
    return tags


def recovery_plan(
    recovery: Recovery,
    repository: Repository,
    target_type: str,
    *,
    description: str,
    restore: Step,
    paths: tuple[str, ...],
    runtime: Runtime,
    extra_tags: tuple[str, ...] = (),
    offline: QuiescedWorkload | None = None,
) -> RecoveryPlan:
    """The plan of ``recovery`` around its restore step: the DAG id, names and tags
    every recovery DAG carries the same way, whatever it restores."""
    ns = recovery.metadata.namespace or "default"
    name = recovery.metadata.name
    repo = repository.metadata.name
    return RecoveryPlan(
        dag_id=naming.recovery_dag_id(ns, name),
        namespace=ns,
        name=name,
        repository_namespace=repository.metadata.namespace or "default",
        repository_name=repo,
        tags=(
            "stash",
            "recovery",
            f"namespace:{ns}",
            f"type:{target_type}",
            *extra_tags,
            f"repository:{repo}",
        ),
        description=description,
        restore=restore,
        paths=paths,
        runtime=runtime,
        offline=offline,
    )


def plan_recovery(
    recovery: Recovery,
    repository: Repository,
    placement: Placement,
    agent: Agent = DEFAULT_AGENT,
    resources: ResourceSet | None = None,
) -> RecoveryPlan:
    spec = recovery.spec
    if spec.target_type != "Volume" or spec.volume_restorer is None:
        raise PlanError(
            "spec.targetType",
            f"{spec.target_type} recovery is not available yet (Volume and Database recovery are)",
        )
    ns = recovery.metadata.namespace or "default"
    vr = spec.volume_restorer
    access = placement.repository(repository, vr.repo_dir)
    url = access.url
    snapshot = snapshot_ref(vr.snapshot, "spec.volumeRestorer.snapshot")
    selection = snapshot_selection(recovery, repository)
    argv = [AGENT, "restore", f"--snapshot={snapshot}", *(f"--tag={t}" for t in selection)]
    if vr.stash08_host:
        argv.append(f"--stash08-host={vr.stash08_host}")
    mounts: list[Mount] = list(access.mounts)
    for i, rt in enumerate(vr.recover_to):
        dest, mount = placement.restore_destination(rt, i)
        mounts.append(mount)
        argv += [f"--mount-path={rt.mount_path}", f"--target={dest}"]
    for i, p in enumerate(vr.paths):
        if not any(path_under(p, rt.mount_path) for rt in vr.recover_to):
            raise PlanError(
                f"spec.volumeRestorer.paths[{i}]",
                f"{p} is not under any recoverTo mountPath "
                f"({', '.join(rt.mount_path for rt in vr.recover_to)})",
            )
        argv.append(f"--path={p}")
    if vr.overwrite:
        argv.append("--overwrite")
    step = Step(
        "restore",
        tuple(argv),
        ns,
        placement.runtime,
        (("RESTIC_REPOSITORY", url),),
        access.secret_env,
        tuple(mounts),
        None,
        subject=f"Recovery {ns}/{recovery.metadata.name}, Repository "
        f"{repository.metadata.namespace}/{repository.metadata.name} at {url}",
        labels=(("recovery", recovery.metadata.name),),
        runtime_settings=spec.runtime_settings.model_dump(by_alias=True, exclude_defaults=True),
    )
    repo_ns = repository.metadata.namespace or "default"
    name = recovery.metadata.name
    values = {
        "STASH_NAMESPACE": ns,
        "STASH_NAME": name,
        "STASH_REPO_DIR": vr.repo_dir,
        "STASH_SNAPSHOT": snapshot,
        # For a BackupAgent's own restore command: `--tag "$STASH_SNAPSHOT_TAGS"` keeps
        # its `latest` to this Recovery's snapshots, as stash-agent's own restore does.
        "STASH_SNAPSHOT_TAGS": ",".join(selection),
    }
    step = agent_step(step, agent, "recovery", values)
    return recovery_plan(
        recovery,
        repository,
        "volume",
        description=(
            f"Restores snapshot {snapshot} (tagged {', '.join(selection)}) of {vr.repo_dir} "
            f"in Repository {repo_ns}/"
            f"{repository.metadata.name} ({url}) into "
            + ", ".join(f"{rt.mount_path}" for rt in vr.recover_to)
            + f" for Recovery {ns}/{name}."
        ),
        restore=step,
        paths=tuple(vr.paths) or tuple(rt.mount_path for rt in vr.recover_to),
        runtime=placement.runtime,
        offline=_workload(recovery, resources, placement),
    )
