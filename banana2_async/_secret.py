"""The API key as a server might echo it back, and its removal from what the SDK keeps.

A server, a proxy or an attacker who received the key can send it back in
any spelling that decodes to it: verbatim, as JSON escapes (``\\/``, or
``\\u0041`` for any character), percent-encoded (once or more), as HTML
character references, or behind extra backslashes of a doubly escaped
document. `Secret` matches each character of the key in every one of those
spellings at once, so a mixed spelling is found too. Pure: no I/O.
"""

from __future__ import annotations

import logging
import re
import weakref
from typing import Final

__all__ = ["MIN_REDACTED", "REDACTED", "Secret", "redact_library_logs"]

REDACTED: Final = "[redacted]"
# Shorter keys are not looked for: a two-letter "key" would blank out half of every answer.
MIN_REDACTED: Final = 8


# HTML's named references for the punctuation keys are made of.
_NAMED: Final = {"/": "&sol;", "+": "&plus;", "=": "&equals;", "_": "&lowbar;", ".": "&period;", "-": "&hyphen;"}


def _hex(code: int) -> str:
    """A regex for ``code`` as two hex digits (the pattern ignores case: ``2f`` or ``2F``)."""
    return f"{code:02x}"


def _spellings(char: str) -> str:
    """A regex alternation of every way ``char`` may be written in an echoed body."""
    code = ord(char)
    hexed = _hex(code)
    forms = [
        re.escape(char),
        rf"\\+u00{hexed}",  # JSON (and a doubly escaped JSON) \u escape
        rf"\\+x{hexed}",  # a \x escape
        rf"%(?:25)*{hexed}",  # percent-encoded, once or more
        rf"&\#x0*{hexed};",  # an HTML hex character reference
        rf"&\#0*{code};",  # an HTML decimal character reference
    ]
    if char == "/":
        forms.append(r"\\+/")  # JSON may escape a slash
    named = _NAMED.get(char)
    if named is not None:
        forms.append(re.escape(named))
    return "(?:" + "|".join(forms) + ")"


class Secret:
    """The API key, and what removes it from text and bytes in any spelling.

    `redact` and `redact_text` replace each spelling of the key with
    ``[redacted]``, in any letter case (a proxy may have changed it; the rest
    would still give most of the key away). A key shorter than
    `MIN_REDACTED` characters is not looked for. Text that holds none of
    ``\\``, ``%``, ``&`` can only hold the key as it is, which a plain substring
    search finds: the common answer costs no regular expression.
    """

    __slots__ = ("__weakref__", "_lowered", "_pattern", "_text", "_text_pattern")

    def __init__(self, key: str) -> None:
        self._lowered: bytes | None = None
        self._text: str | None = None
        self._pattern: re.Pattern[bytes] | None = None
        self._text_pattern: re.Pattern[str] | None = None
        if len(key) < MIN_REDACTED or not key.isascii():
            return
        source = "".join(_spellings(char) for char in key)
        self._lowered = key.lower().encode()
        self._text = key.lower()
        self._pattern = re.compile(source.encode(), re.IGNORECASE)
        self._text_pattern = re.compile(source, re.IGNORECASE)

    def __repr__(self) -> str:
        return "<Secret [redacted]>"

    def redact(self, content: bytes) -> bytes:
        """``content`` with every spelling of the key replaced by ``[redacted]``."""
        lowered, pattern = self._lowered, self._pattern
        if lowered is None or pattern is None:
            return content
        if b"\\" not in content and b"%" not in content and b"&" not in content and lowered not in content.lower():
            return content
        return pattern.sub(REDACTED.encode(), content)

    def redact_text(self, text: str) -> str:
        """`redact` for text (a header value, an exception's message)."""
        lowered_text, pattern = self._text, self._text_pattern
        if lowered_text is None or pattern is None:
            return text
        if "\\" not in text and "%" not in text and "&" not in text and lowered_text not in text.lower():
            return text
        return pattern.sub(REDACTED, text)

    def redact_exception(self, exc: BaseException) -> None:
        """Redact the text arguments of ``exc`` and of every exception it was raised from or during.

        A lower layer's error may quote what the server sent (a header line,
        a redirect's URL); it is chained to the SDK's own error, and a
        traceback prints it.
        """
        seen: set[int] = set()
        current: BaseException | None = exc
        pending: list[BaseException] = []
        while current is not None or pending:
            if current is None:
                current = pending.pop()
            if id(current) not in seen:
                seen.add(id(current))
                current.args = tuple(self._redact_value(arg) for arg in current.args)
                if current.__context__ is not None:
                    pending.append(current.__context__)
                current = current.__cause__
            else:
                current = None

    def _redact_value(self, value: object) -> object:
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, (bytes, bytearray)):
            return self.redact(bytes(value))
        return value


# The loggers of the libraries below the SDK that may log what a server sent: httpcore logs each
# answer's headers at DEBUG (hpack too, over HTTP/2), where an echoed key would be.
_LIBRARY_LOGGERS: Final = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
    "hpack.hpack",
    "hpack.table",
    "h2.connection",
    "banana2_async",
)


class _RedactingFilter(logging.Filter):
    """Blanks out the key of every live client from the records of the loggers it is attached to.

    A filter runs only for a record that is made, so a logger below DEBUG
    costs nothing more.
    """

    def __init__(self) -> None:
        super().__init__("banana2_async.redact")
        self.secrets: weakref.WeakSet[Secret] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = list(self.secrets)
        if not secrets:
            return True
        message = record.getMessage()
        redacted = message
        for secret in secrets:
            redacted = secret.redact_text(redacted)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


_FILTER: Final = _RedactingFilter()


def redact_library_logs(secret: Secret) -> None:
    """Keep ``secret`` out of the log records of httpx, httpcore, hpack, h2 and the SDK while it lives."""
    if secret._lowered is None:
        return
    if not _FILTER.secrets:
        for name in _LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
    _FILTER.secrets.add(secret)
