"""``stash discover``: find the restic repositories under a backend prefix after a
cluster lost its Repository objects, and write the objects to recreate.

Every backup keeps the Repository object it ran for inside its repository (a tiny
snapshot tagged ``stash-repository``, see ``stash_plugin.agent.store_record``). This
module lists the repositories under a prefix (a local folder is walked, an S3 bucket
is listed with rclone; any other backend is opened as one repository URL), reads each
one with restic (its targets, snapshot counts and record) and turns the records into
Repository manifests.

A record is untrusted: anyone holding the repository password can write one. It is
read with a size limit, parsed by the same code as every manifest, rebuilt from the
parsed model (only apiVersion, kind, name, namespace, labels and spec survive), and
must describe the place it was found in and a namespace whose backups the repository
holds. A record that fails any of this is reported by its location and left out; one
Repository recorded differently in two places is reported as a conflict and left
out. ``--apply`` creates objects only in the namespaces named with ``--namespace``,
and never replaces an existing object.

Secrets (the restic password, cloud keys) come from the environment or a Secret
manifest and only ever reach restic and rclone as environment variables.
"""

from __future__ import annotations

import json
import os
import posixpath
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import GROUP, VERSION
from .api.errors import ResourceError
from .api.parse import parse_document
from .api.resources import Repository
from .credentials import credential_files
from .plan.records import repository_manifest
from .plan.restic import CA_CERT_DATA, CREDENTIAL_KEYS, PASSWORD_KEY
from .protocol import REPOSITORY_RECORD_FILE, REPOSITORY_RECORD_TAG, is_record, target_key
from .sync import current_object

RECORD_LIMIT = 64 * 1024
"""Largest record read back (ours are a few hundred bytes)."""
RESTIC_TIMEOUT = 300.0
SECRET_KEYS = (
    PASSWORD_KEY,
    CA_CERT_DATA,
    *sorted({k for keys in CREDENTIAL_KEYS.values() for k in keys}),
)
"""The keys of a storage Secret that restic (and rclone) may be given."""


class DiscoverError(RuntimeError):
    """A failure of the whole discovery (a bad URL, no password); never holds a secret."""


# --------------------------------------------------------------------------- where to look


@dataclass(frozen=True)
class Root:
    """The prefix to look under, from the restic-style URL the user gave."""

    kind: str
    """``local``, ``s3``, or ``single`` (any other backend: the URL is one repository)."""
    url: str
    path: str = ""
    """local: the folder; s3: ``bucket/prefix``."""
    endpoint: str = ""
    """s3: ``https://host[:port]``."""

    def repository_url(self, rel: str) -> str:
        if self.kind == "local":
            return posixpath.normpath(posixpath.join(self.path, rel))
        if self.kind == "s3":
            host = self.endpoint.split("://", 1)[1]
            scheme = "" if self.endpoint.startswith("https://") else "http://"
            return f"s3:{scheme}{host}/" + posixpath.normpath(posixpath.join(self.path, rel))
        return self.url


def parse_root(url: str) -> Root:
    """``/srv/backups``, ``local:/srv/backups``, ``s3:https://host/bucket/prefix``,
    ``s3:host/bucket/prefix``; anything else restic speaks is taken as one repository."""
    if url.startswith("local:"):
        url = url[len("local:") :]
    if url.startswith("/"):
        if ".." in url.split("/"):
            raise DiscoverError(f"{url!r}: give a path without '..'")
        return Root("local", url, path=posixpath.normpath(url))
    if url.startswith("s3:"):
        rest = url[len("s3:") :]
        scheme = "https"
        if "://" in rest:
            scheme, rest = rest.split("://", 1)
        host, _, path = rest.partition("/")
        path = path.strip("/")
        if not host or not path or ".." in path.split("/"):
            raise DiscoverError(f"{url!r}: an S3 URL is s3:[http(s)://]HOST/BUCKET[/PREFIX]")
        return Root("s3", url, path=path, endpoint=f"{scheme}://{host}")
    if ":" not in url:
        raise DiscoverError(f"{url!r} is neither a folder nor a restic repository URL")
    return Root("single", url)


