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
        )
    else:
        password = secrets.token_urlsafe(24).encode()
    docs = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "local-secret", "namespace": "demo"},
            "data": {"RESTIC_PASSWORD": base64.b64encode(password).decode()},
        },
    ]
    secret_file.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    objects = {
        "deployment.yaml": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "stash-demo",
                "namespace": "demo",
                "labels": {"app": "stash-demo"},
            },
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "stash-demo"}},
                "template": {
                    "metadata": {"labels": {"app": "stash-demo"}},
                    "spec": {
                        "containers": [
                            {
                                "name": "busybox",
                                "image": "busybox",
                                "args": ["sleep", "3600"],
                                "volumeMounts": [
                                    {"name": "source-data", "mountPath": "/source/data"}
                                ],
                            }
                        ],
                        "volumes": [{"name": "source-data", "hostPath": {"path": str(data)}}],
                    },
                },
            },
        },
        "repository.yaml": {
            "apiVersion": "stash.appscode.com/v1alpha1",
            "kind": "Repository",
            "metadata": {"name": "local-repo", "namespace": "demo"},
            "spec": {
                "backend": {
                    "local": {"mountPath": "/safe/data", "hostPath": {"path": str(repo)}},
                    "storageSecretName": "local-secret",
                }
            },
        },
        "restic.yaml": {
            "apiVersion": "stash.appscode.com/v1alpha1",
            "kind": "Restic",
            "metadata": {"name": "demo-backup", "namespace": "demo"},
            "spec": {
                "targetType": "Volume",
                "backupType": "Scheduled",
                "schedule": schedule,
                "repository": {"name": "local-repo"},
                "volumeSelector": {
                    "selector": {"matchLabels": {"app": "stash-demo"}},
                    "targetVolumes": [
                        {
                            "name": "source-data",
                            "mountPath": "/source/data",
                            "directories": [
                                {"path": "/source/data", "retentionPolicyName": "keep-last-5"}
                            ],
                        }
                    ],
                },
                "retentionPolicies": [{"name": "keep-last-5", "keepLast": 5, "prune": True}],
            },
        },
        "recovery.yaml": {
            "apiVersion": "stash.appscode.com/v1alpha1",
            "kind": "Recovery",
            "metadata": {"name": "demo-restore", "namespace": "demo"},
            "spec": {
                "targetType": "Volume",
                "repository": {"name": "local-repo"},
                "volumeRestorer": {
                    "repoDir": "/volumes/deployment/stash-demo",
                    "snapshot": "latest",
                    "paths": ["/source/data"],
                    "recoverTo": [
                        {"mountPath": "/source/data", "hostPath": {"path": str(restored)}}
                    ],
                },
            },
        },
    }
    for name, obj in objects.items():
        (manifests / name).write_text(yaml.safe_dump(obj, sort_keys=False))
    return manifests
