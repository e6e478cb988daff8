"""Backup and recovery DAG runs against restic run by hand, on the same data.

Two data sets, each backed up into a fresh repository by a Stash backup DAG (local
runtime, run in-process the way the tests run DAGs: serialised, then ``dag.test()``)
and by ``restic backup --json --quiet`` typed by hand (same password environment), then
backed up again with nothing changed, then restored by a Recovery DAG and by
``restic restore latest``:

- ``mixed``: ``--size-mib`` MiB of mixed files (a few large, some medium, many small);
- ``small``: ``--small-files`` small files (0 to 4 KiB) in nested folders.

Usage::

    .venv/bin/python benchmarks/backup.py [--size-mib 1024] [--small-files 100000]
        [--quick] [--workdir DIR] [--keep]

``--quick`` uses 128 MiB and 10,000 files. For every step it prints the whole DAG run
(build + serialise + ``dag.test()``), the Stash task's own duration (task instance
start to end) and restic by hand, and the ratios of both to the by-hand time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NS = "bench"
# The throwaway repositories this run creates get a password of their own.
PASSWORD = secrets.token_urlsafe(24)
sys.path.insert(0, str(ROOT / "tests"))


# --------------------------------------------------------------------------- data


def _write_random(path: Path, size: int, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        left = size
        while left > 0:
            chunk = min(left, 8 << 20)
            fh.write(rng.randbytes(chunk))
            left -= chunk


def make_mixed(root: Path, size_mib: int, seed: int = 11) -> tuple[int, int]:
    """Half in 4 large files, 30% in 1-8 MiB files, 20% in 4-64 KiB files. Random
    bytes (restic 0.14 does not compress), no duplicates."""
    rng = random.Random(seed)
    total = size_mib << 20
    files = 0
    for i in range(4):
        _write_random(root / "large" / f"large-{i}.bin", total // 8, rng)
        files += 1
    medium = int(total * 0.3)
    i = 0
    while medium > 0:
        size = min(medium, rng.randint(1 << 20, 8 << 20))
        _write_random(root / "medium" / f"m{i % 8}" / f"medium-{i:04d}.bin", size, rng)
        medium -= size
        i += 1
        files += 1
    small = total - 4 * (total // 8) - int(total * 0.3)
    i = 0
    while small > 0:
        size = min(small, rng.randint(4 << 10, 64 << 10))
        d = root / "small" / f"s{i % 50:02d}" / f"t{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"small-{i:06d}.dat").write_bytes(rng.randbytes(size))
        small -= size
        i += 1
        files += 1
    return files, total


def make_small(root: Path, count: int, seed: int = 12) -> tuple[int, int]:
    """``count`` files of 0-4 KiB, 100 per folder, folders nested two deep."""
    rng = random.Random(seed)
    total = 0
    for i in range(count):
        d = root / f"a{i // 10000:02d}" / f"b{(i // 100) % 100:02d}"
        if i % 100 == 0:
            d.mkdir(parents=True, exist_ok=True)
        size = rng.randint(0, 4096)
        (d / f"f{i:06d}.txt").write_bytes(rng.randbytes(size))
        total += size
    return count, total


def tree_summary(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            files += 1
            size += os.lstat(os.path.join(dirpath, f)).st_size
    return files, size


# --------------------------------------------------------------------------- runs


def restic_env(repo: Path) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "XDG_CACHE_HOME")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update({"RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": PASSWORD})
    return env


def by_hand(args: list[str], repo: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(  # noqa: S603 - fixed argv
        ["restic", *args], env=restic_env(repo), capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"restic {' '.join(args)} failed ({out.returncode}): {out.stderr}")
    return elapsed, out.stdout


def run_dag_timed(dag_id: str) -> dict[str, Any]:
    from stashtest import run_dag

    from stash_plugin.factory import build_dags
    from stash_plugin.settings import load_settings

    t0 = time.perf_counter()
    dags, errors = build_dags(load_settings())
    if dag_id not in dags:
        raise SystemExit(f"no DAG {dag_id}: {[str(e) for e in errors]}")
    t1 = time.perf_counter()
    run = run_dag(dags[dag_id])
    t2 = time.perf_counter()
    tasks = {}
    for ti in run.get_task_instances():
        duration = (
            (ti.end_date - ti.start_date).total_seconds() if ti.end_date and ti.start_date else None
        )
        tasks[ti.task_id] = {"state": str(ti.state), "duration": duration}
    # A skipped task is a decision of the run (retention with nothing to remove).
    bad = {k: v["state"] for k, v in tasks.items() if v["state"] not in ("success", "skipped")}
    if bad:
        raise SystemExit(f"{dag_id}: tasks did not succeed: {bad}")
    return {"build_s": t1 - t0, "run_s": t2 - t1, "total_s": t2 - t0, "tasks": tasks}


def manifests(
    folder: Path, data: Path, backend: Path, restores: dict[str, Path] | None = None
) -> None:
    from stash_plugin.manifests import (
        deployment_doc,
        recovery_doc,
        repository_doc,
        restic_doc,
        secret_doc,
        write_manifests,
    )

    docs = [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        deployment_doc("app", NS, data),
        repository_doc(
            "repo", NS, {"local": {"mountPath": "/repo", "hostPath": {"path": str(backend)}}}
        ),
        restic_doc("app-backup", NS, "repo", "app", policy={"keepLast": 5, "prune": True}),
    ]
    for name, target in (restores or {}).items():
        docs.append(recovery_doc(name, NS, "repo", target))
    if folder.exists():
        shutil.rmtree(folder)
    write_manifests(folder, docs)


BACKUP_DAG = f"stash-backup.{NS}.app-backup.deployment.app"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def bench_set(
    name: str, data: Path, work: Path, manifests_dir: Path, repeat: int = 3
) -> list[dict[str, Any]]:
    """First backup, unchanged backup, restore: DAG against restic by hand."""
    rows: list[dict[str, Any]] = []
    dag_backend = work / f"{name}-dag-backend"
    hand_repo = work / f"{name}-hand-repo"
    dag_backend.mkdir()
    manifests(manifests_dir, data, dag_backend)
    # A fresh repository is a new target: forget the status an earlier set left (with
    # backups on record, the backup would rightly refuse to create a new repository).
    shutil.rmtree(Path(os.environ["AIRFLOW__STASH__STATE_DIR"]), ignore_errors=True)
    files, size = tree_summary(data)
    print(f"\n== {name}: {files} files, {size / (1 << 20):.1f} MiB in {data}", flush=True)
    subprocess.run(["sync"], check=False)  # noqa: S603,S607

    # 1. First backup into a fresh repository.
    dag = run_dag_timed(BACKUP_DAG)
    t_init, _ = by_hand(["init"], hand_repo)
    t_backup, out = by_hand(["backup", "--json", "--quiet", "--host=app", str(data)], hand_repo)
    summary = json.loads(out.strip().splitlines()[-1])
    rows.append(row(name, "first backup", dag, "backup", t_init + t_backup, "init + backup"))
    print(
        f"   restic by hand: init {t_init:.2f} s, backup {t_backup:.2f} s "
        f"({summary.get('files_new')} files new, {summary.get('data_added')} bytes added)"
    )

    # 2. Nothing changed: the incremental run, DAG and by hand alternating; the median
    # of ``repeat`` runs of each (a shared machine makes single figures jump).
    runs = []
    for _ in range(repeat):
        dag = run_dag_timed(BACKUP_DAG)
        t_backup2, _ = by_hand(["backup", "--json", "--quiet", "--host=app", str(data)], hand_repo)
        runs.append((dag, t_backup2))
        print(
            f"   unchanged run: DAG {dag['total_s']:.2f} s, by hand {t_backup2:.2f} s; tasks "
            + ", ".join(f"{k} {_secs(v['duration'])}" for k, v in dag["tasks"].items()),
            flush=True,
        )
    dag = sorted((d for d, _ in runs), key=lambda d: d["total_s"])[(repeat - 1) // 2]
    t_backup2 = statistics.median(t for _, t in runs)
    rows.append(
        row(name, "unchanged backup", dag, "backup", t_backup2, f"backup (median of {repeat})")
    )

    # 3. Restore the latest snapshot into an empty folder.
    dag_target = work / f"{name}-restored-dag"
    hand_target = work / f"{name}-restored-hand"
    manifests(manifests_dir, data, dag_backend, {"restore-latest": dag_target})
    dag = run_dag_timed(f"stash-recovery.{NS}.restore-latest")
    t_restore, _ = by_hand(["restore", "latest", f"--target={hand_target}"], hand_repo)
    rows.append(row(name, "restore", dag, "restore", t_restore, "restore latest"))
    restored = tree_summary(dag_target)
    by_hand_restored = tree_summary(hand_target / str(data).lstrip("/"))
    if restored != (files, size) or by_hand_restored != (files, size):
        raise SystemExit(f"restore mismatch: {restored} / {by_hand_restored} != {(files, size)}")
    print(f"   both restores hold {files} files, {size} bytes", flush=True)
    for p in (dag_target, hand_target):
        shutil.rmtree(p, ignore_errors=True)
    return rows


def row(
    data: str, step: str, dag: dict[str, Any], task: str, hand_s: float, hand_what: str
) -> dict[str, Any]:
    task_s = dag["tasks"][task]["duration"]
    r = {
        "data": data,
        "step": step,
        "dag_total_s": dag["total_s"],
        "dag_build_s": dag["build_s"],
        "task": task,
        "task_s": task_s,
        "tasks": {k: v["duration"] for k, v in dag["tasks"].items()},
        "hand_s": hand_s,
        "hand_what": hand_what,
    }
    print(
        f"   {step}: DAG run {dag['total_s']:.2f} s (factory {dag['build_s']:.3f} s), "
        f"{task} task {task_s:.2f} s, by hand ({hand_what}) {hand_s:.2f} s; tasks "
        + ", ".join(f"{k} {_secs(v)}" for k, v in r["tasks"].items()),
        flush=True,
    )
    return r


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'data':<6} {'step':<17} | {'DAG run s':>9} {'task s':>7} | {'by hand s':>9} | "
        f"{'DAG/hand':>8} {'task/hand':>9} | by hand = restic ..."
    )
    print()
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['data']:<6} {r['step']:<17} | {r['dag_total_s']:>9.2f} {r['task_s']:>7.2f} | "
            f"{r['hand_s']:>9.2f} | {r['dag_total_s'] / r['hand_s']:>8.2f} "
            f"{r['task_s'] / r['hand_s']:>9.2f} | {r['hand_what']}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--small-files", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="128 MiB and 10,000 files")
    ap.add_argument("--workdir", type=Path, help="where data and repositories go (default /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--only", choices=("mixed", "small"), action="append")
    ap.add_argument("--repeat", type=int, default=3, help="unchanged backups of each kind")
    args = ap.parse_args()
    if args.quick:
        args.size_mib, args.small_files = 128, 10_000
    work = Path(tempfile.mkdtemp(prefix="stash-bench-backup-", dir=args.workdir))
    free = shutil.disk_usage(work).free
    need = (args.size_mib << 20) * 4 + args.small_files * 4096 * 8
    if free < need * 1.2:
        raise SystemExit(f"{work}: {free >> 30} GiB free, about {need >> 30} GiB needed")

    # Airflow reads its home when first imported: set everything before importing it.
    home = work / "airflow-home"
    home.mkdir()
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get(
                "AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING"
            ),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__STASH__TASK_RETRIES": "0",
            "AIRFLOW__STASH__RUNTIME": "local",
            "AIRFLOW__STASH__MANIFESTS_DIR": str(work / "manifests"),
            "AIRFLOW__STASH__STATE_DIR": str(work / "state"),
        }
    )
    os.environ.pop("_AIRFLOW_PARSING_CONTEXT_DAG_ID", None)
    print(f"work dir {work}; restic {subprocess.getoutput('restic version').split()[1]}")
    try:
        t0 = time.perf_counter()
        from airflow.utils import db

        db.resetdb()
        print(f"airflow DB reset in {time.perf_counter() - t0:.1f} s")

        # One warm-up run on a tiny tree: the first in-process DAG run pays one-time
        # costs (bundle sync, imports) that no scheduled run pays.
        tiny = work / "tiny"
        (tiny / "d").mkdir(parents=True)
        (tiny / "d" / "a.txt").write_text("warm-up\n")
        (work / "tiny-backend").mkdir()
        manifests(work / "manifests", tiny, work / "tiny-backend")
        warm = run_dag_timed(BACKUP_DAG)
        print(
            f"warm-up DAG run (1 file): {warm['total_s']:.2f} s; tasks "
            + ", ".join(f"{k} {_secs(v['duration'])}" for k, v in warm["tasks"].items())
        )

        rows: list[dict[str, Any]] = []
        only = set(args.only or ("mixed", "small"))
        if "mixed" in only:
            data = work / "mixed"
            t = time.perf_counter()
            files, size = make_mixed(data, args.size_mib)
            print(f"made {files} mixed files, {size >> 20} MiB in {time.perf_counter() - t:.1f} s")
            rows += bench_set("mixed", data, work, work / "manifests", args.repeat)
            shutil.rmtree(data)
            for p in work.glob("mixed-*"):
                shutil.rmtree(p, ignore_errors=True)
        if "small" in only:
            data = work / "small"
            t = time.perf_counter()
            files, size = make_small(data, args.small_files)
            print(f"made {files} small files, {size >> 20} MiB in {time.perf_counter() - t:.1f} s")
            rows += bench_set("small", data, work, work / "manifests", args.repeat)
        print_table(rows)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
