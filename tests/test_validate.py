"""`_validate`: what makes a task id, a URL or a number of seconds unusable, said before any I/O."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from banana2_async import InvalidRequestError
from banana2_async._validate import (
    MAX_TASK_ID_LENGTH,
    MAX_URL_LENGTH,
    check_seconds,
    check_task_id,
    task_id_problem,
    url_problem,
)


@given(st.text(max_size=MAX_TASK_ID_LENGTH + 10))
def test_a_task_id_is_either_usable_or_refused_with_a_reason(task_id: str) -> None:
    """Any text is a usable task id (encodable, printable, within the length) or refused with a reason."""
    problem = task_id_problem(task_id)
    if problem is None:
        assert task_id.strip()
        assert len(task_id) <= MAX_TASK_ID_LENGTH
        task_id.encode("utf-8")
        assert task_id.isprintable()
    else:
        with pytest.raises(InvalidRequestError) as caught:
            check_task_id(task_id)
        assert caught.value.field == "task_id"


@pytest.mark.parametrize("task_id", ["n82abc123def456nb2", "a&b=c d", "ä/ü?&=#", "x" * MAX_TASK_ID_LENGTH])
def test_ordinary_task_ids_are_usable(task_id: str) -> None:
    """Ids with reserved or non-ASCII characters are fine: they are percent-encoded into the URL."""
    assert check_task_id(task_id) == task_id


@pytest.mark.parametrize("value", [None, 7, b"t1", ["t1"]])
def test_a_task_id_that_is_no_string_is_refused(value: object) -> None:
    """A task id of another type is refused, naming the type."""
    assert task_id_problem(value) is not None


@given(st.text(max_size=200))
def test_url_problem_never_raises(text: str) -> None:
    """Any text gets an answer, never an exception: a usable http(s) URL has a scheme and a host."""
    problem = url_problem("https://" + text)
    if problem is None:
        assert text


def test_a_url_at_the_length_cap_is_usable_and_one_over_is_not() -> None:
    """Image and result URLs of up to 8,192 characters are usable."""
    base = "https://cdn.example/"
    assert url_problem(base + "x" * (MAX_URL_LENGTH - len(base))) is None
    assert url_problem(base + "x" * (MAX_URL_LENGTH - len(base) + 1)) is not None


@pytest.mark.parametrize("value", [0.5, 1, 10**6])
def test_seconds_accepts_finite_positive_numbers(value: float) -> None:
    """Positive finite numbers of seconds pass, as floats."""
    assert check_seconds(value, "timeout") == float(value)


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, -math.inf, True, "1", None, 10**400])
def test_seconds_refuses_the_rest(value: object) -> None:
    """Zero, negatives, NaN, infinities, bools, strings and ints beyond a float are refused with the field named."""
    with pytest.raises(InvalidRequestError) as caught:
        check_seconds(value, "request_timeout")
    assert caught.value.field == "request_timeout"
    assert len(str(caught.value)) < 200


def test_zero_seconds_may_be_allowed() -> None:
    """``zero=True`` lets 0 through (a grace period that may be off)."""
    assert check_seconds(0, "not_found_grace", zero=True) == 0.0
