"""examples/: what each file plans into today, under both runtimes, as its README says.

The table below is the contract: a file whose plan changes changes its row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from stash_plugin.api.resourceset import ResourceSet
from stash_plugin.plan import PlanSet, make_plans
from stash_plugin.plan.model import Runtime
from stash_plugin.source import load_directory

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RUNTIMES: tuple[Runtime, ...] = ("local", "kubernetes")


@dataclass(frozen=True)
class Today:
    """What one file gives now: the DAGs it makes and its errors (``str`` of each)."""

    dags: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


NOTHING = Today()
EXPECTED: dict[str, Today] = {
    "deployment.yaml": NOTHING,
    # The Repository the volume Restic backs up into gets its maintenance DAG.
    "repository-local-hostpath.yaml": Today(dags=("stash-maintenance.demo.local-repo",)),
    "repository-local-nfs.yaml": NOTHING,
    "repository-local-pvc.yaml": NOTHING,
    "repository-s3.yaml": NOTHING,
    "repository-gcs.yaml": Today(dags=("stash-maintenance.demo.gcs-repo",)),
    "repository-azure.yaml": NOTHING,
    "repository-swift.yaml": NOTHING,
    "repository-b2.yaml": NOTHING,
    "repository-rest.yaml": NOTHING,
    "database-credentials.yaml": NOTHING,
    "backupagent-stash.yaml": NOTHING,
    "backupagent-mysqldump.yaml": NOTHING,
    # No Restic: the annotated Deployment's backup and restore-if-empty DAGs.
    "backuptemplate.yaml": Today(
        dags=(
            "stash-backup.demo.template-default-volumes.deployment.web",
            "stash-recovery.demo.if-empty.deployment.web",
        )
    ),
    "restic-volume.yaml": Today(
        dags=("stash-backup.demo.stash-demo-backup.deployment.stash-demo",)
    ),
    "recovery-volume.yaml": Today(dags=("stash-recovery.demo.stash-demo-restore",)),
    "restic-database-appref.yaml": Today(
        dags=("stash-backup.demo.quick-mysql-backup.appbinding.quick-mysql",)
    ),
    "restic-database-connectionurl.yaml": Today(
        dags=("stash-backup.demo.shop-db-backup.quick-mysql.demo.svc-3306.shop",)
    ),
    "restic-database-accessors.yaml": Today(
        dags=(
            "stash-backup.demo.databases-backup.appbinding.quick-mysql",
            "stash-backup.demo.databases-backup.reports-mysql.demo.svc-3306.reports",
        )
    ),
    "restic-cluster.yaml": Today(dags=("stash-backup.demo.cluster-backup.cluster",)),
    "recovery-cluster.yaml": Today(dags=("stash-recovery.demo.cluster-restore",)),
    "recovery-database-appref.yaml": Today(dags=("stash-recovery.demo.quick-mysql-restore",)),
    "recovery-database-connectionurl.yaml": Today(dags=("stash-recovery.demo.shop-db-restore",)),
    "appbinding-quick-mysql.yaml": NOTHING,
    "database-postgres.yaml": Today(
        dags=(
            "stash-backup.demo.app-db-backup.127.0.0.1-5432.app",
            "stash-recovery.demo.app-db-restore",
        )
    ),
    "database-mariadb.yaml": Today(dags=("stash-backup.demo.shop-db-nightly.appbinding.shop-db",)),
}


@cache
def planned(runtime: Runtime) -> tuple[ResourceSet, PlanSet]:
    resources = load_directory(EXAMPLES)
    return resources, make_plans(resources, runtime)


def _file(origin: str | None) -> str | None:
    return origin.split("#", 1)[0] if origin else None


def today(file: str, runtime: Runtime) -> Today:
    """What ``file`` plans into when the whole folder is loaded, as the README runs it."""
    resources, plans = planned(runtime)
    dags = [
        dag_id
        for dag_id, plan in plans.backups.items()
        if _file(
            resources.origin_of(
                *(plan.owner or ("Restic", plan.target.restic_namespace, plan.target.restic_name))
            )
        )
        == file
    ]
    dags += [
        dag_id
        for dag_id, rplan in plans.recoveries.items()
        if _file(resources.origin_of(*(rplan.owner or ("Recovery", rplan.namespace, rplan.name))))
        == file
    ]
    dags += [
        dag_id
        for dag_id, mplan in plans.maintenance.items()
        if _file(resources.origin_of("Repository", mplan.namespace, mplan.name)) == file
    ]
    errors = [str(e) for e in plans.errors if _file(e.origin) == file]
    return Today(dags=tuple(sorted(dags)), errors=tuple(sorted(errors)))


def example_files() -> list[str]:
    return sorted(p.name for p in EXAMPLES.iterdir() if p.suffix in (".yaml", ".yml", ".json"))


def test_the_table_covers_every_example() -> None:
    assert example_files() == sorted(EXPECTED)


def test_the_readme_lists_every_example_and_nothing_else() -> None:
    text = (EXAMPLES / "README.md").read_text()
    listed = set(re.findall(r"^\| `([^`]+\.ya?ml)` \|", text, flags=re.MULTILINE))
    assert listed == set(example_files())


def test_every_file_parses() -> None:
    """Errors below come from planning only: every object of every file is valid."""
    resources, _ = planned("local")
    assert resources.errors == []


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("file", sorted(EXPECTED))
def test_what_each_example_plans_into(file: str, runtime: Runtime) -> None:
    assert today(file, runtime) == EXPECTED[file]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_nothing_is_planned_or_refused_outside_the_table(runtime: Runtime) -> None:
    """No DAG or error comes from anywhere but the files of the table."""
    _, plans = planned(runtime)
    assert sorted(plans.dag_ids) == sorted(d for t in EXPECTED.values() for d in t.dags)
    assert sorted(map(str, plans.errors)) == sorted(e for t in EXPECTED.values() for e in t.errors)
