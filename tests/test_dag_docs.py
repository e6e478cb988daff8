"""Every generated DAG documents itself: resource, Secrets by reference, schedule in
words, where the data goes, how to run it now and how to restore."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stash_plugin.demo import write_demo
from stash_plugin.factory import build_dags
from stash_plugin.settings import load_settings


@pytest.fixture
def demo_dags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, str]:
    manifests = write_demo(tmp_path / "demo")
    monkeypatch.setenv("AIRFLOW__STASH__MANIFESTS_DIR", str(manifests))
    monkeypatch.setenv("AIRFLOW__STASH__STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AIRFLOW__STASH__RUNTIME", "local")
    password = yaml.safe_load((manifests / "secret.yaml").read_text())["data"]["RESTIC_PASSWORD"]
    dags, errors = build_dags(load_settings())
    assert errors == []
    return dags, password


def test_backup_dag_doc(demo_dags: tuple[dict, str]) -> None:
    dags, password = demo_dags
    dag = dags["stash-backup.demo.demo-backup.deployment.stash-demo"]
    doc = dag.doc_md
    assert "**Schedule:** every 1m." in doc
    assert "Secret ` demo/local-secret `: RESTIC_PASSWORD (required)" in doc
    assert "/volumes/deployment/stash-demo" in doc  # where the data goes
    assert "airflow dags trigger stash-backup.demo.demo-backup.deployment.stash-demo" in doc
    assert "kind: Recovery" in doc and "target: deployment.stash-demo" in doc
    assert "kind: Restic" in doc and "storageSecretName: local-secret" in doc
    assert password not in doc
    import base64

    assert base64.b64decode(password).decode() not in doc
    assert dag.params.get_param("retention").description.startswith("Apply the retention")


def test_recovery_and_maintenance_dag_docs(demo_dags: tuple[dict, str]) -> None:
    dags, _ = demo_dags
    recovery = dags["stash-recovery.demo.demo-restore"].doc_md
    assert "**Schedule:** once" in recovery and "kind: Recovery" in recovery
    maintenance = dags["stash-maintenance.demo.local-repo"].doc_md
    assert "`@daily`, spread over its interval" in maintenance  # [stash] spread_schedules
    assert "restic check" in maintenance and "kind: Repository" in maintenance


def test_a_backtick_in_a_value_cannot_end_its_code_span() -> None:
    from stash_plugin.plan.docs import block, code

    assert code("a`b") == "`` a`b ``"
    assert block("x: ```\n").startswith("````yaml\n")
