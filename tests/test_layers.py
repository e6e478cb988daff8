"""The layers of docs/architecture.md: a module imports only from its own layer or the ones below.

Checked on the source with ``ast`` (import-linter cannot see ``operators/`` and
``sensors/``, which install under ``stash_plugin`` through a package-dir mapping).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Lowest first. A module's layer is the first entry that prefixes its dotted name.
LAYERS: list[tuple[str, ...]] = [
    ("stash_plugin.api", "stash_plugin.protocol", "stash_plugin.manifests"),
    ("stash_plugin.plan", "stash_plugin.source", "stash_plugin.demo", "stash_plugin.migrate"),
    (
        "stash_plugin.runtime",
        "stash_plugin.agent",
        "stash_plugin.credentials",
        "stash_plugin.databases",
        "stash_plugin.clusterdump",
        "stash_plugin.settings",
        "stash_plugin.sync",
        "stash_plugin.discover",
        "stash_plugin.dagindex",
    ),
    ("stash_plugin.operators", "stash_plugin.sensors"),
    (
        "stash_plugin.factory",
        "stash_plugin.cli",
        "stash_plugin.__main__",
        "stash_plugin.plugin",
        "stash_plugin.web",
    ),
]
PURE = (
    "stash_plugin.api",
    "stash_plugin.protocol",
    "stash_plugin.manifests",
    "stash_plugin.plan",
    "stash_plugin.source",
    "stash_plugin.migrate",
    "stash_plugin.agent",
    "stash_plugin.credentials",
    "stash_plugin.databases",
    "stash_plugin.clusterdump",
)
# Airflow-facing classes are thin adapters: they never read the manifests themselves
# (the runtime resolves what a step needs) and sensors run steps through the runtime's
# step runner, not through an operator.
FORBIDDEN = {
    "stash_plugin.operators": ("stash_plugin.source",),
    "stash_plugin.sensors": ("stash_plugin.source", "stash_plugin.operators"),
}
FOREIGN = ("airflow", "kubernetes")


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in (
        ("stash_plugin", "stash_plugin"),
        ("operators", "stash_plugin.operators"),
        ("sensors", "stash_plugin.sensors"),
    ):
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def _layer(module: str) -> int | None:
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def _imports(module: str, path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append(name)
            out += [f"{name}.{a.name}" for a in node.names]
    return out


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_imports_only_lower_layers(module: str) -> None:
    own = _layer(module)
    if own is None:  # the package root holds constants only
        return
    for name in _imports(module, MODULES[module]):
        if not name.startswith("stash_plugin."):
            continue
        other = _layer(name)
        assert other is None or other <= own, f"{module} imports {name} from a higher layer"
    if module.startswith(PURE):
        for name in _imports(module, MODULES[module]):
            assert name.split(".")[0] not in FOREIGN, f"{module} imports {name}"
    for owner, banned in FORBIDDEN.items():
        if module == owner or module.startswith(owner + "."):
            for name in _imports(module, MODULES[module]):
                assert not name.startswith(banned), f"{module} imports {name}"


def test_the_agent_needs_only_the_standard_library_and_the_protocol() -> None:
    """The agent image holds no Airflow: the agent may import the protocol and its
    credential files, nothing else of ours."""
    ours = [
        n
        for n in _imports("stash_plugin.agent", MODULES["stash_plugin.agent"])
        if n.startswith("stash_plugin")
    ]
    assert {n.rsplit(".", 1)[0] if n.count(".") > 1 else n for n in ours} <= {
        "stash_plugin.protocol",
        "stash_plugin.credentials",
        "stash_plugin.databases",
        "stash_plugin.clusterdump",
    }
    cluster = _imports("stash_plugin.clusterdump", MODULES["stash_plugin.clusterdump"])
    ours = [n for n in cluster if n.startswith("stash_plugin")]
    assert {n.rsplit(".", 1)[0] if n.count(".") > 1 else n for n in ours} <= {
        "stash_plugin.protocol"
    }
    credentials = _imports("stash_plugin.credentials", MODULES["stash_plugin.credentials"])
    assert not [n for n in credentials if n.startswith("stash_plugin")]


def test_every_module_has_a_layer() -> None:
    loose = [m for m in MODULES if _layer(m) is None and m != "stash_plugin"]
    assert loose == []
