"""A PostgreSQL backup through the Stash DAG task against ``pg_dump | restic backup
--stdin`` typed by hand, in the same run, on the same server and database.

A throwaway PostgreSQL (``tests/dbservers.py``) gets a database of about
``--size-mib`` MiB of plain dump; each way backs it up twice into a fresh repository
(first backup, then again with nothing changed). For each it prints the backup
task's own duration (task instance start to end), the whole DAG run, the time by hand,
their ratio, and the peak extra disk used while it ran: the filesystem's peak use
above where it started, less what the repository and restic's cache hold at the
end (a copy of the dump on disk would show here).

The first backup by hand includes ``restic init``, as the DAG's first run creates its
repository.

A warm-up DAG run into another repository comes first: the first task an Airflow
process runs pays for set-up no later task does.

Usage::

    .venv/bin/python benchmarks/database.py [--size-mib 200] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
NS = "bench"
# The throwaway repositories this run creates get a password of their own.
PASSWORD = secrets.token_urlsafe(24)
ROW_BYTES = 150
"""About what one row of the table below takes in a plain dump."""


def du(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


class DiskWatch:
    """Peak bytes under ``path`` (the work folder: repositories, restic's cache, the
    runs' temporary files) above what is there once the run is over: a transient copy
    of the dump would show here. The machine may be shared, so the filesystem's own
    numbers are not used."""

    def __init__(self, path: Path) -> None:
        self.path, self.peak_bytes = path, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, du(self.path))
            self._stop.wait(0.05)

    def __enter__(self) -> DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.extra = max(0, self.peak_bytes - du(self.path))


def timed(what: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = what()
    return time.perf_counter() - t0, result


def seed(server: Any, size_mib: int) -> int:
    rows = size_mib * (1 << 20) // ROW_BYTES
    server.sql('CREATE DATABASE "app";')
    server.sql(
        "CREATE TABLE big (id bigint PRIMARY KEY, payload text, n numeric(12,2));"
        f"INSERT INTO big SELECT g, repeat(md5(g::text), 4), g * 0.5 "
        f"FROM generate_series(1, {rows}) g;",
        "app",
    )
    return rows


def by_hand(server: Any, repo: Path, cache: Path, init: bool) -> float:
    """``pg_dump | restic backup --stdin``, the password in PGPASSWORD as for the agent;
    ``restic init`` first for the first backup (the DAG's first run makes its
    repository too)."""
    from stash_plugin.databases import conninfo

    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(cache.parent),  # the work folder: nothing of the user's is read
        "XDG_CACHE_HOME": str(cache),
        "TMPDIR": os.environ["TMPDIR"],
        "RESTIC_REPOSITORY": str(repo),
        "RESTIC_PASSWORD": PASSWORD,
        "PGPASSWORD": server.password,
        "CONN": conninfo(host="127.0.0.1", port=server.port, user=server.user, dbname="app"),
    }
    script = ("restic init >/dev/null; " if init else "") + (
        'set -euo pipefail; pg_dump --no-password --dbname="$CONN" | '
        "restic backup --json --quiet --host=hand --stdin --stdin-filename=app.sql >/dev/null"
    )
    t0 = time.perf_counter()
    subprocess.run(["bash", "-c", script], env=env, check=True)  # noqa: S603,S607
    return time.perf_counter() - t0


def dag_run(dag_id: str) -> tuple[float, float]:
    from stashtest import build_dag, run_dag

    t0 = time.perf_counter()
    run = run_dag(build_dag(dag_id))
    total = time.perf_counter() - t0
    tasks = {ti.task_id: ti for ti in run.get_task_instances()}
    bad = {k: str(t.state) for k, t in tasks.items() if str(t.state) != "success"}
    if bad:
        raise SystemExit(f"{dag_id}: tasks did not succeed: {bad}")
    backup = tasks["backup"]
    return (backup.end_date - backup.start_date).total_seconds(), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=200)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="unchanged backups (each way)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stash-db-bench-", dir=args.workdir))
    home = work / "airflow-home"
    home.mkdir()
    (work / "tmp").mkdir()
    cache = work / "restic-cache"
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__STASH__MANIFESTS_DIR": str(work / "manifests"),
            "AIRFLOW__STASH__STATE_DIR": str(work / "state"),
            "AIRFLOW__STASH__RUNTIME": "local",
            "AIRFLOW__STASH__TASK_RETRIES": "0",
            "XDG_CACHE_HOME": str(cache),
            "TMPDIR": str(work / "tmp"),
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        }
    )
    from airflow.utils import db
    from dbservers import start_postgres

    from stash_plugin.manifests import (
        database_restic_doc,
        repository_doc,
        secret_doc,
        write_manifests,
    )

    db.resetdb()
    server = start_postgres()
    try:
        t_seed, rows = timed(lambda: seed(server, args.size_mib))
        dump_size = int(server.sql("SELECT pg_database_size('app');", "app").strip() or 0)
        print(
            f"database: {rows} rows, {dump_size / (1 << 20):.0f} MiB on disk (seeded in "
            f"{t_seed:.1f} s)",
            flush=True,
        )
        backend = work / "dag-backend"
        backend.mkdir()
        docs = [
            secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
            secret_doc("login", NS, username=server.user, password=server.password),
            repository_doc(
                "repo", NS, {"local": {"mountPath": "/r", "hostPath": {"path": str(backend)}}}
            ),
            database_restic_doc(
                "pg",
                NS,
                "repo",
                {
                    "connectionURL": {
                        "url": f"postgres://127.0.0.1:{server.port}",
                        "database": "app",
                        "credentials": {"secretName": "login"},
                    }
                },
            ),
        ]
        warm_backend = work / "warm-backend"
        warm_backend.mkdir()
        warm = repository_doc(
            "warm-repo", NS, {"local": {"mountPath": "/r", "hostPath": {"path": str(warm_backend)}}}
        )
        warm_restic = json.loads(json.dumps(docs[-1]))
        warm_restic["metadata"]["name"] = "warm-up"
        warm_restic["spec"]["repository"]["name"] = "warm-repo"
        write_manifests(work / "manifests", [*docs, warm, warm_restic])
        # The first task an Airflow process runs pays for imports and set-up that no
        # later one does: a warm-up run into another repository takes that cost.
        dag_run(f"stash-backup.{NS}.warm-up.127.0.0.1-{server.port}.app")
        shutil.rmtree(warm_backend, ignore_errors=True)
        dag_id = f"stash-backup.{NS}.pg.127.0.0.1-{server.port}.app"
        hand_repo = work / "hand-repo"
        dag_repo = backend / "databases" / f"127.0.0.1-{server.port}" / "app"
        rows_out = []
        for step in ["first backup"] + ["unchanged backup"] * args.repeat:
            subprocess.run(["sync"], check=False)  # noqa: S603,S607
            with DiskWatch(work) as watch:
                task_s, dag_s = dag_run(dag_id)
            dag_extra = watch.extra
            subprocess.run(["sync"], check=False)  # noqa: S603,S607
            with DiskWatch(work) as watch:
                hand_s = by_hand(server, hand_repo, cache, init=step == "first backup")
            rows_out.append((step, task_s, dag_s, hand_s, dag_extra, watch.extra))
            print(
                f"{step}: backup task {task_s:.2f} s (whole DAG run {dag_s:.2f} s), by hand "
                f"{hand_s:.2f} s, ratio task/hand {task_s / hand_s:.2f}; peak extra disk: "
                f"DAG {dag_extra / (1 << 20):.1f} MiB, by hand {watch.extra / (1 << 20):.1f} MiB",
                flush=True,
            )
        print(
            f"\nrepositories: DAG {du(dag_repo) / (1 << 20):.0f} MiB, by hand "
            f"{du(hand_repo) / (1 << 20):.0f} MiB; restic cache {du(cache) / (1 << 20):.0f} MiB; "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        print(
            f"\n{'step':<17} | {'task s':>7} {'DAG run s':>9} | {'by hand s':>9} | "
            f"{'task/hand':>9} | {'extra disk MiB (DAG/hand)':>26}"
        )
        for step, task_s, dag_s, hand_s, dag_extra, hand_extra in rows_out:
            print(
                f"{step:<17} | {task_s:7.2f} {dag_s:9.2f} | {hand_s:9.2f} | "
                f"{task_s / hand_s:9.2f} | {dag_extra / (1 << 20):12.1f} / "
                f"{hand_extra / (1 << 20):.1f}"
            )
        unchanged = [r for r in rows_out if r[0] == "unchanged backup"]
        if unchanged:
            ratios = sorted(r[1] / r[3] for r in unchanged)
            print(f"unchanged backups: median task/hand {ratios[len(ratios) // 2]:.2f}")
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
