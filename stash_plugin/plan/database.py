"""Planning a database Restic (one backup plan per database accessor) and a database
Recovery.

A database is named by an ``AppRef`` (an AppBinding: engine, address, Secret) or a
``connectionURL`` (address in the URL, login in ``credentials``). Either way it
becomes a :class:`Endpoint`: engine, host, port, database and where the login comes
from. The agent receives them as environment variables (``DB_HOST``, ``DB_PORT``,
``DB_NAME``; ``DB_USER`` and ``DB_PASSWORD`` as Secret references), never as text of
a command, so a tenant's database name is only ever a name.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from ..api.appbinding import PASSWORD_KEY, USERNAME_KEY
from ..api.common import AppRef, ConnectionURL, RetentionPolicy
from ..api.resources import DatabaseAccessor, Recovery, Repository, Restic
from ..api.resourceset import ResourceSet
from ..protocol import AGENT, ALL_DATABASES, SEPARATOR
from . import naming
from .commands import Agent, agent_step, database_command_problems
from .model import BackupPlan, PlanError, RecoveryPlan, SecretEnv, Step, TargetRef
from .placement import Placement
from .recovery import recovery_plan, snapshot_ref
from .restic import agent_run, check_tag, forget_args, keep_last, snapshots_args, tag_list
from .volume import restic_schedule

SCHEMES = {
    "postgres": "postgres",
    "postgresql": "postgres",
    "mysql": "mysql",
    "mariadb": "mariadb",
    "redis": "redis",
}
"""URL scheme (or AppBinding type) -> engine."""
DEFAULT_PORTS = {"postgres": 5432, "mysql": 3306, "mariadb": 3306, "redis": 6379}
TOOL_PASSWORD = {"postgres": "PGPASSWORD", "mysql": "MYSQL_PWD", "mariadb": "MYSQL_PWD"}
"""The variable each engine's own tools read the password from (for a BackupAgent's
commands; the default agent hands it over itself). Redis tools read REDISCLI_AUTH."""
_HOSTNAME = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


@dataclass(frozen=True)
class Endpoint:
    """One database, resolved from an AppRef or a connection URL."""

    engine: str
    host: str
    port: int | None
    database: str
    """A database name, or ``all``."""
    user: str | None
    """A user named in the URL itself (not secret)."""
    secret: str | None
    user_key: str | None
    password_key: str | None
    target: str
    repo_dir: str
    restic_host: str
    kind: str | None
    """``AppBinding`` for an AppRef (the status entry's workloadKind)."""
    name: str
    """The AppBinding's name, or the URL's host (the status entry's workloadName)."""

    @property
    def everything(self) -> bool:
        return self.database == ALL_DATABASES

    @property
    def dump_file(self) -> str:
        return naming.dump_file(self.engine, self.database)

    @property
    def address(self) -> str:
        """``postgres://host:5432/app``, credentials never included."""
        port = f":{self.port}" if self.port else ""
        return f"{self.engine}://{self.host}{port}/{self.database}"

    def env(self) -> tuple[tuple[str, str], ...]:
        port = self.port or DEFAULT_PORTS[self.engine]
        out = [("DB_HOST", self.host), ("DB_PORT", str(port))]
        out.append(("DB_NAME", "" if self.engine == "redis" else self.database))
        if self.user and not self.user_key:
            out.append(("DB_USER", self.user))
        return tuple(out)

    def secret_env(self, tool_variables: bool) -> tuple[SecretEnv, ...]:
        if self.secret is None:
            return ()
        out = []
        if self.user_key:
            out.append(SecretEnv("DB_USER", self.secret, self.user_key))
        if self.password_key:
            out.append(SecretEnv("DB_PASSWORD", self.secret, self.password_key))
            if tool_variables:
                tool = TOOL_PASSWORD.get(self.engine, "REDISCLI_AUTH")
                out.append(SecretEnv(tool, self.secret, self.password_key))
        return tuple(out)


# --------------------------------------------------------------------------- resolving


def _engine(text: str, field: str) -> str:
    engine = SCHEMES.get(text.lower().rsplit("/", 1)[-1])
    if engine is None:
        raise PlanError(
            field,
            f"{text!r} names no database engine Stash backs up (postgres, mysql, mariadb, redis)",
        )
    return engine


def _host(host: str | None, field: str) -> str:
    if not host:
        raise PlanError(field, "the URL names no host")
    try:
        ipaddress.IPv4Address(host)
        return host
    except ValueError:
        pass
    if not _HOSTNAME.match(host):
        raise PlanError(field, f"{host!r} is not a host name or IPv4 address")
    return host


def _database(engine: str, from_url: str, given: str | None, field: str) -> str:
    if given and from_url and given != from_url:
        raise PlanError(field, f"database {given!r} differs from the URL's {from_url!r}")
    name = given or from_url
    if engine == "redis":
        if name and name != ALL_DATABASES and not name.isdigit():
            raise PlanError(
                field, "Redis is backed up whole (an RDB snapshot): leave database empty or 'all'"
            )
        return ALL_DATABASES
    if not name:
        raise PlanError(field, "name the database to back up, or 'all' for every database")
    if "\x00" in name:
        raise PlanError(field, "a database name cannot hold a NUL character")
    return name


@dataclass(frozen=True)
class _Url:
    engine: str
    host: str
    port: int | None
    database: str
    user: str | None


def _parse_url(url: str, field: str, engine: str | None = None) -> _Url:
    parts = urlsplit(url)
    engine = engine or _engine(parts.scheme or url, field)
    if parts.password:
        raise PlanError(
            field,
            "the URL holds a password, where anyone who can read the object sees it; put "
            "it in a Secret (credentials.secretName and passwordKey)",
        )
    try:
        port = parts.port
    except ValueError:
        raise PlanError(field, "the URL's port is not a number") from None
    return _Url(
        engine,
        _host(parts.hostname, field),
        port,
        unquote(parts.path.lstrip("/")),
        unquote(parts.username) if parts.username else None,
    )


def _same_namespace(other: str | None, ns: str, what: str, field: str) -> None:
    """A tenant reads databases and Secrets of its own namespace only."""
    if other and other != ns:
        raise PlanError(
            field,
            f"{what} is in namespace {other}, but this object is in {ns}; a Restic or "
            f"Recovery reaches databases and Secrets of its own namespace only",
        )


def _check_secret(
    resources: ResourceSet, check: bool, ns: str, secret: str, keys: list[str], field: str
) -> None:
    if not check:
        return
    found = resources.secrets.get((ns, secret))
    if found is None:
        raise PlanError(field, f"there is no Secret {ns}/{secret}")
    missing = [k for k in keys if k not in found.data]
    if missing:
        origin = resources.origin_of("Secret", ns, secret)
        where = f" ({origin})" if origin else ""
        raise PlanError(
            field,
            f"Secret {ns}/{secret}{where} has no key {', '.join(repr(k) for k in missing)}",
        )


def resolve_appref(
    ref: AppRef,
    ns: str,
    resources: ResourceSet,
    check_secrets: bool,
    prefix: str | None,
    field: str,
) -> Endpoint:
    _same_namespace(ref.namespace, ns, f"AppBinding {ref.namespace}/{ref.name}", field)
    if ref.kind not in (None, "AppBinding"):
        raise PlanError(f"{field}.kind", f"{ref.kind!r}: an AppRef names an AppBinding")
    binding = resources.appbindings.get((ns, ref.name))
    if binding is None:
        raise PlanError(field, f"AppBinding {ns}/{ref.name} not found (`stash sync` copies them)")
    if not binding.url:
        raise PlanError(field, f"{binding.ref} has no spec.clientConfig url or service")
    engine = _engine(binding.type, f"{field} ({binding.ref} spec.type)") if binding.type else None
    url = _parse_url(binding.url, f"{field} ({binding.ref} spec.clientConfig)", engine)
    database = _database(url.engine, url.database, None, field) if url.database else ALL_DATABASES
    if binding.secret_name:
        _check_secret(
            resources,
            check_secrets,
            ns,
            binding.secret_name,
            [USERNAME_KEY, PASSWORD_KEY],
            f"{field} ({binding.ref} spec.secret)",
        )
    target, repo_dir, host = naming.appbinding_target(binding.name, prefix)
    return Endpoint(
        engine=url.engine,
        host=url.host,
        port=url.port,
        database=database,
        user=url.user,
        secret=binding.secret_name,
        user_key=USERNAME_KEY if binding.secret_name else None,
        password_key=PASSWORD_KEY if binding.secret_name else None,
        target=target,
        repo_dir=repo_dir,
        restic_host=host,
        kind="AppBinding",
        name=binding.name,
    )


def resolve_url(
    conn: ConnectionURL,
    ns: str,
    resources: ResourceSet,
    check_secrets: bool,
    prefix: str | None,
    field: str,
) -> Endpoint:
    url = _parse_url(conn.url, f"{field}.url")
    database = _database(url.engine, url.database, conn.database, f"{field}.database")
    cred = conn.credentials
    if cred is not None:
        _same_namespace(
            cred.namespace,
            ns,
            f"Secret {cred.namespace}/{cred.secret_name}",
            f"{field}.credentials",
        )
        keys = [cred.password_key] + ([cred.user_key] if not url.user else [])
        _check_secret(resources, check_secrets, ns, cred.secret_name, keys, f"{field}.credentials")
    label = naming.database_host_label(url.host, url.port)
    target, repo_dir, host = naming.url_target(label, database, prefix)
    return Endpoint(
        engine=url.engine,
        host=url.host,
        port=url.port,
        database=database,
        user=url.user,
        secret=cred.secret_name if cred else None,
        user_key=cred.user_key if cred and not url.user else None,
        password_key=cred.password_key if cred else None,
        target=target,
        repo_dir=repo_dir,
        restic_host=host,
        kind=None,
        name=url.host,
    )


def resolve(
    accessor: DatabaseAccessor,
    ns: str,
    resources: ResourceSet,
    check_secrets: bool,
    prefix: str | None,
    field: str,
) -> Endpoint:
    if accessor.app_ref is not None:
        return resolve_appref(
            accessor.app_ref, ns, resources, check_secrets, prefix, f"{field}.AppRef"
        )
    assert accessor.connection_url is not None
    return resolve_url(
        accessor.connection_url, ns, resources, check_secrets, prefix, f"{field}.connectionURL"
    )


# --------------------------------------------------------------------------- backup


def _policy(restic: Restic) -> RetentionPolicy | None:
    spec = restic.spec
    assert spec.database_selector is not None
    name = spec.database_selector.retention_policy_name
    if not name:
        return None
    policies = {p.name: p for p in spec.retention_policies}
    if name not in policies:
        known = ", ".join(sorted(policies)) or "none defined"
        raise PlanError(
            "spec.databaseSelector.retentionPolicyName",
            f"no retention policy named {name!r} (known: {known})",
        )
    return policies[name]


def _checked_agent(agent: Agent, operation: str) -> None:
    """A BackupAgent's commands that cannot work for a database are named here, with
    what to do instead (the specification's own ``mysqldump`` sample is one)."""
    problems = database_command_problems(agent.commands.get(operation, ()), operation)
    if problems:
        raise PlanError(
            "spec.backupAgent" if operation == "backup" else "spec.recoveryAgent",
            f"BackupAgent {agent.name}: spec.commands.{operation} cannot work for a "
            f"database: " + "; ".join(problems),
        )


def plan_database_backups(
    restic: Restic,
    repository: Repository,
    resources: ResourceSet,
    placement: Placement,
    agent: Agent,
) -> list[BackupPlan]:
    spec = restic.spec
    assert spec.database_selector is not None
    ns = restic.metadata.namespace or "default"
    schedule = restic_schedule(restic)
    policy = _policy(restic)
    _checked_agent(agent, "backup")
    selector = spec.database_selector
    plans = []
    for i, accessor in enumerate(selector.accessors()):
        field = (
            f"spec.databaseSelector.databaseAccessors[{i}]"
            if selector.database_accessors
            else "spec.databaseSelector"
        )
        endpoint = resolve(accessor, ns, resources, placement.secrets_in_source, spec.prefix, field)
        plans.append(_plan_one(restic, repository, placement, agent, endpoint, schedule, policy))
    targets = [p.target.target for p in plans]
    dupes = sorted({t for t in targets if targets.count(t) > 1})
    if dupes:
        raise PlanError(
            "spec.databaseSelector.databaseAccessors",
            f"name the same database twice ({', '.join(dupes)})",
        )
    return plans


def _plan_one(
    restic: Restic,
    repository: Repository,
    placement: Placement,
    agent: Agent,
    endpoint: Endpoint,
    schedule: object,
    policy: RetentionPolicy | None,
) -> BackupPlan:
    ns, name = restic.metadata.namespace or "default", restic.metadata.name
    access = placement.repository(repository, endpoint.repo_dir)
    custom = "backup" in agent.commands
    path = "/" + endpoint.dump_file
    ref = TargetRef(
        type="Database",
        target=endpoint.target,
        repository_namespace=repository.metadata.namespace or "default",
        repository_name=repository.metadata.name,
        restic_namespace=ns,
        restic_name=name,
        repo_dir=endpoint.repo_dir,
        workload_kind=endpoint.kind,
        workload_name=endpoint.name,
    )
    settings = restic.spec.runtime_settings.model_dump(by_alias=True, exclude_defaults=True)
    subject = (
        f"Restic {ns}/{name}, {endpoint.address}, Repository {ref.repository_namespace}/"
        f"{ref.repository_name} at {access.url}"
    )

    def step(task_id: str, argv: tuple[str, ...], database: bool, tools: bool = False) -> Step:
        return Step(
            task_id,
            argv,
            ns,
            placement.runtime,
            (("RESTIC_REPOSITORY", access.url), *(endpoint.env() if database else ())),
            (*access.secret_env, *(endpoint.secret_env(tools) if database else ())),
            access.mounts,
            None,
            subject=subject,
            labels=(("restic", name), ("target", endpoint.target)),
            runtime_settings=settings,
        )

    tags = naming.snapshot_tags(ns, name, endpoint.target, path)
    for t in tags:
        check_tag(t)
    extra = [f"engine={endpoint.engine}", f"dump={'all' if endpoint.everything else 'one'}"]
    restic_backup = [
        "restic",
        "backup",
        "--json",
        "--quiet",
        f"--host={endpoint.restic_host}",
        f"--tag={tag_list(tags + extra)}",
        "--stdin",
        f"--stdin-filename={endpoint.dump_file}",
    ]
    argv = (
        AGENT,
        "dump",
        f"--engine={endpoint.engine}",
        "--init",
        "--unlock",
        *(("--stdin",) if custom else ()),
        SEPARATOR,
        path,
        *restic_backup,
    )
    values = {
        "STASH_NAMESPACE": ns,
        "STASH_NAME": name,
        "STASH_TARGET": endpoint.target,
        "STASH_HOST": endpoint.restic_host,
        "STASH_REPO_DIR": endpoint.repo_dir,
    }

    def as_agent_runs(s: Step, operation: str) -> Step:
        return agent_step(s, agent, operation, values)

    host = endpoint.restic_host
    backup = as_agent_runs(step("backup", argv, True, tools=custom), "backup")
    verify = as_agent_runs(
        step("verify", agent_run([(path, snapshots_args(host, tags))]), False), "verify"
    )
    retention = None
    if policy is not None:
        retention = as_agent_runs(
            step(
                "retention",
                agent_run([(path, forget_args(policy, host, tags))], "--unlock"),
                False,
            ),
            "retention",
        )
    description = (
        f"Backs up {endpoint.address} ({endpoint.engine} dump streamed into restic) into "
        f"Repository {ref.repository_namespace}/{ref.repository_name} ({access.url}) for "
        f"Restic {ns}/{name}."
    )
    return BackupPlan(
        dag_id=naming.backup_dag_id(ns, name, endpoint.target),
        target=ref,
        schedule=schedule,  # type: ignore[arg-type]
        paused=restic.spec.paused,
        tags=(
            "stash",
            "backup",
            f"namespace:{ns}",
            "type:database",
            f"engine:{endpoint.engine}",
            f"repository:{ref.repository_name}",
        ),
        description=description,
        backup=backup,
        retention=retention,
        verify=verify,
        snapshot_paths=(path,),
        runtime=placement.runtime,
        retention_keep_last=keep_last(policy) if policy is not None else None,
    )


# --------------------------------------------------------------------------- recovery


def plan_database_recovery(
    recovery: Recovery,
    repository: Repository,
    placement: Placement,
    agent: Agent,
    resources: ResourceSet,
) -> RecoveryPlan:
    spec = recovery.spec
    dr = spec.database_restorer
    assert dr is not None
    ns, name = recovery.metadata.namespace or "default", recovery.metadata.name
    _checked_agent(agent, "recovery")
    field = "spec.databaseRestorer.recoverTo"
    to = dr.recover_to
    check = placement.secrets_in_source
    if to.app_ref is not None:
        endpoint = resolve_appref(to.app_ref, ns, resources, check, None, f"{field}.AppRef")
    else:
        assert to.connection_url is not None
        endpoint = resolve_url(
            to.connection_url, ns, resources, check, None, f"{field}.connectionURL"
        )
    access = placement.repository(repository, dr.repo_dir)
    snapshot = snapshot_ref(dr.snapshot, "spec.databaseRestorer.snapshot")
    custom = "recovery" in agent.commands
    argv = [
        AGENT,
        "restore-database",
        f"--engine={endpoint.engine}",
        f"--snapshot={snapshot}",
        f"--tag=namespace={ns}",
    ]
    if dr.overwrite:
        argv.append("--overwrite")
    repo_ns = repository.metadata.namespace or "default"
    step = Step(
        "restore",
        tuple(argv),
        ns,
        placement.runtime,
        (("RESTIC_REPOSITORY", access.url), *endpoint.env()),
        (*access.secret_env, *endpoint.secret_env(custom)),
        access.mounts,
        None,
        subject=f"Recovery {ns}/{name}, {endpoint.address}, Repository {repo_ns}/"
        f"{repository.metadata.name} at {access.url}",
        labels=(("recovery", name),),
        runtime_settings=spec.runtime_settings.model_dump(by_alias=True, exclude_defaults=True),
    )
    values = {
        "STASH_NAMESPACE": ns,
        "STASH_NAME": name,
        "STASH_REPO_DIR": dr.repo_dir,
        "STASH_SNAPSHOT": snapshot,
        "STASH_SNAPSHOT_TAGS": f"namespace={ns}",
    }
    step = agent_step(step, agent, "recovery", values)
    return recovery_plan(
        recovery,
        repository,
        "database",
        extra_tags=(f"engine:{endpoint.engine}",),
        description=(
            f"Restores snapshot {snapshot} of {dr.repo_dir} in Repository {repo_ns}/"
            f"{repository.metadata.name} ({access.url}) into {endpoint.address} for "
            f"Recovery {ns}/{name}"
            + (", replacing what is there." if dr.overwrite else " (refused if not empty).")
        ),
        restore=step,
        paths=(dr.repo_dir,),
        runtime=placement.runtime,
    )