def _local_repositories(root: Path) -> list[str]:
    """Folders under ``root`` holding a restic repository (a ``config`` file next to
    ``keys`` and ``snapshots``); links are not followed, and a repository's own
    folders are not searched."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        if "config" in files and {"keys", "snapshots"} <= set(dirs):
            found.append(os.path.relpath(folder, root))
            dirs[:] = []
        dirs.sort()
    return sorted(found)


def _rclone_env(root: Root, env: Mapping[str, str]) -> dict[str, str]:
    """rclone's S3 settings as environment variables: the keys never reach argv."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
    out |= {"RCLONE_S3_PROVIDER": "Other", "RCLONE_S3_ENDPOINT": root.endpoint}
    for ours, theirs in (
        ("AWS_ACCESS_KEY_ID", "RCLONE_S3_ACCESS_KEY_ID"),
        ("AWS_SECRET_ACCESS_KEY", "RCLONE_S3_SECRET_ACCESS_KEY"),
        ("AWS_SESSION_TOKEN", "RCLONE_S3_SESSION_TOKEN"),
        ("AWS_DEFAULT_REGION", "RCLONE_S3_REGION"),
    ):
        if env.get(ours):
            out[theirs] = env[ours]
    return out


def _s3_repositories(root: Root, env: Mapping[str, str]) -> list[str]:
    """Every ``config`` object under the bucket's prefix, listed by rclone."""
    with tempfile.TemporaryDirectory(prefix="stash-discover-") as folder:
        config = Path(folder, "rclone.conf")
        config.write_text("")
        argv = [
            "rclone",
            "lsf",
            f"--config={config}",
            "--recursive",
            "--files-only",
            "--include=config",
            f":s3:{root.path}",
        ]
        try:
            proc = subprocess.run(  # noqa: S603 - argv list, no shell
                argv,
                env=_rclone_env(root, env),
                capture_output=True,
                text=True,
                timeout=RESTIC_TIMEOUT,
            )
        except FileNotFoundError:
            raise DiscoverError("listing an S3 prefix needs rclone on PATH") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DiscoverError(f"cannot list {root.url} (rclone exit {proc.returncode}): {last}")
    rels = [posixpath.dirname(line.strip()) for line in proc.stdout.splitlines() if line.strip()]
    return sorted({r or "." for r in rels})


def repository_locations(root: Root, env: Mapping[str, str]) -> list[str]:
    """The restic URL of every repository under ``root``."""
    if root.kind == "local":
        if not Path(root.path).is_dir():
            raise DiscoverError(f"{root.path} is not a folder")
        rels = _local_repositories(Path(root.path))
    elif root.kind == "s3":
        rels = _s3_repositories(root, env)
    else:
        return [root.url]
    return [root.repository_url(rel) for rel in rels]


# --------------------------------------------------------------------------- one repository


@dataclass
class Found:
    """What one repository holds, as far as discovery could read it."""

    url: str
    targets: dict[str, int] = field(default_factory=dict)
    """Backups per target (``namespace=N,restic=R,target=T``); ``untagged (host H)``
    for Stash 0.8 snapshots."""
    record: dict[str, Any] | None = None
    """The Repository manifest its record holds, once checked."""
    recorded_at: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def snapshot_count(self) -> int:
        return sum(self.targets.values())


