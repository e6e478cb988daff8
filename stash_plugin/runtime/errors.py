"""Errors of the run-time layer."""

from __future__ import annotations


class StepFailed(RuntimeError):
    """A step exited non-zero; ``reason`` is the agent's own error line (secret-free)."""

    def __init__(self, task_id: str, exit_code: int, reason: str | None, subject: str = "") -> None:
        detail = f": {reason}" if reason else ""
        who = f" ({subject})" if subject else ""
        super().__init__(f"step {task_id}{who} failed with exit code {exit_code}{detail}")
        self.exit_code = exit_code
        self.reason = reason
