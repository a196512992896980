"""A task as the simulator runs it: when it finishes, what each poll reports, how it ends."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Final

from ._validation import GenerateBody

__all__ = ["RESULT_URL", "Task"]

RESULT_URL: Final = object()
"""What a task that succeeds shows in ``response`` unless a fault says otherwise: its result URL."""


class Task:
    """One task as the simulator runs it: its request, its times, and how it ends."""

    __slots__ = (
        "api_key",
        "created",
        "created_at",
        "echo",
        "failure",
        "finished_at",
        "interim",
        "request",
        "response",
        "task_id",
    )

    def __init__(self, task_id: str, api_key: str, request: GenerateBody, created: float, finished_at: float) -> None:
        self.task_id = task_id
        self.api_key = api_key
        self.request = request
        self.created = created
        self.finished_at = finished_at
        self.created_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.failure: tuple[str, str] | None = None
        self.interim: tuple[str, ...] = ()
        self.response: Any = RESULT_URL
        # The caller's key as the failure message writes it, where a fault made it echo the key.
        self.echo: bytes | None = None

    def status(self, now: float) -> str:
        """What a poll at ``now`` reports."""
        if now >= self.finished_at:
            return self.failure[0] if self.failure else "SUCCESS"
        if self.interim:
            # The interim statuses and IN_PROGRESS share the running time equally.
            share = (now - self.created) / (self.finished_at - self.created)
            step = int(share * (len(self.interim) + 1))
            if step < len(self.interim):
                return self.interim[step]
        return "IN_PROGRESS"

    def extension(self) -> str:
        """The output format, which is also the result file's extension."""
        return self.request.output_format
