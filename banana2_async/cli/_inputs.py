"""Reading the input of a bulk run: its bytes decoded, its format found, its rows made into requests.

An input is CSV or TSV (a header row, a ``prompt`` column), JSON (an array of
request objects or prompts), JSON Lines (one per line; blank and ``#``
lines skipped) or text (one prompt per line); see `_formats`. It is UTF-8,
with or without a byte-order mark, or UTF-16 or UTF-32 with one, or the
encoding named. Anything that cannot be read is refused with a message
naming the file and the place, before anything is sent.
"""

from __future__ import annotations

import codecs
import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from banana2_async._exceptions import InvalidRequestError
from banana2_async._models import GenerationRequest

from ._formats import Format, RawRow, detect_format, parse_rows

__all__ = ["COLUMNS", "META_PREFIX", "Input", "InputRow", "decode", "parse_requests", "read_input"]

# The request's own fields, and the row's id; columns named meta_* are the user's, kept as they are.
COLUMNS: Final = ("prompt", "id", "type", "images", "aspect_ratio", "resolution", "output_format")
META_PREFIX: Final = "meta_"
_REQUEST_FIELDS: Final = frozenset(COLUMNS) - {"id"}
# Longest first: a UTF-32 mark begins like a UTF-16 one.
_BOMS: Final = (
    (codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32 (with BOM)"),
    (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32 (with BOM)"),
    (codecs.BOM_UTF8, "utf-8", "UTF-8 (with BOM)"),
    (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16 (with BOM)"),
    (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16 (with BOM)"),
)


@dataclass(frozen=True, slots=True)
class InputRow:
    """One row of the input: its request, its id (if the input gives ids), and the user's own fields.

    ``number`` is its position among the rows (from 1), ``line`` the line it starts on.
    """

    number: int
    line: int
    request: GenerationRequest
    id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Input:
    """A bulk run's input, read: where from, in which format and encoding, and its rows."""

    source: str
    format: Format
    encoding: str
    rows: list[InputRow]

    @property
    def requests(self) -> list[GenerationRequest]:
        """The request of each row."""
        return [row.request for row in self.rows]

    @property
    def ids(self) -> list[str | None]:
        """The id of each row."""
        return [row.id for row in self.rows]


def decode(data: bytes, *, source: str, encoding: str | None = None) -> tuple[str, str]:
    """The text of ``data`` and the name of its encoding.

    Without ``encoding``: a byte-order mark says UTF-8, UTF-16 or UTF-32;
    without one it must be UTF-8.

    Raises:
        InvalidRequestError: the bytes are not text in that encoding; the message names the byte offset.
    """
    if encoding is not None:
        codec = codecs.lookup(encoding).name
        text = _decoded(data, codec, 0, source, encoding)
        return text.removeprefix("\ufeff"), encoding
    for mark, codec, name in _BOMS:
        if data.startswith(mark):
            return _decoded(data[len(mark) :], codec, len(mark), source, name), name
    return _decoded(data, "utf-8", 0, source, "UTF-8"), "UTF-8"


def _decoded(data: bytes, codec: str, skipped: int, source: str, name: str) -> str:
    wide = codec.startswith(("utf-16", "utf-32"))
    hint = _hint(data) if not wide else "name its encoding with --encoding, or save it as UTF-8"
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        bad = " ".join(f"0x{byte:02x}" for byte in data[exc.start : min(exc.end, exc.start + 4)])
        message = f"{bad}, which is not {name} ({exc.reason})"
        raise _unreadable(source, name, data, skipped, exc.start, message, hint, lines=not wide) from None
    if "\x00" in text:
        # Text never holds NUL; UTF-16 read as UTF-8 holds one every other byte.
        offset = len(text[: text.index("\x00")].encode(codec))
        raise _unreadable(source, name, data, skipped, offset, "a NUL character", hint, lines=not wide)
    return text


def _hint(data: bytes) -> str:
    """What bytes that are not UTF-8 (or hold NUL) may be instead."""
    sample = data[:400]
    if b"\x00" not in sample:
        return "name its encoding with --encoding (cp1252, latin-1, ...), or save it as UTF-8"
    # ASCII in UTF-16 is every other byte zero: the odd ones for little-endian, the even ones for big-endian.
    half = len(sample) // 2
    if half and sample[1::2].count(0) > 0.6 * half:
        return "it looks like UTF-16 without a byte-order mark: --encoding utf-16-le"
    if half and sample[0::2].count(0) > 0.6 * half:
        return "it looks like UTF-16 without a byte-order mark: --encoding utf-16-be"
    return "it does not look like a text file"


def _unreadable(
    source: str, name: str, data: bytes, skipped: int, start: int, what: str, hint: str, *, lines: bool
) -> InvalidRequestError:
    where = f"byte offset {skipped + start}"
    if lines:
        line = data.count(b"\n", 0, start) + 1
        where += f" (line {line})"
    return InvalidRequestError(f"{source} is not {name} text: {where} holds {what}; {hint}", field="encoding")


def read_input(
    data: bytes, *, source: str, name: str | None = None, format: Format | None = None, encoding: str | None = None
) -> Input:
    """The rows of an input file's bytes. ``name`` (the file's name) tells its format unless ``format`` does.

    Raises:
        InvalidRequestError: the file cannot be decoded or parsed, or a row is not a valid request; the
            message names the place. Nothing is sent.
    """
    text, encoding_name = decode(data, source=source, encoding=encoding)
    chosen = format or detect_format(name or source, text)
    parsed = parse_rows(text, chosen, source=source)
    if parsed.columns is not None:
        _check_columns(parsed.columns, source, parsed.header_line)
    rows = _input_rows(parsed.rows, source)
    if not rows:
        raise InvalidRequestError(f"{source} holds no requests", field="requests")
    return Input(source, chosen, encoding_name, rows)


def parse_requests(lines: Iterable[str], *, source: str = "FILE") -> list[GenerationRequest]:
    """The requests in ``lines`` of text, in the format their content shows (JSON Lines, CSV, JSON or text).

    Raises:
        InvalidRequestError: a line is not valid; the message names it.
    """
    text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    return read_input(text.encode("utf-8", errors="surrogatepass"), source=source, name="").requests


def _check_columns(columns: Sequence[str], source: str, line: int) -> None:
    unknown = [column for column in columns if column not in COLUMNS and not column.startswith(META_PREFIX)]
    if not unknown:
        return
    named = []
    for column in unknown:
        close = difflib.get_close_matches(column, COLUMNS, n=1)
        named.append(f"{column!r} (did you mean {close[0]!r}?)" if close else repr(column))
    raise InvalidRequestError(
        f"{source}, line {line}: unknown column{'s' if len(unknown) > 1 else ''} {', '.join(named)}; "
        f"the columns are {', '.join(COLUMNS)}, and {META_PREFIX}* for your own, kept in the manifest",
        field=unknown[0],
    )


def _input_rows(raw_rows: Sequence[RawRow], source: str) -> list[InputRow]:
    rows: list[InputRow] = []
    ids: dict[str, RawRow] = {}
    for number, raw in enumerate(raw_rows, start=1):
        fields, row_id, metadata = _split(raw, source)
        if row_id is not None:
            earlier = ids.setdefault(row_id, raw)
            if earlier is not raw:
                message = f"the id {row_id!r} is already the id of {earlier.where}; ids must be unique"
                raise InvalidRequestError(f"{source}, {raw.where}: {message}", field="id")
        try:
            request = GenerationRequest(**fields)
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"{source}, {raw.where}: {exc.message}", field=exc.field) from None
        rows.append(InputRow(number, raw.line, request, row_id, metadata))
    return rows


def _split(raw: RawRow, source: str) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """A raw row's request fields, id and metadata; an unknown field is refused, with a likely meaning."""
    fields: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    row_id: str | None = None
    from_text = all(isinstance(value, str) for value in raw.fields.values())
    for name, value in raw.fields.items():
        if name.startswith(META_PREFIX):
            metadata[name] = value
        elif name == "id":
            row_id = _row_id(value, source, raw)
        elif name in _REQUEST_FIELDS:
            fields[name] = _cell(name, value, source, raw) if from_text else value
        else:
            close = difflib.get_close_matches(name, COLUMNS, n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            raise InvalidRequestError(
                f"{source}, {raw.where}: unknown field {name!r}{guess}; the fields are {', '.join(COLUMNS)}, "
                f"and {META_PREFIX}* for your own, kept in the manifest",
                field=name,
            )
    if "prompt" not in fields:
        raise InvalidRequestError(f"{source}, {raw.where}: the row has no prompt", field="prompt")
    return fields, row_id, metadata


def _row_id(value: Any, source: str, raw: RawRow) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidRequestError(
            f"{source}, {raw.where}: an id must be a string or a whole number, not {type(value).__name__}", field="id"
        )
    text = str(value).strip()
    return text or None


def _cell(name: str, value: str, source: str, raw: RawRow) -> Any:
    """A CSV cell as the request takes it: ``images`` as a JSON array or URLs separated by ``|``."""
    if name != "images":
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            urls = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(
                f"{source}, {raw.where}: images is not a valid JSON array ({exc.msg}); "
                "give a JSON array, or URLs separated by |",
                field="images",
            ) from None
        return urls
    return [url.strip() for url in text.split("|") if url.strip()]
