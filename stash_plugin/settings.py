"""Settings from Airflow's configuration, section ``[stash]``.

Every option can also be set as ``AIRFLOW__STASH__<OPTION>`` in the environment, the
usual Airflow way. Read at call time (not import time) so tests and the CLI can change
them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import cast

from .api.names import dns_label
from .plan.model import Runtime

RUNTIMES = ("local", "kubernetes")
DEFAULT_TIMEOUTS: Mapping[str, float] = {
    "backup": 6 * 3600,  # a first backup of a large volume
    "restore": 6 * 3600,
    "retention": 2 * 3600,  # forget plus prune of a large repository
    "verify": 1800,
    "workload": 1800,  # stopping or starting a workload and waiting for it
    "status": 600,
    "check": 6 * 3600,  # restic check reading back part of a large repository
}
"""Task kind -> seconds; sized from what each kind of step does."""


def _seconds(option: str, text: str) -> float:
    """``90``, ``90s``, ``15m`` or ``1h30m`` as seconds."""
    from .plan.schedules import parse_go_duration

    text = text.strip()
    try:
        value = float(text) if text.replace(".", "", 1).isdigit() else parse_go_duration(text)
    except ValueError as exc:
        raise ValueError(f"[stash] {option} = {text!r}: {exc}") from None
    if value <= 0:
        raise ValueError(f"[stash] {option} = {text!r}: must be positive")
    return value


SHRINK_ACTIONS = ("fail", "warn")


@dataclass(frozen=True)
class Settings:
    manifests_dir: Path
    """Folder of manifests (directory source) or the cluster source's snapshot file."""
    runtime: Runtime
    """``local`` (steps as child processes, the embedded default) or ``kubernetes``."""
    state_dir: Path
    """Where the local runtime keeps Repository and Recovery status."""
    task_retries: int = 2
    """Retries of each task (backoff from 30 s); a backend that blinks gets another try."""
    agent_image: str = "stash-airflow/agent:0.1.0"
    """Image of the default ``stash`` BackupAgent (restic plus ``stash-agent``)."""
    kubernetes_conn_id: str = "kubernetes_default"
    deferrable: bool = False
    """Run agent pods deferrably (the triggerer waits for them instead of a worker slot)."""
    on_finish_action: str = "delete_succeeded_pod"
    """Keep failed agent pods for inspection; delete the ones that succeeded."""
    poll_interval: float = 2.0
    """Seconds between pod status checks (startup and completion)."""
    maintenance_schedule: str = "@daily"
    """When each Repository's maintenance DAG runs ``restic check`` (cron, preset or
    ``@every``)."""
    check_read_data_subset: str | None = None
    """``restic check --read-data-subset`` (``10%``, ``1/7``...); empty: structure only."""
    timeouts: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    """Seconds each kind of task may run (``[stash] <kind>_timeout``) before it is
    stopped and the run fails: nothing waits forever."""

    lock_clock_skew: float = 60.0
    """Seconds agent pod clocks may be off from the worker's: a lock of a deleted agent
    pod is removed only if it is older than the pod listing by at least this much."""

    def timeout(self, kind: str) -> timedelta:
        return timedelta(seconds=self.timeouts.get(kind, DEFAULT_TIMEOUTS[kind]))

    shrink_threshold: float = 0.5
    """A backup whose source lost more than this share of its files or bytes since the
    previous backup is flagged (an empty source always is); 1 or more: never for a shrink."""
    shrink_action: str = "fail"
    """``fail``: a flagged backup makes the run red (its snapshot still counts); ``warn``:
    the run stays green and only the status and the log carry the flag."""
    cluster_namespaces: tuple[str, ...] = ()
    """Namespaces whose Cluster Restics and Recoveries may use the Airflow connection's
    Kubernetes access in the local runtime (comma-separated); none by default. In the
    kubernetes runtime the agent pod's ServiceAccount decides what it may read."""
    dag_shards: int = 8
    """How many DAG files (``dags/stash_dags_NN.py``) share the DAGs, by a stable hash of
    the DAG id; the DAG processor parses them in parallel."""

    shrink_keep: int = 1
    """How many snapshots taken before a flagged drop retention keeps until the tag
    ``stash-before-drop`` is removed from them; 0: none."""
    verify_every: int = 10
    """``verify`` lists the repository on a target's first backup and every this many
    backups after; other runs are confirmed by the backup's own summary (or by the
    listing retention just made). 1: list on every run."""
    pools: bool = False
    """Run each namespace's agent steps in the Airflow pool ``stash-ns-<namespace>``
    (create them with ``stash pools``): a cap on one tenant's concurrent agents."""
    pool_slots: int = 4
    """Slots of each namespace's pool when ``stash pools`` creates it."""
    node_slots: int = 0
    """How many agents may run at once on one node (``runtime.nodeslots``); 0: no cap.
    Local runtime: every step, on its node or this machine. Kubernetes runtime: agent
    pods pinned to a node (DaemonSet nodes, pods next to a ReadWriteOnce claim's pod)."""
    lease_namespace: str = "default"
    """Namespace of the Leases that hold the kubernetes runtime's node slots (the
    chart sets Stash's own namespace and lets the tasks' account manage Leases there)."""
    spread_schedules: bool = True
    """Spread ``@hourly``/``@daily``-style presets and ``@every`` schedules over their
    interval by a stable per-DAG offset; cron expressions always run as written."""
    index_wait: float = 10.0
    """Seconds a DAG file waits for a DAG index build before it uses the previous index
    (``[stash] index_wait``; default a third of ``[core] dagbag_import_timeout``, and no
    limit when that timeout is off). Changes no plan: not part of the index key."""


