"""``stash discover`` with real restic repositories: what it finds, what it refuses.

(Tests that make repositories with restic are ``slow``: each key derivation costs
about a second.) A record in the backend is tenant-written (anyone with the repository password can
write one): these tests plant bad ones the way a tenant could, with restic itself,
and check each is named and left out while the good ones still come back. ``--apply``
runs against the fake API server.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kube.harness import start_cluster
from stashtest import PASSWORD, repository_doc

from stash_plugin.cli import main as stash
from stash_plugin.discover import DiscoverError, apply_objects, discover, parse_root
from stash_plugin.protocol import REPOSITORY_RECORD_FILE, REPOSITORY_RECORD_TAG

NS = "demo"


def _restic(repo: Path, *args: str, given: str | None = None) -> str:
    env = {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": PASSWORD}
    return subprocess.run(  # noqa: S603
        ["restic", *args], env=env, input=given, capture_output=True, text=True, check=True
    ).stdout


def make_repository(repo: Path, record: Any | None, namespace: str = NS, backups: int = 1) -> None:
    """A restic repository with ``backups`` snapshots tagged as Stash tags a target of
    ``namespace``, and ``record`` (text or an object) stored as the agent stores it."""
    repo.parent.mkdir(parents=True, exist_ok=True)
    _restic(repo, "init")
    for _ in range(backups):
        tags = f"--tag=namespace={namespace},restic=r,target=deployment.app,path=/data"
        _restic(repo, "backup", "--stdin", "--host=app", tags, given="data")
    if record is not None:
        text = record if isinstance(record, str) else json.dumps(record)
        _restic(
            repo,
            "backup",
            "--stdin",
            f"--stdin-filename={REPOSITORY_RECORD_FILE}",
            f"--host={REPOSITORY_RECORD_TAG}",
            f"--tag={REPOSITORY_RECORD_TAG}",
            given=text,
        )


def local_repo(backend: Path, name: str = "repo", namespace: str = NS) -> dict[str, Any]:
    return repository_doc(
        name, namespace, {"local": {"mountPath": "/repo", "hostPath": {"path": str(backend)}}}
    )


@pytest.fixture
def backend(tmp_path: Path) -> Path:
    path = tmp_path / "backend"
    path.mkdir()
    return path


def env() -> dict[str, str]:
    return {"RESTIC_PASSWORD": PASSWORD, "PATH": os.environ["PATH"]}


@pytest.mark.slow
def test_a_good_record_comes_back_sanitised(backend: Path) -> None:
    doc = local_repo(backend)
    doc["metadata"] |= {"labels": {"team": "a"}, "annotations": {"x": "y"}, "uid": "1"}
    doc["status"] = {"backupRepos": []}
    make_repository(backend / "volumes" / "deployment" / "app", doc, backups=2)
    found = discover(str(backend), env())
    assert not found.failed
    (only,) = found.found
    assert only.targets == {"namespace=demo,restic=r,target=deployment.app": 2}
    assert found.objects == {
        (NS, "repo"): {
            "apiVersion": doc["apiVersion"],
            "kind": "Repository",
            "metadata": {"name": "repo", "namespace": NS, "labels": {"team": "a"}},
            "spec": doc["spec"],
        }
    }


@pytest.mark.slow
def test_hostile_records_are_named_and_left_out(backend: Path) -> None:
    good = local_repo(backend, "good")
    elsewhere = local_repo(backend.parent / "other-tenant", "planted")
    other_ns = local_repo(backend, "theirs", namespace="victim")
    bad_field = local_repo(backend, "typo")
    bad_field["spec"]["backend"]["bogus"] = True
    base = backend / "volumes" / "deployment"
    make_repository(base / "good", good)
    make_repository(base / "broken", "{not json")
    make_repository(base / "typo", bad_field)
    make_repository(base / "elsewhere", elsewhere)
    make_repository(base / "stranger", other_ns)  # backups of demo, record of victim
    make_repository(base / "huge", "x" * 100_000)
    make_repository(base / "old", None)  # Stash 0.8 or before records: a note only

    found = discover(str(backend), env())
    assert found.failed
    assert list(found.objects) == [(NS, "good")]
    problems = {Path(f.url).name: " ".join(f.problems) for f in found.found}
    assert "broken" in problems["broken"] and "not JSON" in problems["broken"]
    assert "spec.backend.bogus" in problems["typo"] and "unknown field" in problems["typo"]
    assert "Repository demo/planted" in problems["elsewhere"]
    assert "spec.backend.local" in problems["elsewhere"]
    assert "Repository victim/theirs" in problems["stranger"]
    assert "namespace demo" in problems["stranger"]
    assert "larger than 64 KiB" in problems["huge"]
    assert "holds no Repository record" in problems["old"]
    assert problems["good"] == ""


@pytest.mark.slow
def test_one_repository_recorded_two_ways_is_a_conflict(backend: Path) -> None:
    base = backend / "volumes" / "deployment"
    first = local_repo(backend)
    second = local_repo(backend)
    second["spec"]["allowedNamespaces"] = ["other"]
    make_repository(base / "a", first)
    make_repository(base / "b", second)
    found = discover(str(backend), env())
    assert found.objects == {}
    assert found.failed and "recorded differently" in found.conflicts[0]


@pytest.mark.slow
def test_wrong_password_is_reported_without_the_password(
    backend: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_repository(backend / "volumes" / "deployment" / "app", local_repo(backend))
    monkeypatch.setenv("RESTIC_PASSWORD", "not-" + PASSWORD)
    assert stash(["discover", str(backend)]) == 1
    out = capsys.readouterr()
    assert "wrong password" in out.err
    assert PASSWORD not in out.out + out.err


@pytest.mark.slow
def test_secret_from_a_manifest_and_files_in_out(
    backend: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_repository(backend / "volumes" / "deployment" / "app", local_repo(backend))
    monkeypatch.delenv("RESTIC_PASSWORD", raising=False)
    secret = tmp_path / "secret.yaml"
    secret.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "repo-secret", "namespace": NS},
                "stringData": {"RESTIC_PASSWORD": PASSWORD},
            }
        )
    )
    out = tmp_path / "out"
    assert stash(["discover", str(backend), f"--secret={secret}", f"--out={out}"]) == 0
    assert [p.name for p in out.iterdir()] == ["repository.demo.repo.yaml"]
    printed = capsys.readouterr()
    assert "records Repository demo/repo (Secret demo/repo-secret" in printed.err
    assert PASSWORD not in printed.out + printed.err


def test_parse_root() -> None:
    assert parse_root("s3:http://127.0.0.1:9000/bucket/p/q").endpoint == "http://127.0.0.1:9000"
    assert parse_root("s3:s3.amazonaws.com/bucket").path == "bucket"
    assert parse_root("gs:bucket:/prefix").kind == "single"
    with pytest.raises(DiscoverError):
        parse_root("/srv/../etc")


def test_apply_creates_only_in_named_namespaces_and_never_replaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stash_plugin.api.parse import parse_document
    from stash_plugin.plan.records import repository_manifest
    from stash_plugin.runtime.kube import hook

    cluster = start_cluster(tmp_path, monkeypatch, namespace=NS)
    try:
        backend = tmp_path / "b"
        mine = repository_manifest(parse_document(local_repo(backend, "mine")))  # type: ignore[arg-type]
        kept = repository_manifest(parse_document(local_repo(backend, "kept")))  # type: ignore[arg-type]
        theirs = repository_manifest(parse_document(local_repo(backend, "x", "other")))  # type: ignore[arg-type]
        existing = local_repo(tmp_path / "elsewhere", "kept")
        cluster.apply(existing)
        objects = {(NS, "mine"): mine, (NS, "kept"): kept, ("other", "x"): theirs}
        api = hook()
        lines, ok = apply_objects(objects, {NS}, api.custom_object_client, api.core_v1_client)
        assert not ok  # one object exists with another spec
        text = "\n".join(lines)
        assert "Repository demo/mine: created; its Secret demo/repo-secret does not exist" in text
        assert "Repository demo/kept: exists, with another spec: left as it is" in text
        assert "Repository other/x: skipped (namespace other was not given" in text
        assert cluster.get("Repository", "mine", NS)["spec"] == mine["spec"]
        assert cluster.get("Repository", "kept", NS)["spec"] == existing["spec"]
    finally:
        cluster.stop()
