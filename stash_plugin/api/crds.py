"""CustomResourceDefinitions of the four Stash kinds, generated from the pydantic models.

The models are the single source of truth for what a manifest may say; the CRDs under
``charts/crds/`` are derived from them here, and a test fails when the committed files
drift. Regenerate with::

    python -m stash_plugin.api.crds charts/crds

The models' JSON schema is turned into a Kubernetes *structural* OpenAPI v3 schema:
every ``$ref`` inlined, ``Optional`` as ``nullable``, every node typed, no ``title``
or ``default`` (the models apply their defaults; a default in the CRD would be written
into stored objects and must itself be valid after pruning), and raw mappings as
``x-kubernetes-preserve-unknown-fields``.

Unknown fields: the models reject them (``extra="forbid"``), but a CRD cannot:
``additionalProperties: false`` is forbidden in ``apiextensions.k8s.io/v1``, so the API
server *prunes* unknown fields, and rejects them only under strict field validation
(``kubectl``'s default, ``--validate=strict``), which reports every field the schema
does not declare. Hence every spelling the models accept for a field is declared (both
``AppRef`` and ``appRef``), so that strict validation never refuses, and pruning never
drops, what the models would read.

Pure functions: no Airflow, no kubernetes client.
"""

from __future__ import annotations

import copy
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices, BaseModel

from .. import GROUP, VERSION
from .resources import BackupAgent, BackupTemplate, Recovery, Repository, Restic

__all__ = ["KINDS", "KindInfo", "crd", "extra_aliases", "main", "openapi_schema", "rendered"]

HEADER = (
    "# generated from stash_plugin/api by `python -m stash_plugin.api.crds charts/crds`; "
    "do not edit\n"
)

Schema = dict[str, Any]

# Keys of a model's JSON schema that go to the CRD unchanged (after recursion where
# they hold schemas). Anything else is an error, so that a new pydantic construct
# fails generation instead of producing a CRD the API server refuses.
_KEPT = frozenset(
    {
        "type",
        "format",
        "description",
        "enum",
        "pattern",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "minItems",
        "maxItems",
        "required",
    }
)
_DROPPED = frozenset({"title", "default", "$defs", "examples"})


# --------------------------------------------------------------------------- the kinds


