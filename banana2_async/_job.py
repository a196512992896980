"""A bulk job's rows: their keys, and how they meet the rows a journal holds. Pure: no I/O.

A row is known by its key: ``id:<id>`` when the caller gave it an id, else
``body:<digest>:<rank>``, the digest of its request and its rank among
identical requests. A journal written for a job is matched against the job
given now key by key, so rows may move, rows may be added, and rows never
paid for may change or go; a row paid for (or maybe paid for) that is gone or
changed is a `RowChange`, and makes the job another one.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ._exceptions import InvalidRequestError
from ._models import GenerationRequest

__all__ = [
    "STATES",
    "JournalRow",
    "Match",
    "RowChange",
    "RowState",
    "StoredRow",
    "content_keys",
    "describe_change",
    "fingerprint",
    "job_keys",
    "match_rows",
    "prompt_of",
    "request_body",
    "row_fields",
]

RowState = Literal["pending", "submitting", "submitted", "succeeded", "failed"]
STATES: Final[frozenset[str]] = frozenset({"pending", "submitting", "submitted", "succeeded", "failed"})
_PROMPT_SHOWN: Final = 60


@dataclass(frozen=True, slots=True)
class JournalRow:
    """One request of a job as the journal last recorded it.

    ``index`` is the request's position in the job as given now. ``consumed``
    is the credits the server reported for its task, if it did. ``added`` marks
    a row the journal does not hold yet (a row added to the job since its last
    run), seen by a read that writes nothing.
    """

    index: int
    state: RowState
    task_id: str | None = None
    images: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    error: str | None = None
    consumed: int | None = None
    added: bool = field(default=False, compare=False)

    @property
    def paid(self) -> bool:
        """Whether the row was paid for, or may have been: a task id, or a ``POST`` without an answer."""
        return self.state in ("submitting", "submitted", "succeeded") or (
            self.state == "failed" and self.task_id is not None
        )


@dataclass(frozen=True, slots=True)
class RowChange:
    """A row of the journal, paid for (or maybe), that the job no longer has as it was.

    ``position`` is where the row was in the job when it last ran (0-based);
    ``now`` where the row with the same key is in the job now (it was
    changed), or ``None`` (it is gone, or changed so that its key is another).
    """

    key: str
    position: int
    prompt: str
    state: RowState
    task_id: str | None
    now: int | None


@dataclass(frozen=True, slots=True)
class StoredRow:
    """A row as a journal holds it: its id there, key, last position, request body and record."""

    idx: int
    key: str
    position: int
    body: str
    row: JournalRow


@dataclass(frozen=True, slots=True)
class Match:
    """How a journal's rows meet a job.

    ``rows`` has one row per request of the job; ``ids`` the journal's id of
    each (``None``: new to the journal). ``changes`` are rows paid for that
    the job no longer has as they were; ``reset`` the ids of rows never paid
    for whose request changed, ``removed`` of those the job no longer has,
    ``moved`` (id, position) of rows found at another position, ``rekeyed``
    (id, key) of rows found by their request under another key.
    """

    rows: list[JournalRow]
    ids: list[int | None]
    changes: list[RowChange]
    reset: list[int]
    removed: list[int]
    moved: list[tuple[int, int]]
    rekeyed: list[tuple[int, str]] = field(default_factory=list)


def request_body(request: GenerationRequest) -> str:
    """The canonical JSON of a request: the same task gives the same text however it was written."""
    body = request.to_wire()
    body["type"] = request.task_type
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(requests: Sequence[GenerationRequest]) -> str:
    """A SHA-256 over a job's requests, in order."""
    digest = hashlib.sha256()
    for request in requests:
        digest.update(request_body(request).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def content_keys(bodies: Sequence[str | None]) -> list[str | None]:
    """The key of each body (``None`` left alone): its digest and its rank among identical bodies."""
    seen: Counter[str] = Counter()
    keys: list[str | None] = []
    for body in bodies:
        if body is None:
            keys.append(None)
            continue
        digest = hashlib.sha256(body.encode("utf-8", errors="surrogatepass")).hexdigest()[:20]
        seen[digest] += 1
        keys.append(f"body:{digest}:{seen[digest]}")
    return keys


def job_keys(requests: Sequence[GenerationRequest], ids: Sequence[str | None] | None = None) -> list[str]:
    """The key of each request of a job: ``id:<id>`` for a row given an id, else ``body:<digest>:<rank>``.

    Raises:
        InvalidRequestError: ``ids`` does not match ``requests``, or an id is blank or repeated.
    """
    if ids is None:
        ids = [None] * len(requests)
    elif isinstance(ids, (str, bytes)) or len(ids) != len(requests):
        raise InvalidRequestError("keys must hold one id (or None) per request", field="keys")
    seen: dict[str, int] = {}
    for index, key in enumerate(ids):
        if key is None:
            continue
        if not isinstance(key, str) or not key.strip():
            raise InvalidRequestError(f"keys[{index}] must be a non-blank string or None, not {key!r}", field="keys")
        if key in seen:
            raise InvalidRequestError(f"keys[{index}] repeats keys[{seen[key]}]: {key!r}", field="keys")
        seen[key] = index
    content = content_keys(
        [request_body(request) if key is None else None for request, key in zip(requests, ids, strict=True)]
    )
    return [f"id:{key}" if key is not None else str(derived) for key, derived in zip(ids, content, strict=True)]


def prompt_of(body: str) -> str:
    """The prompt in a stored request body (the body itself if it holds none)."""
    try:
        prompt = json.loads(body).get("prompt")
    except (ValueError, AttributeError):
        return body
    return prompt if isinstance(prompt, str) else body


def describe_change(change: RowChange) -> str:
    """One changed row, for a person: which row it was, what it held, what became of it."""
    flat = " ".join(change.prompt.split())
    shown = flat if len(flat) <= _PROMPT_SHOWN else flat[: _PROMPT_SHOWN - 1] + "…"
    name = f"row {change.position + 1}"
    if change.key.startswith("id:"):
        name += f" (id {change.key[3:]!r})"
    paid = f"{change.state}, task {change.task_id}" if change.task_id else change.state
    if change.now is not None:
        what = f"was changed (it is row {change.now + 1} now)"
    elif change.key.startswith("id:"):
        what = "is not in the job any more"
    else:
        what = "is not in the job any more, or was changed"
    return f"{name} {shown!r} ({paid}) {what}"


def match_rows(stored: Sequence[StoredRow], keys: Sequence[str], bodies: Sequence[str]) -> Match:
    """How the rows a journal holds meet a job's requests (their keys and bodies): which row is which, which are
    new, changed or gone.

    A row is found by its key; a row whose key is not in the journal is found by its request among the rows the
    job no longer names, so a row that was given an id (or lost one) is still the same row.
    """
    by_key = {item.key: item for item in stored}
    found: list[StoredRow | None] = [by_key.pop(key, None) for key in keys]
    by_body: dict[str, list[StoredRow]] = {}
    for left in sorted(by_key.values(), key=lambda row: row.idx):
        by_body.setdefault(left.body, []).append(left)
    rekeyed: list[tuple[int, str]] = []
    for index, (known, body) in enumerate(zip(found, bodies, strict=True)):
        if known is None and by_body.get(body):
            found[index] = match = by_body[body].pop(0)
            del by_key[match.key]
            rekeyed.append((match.idx, keys[index]))
    rows: list[JournalRow] = []
    ids: list[int | None] = []
    changes: list[RowChange] = []
    reset: list[int] = []
    moved: list[tuple[int, int]] = []
    for index, (item, body) in enumerate(zip(found, bodies, strict=True)):
        if item is None:
            rows.append(JournalRow(index, "pending", added=True))
            ids.append(None)
            continue
        ids.append(item.idx)
        if item.position != index:
            moved.append((item.idx, index))
        if item.body == body:
            rows.append(JournalRow(index, *row_fields(item.row)))
            continue
        if item.row.paid:
            changes.append(_change(item, index))
        else:
            # Never paid for: the row is the new request, from the start.
            reset.append(item.idx)
        rows.append(JournalRow(index, "pending"))
    removed: list[int] = []
    for item in by_key.values():
        if item.row.paid:
            changes.append(_change(item, None))
        else:
            removed.append(item.idx)
    changes.sort(key=lambda change: change.position)
    return Match(rows, ids, changes, reset, removed, moved, rekeyed)


def _change(item: StoredRow, now: int | None) -> RowChange:
    return RowChange(item.key, item.position, prompt_of(item.body), item.row.state, item.row.task_id, now)


def row_fields(row: JournalRow) -> tuple[Any, ...]:
    return (row.state, row.task_id, row.images, row.files, row.error, row.consumed)
