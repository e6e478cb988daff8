"""The local runtime: a step runs as a child process of the Airflow worker.

Same argv and same environment names as the pod would get. Secret values are read
from the Secrets of the resource source when the step runs (never at parse time, so
they never reach the serialised DAG).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..api.kubeobjects import Secret
from ..plan.model import Step
from ..protocol import AGENT, ENV_RESTIC_BINARY, ENV_RESULT_FILE, parse_error
from .errors import StepFailed

# What a child needs from the worker's environment: nothing else leaks into it
# (in particular no Airflow connection or variable passed in the environment).
_PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "XDG_CACHE_HOME", ENV_RESTIC_BINARY)
# A worker that reaches cloud storage only through a proxy: restic honours these.
_PROXY = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy")


def load_secrets(manifests_dir: Path) -> dict[tuple[str, str], Secret]:
    """The Secrets of the directory source, read through the same loader as the DAGs."""
    from ..source import load_directory

    return load_directory(manifests_dir).secrets


def resolve_secret_env(step: Step, secrets: Mapping[tuple[str, str], Secret]) -> dict[str, str]:
    """Values for ``step.secret_env``; errors name the Secret and key, never a value."""
    env: dict[str, str] = {}
    for ref in step.secret_env:
        ns = ref.namespace or step.namespace  # the Repository's, not the step's
        secret = secrets.get((ns, ref.secret))
        try:
            value = secret.value(ref.key) if secret else None
        except UnicodeDecodeError:
            raise StepFailed(
                step.task_id,
                1,
                f"key {ref.key!r} of Secret {ns}/{ref.secret} is not UTF-8 text",
                step.subject,
            ) from None
        if value is None:
            if ref.optional:
                continue
            what = f"key {ref.key!r} of " if secret else ""
            raise StepFailed(
                step.task_id, 1, f"missing {what}Secret {ns}/{ref.secret}", step.subject
            )
        env[ref.name] = value
    return env


_RUNNING: set[subprocess.Popen[str]] = set()
STOP_GRACE = 35.0
"""Seconds a step gets to stop cleanly (the agent gives restic 30 s to drop its lock)."""


def stop(proc: subprocess.Popen[str]) -> None:
    """Stop a step and everything it started: SIGINT first (restic removes its lock
    on SIGINT, the agent cleans up), then SIGKILL for whatever is left after
    ``STOP_GRACE`` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=STOP_GRACE)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def stop_all() -> None:
    """Stop every step this process runs (the task's ``on_kill``)."""
    for proc in list(_RUNNING):
        stop(proc)


def agent_argv(step: Step) -> list[str]:
    argv = list(step.argv)
    if argv and argv[0] == AGENT:
        return [sys.executable, "-m", "stash_plugin.agent", *argv[1:]]
    return argv


def redact(line: str, values: list[str]) -> str:
    for value in values:
        if value:
            line = line.replace(value, "***")
    return line


def run_process(
    step: Step,
    secrets: Mapping[tuple[str, str], Secret],
    emit: Callable[[str], None] = print,
    on_secret: Callable[[str], None] | None = None,
    extra_secret_env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``step`` to completion, streaming its (redacted) output to ``emit``; returns
    the agent's result document. ``on_secret`` is told every secret value first (the
    task masks them in its logs). ``extra_secret_env`` is environment the runtime
    adds (the Kubernetes API of a Cluster step), treated as secret like the rest."""
    secret_env = {**resolve_secret_env(step, secrets), **(extra_secret_env or {})}
    if on_secret is not None:
        for value in secret_env.values():
            on_secret(value)
    hidden = sorted((v for v in secret_env.values() if len(v) >= 3), key=len, reverse=True)
    with tempfile.TemporaryDirectory(prefix="stash-step-") as tmp:
        result_file = Path(tmp, "result.json")
        env = {k: os.environ[k] for k in (*_PASSTHROUGH, *_PROXY) if k in os.environ}
        # A BackupAgent's shell command calls `stash-agent` by name: the one installed
        # next to this Python, whatever PATH the worker was started with.
        here = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([here, env.get("PATH", os.defpath)])
        env.update(dict(step.env))
        env.update(secret_env)
        env[ENV_RESULT_FILE] = str(result_file)
        # No terminal and no standard input: nothing may ever wait for an answer. Its own
        # session, so that stopping it reaches every process it started.
        proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
            agent_argv(step),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        _RUNNING.add(proc)
        lines: list[str] = []
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = redact(raw.rstrip("\n"), hidden)
                lines.append(line)
                emit(line)
            code = proc.wait()
        except BaseException:  # a task timeout or a stopped task: stop the step first
            stop(proc)
            raise
        finally:
            _RUNNING.discard(proc)
        if code != 0:
            reason = parse_error("\n".join(lines)) or (lines[-1] if lines else None)
            raise StepFailed(step.task_id, code, reason, step.subject)
        return json.loads(result_file.read_text()) if result_file.exists() else {}  # type: ignore[no-any-return]
