"""The Stash page of the Airflow UI: its API (a FastAPI app the plugin mounts) and page."""
