"""Stash on Airflow: Kubernetes backup and recovery with restic, run by Apache Airflow.

Layers, lowest first (each imports only the ones below it; see docs/architecture.md):
``api`` (resource models) -> ``source``/``plan`` (pure planning) ->
``runtime``/``agent`` (execution services) -> ``operators``/``sensors`` (Airflow tasks)
-> ``factory``/``cli``/``plugin`` (the faces).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

GROUP = "stash.appscode.com"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


def lazy_attributes(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A package's ``__getattr__`` (PEP 562) that imports the submodule defining a
    public name on first use: ``where`` maps each name to its submodule. A worker that
    builds one DAG from the index then imports the few modules it needs, not every
    model and planner a package's ``__init__`` would otherwise pull in."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
