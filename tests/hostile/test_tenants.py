"""Tenants stay apart: two namespaces, two Restics, or a Deployment and a ReplicaSet of
one name that share a Repository and a repoDir never see each other's snapshots
(retention, verify, a `latest` restore), no user-set value can spell the tags or hosts
that say whose a snapshot is, and a Repository of another namespace is used only where
it allows it, resolved the same way by `stash validate`, the DAG folder and a run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from stashtest import (
    PASSWORD,
    build_dag,
    deployment_doc,
    make_tree,
    recovery_doc,
    repository_doc,
    restic_doc,
    restic_snapshots,
    run_dag,
    secret_doc,
    task_states,
    tree_state,
    write_manifests,
    xcom,
)

from stash_plugin.agent import Command, _split_commands
from stash_plugin.cli import main as stash
from stash_plugin.plan import BackupPlan, PlanSet, make_plans
from stash_plugin.plan.model import Step
from stash_plugin.protocol import SEPARATOR
from stash_plugin.runtime.errors import StepFailed
from stash_plugin.runtime.local import resolve_secret_env
from stash_plugin.source import load_directory

A, B = "alpha", "beta"
REPO = "shared"
REPO_DIR = "volumes/deployment/app"
DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"


def backend(root: Path) -> dict[str, Any]:
    return {"local": {"mountPath": "/repo", "hostPath": {"path": str(root / "backend")}}}


def shared_repository(root: Path, allow: list[str] | None = None) -> list[dict[str, Any]]:
    """Repository alpha/shared (allowing ``allow``, default beta) and its Secret."""
    repo = repository_doc(REPO, A, backend(root))
    repo["spec"]["allowedNamespaces"] = [B] if allow is None else allow
    return [secret_doc("repo-secret", A, RESTIC_PASSWORD=PASSWORD), repo]


def tenant(root: Path, ns: str, *, policy: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Deployment ``ns/app`` on its own folder, backed up by Restic ``ns/app-backup`` into
    Repository alpha/shared: every tenant's target is repoDir /volumes/deployment/app."""
    restic = restic_doc("app-backup", ns, REPO, "app", policy=policy or {"keepLast": 1})
    restic["spec"]["repository"]["namespace"] = A
    return [deployment_doc("app", ns, root / ns / "data"), restic]


def cross_recovery(name: str, ns: str, into: Path, **restorer: Any) -> dict[str, Any]:
    """Recovery ``ns/name`` of repoDir /volumes/deployment/app of alpha/shared into
    ``into``; ``restorer`` adds volumeRestorer fields (``target`` is the target's name)."""
    doc = recovery_doc(name, ns, REPO, into, snapshot=restorer.pop("snapshot", None))
    doc["spec"]["repository"]["namespace"] = A
    doc["spec"]["volumeRestorer"].update(restorer)
    return doc


def plans_of(folder: Path, runtime: str = "local") -> PlanSet:
    return make_plans(load_directory(folder), runtime)  # type: ignore[arg-type]


def commands(step: Step) -> list[Command]:
    """The restic commands of a ``stash-agent run`` step, parsed by the agent itself."""
    return _split_commands(list(step.argv[step.argv.index(SEPARATOR) :]))


def flag(cmd: Command, name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in cmd.args if a.startswith(f"--{name}=")]
    return value


def selection(plan: BackupPlan) -> list[tuple[str, set[str]]]:
    """(host, tags) that retention and verify select snapshots by."""
    assert plan.retention is not None
    cmds = commands(plan.retention) + commands(plan.verify)
    return [(flag(c, "host"), set(flag(c, "tag").split(","))) for c in cmds]


def made(plan: BackupPlan) -> tuple[str, set[str]]:
    """(host, tags) of the snapshot the backup makes."""
    (cmd,) = commands(plan.backup)
    return flag(cmd, "host"), set(flag(cmd, "tag").split(","))


# --------------------------------------------------------------------------- plans


def two_namespaces(root: Path) -> list[dict[str, Any]]:
    return shared_repository(root) + tenant(root, A) + tenant(root, B)


