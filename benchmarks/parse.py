"""Parse cost of the Stash DAG factory against hand-written DAGs.

For N volume targets (N Restics, each selecting its own Deployment, one Repository and
its Secret) this measures, each in a fresh Python process (cold import, clean peak RSS
from ``getrusage``):

a. a ``DagBag`` parse of our ``dags/`` folder (``stash_dags.py`` + ``stash_errors.py``);
b. the baseline: one generated, hand-written DAG file with the same DAGs and the same
   tasks written with stock operators (KubernetesPodOperator backup and retention, a
   PythonSensor verify, a PythonOperator update_status with ``all_done``), same
   schedule, tags, params, default args, parsed by ``DagBag`` the same way;
   A lower bound ("light") is measured too: the same DAGs whose pods get plain
   environment values only (no secretKeyRef, no volumes), which is cheaper to build but
   not equivalent;
c. a ``DagBag`` parse of ``dags/`` when the parsing context names one DAG (what a
   worker does before it runs one task), and next to it the same ``DagBag`` parse of a
   file that only imports the Airflow modules that parse ends up importing ("Airflow's
   own imports": the one-DAG figure minus this one is what Stash adds).

Usage::

    .venv/bin/python benchmarks/parse.py [--sizes 10,100,1000,5000] [--repeat 3]
        [--keep DIR] [--profile DIR]

Times are the median of ``--repeat`` runs after one warm-up run (which also writes the
byte-code caches, so both sides are measured with ``.pyc`` files in place). Peak memory is
the parsing process's ``ru_maxrss`` (and, as a cross-check, ``VmHWM``), Airflow included;
this process stays small so that it does not leak into its children's ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DAGS = ROOT / "dags"
NS = "bench"
SCHEDULE = "@every 1h"
sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------- manifests


def write_manifests(folder: Path, n: int) -> list[str]:
    """One Repository + Secret, and per target a file with its Deployment and Restic."""
    import yaml

    from stash_plugin.manifests import deployment_doc, repository_doc, restic_doc, secret_doc

    folder.mkdir(parents=True, exist_ok=True)
    s3 = {"s3": {"endpoint": "s3.example.com", "bucket": "backups", "prefix": NS}}
    repo = [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD="not-a-real-password"),
        repository_doc("repo", NS, s3),
    ]
    (folder / "repository.yaml").write_text(yaml.safe_dump_all(repo, sort_keys=False))
    targets = folder / "targets"
    targets.mkdir(exist_ok=True)
    for i in range(n):
        app = f"app-{i:05d}"
        claim = {"persistentVolumeClaim": {"claimName": f"{app}-data"}}
        deployment = deployment_doc(app, NS, None, volume=claim)
        restic = restic_doc(
            f"{app}-backup",
            NS,
            "repo",
            app,
            schedule=SCHEDULE,
            policy={"keepLast": 5, "prune": True},
            policy_name="keep-last-5",
        )
        (targets / f"{app}.yaml").write_text(
            yaml.safe_dump_all([deployment, restic], sort_keys=False)
        )
    return [f"stash-backup.{NS}.app-{i:05d}-backup.deployment.app-{i:05d}" for i in range(n)]


def write_snapshot(folder: Path) -> Path:
    """The manifests of ``folder`` as the one file ``stash sync`` writes (its own writer;
    Secrets left out, as sync never copies them)."""
    import yaml

    from stash_plugin.sync import write_snapshot as write

    items = [
        json.dumps(doc, separators=(",", ":"))
        for path in sorted(folder.rglob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") != "Secret"
    ]
    snapshot = folder.with_name(f"{folder.name}-snapshot.json")
    write(items, snapshot)
    return snapshot


# --------------------------------------------------------------------------- baseline

_HEADER = '''"""{n} backup DAGs written by hand with stock operators (generated)."""

from datetime import datetime, timedelta, timezone

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.providers.standard.sensors.python import PythonSensor
from airflow.sdk import DAG, DeltaTriggerTimetable, Param
from kubernetes.client import models as k8s

START = datetime(2024, 1, 1, tzinfo=timezone.utc)
DEFAULT_ARGS = {{
    "owner": "stash",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
}}


def verify_snapshots(**context):
    return True


def update_status(**context):
    return None

'''


def _env_code(step: Any) -> str:
    items = [f"k8s.V1EnvVar(name={k!r}, value={v!r})" for k, v in step.env]
    items += [
        f"k8s.V1EnvVar(name={ref.name!r}, value_from=k8s.V1EnvVarSource("
        f"secret_key_ref=k8s.V1SecretKeySelector(name={ref.secret!r}, key={ref.key!r}, "
        f"optional={ref.optional!r})))"
        for ref in step.secret_env
    ]
    return "[\n            " + ",\n            ".join(items) + ",\n        ]"


def _volumes_code(step: Any) -> tuple[str, str]:
    volumes, mounts = [], []
    for m in step.mounts:
        claim = m.source["persistentVolumeClaim"]["claimName"]
        volumes.append(
            f"k8s.V1Volume(name={m.name!r}, persistent_volume_claim="
            f"k8s.V1PersistentVolumeClaimVolumeSource(claim_name={claim!r}))"
        )
        mounts.append(
            f"k8s.V1VolumeMount(name={m.name!r}, mount_path={m.path!r}, read_only={m.read_only!r})"
        )
    return "[" + ", ".join(volumes) + "]", "[" + ", ".join(mounts) + "]"


def _pod_task(var: str, step: Any, light: bool = False) -> str:
    volumes, mounts = _volumes_code(step)
    labels = {f"stash.appscode.com/{k}": v for k, v in step.labels}
    if light:  # plain values only: no secret references, no volumes (not equivalent)
        return f"""    {var} = KubernetesPodOperator(
        task_id={step.task_id!r},
        name={"stash-" + step.task_id!r},
        namespace={step.namespace!r},
        image="stash-airflow/agent:0.1.0",
        cmds=[{step.argv[0]!r}],
        arguments={list(step.argv[1:])!r},
        env_vars={dict(step.env)!r},
        labels={labels!r},
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
        kubernetes_conn_id="kubernetes_default",
    )
