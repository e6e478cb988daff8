"""Every Stash 0.8 manifest of ``tests/fixtures/stash-0.8`` is either converted and
planned (Restic, Recovery) or not ours (workloads, Secrets, monitoring objects), and
``stash migrate`` writes new-shape objects that the CRDs accept and that a second
migration leaves as they are."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from api.test_crds import schema_errors

from stash_plugin.api.parse import LegacyParsed, parse_document
from stash_plugin.cli import main
from stash_plugin.plan import make_plans
from stash_plugin.source import load_directory

COMPAT = Path(__file__).resolve().parents[1] / "fixtures" / "stash-0.8"
SECRET, WORKLOAD, NODE, IGNORED = "Secret read", "workload read", "Node read", "not ours"

# Each file, and what each of its documents becomes (in order).
OUTCOMES: dict[str, list[str]] = {
    "backends/azure.yaml": [SECRET, "planned", WORKLOAD],
    "backends/b2.yaml": [SECRET, "planned", WORKLOAD],
    "backends/gcs.yaml": [SECRET, "planned", WORKLOAD],
    "backends/local-hostpath.yaml": [SECRET, "planned", WORKLOAD],
    "backends/local-nfs.yaml": [SECRET, "planned", WORKLOAD],
    "backends/minio.yaml": [SECRET, "planned", WORKLOAD],
    "backends/rest.yaml": [SECRET, "planned", WORKLOAD],
    "backends/s3.yaml": [SECRET, "planned", WORKLOAD],
    "backends/swift.yaml": [SECRET, "planned", WORKLOAD],
    "backup/deployment.yaml": [WORKLOAD],
    "backup/restic-offline.yaml": ["planned", WORKLOAD],
    "backup/restic.yaml": ["planned"],
    "monitoring/builtin/prom-config.yaml": [IGNORED],
    "monitoring/builtin/prom-deployment.yaml": [WORKLOAD],
    "monitoring/builtin/prom-rbac.yaml": [IGNORED, IGNORED, IGNORED],
    "monitoring/coreos/prometheus-service.yaml": [IGNORED],
    "monitoring/coreos/prometheus.yaml": [IGNORED],
    "monitoring/profiler.yaml": [IGNORED, IGNORED],
    "platforms/gke/deployment.yaml": [WORKLOAD],
    "platforms/gke/pvc.yaml": [IGNORED],
    "platforms/gke/recovery-gcePD.yaml": ["planned"],
    "platforms/gke/restic.yaml": ["planned"],
    "recovery/pvc.yaml": [IGNORED],
    "recovery/recovery-daemonset.yaml": ["planned"],
    "recovery/recovery-snapshot.yaml": ["planned"],
    "recovery/recovery-statefulset.yaml": ["planned"],
    "recovery/recovery.yaml": ["planned"],
    "workloads/daemonset.yaml": [SECRET, "planned", WORKLOAD],
    "workloads/deployment.yaml": [SECRET, "planned", WORKLOAD],
    "workloads/nodes.yaml": [NODE, NODE],
    "workloads/rc.yaml": [SECRET, "planned", WORKLOAD],
    "workloads/replicaset.yaml": [SECRET, "planned", WORKLOAD],
    "workloads/statefulset.yaml": [SECRET, "planned", WORKLOAD],
}


def sources(tmp_path: Path) -> list[Path]:
    """The fixtures as sources: each platform's example on its own (they reuse the
    names of the main examples, as Stash 0.8's did), the rest together."""
    main_source = tmp_path / "main"
    shutil.copytree(COMPAT, main_source, ignore=shutil.ignore_patterns("platforms"))
    return [main_source, *sorted((COMPAT / "platforms").iterdir())]


