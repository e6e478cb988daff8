"""A BackupAgent's ``commands``, made safe to run with values from tenants' objects.

The specification writes an agent's commands as shell lines (its ``mysqldump``
sample: ``mysqldump -u ${DB_USER} ... "$@" | restic -r {{RepoName}} backup``) or as
one command split into items (its ``stash`` sample: ``backup``, ``--restic-name=...``).
The text comes only from the cluster-scoped BackupAgent, written by the administrator.
Every value that comes from a namespaced object (names, paths, hosts, repository URL,
credentials) reaches the command only as an environment variable or a positional
argument (``"$@"``), never spliced into the text:

- ``{{Name}}`` placeholders become a double-quoted reference to the variable they
  stand for (``{{RepoName}}`` -> ``"${RESTIC_REPOSITORY}"``);
- ``$VAR`` and ``${VAR}`` written outside quotes are quoted too, so a value is one
  word and never splits into options;
- every variable a command refers to must be one the target provides (a validation
  error names the agent and the command otherwise);
- ``"$@"`` is the arguments Stash planned for the step (for the default agent, the
  ``stash-agent`` arguments: restic commands, paths, tags).

Items starting with ``-`` continue the previous item's line (the ``stash`` sample); a
line that is a plain command (words, and ``"$@"``) runs directly, keeping the image's
entrypoint in a pod; anything else runs as ``bash -c`` with ``set -euo pipefail``, so a
failed dump in a pipe fails the step.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from ..protocol import AGENT
from .model import PlanError, Step

PLACEHOLDERS: Mapping[str, str] = {
    "RepoName": "RESTIC_REPOSITORY",
    "Namespace": "STASH_NAMESPACE",
    "Name": "STASH_NAME",
    "Target": "STASH_TARGET",
    "Hostname": "STASH_HOST",
    "RepoDir": "STASH_REPO_DIR",
    "Snapshot": "STASH_SNAPSHOT",
}
"""``{{Placeholder}}`` -> the environment variable it stands for."""

DEFAULT_COMMAND = f'{AGENT} "$@"'
"""What the default ``stash`` agent runs for every operation."""

SHELL = ("bash", "-c")
SHELL_PREAMBLE = "set -euo pipefail\n"
SCRIPT_NAME = "stash-agent-command"
"""``$0`` of a shell-form command (what error messages of the shell name)."""

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z][A-Za-z0-9]*)\s*\}\}")
_SPECIAL_PARAMS = frozenset("@*#?$!-0123456789")
_PLAIN = re.compile(r"""^[^|&;<>()$`\\'"*?\[\]{}~\n#]*$""")


@dataclass(frozen=True)
class Rendered:
    argv: tuple[str, ...]
    keep_entrypoint: bool
    """A plain command runs as the container's ``args`` (the image's entrypoint stays,
    as Kubernetes does for ``args``); a shell command is the container's ``command``."""
    variables: frozenset[str]
    """The variables the command refers to (Stash provides them in the environment)."""


def join_items(items: Sequence[str]) -> list[str]:
    """One line per command: an item starting with ``-`` continues the line before it."""
    lines: list[str] = []
    for item in items:
        if lines and item.lstrip().startswith("-"):
            lines[-1] += " " + item.strip()
        else:
            lines.append(item.strip())
    return [ln for ln in lines if ln]


def _quote_expansions(line: str, where: str) -> tuple[str, set[str]]:
    """Quote every unquoted ``$VAR``/``${VAR}``, turn placeholders into quoted
    references, and collect the variables referred to."""
    out: list[str] = []
    names: set[str] = set()
    i, n = 0, len(line)
    quote: str | None = None
    while i < n:
        c = line[i]
        placeholder = _PLACEHOLDER.match(line, i)
        if placeholder:
            key = placeholder.group(1)
            if key not in PLACEHOLDERS:
                known = ", ".join(f"{{{{{k}}}}}" for k in PLACEHOLDERS)
                raise PlanError(where, f"unknown placeholder {{{{{key}}}}} (known: {known})")
            if quote == "'":
                raise PlanError(where, f"placeholder {{{{{key}}}}} inside single quotes")
            var = PLACEHOLDERS[key]
            names.add(var)
            out.append(f"${{{var}}}" if quote == '"' else f'"${{{var}}}"')
            i = placeholder.end()
            continue
        if quote == "'":
            out.append(c)
            quote = None if c == "'" else quote
            i += 1
            continue
        if c == "\\" and i + 1 < n:
            out.append(line[i : i + 2])
            i += 2
            continue
        if c in "'\"":
            if quote is None:
                quote = c
            elif quote == c:
                quote = None
            out.append(c)
            i += 1
            continue
        if c == "$" and i + 1 < n:
            ref = re.match(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))", line[i:])
            if ref:
                var = ref.group(1) or ref.group(2)
                names.add(var)
                out.append(f"${{{var}}}" if quote == '"' else f'"${{{var}}}"')
                i += ref.end()
                continue
            special = line[i + 1]
            if special in "@*" and quote is None:  # keep each argument one word
                out.append(f'"${special}"')
                i += 2
                continue
            if special == "{" or special not in _SPECIAL_PARAMS and special != "(":
                raise PlanError(
                    where, f"cannot read the variable reference at {line[i : i + 12]!r}"
                )
        out.append(c)
        i += 1
    if quote is not None:
        raise PlanError(where, f"unterminated {quote} quote")
    return "".join(out), names


def _plain_words(line: str) -> list[str] | None:
    """The words of a plain command (no shell syntax but a trailing ``"$@"``)."""
    head, sep, tail = line.rpartition('"$@"')
    body = head if sep and not tail.strip() else line
    if not _PLAIN.match(body):
        return None
    words = shlex.split(body)
    if words and "=" in words[0]:  # a shell would read it as an assignment
        return None
    return [*words, '"$@"'] if sep and not tail.strip() else words


def render(
    items: Sequence[str], args: Sequence[str], provided: Iterable[str], where: str
) -> Rendered:
    """The argv that runs an agent's ``commands`` with ``args`` as ``"$@"``.

    ``provided`` are the variables the step's target sets; ``where`` names the
    BackupAgent field for errors."""
    lines = join_items(items)
    if not lines:
        raise PlanError(where, "no command")
    if len(lines) == 1:
        words = _plain_words(lines[0])
        if words is not None:
            argv: list[str] = []
            for w in words:
                argv += list(args) if w == '"$@"' else [w]
            return Rendered(tuple(argv), True, frozenset())
    script_lines = []
    names: set[str] = set()
    for index, line in enumerate(lines):
        quoted, used = _quote_expansions(line, f"{where}[{index}]")
        script_lines.append(quoted)
        names |= used
    unknown = sorted(v for v in names if v not in set(provided))
    if unknown:
        raise PlanError(
            where,
            f"refers to {', '.join('$' + v for v in unknown)}, which this target does not "
            f"provide (it provides: {', '.join(sorted(provided))})",
        )
    script = SHELL_PREAMBLE + "\n".join(script_lines)
    return Rendered((*SHELL, script, SCRIPT_NAME, *args), False, frozenset(names))


@dataclass(frozen=True)
class Agent:
    """The BackupAgent a Restic or Recovery names, as planning needs it."""

    name: str
    image: str | None
    """None: the default agent image (``[stash] agent_image``)."""
    commands: Mapping[str, tuple[str, ...]]
    """Operation (``backup``, ``recovery``) -> command items; empty: ``stash-agent "$@"``."""


DEFAULT_AGENT = Agent("stash", None, {})


def agent_step(step: Step, agent: Agent, operation: str, values: Mapping[str, str]) -> Step:
    """``step`` (planned for the default agent) as ``agent`` runs it.

    An agent's commands take over the operations they name, in the agent's image. An
    agent without commands is an image of the default agent: every step runs in it.
    Steps an agent with commands does not name (retention, verify) stay with the
    default agent, whose image has restic and ``stash-agent``. A command the target
    cannot run is an error of the field that names the agent (``spec.recoveryAgent``
    for a recovery, ``spec.backupAgent`` otherwise)."""
    items = agent.commands.get(operation)
    if not items:
        return replace(step, image=None if agent.commands else agent.image)
    provided = {k for k, _ in step.env} | {s.name for s in step.secret_env} | set(values)
    where = f"BackupAgent {agent.name}: spec.commands.{operation}"
    assert step.argv[:1] == (AGENT,), step.argv
    try:
        rendered = render(items, step.argv[1:], provided, where)
    except PlanError as exc:
        owner = "spec.recoveryAgent" if operation == "recovery" else "spec.backupAgent"
        raise PlanError(owner, f"{exc.field}: {exc}") from None
    extra = tuple((k, v) for k, v in sorted(values.items()) if k in rendered.variables)
    return replace(
        step,
        argv=rendered.argv,
        keep_entrypoint=rendered.keep_entrypoint,
        env=(*step.env, *extra),
        image=agent.image,
    )


_RESTIC_BACKUP = re.compile(r"\brestic\b[^|;&]*?\bbackup\b(?P<rest>[^|;&]*)")
_RESTIC_RESTORE = re.compile(r"\brestic\b[^|;&]*?\brestore\b[^|;&]*\|")
_SECRET_VARIABLE = re.compile(
    r"\$\{?(?P<name>(?:DB_PASSWORD|RESTIC_PASSWORD|PGPASSWORD|MYSQL_PWD|REDISCLI_AUTH))\}?"
)
_ASSIGNED = re.compile(r"(?:^|[\s;&|(])(?:export\s+)?[A-Za-z_][A-Za-z0-9_]*=\S*$")


def database_command_problems(items: Sequence[str], operation: str) -> list[str]:
    """Why a BackupAgent's shell commands cannot back up or restore a database, with
    the fix: the checks the specification's ``mysqldump`` sample fails.

    - ``restic backup`` without ``--stdin`` ignores the dump piped into it and backs up
      the files its arguments name (here: the arguments of ``"$@"``);
    - ``restic restore`` writes files, not standard output, so nothing reaches the pipe;
    - a password variable as a command argument (``--password=${DB_PASSWORD}``) is
      visible to anyone who runs ``ps`` on the node; only ``NAME=$VAR`` assignments
      (environment) are accepted.
    """
    problems = []
    for index, line in enumerate(join_items(items)):
        where = f"[{index}]"
        if operation == "backup":
            found = _RESTIC_BACKUP.search(line)
            if found and "--stdin" not in found.group("rest"):
                problems.append(
                    f"{where} runs `restic backup` without --stdin, so restic ignores the "
                    'dump piped into it; pipe the dump into `stash-agent "$@"` instead (it '
                    "runs restic backup --stdin with this target's host and tags and removes "
                    "the snapshot of a dump that did not finish)"
                )
        if operation == "recovery" and _RESTIC_RESTORE.search(line):
            problems.append(
                f"{where} pipes `restic restore`, which writes files and nothing to its "
                "output; leave spec.commands.recovery out (the default agent streams "
                "`restic dump` into the database) or use `restic dump`"
            )
        for ref in _SECRET_VARIABLE.finditer(line):
            if not _ASSIGNED.search(line[: ref.start()]):
                problems.append(
                    f"{where} puts ${ref.group('name')} on the command line, where `ps` "
                    "shows it to every user of the node; drop it: the MySQL and MariaDB "
                    "tools read MYSQL_PWD, PostgreSQL's PGPASSWORD and redis-cli "
                    "REDISCLI_AUTH, which Stash sets from the same Secret"
                )
                break
    return problems
