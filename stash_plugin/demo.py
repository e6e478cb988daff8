"""A ready-to-run demo folder: what ``make run`` starts Airflow on.

A Deployment whose hostPath volume holds some demo data, a Repository on a local
folder, a Restic backing it up every minute, and a Recovery of the latest snapshot.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

import yaml

from .manifests import (
    DATA_MOUNT,
    deployment_doc,
    recovery_doc,
    repository_doc,
    restic_doc,
    secret_doc,
)

NS = "demo"


def write_demo(root: Path, *, schedule: str = "@every 1m") -> Path:
    """Create (or refresh) the demo under ``root``; returns the manifests folder.

    The restic password is random per demo folder and kept when the folder is written
    again, so an existing demo repository stays readable.
    """
    root = root.resolve()
    manifests = root / "manifests"
    data = root / "data" / "stash-demo"
    repo = root / "repository"
    restored = root / "restored"
    for folder in (manifests, data / "docs", repo):
        folder.mkdir(parents=True, exist_ok=True)
    (data / "README.txt").write_text("Demo data backed up by Stash on Airflow.\n")
    (data / "docs" / "notes.md").write_text("# Notes\n\nrestic keeps these safe.\n")
    if not (data / "current").is_symlink():
        os.symlink("README.txt", data / "current")
    secret_file = manifests / "secret.yaml"
    if secret_file.exists():
        password = base64.b64decode(
            yaml.safe_load(secret_file.read_text())["data"]["RESTIC_PASSWORD"]
        ).decode()
    else:
        password = secrets.token_urlsafe(24)
    secret_file.write_text(
        yaml.safe_dump(secret_doc("local-secret", NS, RESTIC_PASSWORD=password), sort_keys=False)
    )
    deployment = deployment_doc(
        "stash-demo",
        NS,
        data,
        volume_name="source-data",
        container={"name": "busybox", "args": ["sleep", "3600"]},
    )
    backend = {"local": {"mountPath": "/safe/data", "hostPath": {"path": str(repo)}}}
    objects = {
        "deployment.yaml": deployment,
        "repository.yaml": repository_doc("local-repo", NS, backend, secret="local-secret"),
        "restic.yaml": restic_doc(
            "demo-backup",
            NS,
            "local-repo",
            "stash-demo",
            schedule=schedule,
            policy={"keepLast": 5, "prune": True},
            policy_name="keep-last-5",
            volume_name="source-data",
            backupType="Scheduled",
        ),
        "recovery.yaml": recovery_doc(
            "demo-restore",
            NS,
            "local-repo",
            restored,
            snapshot="latest",
            paths=[DATA_MOUNT],
            repo_dir="/volumes/deployment/stash-demo",
        ),
    }
    for name, obj in objects.items():
        (manifests / name).write_text(yaml.safe_dump(obj, sort_keys=False))
    return manifests
