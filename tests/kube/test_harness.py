"""The Kubernetes test harness, proven with the real KubernetesPodOperator.

One Airflow DAG run covers the operator's paths (sync success with a hostPath
volume and logs, sync failure on exit 3, deferrable success); the other tests
check the fake's own behaviour that our product code relies on.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kube.fakeapi import START_DELAY_ANNOTATION, WORKLOAD_ANNOTATION, Call
from kube.harness import Cluster
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from stashtest import run_dag, task_states

MOUNT = "/mnt/fakekube-harness-out"  # inside the pod; bind-mounted in a private namespace


def api(cluster: Cluster) -> client.ApiClient:
    return config.new_client_from_config(str(cluster.kubeconfig))


def read_log(v1: client.CoreV1Api, pod: str, **kwargs: Any) -> str:
    """kubernetes 36.0 returns ``str(bytes)`` from read_namespaced_pod_log (client issue
    #2596), so read the raw response, as any caller of that client version must."""
    resp = v1.read_namespaced_pod_log(pod, "default", _preload_content=False, **kwargs)
    return resp.data.decode()


def pod_doc(name: str, script: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "base", "image": "busybox", "command": ["sh", "-c", script]}],
            **spec,
        },
    }


def kpo_dag(host: Path) -> Any:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk import DAG
    from kubernetes.client import models as k8s

    common: dict[str, Any] = dict(
        namespace="default",
        image="busybox",
        kubernetes_conn_id="kubernetes_default",
        get_logs=True,
        on_finish_action="delete_pod",
        startup_check_interval_seconds=1,
        poll_interval=1,
        retries=0,
    )
    volume = k8s.V1Volume(name="out", host_path=k8s.V1HostPathVolumeSource(path=str(host)))
    mount = k8s.V1VolumeMount(name="out", mount_path=MOUNT)
    write = 'echo "written by $WHO" > {mount}/{file} && echo "hello from {task}"'
    with DAG("fakekube-harness", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=UTC)):
        for task_id, deferrable in (("write", False), ("write_deferred", True)):
            KubernetesPodOperator(
                task_id=task_id,
                name=task_id.replace("_", "-"),
                cmds=["sh", "-c", write.format(mount=MOUNT, file=f"{task_id}.txt", task=task_id)],
                env_vars=[k8s.V1EnvVar(name="WHO", value=task_id)],
                volumes=[volume],
                volume_mounts=[mount],
                deferrable=deferrable,
                annotations={START_DELAY_ANNOTATION: "1.2"},  # see the Pending-phase calls
                **common,
            )
        dag = KubernetesPodOperator(
            task_id="exit3", name="exit3", cmds=["sh", "-c", "echo about to fail; exit 3"], **common
        ).dag
    return dag


@pytest.mark.slow
def test_kubernetes_pod_operator_end_to_end(
    kube_cluster: Cluster,
    airflow_db: None,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = tmp_path / "host-out"
    host.mkdir()
    dagrun = run_dag(kpo_dag(host))
    out = capfd.readouterr()
    logs = out.out + out.err + caplog.text  # task logs reach one or the other, as pytest runs

    assert task_states(dagrun) == {
        "write": "success",
        "write_deferred": "success",
        "exit3": "failed",
    }
    assert (host / "write.txt").read_text() == "written by write\n"
    assert (host / "write_deferred.txt").read_text() == "written by write_deferred\n"
    assert "hello from write" in logs and "hello from write_deferred" in logs
    assert "about to fail" in logs
    assert "[DAG TEST] running trigger in line" in logs
    assert "trigger emitted an error event" not in logs  # the trigger itself must succeed
    assert not Path(MOUNT).exists()  # the mount point made on the host was cleaned up
    assert kube_cluster.pods() == []  # on_finish_action="delete_pod"

    calls = kube_cluster.requests
    for c in calls:
        print("fakekube:", c.status, c.method, c.path, c.query, c.user_agent)  # pytest -s

    def pod_of(c: Call) -> str:  # "write-deferred-x1y2z3/log" -> "write-deferred"
        return c.path.split("/pods/")[1].split("/")[0].rsplit("-", 1)[0]

    selectors = [
        c.query["labelSelector"] for c in calls if c.path.endswith("/pods") and c.method == "GET"
    ]
    assert len(selectors) == 5  # before each create; again after it in sync mode
    assert all("already_checked!=True" in s and "!airflow-worker" in s for s in selectors)
    assert sum(c.method == "POST" for c in calls) == 3
    follows = {pod_of(c) for c in calls if c.path.endswith("/log") and c.query["follow"] == "True"}
    assert follows == {"write", "write-deferred", "exit3"}
    assert any(c.path.endswith("/events") and c.query.get("watch") == "True" for c in calls)
    assert len({c.user_agent for c in calls}) == 2  # the trigger's kubernetes_asyncio came too
    assert {pod_of(c) for c in calls if c.method == "PATCH"} == {"exit3"}
    assert {pod_of(c) for c in calls if c.method == "DELETE"} == follows
    assert all(c.status < 400 for c in calls)


def test_label_and_field_selectors(kube_cluster: Cluster) -> None:
    for name, labels in {
        "a": {"app": "web", "tier": "front"},
        "b": {"app": "web", "tier": "back", "already_checked": "True"},
        "c": {"app": "db"},
    }.items():
        kube_cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "labels": labels,
                    "annotations": {"fakekube.test/no-kubelet": "x"},
                },
                "spec": {"containers": [{"name": "c", "image": "i"}]},
            }
        )
    v1 = client.CoreV1Api(api(kube_cluster))

    def names(selector: str) -> list[str]:
        return [
            p.metadata.name
            for p in v1.list_namespaced_pod("default", label_selector=selector).items
        ]

    assert names("app=web") == ["a", "b"]
    assert names("app==web,tier!=back") == ["a"]
    assert names("app=web,!already_checked") == ["a"]
    assert names("already_checked") == ["b"]
    assert names("app in (db, web),tier notin (front)") == ["b", "c"]
    assert names("app!=web") == ["c"]
    assert names("") == ["a", "b", "c"]
    with pytest.raises(ApiException) as bad:
        names("app in (web")
    assert bad.value.status == 400
    phase = v1.list_namespaced_pod("default", field_selector="metadata.name=c")
    assert [p.metadata.name for p in phase.items] == ["c"]


