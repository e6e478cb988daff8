"""Storage Secret keys: checked before any run, and shaped for restic by the agent.

restic 0.14 reads a GCS service-account key and a CA certificate only from files; the
agent writes them into a private folder for one run and removes it afterwards. A
recording stand-in for restic (``STASH_RESTIC_BINARY``) shows what restic is handed
and when; the slow end-to-end proofs against real servers are in
``tests/e2e/test_backends.py``.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from stashtest import (
    PASSWORD,
    deployment_doc,
    repository_doc,
    restic_doc,
    secret_doc,
    write_manifests,
)

from stash_plugin.api.resourceset import ResourceSet
from stash_plugin.cli import main
from stash_plugin.credentials import FOLDER_PREFIX
from stash_plugin.plan import make_plans
from stash_plugin.protocol import SEPARATOR
from stash_plugin.source import load_directory

NS = "demo"
GCS_KEY = json.dumps({"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----"})
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

# --------------------------------------------------------------------------- validation

BACKENDS: dict[str, dict[str, Any]] = {
    "s3": {"s3": {"endpoint": "http://127.0.0.1:9000", "bucket": "b"}},
    "gcs": {"gcs": {"bucket": "b"}},
    "azure": {"azure": {"container": "c"}},
    "swift": {"swift": {"container": "c"}},
    "b2": {"b2": {"bucket": "b"}},
    "rest": {"rest": {"url": "http://127.0.0.1:8000/"}},
}


def plan_errors(tmp_path: Path, backend: dict[str, Any], secret: dict[str, Any]) -> list[str]:
    """``stash validate``'s errors for one Restic on a Repository with this Secret."""
    write_manifests(
        tmp_path,
        [
            secret,
            deployment_doc("app", NS, tmp_path / "data"),
            repository_doc("repo", NS, backend),
            restic_doc("rs", NS, "repo", "app"),
        ],
        "all.yaml",
    )
    resources: ResourceSet = load_directory(tmp_path)
    return [str(e) for e in make_plans(resources, "local").errors]


def raw_secret(**values: bytes) -> dict[str, Any]:
    doc = secret_doc("repo-secret", NS)
    doc["data"] = {k: base64.b64encode(v).decode() for k, v in values.items()}
    return doc


PREFIX = (
    "Restic demo/rs: spec.repository: Repository demo/repo spec.backend.storageSecretName: "
    "Secret demo/repo-secret (all.yaml#1) "
)


@pytest.mark.parametrize(
    ("kind", "values", "problem"),
    [
        ("s3", {}, "lacks key RESTIC_PASSWORD"),
        ("s3", {"RESTIC_PASSWORD": b""}, "key RESTIC_PASSWORD is empty"),
        ("s3", {"RESTIC_PASSWORD": b"\xffpass\xfe"}, "key RESTIC_PASSWORD is not UTF-8 text"),
        (
            "s3",
            {"RESTIC_PASSWORD": b"pw", "AWS_ACCESS_KEY_ID": b"id"},
            "has key AWS_ACCESS_KEY_ID but lacks AWS_SECRET_ACCESS_KEY, which it needs",
        ),
        (
            "gcs",
            {"RESTIC_PASSWORD": b"pw", "GOOGLE_PROJECT_ID": b"p"},
            "lacks key GOOGLE_SERVICE_ACCOUNT_JSON_KEY (required by the gcs backend)",
        ),
        (
            "gcs",
            {
                "RESTIC_PASSWORD": b"pw",
                "GOOGLE_PROJECT_ID": b"p",
                "GOOGLE_SERVICE_ACCOUNT_JSON_KEY": b"not json",
            },
            "key GOOGLE_SERVICE_ACCOUNT_JSON_KEY is not a JSON object",
        ),
        (
            "azure",
            {"RESTIC_PASSWORD": b"pw", "AZURE_ACCOUNT_NAME": b"acct", "AZURE_ACCOUNT_KEY": b""},
            "key AZURE_ACCOUNT_KEY is empty (required by the azure backend)",
        ),
        # Stash 0.8's sample B2 Secret names B2_ACCOUNT_NAME instead of B2_ACCOUNT_KEY.
        (
            "b2",
            {"RESTIC_PASSWORD": b"pw", "B2_ACCOUNT_ID": b"id", "B2_ACCOUNT_NAME": b"k"},
            "lacks key B2_ACCOUNT_KEY (required by the b2 backend)",
        ),
        (
            "swift",
            {"RESTIC_PASSWORD": b"pw", "OS_AUTH_URL": b"https://keystone", "OS_USERNAME": b"u"},
            "lacks the keys of a way to sign in to swift: ST_AUTH+ST_USER+ST_KEY or "
            "OS_AUTH_URL+OS_USERNAME+OS_PASSWORD or OS_STORAGE_URL+OS_AUTH_TOKEN",
        ),
        (
            "rest",
            {"RESTIC_PASSWORD": b"pw", "RESTIC_REST_PASSWORD": b"secret-rest"},
            "has key RESTIC_REST_PASSWORD but lacks RESTIC_REST_USERNAME, which it needs",
        ),
        (
            "rest",
            {"RESTIC_PASSWORD": b"pw", "CA_CERT_DATA": b"not a certificate"},
            "key CA_CERT_DATA holds no PEM certificate",
        ),
        (
            "azure",
            {"RESTIC_PASSWORD": b"pw", "AZURE_ACCOUNT_NAME": b"a", "AZURE_ACCOUNT_KEY": b"\xff"},
            "key AZURE_ACCOUNT_KEY is not UTF-8 text",
        ),
    ],
)
def test_validate_names_the_secret_and_key_never_the_value(
    tmp_path: Path, kind: str, values: dict[str, bytes], problem: str
) -> None:
    errors = plan_errors(tmp_path, BACKENDS[kind], raw_secret(**values))
    assert len(errors) == 1, errors
    assert errors[0].startswith(PREFIX), errors[0]
    assert problem in errors[0]
    for value in values.values():
        if len(value) > 2:
            assert value.decode(errors="replace") not in errors[0]


