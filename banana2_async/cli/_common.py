"""What every command shares: options, the client, exit codes, and turning errors into them."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final, NoReturn, TypeVar

import anyio
import click
from rich.console import Console

from banana2_async._client import AsyncBanana2
from banana2_async._exceptions import (
    AuthenticationError,
    Banana2Error,
    ConfigurationError,
    InvalidRequestError,
    JournalError,
)

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Output",
    "api_options",
    "configure_logging",
    "error_json",
    "make_client",
    "run_async",
]

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_CONFIG: Final = 3
EXIT_INTERRUPTED: Final = 130


class Output:
    """Where a command writes: results on stdout (text or ``--json``), progress on stderr only on a terminal."""

    __slots__ = ("as_json", "err", "out")

    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json
        self.out = Console(soft_wrap=True, highlight=False)
        self.err = Console(stderr=True, highlight=False)

    @property
    def live(self) -> bool:
        """Whether progress is shown: stderr is a terminal (or declares itself one with FORCE_COLOR)."""
        return self.err.is_terminal

    def json(self, document: object) -> None:
        """Print one JSON document on stdout."""
        click.echo(json.dumps(document, indent=2, ensure_ascii=False, default=str))

    def problem(self, message: str) -> None:
        """Say what went wrong, on stderr, as plain text."""
        self.err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)


def api_options(function: F) -> F:
    """The options of every command that talks to the API."""
    function = click.option(
        "--json", "as_json", is_flag=True, help="Print one machine-readable JSON document on stdout."
    )(function)
    function = click.option(
        "--poll-interval",
        type=click.FloatRange(min=0.001),
        default=None,
        metavar="SECONDS",
        help="Seconds between two polls of a task. Default: 2-3, jittered, as the API recommends.",
    )(function)
    function = click.option(
        "--base-url",
        envvar="BANANA2_BASE_URL",
        show_envvar=True,
        default=None,
        help="The API's address. Default: https://banana2api.com.",
    )(function)
    return click.option(
        "--api-key",
        envvar="BANANA2_API_KEY",
        show_envvar=True,
        default=None,
        show_default=False,
        help="Your API key. It is never printed.",
    )(function)


class _StderrHandler(logging.Handler):
    """Writes each record to ``sys.stderr`` as it is when the record comes (a test runner may swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def configure_logging(verbose: int) -> Callable[[], None]:
    """Send the SDK's log to stderr: errors only, warnings with ``-v``, everything with ``-vv``.

    Returns the function that undoes it, so the command leaves logging as it found it.
    """
    logger = logging.getLogger("banana2_async")
    handler = _StderrHandler({0: logging.ERROR, 1: logging.WARNING}.get(verbose, logging.DEBUG))
    handler.setFormatter(logging.Formatter("banana2: %(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    if verbose:
        logger.setLevel(handler.level)

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(previous)

    return restore


def make_client(api_key: str | None, base_url: str | None, poll_interval: float | None) -> AsyncBanana2:
    """The client of a command.

    Raises:
        ConfigurationError: no key, or an unusable base URL.
    """
    if not api_key or not api_key.strip():
        raise ConfigurationError("no API key: pass --api-key or set BANANA2_API_KEY")
    interval: float | tuple[float, float] = (2.0, 3.0) if poll_interval is None else poll_interval
    return AsyncBanana2(api_key=api_key, base_url=base_url or None, poll_interval=interval)


def error_json(exc: BaseException) -> dict[str, str]:
    """An error as JSON: its type and message."""
    return {"type": type(exc).__name__, "message": str(exc)}


def run_async(output: Output, main: Callable[[], Awaitable[int]], *, interrupted: str = "interrupted") -> NoReturn:
    """Run ``main`` on an event loop and exit with its status, or with the status its error calls for.

    0 all succeeded, 1 some failed, 2 usage (bad input, budget, journal),
    3 configuration or authentication, 130 interrupted (``interrupted`` is
    what to tell the user then).
    """
    try:
        code = anyio.run(main)
    except KeyboardInterrupt:
        output.problem(interrupted)
        code = EXIT_INTERRUPTED
    except (ConfigurationError, AuthenticationError) as exc:
        code = _report(output, exc, EXIT_CONFIG)
    except (InvalidRequestError, JournalError) as exc:
        code = _report(output, exc, EXIT_USAGE)
    except Banana2Error as exc:
        code = _report(output, exc, EXIT_FAILED)
    click.get_current_context().exit(code)


def _report(output: Output, exc: Banana2Error, code: int) -> int:
    output.problem(str(exc))
    if output.as_json:
        output.json({"error": error_json(exc), "exit_code": code})
    return code
