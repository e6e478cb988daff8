"""Plans -> Airflow DAGs. The only module that knows both Stash plans and DAGs.

Parsing makes no network call: it reads the manifest folder (or the cluster source's
snapshot file), plans, and builds DAGs whose tasks hold their steps as data. A worker
that parses for one task (``get_parsing_context().dag_id``) builds only that DAG, from
the index when it is fresh: then the planner, the docs and the resource models are
never imported (they are imported where a plan or a doc is made, below).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import pickle
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow import __version__ as airflow_version
from airflow.sdk import DAG, DeltaTriggerTimetable, Param, get_parsing_context

from stash_plugin import dagindex
from stash_plugin.api.errors import ResourceError
from stash_plugin.dagindex import Entry, Index, shard_of
from stash_plugin.operators.step import (
    StashBackupOperator,
    StashCheckOperator,
    StashRestoreOperator,
    StashRetentionOperator,
)
from stash_plugin.operators.update_status import (
    StashBackupStatusOperator,
    StashMaintenanceStatusOperator,
    StashRecoveryStatusOperator,
)
from stash_plugin.operators.workload import StashQuiesceOperator, StashResumeOperator
from stash_plugin.plan import naming
from stash_plugin.plan.maintenance import CHECK_TASK_ID, MaintenanceOptions, MaintenancePlan
from stash_plugin.plan.model import (
    BackupPlan,
    PlanSet,
    QuiescedWorkload,
    RecoveryPlan,
    Schedule,
    Step,
)
from stash_plugin.plan.schedules import parse_schedule, spread_schedule
from stash_plugin.sensors.snapshot import SnapshotSensor
from stash_plugin.sensors.workload import WorkloadReadySensor, WorkloadStoppedSensor
from stash_plugin.settings import Settings, load_settings
from stash_plugin.source import SourceStamp, load_stamped, settled

if TYPE_CHECKING:
    from stash_plugin.api.resourceset import ResourceSet

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


def _spread(plan: Any, settings: Settings) -> Any:
    """The plan with the schedule its DAG runs on (what its doc describes too)."""
    return dataclasses.replace(plan, schedule=spread(plan.schedule, plan.dag_id, settings))


def backup_doc(plan: BackupPlan, resources: ResourceSet | None) -> str:
    from stash_plugin.api.resourceset import ResourceSet
    from stash_plugin.plan import docs

    t = plan.target
    rs = resources or ResourceSet()
    return docs.backup_doc(
        plan,
        rs.restics.get((t.restic_namespace, t.restic_name)),
        rs.repositories.get((t.repository_namespace, t.repository_name)),
        rs.deprecation("Restic", t.restic_namespace, t.restic_name),
    )


def recovery_doc(plan: RecoveryPlan, resources: ResourceSet | None) -> str:
    from stash_plugin.api.resourceset import ResourceSet
    from stash_plugin.plan import docs

    rs = resources or ResourceSet()
    return docs.recovery_doc(
        plan,
        rs.recoveries.get((plan.namespace, plan.name)),
        rs.repositories.get((plan.repository_namespace, plan.repository_name)),
        rs.deprecation("Recovery", plan.namespace, plan.name),
    )


def maintenance_doc(plan: MaintenancePlan, resources: ResourceSet | None) -> str:
    from stash_plugin.api.resourceset import ResourceSet
    from stash_plugin.plan import docs

    repository = (resources or ResourceSet()).repositories.get((plan.namespace, plan.name))
    return docs.maintenance_doc(plan, repository)


def backup_params(plan: BackupPlan) -> dict[str, Param]:
    """What a manual run of a backup DAG can change."""
    return {
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
    }


def backup_dag(
    plan: BackupPlan,
    settings: Settings,
    resources: ResourceSet | None = None,
    doc: str | None = None,
) -> DAG:
    """``[quiesce -> wait_quiesced] -> backup -> [resume -> wait_ready] -> retention ->
    verify -> update_status``; resume runs whatever happened to the backup."""
    plan = _spread(plan, settings)
    doc = backup_doc(plan, resources) if doc is None else doc
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
        # Exported by a shard file's globals only (dags/stash_dags_NN.py): a DAG that
        # Airflow refuses half-built, or one built by stash_errors.py to find refusals,
        # must not reach the DagBag through the DAG context's auto-registration.
        auto_register=False,
        default_args=default_args(settings),
    ) as dag:
        # Added after DAG(): DAG(params=...) checks each default against its JSON schema,
        # and jsonschema checks the schema itself first, a fifth of the cost of building a
        # backup DAG. These defaults are booleans of type boolean (a test validates them);
        # the tasks below still copy them from the DAG as before.
        dag.params.update(backup_params(plan))
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
    plan: RecoveryPlan,
    settings: Settings,
    resources: ResourceSet | None = None,
    doc: str | None = None,
) -> DAG:
    """``[quiesce -> wait_quiesced] -> restore -> [resume -> wait_ready] -> update_status``,
    run once."""
    doc = recovery_doc(plan, resources) if doc is None else doc
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
    plan: MaintenancePlan,
    settings: Settings,
    resources: ResourceSet | None = None,
    doc: str | None = None,
) -> DAG:
    """``check`` mapped over the Repository's restic repositories (one task at parse
    time, one instance per repoDir at run time, labelled with it), then
    ``update_status`` (whatever the checks did)."""
    plan = _spread(plan, settings)
    with DAG(
        dag_id=plan.dag_id,
        schedule=airflow_schedule(plan.schedule, False),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=[t[:100] for t in plan.tags],
        doc_md=maintenance_doc(plan, resources) if doc is None else doc,
        description=plan.description[:200],
        is_paused_upon_creation=False,
        auto_register=False,  # as in backup_dag
        default_args=default_args(settings),
    ) as dag:
        status = StashMaintenanceStatusOperator(plan=plan, **limits(settings, "status"))
        checks = StashCheckOperator.partial(
            task_id=CHECK_TASK_ID,
            plan=plan,
            map_index_template="{{ task.repo_dir }}",
            **limits(settings, "check", step=plan.checks[0].step),
        ).expand(repo_dir=[c.repo_dir for c in plan.checks])
        checks >> status
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
    resources, _ = _load(settings)
    return resources, _plan(resources, settings, only_dag_id)


def _load(settings: Settings) -> tuple[ResourceSet, SourceStamp]:
    """The source, reading again only the files that changed since the last load."""
    cache = settings.state_dir / dagindex.SOURCE_CACHE_FILE
    return load_stamped(settings.manifests_dir, cache)


def _plan(resources: ResourceSet, settings: Settings, only_dag_id: str | None) -> PlanSet:
    from stash_plugin.plan import make_plans

    return make_plans(
        resources,
        settings.runtime,
        only_dag_id=only_dag_id,
        maintenance=maintenance_options(settings),
    )


def load_plans(settings: Settings, only_dag_id: str | None = None) -> PlanSet:
    return load_resources_and_plans(settings, only_dag_id)[1]


# Each kind of DAG: its builder and its doc.
_BUILDERS: dict[str, tuple[Any, Any]] = {
    "backup": (backup_dag, backup_doc),
    "recovery": (recovery_dag, recovery_doc),
    "maintenance": (maintenance_dag, maintenance_doc),
}


def _owned(plans: PlanSet) -> Iterator[tuple[str, str, str, str, str, Any]]:
    """(dag_id, DAG kind, owner kind, namespace, name, plan) of every planned DAG; the
    owner is the object named when Airflow refuses the DAG."""
    for i, p in plans.backups.items():
        t = p.target
        yield i, "backup", *(p.owner or ("Restic", t.restic_namespace, t.restic_name)), p
    for i, r in plans.recoveries.items():
        yield i, "recovery", *(r.owner or ("Recovery", r.namespace, r.name)), r
    for i, m in plans.maintenance.items():
        yield i, "maintenance", "Repository", m.namespace, m.name, m


def _guarded(
    dags: dict[str, DAG],
    refused: list[ResourceError],
    dag_id: str,
    entry: Entry,
    settings: Settings,
    resources: ResourceSet | None = None,
) -> None:
    """Build one DAG and run the checks DagBag runs on it after import (about 10 us a
    DAG); if Airflow refuses it, name the resource and keep the others."""
    make = _BUILDERS[entry.dag][0]
    try:
        dag = make(entry.plan, settings, resources, entry.doc or None)
        dag.validate()
        dag.check_cycle()
    except Exception as exc:  # one bad DAG must never hide the rest
        refused.append(
            ResourceError(
                entry.kind,
                entry.namespace,
                entry.name,
                None,
                f"Airflow refused DAG {dag_id}: {exc}",
            )
        )
    else:
        dags[dag_id] = dag


def _build(
    plans: PlanSet,
    settings: Settings,
    wanted: Callable[[str], bool],
    resources: ResourceSet | None = None,
) -> dict[str, DAG]:
    """The DAGs of ``plans`` whose id is ``wanted``; refusals go to ``plans.errors``."""
    dags: dict[str, DAG] = {}
    for dag_id, dag, kind, namespace, name, plan in _owned(plans):
        if wanted(dag_id):
            entry = Entry(dag, kind, namespace, name, plan, "")
            _guarded(dags, plans.errors, dag_id, entry, settings, resources)
    return dags


def _build_entries(
    index: Index, dag_ids: list[str], settings: Settings
) -> tuple[dict[str, DAG], list[ResourceError]]:
    dags: dict[str, DAG] = {}
    refused: list[ResourceError] = []
    for dag_id, entry in index.entries(dag_ids):
        _guarded(dags, refused, dag_id, entry, settings)
    return dags, refused


# --------------------------------------------------------------------------- the index


def _index_key(settings: Settings) -> str:
    """Everything but the source that a plan depends on: settings (but ``index_wait``,
    which changes no plan), Airflow and Stash versions, Stash's code."""
    planning = dataclasses.replace(settings, index_wait=0.0)
    data = repr((_versions(), dagindex.code_stamp(), planning)).encode()
    return hashlib.blake2b(data, digest_size=20).hexdigest()


