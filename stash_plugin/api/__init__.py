"""Resource models (pydantic), errors that name object and field, and document parsing.

No Airflow and no kubernetes client here: this layer is pure data.

The names below are loaded on first use (PEP 562): a worker building one DAG from the
index needs ``errors`` and a few plain classes, not the pydantic models, whose creation
is most of this package's import cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import lazy_attributes

if TYPE_CHECKING:
    from .backend import Backend
    from .common import LabelSelector, ObjectRef, RetentionPolicy
    from .errors import ResourceError
    from .kubeobjects import Secret, Workload
    from .parse import STASH_KINDS, parse_document
    from .resources import (
        BackupAgent,
        BackupRepo,
        Recovery,
        RecoveryStatus,
        Repository,
        RepositoryStatus,
        Restic,
        StashResource,
    )
    from .resourceset import ResourceSet

# Each public name and the submodule that defines it.
_WHERE = {
    "Backend": "backend",
    "LabelSelector": "common",
    "ObjectRef": "common",
    "RetentionPolicy": "common",
    "ResourceError": "errors",
    "Secret": "kubeobjects",
    "Workload": "kubeobjects",
    "STASH_KINDS": "parse",
    "parse_document": "parse",
    "BackupAgent": "resources",
    "BackupRepo": "resources",
    "Recovery": "resources",
    "RecoveryStatus": "resources",
    "Repository": "resources",
    "RepositoryStatus": "resources",
    "Restic": "resources",
    "StashResource": "resources",
    "ResourceSet": "resourceset",
}
__all__ = [
    "Backend",
    "BackupAgent",
    "BackupRepo",
    "LabelSelector",
    "ObjectRef",
    "Recovery",
    "RecoveryStatus",
    "Repository",
    "RepositoryStatus",
    "ResourceError",
    "ResourceSet",
    "Restic",
    "RetentionPolicy",
    "STASH_KINDS",
    "Secret",
    "StashResource",
    "Workload",
    "parse_document",
]

__getattr__ = lazy_attributes(__name__, _WHERE)
