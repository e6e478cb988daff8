"""The directory source: multi-document YAML, JSON, lists, and named errors per file."""

from __future__ import annotations

import base64
import json
import os
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


def test_a_sync_snapshot_of_ten_thousand_targets_loads(tmp_path: Path) -> None:
    """``stash sync`` writes the whole cluster into one JSON file: 10,000 workloads with
    their 10,000 Restics are over the 20,000 objects a YAML file may hold."""
    from stash_plugin.sync import write_snapshot

    docs = [secret_doc("repo-secret", "demo", RESTIC_PASSWORD=PASSWORD)]
    docs.append(repository_doc("repo", "demo", GCS))
    for i in range(10_000):
        docs.append(deployment_doc(f"app{i}", "demo", tmp_path / "data"))
        docs.append(restic_doc(f"rs{i}", "demo", "repo", f"app{i}"))
    snapshot = tmp_path / "cluster.json"
    write_snapshot([json.dumps(d, separators=(",", ":")) for d in docs], snapshot)
    rs = load_directory(snapshot)
    assert rs.errors == []
    assert len(rs.restics) == 10_000 and len(rs.workloads) == 10_000


# --------------------------------------------------------------------------- hostile input
# Whole hostile folders (every class, through validate, DagBag and a run) are in
# tests/hostile/test_files.py; these pin the loader's finer points.


def test_aliases_of_pyyaml_dumps_load_but_an_alias_bomb_is_named(tmp_path: Path) -> None:
    doc = deployment_doc("app", "demo", tmp_path / "data")
    shared = doc["metadata"]["labels"]  # PyYAML writes a value shared in memory as an alias
    doc["spec"]["selector"]["matchLabels"] = doc["spec"]["template"]["metadata"]["labels"] = shared
    write_manifests(tmp_path, [doc], "good.yaml")
    assert "*id001" in (tmp_path / "good.yaml").read_text()

    def aliases(levels: str) -> str:  # each level: ten aliases of the one above
        pairs = zip(levels, levels[1:], strict=False)
        lines = "".join(f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in pairs)
        return "a: &a [" + ", ".join(["x"] * 10) + "]\n" + lines

    (tmp_path / "fine.yaml").write_text(aliases("abc"))  # 110 + 1,110 values
    (tmp_path / "bomb.yaml").write_text(aliases("abcd"))  # ... + 11,110 values
    rs = load_directory(tmp_path)
    assert set(rs.workloads) == {("Deployment", "demo", "app")}
    messages = [str(e) for e in rs.errors if "bomb.yaml" in str(e) or "fine.yaml" in str(e)]
    assert any(m.startswith("file bomb.yaml: malformed YAML: aliases") for m in messages)
    assert not any(m.startswith("file fine.yaml") for m in messages)


def test_duplicate_key_names_the_key_and_both_lines(tmp_path: Path) -> None:
    (tmp_path / "dup.yaml").write_text(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n  name: t\n"
    )
    (err,) = load_directory(tmp_path).errors
    assert str(err) == (
        "file dup.yaml: malformed YAML: duplicate key 'name' (first at line 4) at line 5, column 3"
    )


def test_a_value_that_cannot_be_built_is_named_without_the_value(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n"
        f"stringData: {{RESTIC_PASSWORD: !!float {PASSWORD}}}\n"
    )
    (err,) = load_directory(tmp_path).errors
    assert str(err).startswith("file s.yaml: malformed YAML: invalid float value")
    assert "line 4" in str(err) and PASSWORD not in str(err)


def test_links_inside_the_folder_are_followed(tmp_path: Path) -> None:
    """A ConfigMap mounted as the folder: each file links into a hidden ``..data``."""
    folder = tmp_path / "mounted"
    write_manifests(folder / "..data", [repository_doc("repo", "demo", GCS)], "repo.yaml")
    os.symlink("..data/repo.yaml", folder / "repo.yaml")
    os.symlink(folder, tmp_path / "link-to-folder")
    for root in (folder, tmp_path / "link-to-folder"):
        rs = load_directory(root)
        assert rs.errors == [] and set(rs.repositories) == {("demo", "repo")}


def test_a_fifo_as_the_source_is_named_not_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "snapshot.json")
    (err,) = load_directory(tmp_path / "snapshot.json").errors
    assert str(err) == "file snapshot.json: is a FIFO, not a regular file; not read"


def test_a_file_at_the_size_limit_is_read(tmp_path: Path) -> None:
    from stash_plugin.source import MAX_YAML_BYTES

    text = yaml.safe_dump(repository_doc("repo", "demo", GCS))
    padded = text + "#" * (MAX_YAML_BYTES - len(text) - 1) + "\n"
    (tmp_path / "repo.yaml").write_text(padded)
    assert set(load_directory(tmp_path).repositories) == {("demo", "repo")}
    (tmp_path / "repo.yaml").write_text(padded + "\n")
    (err,) = load_directory(tmp_path).errors
    assert "is larger than 1 MiB" in str(err)


def test_the_stamp_of_a_load_holds_until_the_folder_changes(tmp_path: Path) -> None:
    """What ``load_stamped`` records (with its disk cache, which holds every stamp too)
    is what ``source_unchanged`` finds again, read twice from the cache or not; then
    each kind of change is seen."""
    from stash_plugin.source import load_stamped, source_unchanged

    folder = tmp_path / "manifests"
    write_manifests(folder, [repository_doc("repo", "demo", GCS)], "repo.yaml")
    write_manifests(folder / "sub", [restic_doc("r", "demo", "repo", "app")], "r.yaml")
    write_manifests(folder / ".hidden", [deployment_doc("app", "demo", tmp_path)], "app.yaml")
    os.symlink(".hidden/app.yaml", folder / "app.yaml")
    cache = tmp_path / "state" / "cache.pickle"
    for _ in range(2):  # the second load takes every file from the cache
        resources, stamp = load_stamped(folder, cache)
        assert resources.errors == [] and source_unchanged(folder, stamp)
    changes = [
        lambda: (folder / "sub" / "more.yaml").write_text("{}\n"),
        lambda: (folder / "sub" / "more.yaml").unlink(),
        lambda: (folder / "new").mkdir(),  # an empty folder: nothing to read, not a change
        lambda: (folder / ".hidden" / "app.yaml").write_text("{}\n"),  # behind the link
        lambda: (folder / "repo.yaml").rename(folder / "sub" / "repo.yaml"),
    ]
    for i, change in enumerate(changes):
        change()
        assert source_unchanged(folder, stamp) is (i == 2), i
        stamp = load_stamped(folder, cache)[1]
        assert source_unchanged(folder, stamp)