def _age() -> dict[str, str]:
    return {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


@dataclass(frozen=True)
class KindInfo:
    """Everything about one kind that the models cannot tell: names, scope, columns."""

    model: type[BaseModel]
    plural: str
    short_names: tuple[str, ...]
    namespaced: bool
    columns: tuple[Mapping[str, Any], ...]

    @property
    def kind(self) -> str:
        return self.model.__name__

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def has_status(self) -> bool:
        """A status subresource exactly when the model has a status, so that spec
        writers (``kubectl apply``) and the status writer (the DAG callback) never
        overwrite each other."""
        return "status" in self.model.model_fields


# Short names are Stash 0.8's (repo, rst, rec) plus ``ba`` and ``bt``; none is a built-in's.
KINDS: tuple[KindInfo, ...] = (
    KindInfo(
        Repository,
        "repositories",
        ("repo",),
        True,
        (
            {
                "name": "Storage Secret",
                "type": "string",
                "jsonPath": ".spec.backend.storageSecretName",
                "description": "Secret with the backend's credentials and RESTIC_PASSWORD",
            },
            {
                "name": "Last Backup",
                "type": "date",
                "jsonPath": ".status.backupRepos[0].lastBackupTime",
                "description": "Last backup of the first target that uses this repository",
            },
            _age(),
        ),
    ),
    KindInfo(
        Restic,
        "restics",
        ("rst",),
        True,
        (
            {"name": "Target Type", "type": "string", "jsonPath": ".spec.targetType"},
            {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule"},
            {"name": "Backup Type", "type": "string", "jsonPath": ".spec.backupType"},
            {"name": "Paused", "type": "boolean", "jsonPath": ".spec.paused"},
            _age(),
        ),
    ),
    KindInfo(
        Recovery,
        "recoveries",
        ("rec",),
        True,
        (
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Repository", "type": "string", "jsonPath": ".spec.repository.name"},
            _age(),
        ),
    ),
    KindInfo(
        BackupAgent,
        "backupagents",
        ("ba",),
        False,
        (
            {"name": "Image", "type": "string", "jsonPath": ".spec.image"},
            _age(),
        ),
    ),
    KindInfo(
        BackupTemplate,
        "backuptemplates",
        ("bt",),
        False,
        (
            {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule"},
            {"name": "Repository", "type": "string", "jsonPath": ".spec.repository.name"},
            _age(),
        ),
    ),
)


# --------------------------------------------------------------------------- aliases


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The model classes an annotation mentions (``X | None``, ``list[X]``...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def extra_aliases(root: type[BaseModel]) -> dict[str, dict[str, list[str]]]:
    """Per model name: the alias its schema uses -> the other spellings it accepts.

    pydantic's schema shows only the first of ``AliasChoices("AppRef", "appRef")``;
    the CRD must declare the others too, or the API server would prune them.
    """
    out: dict[str, dict[str, list[str]]] = {}
    todo, seen = [root], set()
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for field in model.model_fields.values():
            choices = field.validation_alias
            if isinstance(choices, AliasChoices):
                names = [c for c in choices.choices if isinstance(c, str)]
                if len(names) > 1:
                    out.setdefault(model.__name__, {})[names[0]] = names[1:]
            todo += _models_in(field.annotation)
    return out


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class _Context:
    defs: Mapping[str, Schema]
    aliases: Mapping[str, Mapping[str, list[str]]]


def _fail(path: str, message: str) -> ValueError:
    return ValueError(f"{path or '<root>'}: {message}")


def _resolve(node: Schema, ctx: _Context, path: str) -> tuple[Schema, str | None]:
    """Inline a ``$ref`` (or a one-element ``allOf``); siblings such as a field's
    description win over the referenced model's. Returns the model name, if any."""
    if "allOf" in node and len(node["allOf"]) == 1:
        rest = {k: v for k, v in node.items() if k != "allOf"}
        inner, name = _resolve(node["allOf"][0], ctx, path)
        return {**inner, **rest}, name
    ref = node.get("$ref")
    if ref is None:
        return node, None
    name = ref.removeprefix("#/$defs/")
    if name not in ctx.defs:
        raise _fail(path, f"unresolvable $ref {ref}")
    inner, _ = _resolve(ctx.defs[name], ctx, path)
    return {**inner, **{k: v for k, v in node.items() if k != "$ref"}}, name


def _nullable(node: Schema, path: str) -> Schema | None:
    """``anyOf: [X, {type: null}]`` (pydantic's ``X | None``) -> X plus ``nullable``.

    Other unions cannot be expressed structurally (a value's type must be known
    without trying alternatives), so they are refused.
    """
    if "anyOf" not in node:
        return None
    members = [m for m in node["anyOf"] if m != {"type": "null"}]
    if len(members) != 1 or len(members) == len(node["anyOf"]):
        raise _fail(path, "only `X | None` unions can be expressed in a structural schema")
    outer = {k: v for k, v in node.items() if k != "anyOf"}
    return {**members[0], **outer, "nullable": True}


def _raw_mapping(node: Schema) -> bool:
    """``dict[str, Any]``: content the models pass through without looking into it
    (volume sources, affinity...), which the API server must keep as given."""
    extra = node.get("additionalProperties")
    return node.get("type") == "object" and "properties" not in node and extra in (None, True, {})


def _convert(node: Schema, ctx: _Context, path: str, model: str | None = None) -> Schema:
    """One node of a model's JSON schema as a structural schema node; ``model`` names
    the model a node describes when no ``$ref`` says so (the root)."""
    node, ref_model = _resolve(node, ctx, path)
    model = ref_model or model
    nullable = _nullable(node, path)
    if nullable is not None:
        return _convert(nullable, ctx, path)
    if not set(node) - _DROPPED - {"description"}:  # ``Any``: any JSON value at all
        return {**_pick(node, {"description"}), "x-kubernetes-preserve-unknown-fields": True}
    out: Schema = {}
    for key, value in node.items():
        if key in _KEPT:
            out[key] = copy.deepcopy(value)
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            # JSON schema 2020-12 gives the bound; OpenAPI 3.0 a flag next to it.
            out[key.replace("exclusiveM", "m")] = value
            out[key] = True
        elif key == "nullable":
            out[key] = bool(value)
        elif key not in _DROPPED | {"properties", "items", "additionalProperties"}:
            raise _fail(path, f"cannot express {key!r} in a CRD schema")
    if "items" in node:
        out["items"] = _convert(node["items"], ctx, f"{path}[]")
    if "properties" in node:
        out["properties"] = _properties(node["properties"], ctx, path, model)
        if set(out.get("required", [])) & set(ctx.aliases.get(model or "", {})):
            # Requiring one spelling would refuse the others that the model accepts.
            raise _fail(path, "a required field with several spellings cannot be expressed")
    elif _raw_mapping(node):
        out["type"] = "object"
        out["x-kubernetes-preserve-unknown-fields"] = True
    elif isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _convert(node["additionalProperties"], ctx, f"{path}.*")
    if not isinstance(out.get("type"), str):
        raise _fail(path, f"needs exactly one type, got {out.get('type')!r}")
    return out


def _pick(node: Schema, keys: set[str]) -> Schema:
    return {k: v for k, v in node.items() if k in keys}


def _properties(
    props: Mapping[str, Schema], ctx: _Context, path: str, model: str | None
) -> dict[str, Schema]:
    """An object's fields, each alias spelling of a field declared like the field."""
    out: dict[str, Schema] = {}
    aliases = ctx.aliases.get(model or "", {})
    for name, sub in props.items():
        out[name] = _convert(sub, ctx, f"{path}.{name}" if path else name)
        for other in aliases.get(name, []):
            out[other] = copy.deepcopy(out[name])
    return out


def openapi_schema(model: type[BaseModel]) -> Schema:
    """The structural ``openAPIV3Schema`` of one top-level kind.

    ``metadata`` is left to the API server (a CRD may only restrict its name), and
    ``apiVersion``/``kind`` are plain strings because the server sets them.
    """
    raw = model.model_json_schema(by_alias=True, mode="validation")
    aliases = extra_aliases(model)
    ctx = _Context(raw.get("$defs", {}), aliases)
    lost = set(aliases) - set(ctx.defs) - {model.__name__}
    if lost:  # pydantic renames a $def when two models share a name
        raise ValueError(f"models not found in the schema's $defs: {sorted(lost)}")
    props = {k: v for k, v in raw["properties"].items() if k not in _SERVER_FIELDS}
    schema = _convert({**raw, "properties": props}, ctx, "", model.__name__)
    schema["properties"].update(copy.deepcopy(_SERVER_FIELDS))
    schema["required"] = [r for r in raw.get("required", []) if r not in _SERVER_FIELDS]
    return schema


_SERVER_FIELDS: dict[str, Schema] = {
    "apiVersion": {
        "type": "string",
        "description": "The versioned schema of this object (stash.appscode.com/v1alpha1).",
    },
    "kind": {"type": "string", "description": "The kind of this object."},
    "metadata": {"type": "object"},
}


# --------------------------------------------------------------------------- CRD


def crd(info: KindInfo) -> dict[str, Any]:
    """The ``apiextensions.k8s.io/v1`` CustomResourceDefinition of one kind."""
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": openapi_schema(info.model)},
        "additionalPrinterColumns": [dict(c) for c in info.columns],
    }
    if info.has_status:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": info.crd_name},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.kind.lower(),
                "shortNames": list(info.short_names),
                "categories": ["stash"],
            },
            "scope": "Namespaced" if info.namespaced else "Cluster",
            "versions": [version],
        },
    }


