"""Airflow pools that cap each namespace's concurrent agent steps (``[stash] pools``).

With ``[stash] pools = true`` every task that runs an agent (backup, retention,
verify, restore, check) goes to the pool ``stash-ns-<namespace>``. Airflow 3 never
schedules a task whose pool does not exist (it waits, and the DAG shows a "non-existent
pool" warning), so ``stash pools`` creates the missing ones; pools that exist keep the
slots an administrator gave them.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..plan.model import PlanSet
from ..plan.naming import pool_name


def wanted_pools(plans: PlanSet) -> list[str]:
    """The pool of every namespace whose agent steps the plans run."""
    namespaces = {p.backup.namespace for p in plans.backups.values()}
    namespaces |= {p.restore.namespace for p in plans.recoveries.values()}
    namespaces |= {c.step.namespace for p in plans.maintenance.values() for c in p.checks}
    return sorted(pool_name(ns) for ns in namespaces)


def ensure_pools(names: Iterable[str], slots: int) -> list[str]:
    """Create each missing pool with ``slots`` slots; returns the ones created."""
    from airflow.models.pool import Pool

    created = []
    for name in names:
        if Pool.get_pool(name) is None:
            Pool.create_or_update_pool(
                name,
                slots=slots,
                description="Stash: concurrent agent steps of one namespace ([stash] pools)",
                include_deferred=True,
            )
            created.append(name)
    return created
