"""Everything one source holds, indexed the way the planner looks things up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .appbinding import AppBinding
from .errors import ResourceError
from .kubeobjects import Node, Secret, Workload
from .parse import Parsed
from .resources import BackupAgent, BackupTemplate, Recovery, Repository, Restic

Key = tuple[str, str]  # (namespace, name)


@dataclass
class ResourceSet:
    """Parsed objects plus the errors met while reading them.

    Two documents that define the same object are both refused: guessing which one
    the user meant could back up the wrong thing.
    """

    repositories: dict[Key, Repository] = field(default_factory=dict)
    restics: dict[Key, Restic] = field(default_factory=dict)
    recoveries: dict[Key, Recovery] = field(default_factory=dict)
    agents: dict[str, BackupAgent] = field(default_factory=dict)
    templates: dict[str, BackupTemplate] = field(default_factory=dict)
    secrets: dict[Key, Secret] = field(default_factory=dict)
    workloads: dict[tuple[str, str, str], Workload] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    appbindings: dict[Key, AppBinding] = field(default_factory=dict)
    errors: list[ResourceError] = field(default_factory=list)
    origins: dict[tuple[str, str | None, str], str] = field(default_factory=dict)
    _duplicates: set[tuple[str, str | None, str]] = field(default_factory=set)

    def add(self, obj: Parsed, origin: str | None = None) -> None:
        if isinstance(obj, Node):
            self._put("Node", None, obj.name, self.nodes, obj, origin, obj.name)
        elif isinstance(obj, AppBinding):
            self._put("AppBinding", obj.namespace, obj.name, self.appbindings, obj, origin)
        elif isinstance(obj, Secret):
            self._put("Secret", obj.namespace, obj.name, self.secrets, obj, origin)
        elif isinstance(obj, Workload):
            key3 = (obj.kind, obj.namespace, obj.name)
            self._put(obj.kind, obj.namespace, obj.name, self.workloads, obj, origin, key3)
        elif isinstance(obj, BackupAgent):
            name = obj.metadata.name
            self._put("BackupAgent", None, name, self.agents, obj, origin, name)
        elif isinstance(obj, BackupTemplate):
            name = obj.metadata.name
            self._put("BackupTemplate", None, name, self.templates, obj, origin, name)
        else:
            table: dict[Any, Any] = {  # type: ignore[assignment]
                "Repository": self.repositories,
                "Restic": self.restics,
                "Recovery": self.recoveries,
            }[obj.kind]
            ns = obj.metadata.namespace or "default"
            self._put(obj.kind, ns, obj.metadata.name, table, obj, origin)

    def _put(self, kind, ns, name, table, obj, origin, key=None) -> None:  # type: ignore[no-untyped-def]
        key = key if key is not None else (ns, name)
        ident = (kind, ns, name)
        if ident in self._duplicates:
            return
        if key in table:
            first = self.origins.get(ident)
            del table[key]
            self._duplicates.add(ident)
            self.errors.append(
                ResourceError(
                    kind,
                    ns,
                    name,
                    "metadata.name",
                    f"defined twice ({first} and {origin}); neither is used",
                    origin,
                )
            )
            return
        table[key] = obj
        if origin:
            self.origins[ident] = origin

    def origin_of(self, kind: str, namespace: str | None, name: str) -> str | None:
        return self.origins.get((kind, namespace, name))
