"""A real Airflow deployment as processes: api-server, scheduler, dag-processor and,
for the CeleryExecutor, ``airflow celery worker``; on a throwaway PostgreSQL.

Used by the executor test and ``benchmarks/scheduler.py``: unlike ``dag.test()``,
tasks here are queued by the scheduler, sent to the executor and run by the Task SDK
supervisor in another process (a Celery worker's, for Celery), talking to the
api-server's execution API: the way a deployment runs them. Airflow refuses the
Local and Celery executors on SQLite, hence PostgreSQL (``dbservers``). Everything
binds 127.0.0.1, lives under one temporary home and is stopped by ``stop()``.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from dbservers import Server, free_port

ROOT = Path(__file__).resolve().parent.parent
DAGS = ROOT / "dags"
DATABASE = "airflow"


def _airflow() -> str:
    """The ``airflow`` next to this interpreter (the project's venv)."""
    import sys

    here = Path(sys.executable).parent / "airflow"
    return str(here) if here.exists() else "airflow"


@dataclass
class Airflow:
    home: Path
    env: dict[str, str]
    db: Server
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def cli(self, *args: str, timeout: float = 300) -> str:
        out = subprocess.run(
            [_airflow(), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if out.returncode:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def start(self, name: str, *args: str) -> None:
        log = (self.home / f"{name}.log").open("wb")
        self._logs.append(log)
        self.procs[name] = subprocess.Popen(
            [_airflow(), *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # stop() ends the component and the children it forked
        )

    def log(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")

    def sql(self, query: str) -> list[list[str]]:
        out = self.db.sql(query, DATABASE)
        return [line.split("\t") for line in out.splitlines() if line]

    def check_running(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = self.log(name)[-3000:]
                raise RuntimeError(f"airflow {name} exited ({proc.returncode}):\n{tail}")

    def wait(self, query: str, until: str, timeout: float, what: str) -> list[list[str]]:
        """Poll the metadata database until ``query``'s first cell reads ``until``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_running()
            rows = self.sql(query)
            if rows and rows[0][0] == until:
                return rows
            time.sleep(0.5)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in self._logs:
            log.close()


def start_airflow(
    home: Path,
    db: Server,
    executor: str,
    stash_env: dict[str, str],
    extra_env: dict[str, str] | None = None,
    worker: tuple[str, ...] = (),
) -> Airflow:
    """Migrate a fresh metadata database and start the components (``worker``: the
    argv of an extra process after ``airflow``, e.g. ``("celery", "worker")``)."""
    home.mkdir(parents=True, exist_ok=True)
    db.sql(f"CREATE DATABASE {DATABASE}")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__EXECUTOR": executor,
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
            f"postgresql+psycopg2://{db.user}:{db.password}@127.0.0.1:{db.port}/{DATABASE}"
        ),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__STASH__TASK_RETRIES": "0",
        # Airflow's own advice for a loaded machine (CI: 2 cores, every component and
        # the agents at once): its 5 s default killed a task whose start request took
        # 10.5 s on a cold api-server.
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
        **stash_env,
        **(extra_env or {}),
    }
    airflow = Airflow(home, env, db)
    try:
        airflow.cli("db", "migrate", timeout=600)
        # The api-server first, answering, before anything can start a task: a worker
        # whose first execution-API call finds no server retries a few times and is
        # then killed (an unpaused DAG's first scheduled run comes at once).
        airflow.start("api-server", "api-server", "--port", str(port), "--host", "127.0.0.1")
        _wait_http(f"http://127.0.0.1:{port}/api/v2/monitor/health", airflow, 180)
        airflow.start("dag-processor", "dag-processor")
        airflow.start("scheduler", "scheduler")
        if worker:
            airflow.start(worker[-1], *worker)
    except BaseException:
        airflow.stop()
        raise
    return airflow


def _wait_http(url: str, airflow: Airflow, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        airflow.check_running()
        try:
            with urllib.request.urlopen(url, timeout=5):  # noqa: S310 - loopback only
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the api-server did not answer {url} within {timeout:.0f} s")
