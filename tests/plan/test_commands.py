"""BackupAgent commands: the specification's forms, planned into pods and processes, with
tenants' values reaching them only as environment variables and positional arguments."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from stashtest import PASSWORD, deployment_doc, repository_doc, restic_doc, secret_doc

from stash_plugin import API_VERSION
from stash_plugin.api import ResourceSet, parse_document
from stash_plugin.api.kubeobjects import Secret
from stash_plugin.manifests import recovery_doc
from stash_plugin.plan import PlanError, make_plans
from stash_plugin.plan.commands import DEFAULT_COMMAND, join_items, render
from stash_plugin.plan.pods import pod_manifest
from stash_plugin.runtime.errors import StepFailed
from stash_plugin.runtime.local import run_process

NS = "demo"

# The specification's two BackupAgent samples, in this project's words.
STASH_SAMPLE = [
    "backup",
    "--restic-name=restic-volume-demo",
    "--workload-kind=Deployment",
    "--workload-name=stash-demo",
    "--run-via-cron=true",
    "--v=3",
]
MYSQLDUMP_SAMPLE = (
    'mysqldump -u ${DB_USER} --password=${DB_PASSWORD} -h ${DB_HOST} "$@" '
    "| restic -r {{RepoName}} backup"
)


def agent_doc(name: str, image: str, **commands: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "BackupAgent",
        "metadata": {"name": name},
        "spec": {"image": image, "commands": commands},
    }


def resources(docs: list[dict[str, Any]]) -> ResourceSet:
    rs = ResourceSet()
    for doc in docs:
        parsed = parse_document(doc)
        assert parsed is not None and not isinstance(parsed, list), parsed
        rs.add(parsed)
    return rs


def volume_docs(agent: str, data: Path, repo: Path, **restic: Any) -> list[dict[str, Any]]:
    return [
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        deployment_doc("app", NS, data),
        repository_doc("repo", NS, {"local": {"mountPath": "/r", "hostPath": {"path": str(repo)}}}),
        restic_doc("rs", NS, "repo", "app", backupAgent=agent, **restic),
    ]


def test_the_stash_sample_plans_into_a_pod_running_its_image_and_commands(tmp_path: Path) -> None:
    docs = [
        agent_doc("stash-0.8", "appscode/stash:0.8.1", backup=STASH_SAMPLE),
        *volume_docs("stash-0.8", tmp_path, tmp_path / "repo"),
    ]
    plans = make_plans(resources(docs), "kubernetes")
    assert plans.errors == [], [str(e) for e in plans.errors]
    (plan,) = plans.backups.values()
    pod = pod_manifest(plan.backup, plan.backup.image or "default-agent")
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "appscode/stash:0.8.1"
    # The items are the container's args: the image's own entrypoint runs them.
    assert container["args"] == STASH_SAMPLE and "command" not in container
    # Steps the agent's commands do not name stay with the default agent.
    assert plan.verify.image is None and plan.verify.argv[0] == "stash-agent"
    assert plan.retention is not None and plan.retention.image is None


def test_an_agent_with_only_an_image_runs_every_step_in_it(tmp_path: Path) -> None:
    docs = [
        agent_doc("custom", "registry.example/agent:1"),
        *volume_docs("custom", tmp_path, tmp_path),
    ]
    (plan,) = make_plans(resources(docs), "kubernetes").backups.values()
    for step in (plan.backup, plan.verify, plan.retention):
        assert step is not None and step.image == "registry.example/agent:1"
        assert pod_manifest(step, "x")["spec"]["containers"][0]["command"][0] == "stash-agent"


def test_the_default_agent_is_written_in_the_same_form() -> None:
    args = ["run", "--init", "::", "/source/data", "restic", "backup"]
    rendered = render([DEFAULT_COMMAND], args, [], "default")
    assert rendered.argv == ("stash-agent", *args) and rendered.keep_entrypoint


def test_shell_lines_quote_every_reference_and_run_with_pipefail() -> None:
    provided = ["DB_USER", "DB_PASSWORD", "DB_HOST", "RESTIC_REPOSITORY"]
    rendered = render([MYSQLDUMP_SAMPLE], ["db1"], provided, "spec.commands.backup")
    shell, flag, script, name, *args = rendered.argv
    assert (shell, flag, args) == ("bash", "-c", ["db1"])
    assert script.splitlines() == [
        "set -euo pipefail",
        'mysqldump -u "${DB_USER}" --password="${DB_PASSWORD}" -h "${DB_HOST}" "$@" '
        '| restic -r "${RESTIC_REPOSITORY}" backup',
    ]
    assert rendered.variables == set(provided)


def test_items_starting_with_a_dash_continue_the_line() -> None:
    assert join_items(["backup", "--a=1", "--b", "echo x", "-n"]) == [
        "backup --a=1 --b",
        "echo x -n",
    ]


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (
            MYSQLDUMP_SAMPLE,
            "refers to $DB_HOST, $DB_PASSWORD, $DB_USER, which this target does not provide",
        ),
        ("restic -r {{Repository}} snapshots", "unknown placeholder {{Repository}}"),
        ("echo '{{RepoName}}'", "placeholder {{RepoName}} inside single quotes"),
        ('echo "unterminated', 'unterminated " quote'),
        ("echo ${STASH_HOST:-x}", "cannot read the variable reference"),
    ],
)
def test_commands_a_target_cannot_run_are_named_errors(
    command: str, message: str, tmp_path: Path
) -> None:
    docs = [
        agent_doc("dump", "tools:1", backup=[command]),
        *volume_docs("dump", tmp_path, tmp_path),
    ]
    plans = make_plans(resources(docs))
    assert plans.backups == {}
    (error,) = plans.errors
    text = str(error)
    assert text.startswith(
        "Restic demo/rs: spec.backupAgent: BackupAgent dump: spec.commands.backup"
    )
    assert message in text


def test_recovery_commands_are_rendered_for_the_restore_step(tmp_path: Path) -> None:
    docs = [
        agent_doc("r", "tools:1", recovery=['restic -r {{RepoName}} restore {{Snapshot}} "$@"']),
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        repository_doc(
            "repo", NS, {"local": {"mountPath": "/r", "hostPath": {"path": str(tmp_path)}}}
        ),
        recovery_doc("rec", NS, "repo", tmp_path / "out"),
    ]
    docs[-1]["spec"]["recoveryAgent"] = "r"
    plans = make_plans(resources(docs))
    assert plans.errors == [], [str(e) for e in plans.errors]
    (plan,) = plans.recoveries.values()
    assert plan.restore.argv[0] == "bash" and plan.restore.image == "tools:1"
    assert dict(plan.restore.env)["STASH_SNAPSHOT"] == "latest"


def test_a_recovery_command_can_keep_latest_to_the_recoverys_snapshots(tmp_path: Path) -> None:
    docs = [
        agent_doc("r", "tools:1", recovery=['restic restore latest --tag "$STASH_SNAPSHOT_TAGS"']),
        secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD),
        repository_doc(
            "repo", NS, {"local": {"mountPath": "/r", "hostPath": {"path": str(tmp_path)}}}
        ),
        recovery_doc("rec", NS, "repo", tmp_path / "out"),
    ]
    docs[-1]["spec"]["recoveryAgent"] = "r"
    docs[-1]["spec"]["volumeRestorer"]["target"] = "deployment.app"
    (plan,) = make_plans(resources(docs)).recoveries.values()
    tags = dict(plan.restore.env)["STASH_SNAPSHOT_TAGS"]
    assert tags == f"namespace={NS},target=deployment.app"


HOSTILE = "x; touch pwned-$(id -u) `touch pwned2` $(touch pwned3)"


def test_values_from_namespaced_objects_never_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every value a command can see, hostile, run for real: printed back verbatim, one
    argument each, and nothing executed from any of them."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    (data / HOSTILE).mkdir(parents=True)
    show = (
        "printf '<%s>\\n' {{RepoName}} {{Namespace}} {{Name}} {{Target}} {{Hostname}} "
        '{{RepoDir}} $RESTIC_PASSWORD ${AWS_ACCESS_KEY_ID} "$@"'
    )
    s3 = {"s3": {"endpoint": "127.0.0.1:1", "bucket": "b", "prefix": HOSTILE.replace(" ", "")}}
    docs = [
        agent_doc("show", "tools:1", backup=[show]),
        secret_doc(
            "repo-secret",
            NS,
            RESTIC_PASSWORD="pw; touch pwned6 $(touch pwned7)",
            AWS_ACCESS_KEY_ID="$(touch pwned4)",
            AWS_SECRET_ACCESS_KEY="$(touch pwned8)",
        ),
        deployment_doc("app", NS, data),
        repository_doc("repo", NS, s3),
        restic_doc(
            "rs",
            NS,
            "repo",
            "app",
            backupAgent="show",
            volumeSelector={
                "selector": {"matchLabels": {"app": "app"}},
                "targetVolumes": [
                    {
                        "name": "data",
                        "mountPath": "/source/data",
                        "directories": [
                            {"path": f"/source/data/{HOSTILE}", "tags": ["$(touch${IFS}pwned5)"]}
                        ],
                    }
                ],
            },
        ),
    ]
    rs = resources(docs)
    plans = make_plans(rs)
    assert plans.errors == [], [str(e) for e in plans.errors]
    (plan,) = plans.backups.values()
    lines: list[str] = []
    secrets: dict[tuple[str, str], Secret] = rs.secrets
    run_process(plan.backup, secrets, lines.append)
    printed = [ln[1:-1] for ln in lines if ln.startswith("<")]
    assert printed[0].startswith("s3:127.0.0.1:1/b/x;touchpwned")  # RESTIC_REPOSITORY, verbatim
    assert printed[1:6] == [NS, "rs", "deployment.app", "app", "/volumes/deployment/app"]
    assert printed[6:8] == ["***", "***"]  # secrets: one argument each, masked in the log
    # "$@": the planned agent arguments, each one argument, verbatim.
    assert str(data / HOSTILE) in printed[8:]
    assert any("$(touch${IFS}pwned5)" in p for p in printed[8:])
    assert not [f for f in os.listdir(tmp_path) if f.startswith("pwned")]


def test_a_failed_dump_in_a_pipe_fails_the_step(tmp_path: Path) -> None:
    docs = [
        agent_doc("pipe", "tools:1", backup=["false | cat"]),
        *volume_docs("pipe", tmp_path, tmp_path / "repo"),
    ]
    rs = resources(docs)
    (plan,) = make_plans(rs).backups.values()
    with pytest.raises(StepFailed) as failed:
        run_process(plan.backup, rs.secrets, lambda _: None)
    assert failed.value.exit_code == 1


def test_plain_commands_run_without_a_shell() -> None:
    rendered = render(["restic snapshots --json"], ["a b"], [], "w")
    assert rendered.argv == ("restic", "snapshots", "--json") and rendered.keep_entrypoint
    with pytest.raises(PlanError, match=r"refers to \$UNSET"):
        render(["echo $UNSET"], [], [], "w")
