"""Redis backup and recovery, whole DAG runs on the local runtime, real server.

A throwaway Redis with a password holds 100,000 keys of every type (binary and
unicode strings, hashes, lists, sets, sorted sets, one in ten with a TTL) in database
0 and more in database 3. Two RDB snapshots are taken by connection URL; after
``FLUSHALL`` the older one is recovered by id, a recovery into the now non-empty
server is refused, and the latest is recovered over it through an AppBinding with
``overwrite``. Each recovery is compared key by key (``DUMP`` payloads and TTLs).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dbservers import PASSWORD as DB_PASSWORD
from dbservers import Server, redis_state, seed_redis, start_redis
from stashtest import (
    PASSWORD,
    appbinding_doc,
    build_dag,
    database_recovery_doc,
    database_restic_doc,
    green,
    repository_doc,
    restic_snapshots,
    run_dag,
    secret_doc,
    task_states,
    write_manifests,
)

pytestmark = pytest.mark.slow
NS = "demo"


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    server = start_redis()
    try:
        seed_redis(server)
        seed_redis(server, 1000, db=3)
        root = tmp_path_factory.mktemp("redis")
        (root / "backend").mkdir()
        yield {"server": server, "backend": root / "backend"}
    finally:
        server.stop()


def test_redis_backup_and_recovery(
    redis: dict[str, Any],
    airflow_db: None,
    stash_env: dict[str, Path],
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server: Server = redis["server"]
    label = f"127.0.0.1-{server.port}"
    url = {
        "url": f"redis://127.0.0.1:{server.port}",
        "credentials": {"secretName": "redis-login"},
    }
    docs = [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        secret_doc("redis-login", NS, username="default", password=DB_PASSWORD),
        repository_doc(
            "repo", NS, {"local": {"mountPath": "/r", "hostPath": {"path": str(redis["backend"])}}}
        ),
        appbinding_doc(
            "cache", NS, f"redis://127.0.0.1:{server.port}", "kubedb.com/redis", "redis-login"
        ),
        database_restic_doc("cache-backup", NS, "repo", {"connectionURL": url}),
    ]
    write_manifests(stash_env["manifests"], docs)
    dag_id = f"stash-backup.{NS}.cache-backup.{label}.all"
    state_1 = redis_state(server)
    run = run_dag(build_dag(dag_id))
    assert green(run), task_states(run)
    server.redis("SET", "added-later", "zwei")
    server.redis("DEL", "k:1:ключ", db=3)
    state_2 = redis_state(server)
    run = run_dag(build_dag(dag_id))
    assert green(run), task_states(run)
    repo_dir = f"/databases/{label}/all"
    repo = redis["backend"] / repo_dir.lstrip("/")
    snaps = sorted(restic_snapshots(repo), key=lambda s: s["time"])
    assert [s["paths"] for s in snaps] == [["/dump.rdb"], ["/dump.rdb"]]
    assert "engine=redis" in snaps[0]["tags"]

    server.redis("FLUSHALL")
    docs += [
        database_recovery_doc(
            "older", NS, "repo", repo_dir, {"connectionURL": url}, snapshot=snaps[0]["short_id"]
        ),
        database_recovery_doc(
            "latest", NS, "repo", repo_dir, {"AppRef": {"name": "cache"}}, overwrite=True
        ),
        database_recovery_doc("refused", NS, "repo", repo_dir, {"connectionURL": url}),
    ]
    write_manifests(stash_env["manifests"], docs)
    run = run_dag(build_dag(f"stash-recovery.{NS}.older"))
    assert task_states(run) == {"restore": "success", "update_status": "success"}
    assert redis_state(server) == state_1

    run = run_dag(build_dag(f"stash-recovery.{NS}.refused"))
    assert task_states(run) == {"restore": "failed", "update_status": "failed"}
    assert "is not empty (101000 keys)" in caplog.text
    assert redis_state(server) == state_1

    run = run_dag(build_dag(f"stash-recovery.{NS}.latest"))
    assert task_states(run) == {"restore": "success", "update_status": "success"}
    assert redis_state(server) == state_2
    out, err = capfd.readouterr()
    assert DB_PASSWORD not in out + err + caplog.text
