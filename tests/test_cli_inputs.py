"""The input of ``banana2 batch``: CSV, TSV, JSON, JSON Lines and text, in the encodings people save them in.

Pure functions of a file's bytes: no event loop, no server.
"""

from __future__ import annotations

import codecs
from typing import Any

import pytest

from banana2_async import GenerationRequest, InvalidRequestError
from banana2_async.cli._formats import detect_format
from banana2_async.cli._inputs import Input, read_input

EDIT_URL = "https://example.com/a.png"


def _read(data: bytes | str, name: str = "input", **options: Any) -> Input:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return read_input(raw, source=name, name=name, **options)


def _wire(job: Input) -> list[dict[str, Any]]:
    return [row.request.to_wire() for row in job.rows]


def test_csv_rows_carry_their_options_as_the_sdk_takes_them() -> None:
    """A CSV file's header names its columns; quoted cells hold commas; 2K and jpg are accepted; images are a JSON
    array or URLs separated by |; empty cells leave an option unset; each row knows its line."""
    job = _read(
        "prompt,Aspect Ratio,resolution,output_format,images\n"
        '"a cat, sitting",16:9,2K,jpg,\n'
        "\n"
        f'edit it,,,,"[""{EDIT_URL}""]"\n'
        f"edit both,,,,{EDIT_URL} | https://example.com/b.png\n",
        "prompts.csv",
    )
    assert (job.format, job.encoding) == ("csv", "UTF-8")
    assert _wire(job) == [
        {"prompt": "a cat, sitting", "aspect_ratio": "16:9", "resolution": "2k", "output_format": "jpeg"},
        {"prompt": "edit it", "images": [EDIT_URL]},
        {"prompt": "edit both", "images": [EDIT_URL, "https://example.com/b.png"]},
    ]
    assert [(row.number, row.line) for row in job.rows] == [(1, 2), (2, 4), (3, 5)]
    assert job.rows[1].request.credits == 24


def test_tsv_semicolons_ids_and_metadata() -> None:
    """TSV reads with tabs and CSV with semicolons; an id column names rows; meta_* columns are kept as metadata."""
    tsv = _read("id\tprompt\tmeta_owner\nhero\ta lighthouse\tana\n\tno id here\t\n", "shots.tsv")
    assert (tsv.format, tsv.ids) == ("tsv", ["hero", None])
    assert [dict(row.metadata) for row in tsv.rows] == [{"meta_owner": "ana"}, {}]
    semicolons = _read("prompt;aspect_ratio\na cat;9:16\n", "excel.csv")
    assert _wire(semicolons) == [{"prompt": "a cat", "aspect_ratio": "9:16"}]


def test_json_is_an_array_of_objects_or_prompts() -> None:
    """A JSON file is an array of request objects or prompt strings; numbers are ids too; rows know their line."""
    job = _read('[\n  {"prompt": "a", "id": 7, "resolution": "4K"},\n  "b",\n  {"prompt": "c"}\n]\n', "jobs.json")
    assert job.format == "json"
    assert _wire(job) == [{"prompt": "a", "resolution": "4k"}, {"prompt": "b"}, {"prompt": "c"}]
    assert job.ids == ["7", None, None]
    assert [row.line for row in job.rows] == [2, 3, 4]


def test_json_lines_skip_blank_and_comment_lines_and_a_bom() -> None:
    """JSON Lines saved with a byte-order mark, with blank lines and # comments, read as their requests."""
    data = codecs.BOM_UTF8 + b'# the first batch\n{"prompt": "a", "output_format": "JPG"}\n\n  # more\n"b"\n'
    job = _read(data, "jobs.jsonl")
    assert (job.format, job.encoding) == ("jsonl", "UTF-8 (with BOM)")
    assert _wire(job) == [{"prompt": "a", "output_format": "jpeg"}, {"prompt": "b"}]
    assert [row.line for row in job.rows] == [2, 5]


