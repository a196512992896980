"""Small shared types: the ``NOT_GIVEN`` sentinel and the documented value sets."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Literal

import httpx

__all__ = [
    "ASPECT_RATIOS",
    "DEFAULT_BASE_URL",
    "DEFAULT_BATCH_CONCURRENCY",
    "DEFAULT_DOWNLOAD_MAX_BYTES",
    "DEFAULT_DOWNLOAD_RETRIES",
    "DEFAULT_DOWNLOAD_TIMEOUT",
    "DEFAULT_NOT_FOUND_GRACE",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_SUBMIT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WAIT_TIMEOUT",
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

# Every default of the package, in one place: a client's options (collected in `_options.CLIENT_DEFAULTS`),
# bulk runs and downloads.
DEFAULT_BASE_URL: Final = "https://banana2api.com"
DEFAULT_WAIT_TIMEOUT: Final = 600.0
DEFAULT_NOT_FOUND_GRACE: Final = 10.0
# The most one request may take, from sending to the last byte of its answer.
DEFAULT_REQUEST_TIMEOUT: Final = 60.0
DEFAULT_SUBMIT_TIMEOUT: Final = 600.0
# httpx's timeouts of each request: of connecting, and of each read and write (seconds).
DEFAULT_TIMEOUT: Final = httpx.Timeout(30.0, connect=10.0)
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
