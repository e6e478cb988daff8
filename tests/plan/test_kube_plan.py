"""Planning for the kubernetes runtime: per-pod and per-node targets, pods, offline mode."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
from stashtest import PASSWORD, repository_doc, restic_doc, secret_doc

from stash_plugin.api import parse_document
from stash_plugin.api.resourceset import ResourceSet
from stash_plugin.factory import backup_dag
from stash_plugin.plan import make_plans
from stash_plugin.plan.pods import pod_manifest
from stash_plugin.settings import Settings

NS = "prod"


def resources(*docs: dict[str, Any]) -> ResourceSet:
    rs = ResourceSet()
    for i, doc in enumerate(docs):
        parsed = parse_document(doc, f"doc#{i}")
        assert not isinstance(parsed, list), [str(e) for e in parsed]
        if parsed is not None:
            rs.add(parsed, f"doc#{i}")
    return rs


def workload(kind: str, name: str, volumes: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, "tier": "db"}},
                "spec": {"containers": [{"name": "c", "image": "x"}], "volumes": volumes},
            },
            **spec,
        },
    }


def base(app: str, **restic: Any) -> list[dict[str, Any]]:
    return [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        repository_doc(
            "repo", NS, {"s3": {"endpoint": "s3.example.com", "bucket": "b", "prefix": "p"}}
        ),
        restic_doc("bk", NS, "repo", app, **restic),
    ]


def test_statefulset_has_one_target_per_pod_with_its_own_claim() -> None:
    sts = workload(
        "StatefulSet",
        "db",
        [],
        replicas=2,
        volumeClaimTemplates=[
            {"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}
        ],
    )
    plans = make_plans(resources(*base("db"), sts), "kubernetes")
    assert plans.errors == []
    assert sorted(plans.backups) == [
        "stash-backup.prod.bk.statefulset.db-0",
        "stash-backup.prod.bk.statefulset.db-1",
    ]
    plan = plans.backups["stash-backup.prod.bk.statefulset.db-1"]
    assert plan.target.repo_dir == "/volumes/statefulset/db-1"
    assert plan.target.workload_name == "db-1"
    assert "--host=db-1" in plan.backup.argv
    assert (
        dict(plan.backup.env)["RESTIC_REPOSITORY"]
        == "s3:s3.example.com/b/p/volumes/statefulset/db-1"
    )
    pod = pod_manifest(plan.backup, "agent:1")
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["data"]["persistentVolumeClaim"] == {"claimName": "data-db-1"}
    assert plan.backup.colocate == (("statefulset.kubernetes.io/pod-name", "db-1"),)


def test_daemonset_has_one_target_per_node_pinned_to_it() -> None:
    ds = workload("DaemonSet", "logs", [{"name": "data", "hostPath": {"path": "/var/log/app"}}])
    nodes = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}} for n in ("n1", "n2")]
    plans = make_plans(resources(*base("logs"), ds, *nodes), "kubernetes")
    assert plans.errors == []
    plan = plans.backups["stash-backup.prod.bk.daemonset.logs.n2"]
    assert plan.target.repo_dir == "/volumes/daemonset/logs/n2"
    assert "--host=n2" in plan.backup.argv
    assert pod_manifest(plan.backup, "agent:1")["spec"]["nodeName"] == "n2"
    no_nodes = make_plans(resources(*base("logs"), ds), "kubernetes")
    assert "lists no Node" in str(no_nodes.errors[0])


def test_pod_manifest_is_valid_and_carries_secrets_only_as_references() -> None:
    dep = workload(
        "Deployment",
        "web",
        [{"name": "data", "persistentVolumeClaim": {"claimName": "web-data"}}],
        replicas=1,
    )
    settings = {
        "pod": {
            "labels": {"team": "a"},
            "annotations": {"note": "x"},
            "nodeSelector": {"disk": "ssd"},
            "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
            "serviceAccountName": "stash-agent",
            "imagePullSecrets": [{"name": "regcred"}],
            "securityContext": {"runAsUser": 0},
        },
        "container": {
            "env": [{"name": "EXTRA", "value": "1"}],
            "resources": {"limits": {"memory": "256Mi"}},
        },
    }
    plans = make_plans(resources(*base("web", runtimeSettings=settings), dep), "kubernetes")
    assert plans.errors == []
    plan = plans.backups["stash-backup.prod.bk.deployment.web"]
    for step in (plan.backup, plan.retention, plan.verify):
        assert step is not None
        pod = pod_manifest(step, "agent:1")
        kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
        assert PASSWORD not in json.dumps(pod)
        container = pod["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["RESTIC_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "repo-secret",
            "key": "RESTIC_PASSWORD",
            "optional": False,
        }
        assert env["EXTRA"]["value"] == "1"
        assert container["resources"] == {"limits": {"memory": "256Mi"}}
        assert container["command"][0] == "stash-agent"
        # root (the image's user) with only the capabilities files of every owner need
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {
                "drop": ["ALL"],
                "add": ["CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID"],
            },
        }
        assert pod["metadata"]["labels"]["team"] == "a"
        assert pod["metadata"]["labels"]["stash.appscode.com/restic"] == "bk"
        assert pod["spec"]["serviceAccountName"] == "stash-agent"
        assert pod["spec"]["nodeSelector"] == {"disk": "ssd"}
    mounts = {
        m["mountPath"]: m
        for m in pod_manifest(plan.backup, "a")["spec"]["containers"][0]["volumeMounts"]
    }
    assert mounts["/source/data"]["readOnly"] is True
    assert plan.backup.colocate == (("app", "web"), ("tier", "db"))


def test_offline_mode_stops_and_always_restarts_the_workload() -> None:
    dep = workload(
        "Deployment",
        "web",
        [{"name": "data", "persistentVolumeClaim": {"claimName": "c"}}],
        replicas=3,
    )
    local = make_plans(resources(*base("web", backupMode="Offline"), dep), "local")
    assert local.errors and local.errors[0].field == "spec.backupMode"
    plans = make_plans(resources(*base("web", backupMode="Offline"), dep), "kubernetes")
    plan = plans.backups["stash-backup.prod.bk.deployment.web"]
    assert plan.offline is not None and plan.offline.kind == "Deployment"
    dag = backup_dag(plan, Settings(manifests_dir=None, runtime="kubernetes", state_dir=None))  # type: ignore[arg-type]
    order = [t.task_id for t in dag.topological_sort()]
    assert order[:4] == ["quiesce", "wait_quiesced", "backup", "resume"]
    assert order[-1] == "update_status"
    assert dag.get_task("resume").trigger_rule == "all_done"
    assert {"backup", "wait_ready"} <= dag.get_task("retention").upstream_task_ids


@pytest.mark.parametrize("kind", ["DaemonSet"])
def test_offline_needs_a_workload_that_scales(kind: str) -> None:
    ds = workload(kind, "logs", [{"name": "data", "hostPath": {"path": "/x"}}])
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}
    plans = make_plans(resources(*base("logs", backupMode="Offline"), ds, node), "kubernetes")
    assert "scales to zero" in str(plans.errors[0])


def test_a_deployments_replicaset_is_not_a_second_target() -> None:
    dep = workload("Deployment", "web", [{"name": "data", "hostPath": {"path": "/x"}}])
    rs = workload("ReplicaSet", "web-5d9c", [{"name": "data", "hostPath": {"path": "/x"}}])
    rs["metadata"]["labels"] = {"app": "web"}
    rs["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "web",
            "uid": "u",
            "controller": True,
        }
    ]
    plans = make_plans(resources(*base("web"), dep, rs), "kubernetes")
    assert sorted(plans.backups) == ["stash-backup.prod.bk.deployment.web"]


def test_long_names_make_valid_pod_labels() -> None:
    name = "a" * 60 + "-" + "b" * 60
    dep = workload("Deployment", name, [{"name": "data", "hostPath": {"path": "/x"}}])
    plans = make_plans(resources(*base(name), dep), "kubernetes")
    (plan,) = plans.backups.values()
    pod = pod_manifest(plan.backup, "agent:1")
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
    assert all(len(v) <= 63 for v in pod["metadata"]["labels"].values())


def _planned_context(container_settings: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    dep = workload(
        "Deployment",
        "web",
        [{"name": "data", "persistentVolumeClaim": {"claimName": "web-data"}}],
        replicas=1,
    )
    settings = {"container": container_settings}
    docs = [*base("web", runtimeSettings=settings), dep]
    refused = [parse_document(doc, f"doc#{i}") for i, doc in enumerate(docs)]
    errors = [str(e) for parsed in refused if isinstance(parsed, list) for e in parsed]
    if errors:
        return None, errors
    plans = make_plans(resources(*docs), "kubernetes")
    assert plans.errors == []
    plan = plans.backups["stash-backup.prod.bk.deployment.web"]
    return pod_manifest(plan.backup, "a")["spec"]["containers"][0]["securityContext"], []


def test_a_restics_container_security_context_narrows_the_agents_own() -> None:
    own = {"runAsUser": 1000, "runAsNonRoot": True, "capabilities": {"add": ["DAC_READ_SEARCH"]}}
    # the lock wait is the agent's one switch a tenant may tune
    wait = [{"name": "STASH_LOCK_WAIT", "value": "3"}]
    context, errors = _planned_context({"securityContext": own, "env": wait})
    assert errors == []
    # the tenant's user, and of the agent's capabilities only the one it kept: setting
    # runAsUser must not hand the container the runtime's default capabilities
    assert context == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"], "add": ["DAC_READ_SEARCH"]},
        "runAsUser": 1000,
        "runAsNonRoot": True,
    }


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"securityContext": {"privileged": True}}, "securityContext.privileged: true"),
        (
            {"securityContext": {"allowPrivilegeEscalation": True}},
            "securityContext.allowPrivilegeEscalation: true",
        ),
        (
            {"securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}},
            "securityContext.capabilities.add ['SYS_ADMIN']",
        ),
        ({"securityContext": {"procMount": "Unmasked"}}, "securityContext.procMount"),
        (
            {"env": [{"name": "RESTIC_REPOSITORY", "value": "/x"}]},
            "env[0].name: 'RESTIC_REPOSITORY'",
        ),
        (
            {"env": [{"name": "A", "value": "1"}, {"name": "LD_PRELOAD", "value": "/x.so"}]},
            "env[1].name: 'LD_PRELOAD'",
        ),
        (
            {"env": [{"name": "AWS_ACCESS_KEY_ID", "value": "x"}]},
            "env[0].name: 'AWS_ACCESS_KEY_ID'",
        ),
    ],
)
def test_a_restic_cannot_widen_the_agent_or_override_its_environment(
    settings: dict[str, Any], named: str
) -> None:
    context, errors = _planned_context(settings)
    assert context is None
    (error,) = errors
    assert "Restic prod/bk" in error
    assert "runtimeSettings.container" in error
    assert named in error
