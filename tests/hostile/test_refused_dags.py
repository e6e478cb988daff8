"""A DAG that Airflow refuses is an import error of ``stash_errors.py`` naming its object.

The planner refuses what it knows Airflow would refuse; these tests lift one of its
rules (the DAG id length) so that a refusal only Airflow makes reaches the factory, as
one the planner does not foresee would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from stashtest import PASSWORD, deployment_doc, repository_doc, restic_doc, secret_doc
from stashtest import write_manifests as write

DAGS_FOLDER = Path(__file__).resolve().parent.parent.parent / "dags"
PARSING_DAG_ID = "_AIRFLOW_PARSING_CONTEXT_DAG_ID"
NS = "demo"
LONG = "r" * 245  # its DAG id is longer than the 250 characters Airflow allows
GOOD = "stash-backup.demo.good.deployment.app"


@pytest.fixture
def refused(stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    from stash_plugin.plan import planner

    monkeypatch.setattr(planner, "MAX_DAG_ID_LENGTH", 10_000)
    monkeypatch.delenv(PARSING_DAG_ID, raising=False)
    root = stash_env["root"]
    repo = {"local": {"mountPath": "/repo", "hostPath": {"path": str(root / "repo")}}}
    docs = [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        deployment_doc("app", NS, root / "data"),
        repository_doc("repo", NS, repo),
        restic_doc("good", NS, "repo", "app"),
        restic_doc(LONG, NS, "repo", "app"),
    ]
    return write(stash_env["manifests"], docs)


def dagbag(path: Path) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(path))


def import_errors(bag: Any) -> dict[str, str]:
    return {Path(f).name: text for f, text in bag.import_errors.items()}


def test_refusal_is_an_import_error_naming_the_restic(refused: Path) -> None:
    bag = dagbag(DAGS_FOLDER)
    assert set(bag.dags) == {GOOD}
    errors = import_errors(bag)
    assert set(errors) == {"stash_errors.py"}, errors  # stash_dags.py imports cleanly
    assert (
        f"Restic {NS}/{LONG}: Airflow refused DAG stash-backup.{NS}.{LONG}"
        in errors["stash_errors.py"]
    )


def test_refusal_is_found_by_stash_errors_parsed_alone(refused: Path) -> None:
    """The DAG processor parses each file in its own process: nothing to reuse there."""
    from stash_plugin import factory

    factory._last_refusals.clear()
    bag = dagbag(DAGS_FOLDER / "stash_errors.py")
    assert bag.dags == {}  # the DAGs it built to find refusals are not exported
    assert f"Restic {NS}/{LONG}: Airflow refused DAG" in import_errors(bag)["stash_errors.py"]


def test_stash_errors_alone_exports_nothing_when_all_is_well(
    stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from stash_plugin import factory

    monkeypatch.delenv(PARSING_DAG_ID, raising=False)
    root = stash_env["root"]
    repo = {"local": {"mountPath": "/repo", "hostPath": {"path": str(root / "repo")}}}
    write(
        stash_env["manifests"],
        [
            secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
            deployment_doc("app", NS, root / "data"),
            repository_doc("repo", NS, repo),
            restic_doc("good", NS, "repo", "app"),
        ],
    )
    factory._last_refusals.clear()
    bag = dagbag(DAGS_FOLDER / "stash_errors.py")
    assert bag.import_errors == {} and bag.dags == {}
    bag = dagbag(DAGS_FOLDER)
    assert bag.import_errors == {} and set(bag.dags) == {GOOD}
