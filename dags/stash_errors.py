"""Lists the Stash resources that made no Airflow DAG as this file's import error.

Kept apart from ``stash_dags.py`` so that one bad resource never hides the DAGs of
the good ones, while its error (object and field named) still shows in the UI.
"""

from stash_plugin.factory import raise_resource_errors

raise_resource_errors()
