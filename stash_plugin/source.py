"""The directory source: every YAML/JSON manifest under a folder.

This is how Stash runs with no cluster (the embedded default). Files are read in a
stable order; a file that cannot be parsed is named and skipped, and never hides the
objects of other files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from .api.errors import ResourceError
from .api.parse import parse_document
from .api.resourceset import ResourceSet

SUFFIXES = (".yaml", ".yml", ".json")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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


def load_directory(root: str | Path) -> ResourceSet:
    """Read every manifest under ``root`` into a ResourceSet (objects plus named errors)."""
    root = Path(root)
    resources = ResourceSet()
    if not root.exists():
        resources.errors.append(
            ResourceError("manifests", None, str(root), None, "folder does not exist")
        )
        return resources
    for path in manifest_files(root):
        rel = str(path.relative_to(root)) if path != root else path.name
        try:
            docs = [d for d in _documents(path, path.read_text()) if d is not None]
        except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            resources.errors.append(
                ResourceError(
                    "file", None, rel, None, f"malformed {path.suffix[1:].upper()}: {exc}"
                )
            )
            continue
        index = 0
        for doc in docs:
            for obj in _expand(doc):
                index += 1
                origin = f"{rel}#{index}" if len(docs) > 1 or index > 1 else rel
                parsed = parse_document(obj, origin)
                if isinstance(parsed, list):
                    resources.errors.extend(parsed)
                elif parsed is not None:
                    resources.add(parsed, origin)
    return resources
