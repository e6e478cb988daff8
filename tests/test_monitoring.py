"""The shipped monitoring files agree with what Stash sends.

Every metric that a backup (good, failed, retention failed), a recovery (good, failed)
and a maintenance run (passed, failed) sends is mapped by exactly one rule of
``monitoring/statsd-mapping.yml`` to the Prometheus name and labels users alert on;
every rule maps something that is sent; the alert rules and the Grafana dashboard use
only mapped series; and the rules pass ``promtool check rules`` where it is installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from runtime.test_outcomes import (
    NOW,
    SHRUNK_BACKUP,
    STARTED,
    _backup_plan,
    _recovery_plan,
    _reports,
)
from stashtest import MAPPING_FILE, map_statsd, statsd_mappings

from stash_plugin.plan.maintenance import MaintenanceOptions, plan_maintenance
from stash_plugin.plan.placement import placement_for
from stash_plugin.protocol import (
    ClusterApply,
    MaintenanceResult,
    RestoreResult,
    RestoreRunResult,
    RunResult,
)
from stash_plugin.runtime.checks import maintenance_report, target_key
from stash_plugin.runtime.metrics import metric_name
from stash_plugin.runtime.outcomes import Metric, TaskReport, backup_report, recovery_report

MONITORING = MAPPING_FILE.parent
KIND = {"incr": "counter", "gauge": "gauge", "timing": "observer"}
BACKUP_LABELS = {
    "namespace": "demo",
    "restic": "rs",
    "target": "deployment_app",
    "repository": "repo",
    "target_type": "volumes",
}


def _repository(plan: Any) -> Any:
    from stash_plugin.api import parse_document
    from stash_plugin.manifests import repository_doc

    backend = {"local": {"mountPath": "/repo", "persistentVolumeClaim": {"claimName": "repo"}}}
    return parse_document(repository_doc("repo", "demo", backend))


def sent() -> list[tuple[tuple[str, ...], Metric]]:
    """(scope, metric) of every kind of run, as update_status would emit them."""
    plan = _backup_plan()
    runs = [
        backup_report(plan, _reports(plan), STARTED, NOW),
        backup_report(
            plan,
            _reports(plan, backup=TaskReport("backup", "failed", None, "boom")),
            STARTED,
            NOW,
        ),
    ]
    shrunk = _reports(plan, backup=TaskReport("backup", "success", SHRUNK_BACKUP.to_dict()))
    runs.append(backup_report(plan, shrunk, STARTED, NOW))
    cluster = RunResult.from_dict({**shrunk["backup"].result, "objects": {"apps/Deployment": 2}})
    runs.append(
        backup_report(
            plan,
            _reports(plan, backup=TaskReport("backup", "success", cluster.to_dict())),
            STARTED,
            NOW,
        )
    )
    out = [(r.scope, m) for r in runs for m in r.metrics]
    rplan = _recovery_plan()
    good = RestoreRunResult([RestoreResult("/source/data", "/x", ["a"], 1.0)]).to_dict()
    applied = RestoreRunResult(
        [RestoreResult("/cluster", "cluster", ["a"], 1.0)],
        ClusterApply(actions={"created": 3}, kinds={"core/ConfigMap": 3}),
    ).to_dict()
    for restore in (
        TaskReport("restore", "success", good),
        TaskReport("restore", "success", applied),
        TaskReport("restore", "failed"),
    ):
        report = recovery_report(rplan, {"restore": restore})
        out += [(report.scope, m) for m in report.metrics]
    mplan = plan_maintenance(
        _repository(plan), [plan], placement_for("kubernetes"), MaintenanceOptions()
    )
    assert mplan is not None
    (check,) = mplan.checks
    result = MaintenanceResult(
        check_ok=True,
        size_bytes=10,
        snapshot_count=2,
        target_snapshots={target_key(plan.target): 2},
    )
    report = maintenance_report(
        mplan,
        {check.step.task_id: TaskReport(check.step.task_id, "success", result.to_dict())},
        datetime.now(UTC),
        NOW,
    )
    out += [(scope, m) for scope, metrics in report.metrics for m in metrics]
    return out


def test_every_metric_sent_is_mapped_to_its_prometheus_name_and_labels() -> None:
    mapped: dict[str, dict[str, str]] = {}
    for scope, metric in sent():
        name = metric_name(scope, metric.name)
        found = map_statsd(f"airflow.{name}", KIND[metric.kind])
        assert found is not None, f"no rule of {MAPPING_FILE.name} maps {name} ({metric.kind})"
        mapped[found[0]] = found[1]
    backup = {k: v for k, v in mapped.items() if k.startswith("stash_backup_")}
    assert backup and all(labels == BACKUP_LABELS for labels in backup.values())
    assert mapped["stash_backup_success_total"] == BACKUP_LABELS
    assert mapped["stash_backup_last_success_timestamp_seconds"] == BACKUP_LABELS
    assert mapped["stash_recovery_success_total"] == {
        "namespace": "demo",
        "recovery": "rec",
        "repository": "repo",
    }
    assert mapped["stash_repository_check_success"] == {"namespace": "demo", "repository": "repo"}
    # Every rule maps something Stash sends: a renamed metric cannot leave a dead rule.
    assert sorted(mapped) == sorted(r["name"] for r in statsd_mappings())


def test_a_metric_the_mapping_does_not_know_is_caught() -> None:
    """The check above has teeth: a renamed metric is not mapped."""
    scope = ("backup", "demo", "rs", "deployment.app", "repo", "volumes")
    assert map_statsd(f"airflow.{metric_name(scope, 'succeeded')}", "counter") is None
    assert map_statsd(f"airflow.{metric_name(scope, 'success')}", "gauge") is None


def _series(expr: str) -> set[str]:
    names = set(re.findall(r"\b(stash[a-z_:]*)", expr))
    return {n for n in names if n != "stash"}


def _known() -> set[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    records = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    base = {r["name"] for r in statsd_mappings()}
    histograms = {f"{n}_{s}" for n in base for s in ("bucket", "sum", "count")}
    return base | histograms | records


def test_alert_rules_use_only_mapped_series() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert {"StashBackupMissed", "StashBackupFailing", "StashRepositoryCheckFailed"} <= alerts
    used = set().union(*map(_series, exprs))
    assert used and used <= _known(), used - _known()


def test_grafana_dashboard_uses_only_mapped_series() -> None:
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = set().union(*map(_series, exprs))
    assert used <= _known(), used - _known()
    # Every mapped series is on the dashboard somewhere.
    assert {r["name"] for r in statsd_mappings()} <= {
        re.sub(r"_(bucket|sum|count)$", "", n) for n in used
    } | {
        "stash_backup_schedule_interval_seconds",
        "stash_backup_last_failure_timestamp_seconds",
        "stash_backup_last_success_timestamp_seconds",
        "stash_repository_last_check_timestamp_seconds",
    }


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_alert_rules_pass_promtool() -> None:
    out = subprocess.run(
        ["promtool", "check", "rules", str(MONITORING / "alerts.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_readme_names_the_files() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name in ("statsd-mapping.yml", "alerts.yml", "grafana-dashboard.json"):
        assert f"monitoring/{name}" in readme
