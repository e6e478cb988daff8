"""No value from a resource becomes an option or leaves its folder.

Every field that carries a path, a storage prefix or a name gets many hostile values
(options, ``..`` in every disguise, empty and relative paths, control characters,
oversized values). Each must end as an error naming the object and the field, through
``stash validate``, a real DagBag parse and real DAG runs, while every good DAG of the
same folder stays; nothing is executed (a ``--password-command`` marker file never
appears) and nothing is read or written outside its folder, even through a symbolic
link planted inside a volume.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
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
    run_dag,
    run_with_peak,
    secret_doc,
    task_states,
    tree_state,
    write_manifests,
    xcom,
)
from test_factory import dagbag

from stash_plugin.api.errors import printable

NS = "demo"
MARKER = "pwned"
"""What a hostile ``--password-command`` would create (in the test's folder)."""


def absolute_values(marker: Path) -> list[str]:
    return [
        "-o",
        f"--password-command=touch {marker}",
        "/source/data/../../etc",
        "/x/./../..",
        "/..",
        "..",
        "",
        ".",
        "relative/path",
        "~/data",
        "/source/data\n--x",
        "/source/data\x00/etc",
        "/source/data/\t",
        "/" + "a" * 5000,
    ]


def prefix_values(marker: Path) -> list[str]:
    return [
        "../other-tenant",
        "a/../../b",
        "..",
        "/..",
        "-o",
        f"--password-command=touch {marker}",
        "x/-y",
        "",
        "/",
        ".",
        "a/\nb",
        "a" * 5000,
    ]


def name_values(marker: Path) -> list[str]:
    return [
        "..",
        "-o",
        f"--password-command=touch {marker}",
        "a/../b",
        "../../etc",
        "Upper",
        "a b",
        "a\nb",
        "x" * 300,
    ]


Doc = dict[str, Any]
Setter = Callable[[str, str], Doc]
"""(object name, hostile value) -> the document carrying the value."""


def _restic(name: str) -> Doc:
    return restic_doc(name, NS, "repo", "app")


def _volumes(doc: Doc) -> Any:
    return doc["spec"]["volumeSelector"]["targetVolumes"]


def _set(doc: Doc, path: str, value: Any) -> Doc:
    """Set a dotted path (``[n]`` for list items) in ``doc``."""
    node: Any = doc
    keys = path.replace("[", ".[").split(".")
    for key in keys[:-1]:
        node = node[int(key[1:-1])] if key.startswith("[") else node.setdefault(key, {})
    last = keys[-1]
    node[int(last[1:-1]) if last.startswith("[") else last] = value
    return doc


def _local(path: str) -> Doc:
    return {"local": {"mountPath": "/repo", "hostPath": {"path": path}}}


def _repository(name: str, backend: Doc) -> Doc:
    return repository_doc(name, NS, backend)


BACKENDS = {
    "s3": {"bucket": "b"},
    "gcs": {"bucket": "b"},
    "azure": {"container": "c"},
    "swift": {"container": "c"},
    "b2": {"bucket": "b"},
}


def _restic_dir(name: str, value: str) -> Doc:
    doc = _restic(name)
    _volumes(doc)[0]["directories"][0]["path"] = value
    return doc


def _restic_mount(name: str, value: str) -> Doc:
    doc = _restic(name)
    _volumes(doc)[0]["mountPath"] = value
    return doc


def _recovery(name: str, field: str, value: Any) -> Doc:
    doc = recovery_doc(name, NS, "repo", "/srv/restored")
    return _set(doc, field, value)


# (kind, field as errors name it, how to build an object carrying the value)
PATH_FIELDS: list[tuple[str, str, Setter]] = [
    ("Restic", "spec.volumeSelector.targetVolumes[0].directories[0].path", _restic_dir),
    ("Restic", "spec.volumeSelector.targetVolumes[0].mountPath", _restic_mount),
    ("Repository", "spec.backend.local.hostPath.path", lambda n, v: _repository(n, _local(v))),
    (
        "Repository",
        "spec.backend.local.mountPath",
        lambda n, v: _repository(
            n, {"local": {"mountPath": v, "hostPath": {"path": "/srv/backups"}}}
        ),
    ),
    (
        "Repository",
        "spec.backend.local.nfs.path",
        lambda n, v: _repository(
            n, {"local": {"mountPath": "/repo", "nfs": {"server": "nfs.example", "path": v}}}
        ),
    ),
    (
        "Recovery",
        "spec.volumeRestorer.repoDir",
        lambda n, v: recovery_doc(n, NS, "repo", "/srv/restored", repo_dir=v),
    ),
    (
        "Recovery",
        "spec.volumeRestorer.paths[0]",
        lambda n, v: _recovery(n, "spec.volumeRestorer.paths", [v]),
    ),
    (
        "Recovery",
        "spec.volumeRestorer.recoverTo[0].mountPath",
        lambda n, v: _recovery(n, "spec.volumeRestorer.recoverTo[0].mountPath", v),
    ),
    (
        "Recovery",
        "spec.volumeRestorer.recoverTo[0].hostPath.path",
        lambda n, v: recovery_doc(n, NS, "repo", v),
    ),
    (
        "Deployment",
        "spec.template.spec.volumes[0].hostPath.path",
        lambda n, v: deployment_doc(n, NS, v),
    ),
]


def _backend_prefix(kind: str) -> Setter:
    return lambda n, v: _repository(n, {kind: {**BACKENDS[kind], "prefix": v}})


PREFIX_FIELDS: list[tuple[str, str, Setter]] = [
    ("Restic", "spec.prefix", lambda n, v: _set(_restic(n), "spec.prefix", v)),
    (
        "Repository",
        "spec.backend.local.subPath",
        lambda n, v: _repository(
            n, {"local": {"mountPath": "/repo", "subPath": v, "hostPath": {"path": "/srv/b"}}}
        ),
    ),
    *[
        (
            "Repository",
            f"spec.backend.{kind}.prefix",
            _backend_prefix(kind),
        )
        for kind in BACKENDS
    ],
]

REST_URLS = [
    "http://rest.example/../other-tenant",
    "http://rest.example/a/%2e%2e/%2E%2E/b",
    "https://rest.example/a/..",
    "http://rest.example/a\n/b",
]


def _named_deployment(name: str, value: str) -> Doc:
    doc = deployment_doc("placeholder", NS, "/srv/data", labels={"app": "hostile"})
    doc["metadata"]["name"] = value
    return doc


def _namespaced_deployment(name: str, value: str) -> Doc:
    doc = deployment_doc(name, NS, "/srv/data", labels={"app": "hostile"})
    doc["metadata"]["namespace"] = value
    return doc


def hostile_docs(marker: Path) -> tuple[list[Doc], list[str]]:
    """Every hostile object, and for each the start of the error that must name it."""
    docs: list[Doc] = []
    expected: list[str] = []

    def add(kind: str, field: str, build: Setter, values: list[str], tag: str) -> None:
        for i, value in enumerate(values):
            name = f"hostile-{tag}-{i}"
            docs.append(build(name, value))
            expected.append(f"{kind} {NS}/{name}: {field}: ")

    for j, (kind, field, build) in enumerate(PATH_FIELDS):
        add(kind, field, build, absolute_values(marker), f"p{j}")
    for j, (kind, field, build) in enumerate(PREFIX_FIELDS):
        add(kind, field, build, prefix_values(marker), f"x{j}")
    add(
        "Repository",
        "spec.backend.rest.url",
        lambda n, v: _repository(n, {"rest": {"url": v}}),
        REST_URLS,
        "rest",
    )
    for i, value in enumerate(name_values(marker)):
        docs.append(_named_deployment("", value))
        # Errors are one line: a name's control characters show escaped.
        expected.append(printable(f"Deployment {NS}/{value}: metadata.name: "))
        docs.append(_namespaced_deployment(f"hostile-ns-{i}", value))
        expected.append(printable(f"Deployment {value}/hostile-ns-{i}: metadata.namespace: "))
    return docs, expected


def good_docs(root: Path) -> list[Doc]:
    return [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        deployment_doc("app", NS, root / "vol"),
        repository_doc("repo", NS, _local(str(root / "repository"))),
        restic_doc("good", NS, "repo", "app"),
        recovery_doc("restore", NS, "repo", root / "restore" / "target"),
    ]


GOOD_DAGS = {"stash-backup.demo.good.deployment.app", "stash-recovery.demo.restore"}


@pytest.fixture
def hostile_folder(stash_env: dict[str, Path]) -> tuple[Path, list[str]]:
    root = stash_env["root"]
    docs, expected = hostile_docs(root / MARKER)
    write_manifests(stash_env["manifests"], good_docs(root), "good.yaml")
    write_manifests(stash_env["manifests"], docs, "hostile.yaml")
    return stash_env["manifests"], expected


def test_every_hostile_value_is_a_named_error_of_stash_validate(
    hostile_folder: tuple[Path, list[str]], tmp_path: Path
) -> None:
    folder, expected = hostile_folder
    stash = Path(sys.executable).parent / "stash"
    env = {**os.environ, "AIRFLOW__STASH__RUNTIME": "local"}
    code, out, err, took, peak_mib = run_with_peak(
        [str(stash), "validate", str(folder)], env, tmp_path
    )
    proc_returncode = code
    assert proc_returncode == 1, err
    missing = [e for e in expected if e not in err]
    assert missing == [], missing[:5]
    assert f"1 backup DAG(s), 1 recovery DAG(s), {len(expected)} error(s)" in out
    assert not (tmp_path / MARKER).exists()
    assert took < 60, took
    assert peak_mib < 400, peak_mib  # a few hundred objects


def test_the_dag_folder_keeps_every_good_dag_and_names_each_hostile_object(
    hostile_folder: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, expected = hostile_folder
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    bag = dagbag(folder, monkeypatch)
    took = time.monotonic() - started
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert {d for d in bag.dags if not d.startswith("stash-maintenance.")} == GOOD_DAGS
    errors = {Path(f).name: text for f, text in bag.import_errors.items()}
    assert set(errors) == {"stash_errors.py"}
    missing = [e for e in expected if e not in errors["stash_errors.py"]]
    assert missing == [], missing[:5]
    assert not (tmp_path / MARKER).exists()
    assert took < 120, took
    assert growth < 300 * 1024, growth  # KiB over the process's peak so far


@pytest.mark.parametrize("value", ["/source/data/", "/source//data", "/source/./data/."])
def test_a_harmless_spelling_of_a_path_is_normalised(value: str) -> None:
    from stash_plugin.api import parse_document

    doc = restic_doc("rs", NS, "repo", "app")
    _volumes(doc)[0]["mountPath"] = value
    _volumes(doc)[0]["directories"][0]["path"] = value
    restic = parse_document(doc)
    (volume,) = restic.spec.volume_selector.target_volumes  # type: ignore[union-attr]
    assert (volume.mount_path, volume.directories[0].path) == ("/source/data", "/source/data")


@pytest.mark.parametrize(
    ("value", "normalised"), [("tenant-a", "tenant-a"), ("/tenant-a//backups/", "tenant-a/backups")]
)
def test_a_prefix_is_a_folder_under_the_root(
    value: str, normalised: str, stash_env: dict[str, Path]
) -> None:
    from stash_plugin.plan import make_plans
    from stash_plugin.source import load_directory

    root = stash_env["root"]
    docs = good_docs(root)[:3]
    docs[2]["spec"]["backend"]["local"]["subPath"] = value
    docs.append(_set(_restic("rs"), "spec.prefix", value))
    plans = make_plans(load_directory(write_manifests(stash_env["manifests"], docs)), "local")
    assert plans.errors == []
    (plan,) = plans.backups.values()
    assert plan.target.repo_dir == f"/{normalised}/deployment/app"
    url = dict(plan.backup.env)["RESTIC_REPOSITORY"]
    assert url == f"{root}/repository/{normalised}/{normalised}/deployment/app"


def test_a_folder_that_climbs_never_reaches_a_repository_url() -> None:
    """The second guard: even a value that skipped the models cannot climb out."""
    from stash_plugin.api.backend import Backend
    from stash_plugin.plan.model import PlanError
    from stash_plugin.plan.restic import repository_url

    backend = Backend.model_validate({"s3": {"bucket": "b", "prefix": "tenant-a"}})
    with pytest.raises(PlanError, match="climbs out"):
        repository_url(backend, "/volumes/../../tenant-b")


# --------------------------------------------------------------------------- DAG runs


def _restic_json(repo: Path, *args: str) -> Any:
    import json

    env = {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": PASSWORD}
    done = subprocess.run(
        ["restic", *args, "--json"], env=env, capture_output=True, text=True, check=True
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _world(root: Path) -> dict[str, Path]:
    """A volume holding option-like names and a link to a folder beside it."""
    vol = root / "vol"
    (vol / "-o").mkdir(parents=True)
    (vol / "-o" / "f.txt").write_text("dash\n")
    (vol / f"--password-command=touch {MARKER}").mkdir()
    (vol / "sub" / "inner").mkdir(parents=True)
    (vol / "sub" / "inner" / "f.txt").write_text("inner\n")
    outside = root / "outside"
    outside.mkdir()
    (outside / "sentinel.txt").write_text("must never be read\n")
    (root / "beside.txt").write_text("next to the volume\n")
    os.symlink(outside, vol / "escape")
    return {"vol": vol, "outside": outside}


def _run(dag_id: str) -> Any:
    from stash_plugin.factory import build_dags
    from stash_plugin.settings import load_settings

    dags, _ = build_dags(load_settings())
    assert GOOD_DAGS <= set(dags)
    started = time.monotonic()
    run = run_dag(dags[dag_id])
    assert time.monotonic() - started < 120
    return run


@pytest.mark.slow
def test_real_runs_read_and_write_only_inside_their_folders(
    stash_env: dict[str, Path], airflow_db: None
) -> None:
    root, manifests = stash_env["root"], stash_env["manifests"]
    world = _world(root)
    linked_restic = restic_doc("linked", NS, "repo", "linked")
    _volumes(linked_restic)[0]["directories"][0]["path"] = "/source/data/escape/sentinel.txt"
    restore2 = root / "restore2" / "target"
    restore2.mkdir(parents=True)
    outside2 = root / "outside2"
    outside2.mkdir()
    os.symlink(outside2, restore2 / "sub")
    linked_recovery = recovery_doc(
        "linked", NS, "repo", restore2, paths=["/source/data/sub/inner"], overwrite=True
    )
    docs, _ = hostile_docs(root / MARKER)
    write_manifests(manifests, docs, "hostile.yaml")
    write_manifests(
        manifests,
        [
            *good_docs(root),
            deployment_doc("linked", NS, world["vol"]),
            linked_restic,
            linked_recovery,
        ],
        "good.yaml",
    )
    repository = root / "repository"

    # A backup of the volume stores the link as a link: nothing beside the volume.
    good = _run("stash-backup.demo.good.deployment.app")
    assert task_states(good)["update_status"] == "success"
    # (the newest snapshot of the folder may be Stash's Repository record: host "app")
    listed = _restic_json(repository / "volumes/deployment/app", "ls", "--host=app", "latest")
    paths = {n["path"] for n in listed if "path" in n}
    vol = str(world["vol"])
    assert {f"{vol}/-o/f.txt", f"{vol}/--password-command=touch {MARKER}"} <= paths
    assert f"{vol}/escape" in paths
    assert not any("sentinel" in p or "beside" in p for p in paths), paths

    # A folder reached through a link in the volume is refused before restic runs.
    linked = _run("stash-backup.demo.linked.deployment.linked")
    assert task_states(linked)["backup"] == "failed"
    error = xcom(linked, "backup", "stash_error")
    assert "leads outside its volume" in error and "symbolic link" in error
    assert not (repository / "volumes/deployment/linked").exists()

    # A restore writes its target and nothing beside it.
    restored = _run("stash-recovery.demo.restore")
    assert task_states(restored)["restore"] == "success"
    assert tree_state(root / "restore" / "target") == tree_state(world["vol"])
    assert os.listdir(root / "restore") == ["target"]

    # A restore through a link planted in the target is refused and writes nothing.
    refused = _run("stash-recovery.demo.linked")
    assert task_states(refused)["restore"] == "failed"
    assert "leads outside the restore target" in xcom(refused, "restore", "stash_error")
    assert list(outside2.iterdir()) == []
    assert os.listdir(root / "restore2") == ["target"]

    # Nothing executed, nothing created outside the folders the objects name.
    assert not (root / MARKER).exists() and not Path(MARKER).exists()
    assert sorted(os.listdir(root)) == sorted(
        [
            "beside.txt",
            "manifests",
            "outside",
            "outside2",
            "repository",
            "restore",
            "restore2",
            "state",
            "vol",
        ]
    )
    assert sorted(os.listdir(repository)) == ["volumes"]
    assert sorted(os.listdir(world["outside"])) == ["sentinel.txt"]