def two_restics(root: Path) -> list[dict[str, Any]]:
    docs = [*shared_repository(root), deployment_doc("app", A, root / "data")]
    return docs + [restic_doc(n, A, REPO, "app", policy={"keepLast": 1}) for n in ("one", "two")]


def deployment_and_replicaset(root: Path) -> list[dict[str, Any]]:
    replicaset = deployment_doc("app", A, root / "rs-data")
    replicaset["kind"] = "ReplicaSet"
    restic = restic_doc("app-backup", A, REPO, "app", policy={"keepLast": 1})
    return [*shared_repository(root), deployment_doc("app", A, root / "data"), replicaset, restic]


@pytest.mark.parametrize(
    "docs", [two_namespaces, two_restics, deployment_and_replicaset], ids=lambda f: f.__name__
)
def test_targets_sharing_a_repo_dir_select_only_their_own_snapshots(
    tmp_path: Path, docs: Any
) -> None:
    plans = plans_of(write_manifests(tmp_path / "m", docs(tmp_path)))
    assert plans.errors == [], [str(e) for e in plans.errors]
    one, two = plans.backups.values()
    # The same restic repository (one folder), the same restic host...
    assert dict(one.backup.env)["RESTIC_REPOSITORY"] == dict(two.backup.env)["RESTIC_REPOSITORY"]
    assert one.target.repo_dir == two.target.repo_dir == "/volumes/deployment/app"
    assert made(one)[0] == made(two)[0] == "app"
    # ...yet what retention and verify of one select never matches the other's snapshots
    # (restic matches a snapshot that carries every tag of the selection).
    for mine, other in ((one, two), (two, one)):
        for host, tags in selection(mine):
            assert tags <= made(mine)[1] and host == made(mine)[0]
            assert not tags <= made(other)[1], (mine.dag_id, other.dag_id)


RESERVED = ["namespace=beta", "restic=app-backup", "target=deployment.app", "path=/source/data"]


@pytest.mark.parametrize("tag", RESERVED)
def test_a_user_tag_spelling_a_reserved_tag_is_refused(tmp_path: Path, tag: str) -> None:
    docs = shared_repository(tmp_path) + tenant(tmp_path, A)
    docs[-1]["spec"]["volumeSelector"]["targetVolumes"][0]["directories"][0]["tags"] = ["ok", tag]
    plans = plans_of(write_manifests(tmp_path / "m", docs))
    (err,) = plans.errors
    assert err.object_ref == "Restic alpha/app-backup"
    assert err.field == "spec.volumeSelector.targetVolumes[0].directories[0].tags[1]"
    assert f"tag {tag!r} spells a tag Stash sets itself" in err.message


def hostile_folder(root: Path) -> Path:
    """Good tenants plus one object per hostile value."""
    docs = two_namespaces(root)
    forged = restic_doc("forged-tag", A, REPO, "app", policy={"keepLast": 1})
    forged["spec"]["volumeSelector"]["targetVolumes"][0]["directories"][0]["tags"] = [
        "namespace=beta"
    ]
    comma = restic_doc("comma-path", A, REPO, "app", policy={"keepLast": 1})
    comma["spec"]["volumeSelector"]["targetVolumes"][0]["directories"][0]["path"] = (
        "/source/data/x,namespace=beta"
    )
    stranger = restic_doc("stranger", "gamma", REPO, "app")
    stranger["spec"]["repository"]["namespace"] = A
    docs += [
        forged,
        comma,
        stranger,
        deployment_doc("app,namespace=beta", A, root / "x", labels={"app": "other"}),
        cross_recovery("steal", B, root / "steal", sourceNamespace="gamma"),
        cross_recovery("outsider", "gamma", root / "outsider"),
        cross_recovery("forged-target", B, root / "f", target="deployment.app,namespace=alpha"),
    ]
    return write_manifests(root / "hostile", docs)


