"""Default backup (Stash issue 367) and automatic restore (Stash issue 633) of a
workload that names a BackupTemplate in its annotations.

The template is the administrator's (cluster-scoped, trusted); the workload and its
annotations are a tenant's, so every annotation value is checked like a Restic field
before it reaches a plan: paths are clean absolute paths inside the template's
volumes, the schedule parses, and a Repository is named by name only, always in the
workload's own namespace.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pydantic import ValidationError

from .. import API_VERSION
from ..api.common import ObjectMeta, ObjectRef, clean_path, path_under
from ..api.errors import field_path
from ..api.kubeobjects import Workload
from ..api.names import dns_subdomain
from ..api.resources import (
    BackupTemplate,
    Directory,
    LabelSelector,
    Repository,
    Restic,
    ResticSpec,
    TargetVolume,
    VolumeSelector,
)
from ..api.resourceset import ResourceSet
from ..protocol import AGENT
from . import naming
from .commands import Agent, agent_step
from .model import BackupPlan, PlanError, RecoveryPlan, Step
from .placement import Placement
from .schedules import parse_schedule
from .volume import plan_volume_backups

PREFIX = "stash.appscode.com/"
TEMPLATE = PREFIX + "backup-template"
PATHS = PREFIX + "backup-paths"
SCHEDULE = PREFIX + "backup-schedule"
REPOSITORY = PREFIX + "backup-repository"
RESTORE_IF_EMPTY = PREFIX + "restore-if-empty"
ANNOTATIONS = (TEMPLATE, PATHS, SCHEDULE, REPOSITORY, RESTORE_IF_EMPTY)


def annotation_field(key: str) -> str:
    return f"metadata.annotations[{key}]"


@dataclass(frozen=True)
class TemplateRequest:
    """What a workload's annotations ask for, every value checked."""

    template: str
    paths: tuple[str, ...] = ()
    schedule: str | None = None
    repository: str | None = None
    restore_if_empty: bool = False


def _fail(key: str, message: str) -> PlanError:
    return PlanError(annotation_field(key), message)


def _paths(value: str) -> tuple[str, ...]:
    """Comma-separated absolute paths; nothing that could be an option or climb out."""
    out: list[str] = []
    for item in (p.strip() for p in value.split(",")):
        if not item.startswith("/"):
            raise _fail(
                PATHS,
                f"{item!r} is not an absolute path (each comma-separated item starts with '/')",
            )
        try:
            path = clean_path(item)
        except ValueError as exc:
            raise _fail(PATHS, str(exc)) from None
        if path in out:
            raise _fail(PATHS, f"{path} is listed twice")
        out.append(path)
    return tuple(out)


def _schedule(value: str) -> str:
    value = value.strip()
    if not value or value.startswith("-"):
        raise _fail(SCHEDULE, f"{value!r} is not a schedule")
    try:
        parse_schedule(value)
    except ValueError as exc:
        raise _fail(SCHEDULE, str(exc)) from None
    return value


def _repository(value: str) -> str:
    if "/" in value:
        raise _fail(
            REPOSITORY,
            f"{value!r} names a namespace: a workload names a Repository of its own "
            "namespace only, by name",
        )
    try:
        return dns_subdomain(value)
    except ValueError as exc:
        raise _fail(REPOSITORY, str(exc)) from None


def template_request(workload: Workload) -> TemplateRequest | None:
    """The workload's request, None when it carries none of the annotations; a value
    that cannot be used is a PlanError naming the annotation."""
    given = {k: v for k, v in workload.annotations.items() if k in ANNOTATIONS}
    if not given:
        return None
    name = given.get(TEMPLATE)
    if name is None:
        key = sorted(given)[0]
        raise _fail(key, f"needs the {TEMPLATE} annotation (the backup it belongs to)")
    try:
        dns_subdomain(name)
    except ValueError as exc:
        raise _fail(TEMPLATE, str(exc)) from None
    restore = given.get(RESTORE_IF_EMPTY, "false").strip().lower()
    if restore not in ("true", "false"):
        raise _fail(RESTORE_IF_EMPTY, f'{given[RESTORE_IF_EMPTY]!r} is not "true" or "false"')
    return TemplateRequest(
        template=name,
        paths=_paths(given[PATHS]) if PATHS in given else (),
        schedule=_schedule(given[SCHEDULE]) if SCHEDULE in given else None,
        repository=_repository(given[REPOSITORY]) if REPOSITORY in given else None,
        restore_if_empty=restore == "true",
    )


