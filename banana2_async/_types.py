"""Small shared types: the ``NOT_GIVEN`` sentinel and the documented value sets."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "ASPECT_RATIOS",
    "DEFAULT_BATCH_CONCURRENCY",
    "DEFAULT_DOWNLOAD_MAX_BYTES",
    "DEFAULT_DOWNLOAD_RETRIES",
    "DEFAULT_DOWNLOAD_TIMEOUT",
    "NOT_GIVEN",
    "OUTPUT_FORMATS",
    "RESOLUTIONS",
    "TASK_TYPES",
    "AspectRatio",
    "ClientStatistics",
    "NotGiven",
    "OutputFormat",
    "Resolution",
    "TaskType",
]


class NotGiven(enum.Enum):
    """Marks an argument the caller did not pass, where ``None`` means something else."""

    NOT_GIVEN = enum.auto()

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> Literal[False]:
        return False


NOT_GIVEN: Final = NotGiven.NOT_GIVEN

TaskType = Literal["text-to-image", "edit"]
AspectRatio = Literal["1:1", "3:2", "2:3", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"]
Resolution = Literal["1k", "2k", "4k"]
OutputFormat = Literal["png", "jpeg"]

TASK_TYPES: Final[tuple[TaskType, ...]] = ("text-to-image", "edit")
ASPECT_RATIOS: Final[tuple[AspectRatio, ...]] = (
    "1:1",
    "3:2",
    "2:3",
    "3:4",
    "4:3",
    "4:5",
    "5:4",
    "9:16",
    "16:9",
    "21:9",
)
RESOLUTIONS: Final[tuple[Resolution, ...]] = ("1k", "2k", "4k")
OUTPUT_FORMATS: Final[tuple[OutputFormat, ...]] = ("png", "jpeg")

# Defaults of bulk runs and downloads, here so the client's signatures need not import those modules.
DEFAULT_BATCH_CONCURRENCY: Final = 8
DEFAULT_DOWNLOAD_MAX_BYTES: Final = 64 * 1024 * 1024
DEFAULT_DOWNLOAD_RETRIES: Final = 3
# Seconds one download attempt may take, from connecting to the last byte.
DEFAULT_DOWNLOAD_TIMEOUT: Final = 300.0


@dataclass(frozen=True)
class ClientStatistics:
    """A snapshot of what one client is doing and has done (`AsyncBanana2.statistics`).

    Attributes:
        tasks_watched: Distinct tasks the poller watches now.
        handles_pending: Handles on them that have not settled.
        polls_sent: Status polls the poller has sent.
        poll_workers: Poll workers started so far (at most ``max_concurrent_polls``).
        submits_sent: ``POST /api/generate`` requests sent, retries included.
        retries: Requests sent again after a transient failure (submits and ``status()`` calls).
        rate_limit_pauses: Times a 429 paused every request of the client.
        pause_remaining: Seconds left of the current 429 pause (0 when none).
    """

    tasks_watched: int
    handles_pending: int
    polls_sent: int
    poll_workers: int
    submits_sent: int
    retries: int
    rate_limit_pauses: int
    pause_remaining: float
