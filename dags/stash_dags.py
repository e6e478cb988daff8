"""Stash backup and recovery DAGs for Airflow: one per backup target and one per Recovery.

The resources come from ``[stash] manifests_dir``; see the README.
"""

from stash_plugin.factory import build_dags

_dags, _errors = build_dags()
globals().update(_dags)
