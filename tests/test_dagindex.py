"""The compiled DAG index and the shard files.

A task start builds its one DAG from the index without reading the other manifests,
and never from a stale index: whatever changed in the folder, the DAG it builds is the
one a full parse of the folder as it is now would build. The shard files split the
DAGs between them exactly, and the errors still show once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from stashtest import deployment_doc, restic_doc, write_manifests
from test_factory import BACKUP, DAGS_FOLDER, NS, PARSING_DAG_ID, bad_docs, good_docs

GOOD = BACKUP.format("good")
AGED = 1_600_000_000_000_000_000  # 2020: far from "just written" (not racy)


def _folder(env: dict[str, Path]) -> Path:
    """good_docs, one object per file, written long ago (as far as mtime tells)."""
    folder = env["manifests"]
    for i, doc in enumerate(good_docs(env["root"])):
        write_manifests(folder, [doc], f"{i:02d}-{doc['kind'].lower()}.yaml")
    _age(folder)
    return folder


def _age(folder: Path) -> None:
    for path in folder.rglob("*.yaml"):
        os.utime(path, ns=(AGED, AGED))


def _full_build(shard: int | None = None) -> tuple[dict[str, Any], list[Any]]:
    from stash_plugin.factory import build_dags
    from stash_plugin.settings import load_settings

    return build_dags(load_settings(), shard)


def _task_start(monkeypatch: pytest.MonkeyPatch, dag_id: str) -> tuple[dict[str, Any], list[Any]]:
    """What a worker builds before it runs a task of ``dag_id`` (a fresh process: no
    parse cache in memory)."""
    from stash_plugin import source

    source._CACHE.clear()
    monkeypatch.setenv(PARSING_DAG_ID, dag_id)
    try:
        return _full_build()
    finally:
        monkeypatch.delenv(PARSING_DAG_ID)


def _fresh_plans(folder: Path) -> Any:
    from stash_plugin.plan import make_plans
    from stash_plugin.source import load_directory

    return make_plans(load_directory(folder), "local")


def test_task_start_reads_no_manifest_when_the_index_is_fresh(
    stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from stash_plugin import source

    # Files changed in the last 2 s are "racy" and get their content checked (read, not
    # parsed); here only files changed before the index was written count as settled.
    monkeypatch.setattr(source, "RACY_NS", 0)
    _folder(stash_env)
    dags, _ = _full_build()
    assert GOOD in dags and (stash_env["state"] / "dag-index.pickle").exists()

    def no_reading(*args: Any) -> None:
        raise AssertionError("a manifest was read")

    monkeypatch.setattr(source, "read_manifest", no_reading)
    monkeypatch.setattr(source, "_parse_file", no_reading)
    dags, errors = _task_start(monkeypatch, GOOD)
    monkeypatch.undo()
    assert list(dags) == [GOOD] and errors == []  # built from the index alone
    assert dags[GOOD].get_task("backup").plan == _plan_of(stash_env, GOOD)


def _plan_of(env: dict[str, Path], dag_id: str) -> Any:
    from stash_plugin import source

    source._CACHE.clear()
    return _fresh_plans(env["manifests"]).backups.get(dag_id)


def _edit_in_place(folder: Path) -> None:
    """Another schedule, same size, mtime set back: only ctime and content differ."""
    path = folder / "03-restic.yaml"
    text = path.read_text()
    assert "@every 1m" in text
    path.write_text(text.replace("@every 1m", "@every 7m"))
    os.utime(path, ns=(AGED, AGED))


def _second_restic(folder: Path) -> None:
    """A second Restic selecting the same workload's same folder."""
    write_manifests(folder, [restic_doc("second", NS, "repo", "app")], "09-second.yaml")


def _second_restic_in_a_new_subfolder(folder: Path) -> None:
    """The same, in a sub-folder that did not exist (old times: only the listing differs)."""
    write_manifests(folder / "more", [restic_doc("second", NS, "repo", "app")], "09-second.yaml")
    _age(folder)


