"""Pure planning: resources in, plans (argv, env references, mounts) out. No Airflow.

The names below are loaded on first use (PEP 562): unpickling a plan from the DAG
index needs ``model`` only, not the planner and every module it imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import lazy_attributes

if TYPE_CHECKING:
    from .model import (
        BackupPlan,
        Mount,
        PlanError,
        PlanSet,
        RecoveryPlan,
        Runtime,
        Schedule,
        SecretEnv,
        Step,
    )
    from .planner import make_plans

# Each public name and the submodule that defines it.
_WHERE = {
    "BackupPlan": "model",
    "Mount": "model",
    "PlanError": "model",
    "PlanSet": "model",
    "RecoveryPlan": "model",
    "Runtime": "model",
    "Schedule": "model",
    "SecretEnv": "model",
    "Step": "model",
    "make_plans": "planner",
}
__all__ = [
    "BackupPlan",
    "Mount",
    "PlanError",
    "PlanSet",
    "RecoveryPlan",
    "Runtime",
    "Schedule",
    "SecretEnv",
    "Step",
    "make_plans",
]

__getattr__ = lazy_attributes(__name__, _WHERE)