HOSTILE_ERRORS = [
    "Restic alpha/forged-tag: spec.volumeSelector.targetVolumes[0].directories[0].tags[0]: "
    "tag 'namespace=beta' spells a tag Stash sets itself",
    "Restic alpha/comma-path: spec.volumeSelector.targetVolumes[0].directories[0].path: "
    "paths with commas cannot be selected by restic tags",
    "Restic gamma/stranger: spec.repository.namespace: Repository alpha/shared does not allow "
    "namespace gamma (allowed: alpha, beta)",
    "Deployment alpha/app,namespace=beta: metadata.name: 'app,namespace=beta' is not a valid "
    "Kubernetes name",
    "Recovery beta/steal: spec.volumeRestorer.sourceNamespace: Repository alpha/shared does "
    "not allow namespace gamma",
    "Recovery gamma/outsider: spec.repository.namespace: Repository alpha/shared does not "
    "allow namespace gamma",
    "Recovery beta/forged-target: spec.volumeRestorer.target: 'deployment.app,namespace=alpha' "
    "is not a valid Kubernetes name",
]


def test_hostile_values_are_named_by_stash_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stash(["validate", str(hostile_folder(tmp_path))]) == 1
    out, err = capsys.readouterr()
    for expected in HOSTILE_ERRORS:
        assert expected in err, expected
    assert f"{len(HOSTILE_ERRORS)} error(s)" in out
    assert "2 backup DAG(s)" in out  # the good tenants still plan


def test_hostile_values_are_named_by_the_dag_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("AIRFLOW__STASH__MANIFESTS_DIR", str(hostile_folder(tmp_path)))
    monkeypatch.setenv("AIRFLOW__STASH__RUNTIME", "local")
    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert {d for d in bag.dags if not d.startswith("stash-maintenance.")} == {
        "stash-backup.alpha.app-backup.deployment.app",
        "stash-backup.beta.app-backup.deployment.app",
    }
    (text,) = bag.import_errors.values()
    for expected in HOSTILE_ERRORS:
        assert expected in text, expected
    assert PASSWORD not in text


# --------------------------------------------------------------------------- references


def test_the_storage_secret_is_the_repositorys_namespaces_at_validate_and_run_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_manifests(tmp_path / "m", two_namespaces(tmp_path))
    (beta,) = [p for p in plans_of(folder).backups.values() if p.target.restic_namespace == B]
    # Run time reads alpha's Secret for beta's step (the bug was: beta/repo-secret).
    secrets = load_directory(folder).secrets
    assert resolve_secret_env(beta.backup, secrets)["RESTIC_PASSWORD"] == PASSWORD

    # A Secret of that name in the user's namespace does not stand in for it: validate
    # and a run both name the Repository's namespace's Secret.
    docs = two_namespaces(tmp_path)
    docs[0] = secret_doc("repo-secret", B, RESTIC_PASSWORD="beta-chose-this")
    write_manifests(folder, docs)
    assert stash(["validate", str(folder)]) == 1
    assert "no Secret alpha/repo-secret" in capsys.readouterr().err
    with pytest.raises(StepFailed, match="missing Secret alpha/repo-secret"):
        resolve_secret_env(beta.backup, load_directory(folder).secrets)


def test_kubernetes_runtime_refuses_a_repository_of_another_namespace(tmp_path: Path) -> None:
    plans = plans_of(write_manifests(tmp_path / "m", two_namespaces(tmp_path)), "kubernetes")
    assert list(plans.backups) == ["stash-backup.alpha.app-backup.deployment.app"]
    (err,) = plans.errors
    assert (err.object_ref, err.field) == ("Restic beta/app-backup", "spec.repository.namespace")
    assert "cannot read its storage Secret alpha/repo-secret" in err.message