"""
    return f"""    {var} = KubernetesPodOperator(
        task_id={step.task_id!r},
        name={"stash-" + step.task_id!r},
        namespace={step.namespace!r},
        image="stash-airflow/agent:0.1.0",
        cmds=[{step.argv[0]!r}],
        arguments={list(step.argv[1:])!r},
        env_vars={_env_code(step)},
        volumes={volumes},
        volume_mounts={mounts},
        labels={labels!r},
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
        kubernetes_conn_id="kubernetes_default",
    )
"""


_MINIMAL_HEADER = '''"""{n} minimal hand-written DAGs (generated): two KubernetesPodOperator with
plain arguments and two PythonOperator each, no factory."""

from datetime import datetime, timedelta, timezone

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

START = datetime(2024, 1, 1, tzinfo=timezone.utc)


def noop(**context):
    return None

'''


def write_minimal_file(dag_ids: list[str], out: Path) -> int:
    """The same number of DAGs, each the shape of a backup DAG with plain arguments."""
    parts = [_MINIMAL_HEADER.format(n=len(dag_ids))]
    for i, dag_id in enumerate(dag_ids):
        parts.append(
            f"""
with DAG(dag_id={dag_id!r}, schedule=timedelta(hours=1), start_date=START, catchup=False):
    backup = KubernetesPodOperator(
        task_id="backup", name="backup-{i}", namespace="bench", image="agent:1",
        cmds=["stash-agent"], arguments=["run", "--", "/data", "restic", "backup"],
    )
    retention = KubernetesPodOperator(
        task_id="retention", name="retention-{i}", namespace="bench", image="agent:1",
        cmds=["stash-agent"], arguments=["run", "--", "/data", "restic", "forget"],
    )
    verify = PythonOperator(task_id="verify", python_callable=noop)
    status = PythonOperator(task_id="update_status", python_callable=noop, trigger_rule="all_done")
    backup >> retention >> verify >> status
