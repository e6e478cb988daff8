"""Storage Secret values that restic 0.14 reads only from a file, shaped at run time.

restic takes a Google service-account key only as the file named by
``GOOGLE_APPLICATION_CREDENTIALS`` and a CA certificate only as ``--cacert FILE``,
while a Stash storage Secret holds them as values (``GOOGLE_SERVICE_ACCOUNT_JSON_KEY``,
``CA_CERT_DATA``). The agent writes them into a private folder (0700, files 0600)
for one run and removes it afterwards, on success, failure or SIGTERM alike. The
values themselves leave the environment restic sees; only our own file paths remain.

Standard library only: the agent image has nothing else.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path

CA_CERT_DATA = "CA_CERT_DATA"
GOOGLE_SERVICE_ACCOUNT_JSON_KEY = "GOOGLE_SERVICE_ACCOUNT_JSON_KEY"
GOOGLE_APPLICATION_CREDENTIALS = "GOOGLE_APPLICATION_CREDENTIALS"
FOLDER_PREFIX = "stash-credentials-"
CA_CERT_FILE = "ca.crt"
GCS_KEY_FILE = "gcs-service-account.json"


def write_private(folder: Path, name: str, value: str) -> Path:
    """Create ``folder/name`` readable by its owner only; never follows or reuses a file."""
    path = folder / name
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as out:
        out.write(value)
    return path


@contextmanager
def credential_files(environ: MutableMapping[str, str]) -> Iterator[list[str]]:
    """Turn file-only credentials of ``environ`` into files for the block's duration.

    Yields restic's global options (``--cacert=FILE``) to put before every command;
    sets ``GOOGLE_APPLICATION_CREDENTIALS`` in ``environ`` while the block runs.
    An empty value counts as absent, as restic would treat it. The agent turns SIGTERM,
    SIGINT and SIGHUP into an exception, so a stopped run leaves through the same
    ``finally`` as a failed one.
    """
    ca_cert = environ.pop(CA_CERT_DATA, "")
    gcs_key = environ.pop(GOOGLE_SERVICE_ACCOUNT_JSON_KEY, "")
    if not ca_cert and not gcs_key:
        yield []
        return
    folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))  # mode 0700
    try:
        options: list[str] = []
        if ca_cert:
            options.append(f"--cacert={write_private(folder, CA_CERT_FILE, ca_cert)}")
        if gcs_key:
            key_file = write_private(folder, GCS_KEY_FILE, gcs_key)
            environ[GOOGLE_APPLICATION_CREDENTIALS] = str(key_file)
        yield options
    finally:
        if gcs_key:
            environ.pop(GOOGLE_APPLICATION_CREDENTIALS, None)
        shutil.rmtree(folder, ignore_errors=True)


def tls_problem(stderr: str, ca_given: bool) -> str | None:
    """What to tell the user when restic could not verify the backend's certificate
    (Go reports every such failure as ``x509: ...``); None for any other failure."""
    if "x509: " not in stderr:
        return None
    if ca_given:
        return (
            f"the backend's TLS certificate does not verify against the {CA_CERT_DATA} of "
            "the storage Secret (wrong CA, or a certificate not valid for this address)"
        )
    return (
        "the backend's TLS certificate is not signed by a trusted CA; put the CA "
        f"certificate (PEM) in the storage Secret's {CA_CERT_DATA}"
    )