def find_template(resources: ResourceSet, name: str) -> BackupTemplate:
    template = resources.templates.get(name)
    if template is None:
        known = ", ".join(sorted(resources.templates)) or "none defined"
        raise _fail(TEMPLATE, f"no BackupTemplate named {name!r} (known: {known})")
    return template


def restic_name(template: str) -> str:
    """The name a template's targets carry where a Restic's name goes (DAG id, tags,
    status): ``template-NAME``; renaming the template starts new snapshot history."""
    return f"template-{template}"


def _volumes(template: BackupTemplate, paths: tuple[str, ...]) -> list[TargetVolume]:
    """The template's volumes; with ``backup-paths``, only the listed folders (each in
    the volume that holds it). Folders without a policy get the template's default."""
    spec = template.spec
    default = spec.retention_policy_name
    for path in paths:
        if not any(path_under(path, tv.mount_path) for tv in spec.target_volumes):
            mounts = ", ".join(tv.mount_path for tv in spec.target_volumes)
            raise _fail(
                PATHS,
                f"{path} is inside no volume of BackupTemplate {template.metadata.name} "
                f"(mountPath {mounts})",
            )
    out = []
    for tv in spec.target_volumes:
        if paths:
            dirs = [Directory(path=p) for p in paths if path_under(p, tv.mount_path)]
            if not dirs:
                continue
        else:
            dirs = list(tv.directories)
        if not dirs and default:
            dirs = [Directory(path=tv.mount_path)]
        dirs = [
            d.model_copy(update={"retention_policy_name": d.retention_policy_name or default})
            for d in dirs
        ]
        out.append(tv.model_copy(update={"directories": dirs}))
    return out