"""
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "minimal_dags.py").write_text("".join(parts))
    return len(dag_ids)


def write_baseline_file(manifests: Path, out: Path, light: bool = False) -> int:
    from stash_plugin.plan import make_plans
    from stash_plugin.source import load_directory

    plans = make_plans(load_directory(manifests), "kubernetes")
    assert not plans.errors, [str(e) for e in plans.errors]
    parts = [_HEADER.format(n=len(plans.backups))]
    for i, plan in enumerate(plans.backups.values()):
        assert plan.schedule.kind == "every" and plan.retention is not None
        doc = (
            f"### Stash backup\n\n{plan.description}\n\nTrigger by hand for an instant backup; "
            "set `retention` to false to keep every snapshot this time."
        )
        pods = _pod_task("backup", plan.backup, light)
        pods += _pod_task("retention", plan.retention, light)
        parts.append(
            f"""
with DAG(
    dag_id={plan.dag_id!r},
    schedule=DeltaTriggerTimetable(timedelta(seconds={plan.schedule.value})),
    start_date=START,
    catchup=False,
    max_active_runs=1,
    tags={list(plan.tags)!r},
    doc_md={doc!r},
    description={plan.description[:200]!r},
    is_paused_upon_creation=False,
    default_args=DEFAULT_ARGS,
    params={{
        "retention": Param(
            True, type="boolean", description="Apply the retention policy after this backup"
        )
    }},
) as dag_{i:05d}:
{pods}    verify = PythonSensor(
        task_id="verify",
        python_callable=verify_snapshots,
        poke_interval=5,
        timeout=600,
        mode="poke",
        trigger_rule="none_failed",
    )
    status = PythonOperator(
        task_id="update_status", python_callable=update_status, trigger_rule="all_done"
    )
    backup >> retention >> verify >> status
"""
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "handwritten_dags.py").write_text("".join(parts))
    return len(plans.backups)


# Every Airflow module the shard file imports beyond what ``DagBag`` itself loaded, found
# by comparing ``sys.modules`` before and after a one-DAG parse (the factory's, the
# operators' and the sensors' imports): what a worker pays for Airflow whoever wrote the
# DAG file.
AIRFLOW_IMPORTS = '''"""Airflow's own imports on the one-DAG path (generated); no DAG here."""