def _replaced_by_a_link(folder: Path) -> None:
    """The Restic's file becomes a link to an edited copy in a hidden folder (which the
    walk does not list), every time set back: only where the link points differs."""
    path = folder / "03-restic.yaml"
    hidden = folder / ".edits" / "restic.yaml"
    hidden.parent.mkdir()
    hidden.write_text(path.read_text().replace("@every 1m", "@every 7m"))
    path.unlink()
    path.symlink_to(hidden)
    for p in (hidden, path):
        os.utime(p, ns=(AGED, AGED), follow_symlinks=False)


def _repository_deleted(folder: Path) -> None:
    (folder / "02-repository.yaml").unlink()


def _new_workload_twice(folder: Path) -> None:
    """The selected Deployment defined a second time: neither may be used."""
    write_manifests(folder, [deployment_doc("app", NS, folder / "elsewhere")], "zz.yaml")
    _age(folder)


@pytest.mark.parametrize(
    "change",
    [
        _edit_in_place,
        _second_restic,
        _second_restic_in_a_new_subfolder,
        _repository_deleted,
        _new_workload_twice,
        _replaced_by_a_link,
    ],
)
def test_task_start_never_serves_a_stale_plan(
    stash_env: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[Path], None],
) -> None:
    folder = _folder(stash_env)
    before, _ = _full_build()
    assert GOOD in before
    old_plan = before[GOOD].get_task("backup").plan

    change(folder)
    dags, errors = _task_start(monkeypatch, GOOD)
    fresh = _fresh_plans(folder)
    want = fresh.backups.get(GOOD)
    if want is None:  # the change made the DAG impossible: a named error, no DAG
        assert dags == {}
        named = [str(e) for e in fresh.errors if e.kind == "Restic" and e.name == "good"]
        assert named and set(named) <= {str(e) for e in errors}
    else:
        assert dags[GOOD].get_task("backup").plan == want
        assert want != old_plan or change in (_second_restic, _second_restic_in_a_new_subfolder)
    if change in (_second_restic, _second_restic_in_a_new_subfolder):
        second = BACKUP.format("second")  # its own task start finds it, or its error
        seen, seen_errors = _task_start(monkeypatch, second)
        assert second in seen or [e for e in seen_errors if e.name == "second"]
    if change in (_edit_in_place, _replaced_by_a_link):
        assert dags[GOOD].get_task("backup").plan.schedule.value == 7 * 60


