"""Stash on Airflow: Kubernetes backup and recovery with restic, run by Apache Airflow.

Layers, lowest first (each imports only the ones below it; see docs/architecture.md):
``api`` (resource models) -> ``source``/``plan`` (pure planning) ->
``runtime``/``agent`` (execution services) -> ``operators``/``sensors`` (Airflow tasks)
-> ``factory``/``cli``/``plugin`` (the faces).
"""

GROUP = "stash.appscode.com"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
