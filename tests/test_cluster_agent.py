"""``stash-agent cluster-dump`` and ``cluster-restore`` against the fake API server with
real restic: names checked by discovery at run time, paged lists, one failing object
named without stopping the others, a tampered snapshot tree, and the local runtime's
gate on the Airflow connection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube.clusterseed import SECRET_PLAIN, SECRET_VALUE, SELECTOR, seed, wipe
from kube.fakeapi import FakeKubeServer
from stashtest import PASSWORD

from stash_plugin.clusterdump import ClusterError, Resource, object_file
from stash_plugin.plan.model import Step
from stash_plugin.runtime.errors import StepFailed
from stash_plugin.runtime.kube import agent_api_env
from stash_plugin.settings import load_settings

TAGS = "--tag=namespace=demo,restic=c,target=cluster,path=/cluster"


@pytest.fixture
def server() -> Iterator[FakeKubeServer]:
    s = FakeKubeServer().start()
    yield s
    s.stop()
    assert not s.unhandled, s.unhandled


def agent(tmp_path: Path, server: FakeKubeServer, *args: str) -> tuple[int, str, dict[str, Any]]:
    result = tmp_path / "result.json"
    result.unlink(missing_ok=True)
    env = {
        "PATH": os.environ["PATH"],
        "RESTIC_REPOSITORY": str(tmp_path / "repo"),
        "RESTIC_PASSWORD": PASSWORD,
        "STASH_KUBE_SERVER": server.url,
        "STASH_KUBE_TOKEN": "fake-token",
        "STASH_RESULT_FILE": str(result),
        "TMPDIR": str(tmp_path),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "stash_plugin.agent", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    return proc.returncode, out, json.loads(result.read_text()) if result.exists() else {}


def dump_args(selector: list[dict[str, Any]], *extra: str) -> list[str]:
    res = [f"--resource={g['group']}:{r}" for g in selector for r in g["resources"]]
    backup = ["::", "/cluster", "restic", "backup", "--json", "--quiet", "--host=cluster", TAGS]
    return ["cluster-dump", "--init", *res, *extra, *backup]


def test_an_unknown_resource_is_a_named_error_with_the_closest_served_name(
    tmp_path: Path, server: FakeKubeServer
) -> None:
    seed(server)
    selector = [{"group": "example.com", "resources": ["widgts"]}]
    code, out, _ = agent(tmp_path, server, *dump_args(selector))
    assert code == 1
    assert "resource 'widgts' is not served in group 'example.com' (did you mean 'widgets'?)" in out
    assert not (tmp_path / "repo").exists()  # refused before anything was written
    code, out, _ = agent(
        tmp_path, server, *dump_args([{"group": "exmple.com", "resources": ["x"]}])
    )
    assert code == 1 and "did you mean 'example.com'?" in out


def test_large_lists_are_read_in_pages_and_secrets_stay_out_of_the_output(
    tmp_path: Path, server: FakeKubeServer
) -> None:
    seed(server)
    store = server.store
    rt = store.type_of("v1", "ConfigMap")
    for i in range(1_203):
        store.create(rt, "bulk", {"metadata": {"name": f"cm-{i:05d}"}, "data": {"i": str(i)}})
    code, out, result = agent(tmp_path, server, *dump_args(SELECTOR, "--sanitize"))
    assert code == 0, out
    assert result["objects"]["core/ConfigMap"] == 1_205
    pages = [
        c.query for c in server.requests if c.path == "/api/v1/configmaps" and c.method == "GET"
    ]
    assert len(pages) == 3 and all(p["limit"] == "500" for p in pages)
    assert "continue" not in pages[0] and all(p.get("continue") for p in pages[1:])
    assert SECRET_VALUE not in out and SECRET_PLAIN not in out
    assert not list(tmp_path.glob("stash-cluster-*"))  # the tree is gone after the backup


@pytest.mark.slow
def test_one_failing_object_is_named_and_the_others_are_restored(
    tmp_path: Path, server: FakeKubeServer
) -> None:
    seed(server)
    code, out, _ = agent(tmp_path, server, *dump_args(SELECTOR, "--sanitize", "--parents-only"))
    assert code == 0, out
    wipe(server)
    # Without the CRD the Widgets cannot be applied; everything else must still be.
    code, out, _ = agent(
        tmp_path,
        server,
        "cluster-restore",
        "--tag=namespace=demo",
        "--kind=Namespace",
        "--kind=ConfigMap",
        "--kind=Widget",
    )
    assert code == 1
    assert "2 of 6 objects could not be applied: example.com/Widget blog/gadget:" in out
    cms = server.store.select(server.store.type_of("v1", "ConfigMap"), None)
    assert sorted(c["metadata"]["namespace"] for c in cms) == ["blog", "shop"]


@pytest.mark.slow
def test_a_tampered_tree_entry_is_refused_by_name(tmp_path: Path, server: FakeKubeServer) -> None:
    """A snapshot whose file says it is another object than its place in the tree (one
    way to slip a ClusterRoleBinding into a namespace restore) is refused."""
    tree = tmp_path / "src" / "cluster" / "shop" / "core" / "ConfigMap"
    tree.mkdir(parents=True)
    (tree / "web.yaml").write_text(
        json.dumps(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "web"},
                "roleRef": {"kind": "ClusterRole", "name": "cluster-admin", "apiGroup": "x"},
            }
        )
    )
    env = {**os.environ, "RESTIC_REPOSITORY": str(tmp_path / "repo"), "RESTIC_PASSWORD": PASSWORD}
    subprocess.run(["restic", "init"], env=env, check=True, capture_output=True)
    subprocess.run(
        ["restic", "backup", "--tag=namespace=demo,target=cluster", str(tmp_path / "src/cluster")],
        env=env,
        check=True,
        capture_output=True,
    )
    code, out, _ = agent(tmp_path, server, "cluster-restore", "--tag=namespace=demo")
    assert code == 1
    assert "core/ConfigMap shop/web: the file's object is not the one its place" in out
    crb = server.store.type_of("rbac.authorization.k8s.io/v1", "ClusterRoleBinding")
    assert server.store.select(crb, None) == []


@pytest.mark.parametrize("name", ["..", ".", "a/../../etc", ""])
def test_no_object_name_leaves_the_tree(tmp_path: Path, name: str) -> None:
    r = Resource("", "v1", "configmaps", "ConfigMap", True, ("list",))
    with pytest.raises(ClusterError, match="cannot be a name in the backup tree"):
        object_file(tmp_path, r, "shop", name)
    with pytest.raises(ClusterError):
        object_file(tmp_path, r, name or "..", "ok")


def test_the_local_runtime_hands_the_connection_only_to_listed_namespaces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    step = Step("backup", ("stash-agent",), "tenant", "local", cluster_access="read")
    monkeypatch.setenv("AIRFLOW__STASH__CLUSTER_NAMESPACES", "ops, backup")
    with pytest.raises(StepFailed, match=r"namespace tenant may not use it .*now: ops, backup"):
        agent_api_env(step, load_settings())
