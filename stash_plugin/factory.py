"""Plans -> Airflow DAGs. The only module that knows both Stash plans and DAGs.

Parsing makes no network call: it reads the manifest folder (or the cluster source's
snapshot file), plans, and builds DAGs whose tasks hold their steps as data. A worker
that parses for one task (``get_parsing_context().dag_id``) builds only that DAG.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import hashlib
import importlib.metadata
import json
import logging
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow import __version__ as airflow_version
from airflow.sdk import DAG, DeltaTriggerTimetable, Param, get_parsing_context

from stash_plugin.api.errors import ResourceError
from stash_plugin.api.resourceset import ResourceSet
from stash_plugin.operators.step import (
    StashBackupOperator,
    StashRestoreOperator,
    StashRetentionOperator,
    StashStepOperator,
)
from stash_plugin.operators.update_status import (
    StashBackupStatusOperator,
    StashMaintenanceStatusOperator,
    StashRecoveryStatusOperator,
)
from stash_plugin.operators.workload import StashQuiesceOperator, StashResumeOperator
from stash_plugin.plan import BackupPlan, PlanSet, RecoveryPlan, Schedule, docs, make_plans, naming
from stash_plugin.plan.maintenance import MaintenanceOptions, MaintenancePlan
from stash_plugin.plan.model import QuiescedWorkload, Step
from stash_plugin.plan.schedules import parse_schedule, spread_schedule
from stash_plugin.sensors.snapshot import SnapshotSensor
from stash_plugin.sensors.workload import WorkloadReadySensor, WorkloadStoppedSensor
from stash_plugin.settings import Settings, load_settings
from stash_plugin.source import load_directory

log = logging.getLogger(__name__)
START_DATE = datetime(2024, 1, 1, tzinfo=UTC)


def default_args(settings: Settings) -> dict[str, Any]:
    return {
        "owner": "stash",
        "retries": settings.task_retries,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
    }


def airflow_schedule(schedule: Schedule, paused: bool) -> Any:
    """A paused Restic keeps its DAG (history, manual runs) but schedules nothing."""
    if paused or schedule.kind == "none":
        return None
    if schedule.kind == "once":
        return "@once"
    if schedule.kind == "every":
        assert isinstance(schedule.value, int)
        return DeltaTriggerTimetable(timedelta(seconds=schedule.value))
    return schedule.value


def limits(
    settings: Settings, kind: str, sensor: bool = False, step: Step | None = None
) -> dict[str, Any]:
    """How long a task of ``kind`` may take before it is stopped and fails (a sensor's
    own ``timeout`` is the same), and, for a task that runs ``step``, the namespace's
    pool when ``[stash] pools`` is on (``stash pools`` creates them)."""
    limit = settings.timeout(kind)
    out: dict[str, Any] = {"execution_timeout": limit}
    if sensor:
        out["timeout"] = limit.total_seconds()
    if step is not None and settings.pools:
        out["pool"] = naming.pool_name(step.namespace)
    return out


def spread(schedule: Schedule, dag_id: str, settings: Settings) -> Schedule:
    """The schedule the DAG runs on (``[stash] spread_schedules``)."""
    return spread_schedule(schedule, dag_id) if settings.spread_schedules else schedule


def around(task: Any, workload: QuiescedWorkload, settings: Settings) -> tuple[Any, Any]:
    """``quiesce -> wait_quiesced -> task -> resume -> wait_ready``; returns the first
    and last of them. ``resume`` runs whatever happened to ``task``."""
    quiesce = StashQuiesceOperator(workload=workload, **limits(settings, "workload"))
    ready = WorkloadReadySensor(workload=workload, **limits(settings, "workload", sensor=True))
    (
        quiesce
        >> WorkloadStoppedSensor(workload=workload, **limits(settings, "workload", sensor=True))
        >> task
        >> StashResumeOperator(workload=workload, **limits(settings, "workload"))
        >> ready
    )
    return quiesce, ready


def backup_dag(plan: BackupPlan, settings: Settings, resources: ResourceSet | None = None) -> DAG:
    """``[quiesce -> wait_quiesced] -> backup -> [resume -> wait_ready] -> retention ->
    verify -> update_status``; resume runs whatever happened to the backup."""
    t = plan.target
    rs = resources or ResourceSet()
    plan = dataclasses.replace(plan, schedule=spread(plan.schedule, plan.dag_id, settings))
    doc = docs.backup_doc(
        plan,
        rs.restics.get((t.restic_namespace, t.restic_name)),
        rs.repositories.get((t.repository_namespace, t.repository_name)),
        rs.deprecation("Restic", t.restic_namespace, t.restic_name),
    )
    with DAG(
        dag_id=plan.dag_id,
        schedule=airflow_schedule(plan.schedule, plan.paused),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        # Airflow refuses tags over 100 characters (a long Repository name): cut, not fail.
        tags=[t[:100] for t in (*plan.tags, *(["paused"] if plan.paused else []))],
        doc_md=doc,
        description=plan.description[:200],
        is_paused_upon_creation=False,
        # Exported by dags/stash_dags.py's globals only: a DAG that Airflow refuses
        # half-built, or one built by stash_errors.py to find refusals, must not reach
        # the DagBag through the DAG context's auto-registration.
        auto_register=False,
        default_args=default_args(settings),
        params={
            "retention": Param(
                plan.retention is not None,
                type="boolean",
                description="Apply the retention policy after this backup (false: keep "
                "every snapshot this time)",
            ),
            "new_repository": Param(
                False,
                type="boolean",
                description="Create the repository if it is missing although this target "
                "has backups on record (only after moving or wiping it on purpose)",
            ),
        },
    ) as dag:
        backup = StashBackupOperator(plan=plan, **limits(settings, "backup", step=plan.backup))
        verify = SnapshotSensor(
            step=plan.verify, **limits(settings, "verify", sensor=True, step=plan.verify)
        )
        status = StashBackupStatusOperator(plan=plan, **limits(settings, "status"))
        first, after_backup = backup, backup
        if plan.offline is not None:
            first, after_backup = around(backup, plan.offline, settings)
        if plan.retention is not None:
            retention = StashRetentionOperator(
                step=plan.retention,
                keep_last=plan.retention_keep_last,
                **limits(settings, "retention", step=plan.retention),
            )
            verify.trigger_rule = "none_failed"  # type: ignore[assignment]
            [backup, after_backup] >> retention >> verify
        else:
            [backup, after_backup] >> verify
        verify >> status
        if first is not backup:
            # The status must see a run whose workload could not be stopped or restarted.
            [first, after_backup] >> status
    return dag


def recovery_dag(
    plan: RecoveryPlan, settings: Settings, resources: ResourceSet | None = None
) -> DAG:
    """``[quiesce -> wait_quiesced] -> restore -> [resume -> wait_ready] -> update_status``,
    run once."""
    rs = resources or ResourceSet()
    doc = docs.recovery_doc(
        plan,
        rs.recoveries.get((plan.namespace, plan.name)),
        rs.repositories.get((plan.repository_namespace, plan.repository_name)),
        rs.deprecation("Recovery", plan.namespace, plan.name),
    )
    with DAG(
        dag_id=plan.dag_id,
        schedule="@once",
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=[t[:100] for t in plan.tags],
        doc_md=doc,
        description=plan.description[:200],
        is_paused_upon_creation=False,
        auto_register=False,  # as in backup_dag
        # A Recovery of "latest" made before the first backup finds no snapshot yet:
        # retrying gives the first scheduled backup time to land.
        default_args={**default_args(settings), "retry_delay": timedelta(seconds=60)},
    ) as dag:
        restore = StashRestoreOperator(plan=plan, **limits(settings, "restore", step=plan.restore))
        status = StashRecoveryStatusOperator(plan=plan, **limits(settings, "status"))
        if plan.offline is None:
            restore >> status
        else:
            _, ready = around(restore, plan.offline, settings)
            ready >> status
            restore >> status
    return dag


def maintenance_dag(
    plan: MaintenancePlan, settings: Settings, resources: ResourceSet | None = None
) -> DAG:
    """``check.<repoDir>`` for each restic repository of the Repository, then
    ``update_status`` (whatever the checks did)."""
    repository = (resources or ResourceSet()).repositories.get((plan.namespace, plan.name))
    plan = dataclasses.replace(plan, schedule=spread(plan.schedule, plan.dag_id, settings))
    with DAG(
        dag_id=plan.dag_id,
        schedule=airflow_schedule(plan.schedule, False),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=[t[:100] for t in plan.tags],
        doc_md=docs.maintenance_doc(plan, repository),
        description=plan.description[:200],
        is_paused_upon_creation=False,
        auto_register=False,  # as in backup_dag
        default_args=default_args(settings),
    ) as dag:
        status = StashMaintenanceStatusOperator(plan=plan, **limits(settings, "status"))
        for check in plan.checks:
            check_task = StashStepOperator(
                step=check.step, **limits(settings, "check", step=check.step)
            )
            check_task >> status
    return dag


def maintenance_options(settings: Settings) -> MaintenanceOptions:
    try:
        schedule = parse_schedule(settings.maintenance_schedule)
    except ValueError as exc:
        raise ValueError(f"[stash] maintenance_schedule: {exc}") from None
    return MaintenanceOptions(schedule, settings.check_read_data_subset)


def load_resources_and_plans(
    settings: Settings, only_dag_id: str | None = None
) -> tuple[ResourceSet, PlanSet]:
    """The resources of the source and every plan made from them."""
    resources = load_directory(settings.manifests_dir)
    plans = make_plans(
        resources,
        settings.runtime,
        only_dag_id=only_dag_id,
        maintenance=maintenance_options(settings),
    )
    return resources, plans


def load_plans(settings: Settings, only_dag_id: str | None = None) -> PlanSet:
    return load_resources_and_plans(settings, only_dag_id)[1]


def _guarded(
    dags: dict[str, DAG],
    plans: PlanSet,
    dag_id: str,
    kind: str,
    namespace: str,
    name: str,
    build: Any,
) -> None:
    """Build one DAG and run the checks DagBag runs on it after import (about 10 us a
    DAG); if Airflow refuses it, name the resource and keep the others."""
    try:
        dag = build()
        dag.validate()
        dag.check_cycle()
    except Exception as exc:  # one bad DAG must never hide the rest
        plans.errors.append(
            ResourceError(kind, namespace, name, None, f"Airflow refused DAG {dag_id}: {exc}")
        )
    else:
        dags[dag_id] = dag


def _build(
    plans: PlanSet,
    settings: Settings,
    wanted: str | None,
    resources: ResourceSet | None = None,
) -> dict[str, DAG]:
    """The DAGs of ``plans`` (only ``wanted`` if set); refusals go to ``plans.errors``."""
    # Each plan with the object that owns its DAG (named when Airflow refuses it).
    owned: list[tuple[str, Any, str, str, str, Any]] = [
        *(
            (i, p, *(p.owner or ("Restic", t.restic_namespace, t.restic_name)), backup_dag)
            for i, p in plans.backups.items()
            for t in (p.target,)
        ),
        *(
            (i, p, *(p.owner or ("Recovery", p.namespace, p.name)), recovery_dag)
            for i, p in plans.recoveries.items()
        ),
        *(
            (i, p, "Repository", p.namespace, p.name, maintenance_dag)
            for i, p in plans.maintenance.items()
        ),
    ]
    dags: dict[str, DAG] = {}
    for dag_id, plan, kind, namespace, name, make in owned:
        if not wanted or dag_id == wanted:
            _guarded(
                dags,
                plans,
                dag_id,
                kind,
                namespace,
                name,
                lambda p=plan, m=make: m(p, settings, resources),
            )  # type: ignore[misc]
    return dags


REFUSALS_FILE = "dag-refusals.json"


def _refusals_key(settings: Settings, plans: PlanSet) -> str:
    """Everything a DAG build depends on: plans, settings, Airflow and Stash versions
    (about 30 ms for 1,000 targets)."""
    digest = hashlib.blake2b(repr((_versions(), settings)).encode(), digest_size=20)
    for table in (plans.backups, plans.recoveries, plans.maintenance):
        for item in table.items():  # one at a time: a single repr is megabytes
            digest.update(repr(item).encode())
    return digest.hexdigest()


@functools.cache
def _versions() -> tuple[str, str]:
    try:
        stash = importlib.metadata.version("stash-airflow")
    except importlib.metadata.PackageNotFoundError:
        stash = "unknown"
    return airflow_version, stash


def _read_refusals(settings: Settings, key: str) -> list[ResourceError] | None:
    """The refusals recorded by the last build of exactly these plans, if any."""
    try:
        record = json.loads((settings.state_dir / REFUSALS_FILE).read_text())
        if record["key"] != key:
            return None
        return [ResourceError(**e) for e in record["errors"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_refusals(settings: Settings, key: str, errors: list[ResourceError]) -> None:
    """Best effort: without the record, stash_errors.py builds the DAGs itself."""
    path = settings.state_dir / REFUSALS_FILE
    text = json.dumps({"key": key, "errors": [dataclasses.asdict(e) for e in errors]})
    try:
        if path.exists() and path.read_text() == text:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("Stash: cannot record DAG refusals in %s: %s", path, exc)


def build_dags(settings: Settings | None = None) -> tuple[dict[str, DAG], list[ResourceError]]:
    """Every DAG the resources describe, plus the errors of the resources that made none."""
    settings = settings or load_settings()
    wanted = get_parsing_context().dag_id
    # Thousands of DAGs are millions of long-lived objects and almost no garbage: the
    # cyclic GC's full passes over them were a fifth of the time for 5,000 targets.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        resources, plans = load_resources_and_plans(settings, only_dag_id=wanted)
        planned = len(plans.errors)
        dags = _build(plans, settings, wanted, resources)
    finally:
        if gc_was_enabled:
            gc.enable()
    if not wanted:
        _write_refusals(settings, _refusals_key(settings, plans), plans.errors[planned:])
    for error in plans.errors:
        log.warning("Stash: %s", error)
    for warning in plans.warnings:
        log.warning("Stash: deprecated: %s", warning)
    return dags, plans.errors


class StashResourceErrors(Exception):
    """Raised by ``dags/stash_errors.py`` so invalid resources show as import errors."""

    def __init__(self, errors: list[ResourceError]) -> None:
        lines = "\n".join(f"- {e}" for e in errors)
        super().__init__(f"{len(errors)} Stash resource(s) made no DAG:\n{lines}")
        self.errors = errors


def raise_resource_errors(settings: Settings | None = None) -> None:
    """Surface every resource error in the Airflow UI (the DAG import errors list)
    without touching the good DAGs, which another file builds.

    That includes the DAGs Airflow refuses, which only building them shows. The DAG
    processor parses each file in its own process: ``stash_dags.py`` records what it
    refused (in ``state_dir``, keyed by everything the build depends on) and this file
    reuses that record; without a matching one it builds the DAGs itself and drops
    them (about 0.6 s more per 1,000 targets), so a refusal is never unreported.
    """
    if get_parsing_context().dag_id:
        return
    settings = settings or load_settings()
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as in build_dags: many long-lived objects, almost no garbage
    try:
        resources, plans = load_resources_and_plans(settings)
        key = _refusals_key(settings, plans)
        refused = _read_refusals(settings, key)
        if refused is None:
            planned = len(plans.errors)
            _build(plans, settings, None, resources)
            _write_refusals(settings, key, plans.errors[planned:])
        else:
            plans.errors.extend(refused)
    finally:
        if gc_was_enabled:
            gc.enable()
    if plans.errors:
        raise StashResourceErrors(plans.errors)
