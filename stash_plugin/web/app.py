"""The Stash page's API: a FastAPI app that the plugin mounts on Airflow's API server.

Every API route depends on Airflow's own security dependencies
(``airflow.api_fastapi.core_api.security``): the caller is the Airflow user of the JWT
(the UI's cookie or a bearer token), an anonymous request is refused (401), and each
route asks the auth manager for the DAG-run permission it needs on the DAG it is about
(403 otherwise): reading runs for what the page shows, creating runs for "Back up
now" and "Restore".
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from airflow.api_fastapi.auth.managers.models.resource_details import (
    DagAccessEntity,
    DagDetails,
)
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from stash_plugin.api.resourceset import ResourceSet
from stash_plugin.factory import load_resources_and_plans
from stash_plugin.plan.docs import recovery_manifest
from stash_plugin.plan.model import BackupPlan, PlanSet
from stash_plugin.plan.naming import recovery_dag_id
from stash_plugin.runtime.status import LocalStatusStore
from stash_plugin.settings import Settings, load_settings
from stash_plugin.web.data import SnapshotCache, overview, snapshot_rows

SNAPSHOT_ID = re.compile(r"^[0-9a-f]{8,64}$")
CACHE = SnapshotCache()
RUNS_SHOWN = 20

app = FastAPI(title="Stash", description="The Stash page of the Airflow UI and its API")

ReadRuns = Depends(requires_access_dag("GET", DagAccessEntity.RUN))
CreateRuns = Depends(requires_access_dag("POST", DagAccessEntity.RUN))


def _world() -> tuple[Settings, ResourceSet, PlanSet]:
    settings = load_settings()
    resources, plans = load_resources_and_plans(settings)
    return settings, resources, plans


def _plan(plans: PlanSet, dag_id: str) -> BackupPlan:
    plan = plans.backups.get(dag_id)
    if plan is None:
        raise HTTPException(404, f"no Stash backup DAG {dag_id}")
    return plan


@app.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> str:
    """The page itself holds no data: everything comes from the API below."""
    return (files("stash_plugin.web") / "page.html").read_text(encoding="utf-8")


@app.get("/api/overview", dependencies=[ReadRuns])
def get_overview(user: GetUserDep) -> dict[str, Any]:
    """Repositories, their targets and Recoveries, as far as the user may read their runs."""
    from airflow.api_fastapi.app import get_auth_manager

    settings, resources, plans = _world()
    manager = get_auth_manager()

    def allowed(dag_id: str) -> bool:
        return manager.is_authorized_dag(
            method="GET",
            access_entity=DagAccessEntity.RUN,
            details=DagDetails(id=dag_id),
            user=user,
        )

    store = LocalStatusStore(settings.state_dir) if settings.runtime == "local" else None
    return {"runtime": settings.runtime, **overview(resources, plans, store, allowed)}


def _backup_results(dag_id: str) -> list[tuple[Any, dict[str, Any]]]:
    """(run, backup task result) of the DAG's latest runs, newest first."""
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        runs = list(
            session.scalars(
                select(DagRun)
                .where(DagRun.dag_id == dag_id)
                .order_by(DagRun.run_after.desc())
                .limit(RUNS_SHOWN)
            )
        )
        ids = [r.run_id for r in runs]
        rows = session.execute(
            select(XComModel.run_id, XComModel.value).where(
                XComModel.dag_id == dag_id,
                XComModel.task_id == "backup",
                XComModel.key == "return_value",
                XComModel.run_id.in_(ids),
            )
        ).all()
        for run in runs:
            session.expunge(run)
    results = {run_id: _xcom_value(value) for run_id, value in rows}
    return [(run, results.get(run.run_id) or {}) for run in runs]


def _xcom_value(value: Any) -> dict[str, Any]:
    import json

    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


@app.get("/api/targets/{dag_id}/runs", dependencies=[ReadRuns])
def get_runs(dag_id: str) -> dict[str, Any]:
    _, _, plans = _world()
    _plan(plans, dag_id)
    runs = []
    for run, result in _backup_results(dag_id):
        backups = result.get("backups") or []
        runs.append(
            {
                "runId": run.run_id,
                "state": str(run.state) if run.state else None,
                "runType": str(run.run_type),
                "start": _when(run.start_date),
                "end": _when(run.end_date),
                "conf": run.conf or {},
                "snapshots": [b.get("snapshot_id") for b in backups if b.get("snapshot_id")],
                "bytesAdded": sum(int(b.get("data_added") or 0) for b in backups),
            }
        )
    return {"dagId": dag_id, "runs": runs}