from airflow import __version__
from airflow.sdk import (
    DAG,
    BaseOperator,
    BaseSensorOperator,
    DeltaTriggerTimetable,
    Param,
    PokeReturnValue,
    TriggerRule,
    get_parsing_context,
)
'''


# --------------------------------------------------------------------------- measurement


def child(folder: str, expect: int, profile: str | None) -> None:
    """Runs in a fresh interpreter: import Airflow, parse ``folder`` once, report."""
    import resource

    t0 = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag

    t1 = time.perf_counter()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t2 = time.perf_counter()
    bag = DagBag(dag_folder=folder, collect_dags=True)
    t3 = time.perf_counter()
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm = next(
        (int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:")), 0
    )
    result = {
        "import_s": t1 - t0,
        "parse_s": t3 - t2,
        "rss_before_mib": rss_before / 1024,
        "peak_mib": peak / 1024,
        "vmhwm_mib": hwm / 1024,
        "dags": len(bag.dags),
        "tasks": sum(len(d.tasks) for d in bag.dags.values()),
        "import_errors": {k: v[-300:] for k, v in bag.import_errors.items()},
    }
    if expect >= 0 and len(bag.dags) != expect:
        result["error"] = f"expected {expect} DAGs, got {len(bag.dags)}"
    print("RESULT " + json.dumps(result))


def measure(
    folder: Path,
    env: dict[str, str],
    expect: int,
    repeat: int,
    profile: Path | None = None,
    wipe: Path | None = None,
    prepare: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """``wipe``: a folder emptied before each run (the state: index and caches), once
    no index build runs there; ``prepare``: called before each run."""
    runs = []
    # The first run is a warm-up (byte-code caches, page cache); a profiled run (slower
    # under cProfile) comes last and is not counted.
    for i in range(repeat + 1 + bool(profile)):
        prof = str(profile) if profile and i == repeat + 1 else None
        if wipe is not None:
            wait_for_build(wipe)
            shutil.rmtree(wipe, ignore_errors=True)
        if prepare is not None:
            prepare()
        cmd = [sys.executable, __file__, "--child", str(folder), "--expect", str(expect)]
        if prof:
            cmd += ["--child-profile", prof]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if out.returncode != 0 or line is None:
            raise SystemExit(f"child failed ({out.returncode}):\n{out.stderr[-3000:]}")
        result = json.loads(line.removeprefix("RESULT "))
        if "error" in result:
            raise SystemExit(f"{folder}: {result['error']}: {result['import_errors']}")
        if 0 < i <= repeat:
            runs.append(result)
    return {
        "parse_s": statistics.median(r["parse_s"] for r in runs),
        "import_s": statistics.median(r["import_s"] for r in runs),
        "peak_mib": statistics.median(r["peak_mib"] for r in runs),
        "vmhwm_mib": statistics.median(r["vmhwm_mib"] for r in runs),
        "rss_before_mib": statistics.median(r["rss_before_mib"] for r in runs),
        "dags": runs[0]["dags"],
        "tasks": runs[0]["tasks"],
        "import_errors": runs[0]["import_errors"],
        "all_parse_s": [round(r["parse_s"], 3) for r in runs],
    }


KINDS = ("factory", "cold", "shards", "minimal", "baseline", "light", "context", "airflow")
SHARDS = 8


def shard_file(dag_id: str) -> Path:
    from stash_plugin.dagindex import shard_of

    return DAGS / f"stash_dags_{shard_of(dag_id, SHARDS):02d}.py"


def wait_for_build(state: Path) -> None:
    """Until no DAG index build holds the lock in ``state`` (a shard file may have
    started one in the background); fcntl here, so that this process stays small."""
    lock = state / "dag-index.lock"
    if not lock.exists():
        return
    with lock.open("rb") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH)


def measure_shards(
    env: dict[str, str], repeat: int, state: Path, manifests: Path
) -> dict[str, Any]:
    """Each shard file parsed alone (as the DAG processor does, one process per file):
    the first one with no index and no parse cache, then every shard with the index
    fresh, then shard 00 after one target's file changed (the index of the same key is
    stale, the parse cache warm: the DAG processor's parse after an edit nobody ran
    ``stash index`` for)."""
    shards = [DAGS / f"stash_dags_{i:02d}.py" for i in range(SHARDS)]
    first = measure(shards[0], env, -1, repeat, wipe=state)
    wait_for_build(state)
    # The index as the next full parse finds it (built here if no build wrote it).
    subprocess.run([sys.executable, "-m", "stash_plugin.cli", "index"], env=env, check=True)  # noqa: S603
    each = [measure(path, env, -1, repeat) for path in shards]
    edited = next((manifests / "targets").glob("*.yaml"))

    def edit() -> None:
        wait_for_build(state)
        os.utime(edited)  # a new mtime: the index is stale, the file is read again

    stale = measure(shards[0], env, -1, repeat, prepare=edit)
    wait_for_build(state)
    return {
        "first_s": first["parse_s"],
        "first_peak_mib": first["peak_mib"],
        "stale_s": stale["parse_s"],
        "stale_peak_mib": stale["peak_mib"],
        "all_first_s": first["all_parse_s"],
        "all_stale_s": stale["all_parse_s"],
        "slowest_s": max(r["parse_s"] for r in each),
        "total_s": sum(r["parse_s"] for r in each),
        "peak_mib": max(r["peak_mib"] for r in each),
        "dags": sum(r["dags"] for r in each),
        "each_s": [round(r["parse_s"], 3) for r in each],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="10,1000,5000,10000")
    ap.add_argument("--context-sizes", default="10,1000,5000,10000")
    ap.add_argument("--baseline-sizes", default="10,1000", help="sizes that get the full baselines")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="keep the generated manifests and DAG files here")
    ap.add_argument("--profile", type=Path, help="write cProfile stats of the last runs here")
    ap.add_argument("--only", choices=KINDS, action="append")
    ap.add_argument(
        "--snapshot",
        action="store_true",
        help="read the N targets from one cluster snapshot file (as `stash sync` writes it)\n"
        "instead of a folder of N+1 files (the freshness check stats one file)",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--expect", type=int, default=-1, help=argparse.SUPPRESS)
    ap.add_argument("--child-profile", help=argparse.SUPPRESS)
    ap.add_argument("--gen-baseline", nargs=2, type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--gen-light", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--gen-minimal", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.gen_minimal:
        ids = [f"dag-{i:05d}" for i in range(int(args.gen_minimal[0]))]
        write_minimal_file(ids, Path(args.gen_minimal[1]))
        return
    if args.gen_baseline:
        write_baseline_file(*args.gen_baseline, light=args.gen_light)
        return
    if args.child:
        child(args.child, args.expect, args.child_profile)
        return

    sizes = [int(s) for s in args.sizes.split(",") if s]
    context_sizes = {int(s) for s in args.context_sizes.split(",") if s}
    baseline_sizes = {int(s) for s in args.baseline_sizes.split(",") if s}
    only = set(args.only or KINDS)
    work = args.keep or Path(tempfile.mkdtemp(prefix="stash-bench-parse-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    home = work / "airflow-home"
    home.mkdir(exist_ok=True)
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW__STASH__", "_AIRFLOW_PARSING_CONTEXT"))
    }
    base_env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "3600",
            # What Airflow's default dagbag_import_timeout (30 s) gives: a shard file waits
            # this long for an index build (the timeout above only lets slow runs finish).
            "AIRFLOW__STASH__INDEX_WAIT": "10",
            "AIRFLOW__STASH__RUNTIME": "kubernetes",
            "AIRFLOW__STASH__STATE_DIR": str(work / "state"),
            "AIRFLOW__STASH__TASK_RETRIES": "2",
            "PYTHONDONTWRITEBYTECODE": "",
        }
    )
    base_env.pop("PYTHONDONTWRITEBYTECODE")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, work dir {work}")
    rows = []
    try:
        for n in sizes:
            manifests = work / f"manifests-{n}"
            dag_ids = write_manifests(manifests, n)
            source = write_snapshot(manifests) if args.snapshot else manifests
            env = {**base_env, "AIRFLOW__STASH__MANIFESTS_DIR": str(source)}
            row: dict[str, Any] = {"n": n}

            def prof(name: str, n: int = n) -> Path | None:
                return args.profile / f"{name}-{n}.prof" if args.profile else None

            state = work / "state"
            if "factory" in only:
                # Steady state: the warm-up run wrote the index, the measured runs read it.
                row["factory"] = measure(DAGS, env, n + 1, args.repeat, prof("factory"))
                print(f"N={n} factory  {json.dumps(row['factory'])}", flush=True)
            if "cold" in only:
                # No index, no parse cache: the whole folder planned from the manifests.
                row["cold"] = measure(DAGS, env, n + 1, args.repeat, prof("cold"), wipe=state)
                print(f"N={n} cold     {json.dumps(row['cold'])}", flush=True)
            if "shards" in only:
                row["shards"] = measure_shards(env, args.repeat, state, manifests)
                print(f"N={n} shards   {json.dumps(row['shards'])}", flush=True)
            if "minimal" in only:
                minimal = work / f"minimal-{n}"
                gen = [sys.executable, __file__, "--gen-minimal", str(n), str(minimal)]
                subprocess.run(gen, env=env, check=True)  # noqa: S603 - fixed argv
                row["minimal"] = measure(minimal, env, n, args.repeat, prof("minimal"))
                print(f"N={n} minimal  {json.dumps(row['minimal'])}", flush=True)
            for variant in ("baseline", "light"):
                if variant not in only or n not in baseline_sizes:
                    continue
                handwritten = work / f"handwritten-{variant}-{n}"
                # In a child: planning 5,000 targets here would grow this process, and a
                # child's ru_maxrss starts from its parent's peak (vfork + exec).
                gen = [sys.executable, __file__, "--gen-baseline", str(manifests), str(handwritten)]
                gen += ["--gen-light"] if variant == "light" else []
                subprocess.run(gen, env=env, check=True)  # noqa: S603 - fixed argv
                row[variant] = measure(handwritten, env, n, args.repeat, prof(variant))
                print(f"N={n} {variant:<8} {json.dumps(row[variant])}", flush=True)
            if "context" in only and n in context_sizes:
                # What a worker parses before one task: the DAG's own shard file, with the
                # parsing context naming the DAG; the index is fresh (written by a full
                # parse), as it is after the DAG processor's first pass.
                wanted = dag_ids[n // 2]
                cenv = {**env, "_AIRFLOW_PARSING_CONTEXT_DAG_ID": wanted}
                subprocess.run(  # noqa: S603 - fixed argv
                    [sys.executable, __file__, "--child", str(DAGS)], env=env, check=True
                )
                row["context"] = measure(shard_file(wanted), cenv, 1, args.repeat, prof("context"))
                print(f"N={n} context  {json.dumps(row['context'])}", flush=True)
            if "airflow" in only and n in context_sizes:
                imports = work / "airflow_imports.py"
                imports.write_text(AIRFLOW_IMPORTS)
                row["airflow"] = measure(imports, env, 0, args.repeat, prof("airflow"))
                print(f"N={n} airflow  {json.dumps(row['airflow'])}", flush=True)
            rows.append(row)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_table(rows)


def print_scale_table(rows: list[dict[str, Any]]) -> None:
    def get(row: dict[str, Any], key: str, field: str, fmt: str) -> str:
        return format(row[key][field], fmt) if key in row and field in row[key] else "-"

    print()
    print(
        "Scale (median of runs; s = parse time after imports; peak = max RSS of the parsing "
        "process, incl. Airflow)"
    )
    head = (
        f"{'targets':>7} | {'folder s':>8} {'peak':>5} | {'cold s':>7} {'peak':>5} | "
        f"{'minimal s':>9} {'ratio':>5} | {'slowest shard':>13} {'sum':>6} {'peak':>5} | "
        f"{'1st shard':>9} {'peak':>5} | {'stale shard':>11} {'peak':>5} | "
        f"{'one DAG s':>9} {'peak':>5} {'vs 10':>5} | {'airflow s':>9} {'beyond':>6}"
    )
    print(head)
    print("-" * len(head))
    first = next((r for r in rows if "context" in r), None)
    for r in rows:
        ratio = "-"
        if "factory" in r and "minimal" in r:
            ratio = f"{r['factory']['parse_s'] / r['minimal']['parse_s']:.2f}"
        vs = "-"
        if first is not None and "context" in r:
            vs = f"{r['context']['parse_s'] / first['context']['parse_s']:.2f}"
        beyond = "-"
        if "context" in r and "airflow" in r:
            beyond = f"{r['context']['parse_s'] - r['airflow']['parse_s']:.3f}"
        print(
            f"{r['n']:>7} | {get(r, 'factory', 'parse_s', '8.2f')} "
            f"{get(r, 'factory', 'peak_mib', '5.0f')} | {get(r, 'cold', 'parse_s', '7.2f')} "
            f"{get(r, 'cold', 'peak_mib', '5.0f')} | {get(r, 'minimal', 'parse_s', '9.2f')} "
            f"{ratio:>5} | {get(r, 'shards', 'slowest_s', '13.2f')} "
            f"{get(r, 'shards', 'total_s', '6.2f')} {get(r, 'shards', 'peak_mib', '5.0f')} | "
            f"{get(r, 'shards', 'first_s', '9.2f')} {get(r, 'shards', 'first_peak_mib', '5.0f')}"
            f" | {get(r, 'shards', 'stale_s', '11.2f')} "
            f"{get(r, 'shards', 'stale_peak_mib', '5.0f')}"
            f" | {get(r, 'context', 'parse_s', '9.3f')} {get(r, 'context', 'peak_mib', '5.0f')} "
            f"{vs:>5} | {get(r, 'airflow', 'parse_s', '9.3f')} {beyond:>6}"
        )
    print(
        "folder = DagBag of dags/ in one process, index fresh; cold = the same with no index "
        "and no parse cache;\nminimal = hand-written 2 KubernetesPodOperator + 2 PythonOperator "
        "DAGs (ratio = folder / minimal);\nshards = each stash_dags_NN.py alone, index fresh; "
        "1st shard = one shard with no index and no parse cache; stale shard = one shard\n"
        "after one file changed (index of the same key stale, parse cache warm);\n"
        "one DAG = the DAG's shard file with the parsing context set, index fresh "
        "(vs 10 = ratio to the smallest size);\nairflow = a file importing only the Airflow "
        "modules the one-DAG parse imports (beyond = one DAG - airflow)"
    )


def print_table(rows: list[dict[str, Any]]) -> None:
    print_scale_table(rows)
    if not any("baseline" in r for r in rows):
        return

    def cell(row: dict[str, Any], key: str, field: str, fmt: str) -> str:
        return format(row[key][field], fmt) if key in row else "-"

    def ratio(row: dict[str, Any], field: str, base: str = "baseline") -> str:
        if "factory" not in row or base not in row:
            return "-"
        return f"{row['factory'][field] / row[base][field]:.2f}"

    head = (
        f"{'targets':>7} | {'factory s':>9} {'peak MiB':>8} | {'baseline s':>10} "
        f"{'peak MiB':>8} | {'time ratio':>10} {'mem ratio':>9} | {'one DAG s':>9} "
        f"{'peak MiB':>8}"
    )
    print()
    print("DagBag parse (median of runs; peak = max RSS of the parsing process, incl. Airflow)")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['n']:>7} | {cell(r, 'factory', 'parse_s', '9.2f')} "
            f"{cell(r, 'factory', 'peak_mib', '8.0f')} | {cell(r, 'baseline', 'parse_s', '10.2f')} "
            f"{cell(r, 'baseline', 'peak_mib', '8.0f')} | {ratio(r, 'parse_s'):>10} "
            f"{ratio(r, 'peak_mib'):>9} | {cell(r, 'context', 'parse_s', '9.3f')} "
            f"{cell(r, 'context', 'peak_mib', '8.0f')}"
        )
    both = [r for r in rows if "factory" in r and "baseline" in r]
    if len(both) >= 2:
        a, b = both[-2], both[-1]
        per = {
            k: (b[k]["parse_s"] - a[k]["parse_s"]) / (b["n"] - a["n"]) * 1000
            for k in ("factory", "baseline")
        }
        print(
            f"Marginal cost per DAG ({a['n']} -> {b['n']} targets): factory "
            f"{per['factory']:.2f} ms, baseline {per['baseline']:.2f} ms"
        )
    if any("light" in r for r in rows):
        print()
        print(
            "Lower bound, not equivalent: hand-written DAGs whose pods get plain env values "
            "only (no secretKeyRef, no volumes)"
        )
        head = (
            f"{'targets':>7} | {'light s':>9} {'peak MiB':>8} | "
            f"{'factory/light time':>18} {'mem':>6}"
        )
        print(head)
        print("-" * len(head))
        for r in rows:
            print(
                f"{r['n']:>7} | {cell(r, 'light', 'parse_s', '9.2f')} "
                f"{cell(r, 'light', 'peak_mib', '8.0f')} | {ratio(r, 'parse_s', 'light'):>18} "
                f"{ratio(r, 'peak_mib', 'light'):>6}"
            )
    if rows and "factory" in rows[0]:
        print(
            f"(RSS after importing airflow.dag_processing.dagbag, before parsing: "
            f"{rows[0]['factory']['rss_before_mib']:.0f} MiB)"
        )


if __name__ == "__main__":
    main()
