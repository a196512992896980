"""The public surface of ``banana2_async``: its sorted ``__all__``, ``__version__``, what importing it loads."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import banana2_async
from banana2_async import _exceptions, _version

# Changing this list changes the public API: do it on purpose, here.
PUBLIC = [
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


def _isort_key(name: str) -> tuple[int, str]:
    if name.isupper():
        return (0, name)
    if name[0].isupper():
        return (1, name)
    return (2, name)


def test_all_is_pinned() -> None:
    """``__all__`` is exactly the pinned list: nothing appears or disappears by accident."""
    assert banana2_async.__all__ == PUBLIC


def test_all_is_sorted() -> None:
    """``__all__`` is sorted isort-style (constants, classes, then the rest), as ruff's RUF022 keeps it."""
    assert banana2_async.__all__ == sorted(banana2_async.__all__, key=_isort_key)
    assert len(set(banana2_async.__all__)) == len(banana2_async.__all__)


def test_every_public_name_resolves() -> None:
    """Each name in ``__all__`` is importable from the package."""
    for name in banana2_async.__all__:
        assert getattr(banana2_async, name) is not None, name


def test_every_error_of_the_tree_is_public() -> None:
    """Every error class of ``_exceptions`` that the package exports is the very same class."""
    for name in banana2_async.__all__:
        if hasattr(_exceptions, name):
            assert getattr(banana2_async, name) is getattr(_exceptions, name)


def test_version() -> None:
    """``__version__`` is a PEP 440 release string, the one in ``_version.py`` and the installed metadata."""
    version = banana2_async.__version__
    assert isinstance(version, str)
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?", version)
    assert version == _version.__version__
    assert importlib.metadata.version("banana2-async") == version


def test_package_is_typed() -> None:
    """The package ships ``py.typed``, so type checkers use its annotations."""
    assert (Path(banana2_async.__file__).parent / "py.typed").is_file()


def test_importing_the_client_defers_the_models_and_bulk_runs() -> None:
    """``from banana2_async import AsyncBanana2`` loads no pydantic model, sqlite3 or memory stream yet.

    Those load with the first request, bulk run or poller that needs them, so
    a program (or a CLI's ``--help``) that imports the SDK does not pay for
    them up front; B4 of the benchmarks measures what that is worth.
    """
    probe = textwrap.dedent(
        """
        import json, sys
        from banana2_async import AsyncBanana2
        print(json.dumps(sorted(sys.modules)))
        """
    )
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = set(json.loads(output.stdout))
    assert "banana2_async._client" in loaded
    deferred = {"banana2_async._models", "pydantic.main", "sqlite3", "banana2_async._batch", "anyio.streams.memory"}
    assert not loaded & deferred
