"""Which keys a storage Secret must hold for its backend, checked before any run.

restic fails late and vaguely on a missing credential (an empty password is refused
only when the first run starts; a B2 Secret with ``B2_ACCOUNT_NAME`` instead of
``B2_ACCOUNT_KEY``, as one Stash 0.8 sample has, fails at the first request). Where
the Secrets are in the manifests (the local runtime) the planner checks them here,
so ``stash validate`` names the Secret and the key instead. Messages never hold a value.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from ..api.kubeobjects import Secret
from .restic import CA_CERT_DATA, CREDENTIAL_KEYS, PASSWORD_KEY

GCS_KEY = "GOOGLE_SERVICE_ACCOUNT_JSON_KEY"
PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True)
class KeyRule:
    """A backend's demands on its Secret, beyond ``RESTIC_PASSWORD``."""

    required: tuple[str, ...] = ()
    any_of: tuple[tuple[str, ...], ...] = ()
    """Ways to authenticate: the keys of at least one must all be there."""
    needs: tuple[tuple[str, str], ...] = ()
    """(key, other): when ``key`` is there, ``other`` must be too."""


# S3 keys are optional together (an instance role or IRSA may supply them), REST
# credentials too (an open server); GCS, Azure and B2 have no other way in.
SECRET_RULES: dict[str, KeyRule] = {
    "local": KeyRule(),
    "s3": KeyRule(
        needs=(
            ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
            ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"),
            ("AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"),
        )
    ),
    "gcs": KeyRule(required=("GOOGLE_PROJECT_ID", GCS_KEY)),
    "azure": KeyRule(required=("AZURE_ACCOUNT_NAME", "AZURE_ACCOUNT_KEY")),
    "swift": KeyRule(
        any_of=(
            ("ST_AUTH", "ST_USER", "ST_KEY"),
            ("OS_AUTH_URL", "OS_USERNAME", "OS_PASSWORD"),
            ("OS_STORAGE_URL", "OS_AUTH_TOKEN"),
        )
    ),
    "b2": KeyRule(required=("B2_ACCOUNT_ID", "B2_ACCOUNT_KEY")),
    "rest": KeyRule(needs=(("RESTIC_REST_PASSWORD", "RESTIC_REST_USERNAME"),)),
}


def _raw(secret: Secret, key: str) -> bytes | None:
    encoded = secret.data.get(key)
    if encoded is None:
        return None
    try:
        return base64.b64decode(encoded)
    except (binascii.Error, ValueError):  # parse_secret refuses these; be safe anyway
        return b"\xff"


def _text(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _content_problem(key: str, text: str) -> str | None:
    """Values restic receives as a file: catch what restic would only reject at run time."""
    if key == CA_CERT_DATA and PEM_CERTIFICATE not in text:
        return f"key {CA_CERT_DATA} holds no PEM certificate ({PEM_CERTIFICATE} ...)"
    if key == GCS_KEY:
        try:
            if isinstance(json.loads(text), dict):
                return None
        except ValueError:
            pass
        return f"key {GCS_KEY} is not a JSON object (the service-account key file's content)"
    return None


def _value_problems(secret: Secret, kind: str) -> tuple[list[str], set[str]]:
    """Problems of the values themselves, and the keys that hold a usable value."""
    problems: list[str] = []
    present: set[str] = set()
    for key in (PASSWORD_KEY, *CREDENTIAL_KEYS[kind], CA_CERT_DATA):
        raw = _raw(secret, key)
        if raw is None:
            continue
        text = _text(raw)
        if text is None:
            problems.append(f"key {key} is not UTF-8 text")
        elif not text:
            if key == PASSWORD_KEY:
                problems.append(f"key {key} is empty")
        else:
            present.add(key)
            found = _content_problem(key, text)
            if found:
                problems.append(found)
    return problems, present


def secret_problems(secret: Secret, kind: str) -> list[str]:
    """Why ``secret`` cannot serve a ``kind`` backend; empty when it can."""
    problems, present = _value_problems(secret, kind)
    if PASSWORD_KEY not in secret.data:
        problems.insert(0, f"lacks key {PASSWORD_KEY}")
    rule = SECRET_RULES[kind]
    for key in rule.required:
        raw = _raw(secret, key)
        if raw is None:
            problems.append(f"lacks key {key} (required by the {kind} backend)")
        elif raw == b"":
            problems.append(f"key {key} is empty (required by the {kind} backend)")
    if rule.any_of and not any(set(group) <= present for group in rule.any_of):
        ways = " or ".join("+".join(group) for group in rule.any_of)
        problems.append(f"lacks the keys of a way to sign in to {kind}: {ways}")
    for key, other in rule.needs:
        if key in present and other not in present:
            problems.append(f"has key {key} but lacks {other}, which it needs")
    return problems
