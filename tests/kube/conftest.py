"""Fixtures for tests under ``tests/kube/``: a fake Kubernetes cluster per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kube.harness import Cluster, start_cluster


@pytest.fixture
def kube_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """Fake API server + test kubelet; the ``kubernetes_default`` connection points at it.

    Teardown fails the test if any request hit a route the fake does not handle.
    """
    cluster = start_cluster(tmp_path, monkeypatch)
    try:
        yield cluster
    finally:
        cluster.stop()
