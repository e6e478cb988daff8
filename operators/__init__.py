"""Airflow operators of Stash (installed as ``stash_plugin.operators``)."""

from .step import StashRestoreOperator, StashRetentionOperator, StashStepOperator
from .update_status import StashBackupStatusOperator, StashRecoveryStatusOperator

__all__ = [
    "StashBackupStatusOperator",
    "StashRecoveryStatusOperator",
    "StashRestoreOperator",
    "StashRetentionOperator",
    "StashStepOperator",
]