class _Dumper(yaml.SafeDumper):
    """Never writes YAML anchors: a CRD is read by people and by ``kubectl``."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(info: KindInfo) -> str:
    """The file text of one CRD: header, then keys sorted so output is stable."""
    body = yaml.dump(crd(info), Dumper=_Dumper, sort_keys=True, default_flow_style=False, width=100)
    return HEADER + body


def rendered() -> dict[str, str]:
    """File name -> text, for every kind."""
    return {f"{info.crd_name}.yaml": render(info) for info in KINDS}


def write(folder: Path) -> list[Path]:
    """Write every CRD into ``folder``; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered().items():
        path = folder / name
        path.write_text(text)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stash_plugin.api.crds FOLDER [--check]``.

    ``--check`` writes nothing and fails when a file differs, for CI.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    folders = [a for a in args if a != "--check"]
    if len(folders) != 1:
        print("usage: python -m stash_plugin.api.crds FOLDER [--check]", file=sys.stderr)
        return 2
    folder = Path(folders[0])
    if not check:
        for path in write(folder):
            print(path)
        return 0
    stale = [n for n, t in rendered().items() if _read(folder / n) != t]
    for name in stale:
        print(f"{folder / name} is out of date", file=sys.stderr)
    return 1 if stale else 0


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


if __name__ == "__main__":
    sys.exit(main())