@pytest.mark.parametrize(
    ("kind", "values"),
    [
        ("s3", {}),  # an instance role or IRSA supplies the keys
        ("s3", {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "k", "CA_CERT_DATA": CA_PEM}),
        (
            "gcs",
            {"GOOGLE_PROJECT_ID": "p", "GOOGLE_SERVICE_ACCOUNT_JSON_KEY": GCS_KEY},
        ),
        ("azure", {"AZURE_ACCOUNT_NAME": "a", "AZURE_ACCOUNT_KEY": "k"}),
        ("b2", {"B2_ACCOUNT_ID": "id", "B2_ACCOUNT_KEY": "k"}),
        ("swift", {"ST_AUTH": "https://auth/v1.0", "ST_USER": "u", "ST_KEY": "k"}),
        (
            "swift",
            {
                "OS_AUTH_URL": "https://keystone/v3",
                "OS_USERNAME": "u",
                "OS_PASSWORD": "p",
                "OS_USER_DOMAIN_NAME": "d",
                "OS_PROJECT_NAME": "p",
                "OS_PROJECT_DOMAIN_NAME": "d",
                "OS_REGION_NAME": "r",
            },
        ),
        ("swift", {"OS_STORAGE_URL": "https://swift/v1/AUTH_x", "OS_AUTH_TOKEN": "t"}),
        ("rest", {}),
        ("rest", {"RESTIC_REST_USERNAME": "u", "RESTIC_REST_PASSWORD": "p"}),
    ],
)
def test_documented_secrets_pass(tmp_path: Path, kind: str, values: dict[str, str]) -> None:
    secret = secret_doc("repo-secret", NS, RESTIC_PASSWORD=PASSWORD, **values)
    assert plan_errors(tmp_path, BACKENDS[kind], secret) == []


