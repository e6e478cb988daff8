"""Hostile files in the manifests folder (issue 8, item 2).

Each class of hostile file is written next to good manifests, then read through
``stash validate`` and a DagBag parse of ``dags/`` (each in a child process whose time
and peak memory are measured), and one real backup run. Every hostile file must end
as an error naming it; the good DAGs stay; nothing is executed, nothing outside the
folder is read, nothing is written; each parse stays under 10 s and 500 MiB.

The last tests are about DAGs Airflow refuses: an import error of ``stash_errors.py``
naming the object. The planner refuses what it knows Airflow would refuse; they lift
one of its rules (the DAG id length) so that a refusal only Airflow makes reaches the
factory, as one the planner does not foresee would.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from stashtest import (
    PASSWORD,
    deployment_doc,
    recovery_doc,
    repository_doc,
    restic_doc,
    restic_snapshots,
    run_dag,
    run_with_peak,
    secret_doc,
    task_states,
)
from stashtest import write_manifests as write

DAGS_FOLDER = Path(__file__).resolve().parent.parent.parent / "dags"
PARSING_DAG_ID = "_AIRFLOW_PARSING_CONTEXT_DAG_ID"
NS = "demo"
GOOD_DAGS = {
    "stash-backup.demo.good.deployment.app",
    "stash-recovery.demo.restore",
    "stash-maintenance.demo.repo",
}
OUTSIDE = "read-from-outside-the-folder"  # only in files outside the manifests folder
SECRET = "hunter2-do-not-print"
MAX_SECONDS = 10.0
MAX_MIB = 500
Expected = dict[str, str]  # hostile file -> what its error must say


def good_docs(root: Path) -> list[dict[str, Any]]:
    """The good objects every hostile folder sits next to: two DAGs that must stay."""
    repo = {"local": {"mountPath": "/repo", "hostPath": {"path": str(root / "backend")}}}
    return [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        deployment_doc("app", NS, root / "data"),
        repository_doc("repo", NS, repo),
        restic_doc("good", NS, "repo", "app"),
        recovery_doc("restore", NS, "repo", root / "restored", snapshot="latest"),
    ]


def restic_text(name: str, extra: str = "") -> str:
    """A Restic in YAML with ``extra`` appended under its spec."""
    return (
        "apiVersion: stash.appscode.com/v1alpha1\nkind: Restic\n"
        f"metadata: {{name: {name}, namespace: {NS}}}\n"
        "spec:\n  targetType: Volume\n  repository: {name: repo}\n" + extra
    )


# --------------------------------------------------------------------------- classes


def links(folder: Path, outside: Path, marker: Path) -> Expected:
    out_of_folder = "is a symbolic link to outside the manifests folder; not read"
    (folder / "sub").mkdir()
    os.symlink(outside / "outside.yaml", folder / "absolute.yaml")
    os.symlink("../outside/outside.yaml", folder / "relative.yaml")
    os.symlink("../../outside/outside.yaml", folder / "sub" / "up.yaml")
    os.symlink("/dev/zero", folder / "zero.yaml")
    os.symlink("/proc/self/environ", folder / "environ.yaml")
    os.symlink(outside, folder / "linked-folder")  # not walked: no error, nothing read
    os.symlink("missing.yaml", folder / "broken.yaml")
    os.symlink("loop-b.yaml", folder / "loop-a.yaml")
    os.symlink("loop-a.yaml", folder / "loop-b.yaml")
    loop = "cannot be read: Too many levels of symbolic links"
    return {
        "absolute.yaml": out_of_folder,
        "relative.yaml": out_of_folder,
        "sub/up.yaml": out_of_folder,
        "zero.yaml": out_of_folder,
        "environ.yaml": out_of_folder,
        "broken.yaml": "is a broken symbolic link",
        "loop-a.yaml": loop,
        "loop-b.yaml": loop,
    }


def special(folder: Path, outside: Path, marker: Path) -> Expected:
    expected = {
        "fifo.yaml": "is a FIFO, not a regular file; not read",
        "socket.yaml": "is a socket, not a regular file; not read",
        "huge.yaml": "is larger than 1 MiB (the limit for .yaml files)",
        "huge.json": "is larger than 128 MiB (the limit for .json files)",
    }
    os.mkfifo(folder / "fifo.yaml")  # opened for reading, it would block the parse
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "socket.yaml"))
    sock.close()
    for name, size in (("huge.yaml", (1 << 20) + 1), ("huge.json", (128 << 20) + 1)):
        with open(folder / name, "wb") as f:  # sparse: refused by its size, never read
            f.truncate(size)
    try:
        os.mknod(folder / "device.yaml", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero
        expected["device.yaml"] = "is a character device, not a regular file; not read"
    except PermissionError:
        pass
    if os.geteuid() != 0:  # root reads a mode 000 file: the loops of links() fail instead
        (folder / "unreadable.yaml").write_text(restic_text("unreadable"))
        os.chmod(folder / "unreadable.yaml", 0)
        expected["unreadable.yaml"] = "cannot be read: Permission denied"
    return expected


LEVELS = list(zip("abcdefgh", "bcdefghi", strict=True))  # each level refers to the one above


def aliases(folder: Path, outside: Path, marker: Path) -> Expected:
    laughs = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in LEVELS
    )
    (folder / "laughs.yaml").write_text(laughs)
    spec = "  x: &x [" + ", ".join(["v"] * 200) + "]\n  y: [" + ", ".join(["*x"] * 100) + "]\n"
    (folder / "wide.yaml").write_text(restic_text("wide", spec))
    (folder / "self.yaml").write_text(restic_text("self", "  loop: &l [*l]\n"))
    merges = "a: &a {k0: 0, k1: 1, k2: 2, k3: 3, k4: 4, k5: 5, k6: 6, k7: 7, k8: 8, k9: 9}\n"
    merges += "".join(f"{b}: &{b} {{<<: [{', '.join([f'*{a}'] * 9)}]}}\n" for a, b in LEVELS)
    (folder / "merge.yaml").write_text(merges)
    too_many = "malformed YAML: aliases (*name) expand to more than 10000 values"
    return {
        "laughs.yaml": too_many,
        "wide.yaml": too_many,
        "self.yaml": "malformed YAML: an alias inside its own anchor",
        "merge.yaml": "malformed YAML: merge keys (<<) are not accepted",
    }


def values(folder: Path, outside: Path, marker: Path) -> Expected:
    files = {
        "date.yaml": ("metadata: {creationTimestamp: 2024-02-30}\n", "invalid timestamp value"),
        "hour.yaml": ("x: 2024-01-01 25:00:00\n", "invalid timestamp value"),
        "bigint.yaml": (
            restic_text("big", "  x: " + "9" * 5000 + "\n"),
            "an integer of 5000 characters (at most 64)",
        ),
        "sexagesimal.yaml": ("x: " + "1:" * 200_000 + "1\n", "an integer of 400001 characters"),
        "secret-int.yaml": (
            f"apiVersion: v1\nkind: Secret\nmetadata: {{name: s, namespace: {NS}}}\n"
            f"stringData: {{RESTIC_PASSWORD: !!int {SECRET}}}\n",
            "invalid int value",
        ),
        "bool.yaml": (f"x: !!bool {SECRET}\n", "invalid bool value"),
        "float.yaml": (f"x: !!float {SECRET}\n", "invalid float value"),
        "binary.yaml": ("x: !!binary aGk=\n", "tag !!binary is not accepted"),
        "set.yaml": ("x: !!set {a}\n", "tag !!set is not accepted"),
        "omap.yaml": ("x: !!omap [a: 1]\n", "tag !!omap is not accepted"),
        "python.yaml": (
            f"x: !!python/object/apply:os.system ['touch {marker}']\n",
            "tag !!python/object/apply:os.system is not accepted",
        ),
        "python-name.yaml": ("x: !!python/name:os.system\n", "tag !!python/name:os.system is not"),
        "custom-tag.yaml": ("x: !Ref other\n", "tag !Ref is not accepted"),
        "bigint.json": ('{"x": ' + "1" * 5000 + "}", "an integer of 5000 characters (at most 64)"),
    }
    for name, (text, _) in files.items():
        (folder / name).write_text(text)
    (folder / "nul.yaml").write_bytes(b"kind: Restic\nx: \x00\n")
    (folder / "latin1.yaml").write_bytes(b"x: caf\xe9\n")
    (folder / "utf16.yaml").write_bytes("kind: Restic\n".encode("utf-16"))
    return {
        **{name: f"malformed {name[-4:].upper()}: {want}" for name, (_, want) in files.items()},
        "nul.yaml": "malformed YAML: unacceptable character #x0000",
        "latin1.yaml": "malformed YAML: 'utf-8' codec can't decode byte 0xe9",
        "utf16.yaml": "malformed YAML: 'utf-8' codec can't decode byte 0xff",
    }


def structure(folder: Path, outside: Path, marker: Path) -> Expected:
    (folder / "dup.yaml").write_text(restic_text("dup", "  schedule: '@daily'\n  schedule: x\n"))
    (folder / "dup-top.yaml").write_text("kind: Restic\napiVersion: v1\nkind: Secret\n")
    (folder / "dup.json").write_text('{"kind": "Restic", "kind": "Secret"}')
    (folder / "deep.yaml").write_text("x: " + "[" * 100_000)
    (folder / "deep-block.yaml").write_text("".join(" " * i + "a:\n" for i in range(1100)))
    (folder / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (folder / "docs.yaml").write_text("---\n" * 20_001)
    items = ",".join(["{}"] * 250_001)
    (folder / "list.json").write_text(f'{{"apiVersion": "v1", "kind": "List", "items": [{items}]}}')
    return {
        "dup.yaml": "malformed YAML: duplicate key 'schedule' (first at line 7) at line 8",
        "dup-top.yaml": "malformed YAML: duplicate key 'kind' (first at line 1) at line 3",
        "dup.json": "malformed JSON: duplicate key 'kind'",
        "deep.yaml": "malformed YAML: while increasing flow level; exceeded maximum nesting depth",
        "deep-block.yaml": "malformed YAML: while increasing block level; exceeded maximum",
        "deep.json": "malformed JSON: nested too deep",
        "docs.yaml": "more than 20000 documents; split the file",
        "list.json": "more than 250000 objects; split the file",
    }


CLASSES: dict[str, Callable[[Path, Path, Path], Expected]] = {
    "links": links,
    "special": special,
    "aliases": aliases,
    "values": values,
    "structure": structure,
}


def hostile_world(root: Path, *classes: str) -> tuple[Path, Expected]:
    """Good manifests, hostile files of ``classes``, and a folder outside holding a
    Restic that would make a DAG (``stolen``) if anything there were read."""
    folder, outside = root / "manifests", root / "outside"
    folder.mkdir(parents=True, exist_ok=True)
    write(folder, good_docs(root), "good.yaml")
    write(outside, [restic_doc("stolen", NS, "repo", "app", description=OUTSIDE)], "outside.yaml")
    expected: Expected = {}
    for name in classes:
        expected.update(CLASSES[name](folder, outside, root / "executed"))
    return folder, expected


def listing(root: Path) -> dict[str, tuple[int, int, int]]:
    """Type, size and mtime of everything under ``root``, without opening anything
    (``tree_state`` reads files: a FIFO would block it)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(Path(dirpath, name))
            out[str(Path(dirpath, name).relative_to(root))] = (
                stat.S_IFMT(st.st_mode),
                st.st_size,
                st.st_mtime_ns,
            )
    return out


