"""What every command shares: options, the client, exit codes, and turning errors into them."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import IO, Any, Final, NoReturn, TypeVar

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
from banana2_async._secret import Secret

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Output",
    "api_options",
    "cli_text",
    "configure_logging",
    "error_json",
    "make_client",
    "poll_option",
    "public_name",
    "run_async",
    "task_json",
]

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_CONFIG: Final = 3
EXIT_INTERRUPTED: Final = 130

_SURROGATES: Final = re.compile("[\ud800-\udfff]")
# The SDK's messages name its arguments; on the command line the same advice names the flags.
_AS_FLAGS: Final = (
    (re.compile(r"\bresubmit_uncertain=True\b"), "--resubmit-uncertain"),
    (re.compile(r"\bretry_failed=True\b"), "--retry-failed"),
    (re.compile(r"\bmax_credits=(\d+)"), r"--max-credits \1"),
    (re.compile(r"\bmax_credits\b"), "--max-credits"),
    (re.compile(r"use another journal path"), "use another --journal (or --out)"),
    (re.compile(r"within submit_timeout \(([^)]*)\)"), r"within \1"),
    (re.compile(r" \(max_concurrent_submits\)"), ""),
)
# Errors about what the user gave (a file, a flag, a key): their message says it all, without a class name.
_USAGE_ERRORS: Final = (ConfigurationError, InvalidRequestError, JournalError)


def cli_text(message: str) -> str:
    """An SDK message as the command line says it: flags where the SDK names its arguments."""
    for pattern, replacement in _AS_FLAGS:
        message = pattern.sub(replacement, message)
    return message


def public_name(exc: BaseException) -> str:
    """The name by which an error's class is imported: ``banana2_async.NotFoundError``, never a private module."""
    cls = type(exc)
    package = cls.__module__.split(".")[0]
    if package == "builtins":
        return cls.__qualname__
    if getattr(sys.modules.get(package), cls.__name__, None) is cls:
        return f"{package}.{cls.__name__}"
    return cls.__name__


class _Scrubbed:
    """A text stream that writes through to ``target()`` with the API key blanked out and lone surrogates
    replaced: text a server chose reaches the terminal whatever it holds."""

    __slots__ = ("_secret", "_target")

    def __init__(self, target: Callable[[], IO[str]], secret: Secret | None) -> None:
        self._target = target
        self._secret = secret

    def scrub(self, text: str) -> str:
        """``text`` as it may be shown."""
        if self._secret is not None:
            text = self._secret.redact_text(text)
        return _SURROGATES.sub("\ufffd", text)

    def write(self, text: str) -> int:
        self._target().write(self.scrub(text))
        return len(text)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return self._target().isatty()

    def fileno(self) -> int:
        return self._target().fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target(), name)


def _stdout() -> IO[str]:
    return sys.stdout


def _stderr() -> IO[str]:
    return sys.stderr