def _restic(
    argv: list[str], env: Mapping[str, str], options: list[str], limit: int | None = None
) -> tuple[int, str, str]:
    """Run restic with the secrets in its environment only; at most ``limit`` bytes of
    its output are kept (a planted record can be any size)."""
    full = ["restic", *options, *argv]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
            full, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=dict(env)
        )
        try:
            code = proc.wait(timeout=RESTIC_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -1, "", "timed out"
        out.seek(0)
        err.seek(0)
        data = out.read(limit + 1) if limit is not None else out.read()
        return code, data.decode("utf-8", "replace"), err.read().decode("utf-8", "replace")


def _why(code: int, stderr: str) -> str:
    """restic's failure in words that never repeat its output (which may hold a URL
    with credentials)."""
    if "wrong password" in stderr:
        return "wrong password (RESTIC_PASSWORD of the given Secret)"
    if "Is there a repository" in stderr:
        return "no repository there, or the backend cannot be reached"
    return f"cannot be opened (restic exit {code})"


def _tally(snaps: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for snap in snaps:
        if is_record(snap):
            continue
        key = target_key(snap.get("tags") or []) or f"untagged (host {snap.get('hostname')})"
        counts[key] = counts.get(key, 0) + 1
    return counts


def inspect(url: str, root: Root, env: Mapping[str, str], options: list[str]) -> Found:
    """List one repository's snapshots and read its newest record."""
    found = Found(url)
    renv = {**env, "RESTIC_REPOSITORY": url}
    code, out, err = _restic(["snapshots", "--json", "--no-lock"], renv, options)
    if code != 0:
        found.problems.append(_why(code, err))
        return found
    try:
        snaps = json.loads(out) or []
    except ValueError:
        found.problems.append("restic listed its snapshots in a form not understood")
        return found
    found.targets = _tally(snaps)
    records = sorted((s for s in snaps if is_record(s)), key=lambda s: str(s.get("time")))
    if not records:
        found.problems.append(
            "holds no Repository record (its last backup ran before Stash kept one)"
        )
        return found
    newest = records[-1]
    found.recorded_at = str(newest.get("time"))
    dump = ["dump", "--no-lock", "--", str(newest.get("id")), f"/{REPOSITORY_RECORD_FILE}"]
    code, text, err = _restic(dump, renv, options, RECORD_LIMIT)
    if code != 0:
        found.problems.append(f"its Repository record {_why(code, err)}")
        return found
    manifest, problem = check_record(text, url, root, found.targets)
    found.record = manifest
    if problem:
        found.problems.append(problem)
    return found


# --------------------------------------------------------------------------- the record


def _error_text(errors: list[ResourceError]) -> str:
    return "; ".join(str(e) for e in errors[:5])


def check_record(
    text: str, url: str, root: Root, targets: Mapping[str, int]
) -> tuple[dict[str, Any] | None, str | None]:
    """The Repository manifest a record holds, or why it is not to be used."""
    where = f"the Repository record ({REPOSITORY_RECORD_FILE}) of {url}"
    if len(text.encode()) > RECORD_LIMIT:
        return None, f"{where} is larger than {RECORD_LIMIT >> 10} KiB; not read"
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return None, f"{where} is malformed: not JSON ({str(exc)[:80]})"
    try:
        parsed = parse_document(doc, where)
    except RecursionError:
        return None, f"{where} is malformed: nested too deep"
    if isinstance(parsed, list):
        return None, f"{where} is not a valid Repository: {_error_text(parsed)}"
    if not isinstance(parsed, Repository):
        return None, f"{where} is not a Repository (kind {str(doc.get('kind'))[:40]!r})"
    manifest = repository_manifest(parsed)
    ident = f"Repository {manifest['metadata']['namespace']}/{parsed.metadata.name}"
    problem = _location_problem(parsed, url, root) or _namespace_problem(parsed, targets)
    if problem:
        return None, f"{where} names {ident}, but {problem}; not used"
    return manifest, None


def _location_problem(repo: Repository, url: str, root: Root) -> str | None:
    """A record must describe the place it was found: otherwise recreating it would
    point backups at another backend (or another tenant's folder)."""
    backend = repo.spec.backend
    if root.kind == "local":
        local = backend.local
        if local is None:
            return f"its spec.backend is {backend.kind}, and it was found in a local folder"
        if local.host_path is None:
            return None  # an nfs or claim volume: where the admin mounted it is unknown
        base = posixpath.join(local.host_path.path, local.sub_path or "")
        inside = url == base.rstrip("/") or url.startswith(base.rstrip("/") + "/")
        return None if inside else f"its spec.backend.local is {base}, not above {url}"
    if root.kind == "s3":
        s3 = backend.s3
        if s3 is None:
            return f"its spec.backend is {backend.kind}, and it was found in S3"
        host = (s3.endpoint or "s3.amazonaws.com").split("://")[-1].rstrip("/")
        if host != root.endpoint.split("://", 1)[1]:
            return f"its spec.backend.s3.endpoint is {host}, not {root.endpoint}"
        base = posixpath.join(s3.bucket, s3.prefix or "").rstrip("/")
        path = _s3_path(url)
        inside = path == base or path.startswith(base + "/")
        return None if inside else f"its spec.backend.s3 is {base}, not above {path}"
    return None


def _s3_path(url: str) -> str:
    """``bucket/prefix/...`` of ``s3:[scheme://]host/bucket/prefix/...``."""
    rest = url.removeprefix("s3:").split("://", 1)[-1]
    return rest.partition("/")[2]


def _namespace_problem(repo: Repository, targets: Mapping[str, int]) -> str | None:
    """Stash tags every backup with its namespace: a record naming a namespace whose
    backups the repository does not hold (and that it does not allow) is not this
    repository's."""
    namespaces = sorted(
        {
            k.split(",", 1)[0].removeprefix("namespace=")
            for k in targets
            if k.startswith("namespace=")
        }
    )
    stranger = [ns for ns in namespaces if not repo.allows(ns)]
    if stranger:
        held = ", ".join(stranger)
        return f"the repository holds backups of namespace {held}, which it does not allow"
    return None


# --------------------------------------------------------------------------- everything


@dataclass
class Discovery:
    found: list[Found]
    objects: dict[tuple[str, str], dict[str, Any]]
    """The Repository manifests to recreate, by (namespace, name)."""
    conflicts: list[str]

    @property
    def failed(self) -> bool:
        return bool(self.conflicts) or any(
            p for f in self.found for p in f.problems if "holds no Repository record" not in p
        )


def _merge(found: list[Found]) -> tuple[dict[tuple[str, str], dict[str, Any]], list[str]]:
    """One manifest per Repository; two different records of one are a conflict and
    neither is used (one of them may be planted)."""
    seen: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {}
    for f in found:
        if f.record is not None:
            meta = f.record["metadata"]
            seen.setdefault((meta["namespace"], meta["name"]), []).append((f.url, f.record))
    objects, conflicts = {}, []
    for key, records in sorted(seen.items()):
        variants = {json.dumps(r, sort_keys=True) for _, r in records}
        if len(variants) == 1:
            objects[key] = records[0][1]
        else:
            places = ", ".join(u for u, _ in records)
            conflicts.append(
                f"Repository {key[0]}/{key[1]} is recorded differently in {places}; "
                "not recreated (compare them and write it by hand)"
            )
    return objects, conflicts


def discover(url: str, env: Mapping[str, str]) -> Discovery:
    """Find and read every repository under ``url`` with the credentials in ``env``."""
    if not env.get(PASSWORD_KEY):
        raise DiscoverError(f"{PASSWORD_KEY} is needed (in the environment or --secret)")
    root = parse_root(url)
    work = dict(env)
    with credential_files(work) as options:
        locations = repository_locations(root, work)
        found = [inspect(loc, root, work, options) for loc in locations]
    objects, conflicts = _merge(found)
    return Discovery(found, objects, conflicts)


def secret_env(path: Path | None, environ: Mapping[str, str]) -> dict[str, str]:
    """restic's environment: this process's, with the storage Secret's keys from the
    manifest at ``path`` (when given) on top."""
    env = dict(environ)
    if path is None:
        return env
    from .source import load_directory

    resources = load_directory(path)
    if resources.errors:
        raise DiscoverError(f"--secret {path}: {resources.errors[0]}")
    if len(resources.secrets) != 1:
        raise DiscoverError(f"--secret {path}: expected one Secret, found {len(resources.secrets)}")
    secret = next(iter(resources.secrets.values()))
    for key in SECRET_KEYS:
        value = secret.value(key)
        if value is not None:
            env[key] = value
    return env


# --------------------------------------------------------------------------- output


def report_lines(discovery: Discovery) -> Iterator[str]:
    """What was found, repository by repository (no secret: URLs as given, counts)."""
    if not discovery.found:
        yield "no restic repository found"
    for f in discovery.found:
        yield f"{f.url}: {f.snapshot_count} backup snapshot(s)"
        for key, count in sorted(f.targets.items()):
            yield f"  target {key}: {count} snapshot(s)"
        if f.record is not None:
            meta, backend = f.record["metadata"], f.record["spec"]["backend"]
            yield (
                f"  records Repository {meta['namespace']}/{meta['name']} (Secret "
                f"{meta['namespace']}/{backend.get('storageSecretName', '-')}, "
                f"recorded {f.recorded_at})"
            )
        for problem in f.problems:
            yield f"  {'note' if 'holds no Repository record' in problem else 'error'}: {problem}"
    for conflict in discovery.conflicts:
        yield f"error: {conflict}"


def manifest_file_name(namespace: str, name: str) -> str:
    """Namespaces hold no dot, so ``repository.NS.NAME.yaml`` is unique per object."""
    return f"repository.{namespace}.{name}.yaml"


def apply_objects(
    objects: Mapping[tuple[str, str], dict[str, Any]],
    namespaces: set[str],
    custom_api: Any,
    core_api: Any,
) -> tuple[list[str], bool]:
    """Create the Repositories of the namespaces the admin named; an existing one is
    never replaced. Returns one line per object and whether all went as asked."""
    from kubernetes.client.exceptions import ApiException

    lines, ok = [], True
    for (ns, name), manifest in sorted(objects.items()):
        ident = f"Repository {ns}/{name}"
        if ns not in namespaces:
            lines.append(f"{ident}: skipped (namespace {ns} was not given with --namespace)")
            continue
        try:
            current = current_object(custom_api, "repositories", ns, name)
        except ApiException as exc:
            lines.append(f"{ident}: cannot be read (HTTP {exc.status})")
            ok = False
            continue
        if current is not None:
            same = current.get("spec") == manifest["spec"]
            lines.append(
                f"{ident}: exists, {'unchanged' if same else 'with another spec: left as it is'}"
            )
            ok = ok and same
            continue
        try:
            custom_api.create_namespaced_custom_object(GROUP, VERSION, ns, "repositories", manifest)
        except ApiException as exc:
            lines.append(f"{ident}: not created (HTTP {exc.status}: {exc.reason})")
            ok = False
            continue
        lines.append(f"{ident}: created" + _secret_note(core_api, ns, manifest))
    return lines, ok


def _secret_note(core_api: Any, ns: str, manifest: dict[str, Any]) -> str:
    """Whether the Secret the object names exists (its content is never read)."""
    from kubernetes.client.exceptions import ApiException

    secret = manifest["spec"]["backend"].get("storageSecretName")
    if not secret:
        return ""
    try:
        reply = core_api.read_namespaced_secret(secret, ns, _preload_content=False)
        reply.release_conn()
    except ApiException as exc:
        if exc.status == 404:
            return (
                f"; its Secret {ns}/{secret} does not exist yet: create it before the next backup"
            )
        return f"; its Secret {ns}/{secret} could not be checked (HTTP {exc.status})"
    return ""


__all__ = [
    "DiscoverError",
    "Discovery",
    "Found",
    "REPOSITORY_RECORD_TAG",
    "apply_objects",
    "check_record",
    "discover",
    "manifest_file_name",
    "parse_root",
    "report_lines",
    "secret_env",
]
