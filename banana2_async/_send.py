"""The one send seam: a request goes out; its answer comes back read, capped and redacted, or a typed error.

Every request of the API goes through `Sender.send`: a slot of the
connection pool, the whole-request deadline, the answer's body decoded and
capped (`_body`), the key blanked out of it, httpx's exceptions translated
into the error tree (here and nowhere else, with ``from exc``), one DEBUG line.
Which way a request reaches the network is picked once, at construction
(`open_sender`): ``client.send``, or, for the SDK's own client, its transport
directly (`DirectSender`, whose docstring holds the invariants of that path).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator
from typing import Final, NamedTuple
from urllib.request import getproxies

import anyio
import httpx

from ._body import BodyTooLarge, BodyUndecodable, read_body
from ._envelope import readable
from ._exceptions import (
    APIConnectionError,
    APIResponseError,
    APITimeoutError,
    Banana2Error,
    ConfigurationError,
    FailureKind,
)
from ._secret import Secret

__all__ = ["MAX_BODY_BYTES", "DirectSender", "Sender", "Sent", "open_sender", "translate", "translated"]

logger = logging.getLogger("banana2_async")

# An API answer is a few hundred bytes of JSON; the cap counts its bytes after decoding.
MAX_BODY_BYTES: Final = 1024 * 1024
# Answers in br or zstd (never asked for: see `API_CODINGS`) are read all the same, this many at a time.
MAX_WIDE_DECODES: Final = 4
_WIDE_WINDOW: Final = re.compile(r"br|zstd", re.IGNORECASE)
# What a closed response's stream is swapped for (see `Sender.send`).
_SPENT: Final = httpx.ByteStream(b"")

_TIMEOUT_KINDS: Final[dict[type[httpx.TimeoutException], FailureKind]] = {
    httpx.ConnectTimeout: FailureKind.CONNECT_TIMEOUT,
    httpx.PoolTimeout: FailureKind.POOL_TIMEOUT,
    httpx.WriteTimeout: FailureKind.WRITE_TIMEOUT,
}


class Sent(NamedTuple):
    """An answer, read: its status, its body (decoded, capped, the key blanked out) and its headers."""

    status_code: int
    content: bytes
    headers: httpx.Headers


def _proxied_by_environment() -> bool:
    """Whether httpx would route a client of its own through a proxy named in the environment."""
    found = getproxies()
    return any(found.get(scheme) for scheme in ("http", "https", "all"))


def translate(exc: httpx.HTTPError, method: str, path: str) -> Banana2Error:
    """The error of the tree that stands for one of httpx's exceptions."""
    if isinstance(exc, httpx.TimeoutException):
        kind = _TIMEOUT_KINDS.get(type(exc), FailureKind.READ_TIMEOUT)
        return APITimeoutError(f"{method} {path} timed out ({kind.value})", kind=kind, method=method, path=path)
    if isinstance(exc, httpx.ConnectError):
        return APIConnectionError(
            f"{method} {path}: could not connect", kind=FailureKind.CONNECT, method=method, path=path
        )
    if isinstance(exc, httpx.UnsupportedProtocol):
        return ConfigurationError(f"{method} {path}: unsupported URL scheme")
    if isinstance(exc, httpx.LocalProtocolError):
        return APIConnectionError(
            f"{method} {path}: the request could not be sent", kind=FailureKind.LOCAL, method=method, path=path
        )
    if isinstance(exc, httpx.TooManyRedirects):
        return APIResponseError(f"{method} {path}: too many redirects")
    if isinstance(exc, httpx.DecodingError):
        return APIResponseError(f"{method} {path}: the answer could not be decoded")
    return APIConnectionError(
        f"{method} {path}: the connection broke ({type(exc).__name__})",
        kind=FailureKind.NETWORK,
        method=method,
        path=path,
    )


@contextlib.contextmanager
def translated(method: str, path: str) -> Iterator[None]:
    """Translate httpx's exceptions into the error tree."""
    try:
        yield
    except httpx.HTTPError as exc:
        raise translate(exc, method, path) from exc


