"""The Airflow plugin (entry point ``airflow.plugins``): the *Stash* page of the UI.

Airflow 3's API server mounts the plugin's FastAPI app under ``/stash`` and the UI
shows it as the *Stash* entry of the navigation (an external view of that app).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from stash_plugin.web.app import app

URL_PREFIX = "/stash"


class StashPlugin(AirflowPlugin):
    name = "stash"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Stash"}]
    external_views = [
        {
            "name": "Stash",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "stash",
            "nav_top_level": True,
        }
    ]
