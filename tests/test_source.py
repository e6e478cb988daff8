"""The directory source: multi-document YAML, JSON, lists, and named errors per file."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import yaml
from stashtest import (
    PASSWORD,
    deployment_doc,
    repository_doc,
    restic_doc,
    secret_doc,
    write_manifests,
)

from stash_plugin.source import load_directory

GCS = {"gcs": {"bucket": "b"}}


def test_multi_document_yaml(tmp_path: Path) -> None:
    write_manifests(
        tmp_path,
        [
            secret_doc("repo-secret", "demo", RESTIC_PASSWORD=PASSWORD),
            deployment_doc("app", "demo", tmp_path / "data"),
            repository_doc("repo", "demo", GCS),
            restic_doc("rs", "demo", "repo", "app"),
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ignored"}},
        ],
    )
    rs = load_directory(tmp_path)
    assert rs.errors == []
    assert set(rs.secrets) == {("demo", "repo-secret")}
    assert set(rs.workloads) == {("Deployment", "demo", "app")}
    assert set(rs.repositories) == {("demo", "repo")}
    assert set(rs.restics) == {("demo", "rs")}
    assert rs.origin_of("Restic", "demo", "rs") == "all.yaml#4"
    assert rs.origin_of("Secret", "demo", "repo-secret") == "all.yaml#1"


def test_json_file_and_nested_folders(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "repo.json").write_text(json.dumps(repository_doc("repo", "demo", GCS)))
    (tmp_path / "notes.txt").write_text("not a manifest: {{{")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "bad.yaml").write_text("{{{")
    rs = load_directory(tmp_path)
    assert rs.errors == []
    assert set(rs.repositories) == {("demo", "repo")}
    assert rs.origin_of("Repository", "demo", "repo") == "sub/repo.json"


def test_kind_list(tmp_path: Path) -> None:
    items = [repository_doc("repo", "demo", GCS), restic_doc("rs", "demo", "repo", "app")]
    (tmp_path / "list.yaml").write_text(
        yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items})
    )
    (tmp_path / "list.json").write_text(
        json.dumps({"apiVersion": "v1", "kind": "List", "items": [secret_doc("s", "demo", K="v")]})
    )
    rs = load_directory(tmp_path)
    assert rs.errors == []
    assert set(rs.repositories) == {("demo", "repo")}
    assert set(rs.restics) == {("demo", "rs")}
    assert set(rs.secrets) == {("demo", "s")}
    assert rs.origin_of("Restic", "demo", "rs") == "list.yaml#2"


def test_malformed_yaml_is_named_and_other_files_still_load(tmp_path: Path) -> None:
    (tmp_path / "a-broken.yaml").write_text("apiVersion: v1\nkind: [unclosed\n  metadata: {\n")
    (tmp_path / "b-broken.json").write_text('{"kind": ')
    write_manifests(tmp_path, [repository_doc("repo", "demo", GCS)], "c-good.yaml")
    rs = load_directory(tmp_path)
    assert set(rs.repositories) == {("demo", "repo")}
    text = [str(e) for e in rs.errors]
    assert len(text) == 2, text
    assert text[0].startswith("file a-broken.yaml: malformed YAML")
    assert text[1].startswith("file b-broken.json: malformed JSON")


def test_bad_document_in_a_good_file_does_not_hide_its_neighbours(tmp_path: Path) -> None:
    bad = restic_doc("bad", "demo", "repo", "app")
    bad["spec"]["typo"] = 1
    write_manifests(tmp_path, [bad, restic_doc("good", "demo", "repo", "app")])
    rs = load_directory(tmp_path)
    assert set(rs.restics) == {("demo", "good")}
    assert [str(e) for e in rs.errors] == ["Restic demo/bad: spec.typo: unknown field (all.yaml#1)"]


def test_duplicate_object_in_two_files_names_both(tmp_path: Path) -> None:
    write_manifests(tmp_path, [repository_doc("repo", "demo", GCS)], "one.yaml")
    write_manifests(tmp_path, [repository_doc("repo", "demo", {"s3": {"bucket": "x"}})], "two.yaml")
    write_manifests(tmp_path, [repository_doc("repo", "other", GCS)], "three.yaml")
    rs = load_directory(tmp_path)
    assert set(rs.repositories) == {("other", "repo")}  # neither copy is guessed at
    (err,) = rs.errors
    assert err.object_ref == "Repository demo/repo"
    assert "one.yaml" in str(err) and "two.yaml" in str(err)
    assert "defined twice" in err.message


def test_duplicate_seen_three_times_is_one_error(tmp_path: Path) -> None:
    for f in ("a.yaml", "b.yaml", "c.yaml"):
        write_manifests(tmp_path, [repository_doc("repo", "demo", GCS)], f)
    rs = load_directory(tmp_path)
    assert rs.repositories == {}
    assert len(rs.errors) == 1


def test_secret_with_string_data(tmp_path: Path) -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s", "namespace": "demo"},
        "data": {"A": base64.b64encode(b"from-data").decode()},
        "stringData": {"RESTIC_PASSWORD": PASSWORD},
    }
    write_manifests(tmp_path, [doc])
    rs = load_directory(tmp_path)
    assert rs.errors == []
    secret = rs.secrets[("demo", "s")]
    assert secret.value("RESTIC_PASSWORD") == PASSWORD
    assert secret.value("A") == "from-data"
    assert secret.value("MISSING") is None
    assert PASSWORD not in repr(secret) and PASSWORD not in repr(rs)


def test_secret_with_bad_base64_is_named_without_its_value(tmp_path: Path) -> None:
    leaked = "not*base64*" + PASSWORD
    doc = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s", "namespace": "demo"},
        "data": {"RESTIC_PASSWORD": leaked},
    }
    write_manifests(tmp_path, [doc, secret_doc("ok", "demo", K="v")])
    rs = load_directory(tmp_path)
    assert set(rs.secrets) == {("demo", "ok")}
    (err,) = rs.errors
    assert err.object_ref == "Secret demo/s"
    assert "RESTIC_PASSWORD" in str(err) and "base64" in str(err)
    assert PASSWORD not in str(err) and leaked not in repr(err)


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    rs = load_directory(tmp_path / "nope")
    (err,) = rs.errors
    assert "does not exist" in str(err) and "nope" in str(err)


def test_single_file_source(tmp_path: Path) -> None:
    folder = write_manifests(tmp_path, [repository_doc("repo", "demo", GCS)], "only.yml")
    rs = load_directory(folder / "only.yml")
    assert rs.errors == [] and set(rs.repositories) == {("demo", "repo")}