def measured(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str, float, float]:
    """Run a child; its exit code, output, wall seconds and peak RSS in MiB."""
    return run_with_peak(argv, env, cwd)


def child_env(folder: Path, state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != PARSING_DAG_ID}
    env.update(
        AIRFLOW__STASH__MANIFESTS_DIR=str(folder),
        AIRFLOW__STASH__STATE_DIR=str(state),
        AIRFLOW__STASH__RUNTIME="local",
    )
    return env


def assert_contained(root: Path, before: dict[str, Any], outputs: str) -> None:
    assert not (root / "executed").exists()
    assert listing(root) == before  # nothing written, in the folder or next to it
    assert OUTSIDE not in outputs and SECRET not in outputs


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("cls", sorted(CLASSES))
def test_stash_validate_names_each_hostile_file(tmp_path: Path, cls: str) -> None:
    folder, expected = hostile_world(tmp_path / "world", cls)
    before = listing(tmp_path / "world")
    argv = [sys.executable, "-m", "stash_plugin", "validate", str(folder)]
    code, out, err, seconds, mib = measured(argv, child_env(folder, tmp_path / "state"), tmp_path)
    assert code == 1, err
    assert "1 backup DAG(s), 1 recovery DAG(s)" in out  # the good ones, and not "stolen"
    for name, want in expected.items():
        assert f"error: file {name}: {want}" in err, (name, err[-3000:])
    assert seconds < MAX_SECONDS and mib < MAX_MIB, (seconds, mib)
    assert_contained(tmp_path / "world", before, out + err)


