"""Validation says what would fail at run time: a Stash kind at a wrong apiVersion, an
unknown kind of Stash's group, and a cron expression that never fires are named
errors, through ``stash validate``, the DAG folder parse and a real DAG run. Nothing
of a bad object is run and every other DAG stays.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from stashtest import (
    PASSWORD,
    deployment_doc,
    repository_doc,
    restic_doc,
    restic_snapshots,
    run_dag,
    secret_doc,
    task_states,
    write_manifests,
)
from test_factory import dagbag

from stash_plugin.cli import main

NS = "demo"
GOOD_DAG = "stash-backup.demo.good.deployment.app"
API = "stash.appscode.com/v1alpha1"
Doc = dict[str, Any]


def world(root: Path) -> list[Doc]:
    """A Restic that must keep working next to every hostile object below."""
    return [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        deployment_doc("app", NS, root / "data"),
        repository_doc(
            "repo", NS, {"local": {"mountPath": "/repo", "hostPath": {"path": str(root / "repo")}}}
        ),
        restic_doc("good", NS, "repo", "app"),
    ]


def hostile_restic(name: str, **top: Any) -> Doc:
    """A Restic of the good world, written wrongly: top-level keys replaced (None: deleted)."""
    doc = restic_doc(name, NS, "repo", "app")
    for key, value in top.items():
        if value is None:
            del doc[key]
        else:
            doc[key] = value
    return doc


def with_schedule(name: str, schedule: str) -> Doc:
    return restic_doc(name, NS, "repo", "app", schedule=schedule)


def hostile_repository(name: str, **top: Any) -> Doc:
    doc = repository_doc(name, NS, {"local": {"mountPath": "/r", "hostPath": {"path": "/tmp/r"}}})
    doc.update(top)
    return doc


# name -> (document, the error line that must name it)
HOSTILE: dict[str, tuple[Callable[[str], Doc], str]] = {
    "unknown-kind": (
        lambda n: hostile_restic(n, kind="Restics"),
        "Restics demo/unknown-kind: kind: 'Restics' is not a kind of stash.appscode.com "
        "(known kinds: BackupAgent, BackupTemplate, Recovery, Repository, Restic)",
    ),
    "lower-case-kind": (
        lambda n: hostile_restic(n, kind="restic"),
        "restic demo/lower-case-kind: kind: 'restic' is not a kind of stash.appscode.com",
    ),
    "newer-stash-kind": (
        lambda n: hostile_restic(
            n, kind="BackupConfiguration", apiVersion="stash.appscode.com/v1beta1"
        ),
        "BackupConfiguration demo/newer-stash-kind: kind: 'BackupConfiguration' is not a kind",
    ),
    "no-api-version": (
        lambda n: hostile_restic(n, apiVersion=None),
        "Restic demo/no-api-version: apiVersion: missing: a Restic needs apiVersion " + API,
    ),
    "empty-api-version": (
        lambda n: hostile_restic(n, apiVersion=""),
        "Restic demo/empty-api-version: apiVersion: '' is not stash.appscode.com",
    ),
    "core-api-version": (
        lambda n: hostile_restic(n, apiVersion="v1"),
        "Restic demo/core-api-version: apiVersion: 'v1' is not stash.appscode.com",
    ),
    "number-api-version": (
        lambda n: hostile_restic(n, apiVersion=42),
        "Restic demo/number-api-version: apiVersion: 42 is not stash.appscode.com",
    ),
    "other-version": (
        lambda n: hostile_restic(n, apiVersion="stash.appscode.com/v1beta1"),
        "Restic demo/other-version: apiVersion: 'stash.appscode.com/v1beta1' is not served; "
        "Restic is " + API,
    ),
    "group-only": (
        lambda n: hostile_restic(n, apiVersion="stash.appscode.com"),
        "Restic demo/group-only: apiVersion: 'stash.appscode.com' is not served",
    ),
    "group-in-capitals": (
        lambda n: hostile_restic(n, apiVersion="Stash.AppsCode.com/v1alpha1"),
        "Restic demo/group-in-capitals: apiVersion: 'Stash.AppsCode.com/v1alpha1' is not served",
    ),
    "trailing-path": (
        lambda n: hostile_restic(n, apiVersion=API + "/extra"),
        "Restic demo/trailing-path: apiVersion: 'stash.appscode.com/v1alpha1/extra' is not served",
    ),
    "repository-no-api-version": (
        lambda n: {k: v for k, v in hostile_repository(n).items() if k != "apiVersion"},
        "Repository demo/repository-no-api-version: apiVersion: missing",
    ),
    "february-30": (
        lambda n: with_schedule(n, "0 0 30 2 *"),
        "Restic demo/february-30: spec.schedule: '0 0 30 2 *' never fires",
    ),
    "april-31": (
        lambda n: with_schedule(n, "0 0 31 4 *"),
        "Restic demo/april-31: spec.schedule: '0 0 31 4 *' never fires",
    ),
    "short-months-31": (
        lambda n: with_schedule(n, "0 0 31 2,4,6,9,11 *"),
        "Restic demo/short-months-31: spec.schedule: '0 0 31 2,4,6,9,11 *' never fires",
    ),
    "every-5-min-on-feb-30-31": (
        lambda n: with_schedule(n, "*/5 * 30-31 2 *"),
        "Restic demo/every-5-min-on-feb-30-31: spec.schedule: '*/5 * 30-31 2 *' never fires",
    ),
    "november-31-named-month": (
        lambda n: with_schedule(n, "59 23 31 NOV *"),
        "Restic demo/november-31-named-month: spec.schedule: '59 23 31 NOV *' never fires",
    ),
}

# Schedules that look odd but do fire: they must make a DAG, not an error.
RARE_BUT_REAL = {
    "leap-day": "0 0 29 2 *",
    "feb-30-or-mondays": "0 0 30 2 1",  # cron: day of month OR day of week
    "last-day-of-feb": "0 0 L 2 *",
    "31st-of-odd-months": "0 0 31 */2 *",
}

# Not Stash's: ignored, neither an error nor a DAG.
FOREIGN: list[Doc] = [
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": NS}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "namespace": NS}},
    {  # KubeStash's Repository, in a cluster that runs both
        "apiVersion": "storage.kubestash.com/v1alpha1",
        "kind": "Repository",
        "metadata": {"name": "kubestash-repo", "namespace": NS},
        "spec": {"anything": True},
    },
    {
        "apiVersion": "example.com/v1",
        "kind": "Restic",
        "metadata": {"name": "someone-elses", "namespace": NS},
    },
]


def hostile_docs() -> list[Doc]:
    return [make(name) for name, (make, _) in HOSTILE.items()]


def rare_docs() -> list[Doc]:
    return [with_schedule(name, schedule) for name, schedule in RARE_BUT_REAL.items()]


def rare_dag(name: str) -> str:
    return f"stash-backup.demo.{name}.deployment.app"


# ------------------------------------------------------------------ stash validate


@pytest.mark.parametrize("name", list(HOSTILE))
def test_validate_names_each_hostile_object(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, expected = HOSTILE[name]
    folder = write_manifests(tmp_path / "m", [*world(tmp_path), *FOREIGN, make(name)])
    assert main(["validate", str(folder)]) == 1
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert errors[0].startswith("error: " + expected), errors[0]
    assert errors[0].endswith("(all.yaml#9)")  # the file and document are named
    assert "1 backup DAG(s), 0 recovery DAG(s), 1 error(s)" in out  # the good one stays


def test_validate_plans_rare_schedules_and_ignores_foreign_kinds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_manifests(tmp_path / "m", [*world(tmp_path), *FOREIGN, *rare_docs()])
    assert main(["validate", str(folder)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert f"{1 + len(RARE_BUT_REAL)} backup DAG(s), 0 recovery DAG(s), 0 error(s)" in out
    assert main(["plan", str(folder)]) == 0
    out, _ = capsys.readouterr()
    for name, schedule in RARE_BUT_REAL.items():
        assert f"{rare_dag(name)}  schedule=cron:{schedule}" in out


def test_stash_validate_command_exits_1_naming_them_all(tmp_path: Path) -> None:
    """The installed ``stash`` command, as an administrator runs it."""
    folder = write_manifests(tmp_path / "m", [*world(tmp_path), *FOREIGN, *hostile_docs()])
    done = subprocess.run(
        ["stash", "validate", str(folder)],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    assert done.returncode == 1
    for _, expected in HOSTILE.values():
        assert "error: " + expected in done.stderr
    assert f"1 backup DAG(s), 0 recovery DAG(s), {len(HOSTILE)} error(s)" in done.stdout


# ------------------------------------------------------------------ DAG folder parse


def test_dag_folder_parse_names_every_hostile_object_and_keeps_the_rest(
    stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = [*world(stash_env["root"]), *FOREIGN, *rare_docs(), *hostile_docs()]
    bag = dagbag(write_manifests(stash_env["manifests"], docs), monkeypatch)
    errors = {Path(f).name: text for f, text in bag.import_errors.items()}
    assert set(errors) == {"stash_errors.py"}, errors  # the shard files import cleanly
    for _, expected in HOSTILE.values():
        assert expected in errors["stash_errors.py"]
    backups_and_recoveries = {d for d in bag.dags if not d.startswith("stash-maintenance.")}
    assert backups_and_recoveries == {GOOD_DAG, *map(rare_dag, RARE_BUT_REAL)}
    for name in RARE_BUT_REAL:  # the scheduler finds their next run
        assert next_run(bag.dags[rare_dag(name)]) is not None, name


def next_run(dag: Any) -> Any:
    """What the scheduler asks of a DAG it has just parsed: when does it run next?"""
    import pendulum
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import TimeRestriction

    scheduled = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    return scheduled.timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=pendulum.now("UTC"), latest=None, catchup=False),
    )


def test_why_a_never_firing_cron_is_an_error() -> None:
    """Left to Airflow, such a DAG parses, and then its scheduler cannot say when to run it."""
    from airflow.sdk import DAG
    from croniter import CroniterBadDateError

    crons = [d["spec"].get("schedule", "@") for d in hostile_docs()]
    crons = [c for c in crons if "@" not in c]
    assert len(crons) == 5
    for schedule in crons:
        with pytest.raises(CroniterBadDateError):
            next_run(DAG("never", schedule=schedule))


# ------------------------------------------------------------------ a real DAG run


@pytest.mark.slow
def test_good_dag_runs_next_to_hostile_objects_and_nothing_of_them_runs(
    stash_env: dict[str, Path], airflow_db: None
) -> None:
    """The hostile Restics back up their own Deployment into their own Repository: after
    the good DAG's run, only the good target has a snapshot and no other folder exists."""
    from stash_plugin.factory import build_dags
    from stash_plugin.settings import load_settings

    root = stash_env["root"]
    (root / "data").mkdir()
    (root / "data" / "file.txt").write_text("good data\n")
    (root / "hostile-data").mkdir()
    (root / "hostile-data" / "secret.txt").write_text("must not be read\n")
    hostile = hostile_docs()
    for doc in hostile:
        if "volumeSelector" in doc["spec"]:  # the Restic-shaped ones
            doc["spec"]["repository"] = {"name": "hostile-repo"}
            doc["spec"]["volumeSelector"]["selector"]["matchLabels"] = {"app": "hostile"}
    docs = [
        *world(root),
        *FOREIGN,
        deployment_doc("hostile", NS, root / "hostile-data"),
        repository_doc(
            "hostile-repo",
            NS,
            {"local": {"mountPath": "/repo", "hostPath": {"path": str(root / "hostile-repo")}}},
        ),
        *hostile,
    ]
    write_manifests(stash_env["manifests"], docs)
    dags, errors = build_dags(load_settings())
    assert set(dags) == {GOOD_DAG, "stash-maintenance.demo.repo"}  # hostile-repo: no target
    assert {e.name for e in errors} == set(HOSTILE)

    run = run_dag(dags[GOOD_DAG])
    assert set(task_states(run).values()) == {"success"}, task_states(run)
    snapshots = restic_snapshots(root / "repo" / "volumes" / "deployment" / "app")
    assert len(snapshots) == 1
    assert not (root / "hostile-repo").exists()  # no hostile object ever ran
    status = json.loads((stash_env["state"] / "repositories" / NS / "repo.json").read_text())
    assert [e["resticName"] for e in status["status"]["backupRepos"]] == ["good"]
