"""The compiled DAG index and the shard files.

A task start builds its one DAG from the index without reading the other manifests,
and never from a stale index: whatever changed in the folder, the DAG it builds is the
one a full parse of the folder as it is now would build. The shard files split the
DAGs between them exactly, and the errors still show once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
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


# --------------------------------------------------------------------------- slow builds

# An index_wait far below what the last build took: the DAG file does not build the
# index itself but starts `stash index` in the background (what 10,000 targets do with
# the default wait, a third of [core] dagbag_import_timeout).
TINY_WAIT = "0.001"
PARSE_SHARD = """
import sys
from stash_plugin.factory import build_shard
dags = build_shard(sys.argv[1])
good = dags.get(sys.argv[2])
print("PARSED", len(dags), good.get_task("backup").plan.schedule.value if good else "-", flush=True)
if sys.argv[3] == "linger":
    import time
    time.sleep(600)
"""


def _build_log(env: dict[str, Path]) -> str:
    from stash_plugin.factory import BUILD_LOG

    path = env["state"] / BUILD_LOG
    return path.read_text() if path.exists() else ""


def _wait_for_fresh_index(env: dict[str, Path], timeout: float = 240.0) -> None:
    """Until no build holds the lock (the background build ended) and the index is fresh."""
    from stash_plugin import dagindex
    from stash_plugin.factory import fresh_index
    from stash_plugin.settings import load_settings

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dagindex.wait_built(env["state"], 1.0):
            if fresh_index(load_settings()) is not None:
                return
            time.sleep(0.2)
    pytest.fail(f"no fresh index after {timeout} s; build log:\n{_build_log(env)}")


def _parse_in_child(shard_file: str, linger: bool = False) -> subprocess.Popen[str]:
    """A shard file parsed in a process of its own session (as the DAG processor's
    parsing process, which it may kill with its whole group)."""
    env = {k: v for k, v in os.environ.items() if k != PARSING_DAG_ID}
    argv = [sys.executable, "-c", PARSE_SHARD, shard_file, GOOD, "linger" if linger else "exit"]
    return subprocess.Popen(  # noqa: S603 - fixed argv
        argv, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )


def _parsed(lines: Iterable[str]) -> tuple[int, str]:
    """(DAGs built, GOOD's schedule in seconds or "-") from the child's output (its
    log lines go there too)."""
    for line in lines:
        if line.startswith("PARSED "):
            _, count, schedule = line.split()
            return int(count), schedule
    raise AssertionError("the shard file's parse printed no result")


def _stale_index_and_slow_builds(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """An index of the folder (built inline: a small source starts no process), then an
    edit, and a wait too short for any build: the next parse has to start one in the
    background. Returns the DAGs as first built."""
    folder = _folder(env)
    before, _ = _full_build()
    assert _build_log(env) == ""  # a small source is built inline, no process
    _edit_in_place(folder)
    monkeypatch.setenv("AIRFLOW__STASH__INDEX_WAIT", TINY_WAIT)
    return before


def test_stale_index_and_a_slow_build_give_the_previous_dags_then_the_new_ones(
    stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parse does not wait for the build: it serves the previous index's DAGs while
    `stash index` runs in the background, a task start in that window plans the edit,
    and the next parse after the build has it."""
    before = _stale_index_and_slow_builds(stash_env, monkeypatch)
    during, _ = _full_build()
    assert set(during) == set(before)
    assert during[GOOD].get_task("backup").plan.schedule.value == 60  # as of the old index
    started, _ = _task_start(monkeypatch, GOOD)
    assert started[GOOD].get_task("backup").plan.schedule.value == 7 * 60  # never the old plan
    _wait_for_fresh_index(stash_env)
    assert _build_log(stash_env).count("DAG index built: 6 DAGs") == 1
    after, _ = _full_build()
    assert after[GOOD].get_task("backup").plan.schedule.value == 7 * 60


def test_background_build_outlives_the_killed_parsing_process(
    stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DAG processor kills a file that ran out of time (here: its process group);
    the build it started goes on and writes the index."""
    from stash_plugin.dagindex import shard_of
    from stash_plugin.factory import shard_file_name

    _stale_index_and_slow_builds(stash_env, monkeypatch)
    proc = _parse_in_child(str(DAGS_FOLDER / shard_file_name(shard_of(GOOD, 8))), linger=True)
    try:
        assert proc.stdout is not None
        _, schedule = _parsed(proc.stdout)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert schedule == "60"  # it returned the previous index's DAG, the build still running
    _wait_for_fresh_index(stash_env)
    assert "DAG index built: 6 DAGs" in _build_log(stash_env)


def test_two_shards_parsed_at_once_start_one_build(
    stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from stash_plugin.factory import shard_file_name

    _stale_index_and_slow_builds(stash_env, monkeypatch)
    procs = [_parse_in_child(str(DAGS_FOLDER / shard_file_name(i))) for i in range(2)]
    outputs = [p.communicate()[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all(_parsed(out.splitlines()) for out in outputs)
    _wait_for_fresh_index(stash_env)
    log = _build_log(stash_env)
    assert log.count(": building") == 1 and log.count("DAG index built") == 1, log
    assert "already up to date" not in log, log


def test_no_usable_index_and_a_slow_build_plan_the_shard_from_the_source(
    stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings that change plans change the key: the previous index is not used, the
    file plans its own DAGs from the manifests (exactly what the build will index) and
    the build runs in the background."""
    _many(stash_env, 12)
    before, _ = _full_build()
    monkeypatch.setenv("AIRFLOW__STASH__TASK_RETRIES", "5")
    monkeypatch.setenv("AIRFLOW__STASH__INDEX_WAIT", TINY_WAIT)
    monkeypatch.setenv("AIRFLOW__STASH__DAG_SHARDS", "3")
    seen: list[str] = []
    for shard in range(3):
        dags, _ = _full_build(shard)
        assert all(d.default_args["retries"] == 5 for d in dags.values())
        seen += dags
    assert sorted(seen) == sorted(before)  # none twice, none missing
    _wait_for_fresh_index(stash_env)
    assert _build_log(stash_env).count("DAG index built") == 1


def test_the_errors_file_builds_shards_only_within_its_budget(
    stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``stash_errors.py`` reports what Airflow refuses, which only building the DAGs
    shows; at 10,000 targets building every shard's DAGs there took as long as all the
    shard files together. Within ``index_wait`` it builds the shards that have not
    recorded their refusals yet; the others are reported once their files are parsed."""
    import logging

    from stash_plugin import factory
    from stash_plugin.factory import StashResourceErrors, build_dags, raise_resource_errors
    from stash_plugin.settings import load_settings

    logged: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = logged.append  # type: ignore[method-assign]
    monkeypatch.setattr(factory.log, "disabled", False)
    factory.log.addHandler(handler)  # whatever Airflow's logging config did to the root
    folder = _folder(stash_env)
    write_manifests(folder, bad_docs(), "bad.yaml")
    _age(folder)
    _full_build()  # the index, fresh
    records = lambda: sorted(stash_env["state"].glob("dag-refusals-*-of-8.json"))  # noqa: E731
    assert records() == []
    monkeypatch.setenv("AIRFLOW__STASH__INDEX_WAIT", TINY_WAIT)
    try:
        with pytest.raises(StashResourceErrors) as within_budget:
            raise_resource_errors()
    finally:
        factory.log.removeHandler(handler)
    assert len(records()) < 8  # not every shard built here
    text = "\n".join(r.getMessage() for r in logged)
    assert "stash_dags_07.py is reported once those files have been parsed" in text
    for shard in range(8):  # the DAG processor parses the shard files
        build_dags(load_settings(), shard)
    assert len(records()) == 8
    with pytest.raises(StashResourceErrors) as after:
        raise_resource_errors()
    assert str(within_budget.value) == str(after.value)
    for err in _fresh_plans(folder).errors:
        assert str(err) in str(after.value)


def test_an_index_built_past_the_racy_window_reads_no_manifest_at_task_start(
    stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`stash sync` writes its snapshot right before `stash index` reads it: a racy file,
    whose bytes every later check reads again (9.3 MB at 10,000 targets). A build that
    ends after the racy window has passed, the file unchanged, records plain stats."""
    from stash_plugin import dagindex, factory, source
    from stash_plugin.factory import _index_key
    from stash_plugin.settings import load_settings

    folder = _folder(stash_env)
    source.load_stamped(folder)  # imports done: the scans below follow the writes at once
    monkeypatch.setattr(source, "RACY_NS", 300_000_000)
    time.sleep(0.4)  # _folder's utime set every ctime: let them all settle first
    racy = folder / "03-restic.yaml"
    racy.write_text(racy.read_text())  # just now
    _, stamp = source.load_stamped(folder)
    assert [rel for rel, _ in stamp.racy] == ["03-restic.yaml"]
    assert source.settled(folder, stamp) == stamp  # still within the window: kept
    time.sleep(0.4)
    assert source.settled(folder, stamp) == source.SourceStamp(stamp.digest, ())
    _edit_in_place(folder)  # a change after the read: nothing is settled
    assert source.settled(folder, stamp) == stamp

    # A build that takes longer than the window (as 10,000 targets' does).
    plan = factory._plan
    monkeypatch.setattr(factory, "_plan", lambda *a: (time.sleep(0.4), plan(*a))[1])
    racy.write_text(racy.read_text())
    _full_build()
    index = dagindex.read(stash_env["state"], _index_key(load_settings()))
    assert index is not None and index.source.racy == ()
    real_read = source.read_manifest
    monkeypatch.setattr(source, "read_manifest", lambda *a: pytest.fail("read a manifest"))
    dags, errors = _task_start(monkeypatch, GOOD)
    assert list(dags) == [GOOD] and errors == []
    monkeypatch.setattr(source, "read_manifest", real_read)
    racy.write_text(racy.read_text().replace("@every 7m", "@every 9m"))
    os.utime(racy, ns=(AGED, AGED))  # and an edit after the build is still seen
    dags, _ = _task_start(monkeypatch, GOOD)
    assert dags[GOOD].get_task("backup").plan.schedule.value == 9 * 60