class Sender:
    """Sends requests through ``client.send``: a caller's client always, the SDK's own where it must.

    At most ``max_in_flight`` requests are in flight at once (the connection
    pool's size), each within ``request_timeout`` seconds from sending to the
    last byte of its answer.
    """

    __slots__ = ("_client", "_owns_client", "_request_timeout", "_secret", "_slots", "_wide_decodes")

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        owns_client: bool,
        secret: Secret,
        request_timeout: float,
        max_in_flight: int,
    ) -> None:
        self._client = client
        self._owns_client = owns_client
        self._secret = secret
        self._request_timeout = request_timeout
        # A free slot is taken without a trip through the event loop: one less per request.
        self._slots = anyio.Semaphore(max_in_flight, fast_acquire=True)
        self._wide_decodes = anyio.Semaphore(MAX_WIDE_DECODES)

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The httpx client requests go through."""
        return self._client

    async def aclose(self) -> None:
        """Close the httpx client if this sender made it."""
        if self._owns_client:
            await self._client.aclose()

    async def send(self, request: httpx.Request, *, shielded: bool = False) -> Sent:
        """Send ``request`` and read its answer.

        Waiting for a slot sends nothing and may be cancelled. A ``shielded``
        request, once on its way, has its answer awaited whatever happens to
        the caller, but never past the whole-request deadline.

        Raises:
            APITimeoutError: The deadline passed (kind ``deadline``), or one of httpx's timeouts.
            APIConnectionError: The connection failed or broke.
            APIResponseError: The answer is too large, or cannot be decoded.
        """
        path = request.url.path
        slots = self._slots
        await slots.acquire()
        try:
            started = time.perf_counter()
            try:
                # httpx's errors are translated here, not with `translated`: a generator-based
                # context manager costs a poll a few microseconds.
                with anyio.CancelScope(shield=shielded, deadline=anyio.current_time() + self._request_timeout) as scope:
                    try:
                        response = await self._open(request)
                        try:
                            content = await self._read_capped(response)
                        finally:
                            await response.aclose()
                            # The response and its stream refer to each other: left so, every answer
                            # (request, URL, headers and all) waits for the cyclic garbage collector.
                            response.stream = _SPENT
                    except httpx.HTTPError as exc:
                        error = translate(exc, request.method, path)
                        self._secret.redact_exception(exc)
                        raise error from exc
                if scope.cancelled_caught:
                    raise APITimeoutError(
                        f"{request.method} {path} took longer than the whole-request deadline "
                        f"of {self._request_timeout:g} s (request_timeout)",
                        kind=FailureKind.DEADLINE,
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
        return Sent(response.status_code, content, response.headers)

    async def _open(self, request: httpx.Request) -> httpx.Response:
        """The answer to ``request``, its body not read yet."""
        return await self._client.send(request, stream=True, follow_redirects=True)

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
                excerpt=readable(self._secret.redact(head)[:200].decode("utf-8", errors="replace")),
            )
        return self._secret.redact(content)


class DirectSender(Sender):
    """A `Sender` for a client the SDK made itself: its GETs go straight to its one transport.

    ``client.send`` costs a poll more than half its CPU: per request it finds
    the transport for the URL, runs the auth flow and redirect loop, wraps the
    stream and asks the cookie jar about the answer. What holds here, and
    makes skipping it safe:

    - the client has one transport (no proxy from the environment: then
      `open_sender` makes a plain `Sender`), and a request already carries the
      client's headers, params and cookies (`RequestFactory`);
    - a GET goes direct only while the client has no auth and no event hooks
      (its ``http_client`` is public and may be given some later); otherwise,
      and for every POST, ``client.send`` is used;
    - what ``client.send`` would still do for such a GET is done here: the
      cookies an answer sets go into the client's jar, and a redirect is
      sent again through ``client.send``, which follows it from the start.
    """

    __slots__ = ("_transport",)

    def __init__(
        self,
        client: httpx.AsyncClient,
        transport: httpx.AsyncBaseTransport,
        *,
        secret: Secret,
        request_timeout: float,
        max_in_flight: int,
    ) -> None:
        super().__init__(
            client, owns_client=True, secret=secret, request_timeout=request_timeout, max_in_flight=max_in_flight
        )
        self._transport = transport

    async def _open(self, request: httpx.Request) -> httpx.Response:
        client = self._client
        hooks = client.event_hooks
        if (
            request.method != "GET"
            or client.auth is not None
            or client.is_closed
            or hooks["request"]
            or hooks["response"]
        ):
            return await client.send(request, stream=True, follow_redirects=True)
        response = await self._transport.handle_async_request(request)
        response.request = request
        if "set-cookie" in response.headers:
            # Kept as the client keeps them: later requests are built with them (see `RequestFactory`).
            client.cookies.extract_cookies(response)
        if response.has_redirect_location:
            # Rare for an API answer: the client follows it from the start (a GET is safe to send again).
            await response.aclose()
            response = await client.send(request, stream=True, follow_redirects=True)
        return response


def open_sender(
    *,
    http_client: httpx.AsyncClient | None,
    transport: httpx.AsyncBaseTransport | None,
    timeout: httpx.Timeout,
    max_in_flight: int,
    secret: Secret,
    request_timeout: float,
) -> Sender:
    """The sender of a client: through the caller's ``http_client``, else through one the SDK makes.

    Raises:
        ConfigurationError: Both ``http_client`` and ``transport`` were given.
    """
    if http_client is not None:
        if transport is not None:
            raise ConfigurationError("pass http_client or transport, not both: a transport is for the SDK's client")
        return Sender(
            http_client, owns_client=False, secret=secret, request_timeout=request_timeout, max_in_flight=max_in_flight
        )
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    if transport is None and _proxied_by_environment():
        # httpx routes its own client through the proxies; every request goes through ``client.send``.
        client = httpx.AsyncClient(timeout=timeout, limits=limits)
        return Sender(
            client, owns_client=True, secret=secret, request_timeout=request_timeout, max_in_flight=max_in_flight
        )
    # What httpx would build itself; made here so that GETs can reach it.
    transport = transport or httpx.AsyncHTTPTransport(limits=limits)
    client = httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport)
    return DirectSender(client, transport, secret=secret, request_timeout=request_timeout, max_in_flight=max_in_flight)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
