"""From one decoded YAML/JSON document to a model, or to an error that names it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from .. import API_VERSION, GROUP
from .appbinding import APPBINDING_API_VERSION, AppBinding, parse_appbinding
from .errors import FieldError, ResourceError, field_path
from .kubeobjects import (
    WORKLOAD_KINDS,
    Node,
    Secret,
    Workload,
    parse_node,
    parse_secret,
    parse_workload,
)
from .legacy import Converted, convert, is_legacy
from .names import dns_subdomain
from .resources import (
    BackupAgent,
    BackupTemplate,
    Recovery,
    Repository,
    Restic,
    StashResource,
)

STASH_KINDS: dict[str, type[StashResource]] = {
    "Repository": Repository,
    "Restic": Restic,
    "Recovery": Recovery,
    "BackupAgent": BackupAgent,
    "BackupTemplate": BackupTemplate,
}
CLUSTER_SCOPED = {"BackupAgent", "BackupTemplate", "Node"}


@dataclass(frozen=True)
class LegacyParsed:
    """A Stash 0.8 object read in its new shape: the objects it became (a Restic's
    Repository too) and the note that tells the user so."""

    objects: tuple[StashResource, ...]
    converted: Converted
    origin: str | None = None

    @property
    def warning(self) -> ResourceError:
        c = self.converted
        return ResourceError(
            c.kind, c.namespace, c.name, None, c.note.split(": ", 1)[1], self.origin
        )


Parsed = StashResource | Secret | Workload | Node | AppBinding | LegacyParsed


def _ident(doc: Mapping[str, Any]) -> tuple[str, str | None, str | None]:
    kind = doc.get("kind") if isinstance(doc.get("kind"), str) else "document"
    raw_meta = doc.get("metadata")
    meta: Mapping[str, Any] = raw_meta if isinstance(raw_meta, Mapping) else {}
    name = meta.get("name") if isinstance(meta.get("name"), str) else None
    ns = meta.get("namespace") if isinstance(meta.get("namespace"), str) else None
    if name is not None and ns is None and kind not in CLUSTER_SCOPED:
        ns = "default"
    return str(kind), ns, name


def parse_document(doc: Any, origin: str | None = None) -> Parsed | list[ResourceError] | None:
    """Parse one document.

    Returns the model, a list of errors (each naming object and field), or None for
    kinds Stash does not read (ConfigMaps, Services...), which are ignored.
    """
    if not isinstance(doc, Mapping):
        return [ResourceError("document", None, None, None, "is not a mapping", origin)]
    kind, ns, name = _ident(doc)

    def error(field: str | None, message: str) -> list[ResourceError]:
        return [ResourceError(kind, ns, name, field, message, origin)]

    api_version = doc.get("apiVersion")
    wrong_group = _stash_group_error(kind, api_version)
    if wrong_group is not None:
        return error(*wrong_group)
    if kind in STASH_KINDS and _group(api_version) == GROUP:  # else another group's kind
        if name is None:
            return error("metadata.name", "missing")
        if is_legacy(kind, doc.get("spec")):
            return _parse_legacy(doc, kind, ns or "default", name, origin)
        return _validate(doc, kind, ns, name, origin)
    if kind == "Secret" and api_version == "v1":
        if name is None:
            return error("metadata.name", "missing")
        try:
            return parse_secret(doc, ns or "default", name)
        except FieldError as exc:
            return error(exc.field, exc.message)
        except ValueError as exc:
            return error(None, str(exc))
    if kind == "Node" and api_version == "v1":
        if name is None:
            return None
        try:
            return parse_node(doc, name)
        except FieldError as exc:
            return error(exc.field, exc.message)
    if kind == "AppBinding" and api_version == APPBINDING_API_VERSION:
        if name is None:
            return error("metadata.name", "missing")
        try:
            dns_subdomain(name)  # it becomes part of DAG ids and repository folders
            return parse_appbinding(doc, ns or "default", name)
        except FieldError as exc:
            return error(exc.field, exc.message)
        except ValueError as exc:
            return error("metadata.name", str(exc))
    if kind in WORKLOAD_KINDS:
        if name is None:
            return error("metadata.name", "missing")
        try:
            return parse_workload(doc, ns or "default", name)
        except FieldError as exc:
            return error(exc.field, exc.message)
        except (ValueError, TypeError, KeyError) as exc:
            return error(None, str(exc))
    if kind == "document":
        return error("kind", "missing: every document needs apiVersion and kind")
    return None


def _validate(
    doc: Mapping[str, Any], kind: str, ns: str | None, name: str, origin: str | None, note: str = ""
) -> StashResource | list[ResourceError]:
    try:
        model = STASH_KINDS[kind].model_validate(doc)
    except ValidationError as exc:
        return [
            ResourceError(kind, ns, name, field_path(e["loc"]) or None, note + _message(e), origin)
            for e in exc.errors(include_input=False, include_url=False)
        ]
    if kind not in CLUSTER_SCOPED and model.metadata.namespace is None:
        model = model.model_copy(
            update={"metadata": model.metadata.model_copy(update={"namespace": ns})}
        )
    return model


def _parse_legacy(
    doc: Mapping[str, Any], kind: str, ns: str, name: str, origin: str | None
) -> LegacyParsed | list[ResourceError]:
    """Convert a Stash 0.8 object and read what it became; an error names the old
    object, and the field of the old shape where the conversion found it."""
    try:
        dns_subdomain(name)
        converted = convert(doc, kind, ns, name)
    except FieldError as exc:
        return [
            ResourceError(kind, ns, name, exc.field, f"{exc.message} (Stash 0.8 shape)", origin)
        ]
    except ValueError as exc:
        return [ResourceError(kind, ns, name, "metadata.name", str(exc), origin)]
    models: list[StashResource] = []
    errors: list[ResourceError] = []
    for new in converted.documents:
        note = "" if new["kind"] == kind else f"(its backend, as Repository {ns}/{name}) "
        result = _validate(new, new["kind"], ns, name, origin, "in the new shape: " + note)
        if isinstance(result, list):
            errors += [ResourceError(kind, ns, name, e.field, e.message, origin) for e in result]
        else:
            models.append(result)
    return errors or LegacyParsed(tuple(models), converted, origin)


def _stash_group_error(kind: str, api_version: Any) -> tuple[str, str] | None:
    """Why a document that claims Stash's group, or a Stash kind, cannot be read.

    Returns None for a Stash kind at ``stash.appscode.com/v1alpha1`` and for every
    document that is not Stash's (a Repository of another group is someone else's).
    A Stash kind without apiVersion, at the core group (``v1``) or at another version
    of Stash's group would otherwise be skipped silently and its backups never run.
    """
    if kind == "document":
        return None  # no kind at all: reported as such by the caller
    group = _group(api_version)
    if group == GROUP:
        if kind not in STASH_KINDS:
            known = ", ".join(sorted(STASH_KINDS))
            return "kind", f"{kind!r} is not a kind of {GROUP} (known kinds: {known})"
        if api_version != API_VERSION:
            return "apiVersion", f"{api_version!r} is not served; {kind} is {API_VERSION}"
        return None
    if kind not in STASH_KINDS or (group and "." in group):
        return None
    if group is None:
        return "apiVersion", f"missing: a {kind} needs apiVersion {API_VERSION}"
    return "apiVersion", f"{api_version!r} is not {GROUP}; {kind} is {API_VERSION}"


def _group(api_version: Any) -> str | None:
    """The API group, lower-cased (``""`` for the core group ``v1``); None when absent.

    Kubernetes spells groups in lower case, so ``Stash.AppsCode.com`` is Stash's group
    written wrongly rather than somebody else's.
    """
    if api_version is None:
        return None
    if not isinstance(api_version, str):
        return ""
    if api_version.strip().lower() == GROUP:  # the group without a version
        return GROUP
    group, slash, _ = api_version.partition("/")
    return group.strip().lower() if slash else ""


def _message(err: Mapping[str, Any]) -> str:
    kind = err.get("type")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    msg = str(err.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")
