"""`Secret`: the API key found, and blanked out, in every spelling a server may echo it in."""

from __future__ import annotations

import html
import json
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from banana2_async._secret import REDACTED, Secret

KEY = "sk-test/abc+def/123+XYZ"
# A key is printable ASCII without whitespace (the client refuses anything else).
KEYS = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=8, max_size=64)


def _spell(char: str, form: int) -> str:
    code = ord(char)
    return [
        char,
        f"\\u{code:04x}",
        f"\\u{code:04X}",
        f"%{code:02X}",
        f"%{code:02x}",
        f"%25{code:02X}",
        f"&#{code};",
        f"&#x{code:x};",
        f"\\\\u{code:04x}",
        "\\/" if char == "/" else char,
    ][form]


@given(key=KEYS, forms=st.lists(st.integers(0, 9), min_size=64, max_size=64), around=st.text(max_size=20))
def test_every_mix_of_spellings_is_redacted(key: str, forms: list[int], around: str) -> None:
    """Each character of the key in any spelling, mixed freely, is still found and blanked out."""
    spelled = "".join(_spell(char, form) for char, form in zip(key, forms, strict=False))
    text = f"{around}{spelled}{around}"
    secret = Secret(key)
    assert REDACTED in secret.redact_text(text)
    assert REDACTED.encode() in secret.redact(text.encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize(
    "echo",
    [
        KEY,
        json.dumps(KEY),
        json.dumps(KEY).replace("/", "\\/"),
        json.dumps(KEY, ensure_ascii=True),
        urllib.parse.quote(KEY, safe=""),
        urllib.parse.quote_plus(KEY),
        html.escape(KEY).replace("/", "&sol;").replace("+", "&plus;"),
        json.dumps(json.dumps(KEY)),
    ],
)
def test_the_common_echoes_are_redacted(echo: str) -> None:
    """The key as JSON, percent- or HTML-encoded, or JSON inside JSON, is blanked out of bytes and text."""
    secret = Secret(KEY)
    assert KEY not in urllib.parse.unquote(secret.redact_text(f"key={echo};"))
    assert secret.redact(f"key={echo};".encode()).startswith(b"key=")
    assert REDACTED in secret.redact_text(echo)


def test_text_without_the_key_is_left_as_it_is() -> None:
    """An answer that does not hold the key comes back unchanged, escapes and all."""
    secret = Secret(KEY)
    body = b'{"response": ["https:\\/\\/cdn.example\\/a%20b.png"], "note": "&amp; sk-test"}'
    assert secret.redact(body) is body
    assert secret.redact_text("plain") == "plain"


def test_a_short_key_is_not_looked_for() -> None:
    """A key under 8 characters is not redacted: it would blank out ordinary words."""
    assert Secret("abc").redact(b"abc abc") == b"abc abc"


def test_the_secret_shows_nothing_of_the_key() -> None:
    """repr of a `Secret` says nothing of the key."""
    assert KEY not in repr(Secret(KEY))


def test_an_exception_chain_is_redacted_in_place() -> None:
    """The text arguments of an error and of every error it was raised from or during are redacted."""
    inner = ValueError(f"bad header line: {KEY!r}".encode())
    middle = RuntimeError("while parsing", KEY)
    middle.__context__ = inner
    outer = OSError(f"cause: {urllib.parse.quote(KEY, safe='')}", 7)
    outer.__cause__ = middle
    Secret(KEY).redact_exception(outer)
    texts = [repr(outer.args), repr(middle.args), repr(inner.args)]
    assert all(KEY not in urllib.parse.unquote(text) for text in texts)
    assert outer.args[1] == 7


@pytest.mark.parametrize("echo", [KEY.upper(), KEY.lower(), urllib.parse.quote(KEY, safe="").lower()])
def test_the_key_in_another_letter_case_is_redacted(echo: str) -> None:
    """A proxy that upper- or lower-cased what it echoed still gives most of the key away: it is blanked out."""
    assert Secret(KEY).redact_text(f"<{echo}>") == f"<{REDACTED}>"
