"""restic command lines, repository URLs and credential environment.

Every value from a resource is its own argv item in ``--flag=value`` form, so that a
path or tag can never be read as another flag, and nothing goes through a shell.
Positional arguments (the folder to back up) come after ``--``: a second guard, on
top of the models' clean absolute paths.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..api.backend import Backend
from ..api.common import RetentionPolicy
from ..protocol import AGENT, BEFORE_DROP_TAG, END_OF_OPTIONS, REPOSITORY_RECORD_TAG, SEPARATOR
from .model import PlanError, SecretEnv

PASSWORD_KEY = "RESTIC_PASSWORD"
CA_CERT_DATA = "CA_CERT_DATA"
"""Any backend: a PEM CA certificate the agent hands restic as ``--cacert FILE``."""

# Keys of the storage Secret that become the agent's environment, per backend.
# RESTIC_PASSWORD is always required; which others are is ``secretkeys.SECRET_RULES``.
# GOOGLE_SERVICE_ACCOUNT_JSON_KEY and CA_CERT_DATA become files in the agent
# (``stash_plugin.credentials``): restic 0.14 reads them from files only.
CREDENTIAL_KEYS: dict[str, tuple[str, ...]] = {
    "local": (),
    "s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"),
    "gcs": ("GOOGLE_PROJECT_ID", "GOOGLE_SERVICE_ACCOUNT_JSON_KEY"),
    "azure": ("AZURE_ACCOUNT_NAME", "AZURE_ACCOUNT_KEY"),
    "swift": (
        "ST_AUTH",
        "ST_USER",
        "ST_KEY",
        "OS_AUTH_URL",
        "OS_PROJECT_ID",
        "OS_PROJECT_NAME",
        "OS_TENANT_ID",
        "OS_TENANT_NAME",
        "OS_USERNAME",
        "OS_PASSWORD",
        "OS_REGION_NAME",
        "OS_USER_DOMAIN_NAME",
        "OS_PROJECT_DOMAIN_NAME",
        "OS_STORAGE_URL",
        "OS_AUTH_TOKEN",
    ),
    "b2": ("B2_ACCOUNT_ID", "B2_ACCOUNT_KEY"),
    "rest": ("RESTIC_REST_USERNAME", "RESTIC_REST_PASSWORD"),
}


def _join(*parts: str | None) -> str:
    """Folders joined under a backend's root. The models refuse ``..``; refusing it
    here too means no value that reaches a URL (a workload name in a repoDir) can
    ever climb out of the root."""
    clean = [p.strip("/") for p in parts if p and p.strip("/")]
    joined = "/".join(clean)
    if ".." in joined.split("/"):
        raise PlanError("spec.backend", f"{joined!r} climbs out of the backend's root")
    return joined


def repository_url(backend: Backend, repo_dir: str, local_root: str | None = None) -> str:
    """Where restic finds the target's repository (``RESTIC_REPOSITORY``).

    ``repo_dir`` is the per-target folder under the backend's prefix (``/volumes/
    deployment/NAME``); the layout is Stash 0.8's, so old repositories keep working.
    ``local_root`` is where the agent sees a ``local`` backend's volume (the runtime's
    placement decides it).
    """
    if backend.local is not None:
        assert local_root is not None, "a local backend needs the placement's root"
        return "/" + _join(local_root, backend.local.sub_path, repo_dir)
    if backend.s3 is not None:
        s3 = backend.s3
        endpoint = (s3.endpoint or "s3.amazonaws.com").rstrip("/")
        return f"s3:{endpoint}/" + _join(s3.bucket, s3.prefix, repo_dir)
    if backend.gcs is not None:
        return f"gs:{backend.gcs.bucket}:/" + _join(backend.gcs.prefix, repo_dir)
    if backend.azure is not None:
        return f"azure:{backend.azure.container}:/" + _join(backend.azure.prefix, repo_dir)
    if backend.swift is not None:
        return f"swift:{backend.swift.container}:/" + _join(backend.swift.prefix, repo_dir)
    if backend.b2 is not None:
        return f"b2:{backend.b2.bucket}:/" + _join(backend.b2.prefix, repo_dir)
    assert backend.rest is not None
    return f"rest:{backend.rest.url.rstrip('/')}/" + _join(repo_dir)


def repository_env(backend: Backend, namespace: str) -> tuple[SecretEnv, ...]:
    """Credential environment from the storage Secret (never values, only references).

    The Secret is always the one in the Repository's ``namespace``, whoever uses it."""
    if not backend.storage_secret_name:
        raise PlanError(
            "spec.backend.storageSecretName",
            "required: the Secret holding RESTIC_PASSWORD (and the backend's keys)",
        )
    secret = backend.storage_secret_name
    env = [SecretEnv(PASSWORD_KEY, secret, PASSWORD_KEY, namespace=namespace)]
    env += [
        SecretEnv(k, secret, k, optional=True, namespace=namespace)
        for k in CREDENTIAL_KEYS[backend.kind]
    ]
    env.append(SecretEnv(CA_CERT_DATA, secret, CA_CERT_DATA, optional=True, namespace=namespace))
    return tuple(env)


