"""PostgreSQL backup and recovery, whole DAG runs on the local runtime, real server.

A throwaway PostgreSQL on a loopback port (``dbservers``) holds a seeded database
(300,000 orders, unicode text, binary blobs, a view, a trigger and its function).
One module-wide story: two backups by connection URL, the database dropped and
recovered from the latest snapshot, an older snapshot recovered by id into another
database, a refused recovery into a non-empty database, then every database backed
up through an AppBinding and recovered. Each recovery is compared table by table
(row count and checksum). The password must never show in ``ps`` during a run, in the
task logs or in XCom.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dbservers import PASSWORD as DB_PASSWORD
from dbservers import USER, Server, postgres_state, seed_postgres, start_postgres
from stashtest import (
    PASSWORD,
    appbinding_doc,
    build_dag,
    database_recovery_doc,
    database_restic_doc,
    repository_doc,
    restic_snapshots,
    run_dag,
    secret_doc,
    task_states,
    write_manifests,
    xcom,
)

pytestmark = pytest.mark.slow
NS = "demo"


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    server = start_postgres()
    try:
        seed_postgres(server, "app")
        root = tmp_path_factory.mktemp("pg")
        (root / "backend").mkdir()
        yield {"server": server, "root": root, "backend": root / "backend"}
    finally:
        server.stop()


def base_docs(pg: dict[str, Any], password: str = DB_PASSWORD) -> list[dict[str, Any]]:
    return [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        secret_doc("pg-login", NS, username=USER, password=password),
        repository_doc(
            "repo", NS, {"local": {"mountPath": "/repo", "hostPath": {"path": str(pg["backend"])}}}
        ),
    ]


def url_accessor(server: Server, database: str) -> dict[str, Any]:
    return {
        "url": f"postgres://127.0.0.1:{server.port}",
        "database": database,
        "credentials": {"secretName": "pg-login", "userKey": "username", "passwordKey": "password"},
    }


def xcom_values() -> list[Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return [row.value for row in session.scalars(select(XComModel))]


def repo_status(state: Path) -> list[dict[str, Any]]:
    data = json.loads((state / "repositories" / NS / "repo.json").read_text())
    return data["status"]["backupRepos"]  # type: ignore[no-any-return]


class PsWatch:
    """Samples every process's command line while a run goes on."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
            self.lines += out.splitlines()
            self._stop.wait(0.05)

    def __enter__(self) -> PsWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_postgres_backup_and_recovery_by_url(
    pg: dict[str, Any],
    airflow_db: None,
    stash_env: dict[str, Path],
    capfd: pytest.CaptureFixture[str],
) -> None:
    server: Server = pg["server"]
    manifests, state = stash_env["manifests"], stash_env["state"]
    label = f"127.0.0.1-{server.port}"
    dag_id = f"stash-backup.{NS}.pg-backup.{label}.app"
    restic = database_restic_doc(
        "pg-backup", NS, "repo", {"connectionURL": url_accessor(server, "app")}
    )
    write_manifests(manifests, [*base_docs(pg), restic])

    # 1. First backup, with ps sampled all along: the dump streams into restic.
    state_1 = postgres_state(server, "app")
    with PsWatch() as ps:
        first = run_dag(build_dag(dag_id))
    assert task_states(first) == {
        k: "success" for k in ("backup", "retention", "verify", "update_status")
    }
    assert any("pg_dump" in line for line in ps.lines), "the sampling saw the dump run"
    assert not [line for line in ps.lines if DB_PASSWORD in line]
    made = xcom(first, "backup")["backups"][0]
    assert made["path"] == "/app.sql" and made["total_bytes_processed"] > 10_000_000
    repo = pg["backend"] / "databases" / label / "app"
    snaps = restic_snapshots(repo)
    assert [s["paths"] for s in snaps] == [["/app.sql"]]
    assert snaps[0]["hostname"] == label
    assert {"namespace=demo", "restic=pg-backup", "engine=postgres", "dump=one"} <= set(
        snaps[0]["tags"]
    )
    (entry,) = repo_status(state)
    assert entry["type"] == "Database" and entry["repoDir"] == f"/databases/{label}/app"
    assert entry["backupCount"] == 1 and entry["snapshotCount"] == 1
    assert entry["lastSnapshotId"] == snaps[0]["short_id"]
    # No copy of the dump was left anywhere on disk by the run.
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("stash-credentials-*"))

    # 2. Changed data, second backup.
    server.sql(
        "INSERT INTO orders SELECT g, 1, 2.5, 'zweite Sicherung' "
        "FROM generate_series(400001, 400100) g; UPDATE customers SET email = NULL "
        "WHERE id % 7 = 0; DELETE FROM blobs WHERE id > 1990;",
        "app",
    )
    state_2 = postgres_state(server, "app")
    assert state_2 != state_1
    second = run_dag(build_dag(dag_id))
    assert task_states(second)["update_status"] == "success"
    older_id = snaps[0]["id"]

    # 3. The database is dropped; the latest snapshot brings it back.
    server.sql('DROP DATABASE "app" WITH (FORCE);')
    docs = [
        *base_docs(pg),
        restic,
        database_recovery_doc(
            "latest", NS, "repo", entry["repoDir"], {"connectionURL": url_accessor(server, "app")}
        ),
        database_recovery_doc(
            "older",
            NS,
            "repo",
            entry["repoDir"],
            {"connectionURL": url_accessor(server, "app_older")},
            snapshot=older_id[:8],
        ),
    ]
    write_manifests(manifests, docs)
    run = run_dag(build_dag(f"stash-recovery.{NS}.latest"))
    assert task_states(run) == {"restore": "success", "update_status": "success"}
    assert postgres_state(server, "app") == state_2
    rec = json.loads((state / "recoveries" / NS / "latest.json").read_text())["status"]
    assert rec["phase"] == "Succeeded" and rec["stats"][0]["path"] == "/app.sql"

    # 4. An older snapshot, named by id, into another database.
    run = run_dag(build_dag(f"stash-recovery.{NS}.older"))
    assert task_states(run) == {"restore": "success", "update_status": "success"}
    assert postgres_state(server, "app_older") == state_1

    # 5. Recovering into a database that holds data is refused, and nothing changes.
    server.sql("INSERT INTO customers VALUES (999999, 'keep me', NULL);", "app")
    busy = postgres_state(server, "app")
    run = run_dag(build_dag(f"stash-recovery.{NS}.latest"))
    assert task_states(run) == {"restore": "failed", "update_status": "failed"}
    rec = json.loads((state / "recoveries" / NS / "latest.json").read_text())["status"]
    assert rec["phase"] == "Failed"
    assert postgres_state(server, "app") == busy
    out, err = capfd.readouterr()
    assert "is not empty; set databaseRestorer.overwrite: true" in out + err

    # 6. ... unless the Recovery says overwrite.
    docs[-2]["spec"]["databaseRestorer"]["overwrite"] = True
    write_manifests(manifests, docs)
    run = run_dag(build_dag(f"stash-recovery.{NS}.latest"))
    assert task_states(run) == {"restore": "success", "update_status": "success"}
    assert postgres_state(server, "app") == state_2

    # The password is nowhere: not in the task logs, not in XCom.
    out, err = capfd.readouterr()
    assert DB_PASSWORD not in out + err
    assert DB_PASSWORD not in json.dumps(xcom_values(), default=str)


