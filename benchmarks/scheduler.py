"""N small backup targets due at once under a real scheduler, against restic by hand.

A real Airflow deployment (tests/airflowservers.py: ``airflow api-server``,
``scheduler`` and ``dag-processor`` with the LocalExecutor, on a throwaway
PostgreSQL) parses ``--targets`` backup DAGs from manifests built with
stash_plugin/manifests.py (local runtime; each target a Deployment over a small
folder, its own local repository, ``@every 1h``, keepLast 5 + prune). Stash DAGs
are unpaused at creation and the shard files make all of them at once, so all are
due at the same instant: their first run is queued at once. Measured (from
the metadata database): the time from the first run's ``queued_at`` until the last
run ended, the spread of ``queued_at``, and each task instance's queue wait and
duration.

Baseline, same run, same data and repositories layout: the restic commands of each
target's tasks typed by hand (``restic init``, ``backup``, ``forget --prune``,
``snapshots``), once one target after another and once with ``--parallelism``
targets at a time. Per-target overhead = (scheduler wall time - by-hand wall time at
the same parallelism) x parallelism / targets.

Usage::

    .venv/bin/python benchmarks/scheduler.py [--targets 200] [--parallelism 8]
        [--files 20] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from airflowservers import Airflow, start_airflow  # noqa: E402 - from tests/
from dbservers import start_postgres  # noqa: E402

NS = "bench"
PASSWORD = secrets.token_urlsafe(24)  # this run's throwaway repositories only


def make_sources(root: Path, targets: int, files: int) -> list[Path]:
    rng = random.Random(5)
    folders = []
    for t in range(targets):
        folder = root / f"app-{t}"
        folder.mkdir(parents=True)
        for f in range(files):
            (folder / f"file-{f}.bin").write_bytes(rng.randbytes(rng.randint(0, 8192)))
        folders.append(folder)
    return folders


def write_targets(manifests: Path, sources: list[Path], backends: Path) -> None:
    from stash_plugin.manifests import (
        deployment_doc,
        repository_doc,
        restic_doc,
        secret_doc,
        write_manifests,
    )

    docs = [secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD)]
    for t, source in enumerate(sources):
        backend = {"local": {"mountPath": "/repo", "hostPath": {"path": str(backends / f"r{t}")}}}
        docs += [
            deployment_doc(f"app-{t}", NS, source),
            repository_doc(f"repo-{t}", NS, backend),
            restic_doc(f"app-{t}", NS, f"repo-{t}", f"app-{t}"),
        ]
    write_manifests(manifests, docs)


def restic_by_hand(source: Path, repo: Path, host: str) -> float:
    """What the target's tasks run, typed by hand; returns the seconds it took."""
    env = {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": PASSWORD}
    start = time.perf_counter()
    for argv in (
        ["restic", "init"],
        ["restic", "backup", "--json", "--quiet", f"--host={host}", str(source)],
        ["restic", "forget", "--json", f"--host={host}", "--keep-last=5", "--prune"],
        ["restic", "snapshots", "--json", f"--host={host}"],
    ):
        subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def baseline(sources: list[Path], root: Path, parallelism: int) -> dict[str, float]:
    one_by_one = root / "hand-serial"
    start = time.perf_counter()
    serial = [restic_by_hand(s, one_by_one / s.name, s.name) for s in sources]
    serial_wall = time.perf_counter() - start
    many = root / "hand-parallel"
    start = time.perf_counter()
    with ThreadPoolExecutor(parallelism) as pool:
        list(pool.map(lambda s: restic_by_hand(s, many / s.name, s.name), sources))
    return {
        "serial_wall": serial_wall,
        "per_target": statistics.mean(serial),
        "parallel_wall": time.perf_counter() - start,
    }


def scheduled(
    sources: list[Path], root: Path, parallelism: int, timeout: float
) -> dict[str, float | int]:
    manifests, backends = root / "manifests", root / "backends"
    write_targets(manifests, sources, backends)
    stash = {
        "AIRFLOW__STASH__RUNTIME": "local",
        "AIRFLOW__STASH__MANIFESTS_DIR": str(manifests),
        "AIRFLOW__STASH__STATE_DIR": str(root / "state"),
    }
    extra = {
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "16",
        "AIRFLOW__CORE__MAX_ACTIVE_RUNS_PER_DAG": "1",
    }
    db = start_postgres()
    try:
        airflow = start_airflow(root / "airflow", db, "LocalExecutor", stash, extra)
        try:
            return _measure(airflow, len(sources), timeout)
        finally:
            airflow.stop()
    finally:
        db.stop()


def _measure(airflow: Airflow, targets: int, timeout: float) -> dict[str, float | int]:
    backup = "dag_id LIKE 'stash-backup.%'"
    start = time.perf_counter()
    airflow.wait(f"SELECT count(*) FROM dag WHERE {backup}", str(targets), timeout, "parsing")
    parse_seconds = time.perf_counter() - start
    airflow.wait(
        f"SELECT count(*) FROM dag_run WHERE {backup} AND state IN ('success', 'failed')",
        str(targets),
        timeout,
        f"{targets} backup runs to end",
    )
    runs = airflow.sql(
        "SELECT state, extract(epoch FROM max(end_date) OVER () - min(queued_at) OVER ()),"
        " extract(epoch FROM max(queued_at) OVER () - min(queued_at) OVER ())"
        f" FROM dag_run WHERE {backup}"
    )
    tasks = airflow.sql(
        "SELECT task_id, extract(epoch FROM start_date - queued_dttm),"
        f" extract(epoch FROM end_date - start_date) FROM task_instance WHERE {backup}"
        " AND state = 'success' AND start_date IS NOT NULL AND queued_dttm IS NOT NULL"
    )
    failed = sum(r[0] != "success" for r in runs)
    if not tasks:
        raise RuntimeError(f"no task succeeded ({failed} failed runs): see {airflow.home}/logs")
    out: dict[str, float | int] = {
        "parse_seconds": parse_seconds,
        "wall": float(runs[0][1]),
        "queued_spread": float(runs[0][2]),
        "failed_runs": failed,
        "task_instances": len(tasks),
        "queue_wait_mean": statistics.mean(float(t[1]) for t in tasks),
        "queue_wait_max": max(float(t[1]) for t in tasks),
    }
    for task_id in sorted({t[0] for t in tasks}):
        durations = [float(t[2]) for t in tasks if t[0] == task_id]
        out[f"task_{task_id}_mean"] = statistics.mean(durations)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--parallelism", type=int, default=8, help="[core] parallelism")
    parser.add_argument("--files", type=int, default=20, help="files (0-8 KiB) per target")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="stash-bench-scheduler-", dir=args.workdir))
    try:
        sources = make_sources(root / "sources", args.targets, args.files)
        hand = baseline(sources, root, args.parallelism)
        stash = scheduled(sources, root, args.parallelism, args.timeout)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    n, p = args.targets, args.parallelism
    print(f"{n} targets, {args.files} files each, parallelism {p}, LocalExecutor")
    print(
        f"restic by hand: {hand['serial_wall']:.1f} s one after another "
        f"({hand['per_target']:.2f} s per target: init, backup, forget --prune, snapshots); "
        f"{hand['parallel_wall']:.1f} s {p} at a time"
    )
    print(
        f"scheduler: {stash['parse_seconds']:.1f} s until all {n} DAGs were parsed; "
        f"first runs queued within {stash['queued_spread']:.1f} s of each other; "
        f"first queued -> last run ended: {stash['wall']:.1f} s "
        f"({stash['failed_runs']} failed runs, {stash['task_instances']} task instances)"
    )
    tasks = ", ".join(
        f"{k[5:-5]} {v:.2f} s"
        for k, v in stash.items()
        if k.startswith("task_") and k != "task_instances"
    )
    print(
        f"task instances: mean duration {tasks}; queue wait mean "
        f"{stash['queue_wait_mean']:.1f} s, max {stash['queue_wait_max']:.1f} s"
    )
    wall = float(stash["wall"])
    overhead = (wall - hand["parallel_wall"]) * p / n
    print(
        f"per-target overhead against restic at the same parallelism: {overhead:.2f} "
        f"worker-seconds ({wall / hand['parallel_wall']:.1f}x the by-hand wall time)"
    )
    return 1 if stash["failed_runs"] else 0


if __name__ == "__main__":
    sys.exit(main())
