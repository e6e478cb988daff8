"""Cluster targets planned: the specification's sample and its typo, groups with
versions, the agent argv (every selected value one ``--flag=value`` item), the
ServiceAccount of each pod, Recoveries, and hostile values refused by name."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from stashtest import (
    PASSWORD,
    cluster_recovery_doc,
    cluster_restic_doc,
    repository_doc,
    secret_doc,
)

from stash_plugin.api import ResourceSet, parse_document
from stash_plugin.plan import PlanSet, make_plans
from stash_plugin.plan.pods import pod_manifest
from stash_plugin.protocol import SEPARATOR

NS = "demo"
# The specification's "Sample Restic for Cluster backup", as it is written there
# (Repository name and namespace adjusted to this test's).
SPEC_SAMPLE = """
apiVersion: stash.appscode.com/v1alpha1
kind: Restic
metadata:
  name: restic-cluster-demo
  namespace: demo
spec:
  targetType: Cluster
  backupType: Scheduled
  schedule: '@every 1m'
  backupAgent: osm # indicate which image to use for backup
  prefix: "cluster" # prefix of repository directory in backend
  repository:
    name: repo
    namespace: demo
  clusterResources:
    retentionPolicyName: 'keep-last-5'
    sanitize: true
    parentsOnly: true
    resourceSelector:
    - group: ""
      resources:
      - pods
      - secrets
      - persistentvolumelaims
    - group: "apps/v1"
      resources:
      - deployments
      - daemonsets
      - replicasets
  retentionPolicies:
  - name: 'keep-last-5'
    keepLast: 5
    prune: true
