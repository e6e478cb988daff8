"""Stash backup and recovery DAGs for Airflow: the shard of this file's number.

Each DAG (one per backup target, per Recovery, per Repository) is built by the file
``stash_dags_NN.py`` where NN is a stable hash of its id modulo ``[stash] dag_shards``;
the DAG processor parses the files in parallel. See the README ("Scale").
"""

from stash_plugin.factory import build_shard

globals().update(build_shard(__file__))
