"""Random and mutated resources thrown at every stage: parse, load, plan, build DAGs.

Starts from valid documents (the test builders and the spec's examples), mutates them
(keys deleted, unknown keys added, types changed, random values at random paths) and
checks the contract of each stage:

- nothing raises: ``parse_document`` gives a model, a list of errors or None;
  ``load_directory`` a ResourceSet; ``make_plans`` a PlanSet; ``build_dags`` DAGs and
  errors;
- every error names its object (kind, and the name when the document had a string
  ``metadata.name``); a validation error of a Stash resource names the field;
- a resource that produced an error produces no plan and no DAG.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stashtest import (
    PASSWORD,
    deployment_doc,
    recovery_doc,
    repository_doc,
    restic_doc,
    secret_doc,
)

from stash_plugin import GROUP
from stash_plugin.api.errors import ResourceError
from stash_plugin.api.kubeobjects import WORKLOAD_KINDS
from stash_plugin.api.parse import STASH_KINDS, parse_document
from stash_plugin.api.resourceset import ResourceSet
from stash_plugin.plan import PlanSet, make_plans
from stash_plugin.source import load_directory

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NS = "demo"
# Derandomized (the same examples every run, no example database) and sized so the
# module runs in under 10 s with the normal suite; STASH_FUZZ_SCALE=10 looks harder.
SCALE = float(os.environ.get("STASH_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> Any:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        derandomize=True,
        database=None,
    )


FUZZ = fuzz(200)
FUZZ_FILES = fuzz(100)  # each example writes and reads a folder of manifests


def world(root: Path) -> list[dict[str, Any]]:
    """A valid set: one of each object that a backup and a recovery need."""
    return [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        deployment_doc("app", NS, root / "data"),
        repository_doc(
            "repo", NS, {"local": {"mountPath": "/repo", "hostPath": {"path": str(root / "b")}}}
        ),
        restic_doc("app-backup", NS, "repo", "app"),
        recovery_doc("app-restore", NS, "repo", root / "restored"),
    ]


def example_docs() -> list[Any]:
    """The seeds from examples/; an empty folder would silently weaken every property."""
    docs: list[Any] = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    if not docs:
        raise FileNotFoundError(f"no example manifests under {EXAMPLES}")
    return docs


SEEDS: list[Any] = world(Path("/fuzz")) + example_docs()

# ------------------------------------------------------------------------ strategies

NASTY_STRINGS = [
    "",
    " ",
    "-",
    "--rm",
    "a,b",
    "a b",
    "/",
    "relative/path",
    "/abs/../../etc",
    "/with\nnewline",
    "/nul\x00byte",
    "UPPER",
    "ünïcödé",
    "x" * 300,
    "a" * 240,  # a valid name that makes a DAG id over Airflow's 250 characters
    "r" * 120,  # a valid name that makes a DAG tag over Airflow's 100 characters
    "a." * 130,
    "@every",
    "@every 0s",
    "@every 1.5s",
    "@every 99999999999999999999h",
    "@every " + "9" * 400 + "h",
    "@daily",
    "@bogus",
    "*/5 * * * *",
    "99 99 99 99 99",
    "* * * * * *",
    "Volume",
    "Database",
    "Cluster",
    "Offline",
    "Instant",
    "latest",
    "stash",
    "repo",
    "app",
    "deployment.app",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NASTY_STRINGS),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.one_of(st.text(max_size=8), st.sampled_from(NASTY_STRINGS)), inner, max_size=3
        ),
    ),
    max_leaves=8,
)
keys = st.one_of(
    st.sampled_from(
        [
            "name",
            "namespace",
            "kind",
            "apiVersion",
            "spec",
            "metadata",
            "paths",
            "schedule",
            "targetType",
            "backupMode",
            "snapshot",
            "items",
            "unknownField",
            "hostPath",
            "path",
        ]
    ),
    st.text(max_size=10),
    st.integers(min_value=-3, max_value=3),
)


def _containers(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every dict and list inside ``doc`` (the root included)."""
    out: list[tuple[Any, ...]] = []
    if isinstance(doc, dict):
        out.append(path)
        for k, v in doc.items():
            out += _containers(v, (*path, k))
    elif isinstance(doc, list):
        out.append(path)
        for i, v in enumerate(doc):
            out += _containers(v, (*path, i))
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


