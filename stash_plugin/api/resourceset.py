"""Everything one source holds, indexed the way the planner looks things up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .appbinding import AppBinding
from .errors import ResourceError
from .kubeobjects import Node, Secret, Workload
from .legacy import workload_of
from .parse import LegacyParsed, Parsed
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
    warnings: list[ResourceError] = field(default_factory=list)
    """Objects read in a deprecated shape (Stash 0.8's), each named with what it became."""
    converted: dict[tuple[str, str, str], LegacyParsed] = field(default_factory=dict)
    """(kind, namespace, name) of each Stash 0.8 object -> what it became."""
    origins: dict[tuple[str, str | None, str], str] = field(default_factory=dict)
    _duplicates: set[tuple[str, str | None, str]] = field(default_factory=set)

    def add(self, obj: Parsed, origin: str | None = None) -> None:
        if isinstance(obj, LegacyParsed):
            c = obj.converted
            self.converted[(c.kind, c.namespace, c.name)] = obj
            self.warnings.append(obj.warning)
            for model in obj.objects:
                self.add(model, origin)
        elif isinstance(obj, Node):
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

    def deprecation(self, kind: str, namespace: str, name: str) -> ResourceError | None:
        """The deprecation note of an object read in Stash 0.8's shape, if it was."""
        found = self.converted.get((kind, namespace, name))
        return found.warning if found else None

    def origin_of(self, kind: str, namespace: str | None, name: str) -> str | None:
        return self.origins.get((kind, namespace, name))

    def resolve_stash08_recoveries(self) -> None:
        """Point each converted Stash 0.8 Recovery at the Repository of the converted
        Restic that backed its workload up.

        A 0.8 Recovery names the per-workload Repository Stash 0.8 made
        (``deployment.NAME``); its backend was the inline one of the Restic that
        selected the workload, in the same namespace. No such Restic, or several, is
        an error that names them: guessing could restore another backup's data."""
        for key, recovery in list(self.recoveries.items()):
            vr = recovery.spec.volume_restorer
            ident = ("Recovery", key[0], key[1])
            if vr is None or vr.stash08_host is None or ident not in self.converted:
                continue
            ns, old = key[0], recovery.spec.repository.name
            found = self._stash08_restics(ns, old)
            if len(found) == 1:
                ref = recovery.spec.repository.model_copy(update={"name": found[0]})
                spec = recovery.spec.model_copy(update={"repository": ref})
                self.recoveries[key] = recovery.model_copy(update={"spec": spec})
                continue
            del self.recoveries[key]
            kind, workload = workload_of(old)
            why = (
                f"Restics {', '.join(found)} of namespace {ns} all select {kind} {ns}/{workload}"
                if found
                else f"no Stash 0.8 Restic of namespace {ns} selects {kind} {ns}/{workload}"
                + (
                    ""
                    if (kind, ns, workload) in self.workloads
                    else " (its manifest is not in the source)"
                )
            )
            self.errors.append(
                ResourceError(
                    "Recovery",
                    ns,
                    key[1],
                    "spec.repository.name",
                    f"cannot tell which backend holds Stash 0.8 repository {old}: {why}",
                    self.origin_of("Recovery", ns, key[1]),
                )
            )

    def _stash08_restics(self, namespace: str, repository: str) -> list[str]:
        kind, workload = workload_of(repository)
        found = self.workloads.get((kind, namespace, workload))
        if found is None:
            return []
        return sorted(
            name
            for (ns, name), restic in self.restics.items()
            if ns == namespace
            and restic.spec.stash08_layout
            and restic.spec.volume_selector is not None
            and restic.spec.volume_selector.selector.matches(dict(found.labels))
        )
