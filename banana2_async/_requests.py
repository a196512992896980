"""The API's two requests, built from the client's headers once, and the base URL they go to.

`RequestFactory` makes ``GET /api/status`` and ``POST /api/generate``
requests exactly as httpx's ``build_request`` would, from a template kept per
method while the httpx client's own headers stay the same: building one is
then a URL and a request object, not a merge of headers, cookies and params.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Final

import httpx

from ._exceptions import ConfigurationError, InvalidRequestError
from ._version import __version__

__all__ = ["API_CODINGS", "USER_AGENT", "RequestFactory", "check_base_url"]

USER_AGENT: Final = f"banana2-async/{__version__}"
# The content codings asked for on API answers: a window of 32 KiB each, where br and zstd let the
# sender choose one of megabytes, and API answers are too small to gain from them.
API_CODINGS: Final = ("gzip", "deflate")

_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
# A task id httpx would put in a query string as it is (unreserved characters only).
_PLAIN_QUERY_VALUE: Final = re.compile(r"[A-Za-z0-9._~-]+")


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


class RequestFactory:
    """The API's requests for one httpx client and one key.

    The key lives in one header mapping here; it is never logged, repr'd or
    put in an error.
    """

    __slots__ = ("_client", "_generate_url", "_headers", "_status_prefix", "_status_url", "_templates", "_timeout")

    def __init__(self, client: httpx.AsyncClient, *, api_key: str, base_url: httpx.URL, timeout: httpx.Timeout) -> None:
        if not api_key.isascii():
            # httpx would fail on the header with a bare UnicodeEncodeError at the first request.
            raise ConfigurationError("the API key contains non-ASCII characters")
        self._client = client
        self._timeout = timeout
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

    def __repr__(self) -> str:
        return f"<RequestFactory {str(self._status_url)!r}>"

    def _template(self, method: str, url: httpx.URL) -> tuple[httpx.Headers, dict[str, Any]] | None:
        """The headers and extensions ``build_request`` gives this factory's ``method`` request to ``url``.

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

    def status(self, task_id: str) -> httpx.Request:
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

    def generate(self, body: dict[str, Any]) -> httpx.Request:
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