@st.composite
def mutated(draw: st.DrawFn, seeds: list[Any] = SEEDS, max_mutations: int = 4) -> Any:
    """A seed document with a few random mutations at random places."""
    doc = copy.deepcopy(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(min_value=0, max_value=max_mutations))):
        paths = _containers(doc)
        if not paths:
            return draw(values)
        container = _get(doc, draw(st.sampled_from(paths)))
        op = draw(st.sampled_from(["delete", "add", "replace", "retype", "replace_root"]))
        if op == "replace_root":
            if draw(st.integers(0, 9)) == 0:
                return draw(values)
            continue
        if isinstance(container, dict):
            if op == "add" or not container:
                container[draw(keys)] = draw(values)
                continue
            key = draw(st.sampled_from(sorted(container, key=repr)))
            if op == "delete":
                del container[key]
            elif op == "replace":
                container[key] = draw(values)
            else:
                old = container[key]
                container[key] = draw(
                    st.sampled_from([str(old), [old], {"value": old}, None, 0, True, 1.5])
                )
        else:
            if op == "add" or not container:
                container.append(draw(values))
                continue
            index = draw(st.integers(min_value=0, max_value=len(container) - 1))
            if op == "delete":
                del container[index]
            elif op == "replace":
                container[index] = draw(values)
            else:
                container[index] = draw(st.sampled_from([str(container[index]), None, [], {}]))
    return doc


# ------------------------------------------------------------------------ checks


def _named(doc: Any) -> tuple[str, str | None] | None:
    """(kind, name) a document's errors must carry, when it has a string name."""
    if not isinstance(doc, Mapping):
        return None
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
        return None
    kind = doc.get("kind") if isinstance(doc.get("kind"), str) else "document"
    return str(kind), meta["name"]


def check_parse(doc: Any) -> Any:
    result = parse_document(doc, "fuzz.yaml#1")
    if result is None:
        return None
    if isinstance(result, list):
        assert result, "an empty error list"
        named = _named(doc)
        for err in result:
            assert isinstance(err, ResourceError)
            assert err.kind and err.message and err.origin == "fuzz.yaml#1"
            assert str(err)  # renders
            if named is not None:
                assert (err.kind, err.name) == named, str(err)
            stash = (
                isinstance(doc, Mapping)
                and isinstance(doc.get("kind"), str)
                and doc["kind"] in STASH_KINDS
                and str(doc.get("apiVersion", "")).startswith(GROUP)
            )
            if stash and named is not None:
                assert err.field, f"no field path: {err}"
        return result
    # A model (or a Secret/Workload): it must name itself as the document did.
    named = _named(doc)
    assert named is not None
    name = getattr(result, "name", None) or result.metadata.name  # type: ignore[union-attr]
    assert name == named[1]
    return result


def check_plans(resources: ResourceSet, plans: PlanSet) -> None:
    assert isinstance(plans, PlanSet)
    assert plans.errors[: len(resources.errors)] == resources.errors
    failed = {(e.kind, e.namespace, e.name) for e in plans.errors}
    for err in plans.errors[len(resources.errors) :]:  # the planner's own: named, with a field
        assert isinstance(err, ResourceError) and err.message
        # A workload's errors are those of its BackupTemplate annotations.
        assert err.kind in ("Restic", "Recovery", "Repository", *WORKLOAD_KINDS), str(err)
        if err.kind in WORKLOAD_KINDS:
            assert err.field and err.field.startswith("metadata.annotations[stash."), str(err)
        assert err.name and err.origin, str(err)
    for plan in plans.backups.values():
        t = plan.target
        assert ("Restic", t.restic_namespace, t.restic_name) not in failed, plan.dag_id
        assert plan.dag_id.startswith(f"stash-backup.{t.restic_namespace}.{t.restic_name}.")
        assert (t.restic_namespace, t.restic_name) in resources.restics
    for plan in plans.recoveries.values():
        assert ("Recovery", plan.namespace, plan.name) not in failed, plan.dag_id
        assert (plan.namespace, plan.name) in resources.recoveries
    for mplan in plans.maintenance.values():  # a Repository that good targets write into
        assert (mplan.namespace, mplan.name) in resources.repositories
        targets = {t for c in mplan.checks for t in c.targets}
        assert targets and targets <= {p.target for p in plans.backups.values()}


