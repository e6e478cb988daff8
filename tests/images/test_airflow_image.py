"""The Airflow image, built from ``Dockerfile.airflow`` and run with podman.

It must run Airflow 3.3, hold the project (DAG files, plugin, ``stash``,
``stash-agent``, restic) and parse a DAG folder to the same DAGs as the project
itself; nothing secret is baked in.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from containers import Podman

pytestmark = pytest.mark.slow

PARSE = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag("/opt/airflow/dags")
print(json.dumps({"dags": sorted(bag.dag_ids), "errors": sorted(bag.import_errors)}))
"""


@pytest.fixture
def demo() -> Iterator[Path]:
    """The demo's manifests in a folder the image's user (50000) may read."""
    from stash_plugin.demo import write_demo

    root = Path(tempfile.mkdtemp(prefix="stash-image-demo-", dir="/tmp"))
    try:
        os.chmod(root, 0o755)
        manifests = write_demo(root / "demo")
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                os.chmod(Path(folder, name), 0o755)
        yield manifests
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def test_airflow_version_and_tools(podman: Podman, airflow_image: str) -> None:
    run = ("run", "--rm", "--network=none", airflow_image)
    assert podman.run(*run, "version").stdout.strip() == "3.3.2"
    assert podman.run(*run, "restic", "version").stdout.startswith("restic 0.14.0")
    assert "usage: stash-agent" in podman.run(*run, "stash-agent", "--help").stdout
    providers = podman.run(*run, "providers", "list", "--output=json").stdout
    names = {p["package_name"] for p in json.loads(providers)}
    assert {
        "apache-airflow-providers-cncf-kubernetes",
        "apache-airflow-providers-postgres",
    } <= names


def test_the_image_parses_a_dag_folder_like_the_project(
    podman: Podman, airflow_image: str, demo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        "AIRFLOW__STASH__MANIFESTS_DIR": str(demo),
        "AIRFLOW__STASH__STATE_DIR": "/tmp/stash-state",
        "AIRFLOW__STASH__RUNTIME": "local",
    }
    flags = [f"--env={k}" for k in env] + [f"--volume={demo.parent}:{demo.parent}:ro"]
    out = podman.run(
        "run", "--rm", "--network=none", *flags, airflow_image, "python", "-c", PARSE, env=env
    )
    parsed = json.loads(out.stdout.strip().splitlines()[-1])

    from stash_plugin.factory import build_dags
    from stash_plugin.settings import load_settings

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    expected, _ = build_dags(load_settings())
    assert parsed == {"dags": sorted(expected), "errors": []}
    assert len(parsed["dags"]) == 3  # the demo's backup, recovery and repository maintenance


def test_nothing_secret_or_borrowed_is_in_the_image(podman: Podman, airflow_image: str) -> None:
    config = json.loads(podman.run("image", "inspect", airflow_image).stdout)[0]
    env = dict(e.split("=", 1) for e in config["Config"]["Env"])
    assert not [k for k in env if any(w in k for w in ("PASSWORD", "SECRET", "TOKEN", "CONN_"))]
    assert "PIP_CERT" not in env
    assert config["Config"]["User"] == "50000"
    run = ("run", "--rm", "--network=none", airflow_image)
    assert "airflow.cfg" not in podman.run(*run, "bash", "-c", "ls /opt/airflow").stdout.split()
    # The CA bundle lent to the build leaves at most its empty mount point behind.
    size = podman.run(*run, "bash", "-c", "stat -c %s /run/build-ca.crt 2>/dev/null || echo 0")
    assert size.stdout.strip() == "0"
