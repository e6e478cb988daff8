"""MariaDB backup and recovery, whole DAG runs on the local runtime, real server.

The seeded database (300,000 orders, unicode text, binary blobs, a view, a trigger
and a procedure) is backed up by connection URL with the default agent, dropped and
recovered; then through an AppBinding with the corrected ``mysqldump`` BackupAgent of
``examples/database`` (a shell pipe into ``stash-agent "$@"``), where a hostile
database name must stay a name; then every database at once. Each recovery is
compared table by table (row count and ``CHECKSUM TABLE``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dbservers import PASSWORD as DB_PASSWORD
from dbservers import USER, Server, mariadb_state, seed_mariadb, start_mariadb
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
)

pytestmark = pytest.mark.slow
NS = "demo"
EXAMPLE_AGENT = Path(__file__).resolve().parents[2] / "examples" / "backupagent-mysqldump.yaml"


@pytest.fixture(scope="module")
def maria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    server = start_mariadb()
    try:
        seed_mariadb(server, "shop")
        root = tmp_path_factory.mktemp("mariadb")
        (root / "backend").mkdir()
        yield {"server": server, "backend": root / "backend"}
    finally:
        server.stop()


def base_docs(maria: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        secret_doc("db-login", NS, username=USER, password=DB_PASSWORD),
        repository_doc(
            "repo", NS, {"local": {"mountPath": "/r", "hostPath": {"path": str(maria["backend"])}}}
        ),
    ]


def url(server: Server, database: str) -> dict[str, Any]:
    return {
        "connectionURL": {
            "url": f"mysql://127.0.0.1:{server.port}",
            "database": database,
            "credentials": {"secretName": "db-login"},
        }
    }


def user_databases(server: Server) -> list[str]:
    system = {"mysql", "information_schema", "performance_schema", "sys"}
    return [d for d in server.sql("SHOW DATABASES;").splitlines() if d not in system]


def test_mariadb_backup_and_recovery(
    maria: dict[str, Any],
    airflow_db: None,
    stash_env: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server: Server = maria["server"]
    manifests, backend = stash_env["manifests"], maria["backend"]
    label = f"127.0.0.1-{server.port}"
    seeded = mariadb_state(server, "shop")

    # 1. By connection URL, default agent (mariadb-dump --single-transaction ...).
    docs = [
        *base_docs(maria),
        database_restic_doc("shop-backup", NS, "repo", url(server, "shop")),
        database_recovery_doc(
            "shop-restore", NS, "repo", f"/databases/{label}/shop", url(server, "shop")
        ),
    ]
    write_manifests(manifests, docs)
    run = run_dag(build_dag(f"stash-backup.{NS}.shop-backup.{label}.shop"))
    assert set(task_states(run).values()) == {"success"}
    (snap,) = restic_snapshots(backend / "databases" / label / "shop")
    assert snap["paths"] == ["/shop.sql"] and "engine=mysql" in snap["tags"]
    server.sql("DROP DATABASE shop;")
    run = run_dag(build_dag(f"stash-recovery.{NS}.shop-restore"))
    assert task_states(run) == {"restore": "success", "update_status": "success"}
    assert mariadb_state(server, "shop") == seeded

    # 2. Through an AppBinding, with the corrected mysqldump agent of examples/: the
    # dump is a shell pipe into stash-agent; a hostile name stays a name.
    agent = yaml.safe_load(EXAMPLE_AGENT.read_text())
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    hostile = "x; touch pwned $(id)"
    docs = [
        *base_docs(maria),
        agent,
        appbinding_doc(
            "shop", NS, f"mariadb://127.0.0.1:{server.port}/shop", "kubedb.com/mariadb", "db-login"
        ),
        database_restic_doc(
            "agent-backup",
            NS,
            "repo",
            {"databaseAccessors": [{"AppRef": {"name": "shop"}}, url(server, hostile)]},
            backupAgent="mysqldump",
        ),
    ]
    write_manifests(manifests, docs)
    run = run_dag(build_dag(f"stash-backup.{NS}.agent-backup.appbinding.shop"))
    assert set(task_states(run).values()) == {"success"}
    (snap,) = restic_snapshots(backend / "databases" / "appbinding" / "shop")
    assert snap["paths"] == ["/shop.sql"] and snap["hostname"] == "shop"
    capfd.readouterr()
    from stash_plugin.factory import build_dags
    from stash_plugin.settings import load_settings

    dags, _ = build_dags(load_settings())
    (bad,) = [d for i, d in dags.items() if i.startswith(f"stash-backup.{NS}.agent-backup.{label}")]
    states = task_states(run_dag(bad))
    assert states["backup"] == "failed" and states["update_status"] == "failed"
    out, err = capfd.readouterr()
    logged = out + err + caplog.text
    assert f"Unknown database '{hostile}'" in logged
    assert f"dump of mysql database '{hostile}'" in logged and "no snapshot was made" in logged
    assert not (cwd / "pwned").exists() and "uid=" not in logged
    assert not any(
        restic_snapshots(p, missing_ok=True)
        for p in (backend / "databases" / label).iterdir()
        if p.name != "shop"
    )

    # 3. Every database at once, recovered into an emptied server.
    server.sql(
        "CREATE DATABASE `second db`; CREATE TABLE `second db`.t (v TEXT); "
        "INSERT INTO `second db`.t VALUES ('ä');"
    )
    docs = [
        *base_docs(maria),
        database_restic_doc("all-backup", NS, "repo", url(server, "all")),
        database_recovery_doc(
            "all-restore", NS, "repo", f"/databases/{label}/all", url(server, "all")
        ),
    ]
    write_manifests(manifests, docs)
    run = run_dag(build_dag(f"stash-backup.{NS}.all-backup.{label}.all"))
    assert set(task_states(run).values()) == {"success"}
    for name in user_databases(server):
        server.sql(f"DROP DATABASE `{name}`;")
    run = run_dag(build_dag(f"stash-recovery.{NS}.all-restore"))
    assert task_states(run) == {"restore": "success", "update_status": "success"}
    assert sorted(user_databases(server)) == ["second db", "shop"]
    assert mariadb_state(server, "shop") == seeded
    assert server.sql("SELECT v FROM `second db`.t;").strip() == "ä"
    out, err = capfd.readouterr()
    assert DB_PASSWORD not in out + err