def tag_list(tags: Iterable[str]) -> str:
    """restic ANDs the tags of one ``--tag`` value, separated by commas."""
    return ",".join(tags)


def backup_args(path: str, host: str, tags: Sequence[str]) -> list[str]:
    return [
        "restic",
        "backup",
        "--json",
        "--quiet",
        f"--host={host}",
        f"--tag={tag_list(tags)}",
        END_OF_OPTIONS,
        path,
    ]


def keep_last(policy: RetentionPolicy) -> int:
    """The ``--keep-last`` retention runs with: never below 1, so that the newest
    snapshot is always kept."""
    return max(policy.keep_last or 0, 1)


def stash08_selection(user_tags: Sequence[str], path: str | None) -> list[str]:
    """restic filters that add Stash 0.8's snapshots of one folder to a target's own.

    Stash 0.8 tagged a snapshot with its file group's tags only (none: restic's
    ``--tag=`` selects untagged snapshots); a second ``--tag`` is an alternative to the
    first. ``path`` is given where the agent sees the folder where the workload did
    (agent pods), so that both old and new snapshots carry it; elsewhere the agent
    tells the folders apart itself (``stash-agent``: Stash 0.8 snapshots of another
    folder)."""
    return [f"--tag={tag_list(user_tags)}", *([f"--path={path}"] if path else [])]


def forget_args(
    policy: RetentionPolicy, host: str, tags: Sequence[str], also: Sequence[str] = ()
) -> list[str]:
    """``restic forget`` for exactly one target directory's snapshots.

    ``--keep-last`` is at least 1 so that retention never deletes the newest snapshot
    (a policy of only ``keepTags`` would otherwise be able to), and the snapshots taken
    before a flagged drop of the source (tag ``stash-before-drop``) are always kept.
    ``also`` (:func:`stash08_selection`) adds Stash 0.8's snapshots of the folder, in one
    group with the new ones (their paths differ where the agent runs on the host).
    """
    args = ["restic", "forget", "--json", f"--host={host}", f"--tag={tag_list(tags)}"]
    if also:
        args += [*also, "--group-by=host"]
    args.append(f"--keep-last={keep_last(policy)}")
    for flag, value in (
        ("--keep-hourly", policy.keep_hourly),
        ("--keep-daily", policy.keep_daily),
        ("--keep-weekly", policy.keep_weekly),
        ("--keep-monthly", policy.keep_monthly),
        ("--keep-yearly", policy.keep_yearly),
    ):
        if value:
            args.append(f"{flag}={value}")
    args += [f"--keep-tag={t}" for t in (*policy.keep_tags, BEFORE_DROP_TAG)]
    if policy.prune:
        args.append("--prune")
    if policy.dry_run:
        args.append("--dry-run")
    return args


def snapshots_args(host: str, tags: Sequence[str], also: Sequence[str] = ()) -> list[str]:
    return ["restic", "snapshots", "--json", f"--host={host}", f"--tag={tag_list(tags)}", *also]


def agent_run(commands: Sequence[tuple[str, Sequence[str]]], *options: str) -> tuple[str, ...]:
    """The agent argv that runs restic commands in order.

    ``stash-agent run [options] :: PATH restic ... :: PATH restic ...``: each command
    names the folder it is about (as the workload sees it), so the agent never guesses
    it back from tags. Every value is a ``--flag=value`` item or an absolute path, so
    ``::`` only ever separates commands (``--`` belongs to restic's argv)."""
    argv: list[str] = [AGENT, "run", *options]
    for path, cmd in commands:
        argv += [SEPARATOR, path, *cmd]
    return tuple(argv)


def check_tag(tag: str) -> str:
    if not tag or "," in tag or tag.startswith("-") or any(c.isspace() for c in tag):
        raise ValueError(
            f"tag {tag!r} must be non-empty, without commas or spaces, not start with '-'"
        )
    if tag == BEFORE_DROP_TAG:
        raise ValueError(f"tag {tag!r} is reserved: Stash marks snapshots before a data drop")
    if tag == REPOSITORY_RECORD_TAG:
        raise ValueError(f"tag {tag!r} is reserved: Stash marks its record of the Repository")
    return tag
