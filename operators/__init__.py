"""Airflow operators of Stash (installed as ``stash_plugin.operators``)."""

from .status import StashBackupStatusOperator, StashRecoveryStatusOperator
from .step import StashStepOperator

__all__ = ["StashBackupStatusOperator", "StashRecoveryStatusOperator", "StashStepOperator"]