DAGBAG_CHILD = """
import json, sys, time
from pathlib import Path
from airflow.dag_processing.dagbag import DagBag
start = time.monotonic()
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({"seconds": time.monotonic() - start, "dags": sorted(bag.dags),
                  "errors": {Path(f).name: e for f, e in bag.import_errors.items()}}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("cls", sorted(CLASSES))
def test_dag_folder_parse_keeps_good_dags_and_names_each_file(tmp_path: Path, cls: str) -> None:
    folder, expected = hostile_world(tmp_path / "world", cls)
    before = listing(tmp_path / "world")
    argv = [sys.executable, "-c", DAGBAG_CHILD, str(DAGS_FOLDER)]
    code, out, err, _, mib = measured(argv, child_env(folder, tmp_path / "state"), tmp_path)
    assert code == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result["dags"]) == GOOD_DAGS
    assert set(result["errors"]) == {"stash_errors.py"}
    text = result["errors"]["stash_errors.py"]
    for name, want in expected.items():
        assert f"file {name}: {want}" in text, (name, text[-3000:])
    assert result["seconds"] < MAX_SECONDS and mib < MAX_MIB, (result["seconds"], mib)
    assert_contained(tmp_path / "world", before, out + err)


def test_every_class_at_once_in_one_dagbag(
    stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.delenv(PARSING_DAG_ID, raising=False)
    root = stash_env["root"]
    folder, expected = hostile_world(root, *CLASSES)
    assert folder == stash_env["manifests"]
    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert set(bag.dags) == GOOD_DAGS
    errors = {Path(f).name: text for f, text in bag.import_errors.items()}
    assert set(errors) == {"stash_errors.py"}
    for name, want in expected.items():
        assert f"file {name}: {want}" in errors["stash_errors.py"], name
    assert OUTSIDE not in errors["stash_errors.py"] and SECRET not in errors["stash_errors.py"]
    assert not (root / "executed").exists()


@pytest.mark.slow
def test_a_good_backup_runs_next_to_every_hostile_file(
    airflow_db: None, stash_env: dict[str, Path]
) -> None:
    """Tasks read the Secrets through the same loader at run time, next to the same files."""
    from stash_plugin.factory import build_dags

    root = stash_env["root"]
    (root / "data").mkdir()
    (root / "data" / "file.txt").write_text("backed up next to hostile files\n")
    folder, _ = hostile_world(root, *CLASSES)
    outside_before = listing(root / "outside")
    dags, errors = build_dags()
    assert set(dags) == GOOD_DAGS
    dagrun = run_dag(dags["stash-backup.demo.good.deployment.app"])
    assert set(task_states(dagrun).values()) == {"success"}, task_states(dagrun)
    assert len(restic_snapshots(root / "backend" / "volumes/deployment/app")) == 1
    assert not (root / "executed").exists()
    assert listing(root / "outside") == outside_before


# --------------------------------------------------------------------------- refused DAGs

LONG = "r" * 245  # its DAG id is longer than the 250 characters Airflow allows
GOOD = "stash-backup.demo.good.deployment.app"


@pytest.fixture
def refused(stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    from stash_plugin.plan import planner

    monkeypatch.setattr(planner, "MAX_DAG_ID_LENGTH", 10_000)
    monkeypatch.delenv(PARSING_DAG_ID, raising=False)
    root = stash_env["root"]
    repo = {"local": {"mountPath": "/repo", "hostPath": {"path": str(root / "repo")}}}
    docs = [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        deployment_doc("app", NS, root / "data"),
        repository_doc("repo", NS, repo),
        restic_doc("good", NS, "repo", "app"),
        restic_doc(LONG, NS, "repo", "app"),
    ]
    return write(stash_env["manifests"], docs)


def dagbag(path: Path) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(path))


def import_errors(bag: Any) -> dict[str, str]:
    return {Path(f).name: text for f, text in bag.import_errors.items()}


def test_refusal_is_an_import_error_naming_the_restic(refused: Path) -> None:
    bag = dagbag(DAGS_FOLDER)
    assert set(bag.dags) == {GOOD, "stash-maintenance.demo.repo"}
    errors = import_errors(bag)
    assert set(errors) == {"stash_errors.py"}, errors  # the shard files import cleanly
    assert (
        f"Restic {NS}/{LONG}: Airflow refused DAG stash-backup.{NS}.{LONG}"
        in errors["stash_errors.py"]
    )


def test_refusal_is_found_by_stash_errors_parsed_alone(refused: Path) -> None:
    """The DAG processor parses each file in its own process: nothing to reuse there."""
    from stash_plugin.dagindex import shard_of
    from stash_plugin.factory import REFUSALS_FILE
    from stash_plugin.settings import load_settings

    shards = load_settings().dag_shards
    shard = shard_of(f"stash-backup.{NS}.{LONG}.deployment.app", shards)
    record = refused.parent / "state" / REFUSALS_FILE.format(shard=shard, shards=shards)
    assert not record.exists()  # no shard's parse recorded its refusals yet
    bag = dagbag(DAGS_FOLDER / "stash_errors.py")
    assert bag.dags == {}  # the DAGs it built to find refusals are not exported
    assert f"Restic {NS}/{LONG}: Airflow refused DAG" in import_errors(bag)["stash_errors.py"]
    assert LONG in record.read_text()  # the next parse reuses it instead of building


def test_stash_errors_alone_exports_nothing_when_all_is_well(
    stash_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PARSING_DAG_ID, raising=False)
    root = stash_env["root"]
    repo = {"local": {"mountPath": "/repo", "hostPath": {"path": str(root / "repo")}}}
    write(
        stash_env["manifests"],
        [
            secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
            deployment_doc("app", NS, root / "data"),
            repository_doc("repo", NS, repo),
            restic_doc("good", NS, "repo", "app"),
        ],
    )
    bag = dagbag(DAGS_FOLDER / "stash_errors.py")
    assert bag.import_errors == {} and bag.dags == {}
    bag = dagbag(DAGS_FOLDER)
    assert bag.import_errors == {} and set(bag.dags) == {GOOD, "stash-maintenance.demo.repo"}
