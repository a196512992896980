"""Reading the requests of a bulk run: JSON Lines of request objects, or one prompt per line."""

from __future__ import annotations

import json
from collections.abc import Iterable

from banana2_async._exceptions import InvalidRequestError
from banana2_async._models import GenerationRequest

__all__ = ["parse_requests"]


def parse_requests(lines: Iterable[str], *, source: str = "FILE") -> list[GenerationRequest]:
    """The requests in ``lines``.

    If the first non-blank line starts with ``{`` every non-blank line must be
    a JSON object of `GenerationRequest` fields (``{"prompt": ..., "resolution":
    "2k"}``); otherwise each non-blank line is a prompt, taken as it is.

    Raises:
        InvalidRequestError: a line is not valid; the message names it.
    """
    numbered = [(number, line.rstrip("\r\n")) for number, line in enumerate(lines, start=1)]
    numbered = [(number, line) for number, line in numbered if line.strip()]
    if not numbered:
        raise InvalidRequestError(f"{source} holds no requests", field="requests")
    if not numbered[0][1].lstrip().startswith("{"):
        return [_request(source, number, {"prompt": line.strip()}) for number, line in numbered]
    requests: list[GenerationRequest] = []
    for number, line in numbered:
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as exc:
            message = f"{source}, line {number}: not valid JSON ({exc.msg})"
            raise InvalidRequestError(message, field="requests") from None
        if not isinstance(fields, dict):
            raise InvalidRequestError(f"{source}, line {number}: a request must be a JSON object", field="requests")
        requests.append(_request(source, number, fields))
    return requests


def _request(source: str, number: int, fields: dict[str, object]) -> GenerationRequest:
    try:
        return GenerationRequest(**fields)
    except InvalidRequestError as exc:
        raise InvalidRequestError(f"{source}, line {number}: {exc.message}", field=exc.field) from None
