"""The Helm chart ``charts/stash-airflow``, rendered and linted by the Helm SDK (offline).

Every rendered object is checked with ``kubernetes-validate`` (strict) for each
Kubernetes version the chart claims; the BackupAgents it creates are parsed by the
project's own resource models. The official Airflow chart (a dependency) cannot be
fetched here: lint's one expected complaint is its absence, and its objects are not
rendered.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is a test extra")

CHART = Path(__file__).resolve().parents[2] / "charts" / "stash-airflow"
OFF = {  # every optional part off
    "airflow": {"enabled": False},
    "sync": {"enabled": False, "interval": 10},
    "backupAgents": {"stash": None},  # null removes a default key
    "snapshot": {"create": False},
    "rbac": {"create": False},
}
MISSING_DEPENDENCY = "chart directory is missing these dependencies: airflow"


def claimed_versions() -> list[str]:
    """Versions from the chart's kubeVersion floor up to the newest schema available."""
    floor = re.match(
        r">=\s*1\.(\d+)", yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    )
    assert floor, "Chart.yaml kubeVersion must state a floor"
    newest = int(kubernetes_validate.latest_version().split(".")[1])
    return [f"1.{minor}.0" for minor in range(int(floor[1]), newest + 1)]


def render(values: dict[str, Any] | None = None, namespace: str = "stash") -> list[dict[str, Any]]:
    chart = helm.Chart.load(CHART)
    rendered = chart.render(values, name="stash", namespace=namespace, is_install=True)
    docs = [
        doc
        for path, text in sorted(rendered.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    return docs + [yaml.safe_load(crd["data"]) for crd in chart.crds]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for doc in docs:
        out.setdefault(doc["kind"], []).append(doc["metadata"]["name"])
    return {k: sorted(v) for k, v in sorted(out.items())}


@pytest.mark.parametrize("values", [None, OFF], ids=["defaults", "optional-parts-off"])
def test_chart_lints_clean_but_for_the_official_chart_it_cannot_fetch(
    values: dict[str, Any] | None,
) -> None:
    report = helm.lint(CHART, values, strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert [m["error"] for m in problems] == [MISSING_DEPENDENCY], report
    assert [d["name"] for d in helm.dependency_list(CHART)] == ["airflow"]


def test_default_install_objects() -> None:
    docs = render()
    assert by_kind(docs) == {
        "BackupAgent": ["stash"],
        "ClusterRole": ["stash-sync", "stash-tasks"],
        "ClusterRoleBinding": ["stash-sync", "stash-tasks"],
        "CustomResourceDefinition": sorted(
            f"{p}.stash.appscode.com"
            for p in ("backupagents", "backuptemplates", "recoveries", "repositories", "restics")
        ),
        "Deployment": ["stash-sync"],
        "PersistentVolumeClaim": ["stash-snapshot"],
        "Role": ["stash-node-slots"],
        "RoleBinding": ["stash-node-slots"],
        "ServiceAccount": ["stash-airflow-sync", "stash-airflow-tasks"],
    }
    slots = next(d for d in docs if d["kind"] == "RoleBinding")
    assert slots["metadata"]["namespace"] == "stash"
    assert slots["subjects"] == [
        {"kind": "ServiceAccount", "name": "stash-airflow-tasks", "namespace": "stash"}
    ]
    agent = next(d for d in docs if d["kind"] == "BackupAgent")
    assert agent["spec"] == {"image": "stash-airflow/agent:0.1.0"}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["airflow"]["config"]["stash"]["agent_image"] == values["agentImage"]
    tasks = values["serviceAccounts"]["tasks"]
    for part in ("scheduler", "workers", "triggerer"):
        assert values["airflow"][part]["serviceAccount"] == {"create": False, "name": tasks}
    claim = values["snapshot"]["claimName"]
    assert values["airflow"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim
    mount = values["airflow"]["volumeMounts"][0]
    assert (mount["mountPath"], mount["readOnly"]) == (values["snapshot"]["mountPath"], True)
    manifests = values["airflow"]["config"]["stash"]["manifests_dir"]
    assert manifests == f"{values['snapshot']['mountPath']}/{values['snapshot']['fileName']}"
    sync = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert sync["containers"][0]["args"] == [
        "stash",
        "sync",
        f"--output={manifests}",
        "--interval=10",
    ]


def test_optional_parts_off_leave_only_the_crds() -> None:
    assert set(by_kind(render(OFF))) == {"CustomResourceDefinition"}


def test_namespaced_rbac_binds_only_in_the_listed_namespaces() -> None:
    docs = render({"rbac": {"create": True, "namespaces": ["team-a", "team-b"]}})
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    # and the node slots' Leases in the release's own namespace
    assert sorted(d["metadata"]["namespace"] for d in bindings) == ["stash", "team-a", "team-b"]
    assert by_kind(docs)["ClusterRoleBinding"] == ["stash-sync"]


def test_cluster_backup_service_accounts_may_only_read_or_apply() -> None:
    docs = render({"rbac": {"create": True, "clusterBackupNamespaces": ["ops"]}})
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    assert roles["stash-cluster-reader"]["rules"] == [
        {"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list"]}
    ]
    assert roles["stash-cluster-restorer"]["rules"][0]["verbs"] == [
        "get",
        "list",
        "create",
        "patch",
    ]
    accounts = [
        (d["metadata"]["namespace"], d["metadata"]["name"])
        for d in docs
        if d["kind"] == "ServiceAccount" and d["metadata"]["name"].startswith("stash-cluster")
    ]
    assert sorted(accounts) == [("ops", "stash-cluster-reader"), ("ops", "stash-cluster-restorer")]
    binding = next(
        d
        for d in docs
        if d["metadata"]["name"] == "stash-cluster-reader" and d["kind"] == "ClusterRoleBinding"
    )
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "stash-cluster-reader", "namespace": "ops"}
    ]
    assert "stash-cluster-reader" not in str(render())  # none unless namespaces are listed


def test_customised_backup_agents_are_valid_resources() -> None:
    from stash_plugin.api.parse import parse_document
    from stash_plugin.api.resources import BackupAgent

    values = {
        "backupAgents": {
            "stash": {"image": ""},
            "mysqldump": {
                "image": "example.org/mysql-tools:8",
                "commands": {"backup": ['mysqldump --all-databases | restic backup --stdin "$@"']},
            },
        }
    }
    agents = [d for d in render(values) if d["kind"] == "BackupAgent"]
    parsed = {a["metadata"]["name"]: parse_document(a, "chart") for a in agents}
    assert all(isinstance(p, BackupAgent) for p in parsed.values()), parsed
    assert parsed["mysqldump"].spec.image == "example.org/mysql-tools:8"  # type: ignore[union-attr]


@pytest.mark.parametrize("values", [None, OFF, {"rbac": {"create": True, "namespaces": ["a"]}}])
def test_every_rendered_object_is_valid_for_every_claimed_kubernetes_version(
    values: dict[str, Any] | None,
) -> None:
    docs = [d for d in render(values) if d["apiVersion"] != "stash.appscode.com/v1alpha1"]
    assert docs
    for version in claimed_versions():
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                raise AssertionError(
                    f"{doc['kind']} {doc['metadata']['name']} on {version}: {e}"
                ) from None


def test_values_schema_refuses_what_would_break_the_install() -> None:
    chart = helm.Chart.load(CHART)
    chart.validate_schema(chart.merge_values(None))
    for bad in (
        {"sync": {"enabled": True, "interval": 0}},
        {"snapshot": {"create": True, "claimName": "Bad_Name", "mountPath": "/x", "fileName": "f"}},
        {"backupAgents": {"x": {"image": 1}}},
        {"unknown": True},
    ):
        with pytest.raises(Exception, match=r"stash-airflow:\n- at '"):
            chart.validate_schema(chart.merge_values(bad))
    assert json.loads((CHART / "values.schema.json").read_text())["additionalProperties"] is False