def test_text_is_one_prompt_per_line() -> None:
    """Text is one prompt per non-blank line, trimmed, whatever it looks like."""
    job = _read("  a cat \n\n[Draft] a dog\r\n# a hash tag\n", "prompts.txt")
    assert job.format == "text"
    assert job.requests == [
        GenerationRequest(prompt="a cat"),
        GenerationRequest(prompt="[Draft] a dog"),
        GenerationRequest(prompt="# a hash tag"),
    ]


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("a.CSV", "prompt\nx\n", "csv"),
        ("a.tab", "prompt\nx\n", "tsv"),
        ("a.ndjson", '{"prompt": "x"}\n', "jsonl"),
        ("a.txt", '{"prompt": "x"}\n', "jsonl"),
        ("-", '# comment\n{"prompt": "x"}\n', "jsonl"),
        ("-", "# not a comment, a prompt\nx\n", "text"),
        ("a.txt", '[\n  {"prompt": "x"}\n]\n', "json"),
        ("a.txt", '["x", "y"]\n', "json"),
        ("a.txt", "prompt,resolution\nx,2k\n", "csv"),
        ("a.txt", "Prompt\nx\n", "csv"),
        ("a.txt", "id\tprompt\n1\tx\n", "tsv"),
        ("a.txt", "[Draft] a cat\n", "text"),
        ("a.txt", "a prompt, with a comma\n", "text"),
    ],
)
def test_the_format_comes_from_the_extension_else_the_first_line(name: str, text: str, expected: str) -> None:
    """A known extension names the format; otherwise the first line shows it (JSON Lines, JSON, CSV, TSV, text)."""
    assert detect_format(name, text) == expected


