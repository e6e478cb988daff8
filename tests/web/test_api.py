"""The Stash page's API on Airflow's own API server app, with Airflow's own auth.

The app is ``airflow.api_fastapi.app.create_app()`` with the plugin loaded through its
entry point, users from the simple auth manager (an admin and a viewer), and tokens
from its ``/auth/token``: nothing of Airflow's security is stubbed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from stash_plugin.demo import write_demo

BACKUP = "stash-backup.demo.demo-backup.deployment.stash-demo"


def sync_dags() -> None:
    """Put the factory's DAGs in the database, as the DAG processor would."""
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.dagbundle import DagBundleModel
    from airflow.utils.session import create_session

    from stash_plugin.factory import build_dags

    with create_session() as session:
        session.merge(DagBundleModel(name="stash-tests"))
    dags, errors = build_dags()
    assert errors == []
    bag = DagBag(dag_folder="/dev/null", collect_dags=False)
    for dag in dags.values():
        bag.bag_dag(dag)
    sync_bag_to_db(bag, "stash-tests", None)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, airflow_db: None) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("web")
    manifests = write_demo(root / "demo")
    env = {
        "AIRFLOW__STASH__MANIFESTS_DIR": str(manifests),
        "AIRFLOW__STASH__STATE_DIR": str(root / "state"),
        "AIRFLOW__STASH__RUNTIME": "local",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(root / "passwords.json"),
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        from airflow.api_fastapi.app import create_app

        sync_dags()
        client = TestClient(create_app())
        passwords = json.loads((root / "passwords.json").read_text())
        tokens = {}
        for user in ("admin", "viewer"):
            reply = client.post("/auth/token", json={"username": user, "password": passwords[user]})
            assert reply.status_code == 201, reply.text
            tokens[user] = reply.json()["access_token"]
        yield {"client": client, "tokens": tokens, "root": root, "manifests": manifests}


def call(server: dict[str, Any], method: str, path: str, user: str | None, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {server['tokens'][user]}"} if user else {}
    return server["client"].request(method, f"/stash/api/{path}", headers=headers, **kw)


def test_the_page_is_served_and_listed_as_a_ui_plugin(server: dict[str, Any]) -> None:
    page = server["client"].get("/stash/")
    assert page.status_code == 200 and "Back up now" in page.text
    plugins = server["client"].get(
        "/api/v2/plugins", headers={"Authorization": f"Bearer {server['tokens']['admin']}"}
    )
    (stash,) = [p for p in plugins.json()["plugins"] if p["name"] == "stash"]
    assert stash["external_views"][0]["href"] == "/stash/"
    assert stash["external_views"][0]["url_route"] == "stash"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "overview"),
        ("GET", f"targets/{BACKUP}/snapshots"),
        ("GET", f"targets/{BACKUP}/runs"),
        ("GET", f"targets/{BACKUP}/restore?snapshot=0123abcd"),
        ("POST", f"targets/{BACKUP}/backup"),
        ("POST", f"targets/{BACKUP}/restore"),
    ],
)
def test_anonymous_requests_are_refused(server: dict[str, Any], method: str, path: str) -> None:
    reply = call(server, method, path, None, json={})
    assert reply.status_code == 401, reply.text
    bad = server["client"].request(
        method, f"/stash/api/{path}", headers={"Authorization": "Bearer not-a-jwt"}, json={}
    )
    assert bad.status_code == 403


def test_a_user_without_permission_to_run_dags_cannot_start_runs(server: dict[str, Any]) -> None:
    assert call(server, "GET", "overview", "viewer").status_code == 200  # may look
    backup = call(server, "POST", f"targets/{BACKUP}/backup", "viewer", json={})
    assert backup.status_code == 403
    restore = call(
        server, "POST", f"targets/{BACKUP}/restore", "viewer", json={"snapshot": "0123abcd"}
    )
    assert restore.status_code == 403
    assert not list(server["manifests"].glob("restore-*.yaml"))
    assert call(server, "GET", f"targets/{BACKUP}/runs", "admin").json()["runs"] == []


def test_overview_shows_repository_backend_targets_and_recoveries(server: dict[str, Any]) -> None:
    reply = call(server, "GET", "overview", "admin")
    assert reply.status_code == 200, reply.text
    (repo,) = reply.json()["repositories"]
    assert (repo["namespace"], repo["name"], repo["backend"]) == ("demo", "local-repo", "local")
    assert repo["location"] == f"local volume at {(server['root'] / 'demo' / 'repository')}"
    assert repo["maintenanceDagId"] == "stash-maintenance.demo.local-repo"
    (target,) = repo["targets"]
    assert target["dagId"] == BACKUP and target["schedule"] == "every 1m"
    assert target["lastOutcome"] is None and target["snapshotCount"] is None
    assert [r["name"] for r in repo["recoveries"]] == ["demo-restore"]
    assert "RESTIC_PASSWORD" not in reply.text
    secret = (server["manifests"] / "secret.yaml").read_text()
    assert secret.split("RESTIC_PASSWORD: ")[1].split()[0] not in reply.text


def test_back_up_now_starts_a_manual_run_with_params(server: dict[str, Any]) -> None:
    reply = call(server, "POST", f"targets/{BACKUP}/backup", "admin", json={"retention": False})
    assert reply.status_code == 200, reply.text
    assert reply.json()["conf"] == {"retention": False}
    runs = call(server, "GET", f"targets/{BACKUP}/runs", "admin").json()["runs"]
    assert [(r["runId"], r["runType"], r["conf"]) for r in runs] == [
        (reply.json()["runId"], "manual", {"retention": False})
    ]
    unknown = call(
        server, "POST", "targets/stash-backup.demo.nope.deployment.x/backup", "admin", json={}
    )
    assert unknown.status_code == 404


def test_restore_shows_a_recovery_manifest_and_starts_it_locally(server: dict[str, Any]) -> None:
    import yaml

    shown = call(server, "GET", f"targets/{BACKUP}/restore?snapshot=0123abcd", "admin").json()
    doc = yaml.safe_load(shown["manifest"])
    vr = doc["spec"]["volumeRestorer"]
    assert (vr["repoDir"], vr["snapshot"], vr["restic"], vr["target"]) == (
        "/volumes/deployment/stash-demo",
        "0123abcd",
        "demo-backup",
        "deployment.stash-demo",
    )
    assert vr["recoverTo"] == [
        {"mountPath": "/source/data", "hostPath": {"path": "/path/to/an/empty/folder"}}
    ]
    assert shown["canStart"] is True
    bad = call(server, "GET", f"targets/{BACKUP}/restore?snapshot=--help", "admin")
    assert bad.status_code == 422
    started = call(
        server, "POST", f"targets/{BACKUP}/restore", "admin", json={"snapshot": "0123abcd"}
    ).json()
    written = yaml.safe_load((server["manifests"] / started["file"]).read_text())
    assert written["spec"]["volumeRestorer"]["recoverTo"][0]["hostPath"]["path"] == str(
        server["root"] / "state" / "restores" / "demo" / written["metadata"]["name"]
    )
    from stash_plugin.factory import load_plans
    from stash_plugin.settings import load_settings

    assert started["recoveryDagId"] in load_plans(load_settings()).recoveries