def test_a_recovery_restores_its_own_namespaces_snapshots_unless_it_names_another(
    tmp_path: Path,
) -> None:
    docs = two_namespaces(tmp_path) + [
        cross_recovery("own", B, tmp_path / "own"),
        cross_recovery("theirs", B, tmp_path / "theirs", sourceNamespace=A),
        cross_recovery("named", B, tmp_path / "named", restic="app-backup", target="replicaset.x"),
    ]
    plans = plans_of(write_manifests(tmp_path / "m", docs))
    assert plans.errors == []

    def tags(name: str) -> list[str]:
        argv = plans.recoveries[f"stash-recovery.beta.{name}"].restore.argv
        return [a.removeprefix("--tag=") for a in argv if a.startswith("--tag=")]

    assert tags("own") == ["namespace=beta"]
    assert tags("theirs") == ["namespace=alpha"]
    assert tags("named") == ["namespace=beta", "restic=app-backup", "target=replicaset.x"]


# --------------------------------------------------------------------------- agent


def agent_restore(
    repo: Path, target: Path, snapshot: str, *tags: str
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "stash_plugin.agent", "restore", f"--snapshot={snapshot}"]
    argv += [f"--tag={t}" for t in tags]
    argv += ["--mount-path=/source/data", f"--target={target}"]
    env = {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": PASSWORD}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def test_stash_08_snapshots_restore_by_id_but_are_never_latest(tmp_path: Path) -> None:
    """Stash 0.8 tagged nothing of its own (host = workload name, user tags only)."""
    repo, data = tmp_path / "repo", tmp_path / "data"
    data.mkdir()
    (data / "old.txt").write_text("from stash 0.8\n")
    env = {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": PASSWORD}
    subprocess.run(["restic", "init"], env=env, check=True, capture_output=True)
    subprocess.run(
        ["restic", "backup", "--host=app", "--tag=daily", str(data)],
        env=env,
        check=True,
        capture_output=True,
    )
    (old,) = restic_snapshots(repo)

    latest = agent_restore(repo, tmp_path / "latest", "latest", "namespace=beta")
    assert latest.returncode == 1
    assert "only snapshots without Stash's tags" in latest.stderr
    assert "restore one by its id" in latest.stderr

    # ``paths`` in a Stash 0.8 snapshot are what its pod saw: our data folder here.
    by_id = [sys.executable, "-m", "stash_plugin.agent", "restore", f"--snapshot={old['id']}"]
    by_id += ["--tag=namespace=beta", f"--mount-path={data}", f"--target={tmp_path / 'by-id'}"]
    done = subprocess.run(by_id, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "by-id" / "old.txt").read_text() == "from stash 0.8\n"


# --------------------------------------------------------------------------- DAG runs


def run(dag_id: str) -> Any:
    return run_dag(build_dag(dag_id))


def backup_dag(ns: str, target: str = "deployment.app") -> str:
    return f"stash-backup.{ns}.app-backup.{target}"


@pytest.mark.slow
def test_two_namespaces_sharing_a_repository_and_repo_dir(
    tmp_path: Path, airflow_db: None, stash_env: dict[str, Path]
) -> None:
    root, manifests = stash_env["root"], stash_env["manifests"]
    make_tree(root / A / "data", seed=1, small_files=20)
    make_tree(root / B / "data", seed=2, small_files=20)
    alpha_1 = tree_state(root / A / "data")
    beta_1 = tree_state(root / B / "data")
    assert alpha_1 != beta_1
    docs = two_namespaces(root)
    write_manifests(manifests, docs)
    repo = root / "backend" / REPO_DIR

    for ns in (A, B):  # beta's is the newest snapshot of the shared folder
        assert task_states(run(backup_dag(ns)))["update_status"] == "success", ns
    snaps = restic_snapshots(repo)
    assert sorted(s["hostname"] for s in snaps) == ["app", "app"]  # same host, same folder
    (beta_snap,) = [s for s in snaps if "namespace=beta" in s["tags"]]

    # alpha's `latest` is alpha's own, though beta's snapshot is newer.
    write_manifests(manifests, docs + [cross_recovery("latest", A, root / "alpha-restored")])
    assert task_states(run("stash-recovery.alpha.latest"))["restore"] == "success"
    assert tree_state(root / "alpha-restored") == alpha_1

    # A new alpha backup and its retention (keepLast 1) remove alpha's older snapshot and
    # never beta's; each target counts its own snapshots.
    (root / A / "data" / "second.txt").write_text("alpha, second backup\n")
    alpha_2 = tree_state(root / A / "data")
    second = run(backup_dag(A))
    assert task_states(second)["retention"] == "success"
    assert xcom(second, "retention")["forgets"][0]["removed"] == 1
    after = restic_snapshots(repo)
    assert beta_snap["id"] in {s["id"] for s in after}
    assert sorted(t for s in after for t in s["tags"] if t.startswith("namespace=")) == [
        "namespace=alpha",
        "namespace=beta",
    ]
    assert xcom(second, "verify")["snapshot_count"] == 1

    # beta's `latest` is beta's own, though alpha's snapshot is now the newer one; with
    # sourceNamespace it may restore alpha's (alpha may use the Repository); an explicit
    # id of alpha's snapshot without it is refused.
    (alpha_snap,) = [s for s in after if "namespace=alpha" in s["tags"]]
    write_manifests(
        manifests,
        docs
        + [
            cross_recovery("latest", B, root / "beta-restored"),
            cross_recovery("theirs", B, root / "theirs", sourceNamespace=A),
            cross_recovery("by-id", B, root / "by-id", snapshot=alpha_snap["short_id"]),
        ],
    )
    assert task_states(run("stash-recovery.beta.latest"))["restore"] == "success"
    assert tree_state(root / "beta-restored") == beta_1
    assert task_states(run("stash-recovery.beta.theirs"))["restore"] == "success"
    assert tree_state(root / "theirs") == alpha_2
    refused = run("stash-recovery.beta.by-id")
    assert task_states(refused)["restore"] == "failed"
    reason = xcom(refused, "restore", "stash_error")
    assert f"snapshot {alpha_snap['short_id']} is not tagged namespace=beta" in reason
    assert not (root / "by-id").exists() or not any((root / "by-id").iterdir())


@pytest.mark.slow
def test_a_deployment_and_a_replicaset_of_one_name(
    tmp_path: Path, airflow_db: None, stash_env: dict[str, Path]
) -> None:
    root, manifests = stash_env["root"], stash_env["manifests"]
    make_tree(root / "data", seed=3, small_files=10)
    make_tree(root / "rs-data", seed=4, small_files=10)
    docs = deployment_and_replicaset(root)
    write_manifests(manifests, docs)
    for target in ("deployment.app", "replicaset.app"):
        assert task_states(run(backup_dag(A, target)))["update_status"] == "success"
    assert len(restic_snapshots(root / "backend" / REPO_DIR)) == 2

    # Both are alpha's and both live in /volumes/deployment/app: `latest` must be told
    # which one it means, and then restores that one's bytes.
    write_manifests(
        manifests,
        docs
        + [
            cross_recovery("which", A, root / "which"),
            cross_recovery("rs", A, root / "rs", target="replicaset.app"),
        ],
    )
    ambiguous = run("stash-recovery.alpha.which")
    assert task_states(ambiguous)["restore"] == "failed"
    reason = xcom(ambiguous, "restore", "stash_error")
    assert "snapshots of 2 targets" in reason
    assert "target=deployment.app" in reason and "target=replicaset.app" in reason
    assert task_states(run("stash-recovery.alpha.rs"))["restore"] == "success"
    assert tree_state(root / "rs") == tree_state(root / "rs-data")

    # The Deployment's retention (keepLast 1) leaves the ReplicaSet's snapshot alone.
    (root / "data" / "new.txt").write_text("new\n")
    again = run(backup_dag(A, "deployment.app"))
    assert xcom(again, "retention")["forgets"][0]["removed"] == 1
    left = restic_snapshots(root / "backend" / REPO_DIR)
    assert sorted(t for s in left for t in s["tags"] if t.startswith("target=")) == [
        "target=deployment.app",
        "target=replicaset.app",
    ]
