"""The same backup and recovery, end to end, on the remote backends restic speaks.

S3 is moto's server on 127.0.0.1 and REST is ``rclone serve restic``; both are real
network servers that restic (run by the agent through the local runtime) talks to.
Each test runs a whole backup DAG and a whole recovery DAG, then checks the snapshot
in the backend itself, the restored tree byte for byte, and the recorded status.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stashtest import (
    PASSWORD,
    deployment_doc,
    make_tree,
    recovery_doc,
    repository_doc,
    restic_doc,
    run_dag,
    secret_doc,
    task_states,
    tree_state,
    write_manifests,
)

NS = "demo"
REPO = "remote-repo"
APP = "app"  # recovery_doc's default repoDir is /volumes/deployment/app
REPO_DIR = "volumes/deployment/app"
BUCKET = "stash-backups"
PREFIX = "demo"
S3_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}

BACKUP_DAG = f"stash-backup.{NS}.backup-app.deployment.{APP}"
RECOVERY_DAG = f"stash-recovery.{NS}.restore-app"


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[dict[str, Any]]:
    """moto's S3 on a free loopback port that checks access keys, with the bucket created.

    moto accepts unsigned requests by default, which would let a backup pass even if
    the Secret's AWS keys never reached restic. So an IAM user with an S3 policy and
    an access key are made first, then authentication is switched on
    (``/moto-api/reset-auth``): from then on only that key's signed requests succeed.
    """
    import boto3
    import requests
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    previous_auth = None
    try:
        bootstrap = {"aws_access_key_id": "bootstrap", "aws_secret_access_key": "bootstrap"}
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", **bootstrap)
        iam.create_user(UserName="stash")
        iam.put_user_policy(UserName="stash", PolicyName="s3", PolicyDocument=json.dumps(S3_POLICY))
        key = iam.create_access_key(UserName="stash")["AccessKey"]
        keys = {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
        )
        client.create_bucket(Bucket=BUCKET)
        reply = requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10)
        reply.raise_for_status()
        previous_auth = reply.json()["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]
        yield {"endpoint": endpoint, "client": client, "keys": keys}
    finally:
        if previous_auth is not None:  # the setting is process-wide: leave it as found
            requests.post(
                f"{endpoint}/moto-api/reset-auth", data=previous_auth.encode(), timeout=10
            )
        server.stop()


@pytest.fixture(scope="module")
def rclone_rest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``rclone serve restic`` on a loopback port rclone picks, serving a temp folder."""
    base = tmp_path_factory.mktemp("rclone-rest")
    data = base / "data"
    data.mkdir()
    config = base / "rclone.conf"
    config.write_text("")
    log_path = base / "rclone.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(  # noqa: S603
            ["rclone", "serve", "restic", f"--config={config}", "--addr=127.0.0.1:0", str(data)],  # noqa: S607
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = _wait_for_rclone(proc, log_path)
        yield {"url": url, "data": data}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_rclone(proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 20.0) -> str:
    """The URL rclone reports it serves on, once that port accepts connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rclone exited {proc.returncode}:\n{log_path.read_text()}")
        m = re.search(
            r"Serving restic REST API on (http://127\.0\.0\.1:(\d+)/)", log_path.read_text()
        )
        if m:
            try:
                socket.create_connection(("127.0.0.1", int(m.group(2))), timeout=1).close()
                return m.group(1)
            except OSError:
                pass
        time.sleep(0.1)
    raise RuntimeError(f"rclone did not start serving within {timeout}s:\n{log_path.read_text()}")


# --------------------------------------------------------------------------- helpers


def restic_json(repository: str, *args: str, **env: str) -> Any:
    """Ask restic itself, outside Stash, what the repository holds."""
    proc = subprocess.run(  # noqa: S603
        ["restic", "--no-cache", *args, "--json"],  # noqa: S607
        env={**os.environ, **env, "RESTIC_REPOSITORY": repository, "RESTIC_PASSWORD": PASSWORD},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def backup_and_recover(
    stash_env: dict[str, Path], backend: dict[str, Any], secret: dict[str, str]
) -> dict[str, Any]:
    """Back up a tree through the backend, restore it elsewhere, and check the result.

    Returns the target's recorded ``status.backupRepos`` entry for the caller's
    backend-specific checks.
    """
    from stash_plugin.factory import build_dags
    from stash_plugin.settings import load_settings

    root = stash_env["root"]
    source = make_tree(root / "source", small_files=300)
    restored = root / "restored"
    restored.mkdir()
    write_manifests(
        stash_env["manifests"],
        [
            secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD, **secret),
            deployment_doc(APP, NS, source),
            repository_doc(REPO, NS, backend),
            restic_doc("backup-app", NS, REPO, APP),
            recovery_doc("restore-app", NS, REPO, restored),
        ],
    )
    dags, errors = build_dags(load_settings())
    assert errors == []
    assert {BACKUP_DAG, RECOVERY_DAG} <= set(dags)

    started = time.monotonic()
    backup_run = run_dag(dags[BACKUP_DAG])
    backup_seconds = time.monotonic() - started
    assert task_states(backup_run) == {
        "backup": "success",
        "retention": "success",
        "verify": "success",
        "update_status": "success",
    }
    repo_state = json.loads((stash_env["state"] / "repositories" / NS / f"{REPO}.json").read_text())
    entry = repo_state["status"]["backupRepos"][0]
    assert entry["backupCount"] == 1
    assert entry.get("failedBackupCount", 0) == 0
    assert entry["repoDir"].strip("/") == REPO_DIR

    started = time.monotonic()
    recovery_run = run_dag(dags[RECOVERY_DAG])
    recovery_seconds = time.monotonic() - started
    assert task_states(recovery_run) == {"restore": "success", "update_status": "success"}
    assert tree_state(restored) == tree_state(source)
    rec_state = json.loads(
        (stash_env["state"] / "recoveries" / NS / "restore-app.json").read_text()
    )
    assert rec_state["status"]["phase"] == "Succeeded"

    print(f"backup DAG {backup_seconds:.1f}s, recovery DAG {recovery_seconds:.1f}s")  # noqa: T201
    return entry


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_s3_backup_and_recovery(
    airflow_db: None, stash_env: dict[str, Path], moto_s3: dict[str, Any]
) -> None:
    endpoint = moto_s3["endpoint"]
    entry = backup_and_recover(
        stash_env,
        {"s3": {"endpoint": endpoint, "bucket": BUCKET, "prefix": PREFIX}},
        moto_s3["keys"],
    )

    # The repository really is in the bucket, under prefix/repoDir, and holds the snapshot.
    pages = (
        moto_s3["client"]
        .get_paginator("list_objects_v2")
        .paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/")
    )
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    base = f"{PREFIX}/{REPO_DIR}/"
    assert f"{base}config" in keys
    assert len([k for k in keys if k.startswith(f"{base}snapshots/")]) == 1
    assert any(k.startswith(f"{base}data/") for k in keys)
    assert all(k.startswith(base) for k in keys)

    snapshots = restic_json(
        f"s3:{endpoint}/{BUCKET}/{PREFIX}/{REPO_DIR}", "snapshots", **moto_s3["keys"]
    )
    assert len(snapshots) == 1
    assert len(entry["lastSnapshotId"]) >= 8
    assert snapshots[0]["id"].startswith(entry["lastSnapshotId"])


@pytest.mark.slow
def test_rest_backup_and_recovery(
    airflow_db: None, stash_env: dict[str, Path], rclone_rest: dict[str, Any]
) -> None:
    url = rclone_rest["url"]
    entry = backup_and_recover(stash_env, {"rest": {"url": url}}, {})

    # The repository really is in rclone's folder at the repoDir path.
    repo = rclone_rest["data"] / REPO_DIR
    assert (repo / "config").is_file()
    assert len(list((repo / "snapshots").iterdir())) == 1
    assert any(p.is_file() for p in (repo / "data").rglob("*"))

    snapshots = restic_json(f"rest:{url.rstrip('/')}/{REPO_DIR}", "snapshots")
    assert len(snapshots) == 1
    assert len(entry["lastSnapshotId"]) >= 8
    assert snapshots[0]["id"].startswith(entry["lastSnapshotId"])