def test_kubelet_runs_pods_with_volumes_env_and_logs(kube_cluster: Cluster, tmp_path: Path) -> None:
    v1 = client.CoreV1Api(api(kube_cluster))
    secret = {"metadata": {"name": "creds"}, "stringData": {"password": "s3cr3t"}}
    v1.create_namespaced_secret("default", secret)
    assert kube_cluster.get("Secret", "creds")["data"] == {"password": "czNjcjN0"}
    data = kube_cluster.pvc("data")
    (data / "seed.txt").write_text("seeded\n")
    script = (
        'cat /pvc/seed.txt; echo "$PASSWORD" > /scratch/p; cat /scratch/p /creds/password; echo;'
        "touch /pvc-ro/x 2>/dev/null || echo read-only; echo $HOME; command -v stash-agent;"
        "echo to-stderr >&2; hostname; sleep 0.5; exit 0"
    )
    pod = pod_doc(
        "runner",
        script,
        volumes=[
            {"name": "pvc", "persistentVolumeClaim": {"claimName": "data"}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "creds", "secret": {"secretName": "creds"}},
        ],
    )
    pod["spec"]["containers"][0]["env"] = [
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}
    ]
    pod["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "pvc", "mountPath": "/pvc"},
        {"name": "pvc", "mountPath": "/pvc-ro", "readOnly": True},
        {"name": "scratch", "mountPath": "/scratch"},
        {"name": "creds", "mountPath": "/creds", "readOnly": True},
    ]
    v1.create_namespaced_pod("default", pod)
    done = kube_cluster.wait_for(
        lambda: kube_cluster.get("Pod", "runner")["status"]["phase"] in ("Succeeded", "Failed"),
        what="pod to finish",
    )
    assert done
    status = kube_cluster.get("Pod", "runner")["status"]
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    log = read_log(v1, "runner")
    assert status["phase"] == "Succeeded", log
    assert terminated["exitCode"] == 0 and terminated["finishedAt"]
    lines = log.splitlines()
    assert lines[:4] == ["seeded", "s3cr3t", "s3cr3t", "read-only"]
    assert "/fakekube/kubelet/" in lines[4]  # HOME: a fresh folder per pod
    assert lines[5].endswith(".venv/bin/stash-agent") and "to-stderr" in lines
    assert lines[-1] == "runner"  # the pod's host name, as restic writes it into locks
    assert not any(Path(p).exists() for p in ("/pvc", "/pvc-ro", "/scratch", "/creds"))
    stamped = read_log(v1, "runner", timestamps=True)
    assert stamped.splitlines()[0].split(" ", 1)[1] == "seeded"
    datetime.fromisoformat(stamped.split(" ", 1)[0].replace("000Z", "+00:00"))


