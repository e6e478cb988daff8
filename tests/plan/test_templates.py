"""Default backup through a BackupTemplate: a workload's annotation makes its backup DAG
(no Restic), removing it removes the DAG, and every annotation value is a tenant's,
checked like a Restic field: errors name the workload and the annotation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from stashtest import (
    PASSWORD,
    backup_template_doc,
    deployment_doc,
    repository_doc,
    restic_doc,
    secret_doc,
    write_manifests,
)

from stash_plugin.factory import build_dags
from stash_plugin.plan import make_plans
from stash_plugin.settings import load_settings
from stash_plugin.source import load_directory

NS = "demo"
TEMPLATE = "stash.appscode.com/backup-template"
DAG = "stash-backup.demo.template-default.deployment.app"
RESTORE_DAG = "stash-recovery.demo.if-empty.deployment.app"
FIELD = "metadata.annotations[stash.appscode.com/{}]"


def annotated(root: Path, **annotations: str) -> dict[str, Any]:
    doc = deployment_doc("app", NS, root / "data")
    doc["metadata"]["annotations"] = {
        f"stash.appscode.com/{k.replace('_', '-')}": v for k, v in annotations.items()
    }
    return doc


def world(root: Path, workload: dict[str, Any], *extra: dict[str, Any]) -> list[dict[str, Any]]:
    local = {"local": {"mountPath": "/repo", "hostPath": {"path": str(root / "repo")}}}
    return [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        secret_doc("repo-secret", "other", RESTIC_PASSWORD="other-tenant's"),
        repository_doc("repo", NS, local),
        repository_doc("theirs", "other", local),
        backup_template_doc("default", "repo"),
        workload,
        *extra,
    ]


def dags_and_errors(stash_env: dict[str, Path], docs: list[dict[str, Any]]) -> tuple[Any, Any]:
    for old in stash_env["manifests"].glob("*"):
        old.unlink()
    write_manifests(stash_env["manifests"], docs)
    dags, errors = build_dags(load_settings())
    return dags, [str(e) for e in errors]


def test_the_annotation_makes_the_dag_and_removing_it_removes_it(
    stash_env: dict[str, Path],
) -> None:
    root = stash_env["root"]
    dags, errors = dags_and_errors(
        stash_env, world(root, annotated(root, backup_template="default"))
    )
    assert errors == []
    assert DAG in dags and RESTORE_DAG not in dags
    # The same DAG as a Restic's target: tasks, schedule, tags, status entry.
    restic = restic_doc("app-backup", NS, "repo", "app")
    with_restic, _ = dags_and_errors(
        stash_env, world(root, annotated(root, backup_template="default"), restic)
    )
    own = with_restic["stash-backup.demo.app-backup.deployment.app"]
    ours = with_restic[DAG]
    assert sorted(ours.task_dict) == sorted(own.task_dict)
    # The same written schedule; each DAG gets its own offset ([stash] spread_schedules).
    assert type(ours.timetable) is type(own.timetable)
    schedules = [d.task_dict["backup"].plan.schedule for d in (ours, own)]
    assert schedules[0].spread_from == schedules[1].spread_from
    assert {t for t in ours.tags if not t.startswith("template:")} == set(own.tags)
    assert "template:default" in ours.tags
    target = ours.task_dict["update_status"].plan.target
    assert (target.restic_name, target.workload_kind, target.workload_name) == (
        "template-default",
        "Deployment",
        "app",
    )
    assert "BackupTemplate default (annotation of Deployment demo/app)" in ours.doc_md

    dags, errors = dags_and_errors(stash_env, world(root, annotated(root)))
    assert errors == []
    assert DAG not in dags and not any("template" in d for d in dags)


def test_paths_and_schedule_annotations_shape_the_backup(stash_env: dict[str, Path]) -> None:
    root = stash_env["root"]
    workload = annotated(
        root,
        backup_template="default",
        backup_paths=" /source/data/db , /source/data/uploads/",
        backup_schedule="@every 2h",
        restore_if_empty="true",
    )
    plans = make_plans(load_directory_of(stash_env, world(root, workload)), "local")
    assert plans.errors == []
    plan = plans.backups[DAG]
    assert plan.snapshot_paths == ("/source/data/db", "/source/data/uploads")
    assert (plan.schedule.kind, plan.schedule.value) == ("every", 7200)
    assert plan.retention is not None  # the template's retentionPolicyName
    restore = plans.recoveries[RESTORE_DAG].restore.argv
    assert "--if-empty" in restore and "--overwrite" not in restore
    assert "--tag=restic=template-default" in restore and "--tag=namespace=demo" in restore
    assert [a for a in restore if a.startswith("--path=")] == [
        "--path=/source/data/db",
        "--path=/source/data/uploads",
    ]


def load_directory_of(stash_env: dict[str, Path], docs: list[dict[str, Any]]) -> Any:
    for old in stash_env["manifests"].glob("*"):
        old.unlink()
    write_manifests(stash_env["manifests"], docs)
    return load_directory(stash_env["manifests"])


def test_a_missing_template_is_a_named_error_and_the_rest_still_plans(
    stash_env: dict[str, Path],
) -> None:
    root = stash_env["root"]
    good = restic_doc("app-backup", NS, "repo", "app")
    dags, errors = dags_and_errors(
        stash_env, world(root, annotated(root, backup_template="nope"), good)
    )
    assert errors == [
        f"Deployment demo/app: {FIELD.format('backup-template')}: no BackupTemplate named "
        "'nope' (known: default) (all.yaml#6)"
    ]
    assert "stash-backup.demo.app-backup.deployment.app" in dags
    assert not any("template" in d for d in dags)


HOSTILE = [
    ({"backup_paths": "/source/data/../../etc"}, "backup-paths", "'..' segment"),
    ({"backup_paths": "--exclude=/source/data"}, "backup-paths", "not an absolute path"),
    ({"backup_paths": "source/data"}, "backup-paths", "not an absolute path"),
    ({"backup_paths": "/etc"}, "backup-paths", "/etc is inside no volume"),
    ({"backup_paths": "/source/data,/source/data"}, "backup-paths", "listed twice"),
    ({"backup_schedule": "--help"}, "backup-schedule", "is not a schedule"),
    ({"backup_schedule": "@every 1x"}, "backup-schedule", "1x"),
    ({"backup_repository": "other/theirs"}, "backup-repository", "names a namespace"),
    ({"backup_repository": "theirs"}, "backup-repository", "Repository demo/theirs not found"),
    ({"backup_repository": "--repo"}, "backup-repository", "not a valid Kubernetes name"),
    ({"backup_template": "../x"}, "backup-template", "not a valid Kubernetes name"),
    ({"restore_if_empty": "yes"}, "restore-if-empty", 'is not "true" or "false"'),
]


@pytest.mark.parametrize(
    ("values", "annotation", "why"),
    HOSTILE,
    ids=[f"{a}-{i}" for i, (_, a, _) in enumerate(HOSTILE)],
)
def test_hostile_annotation_values_are_refused(
    stash_env: dict[str, Path], values: dict[str, str], annotation: str, why: str
) -> None:
    root = stash_env["root"]
    workload = annotated(root, **{"backup_template": "default", **values})
    plans = make_plans(load_directory_of(stash_env, world(root, workload)), "local")
    assert plans.backups == {} and plans.recoveries == {}
    (error,) = plans.errors
    assert error.object_ref == "Deployment demo/app"
    assert error.field == FIELD.format(annotation)
    assert why in error.message


def test_a_template_cannot_name_another_namespace(stash_env: dict[str, Path]) -> None:
    """A template names a Repository by name only, looked up in the workload's own
    namespace: another namespace's Repository of that name is never used."""
    root = stash_env["root"]
    crossing = backup_template_doc("default", "theirs")
    crossing["spec"]["repository"]["namespace"] = "other"
    docs = [d for d in world(root, annotated(root, backup_template="default")) if d is not None]
    docs = [d for d in docs if d["kind"] != "BackupTemplate"] + [crossing]
    resources = load_directory_of(stash_env, docs)
    assert [(e.object_ref, e.field, e.message) for e in resources.errors] == [
        ("BackupTemplate default", "spec.repository.namespace", "unknown field")
    ]
    # Without the namespace it means the workload's own namespace, where there is none.
    del crossing["spec"]["repository"]["namespace"]
    plans = make_plans(load_directory_of(stash_env, docs), "local")
    assert plans.backups == {}
    (error,) = plans.errors
    assert (error.object_ref, error.field) == (
        "Deployment demo/app",
        FIELD.format("backup-template"),
    )
    assert "Repository demo/theirs not found" in error.message


