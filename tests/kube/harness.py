"""``start_cluster(tmp_path)``: the fake API server and the test kubelet, ready to use.

Usable from any test folder (``from kube.harness import start_cluster``); the
``kube_cluster`` fixture in ``tests/kube/conftest.py`` wraps it. Pass pytest's
``monkeypatch`` to point Airflow's ``kubernetes_default`` connection at the fake
for the test; ``cluster.env`` has it and ``KUBECONFIG`` for a subprocess.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from containers import Podman
from kube.fakeapi import ApiError, Call, FakeKubeServer, Obj
from kube.kubelet import Kubelet
from kube.tls import make_server_cert


@dataclass
class Cluster:
    """Handles for a test: the server, the kubelet, the kubeconfig and PV storage."""

    server: FakeKubeServer
    kubelet: Kubelet
    kubeconfig: Path
    pv_root: Path
    namespace: str = "default"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def requests(self) -> list[Call]:
        """Every request the server got, in order."""
        return self.server.requests

    @property
    def url(self) -> str:
        return self.server.url

    def apply(self, obj: Obj) -> Obj:
        """Create or replace ``obj`` in the store directly, ``status`` included (no HTTP)."""
        store = self.server.store
        rt = store.type_of(obj["apiVersion"], obj["kind"])
        ns = obj["metadata"].get("namespace", self.namespace)
        try:
            store.get(rt, ns, obj["metadata"]["name"])
        except ApiError:
            return store.create(rt, ns, obj, from_api=False)
        return store.update(rt, ns, obj["metadata"]["name"], lambda _: json.loads(json.dumps(obj)))

    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj:
        """One object by kind or plural (``"Pod"``, ``"repositories"``); KeyError if missing."""
        store = self.server.store
        try:
            return store.get(store.type_named(kind), namespace or self.namespace, name)
        except ApiError as e:
            raise KeyError(f"{kind} {namespace or self.namespace}/{name}") from e

    def objects(self, kind: str, namespace: str | None = None, selector: str = "") -> list[Obj]:
        """Objects of a kind or plural in a namespace, filtered by a label selector."""
        store = self.server.store
        return store.select(store.type_named(kind), namespace or self.namespace, selector)

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        store = self.server.store
        store.delete(store.type_named(kind), namespace or self.namespace, name)

    def pods(self, namespace: str | None = None, selector: str = "") -> list[Obj]:
        return self.objects("Pod", namespace, selector)

    def logs(self, pod: str, container: str | None = None, namespace: str | None = None) -> str:
        """What the container printed so far (stdout and stderr, interleaved)."""
        obj = self.get("Pod", pod, namespace)
        name = container or obj["spec"]["containers"][0]["name"]
        log = self.server.store.logs.get((obj["metadata"]["uid"], name))
        return b"".join(line for _, line in log.lines).decode() if log else ""

    def pv_path(self, namespace: str, claim: str) -> Path:
        """The host folder behind PVC ``claim``: seed data here before the pod runs."""
        return self.pv_root / namespace / claim

    def pvc(self, claim: str, namespace: str | None = None, size: str = "1Gi") -> Path:
        """A Bound PersistentVolumeClaim object plus its (created) host folder."""
        ns = namespace or self.namespace
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": ns},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": size}},
                    "volumeName": f"pv-{ns}-{claim}",
                },
                "status": {"phase": "Bound", "capacity": {"storage": size}},
            }
        )
        path = self.pv_path(ns, claim)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def wait_for(self, check: Callable[[], Any], timeout: float = 10, what: str = "") -> Any:
        """Poll ``check`` until it returns something truthy; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
            time.sleep(0.05)

    def down(self, refuse: bool = False) -> None:
        """API server outage: 503 on every request, or refused connections with ``refuse``."""
        self.server.down(refuse)

    def up(self) -> None:
        self.server.up()

    def stop(self, check: bool = True) -> None:
        """Stop the threads and kill pods still running; then fail on unhandled routes."""
        self.server.stop()
        self.kubelet.stop()
        if check:
            problems = self.server.unhandled + self.server.controller.errors + self.kubelet.errors
            assert not problems, "fake Kubernetes problems:\n" + "\n".join(problems)


def start_cluster(
    tmp_path: Path,
    monkeypatch: Any = None,
    namespace: str = "default",
    export_kubeconfig: bool = False,
    podman: Podman | None = None,
) -> Cluster:
    """Start a fake API server and kubelet; call ``cluster.stop()`` at the end.

    With ``monkeypatch``, sets ``AIRFLOW_CONN_KUBERNETES_DEFAULT`` (a connection
    with ``kube_config_path``) for the test. ``KUBECONFIG`` is only exported with
    ``export_kubeconfig``: with it set, a deferrable KubernetesPodOperator (provider
    10.25) hands the file to its trigger as ``config_dict`` while the trigger's hook
    also reads ``kube_config_path`` from the connection, and the trigger fails with
    "Options kube_config_path, kube_config, in_cluster, and config_dict are mutually
    exclusive" (the operator then only survives by reading the pod itself).
    ``cluster.env`` holds both variables for subprocesses such as ``kubectl``.
    With ``podman``, the kubelet runs each container from its image (see
    ``kube.kubelet``); without, as a process on this host.
    """
    root = tmp_path / "fakekube"
    (root / "kubelet").mkdir(parents=True, exist_ok=True)
    server = FakeKubeServer().start()
    tls = make_server_cert(root / "tls")
    server.serve_tls(str(tls.cert_file), str(tls.key_file))
    kubelet = Kubelet(server.store, root / "pv", root / "kubelet", podman)
    kubelet.api = ("127.0.0.1", server.tls_port, tls.ca_file.read_text())
    kubelet.start()
    kubeconfig = root / "kubeconfig.yaml"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "fakekube",
                "clusters": [{"name": "fakekube", "cluster": {"server": server.url}}],
                "users": [{"name": "tester", "user": {"token": "fakekube-token"}}],
                "contexts": [
                    {
                        "name": "fakekube",
                        "context": {
                            "cluster": "fakekube",
                            "user": "tester",
                            "namespace": namespace,
                        },
                    }
                ],
            }
        )
    )
    extra = {"kube_config_path": str(kubeconfig), "namespace": namespace}
    env = {
        "KUBECONFIG": str(kubeconfig),
        "AIRFLOW_CONN_KUBERNETES_DEFAULT": json.dumps({"conn_type": "kubernetes", "extra": extra}),
    }
    if monkeypatch is not None:
        for key, value in env.items():
            if key != "KUBECONFIG" or export_kubeconfig:
                monkeypatch.setenv(key, value)
    cluster = Cluster(server, kubelet, kubeconfig, root / "pv", namespace, env)
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    return cluster


def slot_lease(
    node: str, holder: str, acquired: datetime, namespace: str, pod_namespace: str
) -> dict[str, Any]:
    """A node slot Lease (``runtime.nodeslots``) as another worker would have taken it:
    slot 0 of ``node`` in ``namespace``, held by ``holder`` for a pod in ``pod_namespace``."""
    from stash_plugin.runtime.nodeslots import (
        HOLDER_LABEL,
        HOLDER_NAMESPACE_ANNOTATION,
        NODE_LABEL,
        lease_name,
        node_digest,
    )

    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease_name(node, 0),
            "namespace": namespace,
            "labels": {NODE_LABEL: node_digest(node), HOLDER_LABEL: holder},
            "annotations": {HOLDER_NAMESPACE_ANNOTATION: pod_namespace},
        },
        "spec": {
            "holderIdentity": holder,
            "acquireTime": acquired.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        },
    }