def test_format_overrides_what_the_file_looks_like() -> None:
    """--format text sends each line of a CSV-looking file as a prompt, and --format csv reads a .txt as CSV."""
    as_text = _read("prompt,aspect_ratio\na cat,16:9\n", "p.csv", format="text")
    assert [request.prompt for request in as_text.requests] == ["prompt,aspect_ratio", "a cat,16:9"]
    as_csv = _read("prompt\na cat\n", "p.txt", format="csv")
    assert as_csv.requests == [GenerationRequest(prompt="a cat")]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("p.csv", "a cat,16:9\na dog,1:1\n", r"p.csv, line 1: a CSV input needs a header row .* --format text"),
        ("p.csv", "prompt,aspect_ratio\na cat, sitting,16:9\n", r"line 2: 3 cells where the header has 2: .*quotes"),
        ("p.csv", 'prompt\n"a cat\n', r"p.csv, line 2: not valid CSV"),
        ("p.csv", "prompt,resolutoin,notes\nx,2k,y\n", r"line 1: unknown columns 'resolutoin' \(did you mean"),
        ("p.csv", "prompt,prompt\nx,y\n", r"line 1: the header row names the column 'prompt' twice"),
        ("p.csv", "id,prompt\na,x\na,y\n", r"line 3: the id 'a' is already the id of line 2"),
        ("p.csv", "prompt,aspect_ratio\nx,7:3\n", r"p.csv, line 2: aspect_ratio must be one of"),
        ("p.csv", "prompt,images\nx,[nope\n", r"line 2: images is not a valid JSON array"),
        ("p.csv", "prompt,resolution\n,2k\n", r"line 2: the row has no prompt"),
        ("p.json", '[{"prompt": "a"},\n {"prompt": }]', r"p.json, line 2, column 13: not valid JSON"),
        ("p.json", '{"prompt": "a"}\n{"prompt": "b"}\n', r"line 2, column 1: .*looks like JSON Lines"),
        ("p.json", "a cat\n", r"p.json, line 1, column 1: not valid JSON .*--format text"),
        ("p.json", '{"prompt": "a"}', r"p.json, line 1: a JSON input must be an array"),
        ("p.json", '[\n"a",\n 3]', r"p.json, item 2 \(line 3\): an item must be a request object or a prompt"),
        ("p.json", '[{"prompt": "a", "id": [1]}]', r"item 1 \(line 1\): an id must be a string or a whole number"),
        ("p.json", '[{"prompt": "a", "colour": "red"}]', r"item 1 \(line 1\): unknown field 'colour'"),
        ("p.jsonl", '{"prompt": "a"}\na cat\n', r"p.jsonl, line 2, column 1: not valid JSON .*--format text"),
        ("p.jsonl", '{"prompt": "p", "resolution": "8k"}\n', r"p.jsonl, line 1: resolution must be one of"),
        ("p.txt", '{"prompt": "a"}\n{"prompt": \n', r"p.txt, line 2, column 12: not valid JSON"),
        ("p.txt", "prompt,resolution\nx,8k\n", r"p.txt, line 2: resolution must be one of"),
        ("p.txt", "\n  \n", r"p.txt holds no requests"),
    ],
)
def test_a_file_that_does_not_parse_is_refused_where_it_breaks(name: str, text: str, message: str) -> None:
    """An input that looks like CSV or JSON but does not parse is refused naming the line (and column), never read
    as text; so is a row that is not a valid request."""
    with pytest.raises(InvalidRequestError, match=message):
        _read(text, name)


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        ("a café\n".encode(), "UTF-8"),
        (codecs.BOM_UTF8 + "a café\n".encode(), "UTF-8 (with BOM)"),
        ("a café\n".encode("utf-16"), "UTF-16 (with BOM)"),
        (codecs.BOM_UTF16_BE + "a café\n".encode("utf-16-be"), "UTF-16 (with BOM)"),
        ("a café\n".encode("utf-32"), "UTF-32 (with BOM)"),
    ],
    ids=["utf-8", "utf-8-bom", "utf-16-le-bom", "utf-16-be-bom", "utf-32-bom"],
)
def test_unicode_with_or_without_a_byte_order_mark_is_read(data: bytes, encoding: str) -> None:
    """UTF-8 with or without a BOM, and UTF-16 or UTF-32 with one, read as the same text."""
    job = _read(data, "prompts.txt")
    assert (job.requests, job.encoding) == ([GenerationRequest(prompt="a café")], encoding)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"line one\ncaf\xe9\n", r"not UTF-8 text: byte offset 12 \(line 2\) holds 0xe9, .*--encoding \(cp1252"),
        ("a cat\n".encode("utf-16-le"), r"byte offset 1 \(line 1\) holds a NUL character; .*--encoding utf-16-le"),
        ("a cat\n".encode("utf-16-be"), r"byte offset 0 \(line 1\) holds a NUL .*--encoding utf-16-be"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", r"byte offset 0 \(line 1\) holds 0x89, .*not look like a text file"),
        (codecs.BOM_UTF16_LE + b"a\x00\x00\xd8", r"not UTF-16 \(with BOM\) text: byte offset 4 holds 0x00 0xd8"),
    ],
    ids=["cp1252", "utf-16-le-no-bom", "utf-16-be-no-bom", "binary", "broken-utf-16"],
)
def test_other_encodings_are_refused_naming_the_byte(data: bytes, message: str) -> None:
    """Bytes that are not text in the encoding found are refused in one line naming the file and byte offset."""
    with pytest.raises(InvalidRequestError, match=message) as caught:
        _read(data, "prompts.txt")
    assert str(caught.value).startswith("prompts.txt is not ")
    assert "\n" not in str(caught.value)


def test_a_named_encoding_is_used() -> None:
    """--encoding reads a cp1252 or BOM-less UTF-16 file, and refuses bytes that encoding cannot decode."""
    assert _read(b"caf\xe9\n", "p.txt", encoding="cp1252").requests == [GenerationRequest(prompt="café")]
    utf16 = _read("a cat\n".encode("utf-16-le"), "p.txt", encoding="utf-16-le")
    assert (utf16.requests, utf16.encoding) == ([GenerationRequest(prompt="a cat")], "utf-16-le")
    assert _read(codecs.BOM_UTF8 + b"x\n", "p.txt", encoding="utf-8").requests == [GenerationRequest(prompt="x")]
    with pytest.raises(InvalidRequestError, match=r"not ascii text: byte offset 2 \(line 1\) holds 0xc3"):
        _read("a é".encode(), "p.txt", encoding="ascii")
