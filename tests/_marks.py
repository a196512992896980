"""Pytest marks shared by several test modules."""

from __future__ import annotations

from typing import Final

import pytest

# httpx drops its inner stream generators unclosed when a body is abandoned part-way (encode/httpx#3686),
# and trio warns about them when they are collected. The SDK closes the generator it iterates; only httpx's
# inner ones (its client's bound stream, its transports' response stream, a byte stream, an iterator's
# stream, `aiter_raw`) are let through, whether the answer came by way of ``client.send`` or straight from
# the transport.
HTTPX_ABANDONED_STREAMS: Final = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <async_generator object "
    r"((BoundAsyncStream|AsyncResponseStream|AsyncIteratorByteStream|ByteStream)\.__aiter__|Response\.aiter_raw) "
    ":pytest.PytestUnraisableExceptionWarning"
)