@app.get("/api/targets/{dag_id}/snapshots", dependencies=[ReadRuns])
def get_snapshots(dag_id: str, refresh: bool = False) -> dict[str, Any]:
    """The target's snapshots from the cache (with their age); a listing older than a
    minute is refreshed in the background, never while the request waits."""
    settings, _, plans = _world()
    plan = _plan(plans, dag_id)
    if plan.runtime != "local":
        return {
            "snapshots": [],
            "ageSeconds": None,
            "refreshing": False,
            "error": "listing snapshots from the page needs the local runtime; the counts "
            "come from the status",
        }

    def lister() -> list[dict[str, Any]]:
        from stash_plugin.runtime.local import load_secrets, run_process

        result = run_process(plan.verify, load_secrets(settings.manifests_dir), lambda _: None)
        sizes = {
            b["snapshot_id"]: b
            for _, res in _backup_results(dag_id)
            for b in res.get("backups") or []
            if b.get("snapshot_id")
        }
        return snapshot_rows(result, sizes)

    return {"dagId": dag_id, **CACHE.get(dag_id, lister, refresh)}


class BackupNow(BaseModel):
    retention: bool | None = Field(
        default=None, description="Apply the retention policy after this backup"
    )


@app.post("/api/targets/{dag_id}/backup", dependencies=[CreateRuns])
def post_backup(dag_id: str, body: BackupNow, user: GetUserDep) -> dict[str, Any]:
    """An instant backup: a manual run of the target's DAG with its params."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.exceptions import DagNotFound, DagRunAlreadyExists
    from airflow.utils.types import DagRunTriggeredByType

    _, _, plans = _world()
    plan = _plan(plans, dag_id)
    conf = {"retention": plan.retention is not None if body.retention is None else body.retention}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    try:
        run = trigger_dag(
            dag_id,
            triggered_by=DagRunTriggeredByType.UI,
            run_id=f"manual__stash-page__{stamp}",
            conf=conf,
            triggering_user_name=user.get_name(),
        )
    except DagNotFound:
        raise HTTPException(404, f"Airflow has not parsed DAG {dag_id} yet") from None
    except DagRunAlreadyExists:
        raise HTTPException(409, "a run with this id exists; try again") from None
    if run is None:
        raise HTTPException(409, f"DAG {dag_id} made no run")
    return {"dagId": dag_id, "runId": run.run_id, "conf": conf}


def _recovery(plan: BackupPlan, snapshot: str, settings: Settings, start: bool) -> dict[str, Any]:
    if not SNAPSHOT_ID.match(snapshot):
        raise HTTPException(422, "snapshot: a restic snapshot id (8 to 64 hex digits)")
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    name = f"restore-{snapshot[:8]}-{stamp}"
    t = plan.target
    destination = None
    if start:
        destination = str(settings.state_dir / "restores" / t.restic_namespace / name)
    doc = recovery_manifest(
        t, plan.snapshot_paths, snapshot, destination or "/path/to/an/empty/folder", name
    )
    return {
        "manifest": yaml.safe_dump(doc, sort_keys=False),
        "document": doc,
        "canStart": settings.runtime == "local",
        "recoveryDagId": recovery_dag_id(t.restic_namespace, name),
        "destination": destination,
    }


@app.get("/api/targets/{dag_id}/restore", dependencies=[ReadRuns])
def get_restore(dag_id: str, snapshot: str) -> dict[str, Any]:
    """A ready Recovery manifest for one snapshot (set ``recoverTo`` before using it)."""
    settings, _, plans = _world()
    return _recovery(_plan(plans, dag_id), snapshot, settings, start=False)


class StartRestore(BaseModel):
    snapshot: str


@app.post("/api/targets/{dag_id}/restore", dependencies=[CreateRuns])
def post_restore(dag_id: str, body: StartRestore) -> dict[str, Any]:
    """Local runtime: write the Recovery next to the manifests, restoring into a new empty
    folder under ``state_dir/restores``; its DAG runs once Airflow has parsed it."""
    settings, _, plans = _world()
    plan = _plan(plans, dag_id)
    if settings.runtime != "local":
        raise HTTPException(409, "starting a Recovery from the page needs the local runtime")
    made = _recovery(plan, body.snapshot, settings, start=True)
    path = Path(settings.manifests_dir) / f"{made['document']['metadata']['name']}.yaml"
    try:
        path.write_text(made["manifest"])
    except OSError as exc:
        raise HTTPException(
            500, f"cannot write {path.name} into the manifests folder: {exc.strerror}"
        ) from None
    return {**made, "file": path.name}
