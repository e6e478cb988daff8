"""The agent image, built from ``Dockerfile.agent`` and run with podman, for real.

A backup pod must read files of every owner (mode 0600 included) and a restore must
give them back byte for byte with their owners and modes; both run here with only the
capabilities the agent pods keep (``plan.pods.AGENT_SECURITY_CONTEXT``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from containers import Podman, security_flags
from stashtest import PASSWORD, tree_state

from stash_plugin.plan.pods import AGENT_SECURITY_CONTEXT
from stash_plugin.plan.restic import agent_run, backup_args

pytestmark = pytest.mark.slow
TAGS = ["namespace=demo", "restic=app-backup", "target=deployment.app", "path=/source/data"]

# (path, uid, gid, mode, content); directories end in "/".
ENTRIES = [
    ("root-only.key", 0, 0, 0o600, b"root's secret\n"),
    ("app/", 1000, 1000, 0o750, None),
    ("app/private.db", 1000, 1000, 0o600, os.urandom(70_000)),
    ("app/readonly.txt", 1000, 1000, 0o400, b"read only\n"),
    ("app/run.sh", 1000, 1000, 0o755, b"#!/bin/sh\necho hi\n"),
    ("nobody/", 65534, 65534, 0o700, None),
    ("nobody/cache.bin", 65534, 65534, 0o640, os.urandom(5000)),
    ("shared/", 1000, 2000, 0o2775, None),
    ("shared/group.txt", 1001, 2000, 0o660, b"group data\n"),
    ("shared/empty", 1002, 1002, 0o644, b""),
]


def make_owned_tree(root: Path) -> Path:
    root.mkdir()
    for rel, *_, content in ENTRIES:
        path = root / rel
        if rel.endswith("/"):
            path.mkdir()
        else:
            path.write_bytes(content or b"")
    os.symlink("app/private.db", root / "link-to-db")
    os.lchown(root / "link-to-db", 1000, 1000)
    for rel, uid, gid, mode, _ in reversed(ENTRIES):  # chown first: it clears set-id bits
        os.chown(root / rel, uid, gid)
        os.chmod(root / rel, mode)
    return root


def run_agent(
    podman: Podman, image: str, mounts: list[str], argv: list[str], message: Path
) -> dict[str, object]:
    """One agent container as a pod runs it; its termination message, parsed."""
    message.write_text("")
    volumes = [f"--volume={m}" for m in mounts]
    volumes.append(f"--volume={message}:/dev/termination-log:rw")
    proc = podman.run(
        "run",
        "--rm",
        "--network=none",
        *security_flags(podman, image, {"securityContext": AGENT_SECURITY_CONTEXT}),
        *volumes,
        "--env=RESTIC_REPOSITORY=/repo",
        "--env=RESTIC_PASSWORD",  # the value from podman's environment, never argv
        "--env=STASH_TERMINATION_MESSAGE_PATH=/dev/termination-log",
        image,
        *argv,
        check=False,
        env={"RESTIC_PASSWORD": PASSWORD},
    )
    assert proc.returncode == 0, f"agent failed:\n{proc.stdout}\n{proc.stderr}"
    assert PASSWORD not in proc.stdout + proc.stderr
    result: dict[str, object] = json.loads(message.read_text())
    return result


def test_agent_image_backs_up_and_restores_owners_and_modes(
    podman: Podman, agent_image: str, tmp_path: Path
) -> None:
    source = make_owned_tree(tmp_path / "source")
    repo, restored, message = tmp_path / "repo", tmp_path / "restored", tmp_path / "message"
    repo.mkdir()
    restored.mkdir()

    backup = agent_run(
        [("/source/data", backup_args("/source/data", "app", TAGS))],
        "--init",
        "--unlock",
        "--within=/source/data",
    )
    result = run_agent(
        podman, agent_image, [f"{source}:/source/data:ro", f"{repo}:/repo"], list(backup), message
    )
    backups = result["backups"]
    assert isinstance(backups, list) and len(backups) == 1
    snapshot = backups[0]["snapshot_id"]
    assert backups[0]["files_new"] == 7, backups[0]  # the link is a file to restic

    restore = ["stash-agent", "restore", f"--snapshot={snapshot}", "--tag=namespace=demo"]
    restore += ["--mount-path=/source/data", "--target=/restore/data"]
    mounts = [f"{repo}:/repo", f"{restored}:/restore/data"]
    run_agent(podman, agent_image, mounts, restore, message)

    assert tree_state(restored, owners=True) == tree_state(source, owners=True)
    assert os.stat(restored / "shared").st_mode & 0o2000  # set-group-id kept


def test_agent_image_holds_only_the_agent_and_restic(podman: Podman, agent_image: str) -> None:
    """No Airflow, no pydantic in the image; the agent finds restic and the database
    clients on its own."""
    script = (
        "import importlib.util as u, sys; "
        "sys.exit(any(u.find_spec(m) for m in ('airflow', 'pydantic', 'yaml', 'kubernetes')))"
    )
    podman.run("run", "--rm", "--network=none", agent_image, "python3", "-c", script)
    version = podman.run("run", "--rm", "--network=none", agent_image, "restic", "version")
    assert version.stdout.startswith("restic 0.14.0")
    for tool in ("pg_dump", "psql", "mariadb-dump", "mariadb", "redis-server", "redis-cli"):
        podman.run("run", "--rm", "--network=none", agent_image, "sh", "-c", f"command -v {tool}")
    size = podman.run("image", "inspect", "--format", "{{.Size}}", agent_image).stdout
    # restic and Python are about 140 MB; the database clients of the default database
    # agents (postgresql-client, mariadb-client, redis-server) about 150 MB more.
    assert int(size) < 320_000_000, f"agent image is {int(size) / 1e6:.0f} MB"
