"""From a resource set to every plan, collecting named errors instead of stopping."""

from __future__ import annotations

from dataclasses import replace

from ..api.errors import ResourceError
from ..api.kubeobjects import Workload
from ..api.resources import Recovery, Repository, Restic
from ..api.resourceset import ResourceSet
from .cluster import plan_cluster_backup, plan_cluster_recovery
from .commands import DEFAULT_AGENT, Agent
from .database import plan_database_backups, plan_database_recovery
from .maintenance import MaintenanceOptions, plan_maintenance
from .model import BackupPlan, PlanError, PlanSet, RecoveryPlan, Runtime
from .naming import maintenance_dag_id
from .placement import Placement, placement_for
from .records import repository_record
from .recovery import plan_recovery
from .secretkeys import secret_problems
from .templates import (
    REPOSITORY,
    TEMPLATE,
    annotation_field,
    find_template,
    plan_restore_if_empty,
    plan_template_backups,
    template_request,
    template_restic,
)
from .volume import WorkloadIndex, plan_volume_backups


def resolve_repository(
    resources: ResourceSet, obj: Restic | Recovery, placement: Placement
) -> Repository:
    """The Repository ``obj`` may use, with its storage Secret checked where it can be.

    The one resolution of ``spec.repository`` (``stash validate`` and the DAG factory
    both plan through here, and the steps carry the Secret's namespace it decides):
    ``namespace`` defaults to the object's own; a Repository elsewhere must list the
    object's namespace in ``spec.allowedNamespaces``; the Secret is always the one in
    the Repository's namespace.
    """
    ref = obj.spec.repository
    own = obj.metadata.namespace or "default"
    ns = ref.namespace or own
    repo = resources.repositories.get((ns, ref.name))
    if repo is None:
        raise PlanError("spec.repository", f"Repository {ns}/{ref.name} not found")
    if not repo.allows(own):
        allowed = ", ".join([ns, *repo.spec.allowed_namespaces])
        raise PlanError(
            "spec.repository.namespace",
            f"Repository {ns}/{ref.name} does not allow namespace {own} (allowed: {allowed}); "
            f"its spec.allowedNamespaces must list {own}",
        )
    secret = repo.spec.backend.storage_secret_name
    if ns != own and secret and not placement.secrets_across_namespaces:
        raise PlanError(
            "spec.repository.namespace",
            f"Repository {ns}/{ref.name} is in another namespace: in the {placement.runtime} "
            f"runtime the agent pod runs in namespace {own} and cannot read its storage "
            f"Secret {ns}/{secret}; use a Repository in namespace {own}",
        )
    if placement.secrets_in_source and secret:
        _check_secret(resources, repo, ns, secret)
    return repo


def _check_secret(resources: ResourceSet, repo: Repository, ns: str, secret: str) -> None:
    name = repo.metadata.name
    if (ns, secret) not in resources.secrets:
        raise PlanError(
            "spec.repository",
            f"Repository {ns}/{name} names storageSecretName {secret!r}, but there is no "
            f"Secret {ns}/{secret}",
        )
    problems = secret_problems(resources.secrets[(ns, secret)], repo.spec.backend.kind)
    if problems:
        origin = resources.origin_of("Secret", ns, secret)
        where = f" ({origin})" if origin else ""
        raise PlanError(
            "spec.repository",
            f"Repository {ns}/{name} spec.backend.storageSecretName: Secret "
            f"{ns}/{secret}{where} " + "; ".join(problems),
        )


# Airflow refuses longer DAG ids, and a DAG that cannot be made hides every other DAG of
# the file: names that long are refused here, as a named error.
MAX_DAG_ID_LENGTH = 250


def _check_dag_id(dag_id: str) -> None:
    if len(dag_id) > MAX_DAG_ID_LENGTH:
        raise PlanError(
            "metadata.name",
            f"makes DAG id {dag_id} of {len(dag_id)} characters, but Airflow allows "
            f"{MAX_DAG_ID_LENGTH}; shorten the name (or the namespace or workload name)",
        )