def load(root: Path, docs: list[Any]) -> ResourceSet:
    """The documents as the directory source reads them: every one checked on the way."""
    for doc in docs:
        check_parse(doc)
    root.mkdir(parents=True, exist_ok=True)
    (root / "world.yaml").write_text(yaml.safe_dump_all(world(root), sort_keys=False))
    (root / "fuzzed.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return load_directory(root)


# ------------------------------------------------------------------------ tests


@FUZZ
@given(doc=mutated())
def test_parse_document_mutated(doc: Any) -> None:
    check_parse(doc)


@FUZZ
@given(doc=values)
def test_parse_document_random(doc: Any) -> None:
    check_parse(doc)


@FUZZ
@given(
    kind=st.sampled_from(
        [*STASH_KINDS, "Secret", "Deployment", "StatefulSet", "DaemonSet", "List", "ConfigMap"]
    ),
    api=st.sampled_from([f"{GROUP}/v1alpha1", "v1", "apps/v1", GROUP]),
    metadata=values,
    spec=values,
    extra=st.dictionaries(st.text(max_size=6), values, max_size=2),
)
def test_parse_document_random_shape(
    kind: str, api: str, metadata: Any, spec: Any, extra: dict[str, Any]
) -> None:
    doc = {**extra, "apiVersion": api, "kind": kind, "metadata": metadata, "spec": spec}
    check_parse(doc)
    check_parse({**doc, "metadata": {"name": "x", "namespace": NS, "labels": metadata}})
    check_parse({**doc, "data": spec, "stringData": metadata, "metadata": {"name": "x"}})


@FUZZ_FILES
@given(
    docs=st.lists(mutated(max_mutations=2), min_size=1, max_size=6),
    runtime=st.sampled_from(["local", "kubernetes"]),
)
def test_make_plans_on_mutated_sets(
    tmp_path_factory: pytest.TempPathFactory, docs: list[Any], runtime: str
) -> None:
    # The valid world, plus mutated copies that may clash with it (duplicates).
    resources = load(tmp_path_factory.mktemp("fuzz-plans"), docs)
    plans = make_plans(resources, runtime)  # type: ignore[arg-type]
    check_plans(resources, plans)
    for dag_id in plans.dag_ids:  # the parsing context of one task plans the same way
        one = make_plans(resources, runtime, only_dag_id=dag_id)  # type: ignore[arg-type]
        assert set(one.dag_ids) == {dag_id}


@FUZZ_FILES
@given(
    docs=st.lists(mutated(max_mutations=2), min_size=1, max_size=5),
    garbage=st.sampled_from(["", "{{{", "- a\n- b", "a: [", "\t: x", "null", "42", "---\n---"]),
)
def test_load_directory_on_mutated_files(
    tmp_path_factory: pytest.TempPathFactory, docs: list[Any], garbage: str
) -> None:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "world.yaml").write_text(yaml.safe_dump_all(world(root), sort_keys=False))
    (root / "fuzzed.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    (root / "garbage.yaml").write_text(garbage)
    (root / "garbage.json").write_text(garbage)
    resources = load_directory(root)
    assert isinstance(resources, ResourceSet)
    for err in resources.errors:
        assert isinstance(err, ResourceError) and err.kind and err.message
        assert err.origin or err.kind == "file", str(err)
    check_plans(resources, make_plans(resources, "local"))
    assert load_directory(root) == resources  # the cache gives the same answer


@fuzz(40)
@given(
    docs=st.lists(mutated(max_mutations=2), min_size=1, max_size=4),
    runtime=st.sampled_from(["local", "kubernetes"]),
)
def test_build_dags_on_mutated_sets(
    tmp_path_factory: pytest.TempPathFactory, docs: list[Any], runtime: str
) -> None:
    from stash_plugin.factory import build_dags
    from stash_plugin.settings import Settings

    root = tmp_path_factory.mktemp("fuzz-dags")
    manifests = root / "manifests"
    manifests.mkdir()
    (manifests / "world.yaml").write_text(yaml.safe_dump_all(world(root), sort_keys=False))
    (manifests / "fuzzed.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    settings_ = Settings(manifests_dir=manifests, runtime=runtime, state_dir=root / "state")  # type: ignore[arg-type]
    dags, errors = build_dags(settings_)
    plans = make_plans(load_directory(manifests), runtime)  # type: ignore[arg-type]
    failed = {(e.kind, e.namespace, e.name) for e in errors}
    assert set(dags) <= set(plans.dag_ids)
    for dag_id in dags:
        plan = plans.backups.get(dag_id)
        if plan is not None:
            t = plan.target
            assert ("Restic", t.restic_namespace, t.restic_name) not in failed
        elif dag_id in plans.recoveries:
            rplan = plans.recoveries[dag_id]
            assert ("Recovery", rplan.namespace, rplan.name) not in failed
        else:
            mplan = plans.maintenance[dag_id]
            assert ("Repository", mplan.namespace, mplan.name) not in failed
    # Every plan either became a DAG or is named in an error.
    for dag_id, bplan in plans.backups.items():
        t = bplan.target
        assert dag_id in dags or ("Restic", t.restic_namespace, t.restic_name) in failed
    for dag_id, rplan in plans.recoveries.items():
        assert dag_id in dags or ("Recovery", rplan.namespace, rplan.name) in failed


def test_found_by_fuzzing_names_and_schedules_airflow_refuses(tmp_path: Path) -> None:
    """Each of these once raised while building DAGs, which hid every other DAG."""
    from stash_plugin.factory import build_dags
    from stash_plugin.settings import Settings

    long_repo = "r" * 120
    docs = [
        *world(tmp_path),
        restic_doc("a" * 240, NS, "repo", "app"),  # DAG id over 250 characters
        restic_doc("every", NS, "repo", "app", schedule="@every 99999999999999999999h"),
        restic_doc("inf", NS, "repo", "app", schedule="@every " + "9" * 400 + "h"),
        repository_doc(long_repo, NS, {"s3": {"bucket": "b"}}),  # tag over 100 characters
        restic_doc("long-repo", NS, long_repo, "app"),
        {**secret_doc("bad-secret", NS), "data": ["not", "a", "mapping"]},
    ]
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "all.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    settings_ = Settings(manifests_dir=tmp_path / "m", runtime="kubernetes", state_dir=tmp_path)
    dags, errors = build_dags(settings_)
    assert set(dags) == {
        f"stash-backup.{NS}.app-backup.deployment.app",
        f"stash-backup.{NS}.long-repo.deployment.app",
        f"stash-recovery.{NS}.app-restore",
        f"stash-maintenance.{NS}.repo",
        f"stash-maintenance.{NS}.{long_repo}",
    }
    assert (
        f"repository:{long_repo}"[:100] in dags[f"stash-backup.{NS}.long-repo.deployment.app"].tags
    )
    named = {(e.kind, e.name): e for e in errors}
    assert named[("Restic", "a" * 240)].field == "metadata.name"
    assert "Airflow allows 250" in named[("Restic", "a" * 240)].message
    assert named[("Restic", "every")].field == "spec.schedule"
    assert named[("Restic", "inf")].field == "spec.schedule"
    assert named[("Secret", "bad-secret")].field == "data"
