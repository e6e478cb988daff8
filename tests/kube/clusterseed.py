"""A small cluster's worth of objects for Cluster backup tests: what a real API server
would hold after ``kubectl apply`` (server-set fields included, so sanitizing shows)."""

from __future__ import annotations

import copy
import json
from typing import Any

from kube.fakeapi import FakeKubeServer

Obj = dict[str, Any]
SECRET_VALUE = "c2VjcmV0LXZhbHVlLW5ldmVyLWxvZ2dlZA=="  # base64 of secret-value-never-logged
SECRET_PLAIN = "secret-value-never-logged"
NAMESPACES = ("shop", "blog")
CRD: Obj = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {}}],
    },
}
SELECTOR: list[Obj] = [
    {
        "group": "",
        "resources": [
            "namespaces",
            "configmaps",
            "secrets",
            "persistentvolumeclaims",
            "services",
            "serviceaccounts",
            "pods",
        ],
    },
    {"group": "apps/v1", "resources": ["deployments", "replicasets"]},
    {
        "group": "rbac.authorization.k8s.io",
        "resources": ["roles", "rolebindings", "clusterroles", "clusterrolebindings"],
    },
    {"group": "apiextensions.k8s.io", "resources": ["customresourcedefinitions"]},
    {"group": "example.com", "resources": ["widgets"]},
]


def _last_applied(obj: Obj) -> Obj:
    """What ``kubectl apply`` leaves on an object: the annotation and managedFields."""
    meta = obj.setdefault("metadata", {})
    meta.setdefault("annotations", {})["kubectl.kubernetes.io/last-applied-configuration"] = (
        json.dumps(obj)
    )
    meta["managedFields"] = [{"manager": "kubectl", "operation": "Apply"}]
    return obj


def namespaced(ns: str) -> list[Obj]:
    """The objects of one application namespace (parents only)."""
    labels = {"app": "web"}
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "web-config", "namespace": ns},
            "data": {"greeting": f"hello from {ns}"},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "web-secret", "namespace": ns},
            "type": "Opaque",
            "data": {"token": SECRET_VALUE},
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "web-data", "namespace": ns},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "web", "namespace": ns},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "web-reader", "namespace": ns},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "web-reader", "namespace": ns},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "web-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "web", "namespace": ns}],
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {
                "type": "NodePort",
                "selector": labels,
                "clusterIP": "10.96.0.17",
                "clusterIPs": ["10.96.0.17"],
                "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}],
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": ns, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
                },
            },
        },
        {
            "apiVersion": "example.com/v1",
            "kind": "Widget",
            "metadata": {"name": "gadget", "namespace": ns},
            "spec": {"size": 3, "colour": "blue"},
        },
    ]


def cluster_scoped() -> list[Obj]:
    return [
        *({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in NAMESPACES),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "widget-viewer"},
            "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "widget-viewer"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "widget-viewer",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "web", "namespace": "shop"}],
        },
        copy.deepcopy(CRD),
    ]


def seed(server: FakeKubeServer) -> list[Obj]:
    """Create the objects through the store as the API would; the CRD first. Returns
    the parents as created (server fields included)."""
    store = server.store
    created = []
    for obj in [*cluster_scoped(), *(o for n in NAMESPACES for o in namespaced(n))]:
        rt = store.type_of(obj["apiVersion"], obj["kind"])
        ns = obj["metadata"].get("namespace", "")
        created.append(store.create(rt, ns, _last_applied(copy.deepcopy(obj))))
    return created


def wipe(server: FakeKubeServer, keep: str = "") -> None:
    """Delete every object of the kinds the seed made (children included), and the CRD;
    the namespace ``keep`` and its objects stay."""
    store = server.store
    kinds = {o["kind"] for o in [*cluster_scoped(), *namespaced("x")]} | {"ReplicaSet", "Pod"}
    types = sorted(store.types.values(), key=lambda rt: rt.group != "apps")  # owners first
    for rt in types:
        if rt.kind in kinds and rt.kind != "CustomResourceDefinition":
            for obj in store.select(rt, None):
                if keep in (obj["metadata"].get("namespace"), obj["metadata"]["name"]):
                    continue
                store.delete(rt, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
    crd = store.type_of("apiextensions.k8s.io/v1", "CustomResourceDefinition")
    for obj in store.select(crd, None):
        store.delete(crd, "", obj["metadata"]["name"])
