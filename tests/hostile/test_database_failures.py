"""Database backups that must fail cleanly: whole DAG runs against a real PostgreSQL.

One Restic with five database accessors makes five DAGs: a wrong password, a server
that is not there, databases named ``x; touch pwned`` and ``$(id)``, and a dump killed
part way (a ``pg_dump`` first on PATH that passes on 300 kB of the real dump, then
kills itself with SIGKILL). Each run must fail with a message that says why, leave no
snapshot that ``latest``, retention or status would count, and run nothing a name
spells.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dbservers import PASSWORD as DB_PASSWORD
from dbservers import USER, Server, free_port, seed_postgres, start_postgres
from stashtest import (
    PASSWORD,
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
HOSTILE = ("x; touch pwned", "$(id)")


@pytest.fixture(scope="module")
def pg() -> Iterator[Server]:
    server = start_postgres()
    try:
        seed_postgres(server, "app", rows=50_000)
        yield server
    finally:
        server.stop()


def accessor(port: int, database: str, secret: str = "pg-login") -> dict[str, Any]:
    return {
        "connectionURL": {
            "url": f"postgres://127.0.0.1:{port}",
            "database": database,
            "credentials": {"secretName": secret},
        }
    }


def test_failed_dumps_leave_no_snapshot_and_run_nothing(
    pg: Server,
    airflow_db: None,
    stash_env: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from stash_plugin.factory import build_dags
    from stash_plugin.settings import load_settings

    backend = tmp_path / "backend"
    backend.mkdir()
    closed = free_port()
    label = f"127.0.0.1-{pg.port}"
    docs = [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        secret_doc("pg-login", NS, username=USER, password=DB_PASSWORD),
        secret_doc("wrong-login", NS, username=USER, password="not-the-password"),
        repository_doc(
            "repo", NS, {"local": {"mountPath": "/r", "hostPath": {"path": str(backend)}}}
        ),
        database_restic_doc(
            "bad",
            NS,
            "repo",
            {
                "databaseAccessors": [
                    accessor(pg.port, "postgres", secret="wrong-login"),
                    accessor(closed, "app"),
                    *[accessor(pg.port, name) for name in HOSTILE],
                    accessor(pg.port, "app"),
                ]
            },
        ),
    ]
    write_manifests(stash_env["manifests"], docs)
    dags, errors = build_dags(load_settings())
    assert errors == [], [str(e) for e in errors]
    backups = {d: dag for d, dag in dags.items() if d.startswith("stash-backup.")}
    assert set(dags) - set(backups) == {"stash-maintenance.demo.repo"}
    by_target = {d.split(".bad.", 1)[1]: dag for d, dag in backups.items()}
    assert len(by_target) == 5
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def run(target: str) -> str:
        states = task_states(run_dag(by_target[target]))
        assert states["backup"] == "failed" and states["update_status"] == "failed", states
        assert states["verify"] != "success"
        out, err = capfd.readouterr()
        return out + err

    # A killed dump: 300 kB of the real dump pass, then the dump dies by SIGKILL.
    fake = tmp_path / "bin"
    fake.mkdir()
    real = subprocess.run(["which", "pg_dump"], capture_output=True, text=True).stdout.strip()
    (fake / "pg_dump").write_text(f'#!/bin/sh\n"{real}" "$@" | head -c 300000\nkill -9 $$\n')
    (fake / "pg_dump").chmod(0o755)
    path = os.environ["PATH"]
    monkeypatch.setenv("PATH", f"{fake}:{path}")
    killed = run(f"{label}.app")
    monkeypatch.setenv("PATH", path)
    assert "dump of postgres database 'app'" in killed
    assert "pg_dump failed (killed by signal 9)" in killed
    assert "no snapshot was made" in killed

    wrong = run(f"{label}.postgres")
    assert "password authentication failed for user" in wrong
    refused = run(f"127.0.0.1-{closed}.app")
    assert "Connection refused" in refused
    hostile = {}
    for target in by_target:
        if target.startswith(label) and target not in (f"{label}.app", f"{label}.postgres"):
            hostile[target] = run(target)
    assert len(hostile) == 2
    for name in HOSTILE:
        assert any(f'database "{name}" does not exist' in text for text in hostile.values())
    assert not (cwd / "pwned").exists() and not Path("/pwned").exists()
    assert "uid=" not in "".join(hostile.values())

    # No snapshot anywhere, and every status entry is a failure with its reason.
    for repo in backend.glob("databases/*/*"):
        assert restic_snapshots(repo, missing_ok=True) == [], repo
    status = json.loads((stash_env["state"] / "repositories" / NS / "repo.json").read_text())
    entries = status["status"]["backupRepos"]
    assert len(entries) == 5
    assert all(e["backupCount"] == 0 and e["failedBackupCount"] == 1 for e in entries)
    assert all(e["lastFailure"].startswith("backup: ") for e in entries)
    assert DB_PASSWORD not in killed + wrong + refused + "".join(hostile.values())
