"""The formats of a bulk run's input: which one a file is, and its rows as raw fields, each with its line.

Pure functions of the decoded text. Every parser is strict: a file that
does not parse is refused with the line (and column) of the problem, never
read as some other format.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Final, Literal

from banana2_async._exceptions import InvalidRequestError

__all__ = [
    "EXTENSIONS",
    "FORMATS",
    "Format",
    "Parsed",
    "RawRow",
    "detect_format",
    "header_name",
    "parse_rows",
]

Format = Literal["csv", "tsv", "json", "jsonl", "text"]
FORMATS: Final[tuple[Format, ...]] = ("csv", "tsv", "json", "jsonl", "text")
EXTENSIONS: Final[dict[str, Format]] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
# A CSV file from a spreadsheet set to a comma-decimal locale separates its cells with ";".
_CSV_DELIMITERS: Final = (",", ";", "\t")
_SHOWN: Final = 40
_HINT_TEXT: Final = "--format text sends each line as a prompt"


@dataclass(frozen=True, slots=True)
class RawRow:
    """One row of an input as the file holds it: its fields, and where it is (``where`` names it for a person)."""

    line: int
    where: str
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Parsed:
    """The rows of an input; for CSV and TSV also its columns, as named on the header row at ``header_line``."""

    rows: list[RawRow]
    columns: list[str] | None = None
    header_line: int = 0


def _fail(source: str, where: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{source}, {where}: {message}", field="requests")


def _shown(text: str) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= _SHOWN else flat[: _SHOWN - 1] + "…")


def header_name(cell: str) -> str:
    """A column name as the header spells it, made comparable: ``" Aspect Ratio"`` is ``aspect_ratio``."""
    return re.sub(r"[\s\-]+", "_", cell.strip().lower())


def _significant(text: str, *, comments: bool) -> Iterator[tuple[int, str]]:
    """(line number, line) of each line that is not blank (nor, with ``comments``, a ``#`` comment)."""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped and not (comments and stripped.startswith("#")):
            yield number, line


def _csv_header(line: str, delimiters: tuple[str, ...]) -> str | None:
    """The delimiter with which ``line`` is a header row naming a ``prompt`` column, if any."""
    for delimiter in delimiters:
        try:
            cells = next(csv.reader([line], delimiter=delimiter))
        except (csv.Error, StopIteration):
            continue
        if "prompt" in (header_name(cell) for cell in cells):
            return delimiter
    return None


def detect_format(name: str, text: str) -> Format:
    """The format of a file named ``name`` holding ``text``: from its extension, else from its first line.

    Without a known extension: a first line starting with ``{`` is JSON Lines,
    one opening an array of objects or strings is JSON, a header row naming a
    ``prompt`` column is CSV (TSV with tabs), anything else is text. The
    content of a file with a known extension is checked by its parser.
    """
    known = EXTENSIONS.get(PurePath(name).suffix.lower())
    if known is not None:
        return known
    first = next(_significant(text, comments=False), (0, ""))[1].strip()
    if first.startswith("#"):
        # A comment line opens JSON Lines if a request object comes next; otherwise it is a prompt.
        following = next(_significant(text, comments=True), (0, ""))[1].strip()
        return "jsonl" if following.startswith("{") else "text"
    if first.startswith("{"):
        return "jsonl"
    if first.startswith("[") and first[1:].lstrip()[:1] in ("", "{", '"', "]"):
        return "json"
    if "\t" in first and _csv_header(first, ("\t",)):
        return "tsv"
    if _csv_header(first, (",", ";")):
        return "csv"
    return "text"


def parse_rows(text: str, format: Format, *, source: str) -> Parsed:
    """The rows of ``text`` read as ``format``.

    Raises:
        InvalidRequestError: the text does not parse as ``format``; the message names the line (and column).
    """
    if format == "text":
        return Parsed(
            [
                RawRow(number, f"line {number}", {"prompt": line.strip()})
                for number, line in _significant(text, comments=False)
            ]
        )
    if format == "jsonl":
        return Parsed(_jsonl(text, source))
    if format == "json":
        return Parsed(_json(text, source))
    return _csv(text, source, ("\t",) if format == "tsv" else _CSV_DELIMITERS, format)


def _fields_of(value: Any, source: str, where: str, what: str) -> dict[str, Any]:
    if isinstance(value, str):
        return {"prompt": value}
    if isinstance(value, dict):
        return value
    raise _fail(source, where, f"{what} must be a request object or a prompt string, not {type(value).__name__}")


def _jsonl(text: str, source: str) -> list[RawRow]:
    rows: list[RawRow] = []
    for number, line in _significant(text, comments=True):
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = f"; {_HINT_TEXT}" if not line.lstrip().startswith(("{", "[", '"')) else ""
            raise _fail(source, f"line {number}, column {exc.colno}", f"not valid JSON ({exc.msg}){hint}") from None
        where = f"line {number}"
        rows.append(RawRow(number, where, _fields_of(value, source, where, "a line")))
    return rows


def _json(text: str, source: str) -> list[RawRow]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        hint = ""
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            hint = "; it looks like JSON Lines (one request per line): name it .jsonl, or pass --format jsonl"
        elif not text.lstrip().startswith(("[", "{")):
            hint = f"; {_HINT_TEXT}"
        raise _fail(source, where, f"not valid JSON ({exc.msg}){hint}") from None
    if not isinstance(document, list):
        raise _fail(
            source, "line 1", f"a JSON input must be an array of requests or prompts, not {type(document).__name__}"
        )
    rows: list[RawRow] = []
    for number, (value, line) in enumerate(_array_items(text), start=1):
        where = f"item {number} (line {line})"
        rows.append(RawRow(line, where, _fields_of(value, source, where, "an item")))
    return rows


def _array_items(text: str) -> Iterator[tuple[Any, int]]:
    """Each item of the JSON array ``text`` (known to be valid) with the line it starts on."""
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    line, counted = 1, 0
    while True:
        while text[position] in " \t\r\n,":
            position += 1
        if text[position] == "]":
            return
        line += text.count("\n", counted, position)
        counted = position
        value, position = decoder.raw_decode(text, position)
        yield value, line


def _csv(text: str, source: str, delimiters: tuple[str, ...], format: Format) -> Parsed:
    name = "TSV" if format == "tsv" else "CSV"
    first = next(_significant(text, comments=False), None)
    if first is None:
        return Parsed([])
    delimiter = _csv_header(first[1], delimiters)
    if delimiter is None:
        raise _fail(
            source,
            f"line {first[0]}",
            f"a {name} input needs a header row naming its columns, with a 'prompt' column; the first line is "
            f"{_shown(first[1])}. Add a header row (prompt,aspect_ratio,...), or {_HINT_TEXT}",
        )
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[RawRow] = []
    header: list[str] | None = None
    header_line = end = 0
    try:
        for cells in reader:
            start, end = end + 1, reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if header is None:
                header = [header_name(cell) for cell in cells]
                header_line = start
                _check_header(header, source, start)
                continue
            if len(cells) > len(header):
                raise _fail(
                    source,
                    f"line {start}",
                    f"{len(cells)} cells where the header has {len(header)}: put a prompt holding "
                    f"{_delimiter_name(delimiter)} in double quotes",
                )
            fields = {column: cell for column, cell in zip(header, cells, strict=False) if cell.strip()}
            rows.append(RawRow(start, f"line {start}", fields))
    except csv.Error as exc:
        raise _fail(source, f"line {reader.line_num}", f"not valid {name} ({exc})") from None
    return Parsed(rows, header, header_line)


def _delimiter_name(delimiter: str) -> str:
    return {",": "commas", ";": "semicolons", "\t": "tabs"}[delimiter]


def _check_header(header: list[str], source: str, line: int) -> None:
    seen: set[str] = set()
    for column in header:
        if not column:
            raise _fail(source, f"line {line}", "the header row has a column without a name")
        if column in seen:
            raise _fail(source, f"line {line}", f"the header row names the column {column!r} twice")
        seen.add(column)
