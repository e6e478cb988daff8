"""Pure planning: resources in, plans (argv, env references, mounts) out. No Airflow."""

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
