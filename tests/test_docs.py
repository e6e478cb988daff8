"""docs/architecture.md names files, modules and functions: each must exist, so the
walk through the code stays true as the code changes."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
_DOTTED = re.compile(r"^[a-z_]+(?:\.[A-Za-z_][A-Za-z0-9_]*)+$")
_FILE = re.compile(r"^[\w./-]+\.(?:py|md|yaml)$|^[\w-]+/(?:[\w-]+/)*$")


def _spans() -> list[str]:
    return re.findall(r"`([^`\n]+)`", DOC.read_text())


def _resolve(dotted: str) -> bool:
    parts = dotted.split(".")
    if parts[0] != "stash_plugin":
        parts = ["stash_plugin", *parts]
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_named_function_and_module_exists() -> None:
    dotted = [s for s in _spans() if _DOTTED.match(s) and not s.endswith((".py", ".md"))]
    assert len(dotted) > 30  # the walk names the code it walks through
    missing = [d for d in dotted if not _resolve(d)]
    assert missing == []


def test_every_named_file_exists() -> None:
    files = [s for s in _spans() if _FILE.match(s)]
    assert len(files) > 10
    missing = [
        f for f in files if not (ROOT / f).exists() and not (ROOT / "stash_plugin" / f).exists()
    ]
    assert missing == []


def test_the_resolver_can_fail() -> None:
    assert _resolve("plan.volume.plan_volume_backups")
    assert not _resolve("plan.volume.no_such_function")
    assert not _resolve("nowhere.module")