def test_kubelet_waits_for_a_missing_secret_then_kills_on_delete(kube_cluster: Cluster) -> None:
    v1 = client.CoreV1Api(api(kube_cluster))
    pod = pod_doc("waiter", "echo started; sleep 60")
    pod["spec"]["containers"][0]["env"] = [
        {"name": "K", "valueFrom": {"secretKeyRef": {"name": "late", "key": "k"}}}
    ]
    v1.create_namespaced_pod("default", pod)

    def waiting_reason() -> str | None:
        statuses = kube_cluster.get("Pod", "waiter")["status"].get("containerStatuses") or [{}]
        return statuses[0].get("state", {}).get("waiting", {}).get("reason")

    assert kube_cluster.wait_for(waiting_reason) == "CreateContainerConfigError"
    assert kube_cluster.get("Pod", "waiter")["status"]["phase"] == "Pending"
    events = v1.list_namespaced_event("default", field_selector="involvedObject.name=waiter")
    assert any(e.type == "Warning" and 'secret "late"' in e.message for e in events.items)
    kube_cluster.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "late"}, "data": {"k": "dg=="}}
    )
    kube_cluster.wait_for(lambda: kube_cluster.get("Pod", "waiter")["status"]["phase"] == "Running")
    kube_cluster.wait_for(lambda: "started" in kube_cluster.logs("waiter"))
    proc = kube_cluster.kubelet.procs[kube_cluster.get("Pod", "waiter")["metadata"]["uid"]]
    v1.delete_namespaced_pod("waiter", "default")
    kube_cluster.wait_for(lambda: proc.poll() is not None, what="the process to be killed")


def test_unsupported_volume_fails_the_pod(kube_cluster: Cluster) -> None:
    v1 = client.CoreV1Api(api(kube_cluster))
    pod = pod_doc("nfs", "true", volumes=[{"name": "n", "nfs": {"server": "x", "path": "/"}}])
    v1.create_namespaced_pod("default", pod)
    kube_cluster.wait_for(lambda: kube_cluster.get("Pod", "nfs")["status"]["phase"] == "Failed")
    assert "nfs" in kube_cluster.get("Pod", "nfs")["status"]["message"]


def test_custom_objects_status_and_conflicts(kube_cluster: Cluster) -> None:
    co = client.CustomObjectsApi(api(kube_cluster))
    args = ("stash.appscode.com", "v1alpha1", "default", "repositories")
    repo = co.create_namespaced_custom_object(
        *args,
        {
            "apiVersion": "stash.appscode.com/v1alpha1",
            "kind": "Repository",
            "metadata": {"name": "repo", "labels": {"team": "a"}},
            "spec": {"backend": {"local": {"mountPath": "/repo"}}},
            "status": {"ignored": True},
        },
    )
    assert "ignored" not in repo.get("status", {})  # create resets status, like the real server
    rv = repo["metadata"]["resourceVersion"]

    patched = co.patch_namespaced_custom_object_status(
        *args, "repo", {"status": {"backupCount": 1}, "spec": {"backend": {}}}
    )
    assert patched["status"] == {"backupCount": 1}
    assert patched["spec"]["backend"] == {"local": {"mountPath": "/repo"}}  # only status changes
    assert int(patched["metadata"]["resourceVersion"]) > int(rv)

    stale = {**repo, "status": {"backupCount": 99}}
    with pytest.raises(ApiException) as conflict:
        co.replace_namespaced_custom_object_status(*args, "repo", stale)
    assert conflict.value.status == 409
    fresh = co.get_namespaced_custom_object(*args, "repo")
    fresh["status"]["backupCount"] = 2
    assert co.replace_namespaced_custom_object_status(*args, "repo", fresh)["status"] == {
        "backupCount": 2
    }
    with pytest.raises(ApiException) as no_rv:
        body = {**fresh, "metadata": {"name": "repo"}}
        co.replace_namespaced_custom_object(*args, "repo", body)
    assert no_rv.value.status == 422

    listed = co.list_namespaced_custom_object(*args, label_selector="team=a")["items"]
    assert [r["metadata"]["name"] for r in listed] == ["repo"]
    assert co.list_namespaced_custom_object(*args, label_selector="team=b")["items"] == []
    agent = co.create_cluster_custom_object(
        "stash.appscode.com",
        "v1alpha1",
        "backupagents",
        {
            "apiVersion": "stash.appscode.com/v1alpha1",
            "kind": "BackupAgent",
            "metadata": {"name": "restic"},
            "spec": {"image": "stash:1"},
        },
    )
    assert "namespace" not in agent["metadata"]
    co.delete_namespaced_custom_object(*args, "repo")
    with pytest.raises(ApiException) as gone:
        co.get_namespaced_custom_object(*args, "repo")
    assert gone.value.status == 404