def _get(option: str, default: str) -> str:
    try:
        from airflow.configuration import conf

        return str(conf.get("stash", option, fallback=default))
    except ImportError:  # the agent image and bare CLI use work without Airflow
        return os.environ.get(f"AIRFLOW__STASH__{option.upper()}", default)


def load_settings() -> Settings:
    home = Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow"))
    runtime = _get("runtime", "local").strip().lower()
    if runtime not in RUNTIMES:
        raise ValueError(f"[stash] runtime = {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    shrink_action = _get("shrink_action", Settings.shrink_action).strip().lower()
    if shrink_action not in SHRINK_ACTIONS:
        raise ValueError(
            f"[stash] shrink_action = {shrink_action!r}: choose one of {', '.join(SHRINK_ACTIONS)}"
        )
    threshold = float(_get("shrink_threshold", str(Settings.shrink_threshold)))
    if threshold <= 0:
        raise ValueError(f"[stash] shrink_threshold = {threshold}: must be above 0")
    keep = int(_get("shrink_keep", str(Settings.shrink_keep)))
    if keep < 0:
        raise ValueError(f"[stash] shrink_keep = {keep}: must be 0 or more")
    shards = int(_get("dag_shards", str(Settings.dag_shards)))
    if not 1 <= shards <= 100:
        raise ValueError(f"[stash] dag_shards = {shards}: must be between 1 and 100")
    return Settings(
        dag_shards=shards,
        manifests_dir=Path(_get("manifests_dir", str(home / "stash-manifests"))).expanduser(),
        runtime=cast(Runtime, runtime),
        state_dir=Path(_get("state_dir", str(home / "stash-state"))).expanduser(),
        task_retries=int(_get("task_retries", "2")),
        agent_image=_get("agent_image", Settings.agent_image),
        kubernetes_conn_id=_get("kubernetes_conn_id", Settings.kubernetes_conn_id),
        deferrable=_get("deferrable", "false").strip().lower() in ("1", "true", "yes", "on"),
        on_finish_action=_get("on_finish_action", Settings.on_finish_action),
        poll_interval=float(_get("poll_interval", "2")),
        maintenance_schedule=_get("maintenance_schedule", Settings.maintenance_schedule).strip(),
        check_read_data_subset=_get("check_read_data_subset", "").strip() or None,
        timeouts={
            kind: _seconds(f"{kind}_timeout", _get(f"{kind}_timeout", str(default)))
            for kind, default in DEFAULT_TIMEOUTS.items()
        },
        lock_clock_skew=_seconds("lock_clock_skew", _get("lock_clock_skew", "60")),
        shrink_threshold=threshold,
        shrink_action=shrink_action,
        shrink_keep=keep,
        cluster_namespaces=tuple(
            n.strip() for n in _get("cluster_namespaces", "").split(",") if n.strip()
        ),
        verify_every=_positive_int("verify_every", Settings.verify_every),
        pools=_flag("pools", Settings.pools),
        pool_slots=_positive_int("pool_slots", Settings.pool_slots),
        spread_schedules=_flag("spread_schedules", Settings.spread_schedules),
        node_slots=_whole_number("node_slots", Settings.node_slots, minimum=0),
        lease_namespace=_namespace("lease_namespace", Settings.lease_namespace),
        index_wait=_index_wait(),
    )


def _index_wait() -> float:
    """``[stash] index_wait``, else a third of Airflow's import timeout: the DAG file
    still has two thirds of it to build its DAGs from whichever index it has."""
    text = _get("index_wait", "").strip()
    if text:
        return _seconds("index_wait", text)
    try:
        from airflow.configuration import conf

        timeout = conf.getfloat("core", "dagbag_import_timeout", fallback=30.0)
    except ImportError:
        timeout = 30.0
    return timeout / 3 if timeout > 0 else math.inf


def _flag(option: str, default: bool) -> bool:
    return _get(option, str(default)).strip().lower() in ("1", "true", "yes", "on")


def _positive_int(option: str, default: int) -> int:
    return _whole_number(option, default, minimum=1)


def _whole_number(option: str, default: int, minimum: int) -> int:
    text = _get(option, str(default)).strip()
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"[stash] {option} = {text!r}: must be a whole number") from None
    if value < minimum:
        raise ValueError(f"[stash] {option} = {text!r}: must be {minimum} or more")
    return value


def _namespace(option: str, default: str) -> str:
    text = _get(option, default).strip()
    try:
        return dns_label(text)
    except ValueError:
        raise ValueError(
            f"[stash] {option} = {text!r}: must be a Kubernetes namespace name "
            "(lower-case letters, digits and '-', at most 63)"
        ) from None
