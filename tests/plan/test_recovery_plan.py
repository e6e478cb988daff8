"""Planning Recoveries: snapshot references, path checks, overwrite, and no secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from stashtest import PASSWORD, recovery_doc, repository_doc, secret_doc

from stash_plugin.api import ResourceSet, parse_document
from stash_plugin.plan import PlanError, PlanSet, RecoveryPlan, SecretEnv, make_plans
from stash_plugin.plan.recovery import snapshot_ref

NS = "demo"
TARGET = Path("/srv/restored")
REPO_PATH = Path("/srv/repo")
LOCAL_BACKEND = {"local": {"mountPath": "/repo", "hostPath": {"path": str(REPO_PATH)}}}
FULL_ID = "e0e9c272" + "0123456789abcdef" * 3 + "01234567"


def plan_of(*docs: dict[str, Any], runtime: str = "local") -> PlanSet:
    rs = ResourceSet()
    for i, doc in enumerate(docs):
        parsed = parse_document(doc, f"rec.yaml#{i + 1}")
        assert parsed is not None and not isinstance(parsed, list), parsed
        rs.add(parsed, f"rec.yaml#{i + 1}")
    return make_plans(rs, runtime)  # type: ignore[arg-type]


def docs_with(**kw: Any) -> list[dict[str, Any]]:
    return [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        repository_doc("repo", NS, LOCAL_BACKEND),
        recovery_doc("rec", NS, "repo", TARGET, **kw),
    ]


def one_plan(*docs: dict[str, Any], runtime: str = "local") -> RecoveryPlan:
    plans = plan_of(*docs, runtime=runtime)
    assert plans.errors == [], [str(e) for e in plans.errors]
    (plan,) = plans.recoveries.values()
    return plan


def one_error(*docs: dict[str, Any]) -> Any:
    plans = plan_of(*docs)
    assert plans.recoveries == {}
    assert len(plans.errors) == 1, [str(e) for e in plans.errors]
    return plans.errors[0]


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        (None, "latest"),
        ("", "latest"),
        ("latest", "latest"),
        ("e0e9c272", "e0e9c272"),
        (FULL_ID, FULL_ID),
        ("deployment.stash-demo-e0e9c272", "e0e9c272"),
        ("statefulset.db-0-0a1b2c3d", "0a1b2c3d"),
    ],
)
def test_snapshot_refs(ref: str | None, expected: str) -> None:
    assert snapshot_ref(ref, "spec.volumeRestorer.snapshot") == expected


@pytest.mark.parametrize(
    "ref",
    [
        "snapshot.name",
        "e0e9c27",
        "deployment.stash-demo",
        "E0E9C272X",
        "--delete",
        "deployment.stash-demo-xyz12345",
    ],
)
def test_bad_snapshot_refs(ref: str) -> None:
    with pytest.raises(PlanError) as info:
        snapshot_ref(ref, "spec.volumeRestorer.snapshot")
    assert info.value.field == "spec.volumeRestorer.snapshot"
    assert repr(ref) in str(info.value) and "latest" in str(info.value)


def test_recovery_plan() -> None:
    plan = one_plan(*docs_with(snapshot="deployment.app-e0e9c272"))
    assert plan.dag_id == "stash-recovery.demo.rec"
    assert (plan.namespace, plan.name) == (NS, "rec")
    assert (plan.repository_namespace, plan.repository_name) == (NS, "repo")
    assert {"namespace:demo", "type:volume", "repository:repo"} <= set(plan.tags)
    argv = plan.restore.argv
    assert argv[:3] == ("stash-agent", "restore", "--snapshot=e0e9c272")
    assert "--mount-path=/source/data" in argv and f"--target={TARGET}" in argv
    assert "--overwrite" not in argv  # never clobber unless asked
    assert dict(plan.restore.env)["RESTIC_REPOSITORY"] == f"{REPO_PATH}/volumes/deployment/app"
    assert (
        SecretEnv("RESTIC_PASSWORD", "repo-secret", "RESTIC_PASSWORD", namespace=NS)
        in plan.restore.secret_env
    )
    assert any(m.path == str(TARGET) and not m.read_only for m in plan.restore.mounts)
    assert plan.paths == ("/source/data",)


def test_latest_when_snapshot_is_omitted() -> None:
    plan = one_plan(*docs_with())
    assert "--snapshot=latest" in plan.restore.argv


def test_bad_snapshot_names_the_field() -> None:
    err = one_error(*docs_with(snapshot="snapshot.name"))
    assert err.object_ref == "Recovery demo/rec"
    assert err.field == "spec.volumeRestorer.snapshot"
    assert "'snapshot.name'" in err.message
    assert err.origin == "rec.yaml#3"


def test_paths_under_a_recover_to_mount_path() -> None:
    plan = one_plan(*docs_with(paths=["/source/data/db", "/source/data"]))
    argv = plan.restore.argv
    assert "--path=/source/data/db" in argv and "--path=/source/data" in argv
    assert plan.paths == ("/source/data/db", "/source/data")


@pytest.mark.parametrize("path", ["/etc", "/source/database", "/source"])
def test_path_not_under_any_recover_to_is_an_error(path: str) -> None:
    err = one_error(*docs_with(paths=["/source/data/ok", path]))
    assert err.field == "spec.volumeRestorer.paths[1]"
    assert path in err.message and "/source/data" in err.message


def test_overwrite_flag() -> None:
    plan = one_plan(*docs_with(overwrite=True))
    assert plan.restore.argv[-1] == "--overwrite"


def test_pvc_target_needs_kubernetes_runtime() -> None:
    docs = docs_with()
    docs[2]["spec"]["volumeRestorer"]["recoverTo"] = [
        {"mountPath": "/source/data", "persistentVolumeClaim": {"claimName": "restored"}}
    ]
    err = one_error(*docs)
    assert err.field == "spec.volumeRestorer.recoverTo[0]" and "hostPath" in err.message
    docs[1] = repository_doc("repo", NS, {"gcs": {"bucket": "b"}})
    plan = one_plan(*docs, runtime="kubernetes")
    assert "--target=/source/data" in plan.restore.argv


def test_missing_repository_is_named() -> None:
    docs = docs_with()
    docs[2]["spec"]["repository"] = {"name": "stash-backup", "namespace": "default"}
    err = one_error(*docs)
    assert str(err) == (
        "Recovery demo/rec: spec.repository: Repository default/stash-backup not found (rec.yaml#3)"
    )


def test_missing_storage_secret() -> None:
    err = one_error(*docs_with()[1:])
    assert err.field == "spec.repository" and "no Secret demo/repo-secret" in err.message


def test_database_recovery_into_a_missing_appbinding_is_named() -> None:
    docs = docs_with()
    docs[2]["spec"] = {
        "targetType": "Database",
        "repository": {"name": "repo"},
        "databaseRestorer": {"repoDir": "/databases/x", "recoverTo": {"AppRef": {"name": "db"}}},
    }
    err = one_error(*docs)
    assert err.field == "spec.databaseRestorer.recoverTo.AppRef"
    assert "AppBinding demo/db not found" in err.message


def test_no_secret_value_in_a_recovery_plan() -> None:
    plans = plan_of(*docs_with(snapshot="latest", paths=["/source/data"]))
    (plan,) = plans.recoveries.values()
    assert PASSWORD not in repr(plan.restore)
    assert PASSWORD not in plan.description
    assert PASSWORD not in repr(plans)