def test_discovery(kube_cluster: Cluster) -> None:
    from kubernetes import dynamic

    dyn = dynamic.DynamicClient(api(kube_cluster))
    repos = dyn.resources.get(api_version="stash.appscode.com/v1alpha1", kind="Repository")
    assert repos.namespaced and repos.name == "repositories"
    agents = dyn.resources.get(api_version="stash.appscode.com/v1alpha1", kind="BackupAgent")
    assert not agents.namespaced
    assert dyn.resources.get(api_version="apps/v1", kind="StatefulSet").subresources["scale"]
    dyn.resources.get(api_version="appcatalog.appscode.com/v1alpha1", kind="AppBinding")
    assert client.VersionApi(api(kube_cluster)).get_code().git_version.startswith("v1.")


def test_scale_subresource_and_workload_pods(kube_cluster: Cluster) -> None:
    apps = client.AppsV1Api(api(kube_cluster))
    labels = {"app": "db"}
    template = {
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": "db", "image": "postgres"}]},
    }
    apps.create_namespaced_stateful_set(
        "default",
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "db"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "serviceName": "db",
                "template": template,
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {}}],
            },
        },
    )

    def ready(name: str, want: int) -> bool:
        sts = apps.read_namespaced_stateful_set(name, "default")
        pods = kube_cluster.pods(selector="app=db")
        return (
            sts.status.observed_generation == sts.metadata.generation
            and (sts.status.ready_replicas or 0) == want
            and len(pods) == want
        )

    kube_cluster.wait_for(lambda: ready("db", 2), what="two db pods")
    pods = kube_cluster.pods(selector="app=db")
    assert [p["metadata"]["name"] for p in pods] == ["db-0", "db-1"]
    assert pods[0]["metadata"]["annotations"][WORKLOAD_ANNOTATION] == "StatefulSet/db"
    assert pods[0]["status"]["phase"] == "Running"
    assert kube_cluster.get("PersistentVolumeClaim", "data-db-1")["status"]["phase"] == "Bound"

    scale = apps.read_namespaced_stateful_set_scale("db", "default")
    assert scale.spec.replicas == 2 and scale.status.selector == "app=db"
    apps.patch_namespaced_stateful_set_scale("db", "default", {"spec": {"replicas": 0}})
    assert len(kube_cluster.pods(selector="app=db")) == 2  # the controller takes a moment
    kube_cluster.wait_for(lambda: ready("db", 0), what="scaled to zero, pods gone")
    apps.replace_namespaced_stateful_set_scale(
        "db", "default", {"metadata": {"name": "db"}, "spec": {"replicas": 1}}
    )
    kube_cluster.wait_for(lambda: ready("db", 1), what="ready again")
    uid = kube_cluster.get("Pod", "db-0")["metadata"]["uid"]
    client.CoreV1Api(api(kube_cluster)).delete_namespaced_pod("db-0", "default")
    kube_cluster.wait_for(
        lambda: (
            kube_cluster.pods(selector="app=db")
            and kube_cluster.get("Pod", "db-0")["metadata"]["uid"] != uid
        ),
        what="a deleted workload pod replaced",
    )

    apps.create_namespaced_deployment(
        "default",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {**template, "metadata": {"labels": {"app": "web"}}},
            },
        },
    )
    kube_cluster.wait_for(lambda: len(kube_cluster.pods(selector="app=web")) == 1)
    pod = kube_cluster.pods(selector="app=web")[0]
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    assert apps.list_namespaced_replica_set("default").items[0].spec.replicas == 1
    apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 0}})
    kube_cluster.wait_for(lambda: not kube_cluster.pods(selector="app=web"))
    dep = apps.read_namespaced_deployment("web", "default")
    assert dep.status.ready_replicas is None and dep.status.observed_generation == 2
    assert kube_cluster.kubelet.procs == {}  # workload pods are never executed


