"""The Repository record a backup keeps in its repository, for disaster recovery.

When a cluster loses its Repository objects (a deleted namespace, a new cluster), the
backend still holds every target's repository; each one also holds the Repository
object it was made for, so ``stash discover`` can write the objects to recreate. The
record is the object as a user would write it: apiVersion, kind, name, namespace,
labels and spec. The status (which names snapshots and failures) and every
server-set field are left out, and the storage Secret is only named, as in the spec.
"""

from __future__ import annotations

import json
from typing import Any

from ..api.resources import Repository


def repository_manifest(repository: Repository) -> dict[str, Any]:
    """The sanitised object: what ``kubectl apply`` needs to recreate it, nothing else."""
    meta: dict[str, Any] = {
        "name": repository.metadata.name,
        "namespace": repository.metadata.namespace or "default",
    }
    if repository.metadata.labels:
        meta["labels"] = dict(sorted(repository.metadata.labels.items()))
    return {
        "apiVersion": repository.api_version,
        "kind": "Repository",
        "metadata": meta,
        "spec": repository.spec.model_dump(
            mode="json", by_alias=True, exclude_none=True, exclude_defaults=True
        ),
    }


def repository_record(repository: Repository) -> str:
    """The record as stored: compact JSON with sorted keys, so that the same object
    always gives the same digest and an unchanged object is never written again."""
    return json.dumps(repository_manifest(repository), sort_keys=True, separators=(",", ":"))


__all__ = ["repository_manifest", "repository_record"]