@functools.cache
def _versions() -> tuple[str, str]:
    try:
        stash = importlib.metadata.version("stash-airflow")
    except importlib.metadata.PackageNotFoundError:
        stash = "unknown"
    return airflow_version, stash


def fresh_index(settings: Settings) -> Index | None:
    """The index of the source as it is now, or None (never a stale one)."""
    return dagindex.fresh(settings.state_dir, _index_key(settings), settings.manifests_dir)


def current_index(settings: Settings) -> Index:
    """The index of the source as it is now, planned from the source if there is none
    (one process at a time: the others wait, then read it)."""
    return refresh_index(settings)[0]


def refresh_index(settings: Settings, lock_held: bool = False) -> tuple[Index, bool]:
    """The index of the source as it is now, built here if it is missing or stale
    (``stash index``, ``stash sync``: before the DAG processor needs it); True when
    this call built it. ``lock_held``: the caller holds the build lock already (the
    background build a DAG file started, see ``parse_index``)."""
    key = _index_key(settings)
    index = dagindex.fresh(settings.state_dir, key, settings.manifests_dir)
    if index is not None:
        return index, False
    lock = contextlib.nullcontext() if lock_held else dagindex.building(settings.state_dir)
    with lock:
        index = dagindex.fresh(settings.state_dir, key, settings.manifests_dir)
        if index is not None:
            return index, False
        return _make_index(settings, key), True


