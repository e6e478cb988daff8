"""Database backup and recovery in the kubernetes runtime: real KubernetesPodOperator,
agent pods run by the test kubelet, real PostgreSQL, MariaDB and Redis servers.

Resources reach the DAG factory the production way (``stash sync`` copies the
AppBinding with the Stash objects). One Restic with three database accessors (a
PostgreSQL AppBinding, a MariaDB URL, a Redis URL) makes three DAGs; each backs up,
the data is dropped, and a Recovery per engine brings it back. The login reaches the
pods only as ``secretKeyRef``s.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dbservers import PASSWORD as DB_PASSWORD
from dbservers import (
    USER,
    Server,
    mariadb_state,
    postgres_state,
    redis_state,
    seed_mariadb,
    seed_postgres,
    seed_redis,
    start_mariadb,
    start_postgres,
    start_redis,
)
from kube.harness import Cluster, start_cluster
from stashtest import (
    PASSWORD,
    appbinding_doc,
    database_recovery_doc,
    database_restic_doc,
    run_dag,
    secret_doc,
    task_states,
)

pytestmark = pytest.mark.slow
NS = "demo"
STASH = "stash.appscode.com/v1alpha1"


@pytest.fixture
def servers() -> Iterator[dict[str, Server]]:
    started: dict[str, Server] = {}
    try:
        started["postgres"] = start_postgres()
        started["mariadb"] = start_mariadb()
        started["redis"] = start_redis()
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    c = start_cluster(tmp_path, monkeypatch, namespace=NS)
    yield c
    c.stop()


def sync(snapshot: Path) -> int:
    from stash_plugin.cli import main

    return main(["sync", "--once", "--output", str(snapshot)])


def dags() -> dict[str, Any]:
    from stash_plugin.factory import build_dags
    from stash_plugin.settings import load_settings

    built, errors = build_dags(load_settings())
    assert errors == [], [str(e) for e in errors]
    return built


def url(server: Server, scheme: str, database: str | None = None) -> dict[str, Any]:
    conn: dict[str, Any] = {
        "url": f"{scheme}://127.0.0.1:{server.port}",
        "credentials": {"secretName": f"{server.engine}-login"},
    }
    if database:
        conn["database"] = database
    return {"connectionURL": conn}


def test_database_backup_and_recovery_through_pods(
    servers: dict[str, Server],
    cluster: Cluster,
    airflow_db: None,
    stash_env: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    pg, maria, redis = servers["postgres"], servers["mariadb"], servers["redis"]
    seed_postgres(pg, "app", rows=20_000)
    seed_mariadb(maria, "shop", rows=20_000)
    seed_redis(redis, 5_000)
    before = {
        "postgres": postgres_state(pg, "app"),
        "mariadb": mariadb_state(maria, "shop"),
        "redis": redis_state(redis),
    }
    snapshot = stash_env["root"] / "cluster-snapshot.json"
    monkeypatch.setenv("AIRFLOW__STASH__RUNTIME", "kubernetes")
    monkeypatch.setenv("AIRFLOW__STASH__MANIFESTS_DIR", str(snapshot))
    monkeypatch.setenv("AIRFLOW__STASH__POLL_INTERVAL", "1")
    monkeypatch.setenv("AIRFLOW__STASH__ON_FINISH_ACTION", "keep_pod")  # to inspect them
    cluster.pvc("repo-store", NS)
    cluster.apply(secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD))
    cluster.apply(secret_doc("postgres-login", NS, username=USER, password=DB_PASSWORD))
    cluster.apply(secret_doc("mariadb-login", NS, username=USER, password=DB_PASSWORD))
    cluster.apply(secret_doc("redis-login", NS, username="default", password=DB_PASSWORD))
    cluster.apply(
        {
            "apiVersion": STASH,
            "kind": "Repository",
            "metadata": {"name": "repo", "namespace": NS},
            "spec": {
                "backend": {
                    "local": {
                        "mountPath": "/repo",
                        "persistentVolumeClaim": {"claimName": "repo-store"},
                    },
                    "storageSecretName": "repo-secret",
                }
            },
        }
    )
    cluster.apply(
        appbinding_doc(
            "pg", NS, f"postgres://127.0.0.1:{pg.port}/app", "kubedb.com/postgres", "postgres-login"
        )
    )
    cluster.apply(
        database_restic_doc(
            "dbs",
            NS,
            "repo",
            {
                "databaseAccessors": [
                    {"AppRef": {"name": "pg"}},
                    url(maria, "mariadb", "shop"),
                    url(redis, "redis"),
                ]
            },
        )
    )
    assert sync(snapshot) == 0
    targets = {
        "postgres": "appbinding.pg",
        "mariadb": f"127.0.0.1-{maria.port}.shop",
        "redis": f"127.0.0.1-{redis.port}.all",
    }
    built = dags()
    for target in targets.values():
        run = run_dag(built[f"stash-backup.{NS}.dbs.{target}"])
        assert set(task_states(run).values()) == {"success"}, target
    status = cluster.get("repositories", "repo", NS)["status"]["backupRepos"]
    assert sorted((e["type"], e["backupCount"]) for e in status) == [("Database", 1)] * 3
    pods = cluster.pods(NS, "stash.appscode.com/restic=dbs")
    assert len(pods) >= 9 and DB_PASSWORD not in json.dumps(pods)  # backup, retention, verify
    env = {e["name"]: e for p in pods for e in p["spec"]["containers"][0].get("env", [])}
    assert env["DB_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] in {
        "postgres-login",
        "mariadb-login",
        "redis-login",
    }

    pg.sql('DROP DATABASE "app" WITH (FORCE);')
    maria.sql("DROP DATABASE shop;")
    redis.redis("FLUSHALL")
    repo_dirs = {
        "postgres": "/databases/appbinding/pg",
        "mariadb": f"/databases/{targets['mariadb'].replace('.shop', '')}/shop",
        "redis": f"/databases/127.0.0.1-{redis.port}/all",
    }
    recover_to = {
        "postgres": {"AppRef": {"name": "pg"}},
        "mariadb": url(maria, "mariadb", "shop"),
        "redis": url(redis, "redis"),
    }
    for engine in targets:
        cluster.apply(
            database_recovery_doc(
                f"{engine}-restore", NS, "repo", repo_dirs[engine], recover_to[engine]
            )
        )
    assert sync(snapshot) == 0
    built = dags()
    for engine in targets:
        run = run_dag(built[f"stash-recovery.{NS}.{engine}-restore"])
        assert task_states(run) == {"restore": "success", "update_status": "success"}, engine
        assert cluster.get("recoveries", f"{engine}-restore", NS)["status"]["phase"] == "Succeeded"
    assert postgres_state(pg, "app") == before["postgres"]
    assert mariadb_state(maria, "shop") == before["mariadb"]
    assert redis_state(redis) == before["redis"]
    out, err = capfd.readouterr()
    assert DB_PASSWORD not in out + err