def test_an_edit_behind_an_unchanged_link_is_seen_at_task_start(
    stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link stays as it was; the file it points to is edited in place, its mtime
    set back: the link's own stat is not enough, its target's is checked."""
    folder = _folder(stash_env)
    _replaced_by_a_link(folder)
    before, _ = _full_build()
    assert before[GOOD].get_task("backup").plan.schedule.value == 7 * 60
    target = folder / ".edits" / "restic.yaml"
    target.write_text(target.read_text().replace("@every 7m", "@every 9m"))
    os.utime(target, ns=(AGED, AGED))
    dags, _ = _task_start(monkeypatch, GOOD)
    assert dags[GOOD].get_task("backup").plan.schedule.value == 9 * 60


def test_files_written_just_before_the_index_are_read_again_not_parsed(
    stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file written within RACY_NS of the scan could change again within the same
    timestamp tick, size unchanged: the task start checks its bytes (and only its)."""
    from stash_plugin import source

    monkeypatch.setattr(source, "RACY_NS", 1_000_000_000)
    folder = _folder(stash_env)
    _full_build()  # Airflow imported, the index built from files all racy (utime set ctime)
    time.sleep(1.1)  # all settled now
    racy = folder / "03-restic.yaml"
    racy.write_text(racy.read_text())  # just now: racy when the index is rebuilt
    _full_build()
    read: list[str] = []
    real_read = source.read_manifest

    def reading(path: Path, where: str | None) -> bytes:
        read.append(path.name)
        return real_read(path, where)

    monkeypatch.setattr(source, "read_manifest", reading)
    monkeypatch.setattr(source, "_parse_file", lambda *a: pytest.fail("parsed a manifest"))
    dags, errors = _task_start(monkeypatch, GOOD)
    assert read == ["03-restic.yaml"] and list(dags) == [GOOD] and errors == []


def test_second_restic_on_the_same_folder_is_seen_at_task_start(
    stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full parse's verdict on the new Restic reaches the task start too."""
    folder = _folder(stash_env)
    _full_build()
    _second_restic(folder)
    second = BACKUP.format("second")
    dags, errors = _task_start(monkeypatch, second)
    fresh = _fresh_plans(folder)
    assert set(dags) == ({second} & set(fresh.backups))
    assert [str(e) for e in fresh.errors] == [str(e) for e in errors]
    assert fresh.errors or second in fresh.backups  # one or the other: never nothing


def test_index_is_rebuilt_after_a_change_and_then_used(
    stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from stash_plugin import source

    folder = _folder(stash_env)
    _full_build()
    _edit_in_place(folder)
    _full_build()  # the DAG processor's next parse
    monkeypatch.setattr(source, "_parse_file", lambda *a: pytest.fail("parsed a manifest"))
    dags, _ = _task_start(monkeypatch, GOOD)
    monkeypatch.undo()
    assert dags[GOOD].get_task("backup").plan == _plan_of(stash_env, GOOD)


# --------------------------------------------------------------------------- shards


def _many(env: dict[str, Path], n: int = 40) -> set[str]:
    folder = _folder(env)
    for i in range(n):
        app = deployment_doc(f"app{i:02d}", NS, env["root"] / f"data{i}")
        restic = restic_doc(f"r{i:02d}", NS, "repo", f"app{i:02d}", schedule="@every 1h")
        write_manifests(folder, [app, restic], f"t-{i:02d}.yaml")
    plans = _fresh_plans(folder)
    assert not [e for e in plans.errors if e.kind == "Restic"], plans.errors
    return set(plans.dag_ids)


@pytest.mark.parametrize("shards", [1, 3, 8, 13])
def test_shards_partition_the_dags_exactly(
    stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch, shards: int
) -> None:
    everything = _many(stash_env)
    monkeypatch.setenv("AIRFLOW__STASH__DAG_SHARDS", str(shards))
    seen: list[str] = []
    for shard in range(shards + 2):  # files beyond the count build nothing
        dags, _ = _full_build(shard)
        seen += dags
    assert sorted(seen) == sorted(everything)  # none twice, none missing


def test_dagbag_of_the_folder_reports_each_error_once(
    stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    folder = _folder(stash_env)
    write_manifests(folder, bad_docs(), "bad.yaml")
    monkeypatch.delenv(PARSING_DAG_ID, raising=False)
    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    fresh = _fresh_plans(folder)
    assert set(bag.dags) == set(fresh.dag_ids)
    assert {Path(d.fileloc).name for d in bag.dags.values()} <= {
        f"stash_dags_{i:02d}.py" for i in range(8)
    }
    errors = {Path(f).name: text for f, text in bag.import_errors.items()}
    assert set(errors) == {"stash_errors.py"}
    for err in fresh.errors:
        assert errors["stash_errors.py"].count(str(err)) == 1, err


def test_more_shards_than_files_is_an_error_naming_the_missing_files(
    stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    _folder(stash_env)
    monkeypatch.setenv("AIRFLOW__STASH__DAG_SHARDS", "10")
    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    text = {Path(f).name: t for f, t in bag.import_errors.items()}["stash_errors.py"]
    assert "[stash] dag_shards" in text and "stash_dags_08.py, stash_dags_09.py" in text


def test_stash_index_builds_the_index_the_task_start_then_reads(
    stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``stash index`` (deploy pipeline, ``stash sync``) does the planning, so that no
    DAG processor or worker has to: they find the index fresh and read no manifest."""
    from stash_plugin import source
    from stash_plugin.cli import main

    monkeypatch.setattr(source, "RACY_NS", 0)
    _folder(stash_env)
    assert not (stash_env["state"] / "dag-index.pickle").exists()
    assert main(["index"]) == 0
    assert capsys.readouterr().out.startswith("DAG index built: 6 DAGs in ")
    assert main(["index"]) == 0
    assert capsys.readouterr().out.startswith("DAG index already up to date: 6 DAGs in ")

    def no_reading(*args: Any) -> None:
        raise AssertionError("a manifest was read")

    monkeypatch.setattr(source, "read_manifest", no_reading)
    monkeypatch.setattr(source, "_parse_file", no_reading)
    dags, errors = _task_start(monkeypatch, GOOD)
    monkeypatch.undo()
    assert list(dags) == [GOOD] and errors == []
    assert dags[GOOD].get_task("backup").plan == _plan_of(stash_env, GOOD)