def template_restic(workload: Workload, template: BackupTemplate, req: TemplateRequest) -> Restic:
    """The Restic the template and annotations amount to, for planning this one
    workload (its selector is never used: the annotation selected the workload)."""
    spec = template.spec
    try:
        restic_spec = ResticSpec(
            target_type="Volume",
            backup_type=spec.backup_type,
            schedule=req.schedule or spec.schedule,
            backup_mode=spec.backup_mode,
            backup_agent=spec.backup_agent,
            prefix=spec.prefix,
            repository=ObjectRef(name=req.repository or spec.repository.name),
            paused=spec.paused,
            volume_selector=VolumeSelector(
                selector=LabelSelector(match_labels={"stash.appscode.com/template": "unused"}),
                target_volumes=_volumes(template, req.paths),
            ),
            retention_policies=spec.retention_policies,
            runtime_settings=spec.runtime_settings,
        )
    except ValidationError as exc:
        error = exc.errors(include_input=False, include_url=False)[0]
        where = field_path(error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if "schedule" in message:
            raise _fail(
                SCHEDULE,
                f"BackupTemplate {template.metadata.name} has no schedule: give one here",
            ) from None
        raise _fail(
            TEMPLATE, f"BackupTemplate {template.metadata.name}: {where}: {message}"
        ) from None
    meta = ObjectMeta(name=restic_name(req.template), namespace=workload.namespace)
    return Restic(api_version=API_VERSION, kind="Restic", metadata=meta, spec=restic_spec)


def plan_template_backups(
    workload: Workload,
    restic: Restic,
    repository: Repository,
    resources: ResourceSet,
    placement: Placement,
    agent: Agent,
) -> list[BackupPlan]:
    """The workload's backup DAGs: the same shape, status and metrics as a Restic's."""
    template = restic.metadata.name.removeprefix("template-")
    try:
        made = plan_volume_backups(
            restic, repository, resources, placement, agent, workloads=[workload]
        )
    except PlanError as exc:
        raise _fail(TEMPLATE, f"BackupTemplate {template}: {exc.field}: {exc}") from None
    owner = (workload.kind, workload.namespace, workload.name)
    return [
        replace(
            plan,
            owner=owner,
            tags=(*plan.tags, f"template:{template}"),
            description=plan.description.replace(
                f"for Restic {workload.namespace}/{restic.metadata.name}.",
                f"for BackupTemplate {template} (annotation of {workload.ref}).",
            ),
        )
        for plan in made
    ]


def restore_dag_id(workload: Workload, target: str) -> str:
    """``stash-recovery.NS.if-empty.TARGET[.UID8]``: with the workload's uid where the
    source knows it, so that a workload recreated under the same Airflow (a new uid)
    gets a new DAG, which runs once."""
    suffix = f".{workload.uid[:8]}" if workload.uid else ""
    return naming.recovery_dag_id(workload.namespace, f"if-empty.{target}{suffix}")


def plan_restore_if_empty(
    workload: Workload,
    restic: Restic,
    repository: Repository,
    backup: BackupPlan,
    resources: ResourceSet,
    placement: Placement,
    agent: Agent,
) -> RecoveryPlan:
    """Restore the target's latest snapshot into each backed-up folder that is empty.

    The agent checks each folder right before moving the restored data in (``restore
    --if-empty``) and leaves a folder that is not empty untouched, reporting it skipped.
    """
    if agent.commands.get("recovery"):
        raise _fail(
            RESTORE_IF_EMPTY,
            f"BackupAgent {agent.name} restores with its own command, which cannot promise "
            "to leave a non-empty volume alone; restore-if-empty needs stash-agent's restore",
        )
    assert restic.spec.volume_selector is not None
    ns, target = workload.namespace, backup.target.target
    instance = next(
        i
        for i in placement.instances(workload, resources, restic.spec.prefix)
        if i.target == target
    )
    access = placement.repository(repository, instance.repo_dir)
    tags = [f"namespace={ns}", f"restic={restic.metadata.name}", f"target={target}"]
    argv = [AGENT, "restore", "--snapshot=latest", "--if-empty", *(f"--tag={t}" for t in tags)]
    mounts = list(access.mounts)
    for i, tv in enumerate(restic.spec.volume_selector.target_volumes):
        base, mount = placement.source(workload, instance, tv, f"spec.targetVolumes[{i}]")
        mounts.append(replace(mount, read_only=False))
        argv += [f"--mount-path={tv.mount_path}", f"--target={base}"]
    argv += [f"--path={p}" for p in backup.snapshot_paths]
    name = f"if-empty.{target}"
    step = Step(
        "restore",
        tuple(argv),
        ns,
        placement.runtime,
        (("RESTIC_REPOSITORY", access.url),),
        access.secret_env,
        tuple(mounts),
        None,
        subject=f"{workload.ref} (restore-if-empty), Repository "
        f"{backup.target.repository_namespace}/{backup.target.repository_name}",
        labels=(("recovery", name),),
        node_name=instance.node,
        colocate=instance.colocate,
        runtime_settings=restic.spec.runtime_settings.model_dump(
            by_alias=True, exclude_defaults=True
        ),
    )
    values = {
        "STASH_NAMESPACE": ns,
        "STASH_NAME": name,
        "STASH_REPO_DIR": backup.target.repo_dir,
        "STASH_SNAPSHOT": "latest",
        "STASH_SNAPSHOT_TAGS": ",".join(tags),
    }
    step = agent_step(step, agent, "recovery", values)
    folders = ", ".join(backup.snapshot_paths)
    return RecoveryPlan(
        dag_id=restore_dag_id(workload, target),
        namespace=ns,
        name=name,
        repository_namespace=backup.target.repository_namespace,
        repository_name=backup.target.repository_name,
        tags=(
            "stash",
            "recovery",
            "restore-if-empty",
            f"namespace:{ns}",
            "type:volume",
            f"repository:{backup.target.repository_name}",
        ),
        description=(
            f"Restores the latest snapshot of {folders} of {workload.ref} (tagged "
            f"{', '.join(tags)}) into each of them that is empty, once, when the workload "
            f"appears; a folder that is not empty is left untouched and reported skipped."
        ),
        restore=step,
        paths=backup.snapshot_paths,
        runtime=placement.runtime,
        owner=(workload.kind, ns, workload.name),
        records_status=placement.runtime == "local",
    )
