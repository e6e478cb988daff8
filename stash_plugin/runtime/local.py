"""The local runtime: a step runs as a child process of the Airflow worker.

Same argv and same environment names as the pod would get; Secret values are read
from the Secret manifests of the directory source at run time (never at parse time,
so they never reach the serialised DAG).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..api.kube import Secret
from ..plan.model import Step
from ..plan.restic import AGENT

# What a child needs from the worker's environment: nothing else leaks into it
# (in particular no Airflow connection or variable passed in the environment).
_PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "XDG_CACHE_HOME", "STASH_RESTIC_BINARY")


class StepFailed(RuntimeError):
    """A step exited non-zero; ``reason`` is the agent's own error line (secret-free)."""

    def __init__(self, task_id: str, exit_code: int, reason: str | None, subject: str = "") -> None:
        detail = f": {reason}" if reason else ""
        who = f" ({subject})" if subject else ""
        super().__init__(f"step {task_id}{who} failed with exit code {exit_code}{detail}")
        self.exit_code = exit_code
        self.reason = reason


@dataclass
class StepOutput:
    result: dict[str, Any]
    lines: list[str] = field(default_factory=list)


def resolve_secret_env(step: Step, secrets: Mapping[tuple[str, str], Secret]) -> dict[str, str]:
    """Values for ``step.secret_env``; errors name the Secret and key, never a value."""
    env: dict[str, str] = {}
    for ref in step.secret_env:
        secret = secrets.get((step.namespace, ref.secret))
        value = secret.value(ref.key) if secret else None
        if value is None:
            if ref.optional:
                continue
            what = f"key {ref.key!r} of " if secret else ""
            raise StepFailed(
                step.task_id, 1, f"missing {what}Secret {step.namespace}/{ref.secret}", step.subject
            )
        env[ref.name] = value
    return env


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


def run_step(
    step: Step,
    secrets: Mapping[tuple[str, str], Secret],
    emit: Callable[[str], None] = print,
) -> StepOutput:
    """Run ``step`` to completion, streaming its (redacted) output to ``emit``."""
    secret_env = resolve_secret_env(step, secrets)
    hidden = sorted((v for v in secret_env.values() if len(v) >= 3), key=len, reverse=True)
    with tempfile.TemporaryDirectory(prefix="stash-step-") as tmp:
        result_file = Path(tmp, "result.json")
        env = {k: os.environ[k] for k in _PASSTHROUGH if k in os.environ}
        env.update(dict(step.env))
        env.update(secret_env)
        env["STASH_RESULT_FILE"] = str(result_file)
        proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
            agent_argv(step),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        lines: list[str] = []
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = redact(raw.rstrip("\n"), hidden)
            lines.append(line)
            emit(line)
        code = proc.wait()
        if code != 0:
            reason = next(
                (
                    ln.split("error: ", 1)[1]
                    for ln in reversed(lines)
                    if "stash-agent: error: " in ln
                ),
                lines[-1] if lines else None,
            )
            raise StepFailed(step.task_id, code, reason, step.subject)
        result = json.loads(result_file.read_text()) if result_file.exists() else {}
    return StepOutput(result=result, lines=lines)
