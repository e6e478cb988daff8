"""The DAG factory: good resources become DAGs, bad ones become named errors.

No DAG is run here: these tests look at the DAG objects and at a real DagBag parse.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from stashtest import (
    PASSWORD,
    deployment_doc,
    recovery_doc,
    repository_doc,
    restic_doc,
    secret_doc,
    write_manifests,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DAGS_FOLDER = ROOT / "dags"
PARSING_DAG_ID = "_AIRFLOW_PARSING_CONTEXT_DAG_ID"  # airflow.sdk.definitions.context
NS = "demo"


def good_docs(root: Path) -> list[dict[str, Any]]:
    instant = restic_doc("instant", NS, "repo", "app", backupType="Instant")
    del instant["spec"]["schedule"]
    return [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        deployment_doc("app", NS, root / "data"),
        repository_doc(
            "repo", NS, {"local": {"mountPath": "/repo", "hostPath": {"path": str(root / "repo")}}}
        ),
        restic_doc("good", NS, "repo", "app", schedule="@every 1m"),
        restic_doc("nightly", NS, "repo", "app", schedule="0 3 * * *"),
        restic_doc("paused", NS, "repo", "app", paused=True),
        instant,
        recovery_doc("restore", NS, "repo", root / "restored", snapshot="latest"),
    ]


def bad_docs() -> list[dict[str, Any]]:
    typo = restic_doc("typo", NS, "repo", "app")
    typo["spec"]["volumeSelector"]["targetVolumes"][0]["nmae"] = "data"
    wrong_type = restic_doc("wrong-type", NS, "repo", "app", policy={"keepLast": "five"})
    no_repo = restic_doc("no-repo", NS, "missing-repo", "app")
    no_policy = restic_doc("no-policy", NS, "repo", "app")
    no_policy["spec"]["volumeSelector"]["targetVolumes"][0]["directories"][0][
        "retentionPolicyName"
    ] = "gone"
    bad_schedule = restic_doc("bad-schedule", NS, "repo", "app", schedule="@every 1x")
    return [typo, wrong_type, no_repo, no_policy, bad_schedule]


@pytest.fixture
def mixed(stash_env: dict[str, Path]) -> dict[str, Path]:
    folder = stash_env["manifests"]
    write_manifests(folder, good_docs(stash_env["root"]), "good.yaml")
    write_manifests(folder, bad_docs(), "bad.yaml")
    (folder / "broken.yaml").write_text("kind: Restic\nmetadata: {name: [oops\n")
    return stash_env


def build() -> tuple[dict[str, Any], list[Any]]:
    from stash_plugin.factory import build_dags
    from stash_plugin.settings import load_settings

    return build_dags(load_settings())


BACKUP = "stash-backup.demo.{}.deployment.app"


def test_good_resources_make_dags_and_bad_ones_named_errors(mixed: dict[str, Path]) -> None:
    dags, errors = build()
    assert sorted(dags) == sorted(
        [BACKUP.format(n) for n in ("good", "nightly", "paused", "instant")]
        + ["stash-recovery.demo.restore", "stash-maintenance.demo.repo"]
    )
    text = [str(e) for e in errors]
    expected = [
        "file broken.yaml: malformed YAML",
        "Restic demo/typo: spec.volumeSelector.targetVolumes[0].nmae: unknown field",
        "Restic demo/wrong-type: spec.retentionPolicies[0].keepLast: ",
        "Restic demo/no-repo: spec.repository: Repository demo/missing-repo not found",
        "Restic demo/no-policy: "
        "spec.volumeSelector.targetVolumes[0].directories[0].retentionPolicyName: "
        "no retention policy named 'gone'",
        "Restic demo/bad-schedule: spec.schedule: '@every 1x'",
    ]
    for start in expected:
        assert any(t.startswith(start) for t in text), f"{start!r} not in {text}"
    assert len(errors) == len(expected), text
    assert all(PASSWORD not in t for t in text)


def test_backup_dag_shape(mixed: dict[str, Path]) -> None:
    from airflow.sdk import DeltaTriggerTimetable

    dags, _ = build()
    dag = dags[BACKUP.format("good")]
    assert dag.dag_id == "stash-backup.demo.good.deployment.app"
    assert {"namespace:demo", "type:volume", "repository:repo"} <= set(dag.tags)
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert isinstance(dag.timetable, DeltaTriggerTimetable)
    assert dag.timetable.delta == timedelta(seconds=60)
    assert "retention" in dag.params
    assert dag.params["retention"] is True
    assert set(dag.task_dict) == {"backup", "retention", "verify", "update_status"}
    assert dag.task_dict["backup"].downstream_task_ids == {"retention"}
    assert dag.task_dict["retention"].downstream_task_ids == {"verify"}
    assert dag.task_dict["verify"].downstream_task_ids == {"update_status"}
    assert PASSWORD not in (dag.doc_md or "") and PASSWORD not in (dag.description or "")
    # The params a manual run can change, as the trigger form and every task see them
    # (set after DAG() to spare a schema check per DAG: still valid, still copied).
    assert dag.params.validate() == {"retention": True, "new_repository": False}
    for task in dag.tasks:
        assert task.params.dump() == dag.params.dump(), task.task_id


def test_a_failing_backend_is_retried_with_backoff(
    mixed: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__STASH__TASK_RETRIES", "3")
    dags, _ = build()
    backup = dags[BACKUP.format("good")].task_dict["backup"]
    assert backup.retries == 3
    assert backup.retry_exponential_backoff
    assert backup.retry_delay == timedelta(seconds=30)


def test_schedules(mixed: dict[str, Path]) -> None:
    from airflow.sdk.definitions.timetables.simple import NullTimetable, OnceTimetable
    from airflow.sdk.definitions.timetables.trigger import CronTriggerTimetable

    dags, _ = build()
    nightly = dags[BACKUP.format("nightly")]
    assert nightly.schedule == "0 3 * * *"
    assert isinstance(nightly.timetable, CronTriggerTimetable)

    paused = dags[BACKUP.format("paused")]  # the DAG stays (history, manual runs)...
    assert paused.schedule is None  # ...but nothing is scheduled
    assert isinstance(paused.timetable, NullTimetable)
    assert "paused" in paused.tags

    instant = dags[BACKUP.format("instant")]
    assert instant.schedule == "@once"
    assert isinstance(instant.timetable, OnceTimetable)

    recovery = dags["stash-recovery.demo.restore"]
    assert isinstance(recovery.timetable, OnceTimetable)
    assert recovery.max_active_runs == 1 and recovery.catchup is False
    assert {"namespace:demo", "type:volume", "repository:repo"} <= set(recovery.tags)
    assert set(recovery.task_dict) == {"restore", "update_status"}


def test_parsing_context_builds_one_dag(
    mixed: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from stash_plugin.factory import raise_resource_errors

    wanted = BACKUP.format("nightly")
    monkeypatch.setenv(PARSING_DAG_ID, wanted)
    dags, errors = build()
    assert list(dags) == [wanted]
    # Plan errors of the resources it skipped are not computed for one task's parse.
    assert all("no-repo" not in str(e) and "no-policy" not in str(e) for e in errors)
    raise_resource_errors()  # a worker parsing for one task never fails on others' errors

    monkeypatch.setenv(PARSING_DAG_ID, "stash-recovery.demo.restore")
    dags, _ = build()
    assert list(dags) == ["stash-recovery.demo.restore"]


def test_raise_resource_errors_lists_every_bad_object(mixed: dict[str, Path]) -> None:
    from stash_plugin.factory import StashResourceErrors, raise_resource_errors

    with pytest.raises(StashResourceErrors) as info:
        raise_resource_errors()
    message = str(info.value)
    assert message.startswith("6 Stash resource(s) made no DAG:")
    for name in (
        "broken.yaml",
        "demo/typo",
        "demo/wrong-type",
        "demo/no-repo",
        "demo/no-policy",
        "demo/bad-schedule",
    ):
        assert name in message


def test_no_errors_means_nothing_raised(stash_env: dict[str, Path]) -> None:
    from stash_plugin.factory import raise_resource_errors

    write_manifests(stash_env["manifests"], good_docs(stash_env["root"]))
    raise_resource_errors()
    dags, errors = build()
    assert errors == [] and len(dags) == 6


# --------------------------------------------------------------------------- DagBag


def examples_folder(root: Path) -> Path:
    """Every example plus three mistakes: a Recovery of a Repository that does not exist,
    a second Restic of an example's name, and a Secret whose value must never show."""
    folder = root / "example-manifests"
    shutil.copytree(EXAMPLES, folder)
    orphan = recovery_doc("orphan-restore", "demo", "missing-repo", root / "restored")
    twice = restic_doc("quick-mysql-backup", "demo", "local-repo", "stash-demo")
    write_manifests(
        folder,
        [orphan, twice, secret_doc("extra-secret", "demo", RESTIC_PASSWORD=PASSWORD)],
        "zz-extra.yaml",
    )
    return folder


