"""Fixtures: an isolated Airflow home and database, and Stash settings per test."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from containers import (
    AGENT_IMAGE,
    AIRFLOW_IMAGE,
    Podman,
    build_image,
    pip_ca_flags,
    podman_or_skip,
)

# Airflow reads its home when first imported: set it before anything imports airflow.
_HOME = Path(tempfile.mkdtemp(prefix="stash-airflow-home-"))
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).parent.parent / "dags")
os.environ["AIRFLOW__STASH__TASK_RETRIES"] = "0"
os.environ.pop("AIRFLOW__STASH__MANIFESTS_DIR", None)
os.environ.pop("AIRFLOW__STASH__RUNTIME", None)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A fresh SQLite metadata database, once per session (about 3 s)."""
    from airflow.utils import db

    db.resetdb()


@pytest.fixture
def stash_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point ``[stash]`` at a manifests folder and a state folder of this test."""
    manifests = tmp_path / "manifests"
    state = tmp_path / "state"
    manifests.mkdir()
    monkeypatch.setenv("AIRFLOW__STASH__MANIFESTS_DIR", str(manifests))
    monkeypatch.setenv("AIRFLOW__STASH__STATE_DIR", str(state))
    monkeypatch.setenv("AIRFLOW__STASH__RUNTIME", "local")
    return {"manifests": manifests, "state": state, "root": tmp_path}


@pytest.fixture(scope="session")
def podman() -> Podman:
    """The suite's podman (own store and containers.conf); skips, naming why, without it."""
    return podman_or_skip()


@pytest.fixture(scope="session")
def agent_image(podman: Podman) -> str:
    """The agent image built from ``Dockerfile.agent`` (layers cached between runs)."""
    tag, _ = build_image(podman, "Dockerfile.agent", AGENT_IMAGE)
    return tag


@pytest.fixture(scope="session")
def airflow_image(podman: Podman) -> str:
    """The Airflow image built from ``Dockerfile.airflow``. Its Airflow layer needs PyPI
    (about 2.5 min from scratch here) and is cached between runs; a CA bundle this
    machine trusts beyond Debian's is lent to the build, never stored in the image."""
    tag, _ = build_image(podman, "Dockerfile.airflow", AIRFLOW_IMAGE, pip_ca_flags())
    return tag
