"""statsd metrics, using Airflow's ``[metrics]`` settings (host, port, prefix).

Names carry namespace, Restic and target so that a statsd-exporter mapping can turn
them into labelled Prometheus series.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def _client() -> Any | None:
    try:
        from airflow.configuration import conf

        if not conf.getboolean("metrics", "statsd_on", fallback=False):
            return None
        import statsd

        return statsd.StatsClient(
            host=conf.get("metrics", "statsd_host", fallback="localhost"),
            port=conf.getint("metrics", "statsd_port", fallback=8125),
            prefix=conf.get("metrics", "statsd_prefix", fallback="airflow"),
        )
    except Exception:  # metrics must never fail a backup
        log.warning("statsd metrics unavailable", exc_info=True)
        return None


def _clean(part: str) -> str:
    return part.replace(".", "_").replace(":", "_")


def emit_backup(
    namespace: str,
    restic: str,
    target: str,
    repository: str,
    succeeded: bool,
    duration_seconds: float,
    timestamp: float,
    snapshot_count: int | None,
    totals: dict[str, int],
) -> None:
    client = _client()
    if client is None:
        return
    base = ".".join(_clean(p) for p in ("stash.backup", namespace, restic, target, repository))
    try:
        client.incr(f"{base}.{'succeeded' if succeeded else 'failed'}")
        if succeeded:
            client.gauge(f"{base}.last_backup_time", int(timestamp))
            client.timing(f"{base}.duration", duration_seconds * 1000)
            for key, value in totals.items():
                client.gauge(f"{base}.{key}", value)
        if snapshot_count is not None:
            client.gauge(f"{base}.snapshots", snapshot_count)
    except OSError:
        log.warning("could not send statsd metrics", exc_info=True)


def emit_recovery(namespace: str, name: str, succeeded: bool, duration_seconds: float) -> None:
    client = _client()
    if client is None:
        return
    base = f"stash.recovery.{_clean(namespace)}.{_clean(name)}"
    try:
        client.incr(f"{base}.{'succeeded' if succeeded else 'failed'}")
        client.timing(f"{base}.duration", duration_seconds * 1000)
    except OSError:
        log.warning("could not send statsd metrics", exc_info=True)