def dagbag(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("AIRFLOW__STASH__MANIFESTS_DIR", str(folder))
    monkeypatch.setenv("AIRFLOW__STASH__RUNTIME", "local")
    monkeypatch.delenv(PARSING_DAG_ID, raising=False)
    return DagBag(dag_folder=str(DAGS_FOLDER))


def test_dagbag_over_the_examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stash_plugin.plan import make_plans
    from stash_plugin.source import load_directory

    folder = examples_folder(tmp_path)
    plans = make_plans(load_directory(folder), "local")
    assert set(plans.dag_ids) == {
        "stash-backup.demo.stash-demo-backup.deployment.stash-demo",
        "stash-recovery.demo.stash-demo-restore",
        "stash-maintenance.demo.local-repo",
        "stash-maintenance.demo.gcs-repo",
        "stash-backup.demo.app-db-backup.127.0.0.1-5432.app",
        "stash-recovery.demo.app-db-restore",
        "stash-backup.demo.databases-backup.appbinding.quick-mysql",
        "stash-backup.demo.databases-backup.reports-mysql.demo.svc-3306.reports",
        "stash-backup.demo.shop-db-backup.quick-mysql.demo.svc-3306.shop",
        "stash-backup.demo.shop-db-nightly.appbinding.shop-db",
        "stash-recovery.demo.quick-mysql-restore",
        "stash-recovery.demo.shop-db-restore",
        "stash-backup.demo.template-default-volumes.deployment.web",
        "stash-recovery.demo.if-empty.deployment.web",
        "stash-backup.demo.cluster-backup.cluster",
        "stash-recovery.demo.cluster-restore",
    }

    bag = dagbag(folder, monkeypatch)
    assert set(bag.dags) == set(plans.dag_ids)
    errors = {Path(f).name: text for f, text in bag.import_errors.items()}
    assert set(errors) == {"stash_errors.py"}, errors  # the shard files import cleanly
    text = errors["stash_errors.py"]
    for err in plans.errors:
        assert str(err) in text
    # The important ones, by name.
    assert (
        "Recovery demo/orphan-restore: spec.repository: "
        "Repository demo/missing-repo not found (zz-extra.yaml#1)" in text
    )
    assert "Restic demo/quick-mysql-backup: metadata.name: defined twice" in text
    assert "cluster-backup" not in text and "cluster-restore" not in text
    assert PASSWORD not in text
    cluster = bag.dags["stash-backup.demo.cluster-backup.cluster"]
    assert {"type:cluster", "repository:gcs-repo"} <= set(cluster.tags)
    assert {t.task_id for t in cluster.tasks} == {"backup", "retention", "verify", "update_status"}

    dag = bag.dags["stash-backup.demo.stash-demo-backup.deployment.stash-demo"]
    assert {"namespace:demo", "type:volume", "repository:local-repo"} <= set(dag.tags)


def test_dagbag_with_only_valid_resources(
    stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_manifests(stash_env["manifests"], good_docs(stash_env["root"]))
    bag = dagbag(folder, monkeypatch)
    assert bag.import_errors == {}
    assert len(bag.dags) == 6
    assert BACKUP.format("good") in bag.dags


def _hourly_docs(root: Path) -> list[dict[str, Any]]:
    return [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        deployment_doc("app", NS, root / "data"),
        repository_doc(
            "repo", NS, {"local": {"mountPath": "/repo", "hostPath": {"path": str(root / "repo")}}}
        ),
        restic_doc("hourly", NS, "repo", "app", schedule="@hourly"),
        restic_doc("nightly", NS, "repo", "app", schedule="0 3 * * *"),
    ]


def test_hourly_schedules_are_spread_unless_turned_off(
    stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk.definitions.timetables.trigger import CronTriggerTimetable

    from stash_plugin.plan.schedules import stable_offset

    write_manifests(stash_env["manifests"], _hourly_docs(stash_env["root"]))
    dag_id = BACKUP.format("hourly")
    dags, _ = build()
    assert dags[dag_id].schedule == f"{stable_offset(dag_id, 60)} * * * *"
    assert isinstance(dags[dag_id].timetable, CronTriggerTimetable)
    assert "`@hourly`, spread over its interval" in (dags[dag_id].doc_md or "")
    assert dags[BACKUP.format("nightly")].schedule == "0 3 * * *"  # written by the user
    maintenance = dags["stash-maintenance.demo.repo"]
    assert maintenance.schedule != "@daily" and maintenance.schedule.endswith(" * * *")

    monkeypatch.setenv("AIRFLOW__STASH__SPREAD_SCHEDULES", "false")
    dags, _ = build()
    assert dags[dag_id].schedule == "@hourly"
    assert dags["stash-maintenance.demo.repo"].schedule == "@daily"
    assert dags[BACKUP.format("nightly")].schedule == "0 3 * * *"


def test_agent_tasks_run_in_their_namespace_pool_when_pools_are_on(
    mixed: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    dags, _ = build()
    assert {t.pool for d in dags.values() for t in d.tasks} == {"default_pool"}

    monkeypatch.setenv("AIRFLOW__STASH__POOLS", "true")
    dags, _ = build()
    backup = dags[BACKUP.format("good")]
    pools = {t.task_id: t.pool for t in backup.tasks}
    assert pools == {
        "backup": "stash-ns-demo",
        "retention": "stash-ns-demo",
        "verify": "stash-ns-demo",
        "update_status": "default_pool",  # writes status, starts no agent
    }
    assert dags["stash-recovery.demo.restore"].task_dict["restore"].pool == "stash-ns-demo"
    checks = [t for t in dags["stash-maintenance.demo.repo"].tasks if t.task_id != "update_status"]
    assert checks and {t.pool for t in checks} == {"stash-ns-demo"}


def test_maintenance_dag_keeps_its_size_whatever_the_number_of_repo_dirs(
    stash_env: dict[str, Path],
) -> None:
    """One mapped ``check`` task, one instance per repoDir at run time: the DAG a
    shard parses does not grow with the targets (10,000 repoDirs were 10,000 tasks)."""
    root = stash_env["root"]
    shape: dict[int, tuple[list[str], list[str]]] = {}
    for n in (1, 50):
        docs = [
            secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
            repository_doc(
                "repo",
                NS,
                {"local": {"mountPath": "/repo", "hostPath": {"path": str(root / "repo")}}},
            ),
        ]
        for i in range(n):
            docs += [
                deployment_doc(f"app{i}", NS, root / "data"),
                restic_doc(f"r{i}", NS, "repo", f"app{i}"),
            ]
        write_manifests(stash_env["manifests"], docs, "good.yaml")
        dag = build()[0]["stash-maintenance.demo.repo"]
        check = dag.task_dict["check"]
        repo_dirs = check.expand_input.value["repo_dir"]
        shape[n] = (sorted(dag.task_dict), list(repo_dirs))
        assert check.partial_kwargs["map_index_template"] == "{{ task.repo_dir }}"
    assert shape[1][0] == shape[50][0] == ["check", "update_status"]
    assert shape[1][1] == ["/volumes/deployment/app0"]
    assert sorted(shape[50][1]) == sorted(f"/volumes/deployment/app{i}" for i in range(50))
