"""Hostile values in Stash 0.8-shaped objects: the conversion never turns them into an
option, a folder outside their own, or another namespace's Secret or repository. Each
is a named error (object, field, file) and every other object keeps planning."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from stashtest import PASSWORD, deployment_doc, secret_doc, write_manifests

from stash_plugin.plan import make_plans
from stash_plugin.source import load_directory

API = "stash.appscode.com/v1alpha1"
NS = "tenant-a"


def old_restic(name: str, root: Path) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Restic",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "app"}},
            "fileGroups": [{"path": "/source/data", "retentionPolicyName": "keep"}],
            "backend": {
                "local": {"mountPath": "/safe/data", "hostPath": {"path": str(root)}},
                "storageSecretName": "a-secret",
            },
            "schedule": "@every 1h",
            "volumeMounts": [{"name": "data", "mountPath": "/source/data"}],
            "retentionPolicies": [{"name": "keep", "keepLast": 2}],
        },
    }


def old_recovery(name: str, root: Path) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Recovery",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "repository": {"name": "deployment.app"},
            "paths": ["/source/data"],
            "recoveredVolumes": [{"mountPath": "/source/data", "hostPath": {"path": str(root)}}],
        },
    }


def _set(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node: Any = doc
    keys = [int(k) if k.isdigit() else k for k in dotted.split(".")]
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    return doc


# (what is changed, value, the error's field, words of its message)
RESTIC_CASES = [
    ("spec.fileGroups.0.path", "/source/data/../../etc", "spec.fileGroups[0].path", "'..'"),
    ("spec.fileGroups.0.path", "/etc/shadow", "spec.fileGroups[0].path", "is not under any"),
    ("spec.fileGroups.0.path", "--password-file=/x", "spec.fileGroups[0].path", "absolute"),
    ("spec.volumeMounts.0.mountPath", "/source/../data", "spec.volumeMounts[0].mountPath", "'..'"),
    (
        "spec.fileGroups.0.tags",
        ["--exclude=/"],
        "spec.volumeSelector.targetVolumes[0].directories[0].tags[0]",
        "not start with '-'",
    ),
    (
        "spec.fileGroups.0.tags",
        ["namespace=tenant-b"],
        "spec.volumeSelector.targetVolumes[0].directories[0].tags[0]",
        "spells a tag Stash sets itself",
    ),
    (
        "spec.backend.storageSecretName",
        "tenant-b/b-secret",
        "spec.backend.storageSecretName",
        "not a valid Kubernetes name",
    ),
    (
        "spec.backend.storageSecretName",
        "b-secret",
        "spec.repository",
        "no Secret tenant-a/b-secret",
    ),
    ("spec.backend.local.subPath", "../tenant-b", "spec.backend.local.subPath", "'..'"),
    ("spec.backend.local.subPath", "-rf", "spec.backend.local.subPath", "start with '-'"),
    ("spec.type", "--offline", "spec.type", "is not online or offline"),
    ("spec.schedule", "--every", "spec.schedule", ""),
]

RECOVERY_CASES = [
    ("spec.paths", ["/source/data/../../etc"], "spec.paths[0]", "'..'"),
    ("spec.paths", ["/etc"], "spec.volumeRestorer.paths[0]", "is not under any recoverTo"),
    ("spec.snapshot", "--help", "spec.snapshot", "is not a Stash 0.8 snapshot name"),
    ("spec.snapshot", "deployment.other-0f1e2d3c", "spec.snapshot", "is a snapshot of"),
    ("spec.repository.name", "deployment.../x", "spec.repository.name", "not a Stash 0.8"),
    ("spec.repository.name", "--deployment.app", "spec.repository.name", "not a workload kind"),
    ("spec.repository.namespace", "tenant-b", "spec.repository.namespace", "own namespace"),
    (
        "spec.recoveredVolumes.0.mountPath",
        "/source/../x",
        "spec.recoveredVolumes[0].mountPath",
        "'..'",
    ),
    (
        "spec.recoveredVolumes.0.hostPath",
        {"path": "/restore/../../etc"},
        "spec.volumeRestorer.recoverTo[0].hostPath.path",
        "'..'",
    ),
]


def world(root: Path) -> list[dict[str, Any]]:
    """Tenant B's data and tenant A's good 0.8 objects, which must keep planning."""
    return [
        secret_doc("a-secret", NS, RESTIC_PASSWORD=PASSWORD),
        secret_doc("b-secret", "tenant-b", RESTIC_PASSWORD="tenant-b's"),
        deployment_doc("app", NS, root / "data", volume_name="data"),
        old_restic("good", root / "repo"),
    ]


def plan_with(root: Path, bad: dict[str, Any]) -> tuple[list[str], list[str]]:
    write_manifests(root / "m", [*world(root), bad])
    plans = make_plans(load_directory(root / "m"), "local")
    return [str(e) for e in plans.errors], sorted([*plans.backups, *plans.recoveries])


@pytest.mark.parametrize(
    ("where", "value", "field", "words"), RESTIC_CASES, ids=[f"{c[0]}={c[1]}" for c in RESTIC_CASES]
)
def test_hostile_old_restic_is_a_named_error(
    tmp_path: Path, where: str, value: Any, field: str, words: str
) -> None:
    errors, dags = plan_with(tmp_path, _set(old_restic("bad", tmp_path / "repo"), where, value))
    assert dags == ["stash-backup.tenant-a.good.deployment.app"]
    assert len(errors) >= 1, errors
    assert errors[0].startswith(f"Restic {NS}/bad: {field}: "), errors
    assert words in errors[0] and errors[0].endswith("(all.yaml#5)")
    assert "tenant-b's" not in " ".join(errors)


@pytest.mark.parametrize(
    ("where", "value", "field", "words"),
    RECOVERY_CASES,
    ids=[f"{c[0]}={c[1]}" for c in RECOVERY_CASES],
)
def test_hostile_old_recovery_is_a_named_error(
    tmp_path: Path, where: str, value: Any, field: str, words: str
) -> None:
    bad = _set(old_recovery("bad", tmp_path / "restored"), where, value)
    errors, dags = plan_with(tmp_path, bad)
    assert "stash-backup.tenant-a.good.deployment.app" in dags
    assert "stash-recovery.tenant-a.bad" not in dags
    assert errors and errors[0].startswith(f"Recovery {NS}/bad: {field}: "), errors
    assert words in errors[0]


def test_old_recovery_never_reaches_another_namespaces_backend(tmp_path: Path) -> None:
    """A 0.8 Recovery finds its backend only through a 0.8 Restic of its own namespace
    that selects the workload: tenant B's Restic of the same workload name is not it."""
    other = _set(old_restic("b-backup", tmp_path / "b-repo"), "metadata.namespace", "tenant-b")
    other = _set(other, "spec.backend.storageSecretName", "b-secret")
    docs = [
        *world(tmp_path)[:2],
        deployment_doc("app", "tenant-b", tmp_path / "b-data", volume_name="data"),
        other,
        old_recovery("steal", tmp_path / "restored"),
    ]
    write_manifests(tmp_path / "m", docs)
    plans = make_plans(load_directory(tmp_path / "m"), "local")
    assert [str(e) for e in plans.errors] == [
        "Recovery tenant-a/steal: spec.repository.name: cannot tell which backend holds "
        "Stash 0.8 repository deployment.app: no Stash 0.8 Restic of namespace tenant-a "
        "selects Deployment tenant-a/app (its manifest is not in the source) (all.yaml#5)"
    ]
    assert "stash-recovery.tenant-a.steal" not in plans.recoveries


def test_converted_restic_uses_only_its_own_namespaces_secret(tmp_path: Path) -> None:
    write_manifests(tmp_path / "m", world(tmp_path))
    plans = make_plans(load_directory(tmp_path / "m"), "local")
    (plan,) = plans.backups.values()
    assert {(s.namespace, s.secret) for s in plan.backup.secret_env} == {(NS, "a-secret")}
    assert plan.target.repository_namespace == NS