class Output:
    """Where a command writes: results on stdout (text or ``--json``), progress on stderr only on a terminal.

    ``secret`` (the API key) is blanked out of everything written, in any form, and so is it in the
    log lines of `configure_logging`. Once a command has a paid task, `submitted` records it: every
    way out of the command then names it (see `run_async`).
    """

    __slots__ = ("_stderr", "_stdout", "as_json", "err", "out", "task_id")

    def __init__(self, *, as_json: bool, secret: str | None = None) -> None:
        self.as_json = as_json
        # The same search as the wire's, in every spelling; a key too short to be a secret is not looked for.
        shown_key = Secret(secret.strip()) if secret and secret.strip().isascii() else None
        self._stdout = _Scrubbed(_stdout, shown_key)
        self._stderr = _Scrubbed(_stderr, shown_key)
        self.out = Console(file=self._stdout, soft_wrap=True, highlight=False)  # type: ignore[arg-type]
        self.err = Console(file=self._stderr, stderr=True, highlight=False)  # type: ignore[arg-type]
        self.task_id: str | None = None
        _active_scrubbers[:] = [self._stderr]

    @property
    def live(self) -> bool:
        """Whether progress is shown: stderr is a terminal (or declares itself one with FORCE_COLOR)."""
        return self.err.is_terminal

    def json(self, document: object) -> None:
        """Print one JSON document on stdout."""
        self._stdout.write(json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n")
        self._stdout.flush()

    def problem(self, message: str) -> None:
        """Say what went wrong, on stderr, as plain text."""
        self.err.print(f"error: {cli_text(message)}", markup=False, highlight=False, soft_wrap=True)

    def note(self, message: str) -> None:
        """A line on stderr, plain text, whatever stderr is."""
        self.err.print(message, markup=False, highlight=False, soft_wrap=True)

    def submitted(self, task_id: str) -> None:
        """Record the task a command paid for and name it on stderr, before waiting for it."""
        self.task_id = task_id
        self.note(f"task {task_id} submitted; waiting for it (if this stops: banana2 wait {task_id})")

    def paid_task_hint(self) -> None:
        """Say how to follow the recorded task, if any, after a command stopped short of its result."""
        if self.task_id is not None:
            self.note(
                f"task {self.task_id} was submitted and may be paid for; follow it with: banana2 wait {self.task_id}"
            )


# The stderr of the command running now, for its log handler: log records are written through it too.
_active_scrubbers: list[_Scrubbed] = []


def poll_option(function: F) -> F:
    """``--poll-interval``, for the commands that wait for tasks."""
    return click.option(
        "--poll-interval",
        type=click.FloatRange(min=0.001),
        default=None,
        metavar="SECONDS",
        help="Seconds between two polls of a task. Default: 2-3, jittered, as the API recommends.",
    )(function)


def api_options(function: F) -> F:
    """The options of every command that talks to the API: the key, the address, ``--json``."""
    function = click.option(
        "--json", "as_json", is_flag=True, help="Print one machine-readable JSON document on stdout."
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


class _Formatter(logging.Formatter):
    """``banana2: message``; an error's traceback only when everything is logged (``-vv``), else its class
    (by its public name) and message."""

    def __init__(self, *, tracebacks: bool) -> None:
        super().__init__("banana2: %(message)s")
        self._tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        if self._tracebacks or not record.exc_info or record.exc_info[1] is None:
            return cli_text(super().format(record))
        exc = record.exc_info[1]
        return cli_text(f"banana2: {record.getMessage()} ({public_name(exc)}: {exc})")


class _StderrHandler(logging.Handler):
    """Writes each record to ``sys.stderr`` as it is when the record comes (a test runner may swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            if _active_scrubbers:
                _active_scrubbers[0].write(line)
            else:
                sys.stderr.write(_SURROGATES.sub("\ufffd", line))
        except Exception:
            self.handleError(record)


def configure_logging(verbose: int) -> Callable[[], None]:
    """Send the SDK's log to stderr: errors only, warnings with ``-v``, everything with ``-vv``.

    Returns the function that undoes it, so the command leaves logging as it found it.
    """
    logger = logging.getLogger("banana2_async")
    handler = _StderrHandler({0: logging.ERROR, 1: logging.WARNING}.get(verbose, logging.DEBUG))
    handler.setFormatter(_Formatter(tracebacks=verbose >= 2))
    previous = logger.level
    logger.addHandler(handler)
    if verbose:
        logger.setLevel(handler.level)

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(previous)

    return restore


def make_client(api_key: str | None, base_url: str | None, poll_interval: float | None = None) -> AsyncBanana2:
    """The client of a command.

    Raises:
        ConfigurationError: no key, or an unusable base URL.
    """
    if not api_key or not api_key.strip():
        raise ConfigurationError("no API key: pass --api-key or set BANANA2_API_KEY")
    interval: float | tuple[float, float] = (2.0, 3.0) if poll_interval is None else poll_interval
    return AsyncBanana2(api_key=api_key, base_url=base_url or None, poll_interval=interval)


def error_json(exc: BaseException) -> dict[str, str]:
    """An error as JSON: its class (a name in ``banana2_async`` for the SDK's errors) and message."""
    return {"type": type(exc).__name__, "message": cli_text(str(exc))}


def task_json(
    task_id: str,
    status: str,
    *,
    server_status: str | None = None,
    task_type: str | None = None,
    images: Sequence[str] = (),
    files: Sequence[str | os.PathLike[str]] = (),
    credits: int | None = None,
    created_at: str | None = None,
    error: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A task as every ``--json`` output shows it (generate, edit, wait, status, and the error documents).

    ``status`` is ``succeeded``, ``failed``, ``running``, ``unknown`` (a status
    the SDK does not know) or ``interrupted``; ``server_status`` the server's
    own word. Every key is always there.
    """
    return {
        "task_id": task_id,
        "status": status,
        "server_status": server_status,
        "type": task_type,
        "images": list(images),
        "files": [str(path) for path in files],
        "credits": credits,
        "created_at": created_at,
        "error": None if error is None else dict(error),
    }


def run_async(output: Output, main: Callable[[], Awaitable[int]], *, interrupted: str = "interrupted") -> NoReturn:
    """Run ``main`` on an event loop and exit with its status, or with the status its error calls for.

    0 all succeeded, 1 some failed, 2 usage (bad input, budget, journal),
    3 configuration or authentication, 130 interrupted (``interrupted`` is
    what to tell the user then). Once ``main`` has a paid task (`Output.submitted`),
    every way out names it, with ``--json`` in the document on stdout too.
    """
    try:
        code = anyio.run(main)
    except KeyboardInterrupt:
        output.problem(interrupted)
        code = EXIT_INTERRUPTED
        output.paid_task_hint()
        if output.as_json and output.task_id is not None:
            output.json({**task_json(output.task_id, "interrupted"), "exit_code": code})
    except (ConfigurationError, AuthenticationError) as exc:
        code = _report(output, exc, EXIT_CONFIG)
    except (InvalidRequestError, JournalError) as exc:
        code = _report(output, exc, EXIT_USAGE)
    except Banana2Error as exc:
        code = _report(output, exc, EXIT_FAILED)
    except Exception as exc:
        # Whatever a server sends ends in a message and an exit status, never in a traceback (-vv logs it).
        logging.getLogger("banana2_async").debug("unexpected error", exc_info=True)
        code = _report(output, exc, EXIT_FAILED)
    click.get_current_context().exit(code)


def _report(output: Output, exc: Exception, code: int) -> int:
    output.problem(str(exc) if isinstance(exc, _USAGE_ERRORS) else f"{public_name(exc)}: {exc}")
    output.paid_task_hint()
    if output.as_json:
        document: dict[str, Any] = {"error": error_json(exc), "exit_code": code}
        if output.task_id is not None:
            document = {**task_json(output.task_id, "failed", error=error_json(exc)), "exit_code": code}
        output.json(document)
    return code
