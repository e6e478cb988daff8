"""The CRDs under charts/crds: generated from the models, valid, structural, and in
agreement with the models on the examples (``examples/``).

Unknown fields: a v1 CRD may not say ``additionalProperties: false``; the API server
prunes undeclared fields and rejects them only under strict field validation
(``kubectl``'s default). ``strict()`` below adds ``additionalProperties: false`` to
every declared object to stand for that check, and the tests show the models and the
strict schema refuse the same typos.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import AliasChoices, BaseModel, Field

from stash_plugin.api import parse_document
from stash_plugin.api.crds import KINDS, crd, main, openapi_schema, rendered

ROOT = Path(__file__).resolve().parents[2]
CHARTS = ROOT / "charts" / "crds"
EXAMPLES = ROOT / "examples"
SCHEMA_OF = {
    info.kind: crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"] for info in KINDS
}


def load(path: Path) -> Any:
    """A manifest as the API server sees it: JSON, so timestamps stay strings."""
    return _jsonable(yaml.safe_load(path.read_text()))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime.datetime):
        return value.isoformat().replace("+00:00", "Z")
    return value


# --------------------------------------------------------------------------- (a) in sync


def test_committed_crds_match_the_models() -> None:
    expected = rendered()
    committed = {p.name: p.read_text() for p in CHARTS.glob("*.yaml")}
    assert sorted(committed) == sorted(expected), "a CRD file is missing or stale"
    for name, text in expected.items():
        assert committed[name] == text, (
            f"charts/crds/{name} is out of date: run `python -m stash_plugin.api.crds charts/crds`"
        )


def test_check_mode_reports_drift(tmp_path: Path) -> None:
    assert main([str(CHARTS), "--check"]) == 0
    assert main([str(tmp_path), "--check"]) == 1
    assert main([str(tmp_path)]) == 0
    assert main([str(tmp_path), "--check"]) == 0
    assert {p.name for p in tmp_path.iterdir()} == set(rendered())


def test_files_say_they_are_generated() -> None:
    for text in rendered().values():
        assert text.startswith("# generated from stash_plugin/api by ")
        assert "&id" not in text and "*id" not in text  # no YAML anchors


# --------------------------------------------------------------------------- (b) valid CRDs


@pytest.mark.parametrize("name", sorted(rendered()))
def test_crd_is_a_valid_kubernetes_object(name: str) -> None:
    doc = yaml.safe_load(rendered()[name])
    version = kubernetes_validate.latest_version()
    assert kubernetes_validate.validate(doc, version, strict=True)


def test_names_scope_and_subresources() -> None:
    docs = {info.kind: crd(info) for info in KINDS}
    scope = {k: d["spec"]["scope"] for k, d in docs.items()}
    assert scope == {
        "Repository": "Namespaced",
        "Restic": "Namespaced",
        "Recovery": "Namespaced",
        "BackupAgent": "Cluster",
        "BackupTemplate": "Cluster",
    }
    with_status = {k for k, d in docs.items() if "subresources" in d["spec"]["versions"][0]}
    assert with_status == {"Repository", "Recovery"}
    short = [s for d in docs.values() for s in d["spec"]["names"]["shortNames"]]
    assert len(short) == len(set(short))
    builtin = {"rs", "rc", "rq", "ds", "deploy", "po", "pv", "pvc", "svc", "sa", "sts", "cm"}
    assert not set(short) & builtin
    for d in docs.values():
        assert d["spec"]["group"] == "stash.appscode.com"
        assert d["spec"]["names"]["categories"] == ["stash"]
        version = d["spec"]["versions"][0]
        assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)


# --------------------------------------------------------------------------- (c) structural

_TYPES = {"object", "array", "string", "integer", "number", "boolean"}
_FORBIDDEN = {"$ref", "$defs", "definitions", "dependencies", "patternProperties", "const", "id"}
_JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
_NOT_IN_JUNCTOR = {"type", "description", "default", "additionalProperties", "nullable"}


def structural_errors(schema: Any) -> list[str]:
    """The main rules of Kubernetes structural schemas (and of v1 CRD validation).

    https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#specifying-a-structural-schema
    """
    errors = list(_node_errors(schema, "", in_junctor=False))
    if isinstance(schema, dict):
        if schema.get("type") != "object":
            errors.append("<root>: must be of type object")
        meta = schema.get("properties", {}).get("metadata", {})
        if set(meta.get("properties", {})) - {"name", "generateName"}:
            errors.append("metadata: only name and generateName may be restricted")
    return errors


def _node_errors(node: Any, path: str, in_junctor: bool) -> Iterator[str]:
    where = path or "<root>"
    if not isinstance(node, dict):
        yield f"{where}: a schema must be a mapping"
        return
    yield from (f"{where}: {key} is not allowed" for key in _FORBIDDEN & set(node))
    if in_junctor:
        yield from (f"{where}: {k} inside {_JUNCTORS}" for k in _NOT_IN_JUNCTOR & set(node))
    elif not _typed(node):
        yield f"{where}: needs a type"
    if node.get("uniqueItems") is True:
        yield f"{where}: uniqueItems must not be true"
    if "nullable" in node and not isinstance(node["nullable"], bool):
        yield f"{where}: nullable must be a boolean"
    yield from _object_errors(node, where, path, in_junctor)
    if "items" in node:
        yield from _node_errors(node["items"], f"{path}[]", in_junctor)
    for junctor in _JUNCTORS:
        subs = node.get(junctor)
        for sub in [subs] if isinstance(subs, dict) else subs or []:
            yield from _node_errors(sub, f"{path}({junctor})", in_junctor=True)
            undeclared = set(sub.get("properties", {})) - set(node.get("properties", {}))
            if undeclared:
                yield f"{where}: {sorted(undeclared)} only declared inside {junctor}"


def _typed(node: dict[str, Any]) -> bool:
    """One type name (never a list, never ``null``), unless the node opts out."""
    kind = node.get("type")
    if node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string"):
        return kind is None or (isinstance(kind, str) and kind in _TYPES)
    return isinstance(kind, str) and kind in _TYPES


def _object_errors(node: dict[str, Any], where: str, path: str, in_junctor: bool) -> Iterator[str]:
    extra = node.get("additionalProperties")
    if extra is False:
        yield f"{where}: additionalProperties must not be false"
    if extra is not None and "properties" in node:
        yield f"{where}: properties and additionalProperties exclude each other"
    if isinstance(extra, dict):
        yield from _node_errors(extra, f"{path}.*", in_junctor)
    props = node.get("properties", {})
    for name, sub in props.items():
        yield from _node_errors(sub, f"{path}.{name}" if path else name, in_junctor)
    # A required field that is not declared would be pruned, then missed: no object
    # could ever be created.
    missing = set(node.get("required", [])) - set(props)
    if missing and not in_junctor:
        yield f"{where}: required but not declared: {sorted(missing)}"


@pytest.mark.parametrize("kind", sorted(SCHEMA_OF))
def test_schema_is_structural(kind: str) -> None:
    assert structural_errors(SCHEMA_OF[kind]) == []


@pytest.mark.parametrize(
    "broken, expected",
    [
        ({"type": "object", "properties": {"a": {}}}, "a: needs a type"),
        ({"type": "object", "properties": {"a": {"$ref": "#/x"}}}, "a: $ref is not allowed"),
        ({"type": "object", "additionalProperties": False}, "must not be false"),
        (
            {"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}]}}},
            "a(anyOf): type inside",
        ),
        ({"type": "object", "required": ["a"]}, "required but not declared"),
        ({"type": "string"}, "<root>: must be of type object"),
        (
            {"type": "object", "properties": {"a": {"type": ["string", "null"]}}},
            "a: needs a type",
        ),
    ],
)
def test_structural_checker_catches(broken: dict[str, Any], expected: str) -> None:
    """The checker is not vacuous: each rule fires on a schema that breaks it."""
    assert any(expected in e for e in structural_errors(broken)), structural_errors(broken)


def test_raw_mappings_are_preserved_and_times_are_dates() -> None:
    backup_repo = SCHEMA_OF["Repository"]["properties"]["status"]["properties"]["backupRepos"]
    assert backup_repo["items"]["properties"]["lastBackupTime"] == {
        "type": "string",
        "format": "date-time",
        "nullable": True,
    }
    local = SCHEMA_OF["Repository"]["properties"]["spec"]["properties"]["backend"]
    empty_dir = local["properties"]["local"]["properties"]["emptyDir"]
    assert empty_dir["x-kubernetes-preserve-unknown-fields"] is True
    assert empty_dir["type"] == "object"


def test_generator_refuses_unions_and_handles_any() -> None:
    """A union a structural schema cannot say fails generation, loudly, with a path."""

    class Union(BaseModel):
        spec: int | str

    with pytest.raises(ValueError, match=r"spec: only `X \| None` unions"):
        openapi_schema(Union)

    class Loose(BaseModel):
        spec: Any
        other: int | None = Field(default=None, validation_alias=AliasChoices("Other", "other"))

    schema = openapi_schema(Loose)
    assert schema["properties"]["spec"] == {"x-kubernetes-preserve-unknown-fields": True}
    assert schema["properties"]["Other"] == schema["properties"]["other"]
    assert structural_errors(schema) == []


# --------------------------------------------------------------------------- (d) examples


def as_json_schema(node: Any) -> Any:
    """A structural schema as JSON schema (draft 4, like OpenAPI 3.0): ``nullable``
    becomes a ``null`` type; Kubernetes extensions are dropped."""
    if isinstance(node, list):
        return [as_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: as_json_schema(v)
        for k, v in node.items()
        if k not in ("properties", "nullable") and not k.startswith("x-kubernetes-")
    }
    if "properties" in node:  # names -> schemas
        out["properties"] = {k: as_json_schema(v) for k, v in node["properties"].items()}
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def strict(node: Any) -> Any:
    """Stand-in for the API server's strict field validation: undeclared fields fail."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items() if k != "properties"}
    if "properties" in node:
        out["properties"] = {k: strict(v) for k, v in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


def schema_errors(doc: dict[str, Any], strict_fields: bool = True) -> list[str]:
    schema = SCHEMA_OF[doc["kind"]]
    validator = jsonschema.Draft4Validator(
        as_json_schema(strict(schema) if strict_fields else schema)
    )
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def stash_documents(path: Path) -> list[dict[str, Any]]:
    """The Stash objects of a manifest file (the Secrets and workloads have no CRD here)."""
    docs = [_jsonable(d) for d in yaml.safe_load_all(path.read_text()) if d]
    return [d for d in docs if d["kind"] in SCHEMA_OF]


EXAMPLE_FILES = sorted(p for p in EXAMPLES.glob("*.yaml") if stash_documents(p))


def test_there_are_examples() -> None:
    kinds = {d["kind"] for p in EXAMPLE_FILES for d in stash_documents(p)}
    assert kinds == set(SCHEMA_OF)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_validates_against_its_crd(path: Path) -> None:
    for doc in stash_documents(path):
        assert not isinstance(parse_document(doc), list)  # the models accept it too
        assert schema_errors(doc) == []


def test_status_validates_against_its_crd() -> None:
    """The status Stash writes back passes the CRD as well (status subresource)."""
    doc = load(ROOT / "tests" / "fixtures" / "repository-status.yaml")
    assert not isinstance(parse_document(doc), list)
    assert len(doc["status"]["backupRepos"]) == 3
    assert schema_errors(doc) == []


def _restic_with_appref() -> dict[str, Any]:
    return load(EXAMPLES / "restic-database-appref.yaml")


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d["spec"].update(scheduel="@every 1m"), "scheduel"),
        (lambda d: d["spec"]["repository"].update(nmae="x"), "nmae"),
        (lambda d: d["spec"]["databaseSelector"]["AppRef"].update(nmespace="x"), "nmespace"),
    ],
)
def test_unknown_fields_fail_like_in_the_models(mutate: Any, field: str) -> None:
    doc = _restic_with_appref()
    mutate(doc)
    errors = parse_document(doc)
    assert isinstance(errors, list) and any(e.message == "unknown field" for e in errors)
    assert any(field in e for e in schema_errors(doc)), "strict field validation refuses it"
    assert schema_errors(doc, strict_fields=False) == [], "the CRD alone prunes, not rejects"


def test_other_alias_spellings_are_declared() -> None:
    """``appRef`` and ``connectionUrl`` are read by the models: the CRD keeps them."""
    doc = _restic_with_appref()
    selector = doc["spec"]["databaseSelector"]
    selector["appRef"] = selector.pop("AppRef")
    assert not isinstance(parse_document(copy.deepcopy(doc)), list)
    assert schema_errors(doc) == []
    url_doc = load(EXAMPLES / "restic-database-connectionurl.yaml")
    selector = url_doc["spec"]["databaseSelector"]
    selector["connectionUrl"] = selector.pop("connectionURL")
    assert not isinstance(parse_document(copy.deepcopy(url_doc)), list)
    assert schema_errors(url_doc) == []


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["spec"].update(targetType="Volumes"),
        lambda d: d["spec"].update(paused="maybe"),
        lambda d: d["spec"]["retentionPolicies"][0].update(keepLast=-1),
        lambda d: d["spec"].pop("repository"),
    ],
)
def test_bad_values_fail_the_schema(mutate: Any) -> None:
    doc = _restic_with_appref()
    mutate(doc)
    assert schema_errors(doc, strict_fields=False) != []
    assert isinstance(parse_document(doc), list)
