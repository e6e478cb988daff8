"""``stash migrate``: Stash 0.8 manifests rewritten in the new shape.

The conversion is the one the DAG factory applies in memory (``api/legacy.py``);
here its result is written down, so that the deprecation note goes away and the
objects can be applied to a cluster. Every other document of a file is kept as it
is: migrating a migrated file changes nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .api.errors import ResourceError
from .api.parse import LegacyParsed, parse_document
from .api.resourceset import ResourceSet
from .source import _decode, read_manifest


def dump_documents(docs: Any) -> str:
    """Documents as one YAML stream, keys in the order the conversion wrote them."""
    return yaml.safe_dump_all(list(docs), sort_keys=False, default_flow_style=False)


@dataclass
class MigratedFile:
    path: Path
    documents: list[dict[str, Any]]
    converted: list[str] = field(default_factory=list)
    """The old objects this file held (``Restic ns/name``)."""


@dataclass
class Migration:
    files: list[MigratedFile]
    errors: list[ResourceError]

    @property
    def documents(self) -> list[dict[str, Any]]:
        return [d for f in self.files for d in f.documents]

    @property
    def stash_objects(self) -> list[dict[str, Any]]:
        """The new-shape Stash objects of every file (what ``--apply`` writes)."""
        from .api.parse import STASH_KINDS

        return [d for d in self.documents if isinstance(d, dict) and d.get("kind") in STASH_KINDS]


def _read(path: Path) -> list[Any]:
    data = read_manifest(path, None)
    return _decode(path, data.decode("utf-8"))


def _resolved(legacy: LegacyParsed, resources: ResourceSet) -> list[dict[str, Any]]:
    """The converted documents, a Recovery pointing at the Repository found for it."""
    c = legacy.converted
    docs = [dict(d) for d in c.documents]
    if c.kind == "Recovery":
        recovery = resources.recoveries.get((c.namespace, c.name))
        if recovery is not None:
            spec = dict(docs[0]["spec"])
            spec["repository"] = {"name": recovery.spec.repository.name}
            docs[0]["spec"] = spec
    return docs


def migrate(paths: list[Path]) -> Migration:
    """Every file's documents with the Stash 0.8 objects converted; the errors name
    what could not be (nothing is written when there are any)."""
    resources = ResourceSet()
    read: list[tuple[Path, list[tuple[Any, Any]]]] = []
    errors: list[ResourceError] = []
    for path in paths:
        try:
            docs = _read(path)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            errors.append(ResourceError("file", None, str(path), None, f"cannot read: {exc}"))
            continue
        parsed = []
        for index, doc in enumerate(docs, 1):
            origin = f"{path}#{index}" if len(docs) > 1 else str(path)
            result = parse_document(doc, origin)
            if isinstance(result, list):
                errors.extend(result)
            elif result is not None:
                resources.add(result, origin)
            parsed.append((doc, result))
        read.append((path, parsed))
    resources.resolve_stash08_recoveries()
    errors += resources.errors
    files = []
    for path, parsed in read:
        out = MigratedFile(path, [])
        for doc, result in parsed:
            if isinstance(result, LegacyParsed):
                out.documents += _resolved(result, resources)
                out.converted.append(result.converted.object_ref)
            else:
                out.documents.append(doc)
        files.append(out)
    return Migration(files, errors)


def backup_path(path: Path) -> Path:
    """``FILE.bak``, or ``FILE.bak.N`` when that exists: an earlier backup is never
    overwritten."""
    candidate = path.with_name(path.name + ".bak")
    n = 1
    while candidate.exists() or candidate.is_symlink():
        candidate = path.with_name(f"{path.name}.bak.{n}")
        n += 1
    return candidate


def rewrite(migrated: MigratedFile) -> Path | None:
    """Replace a file that held Stash 0.8 objects by its new form, after copying it
    aside; returns the copy (None: nothing to change). The new text is written to a
    temporary file and renamed over the old one, so no reader sees half a file."""
    if not migrated.converted:
        return None
    path = migrated.path
    original = path.read_bytes()
    backup = backup_path(path)
    with open(backup, "xb") as out:
        out.write(original)
    tmp = path.with_name(f".{path.name}.migrate-{os.getpid()}")
    tmp.write_text(dump_documents(migrated.documents))
    os.chmod(tmp, path.stat().st_mode & 0o7777)
    os.replace(tmp, path)
    return backup