# BackupAgents that exist without the user creating them; the image is the configured
# default agent image ([stash] agent_image). A user's BackupAgent of the same name wins.
DEFAULT_AGENTS = ("stash",)


def _agent(resources: ResourceSet, name: str | None, field: str) -> Agent:
    """The named BackupAgent (image and commands), or the default agent."""
    if not name:
        return DEFAULT_AGENT
    agent = resources.agents.get(name)
    if agent is not None:
        commands = {
            op: tuple(items) for op, items in agent.spec.commands.model_dump().items() if items
        }
        return Agent(name, agent.spec.image, commands)
    if name in DEFAULT_AGENTS:
        return DEFAULT_AGENT
    known = ", ".join(sorted({*resources.agents, *DEFAULT_AGENTS}))
    raise PlanError(field, f"no BackupAgent named {name!r} (known: {known})")


def make_plans(
    resources: ResourceSet,
    runtime: Runtime = "local",
    only_dag_id: str | None = None,
    maintenance: MaintenanceOptions | None = None,
) -> PlanSet:
    """Plan every Restic and Recovery, and the maintenance of every Repository they back
    up into; one bad resource never stops the others.

    ``only_dag_id`` skips objects that cannot produce that DAG (the parsing context of a
    worker that runs one task), keeping its cost to one resource (a maintenance DAG
    needs every Restic, to know the repoDirs).
    """
    plans = PlanSet(errors=list(resources.errors), warnings=list(resources.warnings))
    placement = placement_for(runtime)
    index: WorkloadIndex | None = None  # built once, on the first Restic that needs it

    def fail(obj: Restic | Recovery, exc: PlanError) -> None:
        ns, name = obj.metadata.namespace, obj.metadata.name
        origin = resources.origin_of(obj.kind, ns, name)
        plans.errors.append(ResourceError(obj.kind, ns, name, exc.field, str(exc), origin))

    for (ns, name), restic in sorted(resources.restics.items()):
        if (
            only_dag_id
            and not only_dag_id.startswith(f"stash-backup.{ns}.{name}.")
            and not only_dag_id.startswith("stash-maintenance.")
        ):
            continue
        try:
            repo = resolve_repository(resources, restic, placement)
            agent = _agent(resources, restic.spec.backup_agent, "spec.backupAgent")
            if restic.spec.target_type == "Cluster":
                made = [plan_cluster_backup(restic, repo, placement, agent)]
            elif restic.spec.target_type == "Database":
                made = plan_database_backups(restic, repo, resources, placement, agent)
            else:
                index = index or WorkloadIndex(resources)
                made = plan_volume_backups(restic, repo, resources, placement, agent, index=index)
            record = repository_record(repo)
            made = [replace(plan, repository_record=record) for plan in made]
            _add(plans, made, [], "metadata.name")
        except PlanError as exc:
            fail(restic, exc)
    for (ns, name), recovery in sorted(resources.recoveries.items()):
        if only_dag_id and only_dag_id != f"stash-recovery.{ns}.{name}":
            continue
        try:
            repo = resolve_repository(resources, recovery, placement)
            agent = _agent(resources, recovery.spec.recovery_agent, "spec.recoveryAgent")
            if recovery.spec.target_type == "Cluster":
                rplan = plan_cluster_recovery(recovery, repo, placement, agent)
            elif recovery.spec.target_type == "Database":
                rplan = plan_database_recovery(recovery, repo, placement, agent, resources)
            else:
                rplan = plan_recovery(recovery, repo, placement, agent, resources)
            _check_dag_id(rplan.dag_id)
            plans.recoveries[rplan.dag_id] = rplan
        except PlanError as exc:
            fail(recovery, exc)
    for (kind, ns, name), workload in sorted(resources.workloads.items()):
        if workload.controlled or not _may_make(only_dag_id, ns):
            continue
        try:
            _plan_template(resources, workload, plans, placement)
        except PlanError as exc:
            origin = resources.origin_of(kind, ns, name)
            plans.errors.append(ResourceError(kind, ns, name, exc.field, str(exc), origin))
    _plan_maintenance(resources, plans, placement, maintenance or MaintenanceOptions(), only_dag_id)
    return plans