def _make_index(settings: Settings, key: str) -> Index:
    start = time.monotonic()
    with _no_gc():  # as in build_dags: `stash index` spent a third of its time in the GC
        resources, stamp = _load(settings)
        plans = _plan(resources, settings, None)
        entries = {
            dag_id: Entry(dag, kind, ns, name, plan, _doc(dag, plan, resources, settings))
            for dag_id, dag, kind, ns, name, plan in _owned(plans)
        }
    took = time.monotonic() - start
    # A big build outlasts the racy window of a file written just before it (the
    # snapshot `stash sync` writes): then task starts need not read that file again.
    stamp = settled(settings.manifests_dir, stamp)
    return dagindex.write(
        settings.state_dir, key, stamp, plans.errors, entries, plans.warnings, took
    )


# A DAG file builds the index itself when the last build took under this share of
# ``[stash] index_wait`` (or, with no build on record, when the source is small):
# tests and small folders need no second process.
INLINE_SHARE = 0.25
INLINE_SOURCE_BYTES = 256 * 1024
BUILD_LOG = "dag-index-build.log"
BUILD_SETTINGS = "dag-index-build-settings.pickle"
_BUILD_LOG_MAX = 1 << 20


def parse_index(settings: Settings) -> Index | None:
    """The index a DAG file builds its DAGs from, waiting at most
    ``settings.index_wait`` seconds for a build however big the source is.

    A fresh index is used as is. A stale or missing one is rebuilt: here when that is
    quick, else by ``stash index`` in a background process of its own session (the DAG
    processor's kill of a file that ran out of time does not stop it), one at a time
    (the lock in ``state_dir``); this file waits for it up to ``index_wait``. When it is
    not done by then (or when the last build took longer than that, so waiting is
    pointless), the previous index made with the same key is returned (its DAGs
    are as of that index; a task start checks freshness itself and plans from the
    source, so no task runs a stale plan). None: no usable index at all (first start,
    or Stash's code or settings changed); the caller plans this file's DAGs from the
    source.
    """
    key = _index_key(settings)
    state = settings.state_dir
    index = dagindex.fresh(state, key, settings.manifests_dir)
    if index is not None:
        return index
    took = dagindex.build_seconds(state)
    if _build_inline(settings, took):
        return current_index(settings)
    _start_build(settings)
    previous = dagindex.read(state, key)
    # Waiting helps only when the build may be done in time; with nothing to fall back
    # on it would only add to the planning below.
    hopeless = took is not None and took > settings.index_wait
    wait = 0.0 if previous is None or hopeless else settings.index_wait
    if dagindex.wait_built(state, wait):
        index = dagindex.fresh(state, key, settings.manifests_dir)
        if index is not None:
            return index
    log_file = state / BUILD_LOG
    if previous is not None:
        log.warning(
            "Stash: the DAG index is being rebuilt in the background (log: %s); until it "
            "is done, these DAGs are as of the previous index (a task start still plans "
            "from the manifests as they are now)",
            log_file,
        )
        return previous
    log.warning(
        "Stash: no DAG index for these settings and this code yet (it is being built in "
        "the background, log: %s): this file plans its DAGs from the manifests itself",
        log_file,
    )
    return None


