"""The directory source: every YAML/JSON manifest under a folder.

This is how Stash runs with no cluster (the embedded default). Files are read in a
stable order; a file that cannot be parsed is named and skipped, and never hides the
objects of other files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from .api.errors import ResourceError
from .api.parse import Parsed, parse_document
from .api.resourceset import ResourceSet

SUFFIXES = (".yaml", ".yml", ".json")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# What each file parsed to, keyed by its content: a DagBag parse runs the factory once
# per DAG file (stash_dags.py, stash_errors.py) and a process may parse many times, and
# decoding YAML plus validating is most of the cost. An entry is used only for the same
# bytes at the same path, so an edited file (whatever its mtime) is always read afresh.
# The parsed models are immutable; each call still builds its own ResourceSet.
_Parsed = tuple[tuple[str, Parsed | list[ResourceError]], ...] | ResourceError
_CACHE: OrderedDict[str, dict[str, tuple[bytes, _Parsed]]] = OrderedDict()
_CACHE_ROOTS = 16


def manifest_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath, f) for f in sorted(filenames) if f.endswith(SUFFIXES)]
    return files


def _documents(path: Path, text: str) -> Iterator[Any]:
    if path.suffix == ".json":
        yield json.loads(text)
        return
    yield from yaml.load_all(text, Loader=_Loader)  # noqa: S506 - a safe loader


def _expand(doc: Any) -> Iterator[Any]:
    """``kind: List`` (what ``kubectl get -o yaml`` writes) holds its objects in items."""
    if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
        yield from doc["items"]
    else:
        yield doc


def _parse_file(path: Path, rel: str, data: bytes) -> _Parsed:
    """Every object of one file with its origin (``file.yaml#2``), or the file's error."""
    try:
        text = io.TextIOWrapper(io.BytesIO(data)).read()  # exactly what Path.read_text does
        docs = [d for d in _documents(path, text) if d is not None]
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        return ResourceError("file", None, rel, None, f"malformed {path.suffix[1:].upper()}: {exc}")
    parsed: list[tuple[str, Parsed | list[ResourceError]]] = []
    index = 0
    for doc in docs:
        for obj in _expand(doc):
            index += 1
            origin = f"{rel}#{index}" if len(docs) > 1 or index > 1 else rel
            result = parse_document(obj, origin)
            if result is not None:
                parsed.append((origin, result))
    return tuple(parsed)


def _refuse_invalid_twins(resources: ResourceSet) -> None:
    """An object that an invalid document also defines is refused too.

    Two valid definitions of one object are both refused (ResourceSet); the same goes
    when one of them has errors: the broken one is often the newer edit, and backing
    up with the other would be a guess.
    """
    cluster_scoped = ("BackupAgent", "Node")
    invalid: dict[tuple[str, str | None, str], ResourceError] = {}
    for err in resources.errors:
        if err.name is not None:
            ns = None if err.kind in cluster_scoped else err.namespace
            invalid.setdefault((err.kind, ns, err.name), err)
    if not invalid:
        return
    tables: list[tuple[dict[Any, Any], Any]] = [
        (resources.repositories, lambda k: ("Repository", *k)),
        (resources.restics, lambda k: ("Restic", *k)),
        (resources.recoveries, lambda k: ("Recovery", *k)),
        (resources.secrets, lambda k: ("Secret", *k)),
        (resources.workloads, lambda k: k),
        (resources.agents, lambda k: ("BackupAgent", None, k)),
        (resources.nodes, lambda k: ("Node", None, k)),
    ]
    for table, ident_of in tables:
        for key in [k for k in table if ident_of(k) in invalid]:
            kind, ns, name = ident_of(key)
            bad = invalid[(kind, ns, name)]
            origin = resources.origin_of(kind, ns, name)
            del table[key]
            resources.errors.append(
                ResourceError(
                    kind,
                    ns,
                    name,
                    "metadata.name",
                    f"defined twice ({origin} and {bad.origin}, which has errors); neither is used",
                    origin,
                )
            )


def load_directory(root: str | Path) -> ResourceSet:
    """Read every manifest under ``root`` into a ResourceSet (objects plus named errors)."""
    root = Path(root)
    resources = ResourceSet()
    if not root.exists():
        resources.errors.append(
            ResourceError("manifests", None, str(root), None, "folder does not exist")
        )
        return resources
    cached = _CACHE.pop(str(root), {})
    seen: dict[str, tuple[bytes, _Parsed]] = {}
    for path in manifest_files(root):
        rel = str(path.relative_to(root)) if path != root else path.name
        data = path.read_bytes()
        digest = hashlib.blake2b(data, digest_size=20).digest()
        entry = cached.get(rel)
        if entry is None or entry[0] != digest:
            entry = (digest, _parse_file(path, rel, data))
        seen[rel] = entry
        parsed = entry[1]
        if isinstance(parsed, ResourceError):
            resources.errors.append(parsed)
            continue
        for origin, result in parsed:
            if isinstance(result, list):
                resources.errors.extend(result)
            else:
                resources.add(result, origin)
    _refuse_invalid_twins(resources)
    _CACHE[str(root)] = seen
    while len(_CACHE) > _CACHE_ROOTS:
        _CACHE.popitem(last=False)
    return resources
