"""Where a step runs and what it sees there: the one place the runtime makes a difference.

A plan is the same in both runtimes (restic commands, tags, hosts, retention) except
for what the agent can reach: in the ``local`` runtime it is a child process of the
worker that sees host paths; in the ``kubernetes`` runtime it is a pod that sees
volumes at their mount paths. Everything that differs (repository location and
volume, source and restore folders, which workloads can be backed up, whether a
workload can be stopped) is answered here, by one object chosen once per plan set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..api.kubeobjects import Workload
from ..api.resources import RecoverTo, Repository, TargetVolume
from ..api.resourceset import ResourceSet
from . import naming
from .model import Mount, PlanError, QuiescedWorkload, Runtime, SecretEnv
from .restic import repository_env, repository_url

REPOSITORY_MOUNT = "stash-repository"
SCALABLE_KINDS = ("Deployment", "StatefulSet", "ReplicaSet")
"""Workloads that scale to zero (offline backups, restores into their own volume)."""


@dataclass(frozen=True)
class RepositoryAccess:
    """How the agent reaches a target's repository."""

    url: str
    """``RESTIC_REPOSITORY``: no credentials, ever (they come from ``secret_env``)."""
    secret_env: tuple[SecretEnv, ...]
    mounts: tuple[Mount, ...]


@dataclass(frozen=True)
class Instance:
    """One backup target of a workload: the workload itself, one StatefulSet pod, or
    one DaemonSet node."""

    target: str
    repo_dir: str
    host: str
    """restic ``--host``: the workload (StatefulSet: the pod, DaemonSet: the node)."""
    claims: dict[str, str]
    """Volume name -> the claim this instance's pod mounts (StatefulSet templates)."""
    node: str | None = None
    colocate: tuple[tuple[str, str], ...] = ()


class Placement(Protocol):
    runtime: Runtime
    secrets_in_source: bool
    """Whether Secrets come with the resources (checked when planning) or live only
    in the cluster (referenced, never read)."""
    secrets_across_namespaces: bool
    """Whether a step can read a Secret of another namespace than its own (the
    Repository's Secret, for a Restic or Recovery using a Repository elsewhere)."""

    def repository(self, repository: Repository, repo_dir: str) -> RepositoryAccess: ...

    def instances(
        self, workload: Workload, resources: ResourceSet, prefix: str | None
    ) -> list[Instance]: ...

    def source(
        self, workload: Workload, instance: Instance, volume: TargetVolume, field: str
    ) -> tuple[str, Mount]: ...

    def restore_destination(self, recover_to: RecoverTo, index: int) -> tuple[str, Mount]: ...

    def quiesced(self, workload: Workload, field: str, why: str) -> QuiescedWorkload: ...


def _repository_error(repository: Repository, exc: PlanError) -> PlanError:
    meta = repository.metadata
    return PlanError(None, f"Repository {meta.namespace}/{meta.name}: {exc.field}: {exc}")


def _access(
    repository: Repository, repo_dir: str, local_root: str | None, mounts: tuple[Mount, ...]
) -> RepositoryAccess:
    backend = repository.spec.backend
    try:
        url = repository_url(backend, repo_dir, local_root)
        env = repository_env(backend, repository.metadata.namespace or "default")
    except PlanError as exc:
        raise _repository_error(repository, exc) from None
    return RepositoryAccess(url, env, mounts)


def _quiesced(workload: Workload) -> QuiescedWorkload:
    return QuiescedWorkload(
        workload.kind, workload.namespace, workload.name, tuple(sorted(workload.pod_labels.items()))
    )


class LocalPlacement:
    """Steps are child processes of the worker; volumes are ``hostPath`` folders."""

    runtime: Runtime = "local"
    secrets_in_source = True
    secrets_across_namespaces = True
    WORKLOAD_KINDS = ("Deployment", "ReplicaSet", "ReplicationController")
    """StatefulSet pods each have their own claims and DaemonSet pods live on one node
    each: both need the cluster to say which pod or node holds the data."""

    def repository(self, repository: Repository, repo_dir: str) -> RepositoryAccess:
        local = repository.spec.backend.local
        root = None
        if local is not None:
            if local.host_path is None:
                raise _repository_error(
                    repository,
                    PlanError(
                        "spec.backend.local",
                        "the local runtime can only use a hostPath repository volume",
                    ),
                )
            root = local.host_path.path
        return _access(repository, repo_dir, root, ())

    def instances(
        self, workload: Workload, resources: ResourceSet, prefix: str | None
    ) -> list[Instance]:
        if workload.kind not in self.WORKLOAD_KINDS:
            raise PlanError(
                "spec.volumeSelector.selector",
                f"selects {workload.ref}; {workload.kind} volumes need the kubernetes runtime "
                f"(the local runtime backs up {', '.join(self.WORKLOAD_KINDS)})",
            )
        return [
            Instance(
                naming.workload_target(workload),
                naming.volume_repo_dir(workload, prefix),
                workload.name,
                {},
            )
        ]

    def source(
        self, workload: Workload, instance: Instance, volume: TargetVolume, field: str
    ) -> tuple[str, Mount]:
        source = workload.volumes.get(volume.name)
        if source is None:
            raise PlanError(f"{field}.name", f"{workload.ref} has no volume named {volume.name!r}")
        host = source.get("hostPath")
        if not isinstance(host, dict) or not isinstance(host.get("path"), str):
            raise PlanError(
                f"{field}.name",
                f"volume {volume.name!r} of {workload.ref} is not a hostPath volume; the local "
                "runtime backs up hostPath volumes only",
            )
        return host["path"], Mount(volume.name, host["path"], source, read_only=True)

    def restore_destination(self, recover_to: RecoverTo, index: int) -> tuple[str, Mount]:
        if recover_to.host_path is None:
            raise PlanError(
                f"spec.volumeRestorer.recoverTo[{index}]",
                "the local runtime restores into hostPath only",
            )
        source = {"hostPath": recover_to.host_path.model_dump(by_alias=True, exclude_none=True)}
        path = recover_to.host_path.path
        return path, Mount(f"recover-to-{index}", path, source)

    def quiesced(self, workload: Workload, field: str, why: str) -> QuiescedWorkload:
        raise PlanError(field, f"{why} stops the workload, which needs the kubernetes runtime")