def test_an_annotation_without_the_template_is_an_error(stash_env: dict[str, Path]) -> None:
    root = stash_env["root"]
    workload = annotated(root, restore_if_empty="true")
    plans = make_plans(load_directory_of(stash_env, world(root, workload)), "local")
    (error,) = plans.errors
    assert error.field == FIELD.format("restore-if-empty")
    assert f"needs the {TEMPLATE} annotation" in error.message


def test_a_recreated_workload_gets_a_new_restore_dag(stash_env: dict[str, Path]) -> None:
    """The restore-if-empty DAG runs once: a workload with a new uid (deleted and created
    again under the same Airflow) gets a new DAG, so it runs once more."""
    root = stash_env["root"]
    ids = []
    for uid in ("0b9e5c1a-1111-4b4b-8c8c-000000000001", "7f00aa22-2222-4b4b-8c8c-000000000002"):
        workload = annotated(root, backup_template="default", restore_if_empty="true")
        workload["metadata"]["uid"] = uid
        plans = make_plans(load_directory_of(stash_env, world(root, workload)), "kubernetes")
        assert plans.errors == []
        ids.append(sorted(plans.recoveries))
    assert ids == [[f"{RESTORE_DAG}.0b9e5c1a"], [f"{RESTORE_DAG}.7f00aa22"]]


def test_a_restic_and_a_template_spelling_the_same_dag_are_refused(
    stash_env: dict[str, Path],
) -> None:
    root = stash_env["root"]
    same = restic_doc("template-default", NS, "repo", "app")
    plans = make_plans(
        load_directory_of(stash_env, world(root, annotated(root, backup_template="default"), same)),
        "local",
    )
    assert list(plans.backups) == [DAG]
    (error,) = plans.errors
    assert error.object_ref == "Deployment demo/app"
    assert "which Restic demo/template-default makes too" in error.message
