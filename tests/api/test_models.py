"""Resource models: the examples parse, and every error names object and field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from stashtest import recovery_doc, repository_doc, restic_doc

from stash_plugin.api import (
    BackupAgent,
    LabelSelector,
    Recovery,
    Repository,
    ResourceError,
    Restic,
    parse_document,
)
from stash_plugin.api.backend import BACKEND_KINDS
from stash_plugin.api.parse import LegacyParsed

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
FIXTURES = ROOT / "tests" / "fixtures"
COMPAT = FIXTURES / "stash-0.8"
MODEL_OF = {
    "Repository": Repository,
    "Restic": Restic,
    "Recovery": Recovery,
    "BackupAgent": BackupAgent,
}


def errors_of(doc: dict[str, Any], origin: str | None = None) -> list[ResourceError]:
    result = parse_document(doc, origin)
    assert isinstance(result, list), f"expected errors, got {result!r}"
    assert result, "an empty error list would make nothing and say nothing"
    return result


def only_error(doc: dict[str, Any], field: str) -> ResourceError:
    errors = errors_of(doc)
    matching = [e for e in errors if e.field == field]
    assert matching, f"no error for {field}: {[str(e) for e in errors]}"
    return matching[0]


# --------------------------------------------------------------------------- samples


def test_there_are_examples_of_every_kind() -> None:
    kinds = {
        doc["kind"]
        for path in EXAMPLES.glob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    }
    assert set(MODEL_OF) <= kinds


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_parses_to_its_model(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        model = parse_document(doc, path.name)
        assert model is not None and not isinstance(model, list), model
        if doc["kind"] not in MODEL_OF:  # the Secrets and the Deployment they need
            continue
        assert isinstance(model, MODEL_OF[doc["kind"]]), model
        assert model.metadata.name == doc["metadata"]["name"]
        if doc["kind"] != "BackupAgent":
            assert model.metadata.namespace == doc["metadata"].get("namespace", "default")


def _example(name: str, kind: str) -> Any:
    """The ``kind`` object of an example file, parsed."""
    docs = yaml.safe_load_all((EXAMPLES / name).read_text())
    (doc,) = [d for d in docs if d and d["kind"] == kind]
    return parse_document(doc, name)


def test_examples_keep_their_meaning() -> None:
    restic = _example("restic-volume.yaml", "Restic")
    assert isinstance(restic, Restic)
    assert restic.spec.schedule == "@every 1h"
    assert restic.spec.repository.name == "local-repo"
    vs = restic.spec.volume_selector
    assert vs is not None and [tv.name for tv in vs.target_volumes] == ["data", "config"]
    assert vs.target_volumes[0].directories[0].retention_policy_name == "keep-last-5"
    assert restic.spec.retention_policies[0].keep_last == 5
    assert restic.spec.retention_policies[0].prune is True
    assert restic.spec.retention_policies[1].keep_daily == 7

    accessors = _example("restic-database-accessors.yaml", "Restic")
    assert isinstance(accessors, Restic) and accessors.spec.database_selector is not None
    found = accessors.spec.database_selector.accessors()
    assert found[0].app_ref is not None and found[0].app_ref.name == "quick-mysql"
    assert found[1].connection_url is not None
    assert found[1].connection_url.credentials is not None
    assert found[1].connection_url.credentials.password_key == "ROOT_PASSWORD"

    repo = _example("repository-gcs.yaml", "Repository")
    assert isinstance(repo, Repository)
    assert repo.spec.backend.kind == "gcs"
    assert repo.spec.backend.storage_secret_name == "gcs-repo-secret"

    agent = _example("backupagent-mysqldump.yaml", "BackupAgent")
    assert isinstance(agent, BackupAgent) and agent.metadata.namespace is None
    assert agent.spec.commands.backup[0].startswith("mysqldump ")


def test_repository_status_of_every_target_type_parses() -> None:
    """What Stash writes back (tests/fixtures/repository-status.yaml) reads back."""
    path = FIXTURES / "repository-status.yaml"
    repo = parse_document(yaml.safe_load(path.read_text()), path.name)
    assert isinstance(repo, Repository) and repo.status is not None
    assert [r.type for r in repo.status.backup_repos] == ["Volumes", "Database", "Cluster"]
    assert repo.status.backup_repos[0].backup_count == 12
    assert repo.status.backup_repos[2].workload_kind is None


@pytest.mark.parametrize("kind", sorted(BACKEND_KINDS))
def test_an_example_shows_every_backend(kind: str) -> None:
    shown = {
        model.spec.backend.kind
        for path in EXAMPLES.glob("repository-*.yaml")
        if isinstance(model := _example(path.name, "Repository"), Repository)
    }
    assert kind in shown


def test_namespace_defaults_to_default() -> None:
    doc = restic_doc("x", "demo", "repo", "app")
    del doc["metadata"]["namespace"]
    model = parse_document(doc)
    assert isinstance(model, Restic) and model.metadata.namespace == "default"


def test_kinds_stash_does_not_read_are_ignored() -> None:
    assert (
        parse_document({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}) is None
    )


def test_document_without_kind_is_an_error() -> None:
    (err,) = errors_of({"metadata": {"name": "x"}}, "f.yaml")
    assert err.field == "kind" and "f.yaml" in str(err)
    (err,) = errors_of(["not", "a", "mapping"], "f.yaml")  # type: ignore[arg-type]
    assert "not a mapping" in str(err)


def test_missing_name_is_an_error() -> None:
    doc = restic_doc("x", "demo", "repo", "app")
    del doc["metadata"]["name"]
    (err,) = errors_of(doc)
    assert err.field == "metadata.name"


# --------------------------------------------------------------------------- errors


def test_unknown_field_names_object_and_field_path() -> None:
    doc = restic_doc("x", "demo", "repo", "app")
    doc["spec"]["volumeSelector"]["targetVolumes"][0]["nmae"] = "data"
    errors = errors_of(doc, "restic.yaml")
    assert [str(e) for e in errors] == [
        "Restic demo/x: spec.volumeSelector.targetVolumes[0].nmae: unknown field (restic.yaml)"
    ]


def test_unknown_top_level_spec_field() -> None:
    doc = repository_doc("r", "demo", {"gcs": {"bucket": "b"}})
    doc["spec"]["wipeout"] = True
    err = only_error(doc, "spec.wipeout")
    assert str(err) == "Repository demo/r: spec.wipeout: unknown field"


def test_wrong_type_names_the_field() -> None:
    doc = restic_doc("x", "demo", "repo", "app", policy={"keepLast": "five"})
    err = only_error(doc, "spec.retentionPolicies[0].keepLast")
    assert str(err).startswith("Restic demo/x: spec.retentionPolicies[0].keepLast: ")
    assert "integer" in err.message


def test_negative_keep_is_refused() -> None:
    doc = restic_doc("x", "demo", "repo", "app", policy={"keepDaily": -1})
    only_error(doc, "spec.retentionPolicies[0].keepDaily")


def test_missing_required_field() -> None:
    doc = restic_doc("x", "demo", "repo", "app")
    del doc["spec"]["repository"]
    err = only_error(doc, "spec.repository")
    assert str(err) == "Restic demo/x: spec.repository: required field is missing"


def test_missing_required_nested_field() -> None:
    doc = recovery_doc("r", "demo", "repo", Path("/tmp/out"))
    del doc["spec"]["volumeRestorer"]["repoDir"]
    err = only_error(doc, "spec.volumeRestorer.repoDir")
    assert err.kind == "Recovery" and err.namespace == "demo" and err.name == "r"


def test_scheduled_restic_needs_a_schedule() -> None:
    doc = restic_doc("x", "demo", "repo", "app")
    del doc["spec"]["schedule"]
    err = only_error(doc, "spec")
    assert "schedule" in err.message


def test_selector_must_match_target_type() -> None:
    doc = restic_doc(
        "x",
        "demo",
        "repo",
        "app",
        clusterResources={"resourceSelector": [{"group": "", "resources": ["secrets"]}]},
    )
    assert "does not take clusterResources" in only_error(doc, "spec").message
    doc = restic_doc("x", "demo", "repo", "app", targetType="Database")
    assert "needs databaseSelector" in only_error(doc, "spec").message


def test_relative_paths_are_refused() -> None:
    doc = restic_doc("x", "demo", "repo", "app")
    doc["spec"]["volumeSelector"]["targetVolumes"][0]["directories"][0]["path"] = "--delete"
    err = only_error(doc, "spec.volumeSelector.targetVolumes[0].directories[0].path")
    assert "absolute" in err.message


def test_directory_outside_its_mount_is_refused() -> None:
    doc = restic_doc("x", "demo", "repo", "app")
    doc["spec"]["volumeSelector"]["targetVolumes"][0]["directories"][0]["path"] = "/etc"
    err = only_error(doc, "spec.volumeSelector.targetVolumes[0]")
    assert "not inside mountPath" in err.message


def test_bad_names_are_refused() -> None:
    doc = restic_doc("x", "demo", "Bad_Repo", "app")
    only_error(doc, "spec.repository.name")


def test_backend_needs_exactly_one_backend() -> None:
    two = repository_doc("r", "demo", {"gcs": {"bucket": "b"}, "s3": {"bucket": "c"}})
    err = only_error(two, "spec.backend")
    assert "exactly one backend" in err.message and "s3, gcs" in err.message
    assert str(err).startswith("Repository demo/r: spec.backend: ")

    none = repository_doc("r", "demo", {})
    err = only_error(none, "spec.backend")
    assert "got none" in err.message


def test_local_backend_needs_one_volume_source() -> None:
    doc = repository_doc("r", "demo", {"local": {"mountPath": "/repo"}})
    err = only_error(doc, "spec.backend.local")
    assert "volume source" in err.message


# --------------------------------------------------------------------------- selectors


def selector(**kw: Any) -> LabelSelector:
    return LabelSelector.model_validate(kw)


def test_empty_selector_matches_nothing() -> None:
    assert not selector().matches({"app": "x"})
    assert not selector().matches({})


def test_match_labels() -> None:
    s = selector(matchLabels={"app": "web", "tier": "db"})
    assert s.matches({"app": "web", "tier": "db", "extra": "1"})
    assert not s.matches({"app": "web"})
    assert not s.matches({"app": "web", "tier": "cache"})


@pytest.mark.parametrize(
    ("operator", "values", "labels", "expected"),
    [
        ("In", ["a", "b"], {"k": "a"}, True),
        ("In", ["a", "b"], {"k": "c"}, False),
        ("In", ["a"], {}, False),
        ("NotIn", ["a"], {"k": "b"}, True),
        ("NotIn", ["a"], {"k": "a"}, False),
        ("NotIn", ["a"], {}, True),
        ("Exists", [], {"k": ""}, True),
        ("Exists", [], {"other": "x"}, False),
        ("DoesNotExist", [], {"other": "x"}, True),
        ("DoesNotExist", [], {"k": "x"}, False),
    ],
)
def test_match_expressions(
    operator: str, values: list[str], labels: dict[str, str], expected: bool
) -> None:
    s = selector(matchExpressions=[{"key": "k", "operator": operator, "values": values}])
    assert s.matches(labels) is expected


def test_labels_and_expressions_are_anded() -> None:
    s = selector(
        matchLabels={"app": "web"},
        matchExpressions=[{"key": "env", "operator": "In", "values": ["prod"]}],
    )
    assert s.matches({"app": "web", "env": "prod"})
    assert not s.matches({"app": "web", "env": "dev"})
    assert not s.matches({"app": "api", "env": "prod"})


def test_unknown_operator_is_an_error() -> None:
    doc = restic_doc("x", "demo", "repo", "app")
    doc["spec"]["volumeSelector"]["selector"] = {
        "matchExpressions": [{"key": "k", "operator": "Equals", "values": ["v"]}]
    }
    only_error(doc, "spec.volumeSelector.selector.matchExpressions[0].operator")


# --------------------------------------------------------------------------- Stash 0.8 shapes


def _compat_docs(*kinds: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(COMPAT.rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") in kinds:
                out.append((str(path.relative_to(COMPAT)), doc))
    return out


def _assert_old_shape(result: Any, doc: dict[str, Any]) -> None:
    """A Stash 0.8 object comes back converted: the new model of its kind and name
    (a Restic's Repository too), with a note that names it as deprecated."""
    kind, name = doc["kind"], doc["metadata"]["name"]
    ns = doc["metadata"].get("namespace", "default")
    assert isinstance(result, LegacyParsed), result
    models = {(type(m).__name__, m.metadata.name) for m in result.objects}
    expected = {(kind, name)} | ({("Repository", name)} if kind == "Restic" else set())
    assert models == expected
    new = next(m for m in result.objects if isinstance(m, MODEL_OF[kind]))
    assert new.spec.target_type == "Volume"
    assert str(result.warning).startswith(f"{kind} {ns}/{name}: the Stash 0.8 shape is deprecated")


@pytest.mark.parametrize("rel", ["backup/restic.yaml", "recovery/recovery.yaml"])
def test_stash_08_shapes_are_converted(rel: str) -> None:
    doc = yaml.safe_load((COMPAT / rel).read_text())
    result = parse_document(doc, rel)
    _assert_old_shape(result, doc)
    assert result.origin == rel and "stash migrate" in str(result.warning)


def test_every_stash_08_restic_and_recovery_is_recognised() -> None:
    docs = _compat_docs("Restic", "Recovery")
    assert len(docs) >= 10
    for _rel, doc in docs:
        _assert_old_shape(parse_document(copy.deepcopy(doc)), doc)


def test_an_error_is_one_line_whatever_the_names_hold() -> None:
    """A hostile name or key with a newline cannot forge a second error line."""
    from stash_plugin.api.errors import ResourceError

    error = ResourceError(
        "Deployment",
        "demo",
        "app\n- Restic demo/x: fine",
        "metadata.name",
        "bad\r\x1b[2J",
        "f.yaml",
    )
    text = str(error)
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    assert text == (
        "Deployment demo/app\\n- Restic demo/x: fine: metadata.name: bad\\r\\x1b[2J (f.yaml)"
    )
