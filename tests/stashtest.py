"""Test helpers: data trees to back up, tree comparison, manifests, whole DAG runs."""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stash_plugin.manifests import (  # noqa: F401 - the builders tests import from here
    appbinding_doc,
    backup_template_doc,
    cluster_recovery_doc,
    cluster_restic_doc,
    database_recovery_doc,
    database_restic_doc,
    deployment_doc,
    recovery_doc,
    repository_doc,
    restic_doc,
    secret_doc,
    write_manifests,
)
from stash_plugin.protocol import is_record

PASSWORD = "s3cr3t-Restic-Pa55word-do-not-leak"


def make_tree(root: Path, seed: int = 1, small_files: int = 2000) -> Path:
    """Random files, thousands of small files, nested dirs, symlinks and odd modes."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(small_files):
        d = root / "small" / f"d{i % 37:02d}" / f"e{i % 5}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.txt").write_bytes(rng.randbytes(rng.randint(0, 300)))
    big = root / "big"
    big.mkdir(exist_ok=True)
    for i in range(3):
        (big / f"blob{i}.bin").write_bytes(rng.randbytes(rng.randint(200_000, 900_000)))
    deep = root.joinpath(*[f"level{i}" for i in range(12)])
    deep.mkdir(parents=True, exist_ok=True)
    (deep / "bottom.txt").write_text("deep down\n")
    (root / "exec.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "exec.sh", 0o755)
    (root / "private.key").write_text("not a real key\n")
    os.chmod(root / "private.key", 0o600)
    (root / "readonly").mkdir(exist_ok=True)
    (root / "readonly" / "ro.txt").write_text("read only\n")
    os.chmod(root / "readonly" / "ro.txt", 0o444)
    os.chmod(root / "readonly", 0o750)
    (root / "empty-dir").mkdir(exist_ok=True)
    (root / "empty-file").write_bytes(b"")
    (root / "unicode-名前 with space.txt").write_text("ünïcödé\n")
    os.symlink("exec.sh", root / "link-to-exec")
    os.symlink("small/d00", root / "link-to-dir")
    os.symlink("/nonexistent/target", root / "dangling-link")
    return root


def tree_state(root: Path, owners: bool = False) -> dict[str, tuple[Any, ...]]:
    """Everything a byte-identical restore must reproduce: type, mode, content, link target
    (and with ``owners``, each entry's uid and gid)."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            st = p.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode)
            else:
                out[rel] = ("file", mode, hashlib.sha256(p.read_bytes()).hexdigest())
            if owners:
                out[rel] += (st.st_uid, st.st_gid)
    return out


def run_dag(dag: Any, conf: dict[str, Any] | None = None) -> Any:
    """Run a DAG in-process the Airflow 3.3 way: serialise it, then ``dag.test()``."""
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.dagbundle import DagBundleModel
    from airflow.utils.session import create_session

    with create_session() as session:
        session.merge(DagBundleModel(name="stash-tests"))
    bag = DagBag(dag_folder=os.devnull, collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "stash-tests", None)
    return dag.test(logical_date=datetime.now(UTC), run_conf=conf)


def task_states(dagrun: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dagrun.get_task_instances()}


def green(dagrun: Any) -> bool:
    """The run a user sees as good: every task succeeded or was skipped (retention is
    skipped while it can remove nothing) and the status was written."""
    states = task_states(dagrun)
    return set(states.values()) <= {"success", "skipped"} and states["update_status"] == "success"


def build_dag(dag_id: str) -> Any:
    """The DAG ``dag_id`` as the factory builds it from ``[stash]`` settings now."""
    from stash_plugin.factory import build_dags
    from stash_plugin.settings import load_settings

    dags, errors = build_dags(load_settings())
    assert dag_id in dags, [str(e) for e in errors]
    return dags[dag_id]


def xcom(dagrun: Any, task_id: str, key: str = "return_value") -> Any:
    """What ``task_id`` of ``dagrun`` pushed under ``key`` (None when nothing)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == dagrun.dag_id,
                XComModel.run_id == dagrun.run_id,
                XComModel.task_id == task_id,
                XComModel.key == key,
            )
        ).first()
        if row is None:
            return None
        value = row.value
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:  # a plain text value (a failed task's reason)
            return value
    return value


def restic_snapshots(
    repo: Path, password: str = PASSWORD, *, missing_ok: bool = False, records: bool = False
) -> list[dict[str, Any]]:
    """Every backup snapshot of the repository at ``repo``, as restic lists them (none,
    with ``missing_ok``, when no repository was ever made there). Stash's record of the
    Repository object (tag ``stash-repository``) is not a backup: left out unless
    ``records``."""
    if missing_ok and not (repo / "config").exists():
        return []
    env = {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": password}
    out = subprocess.run(
        ["restic", "snapshots", "--json"], env=env, capture_output=True, text=True, check=True
    )
    snaps: list[dict[str, Any]] = json.loads(out.stdout)
    return [s for s in snaps if records or not is_record(s)]


# --------------------------------------------------------------------------- metrics

MAPPING_FILE = Path(__file__).resolve().parent.parent / "monitoring" / "statsd-mapping.yml"
STATSD_KINDS = {"c": "counter", "g": "gauge", "ms": "observer"}


def statsd_mappings() -> list[dict[str, Any]]:
    """The rules of ``monitoring/statsd-mapping.yml``."""
    import yaml

    return list(yaml.safe_load(MAPPING_FILE.read_text())["mappings"])


def _glob(pattern: str) -> Any:
    """statsd_exporter's glob: ``*`` is one dot-free part of the name."""
    import re

    return re.compile("^" + re.escape(pattern).replace(r"\*", "([^.]+)") + "$")


def map_statsd(name: str, kind: str) -> tuple[str, dict[str, str]] | None:
    """What statsd_exporter makes of metric ``name`` of ``kind`` (counter, gauge,
    observer): the Prometheus name and labels, or None when no rule maps it."""
    found = []
    for rule in statsd_mappings():
        match = _glob(rule["match"]).match(name)
        if match and rule.get("match_metric_type", kind) == kind:
            groups = {f"${i}": g for i, g in enumerate(match.groups(), 1)}
            labels = {k: groups.get(v, v) for k, v in (rule.get("labels") or {}).items()}
            found.append((rule["name"], labels))
    assert len(found) <= 1, f"{name} matches several rules: {found}"
    return found[0] if found else None


def parse_statsd(datagram: str) -> list[tuple[str, float, str]]:
    """``name:value|type`` lines -> (name, value, counter|gauge|observer)."""
    out = []
    for line in datagram.splitlines():
        name, _, rest = line.partition(":")
        value, _, kind = rest.partition("|")
        out.append((name, float(value), STATSD_KINDS[kind.split("|")[0]]))
    return out


# Runs a command in a child of this small launcher and reports the child's own peak
# RSS. Measuring a direct child of pytest would not do: Linux carries the forking
# process's peak into a child's ru_maxrss across exec, and pytest grows large.
_PEAK_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
sys.stderr.write("\\nstash-test-peak-kib %d\\n" % usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""
_PEAK = "stash-test-peak-kib "


def run_with_peak(
    argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 120
) -> tuple[int, str, str, float, float]:
    """Run ``argv``; its exit code, standard output and error, wall seconds and peak RSS
    in MiB. A hang is killed after ``timeout`` (the test fails, never the suite)."""
    import subprocess
    import sys
    import threading
    import time

    out, err = cwd / "child.out", cwd / "child.err"
    start = time.monotonic()
    with out.open("w") as fout, err.open("w") as ferr:
        proc = subprocess.Popen(
            [sys.executable, "-c", _PEAK_LAUNCHER, *argv],
            stdout=fout,
            stderr=ferr,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        killer = threading.Timer(timeout, lambda: os.killpg(proc.pid, 9))
        killer.start()
        code = proc.wait()
        killer.cancel()
    seconds = time.monotonic() - start
    text = err.read_text()
    lines = text.splitlines()
    peak = next((int(ln[len(_PEAK) :]) for ln in reversed(lines) if ln.startswith(_PEAK)), 0)
    text = "\n".join(ln for ln in lines if not ln.startswith(_PEAK)).rstrip("\n") + "\n"
    return code, out.read_text(), text, seconds, peak / 1024
