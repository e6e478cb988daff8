"""Airflow sensors of Stash (installed as ``stash_plugin.sensors``)."""

from .snapshot import SnapshotSensor

__all__ = ["SnapshotSensor"]
