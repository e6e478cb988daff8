"""The backup DAG, unchanged, under Airflow's CeleryExecutor: a real scheduler queues
each task into Redis and a real ``airflow celery worker`` runs it.

The worker shares nothing with the parsing process but what a deployment shares
(docs/scale.md): the DAG files, ``[stash] manifests_dir`` and, for the local runtime,
``[stash] state_dir`` and the paths the manifests name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflowservers import Airflow, start_airflow
from dbservers import start_postgres, start_redis
from stashtest import (
    PASSWORD,
    deployment_doc,
    make_tree,
    repository_doc,
    restic_doc,
    restic_snapshots,
    secret_doc,
    write_manifests,
)

pytestmark = pytest.mark.slow

NS = "demo"
BACKUP_DAG = "stash-backup.demo.app-backup.deployment.app"
REPO_DIR = "volumes/deployment/app"


@pytest.fixture
def celery_airflow(tmp_path: Path) -> Iterator[tuple[Airflow, dict[str, Path]]]:
    source = make_tree(tmp_path / "source", seed=5, small_files=200)
    backend = tmp_path / "backend"
    backend.mkdir()
    manifests = write_manifests(
        tmp_path / "manifests",
        [
            secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
            deployment_doc("app", NS, source),
            repository_doc(
                "repo", NS, {"local": {"mountPath": "/repo", "hostPath": {"path": str(backend)}}}
            ),
            restic_doc("app-backup", NS, "repo", "app"),
        ],
    )
    state = tmp_path / "state"
    db, broker = start_postgres(), start_redis()
    stash = {
        "AIRFLOW__STASH__RUNTIME": "local",
        "AIRFLOW__STASH__MANIFESTS_DIR": str(manifests),
        "AIRFLOW__STASH__STATE_DIR": str(state),
    }
    db_url = f"postgresql+psycopg2://{db.user}:{db.password}@127.0.0.1:{db.port}/airflow"
    celery = {
        "AIRFLOW__CELERY__BROKER_URL": f"redis://:{broker.password}@127.0.0.1:{broker.port}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{db_url}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
    }
    try:
        airflow = start_airflow(
            tmp_path / "airflow",
            db,
            "CeleryExecutor",
            stash,
            celery,
            worker=("celery", "worker"),
        )
        try:
            yield airflow, {"backend": backend, "state": state}
        finally:
            airflow.stop()
    finally:
        broker.stop()
        db.stop()


def test_the_backup_dag_runs_on_a_celery_worker(
    celery_airflow: tuple[Airflow, dict[str, Path]],
) -> None:
    airflow, paths = celery_airflow
    airflow.wait(
        f"SELECT count(*) FROM dag WHERE dag_id = '{BACKUP_DAG}'",
        "1",
        180,
        "the dag-processor to parse the backup DAG",
    )
    airflow.cli("dags", "trigger", BACKUP_DAG, "--run-id", "celery-1")
    try:
        airflow.wait(
            "SELECT state FROM dag_run WHERE run_id = 'celery-1'",
            "success",
            300,
            "the backup run to succeed",
        )
    except TimeoutError as exc:
        states = airflow.sql(
            f"SELECT task_id, state FROM task_instance WHERE run_id = 'celery-1'"
            f" AND dag_id = '{BACKUP_DAG}'"
        )
        raise AssertionError(f"{exc}; tasks {states}\n{airflow.log('worker')[-4000:]}") from None

    tasks = airflow.sql(
        "SELECT task_id, state, coalesce(external_executor_id, '') FROM task_instance"
        f" WHERE run_id = 'celery-1' AND dag_id = '{BACKUP_DAG}'"
    )
    assert {t[0] for t in tasks} >= {"backup", "update_status"}
    worker_log = airflow.log("worker")
    for task_id, state, celery_id in tasks:
        assert state in ("success", "skipped"), (task_id, state)
        if state == "success":
            # The CeleryExecutor's task id, and the worker ran that Celery task.
            assert celery_id, f"{task_id} was not sent through Celery"
            assert celery_id in worker_log, f"{task_id} ({celery_id}) not run by the worker"

    # The unpaused DAG's own schedule may have started a run too: every run, one snapshot.
    airflow.wait(
        f"SELECT count(*) FROM dag_run WHERE dag_id = '{BACKUP_DAG}'"
        " AND state NOT IN ('success', 'failed')",
        "0",
        300,
        "every run of the backup DAG to end",
    )
    runs = airflow.sql(f"SELECT state FROM dag_run WHERE dag_id = '{BACKUP_DAG}'")
    assert {r[0] for r in runs} == {"success"}
    snapshots = restic_snapshots(paths["backend"] / REPO_DIR)
    assert len(snapshots) == len(runs)
    status = json.loads((paths["state"] / "repositories" / NS / "repo.json").read_text())
    assert status["status"]["backupRepos"][0]["backupCount"] == len(runs)
    assert PASSWORD not in worker_log
