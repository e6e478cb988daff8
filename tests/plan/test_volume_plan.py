"""Planning volume Restics: DAG ids, restic argv, retention flags and named errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from stashtest import PASSWORD, deployment_doc, repository_doc, restic_doc, secret_doc

from stash_plugin.api import ResourceSet, RetentionPolicy, parse_document
from stash_plugin.api.errors import ResourceError
from stash_plugin.plan import BackupPlan, PlanSet, Schedule, SecretEnv, make_plans
from stash_plugin.plan.restic import forget_args
from stash_plugin.protocol import SEPARATOR

NS = "demo"
DATA = Path("/srv/app-data")
REPO_PATH = Path("/srv/repo")
LOCAL_BACKEND = {"local": {"mountPath": "/repo", "hostPath": {"path": str(REPO_PATH)}}}


def resources(*docs: dict[str, Any]) -> ResourceSet:
    rs = ResourceSet()
    for i, doc in enumerate(docs):
        parsed = parse_document(doc, f"test.yaml#{i + 1}")
        assert parsed is not None and not isinstance(parsed, list), parsed
        rs.add(parsed, f"test.yaml#{i + 1}")
    return rs


def base_docs(**restic_spec: Any) -> list[dict[str, Any]]:
    policy = restic_spec.pop("policy", None)
    return [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        deployment_doc("app", NS, DATA),
        repository_doc("repo", NS, LOCAL_BACKEND),
        restic_doc("rs", NS, "repo", "app", policy=policy, **restic_spec),
    ]


def plan_of(*docs: dict[str, Any], runtime: str = "local") -> PlanSet:
    return make_plans(resources(*docs), runtime)  # type: ignore[arg-type]


def one_plan(*docs: dict[str, Any], runtime: str = "local") -> BackupPlan:
    plans = plan_of(*docs, runtime=runtime)
    assert plans.errors == [], [str(e) for e in plans.errors]
    (plan,) = plans.backups.values()
    return plan


def one_error(*docs: dict[str, Any], runtime: str = "local") -> ResourceError:
    plans = plan_of(*docs, runtime=runtime)
    assert plans.backups == {}
    assert len(plans.errors) == 1, [str(e) for e in plans.errors]
    return plans.errors[0]


def agent_cmds(argv: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """Split ``stash-agent run [opts] :: PATH cmd :: PATH cmd`` into (path, command)."""
    out: list[list[str]] = []
    for item in argv:
        if item == SEPARATOR:
            out.append([])
        elif out:
            out[-1].append(item)
    return [(c[0], c[1:]) for c in out]


def restic_cmds(argv: tuple[str, ...]) -> list[list[str]]:
    """The restic commands of an agent argv, each checked to name its folder first."""
    cmds = agent_cmds(argv)
    assert all(path.startswith("/") for path, _ in cmds)
    return [cmd for _, cmd in cmds]


def test_each_command_names_the_folder_it_is_about() -> None:
    """The agent reports results per folder as the workload sees it (not the host path),
    and is told so rather than parsing it back from the tags."""
    plan = one_plan(*base_docs())
    for step in (plan.backup, plan.verify, plan.retention):
        assert step is not None
        assert [p for p, _ in agent_cmds(step.argv)] == ["/source/data"]
    ((_, backup),) = agent_cmds(plan.backup.argv)
    assert backup[-1] == str(DATA)


TAG = "--tag=namespace=demo,restic=rs,target=deployment.app,path=/source/data"


def test_deployment_selected_by_labels_makes_one_plan() -> None:
    plan = one_plan(*base_docs())
    assert plan.dag_id == "stash-backup.demo.rs.deployment.app"
    assert plan.target.target == "deployment.app"
    assert plan.target.repo_dir == "/volumes/deployment/app"
    assert (plan.target.workload_kind, plan.target.workload_name) == ("Deployment", "app")
    assert plan.schedule == Schedule("every", 3600)
    assert plan.paused is False
    assert {"namespace:demo", "type:volume", "repository:repo"} <= set(plan.tags)
    assert plan.snapshot_paths == ("/source/data",)

    assert plan.backup.argv[:2] == ("stash-agent", "run")
    (backup,) = restic_cmds(plan.backup.argv)
    # The local runtime backs up the hostPath itself; tags name the workload's path.
    assert backup == ["restic", "backup", "--json", "--quiet", "--host=app", TAG, "--", str(DATA)]
    assert dict(plan.backup.env)["RESTIC_REPOSITORY"] == f"{REPO_PATH}/volumes/deployment/app"
    assert (
        SecretEnv("RESTIC_PASSWORD", "repo-secret", "RESTIC_PASSWORD", namespace=NS)
        in plan.backup.secret_env
    )
    assert any(m.path == str(DATA) and m.read_only for m in plan.backup.mounts)

    assert plan.retention is not None
    (forget,) = restic_cmds(plan.retention.argv)
    assert forget == [
        "restic",
        "forget",
        "--json",
        "--host=app",
        TAG,
        "--keep-last=5",
        "--keep-tag=stash-before-drop",  # what was taken before a flagged drop stays
        "--prune",
    ]
    (snapshots,) = restic_cmds(plan.verify.argv)
    assert snapshots == ["restic", "snapshots", "--json", "--host=app", TAG]


def test_every_selected_workload_gets_its_own_plan() -> None:
    docs = base_docs()
    docs.append(deployment_doc("app-two", NS, Path("/srv/two"), labels={"app": "app", "x": "y"}))
    docs.append(deployment_doc("other", NS, Path("/srv/other"), labels={"app": "other"}))
    docs.append(deployment_doc("elsewhere", "other-ns", Path("/srv/e"), labels={"app": "app"}))
    plans = plan_of(*docs)
    assert plans.errors == []
    assert sorted(plans.backups) == [
        "stash-backup.demo.rs.deployment.app",
        "stash-backup.demo.rs.deployment.app-two",
    ]
    two = plans.backups["stash-backup.demo.rs.deployment.app-two"]
    (backup,) = restic_cmds(two.backup.argv)
    assert "--host=app-two" in backup and backup[-1] == "/srv/two"
    assert "target=deployment.app-two" in backup[5]


def test_kubernetes_runtime_backs_up_the_mount_path() -> None:
    docs = base_docs()
    docs[2] = repository_doc("repo", NS, {"s3": {"bucket": "bkt", "prefix": "p"}})
    plan = one_plan(*docs, runtime="kubernetes")
    (backup,) = restic_cmds(plan.backup.argv)
    assert backup[-1] == "/source/data"
    assert (
        dict(plan.backup.env)["RESTIC_REPOSITORY"]
        == "s3:s3.amazonaws.com/bkt/p/volumes/deployment/app"
    )
    names = {s.name for s in plan.backup.secret_env}
    assert {"RESTIC_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= names


def test_subdirectory_maps_onto_the_host_path() -> None:
    docs = base_docs()
    docs[3]["spec"]["volumeSelector"]["targetVolumes"][0]["directories"] = [
        {"path": "/source/data/db", "retentionPolicyName": "policy"},
        {"path": "/source/data/logs"},
    ]
    plan = one_plan(*docs)
    cmds = restic_cmds(plan.backup.argv)
    assert [c[-1] for c in cmds] == [f"{DATA}/db", f"{DATA}/logs"]
    assert cmds[1][5].endswith("path=/source/data/logs")
    assert plan.snapshot_paths == ("/source/data/db", "/source/data/logs")
    assert plan.retention is not None
    (forget,) = restic_cmds(plan.retention.argv)  # only the directory with a policy
    assert forget[4].endswith("path=/source/data/db")


def test_retention_flags_for_every_keep_option() -> None:
    policy = {
        "keepLast": 3,
        "keepHourly": 24,
        "keepDaily": 7,
        "keepWeekly": 4,
        "keepMonthly": 12,
        "keepYearly": 2,
        "keepTags": ["important", "release"],
        "prune": True,
        "dryRun": True,
    }
    plan = one_plan(*base_docs(policy=policy))
    assert plan.retention is not None
    (forget,) = restic_cmds(plan.retention.argv)
    assert forget == [
        "restic",
        "forget",
        "--json",
        "--host=app",
        TAG,
        "--keep-last=3",
        "--keep-hourly=24",
        "--keep-daily=7",
        "--keep-weekly=4",
        "--keep-monthly=12",
        "--keep-yearly=2",
        "--keep-tag=important",
        "--keep-tag=release",
        "--keep-tag=stash-before-drop",
        "--prune",
        "--dry-run",
    ]


@pytest.mark.parametrize(
    "policy",
    [
        {"name": "p"},
        {"name": "p", "keepLast": 0},
        {"name": "p", "keepTags": ["x"]},
        {"name": "p", "keepDaily": 3},
    ],
)
def test_keep_last_is_at_least_one(policy: dict[str, Any]) -> None:
    args = forget_args(RetentionPolicy.model_validate(policy), "h", ["t=1"])
    keep_last = [a for a in args if a.startswith("--keep-last=")]
    assert len(keep_last) == 1 and int(keep_last[0].split("=")[1]) >= 1
    assert "--prune" not in args and "--dry-run" not in args


def test_no_policy_means_no_retention_step() -> None:
    docs = base_docs()
    del docs[3]["spec"]["volumeSelector"]["targetVolumes"][0]["directories"][0][
        "retentionPolicyName"
    ]
    plan = one_plan(*docs)
    assert plan.retention is None


@pytest.mark.parametrize("tag", ["stash-before-drop", "stash-repository"])
def test_the_tags_stash_sets_itself_are_reserved(tag: str) -> None:
    """A tenant tagging every snapshot ``stash-before-drop`` would make retention keep
    them all; ``stash-repository`` would hide its backups from every selection (they
    would look like Stash's record of the Repository): both tags are Stash's own."""
    docs = base_docs()
    docs[3]["spec"]["volumeSelector"]["targetVolumes"][0]["directories"][0]["tags"] = [tag]
    error = one_error(*docs)
    assert error.field == "spec.volumeSelector.targetVolumes[0].directories[0].tags[0]"
    assert f"{tag!r} is reserved" in str(error)


def test_unknown_retention_policy_name_names_the_field() -> None:
    docs = base_docs()
    docs[3]["spec"]["volumeSelector"]["targetVolumes"][0]["directories"][0][
        "retentionPolicyName"
    ] = "nope"
    err = one_error(*docs)
    assert err.object_ref == "Restic demo/rs"
    assert err.field == "spec.volumeSelector.targetVolumes[0].directories[0].retentionPolicyName"
    assert "'nope'" in err.message and "policy" in err.message
    assert err.origin == "test.yaml#4"


def test_missing_repository_reference() -> None:
    docs = base_docs()
    docs[3]["spec"]["repository"] = {"name": "missing"}
    err = one_error(*docs)
    assert (
        str(err)
        == "Restic demo/rs: spec.repository: Repository demo/missing not found (test.yaml#4)"
    )


def test_repository_in_another_namespace() -> None:
    docs = base_docs()
    docs[0] = secret_doc("repo-secret", "backups", RESTIC_PASSWORD=PASSWORD)
    docs[2] = repository_doc("repo", "backups", LOCAL_BACKEND)
    docs[2]["spec"]["allowedNamespaces"] = [NS]
    docs[3]["spec"]["repository"] = {"name": "repo", "namespace": "backups"}
    plan = one_plan(*docs)
    assert (plan.target.repository_namespace, plan.target.repository_name) == ("backups", "repo")
    assert "repository:repo" in plan.tags
    # The storage Secret is the Repository's, in the Repository's namespace.
    assert {(s.namespace, s.secret) for s in plan.backup.secret_env} == {("backups", "repo-secret")}


def test_missing_storage_secret() -> None:
    docs = base_docs()[1:]
    err = one_error(*docs)
    assert err.object_ref == "Restic demo/rs" and err.field == "spec.repository"
    assert "repo-secret" in err.message and "no Secret demo/repo-secret" in err.message


def test_kubernetes_runtime_does_not_need_the_secret_in_the_folder() -> None:
    docs = base_docs()[1:]
    docs[1] = repository_doc("repo", NS, {"gcs": {"bucket": "b"}})
    plan = one_plan(*docs, runtime="kubernetes")
    assert plan.backup.secret_env[0] == SecretEnv(
        "RESTIC_PASSWORD", "repo-secret", "RESTIC_PASSWORD", namespace=NS
    )


def test_volume_name_not_in_the_workload() -> None:
    docs = base_docs()
    docs[3]["spec"]["volumeSelector"]["targetVolumes"][0]["name"] = "cache"
    err = one_error(*docs)
    assert err.field == "spec.volumeSelector.targetVolumes[0].name"
    assert "Deployment demo/app has no volume named 'cache'" in err.message


def test_non_host_path_volume_in_local_runtime() -> None:
    docs = base_docs()
    volumes = docs[1]["spec"]["template"]["spec"]["volumes"]
    volumes[0] = {"name": "data", "persistentVolumeClaim": {"claimName": "pvc"}}
    err = one_error(*docs)
    assert err.field == "spec.volumeSelector.targetVolumes[0].name"
    assert "not a hostPath volume" in err.message
    # The kubernetes runtime mounts the claim instead.
    docs[2] = repository_doc("repo", NS, {"gcs": {"bucket": "b"}})
    plan = one_plan(*docs, runtime="kubernetes")
    assert any(
        m.source == {"persistentVolumeClaim": {"claimName": "pvc"}} for m in plan.backup.mounts
    )


def test_statefulset_needs_the_kubernetes_runtime() -> None:
    docs = base_docs()
    docs[1] = {**docs[1], "kind": "StatefulSet"}
    err = one_error(*docs)
    assert err.field == "spec.volumeSelector.selector" and "StatefulSet demo/app" in err.message


def test_restic_selecting_nothing() -> None:
    docs = base_docs()
    docs[3]["spec"]["volumeSelector"]["selector"] = {"matchLabels": {"app": "nobody"}}
    err = one_error(*docs)
    assert err.field == "spec.volumeSelector.selector"
    assert "selects no workload in namespace demo" in err.message


def test_empty_selector_selects_nothing() -> None:
    docs = base_docs()
    docs[3]["spec"]["volumeSelector"]["selector"] = {}
    err = one_error(*docs)
    assert err.field == "spec.volumeSelector.selector"


def test_same_path_twice_is_refused() -> None:
    docs = base_docs()
    tvs = docs[3]["spec"]["volumeSelector"]["targetVolumes"]
    tvs.append({**tvs[0]})
    err = one_error(*docs)
    assert err.field == "spec.volumeSelector.targetVolumes[1].directories[0].path"
    assert "already backed up" in err.message


def test_bad_schedule_names_the_field() -> None:
    err = one_error(*base_docs(schedule="@every 1x"))
    assert err.field == "spec.schedule" and "@every 1x" in err.message


def test_cron_schedule() -> None:
    assert one_plan(*base_docs(schedule="0 3 * * *")).schedule == Schedule("cron", "0 3 * * *")


def test_instant_backup_runs_once() -> None:
    docs = base_docs(backupType="Instant")
    del docs[3]["spec"]["schedule"]
    assert one_plan(*docs).schedule == Schedule("once")


def test_paused_restic_keeps_its_plan() -> None:
    plan = one_plan(*base_docs(paused=True))
    assert plan.paused is True
    assert plan.schedule == Schedule("every", 3600)


def test_one_bad_restic_does_not_hide_a_good_one() -> None:
    docs = base_docs()
    bad = restic_doc("bad", NS, "missing", "app")
    plans = plan_of(*docs, bad)
    assert list(plans.backups) == ["stash-backup.demo.rs.deployment.app"]
    assert [e.object_ref for e in plans.errors] == ["Restic demo/bad"]


def test_only_dag_id_plans_one_restic() -> None:
    docs = base_docs()
    bad = restic_doc("bad", NS, "missing", "app")
    plans = make_plans(
        resources(*docs, bad), "local", only_dag_id="stash-backup.demo.rs.deployment.app"
    )
    assert list(plans.backups) == ["stash-backup.demo.rs.deployment.app"]
    assert plans.errors == []


def test_no_secret_value_ever_appears_in_a_plan() -> None:
    docs = base_docs()
    docs[0] = secret_doc(
        "repo-secret",
        NS,
        RESTIC_PASSWORD=PASSWORD,
        AWS_ACCESS_KEY_ID="AKIDEXAMPLE",
        AWS_SECRET_ACCESS_KEY=PASSWORD + "-aws",
    )
    docs[2] = repository_doc(
        "repo", NS, {"s3": {"bucket": "bkt", "endpoint": "http://127.0.0.1:9000"}}
    )
    for runtime in ("local", "kubernetes"):
        plans = plan_of(*docs, runtime=runtime)
        assert plans.errors == []
        (plan,) = plans.backups.values()
        assert PASSWORD not in repr(plan)
        for step in (plan.backup, plan.retention, plan.verify):
            assert step is not None
            assert PASSWORD not in repr(step)
            assert all(PASSWORD not in a for a in step.argv)
            assert all(PASSWORD not in v for _, v in step.env)
        assert PASSWORD not in plan.description
        assert PASSWORD not in repr(plans)


def test_two_restics_that_spell_the_same_dag_id() -> None:
    # Names may contain dots: Restic "rs.deployment" backing up Deployment "app" and
    # Restic "rs" backing up Deployment "deployment.app" both spell this DAG id.
    docs = base_docs()
    docs[3] = restic_doc("rs.deployment", NS, "repo", "app")
    docs.append(deployment_doc("deployment.app", NS, Path("/srv/other"), labels={"app": "other"}))
    docs.append(restic_doc("rs", NS, "repo", "other"))
    plans = plan_of(*docs)
    assert list(plans.backups) == ["stash-backup.demo.rs.deployment.deployment.app"]
    (err,) = plans.errors
    assert err.field == "metadata.name"
    assert "stash-backup.demo.rs.deployment.deployment.app" in err.message
    kept = plans.backups["stash-backup.demo.rs.deployment.deployment.app"].target.restic_name
    assert {err.name, kept} == {"rs", "rs.deployment"}
