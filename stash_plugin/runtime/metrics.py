"""statsd metrics, using Airflow's ``[metrics]`` settings (host, port, prefix).

Names carry the run's scope (``backup``, namespace, Restic, target, repository, or
``recovery``, namespace, name) so that a statsd-exporter mapping can turn them into
labelled Prometheus series. What to send is decided by ``outcomes``; this module only
sends it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from .outcomes import Metric

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
    """One name component: dots and colons would split or break the statsd name."""
    return part.replace(".", "_").replace(":", "_")


def metric_name(scope: tuple[str, ...], name: str) -> str:
    """``stash.<kind>.<namespace>.<...>.<name>``: every part but the fixed prefix is
    cleaned, so backups and recoveries share one naming scheme."""
    return ".".join(["stash", *(_clean(p) for p in scope), name])


def emit(scope: tuple[str, ...], metrics: Iterable[Metric]) -> None:
    """Send a run's metrics; never fails the run."""
    client = _client()
    if client is None:
        return
    try:
        for m in metrics:
            name = metric_name(scope, m.name)
            if m.kind == "incr":
                client.incr(name, int(m.value))
            elif m.kind == "gauge":
                client.gauge(name, m.value)
            else:
                client.timing(name, m.value)
    except OSError:
        log.warning("could not send statsd metrics", exc_info=True)