def test_postgres_every_database_through_an_appbinding(
    pg: dict[str, Any],
    airflow_db: None,
    stash_env: dict[str, Path],
    capfd: pytest.CaptureFixture[str],
) -> None:
    server: Server = pg["server"]
    manifests = stash_env["manifests"]
    server.sql('CREATE DATABASE "second db";')
    server.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'ä');", "second db"
    )
    before = {db: postgres_state(server, db) for db in ("app",)}
    second = server.sql("SELECT * FROM t;", "second db")
    docs = [
        *base_docs(pg),
        appbinding_doc(
            "pg", NS, f"postgres://127.0.0.1:{server.port}", "kubedb.com/postgres", "pg-login"
        ),
        database_restic_doc("pg-all", NS, "repo", {"AppRef": {"name": "pg"}}),
        database_recovery_doc(
            "all", NS, "repo", "/databases/appbinding/pg", {"AppRef": {"name": "pg"}}
        ),
    ]
    write_manifests(manifests, docs)
    run = run_dag(build_dag(f"stash-backup.{NS}.pg-all.appbinding.pg"))
    assert set(task_states(run).values()) == {"success"}
    snaps = restic_snapshots(pg["backend"] / "databases" / "appbinding" / "pg")
    assert [s["paths"] for s in snaps] == [["/all.sql"]] and "dump=all" in snaps[0]["tags"]

    names = server.sql(
        "SELECT datname FROM pg_database WHERE datname NOT IN "
        "('postgres', 'template0', 'template1');"
    ).splitlines()
    assert "second db" in names
    for name in names:
        server.sql(f'DROP DATABASE "{name}" WITH (FORCE);')
    run = run_dag(build_dag(f"stash-recovery.{NS}.all"))
    assert task_states(run) == {"restore": "success", "update_status": "success"}
    assert {db: postgres_state(server, db) for db in ("app",)} == before
    assert server.sql("SELECT * FROM t;", "second db") == second
    out, err = capfd.readouterr()
    assert DB_PASSWORD not in out + err