def _documents(path: Path) -> list[Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return [i for d in docs for i in (d["items"] if d.get("kind") == "List" else [d])]


def outcome(doc: Any, planned: set[tuple[str, str, str]]) -> str:
    result = parse_document(doc)
    if result is None:
        return IGNORED
    if isinstance(result, LegacyParsed):
        c = result.converted
        return "planned" if (c.kind, c.namespace, c.name) in planned else "converted, not planned"
    return {"Secret": SECRET, "Node": NODE}.get(type(result).__name__, WORKLOAD)


def test_every_fixture_is_converted_and_planned_or_not_ours(tmp_path: Path) -> None:
    files = sorted(str(p.relative_to(COMPAT)) for p in COMPAT.rglob("*.yaml"))
    assert files == sorted(OUTCOMES)
    planned: set[tuple[str, str, str]] = set()
    for source in sources(tmp_path):
        resources = load_directory(source)
        plans = make_plans(resources, "kubernetes")
        assert [str(e) for e in plans.errors] == []
        planned |= {
            ("Restic", p.target.restic_namespace, p.target.restic_name)
            for p in plans.backups.values()
        }
        planned |= {("Recovery", p.namespace, p.name) for p in plans.recoveries.values()}
        # Each converted object is named once, as deprecated, with what it became.
        assert sorted(str(w).split(":")[0] for w in plans.warnings) == sorted(
            f"{k} {ns}/{n}" for k, ns, n in resources.converted
        )
    seen = {rel: [outcome(d, planned) for d in _documents(COMPAT / rel)] for rel in OUTCOMES}
    assert seen == OUTCOMES


def test_stash08_targets_keep_their_folders_hosts_and_backend(tmp_path: Path) -> None:
    """0.8's layout: BACKEND/PREFIX/deployment/NAME (ReplicaSet and ReplicationController
    too), statefulset/POD, daemonset/NAME/NODE; host NAME, POD or NODE."""
    plans = make_plans(load_directory(sources(tmp_path)[0]), "kubernetes")
    where = {
        p.target.target: (dict(p.backup.env)["RESTIC_REPOSITORY"], p.backup.argv)
        for p in plans.backups.values()
    }
    expected = {
        "deployment.stash-demo": ("/safe/data/deployment/stash-demo", "stash-demo"),
        "replicaset.rs-demo": ("/safe/data/deployment/rs-demo", "rs-demo"),
        "replicationcontroller.rc-demo": ("/safe/data/deployment/rc-demo", "rc-demo"),
        "statefulset.web-0": ("/safe/data/statefulset/web-0", "web-0"),
        "daemonset.node-agent.node-2": ("/safe/data/daemonset/node-agent/node-2", "node-2"),
        "deployment.s3-demo": ("s3:s3.amazonaws.com/stash-old/demo/deployment/s3-demo", "s3-demo"),
        "deployment.gcs-demo": ("gs:stash-old:/demo/deployment/gcs-demo", "gcs-demo"),
        "deployment.azure-demo": ("azure:stash-old:/demo/deployment/azure-demo", "azure-demo"),
        "deployment.swift-demo": ("swift:stash-old:/demo/deployment/swift-demo", "swift-demo"),
        "deployment.b2-demo": ("b2:stash-old:/demo/deployment/b2-demo", "b2-demo"),
        "deployment.rest-demo": (
            "rest:http://rest-server.storage.svc:8000/demo/deployment/rest-demo",
            "rest-demo",
        ),
    }
    for target, (url, host) in expected.items():
        assert where[target][0] == url
        assert f"--host={host}" in where[target][1]


def test_offline_restic_converts_every_field() -> None:
    doc = next(yaml.safe_load_all((COMPAT / "backup/restic-offline.yaml").read_text()))
    result = parse_document(doc)
    assert isinstance(result, LegacyParsed)
    repository, restic = result.objects
    spec = restic.spec
    assert (spec.backup_mode, spec.schedule, spec.stash08_layout) == ("Offline", "0 3 * * *", True)
    assert spec.repository.name == "offline-backup" == repository.metadata.name
    assert repository.spec.backend.storage_secret_name == "local-secret"
    volumes = spec.volume_selector.target_volumes
    assert [(v.name, v.mount_path, [d.path for d in v.directories]) for v in volumes] == [
        ("source-data", "/source/data", ["/source/data"]),
        ("source-config", "/source/config", ["/source/config"]),
    ]
    assert volumes[0].directories[0].tags == ["data", "nightly"]
    assert [p.name for p in spec.retention_policies] == ["keep-daily", "keep-last-3"]
    assert spec.runtime_settings.container.resources == {
        "requests": {"cpu": "100m", "memory": "64Mi"}
    }
    assert [s.name for s in spec.runtime_settings.pod.image_pull_secrets] == [
        "registry-credentials"
    ]


def _migrate(files: list[Path], capsys: pytest.CaptureFixture[str], *args: str) -> list[Any]:
    assert main(["migrate", *args, *map(str, files)]) == 0
    return [d for d in yaml.safe_load_all(capsys.readouterr().out) if d is not None]


def test_migrate_output_validates_and_is_stable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main_source = sources(tmp_path)[0]
    files = sorted(main_source.rglob("*.yaml"))
    first = _migrate(files, capsys)
    stash = [d for d in first if d["kind"] in ("Repository", "Restic", "Recovery")]
    assert len([d for d in stash if d["kind"] == "Repository"]) == 16
    for doc in stash:
        assert schema_errors(doc) == [], doc["metadata"]
        assert "targetType" in doc["spec"] or doc["kind"] == "Repository"
    recovery = next(d for d in stash if d["metadata"]["name"] == "pvc-recovery")
    assert recovery["spec"]["repository"] == {"name": "nfs-backup"}
    assert recovery["spec"]["volumeRestorer"]["repoDir"] == "/deployment/stash-demo"
    # The output, migrated again, is the same; and it plans as the old files did.
    again = tmp_path / "again"
    again.mkdir()
    (again / "all.yaml").write_text(yaml.safe_dump_all(first, sort_keys=False))
    assert _migrate([again / "all.yaml"], capsys) == first
    plans = make_plans(load_directory(again), "kubernetes")
    assert plans.errors == [] and plans.warnings == []
    old_plans = make_plans(load_directory(main_source), "kubernetes")
    assert sorted(plans.backups) == sorted(old_plans.backups)
    assert {k: v.backup.argv for k, v in plans.backups.items()} == {
        k: v.backup.argv for k, v in old_plans.backups.items()
    }


def test_migrate_in_place_keeps_a_backup_and_is_idempotent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "m"
    shutil.copytree(COMPAT / "workloads", folder)
    original = (folder / "deployment.yaml").read_text()
    nodes = (folder / "nodes.yaml").read_text()
    files = sorted(folder.glob("*.yaml"))
    assert main(["migrate", "--in-place", *map(str, files)]) == 0
    out = capsys.readouterr().out
    assert "deployment.yaml: Restic default/stash-demo-backup rewritten" in out
    assert (folder / "deployment.yaml.bak").read_text() == original  # nothing lost
    assert (folder / "nodes.yaml").read_text() == nodes  # nothing to convert: untouched
    assert not (folder / "nodes.yaml.bak").exists()
    kinds = [d["kind"] for d in yaml.safe_load_all((folder / "deployment.yaml").read_text())]
    assert kinds == ["Secret", "Repository", "Restic", "Deployment"]
    rewritten = {p: p.read_text() for p in files}
    assert main(["migrate", "--in-place", *map(str, files)]) == 0
    assert "nothing to migrate" in capsys.readouterr().out
    assert {p: p.read_text() for p in files} == rewritten
    assert not (folder / "deployment.yaml.bak.1").exists()


def test_migrate_writes_nothing_when_an_object_cannot_be_converted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    doc = yaml.safe_load((COMPAT / "backup/restic.yaml").read_text())
    doc["spec"]["fileGroups"][0]["path"] = "/elsewhere"
    bad.write_text(yaml.safe_dump(doc))
    before = bad.read_text()
    assert main(["migrate", "--in-place", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "Restic demo/nfs-backup: spec.fileGroups[0].path: /elsewhere is not under" in err
    assert bad.read_text() == before and not (tmp_path / "bad.yaml.bak").exists()


def test_validate_names_each_deprecated_object_and_shows_its_new_form(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "w"
    shutil.copytree(COMPAT / "workloads", folder)
    assert main(["validate", str(folder), "--runtime", "kubernetes"]) == 0
    captured = capsys.readouterr()
    assert "0 error(s), 5 deprecated object(s)" in captured.out
    assert (
        "warning: Restic default/web-backup: the Stash 0.8 shape is deprecated; read as "
        "Repository default/web-backup, Restic default/web-backup" in captured.err
    )
    assert "      stash08Layout: true" in captured.err  # the new form, indented


def test_the_dagbag_builds_stash08_dags_with_the_note_in_doc_and_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Airflow's parse: the DAGs are built (no import error), each DAG's doc says the
    object is deprecated and shows its new form, and the parse log names it."""
    from test_factory import dagbag

    folder = tmp_path / "m"
    shutil.copytree(COMPAT / "workloads", folder)
    for name in ("daemonset.yaml", "statefulset.yaml", "nodes.yaml"):  # kubernetes runtime
        (folder / name).unlink()
    monkeypatch.setenv("AIRFLOW__STASH__STATE_DIR", str(tmp_path / "state"))
    import logging

    from stash_plugin import factory

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    monkeypatch.setattr(factory.log, "disabled", False)
    factory.log.addHandler(handler)  # whatever Airflow's logging config did to the root
    try:
        bag = dagbag(folder, monkeypatch)
    finally:
        factory.log.removeHandler(handler)
    logged = "\n".join(r.getMessage() for r in records)
    assert bag.import_errors == {}
    dag = bag.dags["stash-backup.default.stash-demo-backup.deployment.stash-demo"]
    assert (
        "**Deprecated:** Restic default/stash-demo-backup: the Stash 0.8 shape is deprecated"
        in dag.doc_md
    )
    assert "stash08Layout: true" in dag.doc_md  # the manifest it shows is the new form
    assert "Stash: deprecated: Restic default/rc-demo-backup: the Stash 0.8 shape" in logged