class PodPlacement:
    """Steps are agent pods; volumes are mounted at the paths the workload uses."""

    runtime: Runtime = "kubernetes"
    secrets_in_source = False
    secrets_across_namespaces = False
    """A pod's ``secretKeyRef`` names a Secret of the pod's own namespace only."""

    def repository(self, repository: Repository, repo_dir: str) -> RepositoryAccess:
        local = repository.spec.backend.local
        mounts: tuple[Mount, ...] = ()
        root = None
        if local is not None:
            root = local.mount_path
            source = local.model_dump(
                by_alias=True, exclude_none=True, exclude={"mount_path", "sub_path"}
            )
            mounts = (Mount(REPOSITORY_MOUNT, local.mount_path, source),)
        return _access(repository, repo_dir, root, mounts)

    def instances(
        self, workload: Workload, resources: ResourceSet, prefix: str | None
    ) -> list[Instance]:
        if workload.kind == "StatefulSet":
            return self._statefulset_pods(workload, prefix)
        if workload.kind == "DaemonSet":
            return self._daemonset_nodes(workload, resources, prefix)
        has_claims = any("persistentVolumeClaim" in v for v in workload.volumes.values())
        return [
            Instance(
                naming.workload_target(workload),
                naming.volume_repo_dir(workload, prefix),
                workload.name,
                {},
                colocate=tuple(sorted(workload.pod_labels.items())) if has_claims else (),
            )
        ]

    @staticmethod
    def _statefulset_pods(workload: Workload, prefix: str | None) -> list[Instance]:
        """Each pod has its own claims (from the volume claim templates)."""
        out = []
        for ordinal in range(workload.replicas if workload.replicas is not None else 1):
            pod = f"{workload.name}-{ordinal}"
            target, repo_dir = naming.statefulset_pod_target(workload, pod, prefix)
            claims = {t: f"{t}-{pod}" for t in workload.claim_templates}
            colocate = (("statefulset.kubernetes.io/pod-name", pod),)
            out.append(Instance(target, repo_dir, pod, claims, colocate=colocate))
        return out

    @staticmethod
    def _daemonset_nodes(
        workload: Workload, resources: ResourceSet, prefix: str | None
    ) -> list[Instance]:
        """Its hostPath data differs per node: one target per node."""
        if not resources.nodes:
            raise PlanError(
                "spec.volumeSelector.selector",
                f"selects {workload.ref}, which runs on every node, but the source lists no "
                "Node (`stash sync` copies them)",
            )
        out = []
        for node in sorted(resources.nodes):
            target, repo_dir = naming.daemonset_node_target(workload, node, prefix)
            out.append(Instance(target, repo_dir, node, {}, node=node))
        return out

    def source(
        self, workload: Workload, instance: Instance, volume: TargetVolume, field: str
    ) -> tuple[str, Mount]:
        source: Any = workload.volumes.get(volume.name)
        if volume.name in instance.claims:
            source = {"persistentVolumeClaim": {"claimName": instance.claims[volume.name]}}
        if source is None:
            raise PlanError(f"{field}.name", f"{workload.ref} has no volume named {volume.name!r}")
        return volume.mount_path, Mount(volume.name, volume.mount_path, source, read_only=True)

    def restore_destination(self, recover_to: RecoverTo, index: int) -> tuple[str, Mount]:
        source = recover_to.model_dump(by_alias=True, exclude_none=True, exclude={"mount_path"})
        path = recover_to.mount_path
        return path, Mount(f"recover-to-{index}", path, source)

    def quiesced(self, workload: Workload, field: str, why: str) -> QuiescedWorkload:
        if workload.kind not in SCALABLE_KINDS:
            raise PlanError(
                field, f"{why} needs a workload that scales to zero; {workload.ref} does not"
            )
        return _quiesced(workload)


def placement_for(runtime: Runtime) -> Placement:
    return LocalPlacement() if runtime == "local" else PodPlacement()
