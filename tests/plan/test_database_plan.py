"""Database targets planned: names, variables, Secret references, hostile values, the
specification's mysqldump sample, and errors that name what is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from stashtest import (
    PASSWORD,
    appbinding_doc,
    database_recovery_doc,
    database_restic_doc,
    repository_doc,
    secret_doc,
)

from stash_plugin import API_VERSION
from stash_plugin.api import ResourceSet, parse_document
from stash_plugin.plan import PlanSet, make_plans
from stash_plugin.plan.pods import pod_manifest
from stash_plugin.source import load_directory

NS = "demo"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# The specification's mysqldump BackupAgent, exactly as its sample writes it.
SPEC_MYSQLDUMP = {
    "apiVersion": API_VERSION,
    "kind": "BackupAgent",
    "metadata": {"name": "mysqldump"},
    "spec": {
        "image": "kubedb/mysql-tools:9.0",
        "commands": {
            "backup": [
                "mysqldump -u ${DB_USER} --password=${DB_PASSWORD} -h ${DB_HOST} "
                '"$@" | restic -r {{RepoName}} backup'
            ],
            "recovery": [
                'restic -r {{RepoName}} restore | mysql -u "$DB_USER" --password=${DB_PASSWORD} '
                '-h "$DB_HOST" "$@"'
            ],
        },
    },
}


def plan_of(*docs: dict[str, Any], runtime: str = "local") -> PlanSet:
    rs = ResourceSet()
    for i, doc in enumerate(docs):
        parsed = parse_document(doc, f"db.yaml#{i + 1}")
        assert parsed is not None and not isinstance(parsed, list), parsed
        rs.add(parsed, f"db.yaml#{i + 1}")
    return make_plans(rs, runtime)  # type: ignore[arg-type]


def base() -> list[dict[str, Any]]:
    return [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        secret_doc("login", NS, username="u", password="db-secret-pw"),
        repository_doc("repo", NS, {"local": {"mountPath": "/r", "hostPath": {"path": "/srv/r"}}}),
    ]


def url(database: str, scheme: str = "postgres", **cred: Any) -> dict[str, Any]:
    return {
        "connectionURL": {
            "url": f"{scheme}://db.example:5433",
            "database": database,
            "credentials": {"secretName": "login", **cred},
        }
    }


def errors(plans: PlanSet) -> list[str]:
    return [str(e) for e in plans.errors]


def test_connection_url_target_names_variables_and_secret_references() -> None:
    plans = plan_of(*base(), database_restic_doc("db", NS, "repo", url("app")))
    assert errors(plans) == []
    (plan,) = plans.backups.values()
    assert plan.dag_id == "stash-backup.demo.db.db.example-5433.app"
    assert plan.target.type == "Database"
    assert plan.target.repo_dir == "/databases/db.example-5433/app"
    assert plan.snapshot_paths == ("/app.sql",)
    step = plan.backup
    assert step.argv[:6] == ("stash-agent", "dump", "--engine=postgres", "--init", "--unlock", "::")
    assert "--stdin" in step.argv and "--stdin-filename=app.sql" in step.argv
    assert dict(step.env)["DB_HOST"] == "db.example" and dict(step.env)["DB_NAME"] == "app"
    assert dict(step.env)["DB_PORT"] == "5433"
    assert {(s.name, s.secret, s.key) for s in step.secret_env} >= {
        ("DB_USER", "login", "username"),
        ("DB_PASSWORD", "login", "password"),
    }
    assert "db-secret-pw" not in repr(plans)
    assert plan.retention is not None and "--keep-last=5" in plan.retention.argv
    assert "type:database" in plan.tags


@pytest.mark.parametrize("name", ["x; touch pwned", "$(id)", "../..", "-v", "a,b c"])
def test_a_hostile_database_name_is_only_ever_a_value(name: str) -> None:
    plans = plan_of(*base(), database_restic_doc("db", NS, "repo", url(name)))
    assert errors(plans) == []
    (plan,) = plans.backups.values()
    assert dict(plan.backup.env)["DB_NAME"] == name
    for text in (plan.dag_id, plan.target.repo_dir, *plan.backup.argv, *plan.verify.argv):
        assert name not in text
    repo_dir = plan.target.repo_dir
    assert repo_dir.startswith("/databases/db.example-5433/") and ".." not in repo_dir
    assert all(c.isalnum() or c in "-_" for c in repo_dir.rsplit("/", 1)[1])


def test_appbinding_gives_engine_address_and_login() -> None:
    binding = appbinding_doc("quick-pg", NS, "", "kubedb.com/postgres", "login")
    binding["spec"]["clientConfig"] = {
        "service": {"name": "quick-pg", "scheme": "postgresql", "port": 5432}
    }
    plans = plan_of(
        *base(), binding, database_restic_doc("db", NS, "repo", {"AppRef": {"name": "quick-pg"}})
    )
    assert errors(plans) == []
    (plan,) = plans.backups.values()
    assert plan.dag_id == "stash-backup.demo.db.appbinding.quick-pg"
    assert plan.target.repo_dir == "/databases/appbinding/quick-pg"
    assert plan.target.workload_kind == "AppBinding"
    env = dict(plan.backup.env)
    assert (env["DB_HOST"], env["DB_PORT"], env["DB_NAME"]) == ("quick-pg.demo.svc", "5432", "all")
    assert plan.snapshot_paths == ("/all.sql",)


def test_database_accessors_make_one_dag_each_under_the_prefix() -> None:
    binding = appbinding_doc("cache", NS, "redis://cache.demo.svc", "redis", "login")
    restic = database_restic_doc(
        "db",
        NS,
        "repo",
        {"databaseAccessors": [{"AppRef": {"name": "cache"}}, url("shop", "mysql")]},
        prefix="backups/db",
    )
    plans = plan_of(*base(), binding, restic)
    assert errors(plans) == []
    dirs = sorted(p.target.repo_dir for p in plans.backups.values())
    assert dirs == ["/backups/db/appbinding/cache", "/backups/db/db.example-5433/shop"]
    engines = sorted(p.backup.argv[2] for p in plans.backups.values())
    assert engines == ["--engine=mysql", "--engine=redis"]


@pytest.mark.parametrize(
    ("accessor", "extra", "message"),
    [
        ({"AppRef": {"name": "nope"}}, [], "AppBinding demo/nope not found"),
        ({"AppRef": {"name": "pg", "namespace": "other"}}, [], "is in namespace other"),
        (url("app", passwordKey="PW"), [], "Secret demo/login (db.yaml#2) has no key 'PW'"),
        (
            {"connectionURL": {"url": "postgres://u:pw@h/app", "database": "app"}},
            [],
            "the URL holds a password",
        ),
        (
            {"connectionURL": {"url": "https://search.demo.svc:9200", "database": "x"}},
            [],
            "names no database engine",
        ),
        (
            url("app") | {"connectionURL": {**url("app")["connectionURL"], "database": ""}},
            [],
            "name the database to back up, or 'all'",
        ),
    ],
)
def test_what_cannot_be_planned_is_named(
    accessor: dict[str, Any], extra: list[dict[str, Any]], message: str
) -> None:
    plans = plan_of(*base(), *extra, database_restic_doc("db", NS, "repo", accessor))
    assert plans.backups == {}
    (error,) = errors(plans)
    assert error.startswith("Restic demo/db: spec.databaseSelector")
    assert message in error


def test_the_specifications_mysqldump_sample_is_read_but_refused_with_the_fix() -> None:
    restic = database_restic_doc("db", NS, "repo", url("shop", "mysql"), backupAgent="mysqldump")
    recovery = database_recovery_doc(
        "rec", NS, "repo", "/databases/x", url("shop", "mysql"), snapshot="latest"
    )
    recovery["spec"]["recoveryAgent"] = "mysqldump"
    plans = plan_of(SPEC_MYSQLDUMP, *base(), restic, recovery)
    assert plans.backups == {} and plans.recoveries == {}
    restore, backup = sorted(errors(plans))
    assert restore.startswith("Recovery demo/rec: spec.recoveryAgent: BackupAgent mysqldump")
    assert "pipes `restic restore`, which writes files" in restore
    assert backup.startswith(
        "Restic demo/db: spec.backupAgent: BackupAgent mysqldump: spec.commands.backup "
        "cannot work for a database: [0] runs `restic backup` without --stdin"
    )
    assert 'pipe the dump into `stash-agent "$@"`' in backup
    assert "puts $DB_PASSWORD on the command line, where `ps` shows it" in backup
    assert "MYSQL_PWD" in backup


def test_the_corrected_mysqldump_example_plans_for_both_runtimes() -> None:
    for runtime in ("local", "kubernetes"):
        plans = make_plans(load_directory(EXAMPLES), runtime)  # type: ignore[arg-type]
        agent_plan = plans.backups["stash-backup.demo.shop-db-nightly.appbinding.shop-db"]
        step = agent_plan.backup
        assert step.argv[:2] == ("bash", "-c") and 'stash-agent "$@"' in step.argv[2]
        assert "--stdin" in step.argv[4:]
        assert ("MYSQL_PWD", "shop-db-login", "password") in {
            (s.name, s.secret, s.key) for s in step.secret_env
        }
    doc = yaml.safe_load((EXAMPLES / "backupagent-mysqldump.yaml").read_text())
    assert "--password" not in str(doc["spec"]["commands"])


def test_agent_pod_gets_the_database_login_as_secret_references() -> None:
    plans = plan_of(
        *base(), database_restic_doc("db", NS, "repo", url("app")), runtime="kubernetes"
    )
    (plan,) = plans.backups.values()
    pod = pod_manifest(plan.backup, "stash-airflow/agent:0.1.0")
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    ref = env["DB_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("login", "password")
    assert env["DB_NAME"]["value"] == "app"
    assert "db-secret-pw" not in repr(pod)


def test_database_recovery_plan() -> None:
    rec = database_recovery_doc(
        "rec",
        NS,
        "repo",
        "/databases/db.example-5433/app",
        url("app2"),
        snapshot="0123abcd",
        overwrite=True,
    )
    plans = plan_of(*base(), rec)
    assert errors(plans) == []
    (plan,) = plans.recoveries.values()
    assert plan.restore.argv == (
        "stash-agent",
        "restore-database",
        "--engine=postgres",
        "--snapshot=0123abcd",
        "--tag=namespace=demo",
        "--overwrite",
    )
    assert dict(plan.restore.env)["DB_NAME"] == "app2"
    assert dict(plan.restore.env)["RESTIC_REPOSITORY"] == "/srv/r/databases/db.example-5433/app"
