"""Nothing waits forever: no step gets a terminal or an open standard input, and every
kind of step has a time limit after which the run fails by name, leaving no restic
lock behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from stashtest import (
    PASSWORD,
    deployment_doc,
    repository_doc,
    restic_doc,
    run_dag,
    secret_doc,
    task_states,
    write_manifests,
)

NS = "demo"

CHILD = textwrap.dedent(
    """
    import sys
    from stash_plugin.plan.model import Step
    from stash_plugin.runtime.local import run_process

    script = (
        "(exec 3</dev/tty) 2>/dev/null && echo terminal: yes || echo terminal: no; "
        "cat; echo stdin: closed"
    )
    step = Step("probe", ("bash", "-c", script), "demo", "local")
    run_process(step, {}, print)
    """
)


def test_a_step_gets_no_terminal_and_no_standard_input(tmp_path: Path) -> None:
    """The step's ``cat`` would wait forever on the worker's standard input (an open
    pipe here, as under a supervisor); it must see end-of-file at once."""
    worker = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,  # kept open and never written: a step reading it would hang
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert worker.stdout is not None
    try:
        # Read without closing our end of its standard input (communicate() would).
        worker.wait(timeout=60)
        out = worker.stdout.read()
    except subprocess.TimeoutExpired:
        worker.kill()
        pytest.fail("the step waited for input on the worker's standard input")
    finally:
        worker.kill()
        worker.stdin.close()  # type: ignore[union-attr]
    assert worker.returncode == 0, out
    assert "terminal: no" in out and "stdin: closed" in out


def test_every_kind_of_step_has_a_limit_from_the_settings(
    stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from stash_plugin.factory import build_dags
    from stash_plugin.settings import load_settings

    monkeypatch.setenv("AIRFLOW__STASH__BACKUP_TIMEOUT", "1h30m")
    monkeypatch.setenv("AIRFLOW__STASH__VERIFY_TIMEOUT", "90")
    root = stash_env["root"]
    write_manifests(
        stash_env["manifests"],
        [
            secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
            deployment_doc("app", NS, root / "data"),
            repository_doc(
                "repo", NS, {"local": {"mountPath": "/r", "hostPath": {"path": str(root)}}}
            ),
            restic_doc("rs", NS, "repo", "app"),
        ],
    )
    dags, errors = build_dags(load_settings())
    assert errors == []
    dag = dags["stash-backup.demo.rs.deployment.app"]
    limits = {t.task_id: t.execution_timeout.total_seconds() for t in dag.tasks}
    assert limits == {
        "backup": 5400,
        "retention": 7200,
        "verify": 90,
        "update_status": 600,
    }
    assert dag.get_task("verify").timeout == 90


@pytest.mark.parametrize("value", ["soon", "-5m", "0"])
def test_a_bad_limit_is_a_named_error(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from stash_plugin.settings import load_settings

    monkeypatch.setenv("AIRFLOW__STASH__RESTORE_TIMEOUT", value)
    with pytest.raises(ValueError, match=r"\[stash\] restore_timeout"):
        load_settings()


# A restic that never finishes a backup but holds the repository's lock meanwhile: it
# backs up an endless stream of zeros (any other command is the real one).
ENDLESS_RESTIC = """#!/bin/sh
for arg in "$@"; do
  if [ "$arg" = backup ]; then
    exec restic backup --json --quiet --stdin --stdin-filename endless --host app < /dev/zero
  fi
done
exec restic "$@"
"""


def _restic(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": PASSWORD}
    return subprocess.run(["restic", *args], env=env, capture_output=True, text=True, check=False)


@pytest.mark.slow
def test_a_backup_over_its_limit_fails_by_name_and_leaves_no_lock(
    stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch, airflow_db: None
) -> None:
    from stash_plugin.factory import build_dags
    from stash_plugin.settings import load_settings

    root = stash_env["root"]
    (root / "data").mkdir()
    (root / "data" / "file").write_text("x")
    repo = root / "repository" / "volumes" / "deployment" / "app"
    repo.parent.mkdir(parents=True)
    assert _restic(repo, "init").returncode == 0
    wrapper = root / "endless-restic"
    wrapper.write_text(ENDLESS_RESTIC)
    wrapper.chmod(0o755)
    monkeypatch.setenv("STASH_RESTIC_BINARY", str(wrapper))
    monkeypatch.setenv("AIRFLOW__STASH__BACKUP_TIMEOUT", "4s")
    backend = {"local": {"mountPath": "/r", "hostPath": {"path": str(root / "repository")}}}
    write_manifests(
        stash_env["manifests"],
        [
            secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
            deployment_doc("app", NS, root / "data"),
            repository_doc("repo", NS, backend),
            restic_doc("rs", NS, "repo", "app"),
        ],
    )
    dags, _ = build_dags(load_settings())
    started = time.monotonic()
    run = run_dag(dags["stash-backup.demo.rs.deployment.app"])
    took = time.monotonic() - started
    states = task_states(run)
    assert states["backup"] == "failed" and states["update_status"] == "failed"
    assert took < 90, took  # 4 s of limit, a few seconds to stop, Airflow's own overhead
    status = json.loads((stash_env["state"] / "repositories" / NS / "repo.json").read_text())
    failure = status["status"]["backupRepos"][0]["lastFailure"]
    assert failure.startswith("backup: timed out after 0:00:04"), failure
    # restic was interrupted (SIGINT), so it removed its own lock; nothing still runs.
    assert _restic(repo, "list", "locks", "--no-lock").stdout.strip() == ""
    leftovers = subprocess.run(
        ["pgrep", "-f", "stdin-filename endless"], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout.strip() == ""
    assert _restic(repo, "check").returncode == 0