def _build_inline(settings: Settings, took: float | None) -> bool:
    """Whether this DAG file builds the index itself; ``took``: the last build's seconds."""
    if math.isinf(settings.index_wait):
        return True
    if took is not None:
        return took < settings.index_wait * INLINE_SHARE
    return dagindex.source_smaller_than(settings.manifests_dir, INLINE_SOURCE_BYTES)


def _start_build(settings: Settings) -> bool:
    """Start ``stash index`` in the background unless a build is running; the child
    inherits the build lock, so exactly one build runs. True if this call started it."""
    state = settings.state_dir
    try:
        fd = dagindex.claim(state)
    except OSError as exc:
        log.warning("Stash: cannot lock %s to build the DAG index: %s", state, exc)
        return False
    if fd is None:
        return False  # a build is running
    try:
        settings_file = state / BUILD_SETTINGS
        tmp = settings_file.with_name(f".{settings_file.name}.{os.getpid()}")
        tmp.write_bytes(pickle.dumps(settings, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(tmp, settings_file)
        log_file = state / BUILD_LOG
        with contextlib.suppress(OSError):
            if log_file.stat().st_size > _BUILD_LOG_MAX:
                log_file.unlink()
        with log_file.open("ab") as out:
            out.write(f"{datetime.now(UTC).isoformat()} pid {os.getpid()}: building\n".encode())
            out.flush()
            argv = [sys.executable, "-m", "stash_plugin.cli", "index"]
            argv += ["--held-lock", str(fd), "--settings-file", str(settings_file)]
            subprocess.Popen(  # noqa: S603 - our own command, no tenant value in argv
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=(fd,),
                start_new_session=True,
            )
    except OSError as exc:
        log.warning("Stash: cannot start the DAG index build: %s", exc)
        return False
    finally:
        os.close(fd)  # the child's copy keeps the lock until it exits
    return True


def build_index_in_background(settings_file: Path) -> tuple[Index, bool]:
    """The child ``_start_build`` runs (``stash index --held-lock``): the DAG file's
    settings, the lock already held."""
    settings = pickle.loads(settings_file.read_bytes())  # noqa: S301 - written by us in state_dir
    return refresh_index(settings, lock_held=True)


def _doc(dag: str, plan: Any, resources: ResourceSet, settings: Settings) -> str:
    """The doc the DAG's builder would write (of the plan as it runs: spread)."""
    if dag != "recovery":
        plan = _spread(plan, settings)
    return str(_BUILDERS[dag][1](plan, resources))


# --------------------------------------------------------------------------- refusals

REFUSALS_FILE = "dag-refusals-{shard}-of-{shards}.json"


def _refusals_path(settings: Settings, shard: int, shards: int) -> Path:
    return settings.state_dir / REFUSALS_FILE.format(shard=shard, shards=shards)


def _read_refusals(
    settings: Settings, index: Index, shard: int, shards: int
) -> list[ResourceError] | None:
    """What Airflow refused when the shard's DAGs were last built from this index."""
    try:
        record = json.loads(_refusals_path(settings, shard, shards).read_text())
        if record["index"] != index.version:
            return None
        return [ResourceError(**e) for e in record["errors"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_refusals(
    settings: Settings, index: Index, shard: int, shards: int, errors: list[ResourceError]
) -> None:
    """Best effort: without the record, stash_errors.py builds the shard's DAGs itself."""
    path = _refusals_path(settings, shard, shards)
    text = json.dumps({"index": index.version, "errors": [dataclasses.asdict(e) for e in errors]})
    try:
        if path.exists() and path.read_text() == text:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("Stash: cannot record DAG refusals in %s: %s", path, exc)


# --------------------------------------------------------------------------- DAG files

SHARD_FILE = re.compile(r"stash_dags_(\d+)\.py$")


def shard_file_name(shard: int) -> str:
    return f"stash_dags_{shard:02d}.py"


def build_shard(dag_file: str) -> dict[str, DAG]:
    """The DAGs of the shard that ``dags/stash_dags_NN.py`` stands for."""
    match = SHARD_FILE.search(dag_file)
    if match is None:
        raise ValueError(f"{dag_file}: a Stash shard file is named stash_dags_NN.py")
    return build_dags(shard=int(match.group(1)))[0]


def _no_gc() -> contextlib.AbstractContextManager[None]:
    """Thousands of DAGs are millions of long-lived objects and almost no garbage: the
    cyclic GC's full passes over them were a fifth of the time for 5,000 targets."""

    @contextlib.contextmanager
    def paused() -> Iterator[None]:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            yield
        finally:
            if was_enabled:
                gc.enable()

    return paused()


def build_dags(
    settings: Settings | None = None, shard: int | None = None
) -> tuple[dict[str, DAG], list[ResourceError]]:
    """Every DAG of ``shard`` (all of them if None), plus the errors of the resources
    that made none.

    A worker that parses for one task builds that DAG only, from the index when the
    index is fresh (no manifest read), else from the source.
    """
    settings = settings or load_settings()
    shards = settings.dag_shards if shard is not None else 1
    wanted = get_parsing_context().dag_id
    if shard is not None and (shard >= shards or (wanted and shard_of(wanted, shards) != shard)):
        return {}, []
    with _no_gc():
        if wanted:
            dags, errors, warnings = _build_one(settings, wanted)
        else:
            dags, errors, warnings = _build_shard(settings, shard or 0, shards)
    for error in errors:
        log.warning("Stash: %s", error)
    for warning in warnings:
        log.warning("Stash: deprecated: %s", warning)
    return dags, errors


def _build_shard(
    settings: Settings, shard: int, shards: int
) -> tuple[dict[str, DAG], list[ResourceError], list[ResourceError]]:
    """The DAGs of one shard file, from the index ``parse_index`` finds, else planned
    from the source (every object is planned, only this shard's DAGs are built)."""
    index = parse_index(settings)
    if index is None:
        resources, plans = load_resources_and_plans(settings)
        mine = _build(plans, settings, lambda i: shard_of(i, shards) == shard, resources)
        return mine, plans.errors, plans.warnings
    ids = [i for i in index.dag_ids if shard_of(i, shards) == shard]
    dags, refused = _build_entries(index, ids, settings)
    _write_refusals(settings, index, shard, shards, refused)
    return dags, [*index.errors, *refused], index.warnings


def _build_one(
    settings: Settings, wanted: str
) -> tuple[dict[str, DAG], list[ResourceError], list[ResourceError]]:
    index = fresh_index(settings)
    if index is None:
        resources, plans = load_resources_and_plans(settings, only_dag_id=wanted)
        dags = _build(plans, settings, lambda i: i == wanted, resources)
        return dags, plans.errors, plans.warnings
    dags, refused = _build_entries(index, [wanted], settings)
    return dags, [*index.errors, *refused], index.warnings


class StashResourceErrors(Exception):
    """Raised by ``dags/stash_errors.py`` so invalid resources show as import errors."""

    def __init__(self, errors: list[ResourceError]) -> None:
        lines = "\n".join(f"- {e}" for e in errors)
        super().__init__(f"{len(errors)} Stash resource(s) made no DAG:\n{lines}")
        self.errors = errors


def raise_resource_errors(settings: Settings | None = None, dags_folder: str | None = None) -> None:
    """Surface every resource error in the Airflow UI (the DAG import errors list)
    without touching the good DAGs, which the shard files build.

    That includes the DAGs Airflow refuses, which only building them shows. The DAG
    processor parses each file in its own process: each shard records what it refused
    (in ``state_dir``, keyed by the index it built from) and this file reuses those
    records; for a shard without a matching one it builds that shard's DAGs itself and
    drops them, while within ``[stash] index_wait`` (the rest are reported once their
    files have recorded them), so a refusal is never left unreported. ``dags_folder``
    (this file's folder) is checked for a missing shard file, whose DAGs would silently
    be missing.
    """
    if get_parsing_context().dag_id:
        return
    settings = settings or load_settings()
    shards = settings.dag_shards
    with _no_gc():
        index = parse_index(settings)
        if index is None:
            # Planned here: the resources' errors. What Airflow refuses shows once the
            # index is built (the next parse of this file).
            errors = list(load_plans(settings).errors)
        else:
            errors = _index_errors(settings, index)
    if dags_folder is not None:
        errors += _missing_shard_files(Path(dags_folder), shards)
    if errors:
        raise StashResourceErrors(errors)


def _index_errors(settings: Settings, index: Index) -> list[ResourceError]:
    """The index's errors and what Airflow refuses of its DAGs, shard by shard."""
    shards = settings.dag_shards
    errors = list(index.errors)
    by_shard: dict[int, list[str]] = {}
    for dag_id in index.dag_ids:
        by_shard.setdefault(shard_of(dag_id, shards), []).append(dag_id)
    # Building a shard's DAGs costs what parsing its file does (all of them: about 25 s
    # at 10,000 targets): only while this file is within ``index_wait``; the others'
    # refusals show once their own files have recorded them (the next parse of this one).
    deadline = time.monotonic() + settings.index_wait
    later = []
    for shard in range(shards):
        refused = _read_refusals(settings, index, shard, shards)
        if refused is None:
            if time.monotonic() > deadline:
                later.append(shard_file_name(shard))
                continue
            _, refused = _build_entries(index, by_shard.get(shard, []), settings)
            _write_refusals(settings, index, shard, shards, refused)
        errors += refused
    if later:
        log.warning(
            "Stash: what Airflow refuses of the DAGs of %s is reported once those files "
            "have been parsed (at the next parse of this file)",
            ", ".join(later),
        )
    return errors


def _missing_shard_files(folder: Path, shards: int) -> list[ResourceError]:
    missing = [n for n in map(shard_file_name, range(shards)) if not (folder / n).exists()]
    if not missing:
        return []
    return [
        ResourceError(
            "setting",
            None,
            "[stash] dag_shards",
            None,
            f"is {shards}, but the DAG folder has no {', '.join(missing)}: the DAGs of "
            f"those shards are missing; copy {shard_file_name(0)} under each missing name "
            f"(or lower dag_shards)",
        )
    ]
