"""banana2_async: the async Python SDK for the NanoBanana 2 image API.

One `AsyncBanana2` client submits many tasks concurrently; one shared poller
per client watches them all and resolves each `TaskHandle` with the result
image URLs.

Names are imported on first use: ``import banana2_async``, and the pytest
plugin that pytest loads in every run, stay cheap until a name is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

if TYPE_CHECKING:
    from ._batch import Batch as Batch
    from ._batch_outcome import BatchEvent as BatchEvent
    from ._batch_outcome import BatchOutcome as BatchOutcome
    from ._batch_plan import BatchPlan as BatchPlan
    from ._client import AsyncBanana2 as AsyncBanana2
    from ._client import ClientState as ClientState
    from ._exceptions import APIConnectionError as APIConnectionError
    from ._exceptions import APIResponseError as APIResponseError
    from ._exceptions import APIStatusError as APIStatusError
    from ._exceptions import APITimeoutError as APITimeoutError
    from ._exceptions import AuthenticationError as AuthenticationError
    from ._exceptions import BadRequestError as BadRequestError
    from ._exceptions import Banana2Error as Banana2Error
    from ._exceptions import BudgetExceededError as BudgetExceededError
    from ._exceptions import ClientClosedError as ClientClosedError
    from ._exceptions import ConfigurationError as ConfigurationError
    from ._exceptions import DownloadError as DownloadError
    from ._exceptions import EmptyResultError as EmptyResultError
    from ._exceptions import FailureKind as FailureKind
    from ._exceptions import InsufficientCreditsError as InsufficientCreditsError
    from ._exceptions import InternalServerError as InternalServerError
    from ._exceptions import InvalidRequestError as InvalidRequestError
    from ._exceptions import JournalError as JournalError
    from ._exceptions import NotFoundError as NotFoundError
    from ._exceptions import RateLimitError as RateLimitError
    from ._exceptions import ResultExpiredError as ResultExpiredError
    from ._exceptions import SubmissionUncertainError as SubmissionUncertainError
    from ._exceptions import TaskError as TaskError
    from ._exceptions import TaskFailedError as TaskFailedError
    from ._exceptions import TaskTimeoutError as TaskTimeoutError
    from ._handle import AsCompleted as AsCompleted
    from ._handle import TaskHandle as TaskHandle
    from ._models import GenerationRequest as GenerationRequest
    from ._models import GenerationResult as GenerationResult
    from ._models import TaskInfo as TaskInfo
    from ._options import BatchOptions as BatchOptions
    from ._options import ClientOptions as ClientOptions
    from ._options import EditOptions as EditOptions
    from ._options import TaskOptions as TaskOptions
    from ._sync import Banana2 as Banana2
    from ._sync_handles import SyncBatch as SyncBatch
    from ._sync_handles import SyncTaskHandle as SyncTaskHandle
    from ._types import NOT_GIVEN as NOT_GIVEN
    from ._types import ClientStatistics as ClientStatistics
    from ._types import NotGiven as NotGiven

_MODULES: dict[str, str] = {
    "AsyncBanana2": "._client",
    "Batch": "._batch",
    "BatchEvent": "._batch_outcome",
    "BatchOutcome": "._batch_outcome",
    "BatchPlan": "._batch_plan",
    "APIConnectionError": "._exceptions",
    "APIResponseError": "._exceptions",
    "APIStatusError": "._exceptions",
    "APITimeoutError": "._exceptions",
    "AuthenticationError": "._exceptions",
    "BadRequestError": "._exceptions",
    "Banana2Error": "._exceptions",
    "BudgetExceededError": "._exceptions",
    "ClientClosedError": "._exceptions",
    "ConfigurationError": "._exceptions",
    "DownloadError": "._exceptions",
    "EmptyResultError": "._exceptions",
    "FailureKind": "._exceptions",
    "BatchOptions": "._options",
    "EditOptions": "._options",
    "TaskOptions": "._options",
    "ClientOptions": "._options",
    "ClientState": "._client",
    "ClientStatistics": "._types",
    "InsufficientCreditsError": "._exceptions",
    "InternalServerError": "._exceptions",
    "InvalidRequestError": "._exceptions",
    "JournalError": "._exceptions",
    "NotFoundError": "._exceptions",
    "RateLimitError": "._exceptions",
    "ResultExpiredError": "._exceptions",
    "SubmissionUncertainError": "._exceptions",
    "TaskError": "._exceptions",
    "TaskFailedError": "._exceptions",
    "TaskTimeoutError": "._exceptions",
    "AsCompleted": "._handle",
    "TaskHandle": "._handle",
    "GenerationRequest": "._models",
    "GenerationResult": "._models",
    "TaskInfo": "._models",
    "Banana2": "._sync",
    "SyncBatch": "._sync_handles",
    "SyncTaskHandle": "._sync_handles",
    "NOT_GIVEN": "._types",
    "NotGiven": "._types",
}

__all__ = [
    "NOT_GIVEN",
    "APIConnectionError",
    "APIResponseError",
    "APIStatusError",
    "APITimeoutError",
    "AsCompleted",
    "AsyncBanana2",
    "AuthenticationError",
    "BadRequestError",
    "Banana2",
    "Banana2Error",
    "Batch",
    "BatchEvent",
    "BatchOptions",
    "BatchOutcome",
    "BatchPlan",
    "BudgetExceededError",
    "ClientClosedError",
    "ClientOptions",
    "ClientState",
    "ClientStatistics",
    "ConfigurationError",
    "DownloadError",
    "EditOptions",
    "EmptyResultError",
    "FailureKind",
    "GenerationRequest",
    "GenerationResult",
    "InsufficientCreditsError",
    "InternalServerError",
    "InvalidRequestError",
    "JournalError",
    "NotFoundError",
    "NotGiven",
    "RateLimitError",
    "ResultExpiredError",
    "SubmissionUncertainError",
    "SyncBatch",
    "SyncTaskHandle",
    "TaskError",
    "TaskFailedError",
    "TaskHandle",
    "TaskInfo",
    "TaskOptions",
    "TaskTimeoutError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