def test_stash_validate_reports_an_empty_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_errors(tmp_path, BACKENDS["rest"], raw_secret(RESTIC_PASSWORD=b""))
    assert main(["validate", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert f"error: {PREFIX}key RESTIC_PASSWORD is empty (all.yaml#4)" in err.splitlines()
    assert "0 backup DAG(s), 0 recovery DAG(s), 1 error(s)" in out


def test_secrets_are_only_checked_where_they_are_in_the_source(tmp_path: Path) -> None:
    """Pods read the Secret from the cluster: nothing to check at parse time."""
    plan_errors(tmp_path, BACKENDS["b2"], raw_secret(RESTIC_PASSWORD=b"pw"))
    assert make_plans(load_directory(tmp_path), "kubernetes").errors == []


# --------------------------------------------------------------------------- the agent

# A stand-in for restic that records what it was handed: argv, the environment
# restic would read, and the files the agent points it to (content and modes).
FAKE_RESTIC = r"""#!{python}
import json, os, stat, sys, time
record = {{"argv": sys.argv[1:], "env": {{}}, "files": {{}}}}
for name in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_SERVICE_ACCOUNT_JSON_KEY",
             "CA_CERT_DATA", "GOOGLE_PROJECT_ID"):
    if name in os.environ:
        record["env"][name] = os.environ[name]
paths = [os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")]
paths += [a.split("=", 1)[1] for a in sys.argv if a.startswith("--cacert=")]
for path in filter(None, paths):
    record["files"][path] = {{
        "content": open(path).read(),
        "mode": stat.S_IMODE(os.stat(path).st_mode),
        "dir_mode": stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode),
    }}
record["pid"] = os.getpid()
with open(os.environ["FAKE_RESTIC_LOG"], "a") as log:
    log.write(json.dumps(record) + "\n")
behaviour = os.environ.get("FAKE_RESTIC", "ok")
if behaviour == "sleep":
    time.sleep(60)
if behaviour == "x509":
    sys.stderr.write("Fatal: Get https://h/config: x509: certificate signed by unknown authority")
    sys.exit(1)
if behaviour == "fail":
    sys.exit(1)
print("[]")
"""


@pytest.fixture
def fake_restic(tmp_path: Path) -> dict[str, str]:
    script = tmp_path / "restic"
    script.write_text(FAKE_RESTIC.format(python=sys.executable))
    script.chmod(0o755)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    return {
        "STASH_RESTIC_BINARY": str(script),
        "FAKE_RESTIC_LOG": str(tmp_path / "calls.jsonl"),
        "TMPDIR": str(tmp),
        "RESTIC_REPOSITORY": "gs:bucket:/demo",
        "RESTIC_PASSWORD": PASSWORD,
        "GOOGLE_PROJECT_ID": "stash-test",
        "GOOGLE_SERVICE_ACCOUNT_JSON_KEY": GCS_KEY,
        "CA_CERT_DATA": CA_PEM,
    }


SNAPSHOTS = ["run", SEPARATOR, "/data", "restic", "snapshots", "--json", "--tag=path=/data"]


def start_agent(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """The agent under the most permissive umask: file modes must be its own doing."""
    return subprocess.Popen(
        [sys.executable, "-m", "stash_plugin.agent", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        umask=0,
    )


def calls(env: dict[str, str]) -> list[dict[str, Any]]:
    log = Path(env["FAKE_RESTIC_LOG"])
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def leftovers(env: dict[str, str]) -> list[str]:
    return [p.name for p in Path(env["TMPDIR"]).iterdir() if p.name.startswith(FOLDER_PREFIX)]


def test_agent_hands_restic_the_key_and_ca_as_private_files(fake_restic: dict[str, str]) -> None:
    agent = start_agent(fake_restic, *SNAPSHOTS)
    _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    (call,) = calls(fake_restic)

    key_file = call["env"]["GOOGLE_APPLICATION_CREDENTIALS"]
    cacert = [a for a in call["argv"] if a.startswith("--cacert=")]
    assert len(cacert) == 1 and call["argv"][0] == cacert[0]  # a global option, first
    ca_file = cacert[0].split("=", 1)[1]
    for path, content in ((key_file, GCS_KEY), (ca_file, CA_PEM)):
        assert Path(path).parent.name.startswith(FOLDER_PREFIX)
        assert Path(path).parent.parent == Path(fake_restic["TMPDIR"])
        assert call["files"][path] == {"content": content, "mode": 0o600, "dir_mode": 0o700}
    # The values themselves are no longer in restic's environment; the project id is.
    assert "GOOGLE_SERVICE_ACCOUNT_JSON_KEY" not in call["env"]
    assert "CA_CERT_DATA" not in call["env"]
    assert call["env"]["GOOGLE_PROJECT_ID"] == "stash-test"
    assert leftovers(fake_restic) == []


def test_no_file_without_file_credentials(fake_restic: dict[str, str]) -> None:
    env = {**fake_restic, "GOOGLE_SERVICE_ACCOUNT_JSON_KEY": "", "CA_CERT_DATA": ""}
    agent = start_agent(env, *SNAPSHOTS)
    _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    (call,) = calls(env)
    assert call["argv"][0] == "snapshots"
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in call["env"]
    assert leftovers(env) == []


def test_files_are_removed_when_restic_fails(fake_restic: dict[str, str]) -> None:
    env = {**fake_restic, "FAKE_RESTIC": "fail"}
    agent = start_agent(env, *SNAPSHOTS)
    _, err = agent.communicate(timeout=60)
    assert agent.returncode == 1
    assert "stash-agent: error: restic snapshots failed" in err
    assert calls(env) and leftovers(env) == []


def test_files_are_removed_when_the_agent_is_terminated(fake_restic: dict[str, str]) -> None:
    env = {**fake_restic, "FAKE_RESTIC": "sleep"}
    agent = start_agent(env, *SNAPSHOTS)
    deadline = time.monotonic() + 30
    while not calls(env) and time.monotonic() < deadline:
        time.sleep(0.05)
    (call,) = calls(env)
    assert leftovers(env) != []  # the files exist while restic runs
    agent.send_signal(signal.SIGTERM)
    agent.communicate(timeout=30)
    assert agent.returncode == 128 + signal.SIGTERM
    assert leftovers(env) == []
    with pytest.raises(ProcessLookupError):  # restic did not outlive the agent
        os.kill(call["pid"], 0)


def test_an_untrusted_certificate_names_ca_cert_data(fake_restic: dict[str, str]) -> None:
    without = {**fake_restic, "CA_CERT_DATA": "", "FAKE_RESTIC": "x509"}
    agent = start_agent(without, *SNAPSHOTS)
    _, err = agent.communicate(timeout=60)
    assert agent.returncode == 1
    assert (
        "stash-agent: error: the backend's TLS certificate is not signed by a trusted CA; "
        "put the CA certificate (PEM) in the storage Secret's CA_CERT_DATA" in err
    )
    wrong = {**fake_restic, "FAKE_RESTIC": "x509", "FAKE_RESTIC_LOG": without["FAKE_RESTIC_LOG"]}
    agent = start_agent(wrong, *SNAPSHOTS)
    _, err = agent.communicate(timeout=60)
    assert "does not verify against the CA_CERT_DATA of the storage Secret" in err
    assert leftovers(wrong) == []
