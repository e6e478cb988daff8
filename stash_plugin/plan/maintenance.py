"""Planning a Repository's maintenance: ``restic check`` of every repoDir its targets use.

A Stash Repository is a backend; each target keeps its own restic repository in a
repoDir under it. The maintenance DAG of a Repository checks each of those (the ones
its backup targets write to), clears stale locks and measures them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import naming
from .model import BackupPlan, Runtime, Schedule, Step, TargetRef

if TYPE_CHECKING:  # planning only: unpickling a plan or building its DAG needs neither
    from ..api.resources import Repository
    from .placement import Placement


@dataclass(frozen=True)
class MaintenanceOptions:
    """The administrator's choices (``[stash] maintenance_schedule``,
    ``check_read_data_subset``)."""

    schedule: Schedule = Schedule("cron", "@daily")
    read_data_subset: str | None = None
    """``restic check --read-data-subset`` (``10%``, ``1/7``...): also read back that part
    of the data; None checks the structure only."""


@dataclass(frozen=True)
class RepoDirCheck:
    """One restic repository to check, and the targets that back up into it."""

    repo_dir: str
    step: Step
    targets: tuple[TargetRef, ...]


@dataclass(frozen=True)
class MaintenancePlan:
    """One Repository: the source of one maintenance DAG."""

    dag_id: str
    namespace: str
    name: str
    schedule: Schedule
    read_data_subset: str | None
    checks: tuple[RepoDirCheck, ...]
    tags: tuple[str, ...]
    description: str
    runtime: Runtime = "local"

    @property
    def task_ids(self) -> tuple[str, ...]:
        return tuple(c.step.task_id for c in self.checks)

    def check_of(self, repo_dir: str) -> RepoDirCheck:
        """The check of ``repo_dir`` (a mapped ``check`` task instance names only that)."""
        for check in self.checks:
            if check.repo_dir == repo_dir:
                return check
        raise KeyError(f"{self.dag_id}: no check of repoDir {repo_dir!r}")

    def __str__(self) -> str:
        # Airflow keeps a mapped task's arguments in the serialized DAG as text: a
        # summary, not ten thousand steps.
        return f"MaintenancePlan({self.dag_id}, {len(self.checks)} repoDirs)"


CHECK_TASK_ID = "check"
"""The maintenance DAG's one (mapped) check task: one instance per repoDir at run time,
so the DAG's size does not grow with the number of targets."""


def check_task_id(repo_dir: str) -> str:
    """``check.volumes.deployment.app``: the repoDir, readable in the Airflow UI (its
    parts are Kubernetes names, which are valid in task ids)."""
    return "check." + ".".join(p for p in repo_dir.split("/") if p)


def plan_maintenance(
    repository: Repository,
    backups: list[BackupPlan],
    placement: Placement,
    options: MaintenanceOptions,
) -> MaintenancePlan | None:
    """The maintenance plan of ``repository`` from the backup plans that write into it;
    None when no target uses it (nothing to check)."""
    from ..protocol import AGENT

    ns = repository.metadata.namespace or "default"
    name = repository.metadata.name
    by_dir: dict[str, list[BackupPlan]] = {}
    for plan in backups:
        t = plan.target
        if (t.repository_namespace, t.repository_name) == (ns, name):
            by_dir.setdefault(t.repo_dir, []).append(plan)
    if not by_dir:
        return None
    checks = []
    for repo_dir, plans in sorted(by_dir.items()):
        access = placement.repository(repository, repo_dir)
        argv = [AGENT, "maintain"]
        if options.read_data_subset:
            argv.append(f"--read-data-subset={options.read_data_subset}")
        step = Step(
            check_task_id(repo_dir),
            tuple(argv),
            ns,
            placement.runtime,
            (("RESTIC_REPOSITORY", access.url),),
            access.secret_env,
            access.mounts,
            None,
            subject=f"Repository {ns}/{name} at {access.url}",
            labels=(("repository", name),),
        )
        checks.append(RepoDirCheck(repo_dir, step, tuple(p.target for p in plans)))
    dirs = ", ".join(by_dir)
    return MaintenancePlan(
        dag_id=naming.maintenance_dag_id(ns, name),
        namespace=ns,
        name=name,
        schedule=options.schedule,
        read_data_subset=options.read_data_subset,
        checks=tuple(checks),
        tags=("stash", "maintenance", f"namespace:{ns}", f"repository:{name}"),
        description=(
            f"Checks Repository {ns}/{name} ({repository.spec.backend.kind} backend): "
            f"restic check of {dirs}, stale locks cleared, snapshots counted and size measured."
        ),
        runtime=placement.runtime,
    )
