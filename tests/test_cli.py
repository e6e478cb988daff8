"""The ``stash`` command, called in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stashtest import (
    PASSWORD,
    deployment_doc,
    repository_doc,
    restic_doc,
    secret_doc,
    write_manifests,
)

from stash_plugin.cli import main

NS = "demo"


def good(folder: Path) -> Path:
    return write_manifests(
        folder,
        [
            secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
            deployment_doc("app", NS, folder / "data"),
            repository_doc(
                "repo",
                NS,
                {"local": {"mountPath": "/repo", "hostPath": {"path": str(folder / "repo")}}},
            ),
            restic_doc("rs", NS, "repo", "app"),
        ],
        "good.yaml",
    )


def add_bad(folder: Path) -> None:
    typo = restic_doc("typo", NS, "repo", "app")
    typo["spec"]["retentionPolicies"][0]["keepLats"] = 3
    write_manifests(folder, [typo, restic_doc("no-repo", NS, "missing", "app")], "bad.yaml")
    (folder / "broken.yml").write_text(": : :\n  - [")


def test_validate_good_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(good(tmp_path))]) == 0
    out, err = capsys.readouterr()
    assert "1 backup DAG(s), 0 recovery DAG(s), 0 error(s)" in out
    assert err == ""


def test_validate_names_each_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = good(tmp_path)
    add_bad(folder)
    assert main(["validate", str(folder)]) == 1
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 3, err
    assert any(line.startswith("error: file broken.yml: malformed ") for line in lines)
    assert (
        "error: Restic demo/typo: spec.retentionPolicies[0].keepLats: unknown field (bad.yaml#1)"
        in lines
    )
    assert (
        "error: Restic demo/no-repo: spec.repository: "
        "Repository demo/missing not found (bad.yaml#2)" in lines
    )
    assert "1 backup DAG(s), 0 recovery DAG(s), 3 error(s)" in out
    assert PASSWORD not in out + err


def test_validate_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_plan_prints_dag_ids_and_argv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = good(tmp_path)
    assert main(["plan", str(folder)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "stash-backup.demo.rs.deployment.app  schedule=every:3600" in out
    argv_lines = {
        line.strip().split(":", 1)[0]: json.loads(line.strip().split(": ", 1)[1])
        for line in out.splitlines()
        if line.strip().startswith(("backup:", "retention:", "verify:"))
    }
    assert set(argv_lines) == {"backup", "retention", "verify"}
    backup = argv_lines["backup"]
    assert backup[:2] == ["stash-agent", "run"]
    assert "--host=app" in backup and backup[-1] == str(folder / "data")
    assert "--keep-last=5" in argv_lines["retention"]
    assert "RESTIC_PASSWORD<-repo-secret[RESTIC_PASSWORD]" in out  # a reference, never the value
    assert PASSWORD not in out


def test_plan_with_errors_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = good(tmp_path)
    add_bad(folder)
    assert main(["plan", str(folder)]) == 1
    out, err = capsys.readouterr()
    assert "stash-backup.demo.rs.deployment.app" in out
    assert "Restic demo/no-repo: spec.repository" in err


def test_plan_kubernetes_runtime(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = good(tmp_path)
    assert main(["plan", "--runtime", "kubernetes", str(folder)]) == 0
    out = capsys.readouterr().out
    backup = next(line for line in out.splitlines() if line.strip().startswith("backup:"))
    assert json.loads(backup.split(": ", 1)[1])[-1] == "/source/data"


def test_pools_creates_each_namespace_pool_once_and_keeps_admin_slots(
    airflow_db: None,
    stash_env: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Airflow 3 never schedules a task whose pool is missing: ``stash pools`` makes
    the pools the DAGs name, and leaves one an administrator resized alone."""
    from airflow.models.pool import Pool

    good(stash_env["manifests"])
    other = stash_env["manifests"] / "other"
    write_manifests(
        other,
        [
            secret_doc("repo-secret", "team-b", RESTIC_PASSWORD=PASSWORD),
            deployment_doc("app", "team-b", other / "data"),
            repository_doc(
                "repo", "team-b", {"local": {"mountPath": "/r", "hostPath": {"path": "/tmp/r"}}}
            ),
            restic_doc("rs", "team-b", "repo", "app"),
        ],
    )
    for name in ("stash-ns-demo", "stash-ns-team-b"):
        if Pool.get_pool(name) is not None:
            Pool.delete_pool(name)
    monkeypatch.setenv("AIRFLOW__STASH__POOLS", "true")
    monkeypatch.setenv("AIRFLOW__STASH__POOL_SLOTS", "3")
    assert main(["pools"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "stash-ns-demo: created",
        "stash-ns-team-b: created",
    ]
    assert Pool.get_pool("stash-ns-demo").slots == 3  # type: ignore[union-attr]

    Pool.create_or_update_pool("stash-ns-demo", 7, "resized", include_deferred=True)
    assert main(["pools"]) == 0
    assert "stash-ns-demo: exists" in capsys.readouterr().out
    assert Pool.get_pool("stash-ns-demo").slots == 7  # type: ignore[union-attr]