def _maker(plan: BackupPlan | RecoveryPlan) -> str:
    if plan.owner is not None:
        kind, ns, name = plan.owner
        return f"{kind} {ns}/{name} (annotation {TEMPLATE})"
    if isinstance(plan, RecoveryPlan):
        return f"Recovery {plan.namespace}/{plan.name}"
    return f"Restic {plan.target.restic_namespace}/{plan.target.restic_name}"


def _add(
    plans: PlanSet, backups: list[BackupPlan], recoveries: list[RecoveryPlan], field: str
) -> None:
    """Add one object's plans, or none of them. Names may hold dots, so two objects can
    spell the same DAG id (Restic "a.deployment" + Deployment "x", Restic "a" +
    Deployment "deployment.x"): the second is refused rather than one target's backups
    silently dropped."""
    made: list[BackupPlan | RecoveryPlan] = [*backups, *recoveries]
    for plan in made:
        _check_dag_id(plan.dag_id)
        other = plans.backups.get(plan.dag_id) or plans.recoveries.get(plan.dag_id)
        if other is not None:
            raise PlanError(
                field,
                f"makes DAG {plan.dag_id}, which {_maker(other)} makes too; rename one of them",
            )
    plans.backups.update((p.dag_id, p) for p in backups)
    plans.recoveries.update((p.dag_id, p) for p in recoveries)


def _may_make(only_dag_id: str | None, ns: str) -> bool:
    """Whether a workload of ``ns`` can make ``only_dag_id`` through its annotations."""
    return not only_dag_id or only_dag_id.startswith(
        (f"stash-backup.{ns}.template-", f"stash-recovery.{ns}.if-empty.", "stash-maintenance.")
    )


def _plan_template(
    resources: ResourceSet, workload: Workload, plans: PlanSet, placement: Placement
) -> None:
    """The default backup of a workload that names a BackupTemplate, and its automatic
    restore when it asks for one; errors name the workload's annotation."""
    request = template_request(workload)
    if request is None:
        return
    template = find_template(resources, request.template)
    restic = template_restic(workload, template, request)
    try:
        repo = resolve_repository(resources, restic, placement)
    except PlanError as exc:
        where = REPOSITORY if request.repository else TEMPLATE
        raise PlanError(annotation_field(where), str(exc)) from None
    try:
        agent = _agent(resources, restic.spec.backup_agent, "spec.backupAgent")
    except PlanError as exc:
        raise PlanError(
            annotation_field(TEMPLATE), f"BackupTemplate {request.template}: {exc.field}: {exc}"
        ) from None
    record = repository_record(repo)
    made = [
        replace(plan, repository_record=record)
        for plan in plan_template_backups(workload, restic, repo, resources, placement, agent)
    ]
    restores = []
    if request.restore_if_empty:
        restores = [
            plan_restore_if_empty(workload, restic, repo, plan, resources, placement, agent)
            for plan in made
        ]
    _add(plans, made, restores, annotation_field(TEMPLATE))


def _plan_maintenance(
    resources: ResourceSet,
    plans: PlanSet,
    placement: Placement,
    options: MaintenanceOptions,
    only_dag_id: str | None,
) -> None:
    backups = list(plans.backups.values())
    if only_dag_id and only_dag_id.startswith("stash-maintenance."):
        plans.backups = {}  # planned only to find the Repository's repoDirs
    for (ns, name), repository in sorted(resources.repositories.items()):
        if only_dag_id and only_dag_id != maintenance_dag_id(ns, name):
            continue
        try:
            made = plan_maintenance(repository, backups, placement, options)
        except PlanError as exc:  # its targets planned, so this is not expected
            origin = resources.origin_of("Repository", ns, name)
            plans.errors.append(ResourceError("Repository", ns, name, exc.field, str(exc), origin))
            continue
        if made is not None:
            plans.maintenance[made.dag_id] = made
