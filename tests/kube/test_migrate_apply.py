"""``stash migrate --apply`` writes the new shapes to the cluster through the kube
client: a Stash 0.8 Restic is replaced in place by its new shape, its Repository is
created, and a second run changes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from kube.harness import Cluster

from stash_plugin.cli import main

pytestmark = pytest.mark.slow
COMPAT = Path(__file__).resolve().parents[1] / "fixtures" / "stash-0.8"


def test_migrate_apply_replaces_old_objects(
    kube_cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(COMPAT / "workloads" / "deployment.yaml", tmp_path / "deployment.yaml")
    old = [d for d in yaml.safe_load_all((tmp_path / "deployment.yaml").read_text())]
    kube_cluster.apply(next(d for d in old if d["kind"] == "Restic"))  # as Stash 0.8 left it
    assert "fileGroups" in kube_cluster.get("Restic", "stash-demo-backup", "default")["spec"]

    assert main(["migrate", "--apply", str(tmp_path / "deployment.yaml")]) == 0
    out = capsys.readouterr().out
    assert "created Repository default/stash-demo-backup" in out
    assert "replaced Restic default/stash-demo-backup" in out
    restic = kube_cluster.get("Restic", "stash-demo-backup", "default")
    assert restic["spec"]["stash08Layout"] is True and "fileGroups" not in restic["spec"]
    repo = kube_cluster.get("Repository", "stash-demo-backup", "default")
    assert repo["spec"]["backend"]["storageSecretName"] == "stash-demo-secret"
    version = restic["metadata"]["resourceVersion"]

    assert main(["migrate", "--apply", str(tmp_path / "deployment.yaml")]) == 0
    assert kube_cluster.get("Restic", "stash-demo-backup", "default")["spec"] == restic["spec"]
    assert (tmp_path / "deployment.yaml").read_text() == (
        COMPAT / "workloads" / "deployment.yaml"
    ).read_text()  # --apply alone never touches the file
    assert version  # the replace carried the object's resourceVersion
