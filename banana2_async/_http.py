"""The only place a request is sent: auth, envelope, error mapping, retry loops.

httpx's exceptions are translated to the error tree here and nowhere else.
The API key lives in one header mapping; it is never logged, repr'd or put in
an error.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import random
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final, NoReturn, Protocol
from urllib.request import getproxies

import anyio
import httpx

from ._body import BodyTooLarge, BodyUndecodable, read_body
from ._envelope import decode_envelope, ok_envelope, plainly_running, readable
from ._exceptions import (
    APIConnectionError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    Banana2Error,
    ConfigurationError,
    InvalidRequestError,
    RateLimitError,
    SubmissionUncertainError,
)
from ._retry import Failure, backoff, outcome_of, retry_after_seconds, status_decision, submit_decision
from ._secret import Secret, redact_library_logs
from ._version import __version__

if TYPE_CHECKING:
    # The models (and pydantic's model machinery) load with the first answer that needs one.
    from ._models import GenerationRequest, SubmitAccepted, TaskInfo

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_REQUEST_TIMEOUT", "DEFAULT_TIMEOUT", "Gate", "Wire", "check_base_url"]

logger = logging.getLogger("banana2_async")

DEFAULT_BASE_URL: Final = "https://banana2api.com"
DEFAULT_TIMEOUT: Final = httpx.Timeout(30.0, connect=10.0)
# An API answer is a few hundred bytes of JSON; the cap counts its bytes after decoding.
MAX_BODY_BYTES: Final = 1024 * 1024
# The content codings asked for on API answers: a window of 32 KiB each, where br and zstd let the
# sender choose one of megabytes, and API answers are too small to gain from them. Answers in those
# are read all the same, `MAX_WIDE_DECODES` at a time.
API_CODINGS: Final = ("gzip", "deflate")
MAX_WIDE_DECODES: Final = 4
_WIDE_WINDOW: Final = re.compile(r"br|zstd", re.IGNORECASE)
USER_AGENT: Final = f"banana2-async/{__version__}"
# The most one request may take, from sending to the last byte of its answer (``request_timeout``).
DEFAULT_REQUEST_TIMEOUT: Final = 60.0
# The longest request id an error keeps.
MAX_REQUEST_ID: Final = 200

_NO_SCOPE: Final = contextlib.nullcontext()
# What a closed response's stream is swapped for (see `Wire._send`).
_SPENT: Final = httpx.ByteStream(b"")
_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
# A task id httpx would put in a query string as it is (unreserved characters only).
_PLAIN_QUERY_VALUE: Final = re.compile(r"[A-Za-z0-9._~-]+")


class Gate(Protocol):
    """Where every request waits its turn: the shared rate budget and 429 pause."""

    async def acquire(self) -> float:
        """Wait until a request may be sent; return that moment (anyio's clock)."""

    def pause(self, seconds: float) -> None:
        """Hold every request back for ``seconds`` (after a 429)."""


class _OpenGate:
    """A gate that never holds a request back."""

    async def acquire(self) -> float:
        return anyio.current_time()

    def pause(self, seconds: float) -> None:
        return None


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(base_url: str, *, allow_insecure_http: bool) -> httpx.URL:
    """Parse and vet a base URL: https, or plain http only to loopback unless allowed."""
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConfigurationError(f"base_url is not a valid URL: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(f"base_url must be an http(s) URL with a host, not {base_url!r}")
    if url.userinfo:
        # httpx would send them as basic auth in place of the key, and the URL is shown in reprs and logs.
        raise ConfigurationError("base_url must not carry credentials (user:password@): the API key is the credential")
    if url.scheme == "http" and not allow_insecure_http and not _is_loopback(url.host):
        raise ConfigurationError(
            f"base_url {base_url!r} is plain http to a host other than loopback: the API key would travel "
            "unencrypted. Use https, or pass allow_insecure_http=True if you mean it."
        )
    return url.copy_with(query=None, fragment=None)


_TIMEOUT_KINDS: Final[dict[type[httpx.TimeoutException], Failure]] = {
    httpx.ConnectTimeout: Failure.CONNECT_TIMEOUT,
    httpx.PoolTimeout: Failure.POOL_TIMEOUT,
    httpx.WriteTimeout: Failure.WRITE_TIMEOUT,
}


def _proxied_by_environment() -> bool:
    """Whether httpx would route a client of its own through a proxy named in the environment."""
    found = getproxies()
    return any(found.get(scheme) for scheme in ("http", "https", "all"))


def _translate(exc: httpx.HTTPError, method: str, path: str) -> Banana2Error:
    """The error of the tree that stands for one of httpx's exceptions."""
    if isinstance(exc, httpx.TimeoutException):
        kind = _TIMEOUT_KINDS.get(type(exc), Failure.READ_TIMEOUT).value
        return APITimeoutError(f"{method} {path} timed out ({kind})", kind=kind, method=method, path=path)
    if isinstance(exc, httpx.ConnectError):
        return APIConnectionError(
            f"{method} {path}: could not connect", kind=Failure.CONNECT.value, method=method, path=path
        )
    if isinstance(exc, httpx.UnsupportedProtocol):
        return ConfigurationError(f"{method} {path}: unsupported URL scheme")
    if isinstance(exc, httpx.LocalProtocolError):
        return APIConnectionError(
            f"{method} {path}: the request could not be sent", kind=Failure.LOCAL.value, method=method, path=path
        )
    if isinstance(exc, httpx.TooManyRedirects):
        return APIResponseError(f"{method} {path}: too many redirects")
    if isinstance(exc, httpx.DecodingError):
        return APIResponseError(f"{method} {path}: the answer could not be decoded")
    return APIConnectionError(
        f"{method} {path}: the connection broke ({type(exc).__name__})",
        kind=Failure.NETWORK.value,
        method=method,
        path=path,
    )


@contextlib.contextmanager
def _translated(method: str, path: str) -> Iterator[None]:
    """Translate httpx's exceptions into the error tree."""
    try:
        yield
    except httpx.HTTPError as exc:
        raise _translate(exc, method, path) from exc


class Wire:
    """Sends the API's two requests through an httpx client.

    Every request waits at the shared `Gate`, then for one of ``max_in_flight``
    slots, so the SDK never has more requests in flight than the connection
    pool holds.
    """

    __slots__ = (
        "_client",
        "_direct",
        "_gate",
        "_generate_url",
        "_headers",
        "_max_retries",
        "_owns_client",
        "_request_timeout",
        "_retry_uncertain",
        "_rng",
        "_secret",
        "_slots",
        "_status_prefix",
        "_status_url",
        "_templates",
        "_timeout",
        "_wide_decodes",
        "base_url",
    )

    def __init__(
        self,
        *,
        api_key: str,
        base_url: httpx.URL,
        http_client: httpx.AsyncClient | None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout,
        max_retries: int,
        max_in_flight: int,
        retry_uncertain_submits: bool,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        gate: Gate | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not api_key.isascii():
            # httpx would fail on the header with a bare UnicodeEncodeError at the first request.
            raise ConfigurationError("the API key contains non-ASCII characters")
        self.base_url: httpx.URL = base_url
        prefix = base_url.path.rstrip("/")
        self._generate_url = base_url.copy_with(path=f"{prefix}/api/generate")
        self._status_url = base_url.copy_with(path=f"{prefix}/api/status")
        self._status_prefix = f"{self._status_url}?task_id="
        # Per method: the client's headers it was made from, the headers and the extensions (see `_template`).
        self._templates: dict[str, tuple[list[tuple[bytes, bytes]], httpx.Headers, dict[str, Any]]] = {}
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "Accept-Encoding": ", ".join(API_CODINGS),
            "User-Agent": USER_AGENT,
        }
        self._owns_client = http_client is None
        # The transport this wire's own client sends through, which polls may go to directly (see `_direct_to`).
        self._direct: httpx.AsyncBaseTransport | None = None
        if http_client is not None:
            if transport is not None:
                raise ConfigurationError("pass http_client or transport, not both: a transport is for the SDK's client")
            self._client = http_client
        else:
            limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
            if transport is None and not _proxied_by_environment():
                # What httpx would build itself; made here so that polls can reach it.
                transport = httpx.AsyncHTTPTransport(limits=limits)
            self._client = httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport)
            self._direct = transport
        self._timeout = timeout
        self._max_retries = max_retries
        self._retry_uncertain = retry_uncertain_submits
        # A free slot is taken without a trip through the event loop: one less per request.
        self._slots = anyio.Semaphore(max_in_flight, fast_acquire=True)
        self._wide_decodes = anyio.Semaphore(MAX_WIDE_DECODES)
        self._gate: Gate = gate or _OpenGate()
        self._rng = rng or random.Random()
        self._request_timeout = request_timeout
        # A server may echo the key, in any spelling; it is blanked out of every answer before it is read.
        self._secret = Secret(api_key)
        redact_library_logs(self._secret)

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The httpx client requests go through."""
        return self._client

    async def aclose(self) -> None:
        """Close the httpx client if this wire created it."""
        if self._owns_client:
            await self._client.aclose()

    async def _send(
        self, request: httpx.Request, *, gated: bool = True, shielded: bool = False
    ) -> tuple[int, bytes, httpx.Headers]:
        path = request.url.path
        if gated:
            await self._gate.acquire()
        slots = self._slots
        await slots.acquire()
        try:
            started = time.perf_counter()
            try:
                # Waiting for the gate and a slot sends nothing and may be cancelled; once a
                # shielded request is on its way, its answer is awaited whatever happens to the caller,
                # but never longer than the whole-request deadline, which holds for every request.
                # httpx's errors are translated here, not with `_translated`: a generator-based
                # context manager costs a poll a few microseconds.
                with anyio.CancelScope(shield=shielded, deadline=anyio.current_time() + self._request_timeout) as scope:
                    try:
                        direct = self._direct_to(request)
                        if direct is None:
                            response = await self._client.send(request, stream=True, follow_redirects=True)
                        else:
                            response = await self._send_direct(direct, request)
                        try:
                            content = await self._read_capped(response)
                        finally:
                            await response.aclose()
                            # The response and its stream refer to each other: left so, every answer
                            # (request, URL, headers and all) waits for the cyclic garbage collector.
                            response.stream = _SPENT
                    except httpx.HTTPError as exc:
                        error = _translate(exc, request.method, path)
                        self._secret.redact_exception(exc)
                        raise error from exc
                if scope.cancelled_caught:
                    raise APITimeoutError(
                        f"{request.method} {path} took longer than the whole-request deadline "
                        f"of {self._request_timeout:g} s (request_timeout)",
                        kind=Failure.DEADLINE.value,
                        method=request.method,
                        path=path,
                    )
            except Exception as exc:
                if logger.isEnabledFor(logging.DEBUG):
                    failure = type(exc.__cause__ or exc).__name__
                    logger.debug("%s %s -> %s in %.1f ms", request.method, path, failure, _ms_since(started))
                raise
        finally:
            slots.release()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s -> %d in %.1f ms", request.method, path, response.status_code, _ms_since(started))
        return response.status_code, content, response.headers

    def _direct_to(self, request: httpx.Request) -> httpx.AsyncBaseTransport | None:
        """The transport a GET may be handed to directly, skipping ``client.send``; else ``None``.

        That path costs a poll more than half its CPU: per request it finds the
        transport for the URL, runs the auth flow and redirect loop, wraps the
        stream and asks the cookie jar about the answer. A client this wire
        built has one transport; the request already carries the client's
        headers, params and cookies (`_template` or ``build_request``). While
        the client also has no auth and no event hooks (its `http_client` is
        public and may be given some), the only parts of that path a GET needs
        are the redirects and the cookies an answer sets, which `_send_direct`
        hands back to the client. A caller's client is always used as it is.
        """
        direct = self._direct
        if direct is None or request.method != "GET":
            return None
        client = self._client
        if client.auth is not None or client.is_closed:
            return None
        hooks = client.event_hooks
        if hooks["request"] or hooks["response"]:
            return None
        return direct

    async def _send_direct(self, transport: httpx.AsyncBaseTransport, request: httpx.Request) -> httpx.Response:
        """``client.send(request, stream=True, follow_redirects=True)`` for a GET, by way of ``transport``."""
        response = await transport.handle_async_request(request)
        response.request = request
        if "set-cookie" in response.headers:
            # Kept as the client keeps them: later requests are built with them (see `_template`).
            self._client.cookies.extract_cookies(response)
        if response.has_redirect_location:
            # Rare for an API answer: the client follows it from the start (a GET is safe to send again).
            await response.aclose()
            response = await self._client.send(request, stream=True, follow_redirects=True)
        return response

    async def _read_capped(self, response: httpx.Response) -> bytes:
        """The answer's body, decoded, at most `MAX_BODY_BYTES` of it, the key blanked out."""
        declared = response.headers.get("content-length", "")
        # (More digits than int() reads are more bytes than any cap, too.)
        if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > MAX_BODY_BYTES):
            raise APIResponseError(
                f"the answer declares {declared[:20]} bytes; more than {MAX_BODY_BYTES} is not an API answer",
                status_code=response.status_code,
            )
        head: bytes | None = None
        try:
            coding = response.headers.get("content-encoding")
            if coding is not None and _WIDE_WINDOW.search(coding):
                # Such a decoder holds a window the sender chooses (up to 16 MiB for br): a few at a time.
                async with self._wide_decodes:
                    content = await read_body(response, limit=MAX_BODY_BYTES)
            else:
                content = await read_body(response, limit=MAX_BODY_BYTES)
        except BodyTooLarge as exc:
            head = exc.head
        except BodyUndecodable as exc:
            raise APIResponseError(f"the answer could not be decoded: {exc}", status_code=response.status_code) from exc
        if head is not None:
            # Raised here, not in the handler: the error it would be raised during keeps the body's raw start.
            raise APIResponseError(
                f"the answer is larger than {MAX_BODY_BYTES} bytes decoded; not an API answer",
                status_code=response.status_code,
                excerpt=readable(self._redact(head)[:200].decode("utf-8", errors="replace")),
            )
        return self._redact(content)

    def _redact(self, content: bytes) -> bytes:
        return self._secret.redact(content)

    async def _exchange(
        self, request: httpx.Request, *, gated: bool = True, shielded: bool = False
    ) -> tuple[int, dict[str, Any]]:
        status_code, content, headers = await self._send(request, gated=gated, shielded=shielded)
        if status_code < 300:
            envelope = ok_envelope(content)
            if envelope is not None:
                return status_code, envelope
        retry_after = retry_after_seconds(headers.get("retry-after"), now=time.time())
        request_id = headers.get("x-request-id")
        if request_id is not None:
            # A header value is the server's to choose: it may echo the key, or be a page long.
            request_id = self._secret.redact_text(request_id)[:MAX_REQUEST_ID]
        envelope = decode_envelope(status_code, content, request_id=request_id, retry_after=retry_after)
        return status_code, envelope

    def _template(self, method: str, url: httpx.URL) -> tuple[httpx.Headers, dict[str, Any]] | None:
        """The headers and extensions ``build_request`` gives this wire's ``method`` request to ``url``.

        That call merges the client's headers, cookies and params into a new
        URL and headers every time: a third of a poll's CPU. While the client
        has no cookies or params, its headers and extensions are kept per
        method and reused until the client's headers change; ``None`` means
        the client has cookies or params, and ``build_request`` must be called.
        A POST's template carries its content type but no length: each body
        brings its own.
        """
        client = self._client
        if client.params or client.cookies:
            return None
        client_headers = client.headers.raw
        template = self._templates.get(method)
        if template is None or template[0] != client_headers:
            headers = self._headers if method == "GET" else {**self._headers, "Content-Type": "application/json"}
            model = client.build_request(method, url, headers=headers, timeout=self._timeout)
            # A POST without a body gets "Content-Length: 0"; the real one is added per request.
            kept = httpx.Headers([(name, value) for name, value in model.headers.raw if name != b"Content-Length"])
            template = self._templates[method] = (client_headers, kept, model.extensions)
        return template[1], template[2]

    def _status_request(self, task_id: str) -> httpx.Request:
        """The same request as ``build_request("GET", status_url, params=..., headers=..., timeout=...)``.

        Made from `_template`: each poll only builds its URL, and the request
        around it with its (empty) body stream given.
        """
        template = self._template("GET", self._status_url)
        try:
            if template is None:
                return self._client.build_request(
                    "GET", self._status_url, params={"task_id": task_id}, headers=self._headers, timeout=self._timeout
                )
            if _PLAIN_QUERY_VALUE.fullmatch(task_id):
                url = httpx.URL(self._status_prefix + task_id)
            else:
                url = self._status_url.copy_merge_params({"task_id": task_id})
        except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
            # Ids are checked where they come in; this is the last line, for one the checks let by.
            raise InvalidRequestError(f"task_id {ascii(task_id)[:64]} cannot be put in a URL", field="task_id") from exc
        # An empty stream given up front: the template's headers are final, nothing to encode or prepare.
        return httpx.Request("GET", url, headers=template[0], extensions=template[1], stream=httpx.ByteStream(b""))

    def _generate_request(self, body: dict[str, Any]) -> httpx.Request:
        """The same request as ``build_request("POST", generate_url, json=body, headers=..., timeout=...)``.

        Made from `_template`, with the body encoded as httpx encodes JSON.
        """
        template = self._template("POST", self._generate_url)
        if template is None:
            return self._client.build_request(
                "POST", self._generate_url, json=body, headers=self._headers, timeout=self._timeout
            )
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        return httpx.Request("POST", self._generate_url, headers=template[0], content=content, extensions=template[1])

    async def poll(self, task_id: str) -> TaskInfo:
        """One ``GET /api/status``, no retry: the poller owns backoff."""
        from ._models import parse_task

        status_code, envelope = await self._exchange(self._status_request(task_id))
        return parse_task(envelope, task_id=task_id, status_code=status_code)

    async def check(self, task_id: str) -> TaskInfo | None:
        """`poll` for the poller: ``None`` when the task is plainly still running.

        Such an answer (see `plainly_running`) would parse to a running
        `TaskInfo` the poller has no use for, so none is built. The poller
        passes its polls through the gate itself, to time them from the moment
        they go, so this call does not.
        """
        status_code, envelope = await self._exchange(self._status_request(task_id), gated=False)
        if plainly_running(envelope["data"], task_id):
            return None
        from ._models import parse_task

        return parse_task(envelope, task_id=task_id, status_code=status_code)

    async def status(self, task_id: str) -> TaskInfo:
        """``GET /api/status``, retried on transient failures with backoff and ``Retry-After``."""
        attempt = 0
        while True:
            try:
                return await self.poll(task_id)
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
                    status_code, envelope = await self._exchange(self._generate_request(body), shielded=True)
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
            kind=Failure.NOT_SENT_IN_TIME.value,
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
        delay = backoff(attempt, rng=self._rng)
        if isinstance(exc, APIStatusError) and exc.retry_after is not None:
            delay = exc.retry_after
        if isinstance(exc, RateLimitError):
            self._gate.pause(delay)
        logger.debug("retrying after %s in %.2f s", type(exc).__name__, delay)
        await anyio.sleep(delay)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
