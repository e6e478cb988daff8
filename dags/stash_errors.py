"""Lists the Stash resources that made no Airflow DAG as this file's import error.

Kept apart from the ``stash_dags_NN.py`` shards so that one bad resource never hides
the DAGs of the good ones, while its error (object and field named) still shows in
the UI, once.
"""

import os

from stash_plugin.factory import raise_resource_errors

raise_resource_errors(dags_folder=os.path.dirname(os.path.abspath(__file__)))