def test_watch_streams_changes(kube_cluster: Cluster) -> None:
    from kubernetes import watch

    co = client.CustomObjectsApi(api(kube_cluster))
    args = ("stash.appscode.com", "v1alpha1", "default", "recoveries")
    body = {"apiVersion": "stash.appscode.com/v1alpha1", "kind": "Recovery", "spec": {}}
    co.create_namespaced_custom_object(*args, {**body, "metadata": {"name": "r1"}})
    seen = []
    started = time.monotonic()
    for event in watch.Watch().stream(co.list_namespaced_custom_object, *args, timeout_seconds=1):
        seen.append((event["type"], event["object"]["metadata"]["name"]))
        if len(seen) == 1:
            co.create_namespaced_custom_object(*args, {**body, "metadata": {"name": "r2"}})
    assert seen == [("ADDED", "r1"), ("ADDED", "r2")]
    assert time.monotonic() - started < 5
    v1 = client.CoreV1Api(api(kube_cluster))
    events = v1.list_namespaced_event(
        "default",
        field_selector="involvedObject.name=nothing",
        watch=True,
        timeout_seconds=1,
        _preload_content=False,
    )
    assert events.read() == b""


def test_down_and_up(kube_cluster: Cluster) -> None:
    v1 = client.CoreV1Api(api(kube_cluster))
    assert v1.list_namespaced_pod("default").items == []
    kube_cluster.down()
    with pytest.raises(ApiException) as unavailable:
        v1.list_namespaced_pod("default")
    assert unavailable.value.status == 503
    kube_cluster.up()
    assert v1.list_namespaced_pod("default").items == []
    kube_cluster.down(refuse=True)
    fresh = client.CoreV1Api(api(kube_cluster))
    fresh.api_client.configuration.retries = 0
    with pytest.raises(Exception, match="(?i)refused|reset|aborted|disconnected|max retries"):
        fresh.list_namespaced_pod("default", _request_timeout=2)
    kube_cluster.up()
    assert client.CoreV1Api(api(kube_cluster)).list_namespaced_pod("default").items == []


def test_unhandled_routes_are_loud(kube_cluster: Cluster) -> None:
    v1 = client.CoreV1Api(api(kube_cluster))
    with pytest.raises(ApiException) as err:
        v1.list_namespaced_endpoints("default")
    assert err.value.status == 500 and "unhandled route" in err.value.body
    assert kube_cluster.server.unhandled  # the fixture would fail the test at teardown
    kube_cluster.server.unhandled.clear()


IN_CLUSTER_PROBE = """
import os
from stash_plugin.clusterdump import Kube, KubeError
kube = Kube.from_env(os.environ)
print("url", kube.scheme, kube.host, kube.port)
print("namespace", open(os.environ["SA_DIR"] + "/namespace").read())
print("listed", len(kube.request("GET", "/api/v1/namespaces/default/configmaps")["items"]))
try:
    kube.request("PATCH", "/api/v1/namespaces/default/configmaps/c", body={})
except KubeError as e:
    print("refused", e)
"""


def test_service_account_pods_get_in_cluster_config_and_only_their_verbs(
    kube_cluster: Cluster,
) -> None:
    """As on a node: a pod of a ServiceAccount reaches the API over TLS with its own
    token (through the agent's in-cluster code), and may use only the account's verbs."""
    import sys

    from kube.kubelet import SERVICE_ACCOUNT_DIR

    v1 = client.CoreV1Api(api(kube_cluster))
    pod = pod_doc("probe", "", serviceAccountName="reader")
    pod["spec"]["containers"][0]["command"] = [sys.executable, "-c", IN_CLUSTER_PROBE]
    pod["spec"]["containers"][0]["env"] = [{"name": "SA_DIR", "value": SERVICE_ACCOUNT_DIR}]
    with pytest.raises(ApiException) as refused:
        v1.create_namespaced_pod("default", pod)
    assert refused.value.status == 403
    message = json.loads(refused.value.body)["message"]
    assert message == (
        'pods "probe" is forbidden: error looking up service account default/reader: '
        'serviceaccount "reader" not found'
    )

    kube_cluster.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}}
    )
    kube_cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
    kube_cluster.server.grant("default", "reader", ["get", "list"])
    v1.create_namespaced_pod("default", pod)
    kube_cluster.wait_for(
        lambda: kube_cluster.get("Pod", "probe")["status"]["phase"] in ("Succeeded", "Failed"),
        timeout=30,
    )
    log = kube_cluster.logs("probe")
    assert kube_cluster.get("Pod", "probe")["status"]["phase"] == "Succeeded", log
    assert f"url https 127.0.0.1 {kube_cluster.server.tls_port}" in log
    assert "namespace default" in log and "listed 1" in log
    assert (
        'refused 403 Forbidden: configmaps "c" is forbidden: User '
        '"system:serviceaccount:default:reader" cannot patch resource "configmaps" in API '
        'group "" in the namespace "default"'
    ) in log
    users = {c.user for c in kube_cluster.requests if c.path.endswith("/configmaps/c")}
    assert users == {"system:serviceaccount:default:reader"}