"""
SELECTOR = [
    {"group": "", "resources": ["configmaps", "secrets"]},
    {"group": "apps/v1", "resources": ["deployments"]},
    {"group": "example.com", "resources": ["widgets"]},
]


def plan_of(*docs: dict[str, Any], runtime: str = "local") -> PlanSet:
    rs = ResourceSet()
    for i, doc in enumerate(docs):
        parsed = parse_document(doc, f"cluster.yaml#{i + 1}")
        if isinstance(parsed, list):
            rs.errors.extend(parsed)
            continue
        assert parsed is not None
        rs.add(parsed, f"cluster.yaml#{i + 1}")
    return make_plans(rs, runtime)  # type: ignore[arg-type]


def base() -> list[dict[str, Any]]:
    return [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        repository_doc("repo", NS, {"local": {"mountPath": "/r", "hostPath": {"path": "/srv/r"}}}),
    ]


def errors(plans: PlanSet) -> list[str]:
    return [str(e) for e in plans.errors]


def test_the_specifications_sample_is_refused_naming_the_typo_and_the_fix() -> None:
    plans = plan_of(*base(), yaml.safe_load(SPEC_SAMPLE))
    (error,) = plans.errors
    assert (error.kind, error.namespace, error.name) == ("Restic", NS, "restic-cluster-demo")
    assert error.field == "spec.clusterResources.resourceSelector[0]"
    assert "'persistentvolumelaims' is not a resource of the core group" in error.message
    assert "did you mean 'persistentvolumeclaims'?" in error.message
    assert plans.backups == {}


def test_the_sample_corrected_plans_in_both_runtimes() -> None:
    doc = yaml.safe_load(SPEC_SAMPLE.replace("persistentvolumelaims", "persistentvolumeclaims"))
    del doc["spec"]["backupAgent"]  # "osm" names no BackupAgent here
    for runtime in ("local", "kubernetes"):
        plans = plan_of(*base(), doc, runtime=runtime)
        assert errors(plans) == []
        plan = plans.backups["stash-backup.demo.restic-cluster-demo.cluster"]
        assert (
            plan.target.type == "Cluster" and plan.target.repo_dir == "/cluster/restic-cluster-demo"
        )
        assert plan.task_ids == ("backup", "retention", "verify")
        argv = plan.backup.argv
        assert argv[:2] == ("stash-agent", "cluster-dump")
        assert "--resource=:persistentvolumeclaims" in argv
        assert "--resource=apps/v1:deployments" in argv
        assert "--parents-only" in argv and "--sanitize" in argv
        tail = argv[argv.index(SEPARATOR) :]
        assert tail[:4] == (SEPARATOR, "/cluster", "restic", "backup")
        assert "--" not in tail  # the agent adds the folder it wrote
        assert plan.backup.cluster_access == "read"
        assert plan.verify.cluster_access is None and plan.retention is not None


def test_agent_pods_run_as_the_cluster_service_accounts() -> None:
    restic = cluster_restic_doc("c", NS, "repo", SELECTOR)
    rec = cluster_recovery_doc("r", NS, "repo", "/cluster/c", overwrite=True)
    plans = plan_of(*base(), restic, rec, runtime="kubernetes")
    assert errors(plans) == []
    backup = plans.backups["stash-backup.demo.c.cluster"]
    pod = pod_manifest(backup.backup, "agent:1")
    assert pod["spec"]["serviceAccountName"] == "stash-cluster-reader"
    assert "serviceAccountName" not in pod_manifest(backup.verify, "agent:1")["spec"]
    restore = plans.recoveries["stash-recovery.demo.r"].restore
    assert pod_manifest(restore, "agent:1")["spec"]["serviceAccountName"] == (
        "stash-cluster-restorer"
    )
    assert restore.argv[:2] == ("stash-agent", "cluster-restore")
    assert "--overwrite" in restore.argv and "--tag=namespace=demo" in restore.argv
    own = cluster_restic_doc("own", NS, "repo", SELECTOR)
    own["spec"]["runtimeSettings"] = {"pod": {"serviceAccountName": "backup-sa"}}
    plan = plan_of(*base(), own, runtime="kubernetes").backups["stash-backup.demo.own.cluster"]
    assert pod_manifest(plan.backup, "agent:1")["spec"]["serviceAccountName"] == "backup-sa"


def test_a_recovery_limited_to_namespaces_and_kinds_as_a_dry_run() -> None:
    rec = cluster_recovery_doc(
        "r", NS, "repo", "/cluster/c", namespaces=["shop"], kinds=["Deployment"], dryRun=True
    )
    plans = plan_of(*base(), rec)
    argv = plans.recoveries["stash-recovery.demo.r"].restore.argv
    assert argv == (
        "stash-agent",
        "cluster-restore",
        "--snapshot=latest",
        "--tag=namespace=demo",
        "--tag=target=cluster",
        "--namespace=shop",
        "--kind=Deployment",
        "--dry-run",
    )
    assert plans.recoveries["stash-recovery.demo.r"].restore.cluster_access == "write"


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"resources": ["--delete"]}, "resourceSelector[0]", "not a resource name"),
        ({"resources": ["../../etc"]}, "resourceSelector[0]", "not a resource name"),
        ({"resources": ["deploymnets"]}, "resourceSelector[0]", "did you mean 'deployments'"),
        ({"group": "apps/v1/x"}, "resourceSelector[0].group", "not an API version"),
        ({"group": "-x"}, "resourceSelector[0].group", "is not an API group"),
    ],
)
def test_hostile_or_mistyped_selectors_are_refused_by_name(
    change: dict[str, Any], field: str, words: str
) -> None:
    selector = [{"group": "apps", "resources": ["deployments"], **change}]
    plans = plan_of(*base(), cluster_restic_doc("c", NS, "repo", selector))
    (error,) = plans.errors
    assert error.field == f"spec.clusterResources.{field}"
    assert words in error.message and error.name == "c"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"namespaces": ["../kube-system"]}, "spec.clusterResources.namespaces[0]"),
        ({"excludeNamespaces": ["--all"]}, "spec.clusterResources.excludeNamespaces[0]"),
        ({"namespaces": ["a"], "excludeNamespaces": ["a"]}, "spec.clusterResources"),
        ({"retentionPolicyName": "nope"}, "spec.clusterResources.retentionPolicyName"),
    ],
)
def test_namespaces_and_policies_are_checked(extra: dict[str, Any], field: str) -> None:
    plans = plan_of(*base(), cluster_restic_doc("c", NS, "repo", SELECTOR, **extra))
    assert [e.field for e in plans.errors] == [field]


def test_hostile_recovery_kinds_and_commands_are_refused() -> None:
    rec = cluster_recovery_doc("r", NS, "repo", "/cluster/c", kinds=["--overwrite"])
    (error,) = plan_of(*base(), rec).errors
    assert error.field == "spec.clusterRestorer.kinds" and "'--overwrite'" in error.message
    agent = {
        "apiVersion": "stash.appscode.com/v1alpha1",
        "kind": "BackupAgent",
        "metadata": {"name": "shell"},
        "spec": {"image": "x:1", "commands": {"backup": ["kubectl get all -A -o yaml"]}},
    }
    restic = cluster_restic_doc("c", NS, "repo", SELECTOR)
    restic["spec"]["backupAgent"] = "shell"
    (error,) = plan_of(*base(), agent, restic).errors
    assert (
        error.field == "spec.backupAgent" and "dumped and restored by stash-agent" in error.message
    )


def test_a_recovery_needs_its_restorer() -> None:
    rec = cluster_recovery_doc("r", NS, "repo", "/cluster/c")
    del rec["spec"]["clusterRestorer"]
    (error,) = plan_of(*base(), rec).errors
    assert "targetType Cluster needs clusterRestorer" in error.message
