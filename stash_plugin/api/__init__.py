"""Resource models (pydantic), errors that name object and field, and document parsing.

No Airflow and no kubernetes client here: this layer is pure data.
"""

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

__all__ = [
    "STASH_KINDS",
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
    "Secret",
    "StashResource",
    "Workload",
    "parse_document",
]
