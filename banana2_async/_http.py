"""The API's two endpoints: the envelope, the retry loops, and the one gate every request waits at.

`Wire` asks `RequestFactory` for a request, waits at the client's gate
(`Throttle`: the rate limit and the 429 pause, for polls and submits alike;
under a rate limit, polls by priority and submits and ``status()`` calls with
a share of their own),
hands it to the `Sender`, and reads the envelope of the answer. The status
endpoint is safe to repeat; a submit costs credits and has no idempotency key,
so it is repeated only where it cannot have been paid for (`_retry`).
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import TYPE_CHECKING, Any, Final, NoReturn, Protocol

import anyio
import httpx

from ._envelope import decode_envelope, ok_envelope, plainly_running
from ._exceptions import (
    APIConnectionError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    Banana2Error,
    FailureKind,
    InvalidRequestError,
    RateLimitError,
    SubmissionUncertainError,
)
from ._retry import backoff, outcome_of, retry_after_seconds, status_decision, submit_decision

if TYPE_CHECKING:
    # The models (and pydantic's model machinery) load with the first answer that needs one.
    from ._models import GenerationRequest, SubmitAccepted, TaskInfo
    from ._requests import RequestFactory
    from ._secret import Secret
    from ._send import Sender

__all__ = ["Gate", "Wire"]

logger = logging.getLogger("banana2_async")

# The longest request id an error keeps.
MAX_REQUEST_ID: Final = 200


class Gate(Protocol):
    """Where every request waits its turn: the shared rate budget and 429 pause (`Throttle`)."""

    async def acquire(self, priority: float | None = None) -> float:
        """Wait until a request may be sent; return that moment (anyio's clock).

        ``priority`` is ``None`` for a foreground request (a submit, a user's
        ``status()``), else a poll's priority, higher first.
        """

    def rate_limited(self, retry_after: float | None) -> float:
        """A 429 came: pause every request; return for how many seconds."""

    def answered(self) -> None:
        """An answer that was no 429 came."""


class Wire:
    """The API's endpoints over one `Sender`, every request through one `Gate`."""

    __slots__ = (
        "_gate",
        "_max_retries",
        "_requests",
        "_retry_uncertain",
        "_rng",
        "_secret",
        "_sender",
        "base_url",
        "retries",
        "submits_sent",
    )

    def __init__(
        self,
        *,
        requests: RequestFactory,
        sender: Sender,
        gate: Gate,
        secret: Secret,
        base_url: httpx.URL,
        max_retries: int,
        retry_uncertain_submits: bool,
        rng: random.Random,
    ) -> None:
        self.base_url: httpx.URL = base_url
        self._requests = requests
        self._sender = sender
        self._gate = gate
        self._secret = secret
        self._max_retries = max_retries
        self._retry_uncertain = retry_uncertain_submits
        self._rng = rng
        # Counted for `AsyncBanana2.statistics`.
        self.submits_sent = 0
        self.retries = 0

    def __repr__(self) -> str:
        return f"<Wire {str(self.base_url)!r}>"

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The httpx client requests go through."""
        return self._sender.http_client

    async def aclose(self) -> None:
        """Close the httpx client if the SDK made it."""
        await self._sender.aclose()

    async def _exchange(
        self, request: httpx.Request, *, shielded: bool = False, priority: float | None = None
    ) -> tuple[float, int, dict[str, Any]]:
        """Wait at the gate, send ``request``, check its envelope: when it went, its status, its envelope.

        ``priority`` is the gate's: ``None`` for the foreground, a number for a poll.
        """
        sent_at = await self._gate.acquire(priority)
        if request.method == "POST":
            self.submits_sent += 1
        status_code, content, headers = await self._sender.send(request, shielded=shielded)
        if status_code != 429:
            self._gate.answered()
        if status_code < 300:
            envelope = ok_envelope(content)
            if envelope is not None:
                return sent_at, status_code, envelope
        retry_after = retry_after_seconds(headers.get("retry-after"), now=time.time())
        request_id = headers.get("x-request-id")
        if request_id is not None:
            # A header value is the server's to choose: it may echo the key, or be a page long.
            request_id = self._secret.redact_text(request_id)[:MAX_REQUEST_ID]
        return (
            sent_at,
            status_code,
            decode_envelope(status_code, content, request_id=request_id, retry_after=retry_after),
        )

    async def poll_status(self, task_id: str, *, priority: float = 0.0) -> tuple[float, TaskInfo | Banana2Error | None]:
        """One ``GET /api/status`` for the poller: when it was sent, and its outcome (never raised).

        The outcome is ``None`` for an answer that plainly says the task still
        runs (see `plainly_running`): the common answer, for which no
        `TaskInfo` is built. Only a bug raises. Under a rate limit,
        ``priority`` orders it among the waiting polls, higher first.
        """
        try:
            request = self._requests.status(task_id)
        except InvalidRequestError as exc:
            return anyio.current_time(), exc
        sent_at = anyio.current_time()
        try:
            sent_at, status_code, envelope = await self._exchange(request, priority=priority)
            if plainly_running(envelope["data"], task_id):
                return sent_at, None
            from ._models import parse_task

            return sent_at, parse_task(envelope, task_id=task_id, status_code=status_code)
        except Banana2Error as exc:
            return sent_at, exc

    async def fetch_status(self, task_id: str) -> TaskInfo:
        """One ``GET /api/status``, no retry."""
        from ._models import parse_task

        _, status_code, envelope = await self._exchange(self._requests.status(task_id))
        return parse_task(envelope, task_id=task_id, status_code=status_code)

    async def fetch_status_retrying(self, task_id: str) -> TaskInfo:
        """``GET /api/status``, retried on transient failures with backoff and ``Retry-After``."""
        attempt = 0
        while True:
            try:
                return await self.fetch_status(task_id)
            except (APIConnectionError, APIResponseError, APIStatusError) as exc:
                if status_decision(outcome_of(exc)) != "retry" or attempt >= self._max_retries:
                    raise
                await self._wait_before_retry(exc, attempt)
                attempt += 1

    async def submit(self, request: GenerationRequest, *, deadline: float = math.inf) -> SubmitAccepted:
        """``POST /api/generate``, never paying twice.

        Retried only where the request cannot have been paid for (not sent,
        429, 503). Where it may have landed, `SubmissionUncertainError` is
        raised instead, unless the client opted into ``retry_uncertain_submits``.
        A cancelled caller is let go while waiting to send or to retry, never
        while a sent request's answer (and task id) is on its way. Past
        ``deadline`` (anyio's clock), a wait to send or to retry ends in
        `APITimeoutError` (nothing was sent), or `SubmissionUncertainError`
        if an earlier attempt may have landed.
        """
        from ._models import parse_submit

        body = request.to_wire()
        attempt = 0
        # Once one attempt may have been paid for, giving up for any reason must say so.
        maybe_paid = False
        failure: Banana2Error | None = None
        with anyio.CancelScope(deadline=deadline):
            while True:
                try:
                    _, status_code, envelope = await self._exchange(self._requests.generate(body), shielded=True)
                    return parse_submit(envelope, status_code=status_code)
                except (APIConnectionError, APIResponseError, APIStatusError) as exc:
                    failure = exc
                    decision = submit_decision(outcome_of(exc))
                    if decision == "uncertain":
                        maybe_paid = True
                        if not self._retry_uncertain:
                            self._raise_uncertain(request, exc, attempts=attempt + 1)
                    if decision == "raise" or attempt >= self._max_retries:
                        if maybe_paid:
                            self._raise_uncertain(request, exc, attempts=attempt + 1)
                        raise
                    await self._wait_before_retry(exc, attempt)
                    attempt += 1
        # The deadline passed while waiting to send, or to send again.
        if maybe_paid and failure is not None:
            self._raise_uncertain(request, failure, attempts=attempt)
        raise APITimeoutError(
            "POST /api/generate was not sent before its deadline (submit_timeout)"
            + (f"; the last attempt was refused: {failure}" if failure is not None else "")
            + ". It was not paid for.",
            kind=FailureKind.NOT_SENT_IN_TIME,
            method="POST",
            path="/api/generate",
        ) from failure

    @staticmethod
    def _raise_uncertain(request: GenerationRequest, exc: Banana2Error, *, attempts: int) -> NoReturn:
        status_code = exc.status_code if isinstance(exc, (APIStatusError, APIResponseError)) else None
        sent = "it was not sent again" if attempts == 1 else f"it was sent {attempts} times; any may have landed"
        raise SubmissionUncertainError(
            f"POST /api/generate may have reached the server and been paid for ({exc}); "
            f"{sent}. Check the account before submitting it again.",
            request=request,
            status_code=status_code,
        ) from exc

    async def _wait_before_retry(self, exc: Banana2Error, attempt: int) -> None:
        if isinstance(exc, RateLimitError):
            # One place backs off from 429s, for polls and submits alike: the gate, which pauses them all.
            delay = self._gate.rate_limited(exc.retry_after)
        elif isinstance(exc, APIStatusError) and exc.retry_after is not None:
            delay = exc.retry_after
        else:
            delay = backoff(attempt, rng=self._rng)
        logger.debug("retrying after %s in %.2f s", type(exc).__name__, delay)
        await anyio.sleep(delay)
        self.retries += 1
