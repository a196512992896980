"""Result downloads: streamed, size-capped, deadlined, atomic, and without the API's credentials.

Result URLs live on hosts other than the API's and may be signed for minutes
only. Each image is streamed into a hidden temporary file beside its final
name and renamed into place once it is whole, so a file named
``<stem>-<n>.<ext>`` is never a partial image. Requests are built without
the API's headers and without the http client's own auth: the API key never
reaches a result host. Everything a result host chooses (the URL, each
redirect, the body and its coding) is checked, and a bad one is a
`DownloadError`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import random
import re
import secrets
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Final

import anyio
import anyio.to_thread
import httpx

from ._body import ACCEPT_ENCODING, BodyTooLarge, BodyUndecodable, decoded_chunks
from ._exceptions import (
    APIConnectionError,
    APIResponseError,
    ConfigurationError,
    DownloadError,
    ResultExpiredError,
)
from ._models import GenerationResult
from ._requests import USER_AGENT
from ._retry import backoff, outcome_of, retry_after_seconds, status_decision
from ._send import translated
from ._types import DEFAULT_DOWNLOAD_MAX_BYTES, DEFAULT_DOWNLOAD_RETRIES, DEFAULT_DOWNLOAD_TIMEOUT
from ._validate import check_non_negative_int, check_positive_int, check_seconds

__all__ = [
    "download_result",
    "extension_for",
    "safe_stem",
]

_MAX_RETRY_AFTER: Final = 30.0
_EXPIRED: Final = frozenset({403, 404, 410})
# A task id kept as its own stem: lower case (two ids that differ in case alone stay apart on a
# case-insensitive disk), no dot (no hidden file, no Windows device name such as "nul.x-0.png"),
# not starting with "-" (no shell option). Any other id is spelt with these and "_", then "~" and
# a hash of the id, which no id kept as it is holds.
_PLAIN_ID: Final = re.compile(r"[a-z0-9_][a-z0-9_-]{0,63}")
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]")
_READABLE: Final = 48
# A temporary file nobody holds and nobody wrote to for this long was left by a download that died.
_STALE_AFTER: Final = 60.0
# In a result URL: characters no URL holds (whitespace, controls, lone surrogates), and the port as written.
_NOT_IN_URL: Final = re.compile(r"[\s\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_PORT: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?(?:\[[^\]/?#]*\]|[^:/?#]*)(?::([^/?#]*))?")

_EXTENSIONS: Final[Mapping[str, str]] = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/pjpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/avif": "avif",
    "image/heic": "heic",
    "image/bmp": "bmp",
    "image/tiff": "tiff",
}
# A type that says nothing about the bytes: the bytes themselves decide.
_UNTYPED: Final = frozenset({"", "application/octet-stream", "binary/octet-stream"})
_MAGIC: Final = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
)


class _Transient(Exception):
    """One attempt failed in a way another attempt may not: a 5xx, a 429, a body cut short."""

    def __init__(self, message: str, *, status_code: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retry_after = retry_after


def safe_stem(task_id: str) -> str:
    """The start of the file names of ``task_id``'s images: distinct for distinct ids, safe on any disk.

    An id of lower-case letters, digits, ``_`` and ``-`` (not first), up to
    64 characters, is kept as it is. Any other id is spelt with those
    characters (upper case kept, anything else ``_``, at most 48 of them),
    then ``~`` and 16 characters of a hash of the whole id: no path
    separator, dot, space or control character, never a Windows device
    name, and two ids that differ only in case never share a name.
    """
    if _PLAIN_ID.fullmatch(task_id):
        return task_id
    readable = _UNSAFE.sub("_", task_id[:_READABLE]).lstrip("-") or "task"
    digest = hashlib.blake2b(task_id.encode("utf-8", "surrogatepass"), digest_size=10).digest()
    return f"{readable}~{base64.b32encode(digest).decode().lower()}"


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def extension_for(content_type: str | None, head: bytes) -> str | None:
    """The file extension for an image: from its content type, else from its first bytes.

    Returns ``None`` when the answer is not an image.
    """
    media = _media_type(content_type)
    if media in _EXTENSIONS:
        return _EXTENSIONS[media]
    if media not in _UNTYPED:
        return None
    for magic, extension in _MAGIC:
        if head.startswith(magic):
            return extension
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def _label(url: httpx.URL) -> str:
    # The query of a signed URL is a credential of sorts, as is a user and password: errors name the URL without them.
    return str(url.copy_with(query=None, fragment=None, userinfo=b""))


def _http_url(url: httpx.URL) -> str | None:
    """What is wrong with ``url`` as the address of an image, if anything."""
    if url.scheme not in ("http", "https") or not url.raw_host:
        return "is not an http(s) URL"
    if url.port is not None and not 0 < url.port < 65536:
        return "has a port out of range"
    try:
        # httpx decodes an IDNA host name when it is read, and refuses one that is not valid then.
        url.host.encode()
    except UnicodeError:
        return "has a host name that is not valid"
    return None


def _result_url(raw: object) -> tuple[httpx.URL | None, str]:
    """``raw`` parsed as the address of an image (``None`` if it does not parse), and what is wrong with it."""
    if not isinstance(raw, str):
        return None, "is not a string"
    if _NOT_IN_URL.search(raw):
        return None, "holds whitespace, a control character or a lone surrogate"
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, ValueError, TypeError):
        return None, "is not a valid URL"
    # httpx reads a port in any script's digits (":\u0663" is port 3), or a negative one.
    written = _PORT.match(raw)
    port = written.group(1) if written else None
    if port and not (port.isascii() and port.isdigit()):
        return url, "has a port that is not a number"
    return url, _http_url(url) or ""


def _retry_after(hint: str | None) -> float | None:
    return retry_after_seconds(hint, now=time.time(), cap=_MAX_RETRY_AFTER)


async def download_result(
    http_client: httpx.AsyncClient,
    result: GenerationResult,
    dest_dir: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_DOWNLOAD_MAX_BYTES,
    max_retries: int = DEFAULT_DOWNLOAD_RETRIES,
    timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,  # noqa: ASYNC109 - per attempt, which a caller's own deadline cannot be
    rng: random.Random | None = None,
) -> list[Path]:
    """Download every image of ``result`` into ``dest_dir``; return the paths written, in order.

    Image ``n`` (from 0) of task ``T`` is saved as ``<stem>-n.<ext>``, the
    stem from `safe_stem` (``T`` itself for a plain id), the extension from
    the answer's content type (or, for an untyped answer, its first bytes),
    never from the URL. ``dest_dir`` is created if missing; an existing file
    of the same name is replaced atomically, and downloads of one image
    running at once each finish whole.

    Args:
        max_bytes: Cap on each image, counted after its ``Content-Encoding``
            is undone, as it streams: a body that inflates past it is stopped
            there.
        max_retries: Retries of an image after a transient failure (a 5xx, a
            429, a connection error, a body cut short).
        timeout: Seconds each attempt at an image may take, from connecting
            to its last byte (default 300). An attempt over it is a
            `DownloadError` and is not retried, so an image takes at most
            about ``(max_retries + 1) * timeout`` plus the waits between.

    Raises:
        InvalidRequestError: ``max_bytes``, ``max_retries`` or ``timeout`` is out of range.
        ResultExpiredError: A result host answered 403, 404 or 410.
        DownloadError: An image could not be downloaded (a bad URL or redirect,
            too large, not an image, over its deadline, still failing after
            ``max_retries`` retries, or a disk error).
    """
    check_positive_int(max_bytes, "max_bytes")
    check_non_negative_int(max_retries, "max_retries")
    deadline = check_seconds(timeout, "timeout")
    directory = Path(dest_dir)
    try:
        await anyio.Path(directory).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"cannot create the directory {str(directory)!r}: {exc.strerror or exc}",
            url="",
            task_id=result.task_id,
        ) from exc
    stem = safe_stem(result.task_id)
    fetch = _Fetch(
        http_client, max_bytes=max_bytes, max_retries=max_retries, timeout=deadline, rng=rng or random.Random()
    )
    return [
        await fetch.one(url, directory, f"{stem}-{index}", task_id=result.task_id)
        for index, url in enumerate(result.images)
    ]


def _declared_length(response: httpx.Response) -> int | None:
    """The body length the answer declares, if it declares one in plain digits."""
    declared = response.headers.get("content-length", "")
    if not (declared.isascii() and declared.isdigit()):
        return None
    # More digits than any cap has, and than int() would read.
    return int(declared) if len(declared) < 19 else sys.maxsize


class _Fetch:
    """The download of one image after another, with the same limits and retry policy."""

    __slots__ = ("_client", "_max_bytes", "_max_retries", "_rng", "_timeout")

    def __init__(
        self, client: httpx.AsyncClient, *, max_bytes: int, max_retries: int, timeout: float, rng: random.Random
    ) -> None:
        self._client = client
        self._max_bytes = max_bytes
        self._max_retries = max_retries
        self._timeout = timeout
        self._rng = rng

    async def one(self, raw_url: str, directory: Path, name: str, *, task_id: str) -> Path:
        """Download one image to ``directory/name.<ext>``, retrying transient failures."""
        url, wrong = _result_url(raw_url)
        if wrong or url is None:
            # A URL that does not parse is not shown: it may be anything, signature and all.
            label = "" if url is None else _label(url)
            shown = f" {label!r}" if label else ""
            raise DownloadError(f"the result URL{shown} {wrong}", url=label, task_id=task_id)
        label = _label(url)
        attempt = 0
        while True:
            try:
                with anyio.move_on_after(self._timeout):
                    return await self._attempt(url, directory, name, task_id=task_id)
                # A host this slow once is as slow again: the deadline is not retried.
                raise DownloadError(
                    f"GET {label} took more than {self._timeout:g} s (the download's timeout)",
                    url=label,
                    task_id=task_id,
                )
            except (APIConnectionError, APIResponseError) as exc:
                failure: Exception = exc
                if status_decision(outcome_of(exc)) == "raise":
                    raise DownloadError(f"GET {label}: {exc}", url=label, task_id=task_id) from exc
                retry_after = None
                status_code = exc.status_code if isinstance(exc, APIResponseError) else None
            except ConfigurationError as exc:
                # A transport of the caller's client that takes no http(s) URL: nothing to retry.
                raise DownloadError(f"GET {label}: {exc}", url=label, task_id=task_id) from exc
            except _Transient as exc:
                failure, retry_after, status_code = exc, exc.retry_after, exc.status_code
            if attempt >= self._max_retries:
                raise DownloadError(
                    f"GET {label} failed after {attempt + 1} attempt(s): {failure}",
                    url=label,
                    task_id=task_id,
                    status_code=status_code,
                ) from failure
            await anyio.sleep(retry_after if retry_after is not None else backoff(attempt, rng=self._rng))
            attempt += 1

    async def _attempt(self, url: httpx.URL, directory: Path, name: str, *, task_id: str) -> Path:
        label = _label(url)
        client = self._client
        headers = {"Accept": "image/*", "Accept-Encoding": ACCEPT_ENCODING, "User-Agent": USER_AGENT}
        request = client.build_request("GET", url, headers=headers)
        # A caller's http client may carry default headers meant for the API: none of them leave for a result host.
        request.headers.pop("Authorization", None)
        # Redirects are followed here, not by httpx, so that each Location is checked like the URL itself.
        for _ in range(client.max_redirects + 1):
            with translated("GET", request.url.path):
                try:
                    response = await client.send(request, stream=True, auth=None, follow_redirects=False)
                except (httpx.InvalidURL, UnicodeError) as exc:
                    # httpx builds the next request from a Location as the answer comes, and fails there.
                    raise DownloadError(
                        f"GET {label} was redirected to a Location that is not a valid URL", url=label, task_id=task_id
                    ) from exc
                try:
                    redirect = response.next_request
                    if redirect is None:
                        self._check_status(response, label, task_id)
                        return await self._save(response, directory, name, label, task_id)
                finally:
                    await response.aclose()
            wrong = _http_url(redirect.url)
            if wrong:
                raise DownloadError(
                    f"GET {label} was redirected to {_label(redirect.url)!r}, which {wrong}",
                    url=label,
                    task_id=task_id,
                    status_code=response.status_code,
                )
            request = redirect
        raise DownloadError(
            f"GET {label}: more than {client.max_redirects} redirects",
            url=label,
            task_id=task_id,
            status_code=response.status_code,
        )

    def _check_status(self, response: httpx.Response, label: str, task_id: str) -> None:
        code = response.status_code
        if 200 <= code < 300:
            content_type = response.headers.get("content-type")
            media = _media_type(content_type)
            if media not in _EXTENSIONS and media not in _UNTYPED:
                raise DownloadError(
                    f"GET {label} answered with {content_type!r}, not an image", url=label, task_id=task_id
                )
            declared = _declared_length(response)
            if declared is not None and declared > self._max_bytes:
                raise DownloadError(
                    f"GET {label}: the image declares {declared} bytes, more than the cap of {self._max_bytes} bytes",
                    url=label,
                    task_id=task_id,
                    status_code=code,
                )
            return
        if code in _EXPIRED:
            raise ResultExpiredError(
                f"GET {label} answered {code}: the result URL has expired or the image is gone",
                url=label,
                task_id=task_id,
                status_code=code,
            )
        if status_decision(code) == "retry":
            raise _Transient(
                f"HTTP {code}", status_code=code, retry_after=_retry_after(response.headers.get("retry-after"))
            )
        raise DownloadError(f"GET {label} answered {code}", url=label, task_id=task_id, status_code=code)

    async def _save(self, response: httpx.Response, directory: Path, name: str, label: str, task_id: str) -> Path:
        temporary = directory / f".{name}.{secrets.token_hex(4)}.part"
        try:
            file = await anyio.to_thread.run_sync(_create, temporary)
        except OSError as exc:
            raise DownloadError(
                f"cannot write into {str(directory)!r}: {exc.strerror or exc}", url=label, task_id=task_id
            ) from exc
        finished = False
        try:
            head = b""
            size = 0
            # aclosing: leaving early (over the cap) finalises the body's generators now, not at collection.
            async with contextlib.aclosing(decoded_chunks(response, limit=self._max_bytes)) as body:
                async for chunk in body:
                    size += len(chunk)
                    if len(head) < 16:
                        head += chunk[:16]
                    await anyio.to_thread.run_sync(file.write, chunk)
            declared = _declared_length(response)
            # Without a content coding the bytes received are the bytes declared: a body
            # cut short is never mistaken for an image, whatever the transport checked.
            encoded = "content-encoding" in response.headers
            if declared is not None and not encoded and size != declared:
                raise _Transient(
                    f"the body was cut short: {size} of {declared} bytes", status_code=response.status_code
                )
            extension = extension_for(response.headers.get("content-type"), head)
            if extension is None:
                raise DownloadError(f"GET {label}: the answer is not an image", url=label, task_id=task_id)
            final = directory / f"{name}.{extension}"
            with anyio.CancelScope(shield=True):
                # Whole once renamed: the deadline or a cancelled caller cannot leave it half-committed.
                await anyio.to_thread.run_sync(_commit, file, temporary, final)
            finished = True
            return final
        except BodyTooLarge as exc:
            raise DownloadError(
                f"GET {label}: the image is larger than the cap of {self._max_bytes} bytes",
                url=label,
                task_id=task_id,
                status_code=response.status_code,
            ) from exc
        except BodyUndecodable as exc:
            raise DownloadError(f"GET {label}: {exc}", url=label, task_id=task_id) from exc
        except OSError as exc:
            raise DownloadError(
                f"cannot write {str(temporary)!r}: {exc.strerror or exc}", url=label, task_id=task_id
            ) from exc
        finally:
            if not finished:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_discard, file, temporary)


if sys.platform == "win32":
    # Windows refuses to delete or rename a file some download has open: that is its lock.

    def _hold(file: IO[bytes]) -> None:
        return None

    def _sweep(directory: Path, name: str) -> None:
        for stale in directory.glob(f".{name}.*.part"):
            with contextlib.suppress(OSError):
                if time.time() - stale.stat().st_mtime >= _STALE_AFTER:
                    stale.unlink()

else:
    import fcntl

    def _hold(file: IO[bytes]) -> None:
        # Held until the file is closed: a sweep by another download passes it by.
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _sweep(directory: Path, name: str) -> None:
        for stale in directory.glob(f".{name}.*.part"):
            with contextlib.suppress(OSError):
                if time.time() - stale.stat().st_mtime < _STALE_AFTER:
                    continue
                with open(stale, "rb") as held:
                    # A download still writing it, in this process or another, holds its lock.
                    fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    stale.unlink()


def _create(path: Path) -> IO[bytes]:
    # "x": a name that exists is never written through, whoever made it.
    file = open(path, "xb")  # noqa: SIM115 - closed by `_commit` or `_discard`
    try:
        _hold(file)
    except OSError:
        file.close()
        path.unlink(missing_ok=True)
        raise
    return file


def _commit(file: IO[bytes], temporary: Path, final: Path) -> None:
    """Make the complete temporary file durable, then give it its final name in one step."""
    file.flush()
    os.fsync(file.fileno())
    if sys.platform == "win32":
        file.close()
        os.replace(temporary, final)
    else:
        # Renamed while still held, so that no sweep takes it between the two.
        os.replace(temporary, final)
        file.close()
    # Temporary files of the same image left by an interrupted run are garbage now;
    # those of a download still running are left to it.
    _sweep(final.parent, final.stem)


def _discard(file: IO[bytes], temporary: Path) -> None:
    file.close()
    temporary.unlink(missing_ok=True)
