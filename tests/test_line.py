"""The pure line at the rate limit: polls by priority, the foreground's share, leaving, an empty line.

Plain synchronous tests: requests join and are picked by hand, no event loop, no clock.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banana2_async._line import FOREGROUND_SHARE, Line


def drain(line: Line) -> list[int]:
    """Pick until nobody waits; the tickets in grant order."""
    granted: list[int] = []
    while (ticket := line.pick()) is not None:
        granted.append(ticket)
    return granted


def test_the_foreground_share_is_one_in_three() -> None:
    """The constant is the documented share: one grant in three."""
    assert pytest.approx(1 / 3) == FOREGROUND_SHARE
    assert Line().share == FOREGROUND_SHARE


def test_an_empty_line_grants_nobody() -> None:
    """With nobody waiting, `pick` and `peek` say ``None`` and the line is empty."""
    line = Line()
    assert (line.pick(), line.peek(), len(line), line.foreground_waiting, line.polls_waiting) == (None, None, 0, 0, 0)


def test_polls_go_by_priority_higher_first() -> None:
    """Polls alone are granted highest priority first."""
    line = Line()
    tickets = {priority: line.join(priority) for priority in (0.5, 3.0, -1.0, 2.0, 0.0)}
    assert drain(line) == [tickets[p] for p in (3.0, 2.0, 0.5, 0.0, -1.0)]


def test_polls_of_equal_priority_go_first_come_first_served() -> None:
    """Ties keep the order of arrival, also mixed with other priorities."""
    line = Line()
    low = [line.join(1.0) for _ in range(5)]
    high = [line.join(2.0) for _ in range(5)]
    assert drain(line) == high + low


def test_the_foreground_alone_is_first_come_first_served() -> None:
    """Foreground requests alone get every grant, in the order they came."""
    line = Line()
    tickets = [line.join() for _ in range(10)]
    assert drain(line) == tickets


def test_a_nan_priority_ranks_lowest() -> None:
    """A poll whose priority is NaN ranks as -inf: after every finite priority, and is still served."""
    line = Line()
    nan = line.join(math.nan)
    lowest = line.join(-math.inf)
    low = line.join(-1e300)
    assert drain(line) == [low, nan, lowest]


def test_both_lanes_waiting_give_the_foreground_every_third_grant() -> None:
    """With polls and foreground requests waiting, grants go poll, poll, foreground, then polls alone."""
    line = Line()
    polls = [line.join(float(n)) for n in range(20)]
    foreground = [line.join() for _ in range(5)]
    by_priority = polls[::-1]
    expected: list[int] = []
    for n, ticket in enumerate(foreground):
        expected += [*by_priority[2 * n : 2 * n + 2], ticket]
    expected += by_priority[10:]
    assert drain(line) == expected


@pytest.mark.parametrize("grants", [1, 2, 3, 10, 100, 999, 10_000, 100_000])
def test_the_share_over_a_long_run_is_one_third_within_one_grant(grants: int) -> None:
    """With both lanes always waiting and a poll older than any foreground request, the foreground gets a third
    of the grants, within one."""
    line = Line()
    # The oldest waiter is a poll that every later poll outranks: the foreground is never the oldest.
    line.join(-1.0)
    foreground: set[int] = set()
    for _ in range(3):
        foreground.add(line.join())
        line.join(0.0)
    won = 0
    for _ in range(grants):
        ticket = line.pick()
        assert ticket is not None
        if ticket in foreground:
            won += 1
            foreground.discard(ticket)
            foreground.add(line.join())
        else:
            line.join(0.0)
    assert abs(won - grants / 3) <= 1


def test_between_the_lanes_the_oldest_goes_first() -> None:
    """A foreground request that has waited longer than every waiting poll goes before them, whatever
    their priority, and without spending its credit; polls go by priority among themselves."""
    line = Line()
    first = line.join()
    polls = [line.join(float(n)) for n in range(4)]
    second = line.join()
    assert drain(line) == [first, polls[3], polls[2], second, polls[1], polls[0]]


@pytest.mark.parametrize("foreground", [1, 5, 50])
def test_the_foreground_gets_at_least_its_share_however_the_two_lanes_come(foreground: int) -> None:
    """Polls and foreground requests joining in any order: while both wait, the foreground gets at least one
    grant in three."""
    rng = random.Random(foreground)
    line = Line()
    waiting_foreground: set[int] = set()
    for _ in range(foreground):
        waiting_foreground.add(line.join())
    for _ in range(20):
        line.join(rng.random())
    both_waiting = won = 0
    for _ in range(3_000):
        both = bool(waiting_foreground) and line.polls_waiting > 0
        ticket = line.pick()
        if ticket in waiting_foreground:
            waiting_foreground.discard(ticket)
            waiting_foreground.add(line.join())
            won += both
        else:
            line.join(rng.random())
        both_waiting += both
    assert won >= both_waiting / 3 - 1


def test_the_foreground_never_waits_more_than_two_grants_while_polls_wait() -> None:
    """However many polls wait, and whatever their priority, a foreground request is among the next three grants."""
    line = Line()
    for n in range(48):
        line.join(100.0 + n)
    for _ in range(30):
        submit = line.join()
        granted = [line.pick() for _ in range(3)]
        assert submit in granted
        for _ in range(3):
            line.join(1_000.0)


def test_low_priority_polls_are_not_starved_when_higher_ones_stop_coming() -> None:
    """A low-priority poll waits behind higher ones and foreground requests, then is granted."""
    line = Line()
    low = line.join(-5.0)
    for round_ in range(50):
        line.join(float(round_))
        line.join()
        assert line.pick() != low
    assert low in drain(line)
    assert low not in line


def test_polls_keep_most_grants_while_the_foreground_floods() -> None:
    """A flood of foreground requests takes only its share: polls still get two grants in three."""
    line = Line()
    polls = [line.join(0.0) for _ in range(10)]
    granted_polls = 0
    for _ in range(15):
        line.join()
        line.join()
        if line.pick() in polls:
            granted_polls += 1
    assert granted_polls == 10


def test_a_poll_that_leaves_is_never_granted() -> None:
    """A ticket taken out of the line is skipped; `leave` says whether it was waiting."""
    line = Line()
    first, second, third = line.join(3.0), line.join(2.0), line.join(1.0)
    assert line.leave(first) is True
    assert line.leave(first) is False
    assert first not in line
    assert second in line
    assert line.peek() == second
    assert drain(line) == [second, third]
    assert line.leave(third) is False


def test_a_foreground_request_that_leaves_is_never_granted() -> None:
    """A foreground ticket taken out, first or in the middle, is skipped; the others keep their order."""
    line = Line()
    tickets = [line.join() for _ in range(4)]
    assert line.leave(tickets[0])
    assert line.leave(tickets[2])
    assert (len(line), line.foreground_waiting) == (2, 2)
    assert drain(line) == [tickets[1], tickets[3]]


def test_when_the_foreground_leaves_the_polls_get_every_grant() -> None:
    """With the foreground's only request gone, no grant is held for it."""
    line = Line()
    polls = [line.join(0.0) for _ in range(6)]
    submit = line.join()
    assert line.pick() == polls[0]
    line.leave(submit)
    assert drain(line) == polls[1:]


def test_the_credit_does_not_pile_up_while_no_foreground_waits() -> None:
    """A thousand poll grants with no foreground bank nothing: a submit then comes third, as always."""
    line = Line()
    for _ in range(1_000):
        line.join(0.0)
        line.pick()
    polls = [line.join(0.0) for _ in range(10)]
    submit = line.join()
    assert [line.pick() for _ in range(3)] == [polls[0], polls[1], submit]


def test_the_foreground_alone_leaves_no_credit_behind() -> None:
    """After a run of foreground grants with no polls waiting, a new submit behind polls comes third."""
    line = Line()
    for _ in range(10):
        line.join()
    drain(line)
    polls = [line.join(0.0) for _ in range(3)]
    submit = line.join()
    assert [line.pick() for _ in range(3)] == [polls[0], polls[1], submit]


def test_peek_names_the_next_pick_and_changes_nothing() -> None:
    """`peek` always agrees with the `pick` that follows, and calling it often does not shift the share."""
    rng = random.Random(7)
    line = Line()
    for step in range(2_000):
        if rng.random() < 0.6:
            line.join(None if rng.random() < 0.3 else float(rng.randrange(5)))
        if step % 3 == 0 and (next_up := line.peek()) is not None and rng.random() < 0.5:
            line.leave(next_up)
        for _ in range(rng.randrange(3)):
            line.peek()
        expected = line.peek()
        assert line.pick() == expected


def test_leaving_many_keeps_the_right_tickets_in_order() -> None:
    """Thousands of joins and leaves (compacting the lanes many times) leave the right tickets, in order."""
    line = Line()
    kept_polls: dict[int, float] = {}
    kept_foreground: list[int] = []
    for n in range(5_000):
        priority = float(n % 7)
        poll, foreground = line.join(priority), line.join()
        if n % 100 == 0:
            kept_polls[poll] = priority
            kept_foreground.append(foreground)
        else:
            assert line.leave(poll)
            assert line.leave(foreground)
    assert (line.polls_waiting, line.foreground_waiting) == (50, 50)
    granted = drain(line)
    assert [t for t in granted if t in kept_foreground] == kept_foreground
    assert [t for t in granted if t in kept_polls] == sorted(kept_polls, key=lambda t: (-kept_polls[t], t))


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5, math.nan])
def test_a_share_outside_zero_to_one_is_refused(share: float) -> None:
    """The share must be a fraction of the grants."""
    with pytest.raises(ValueError, match="share"):
        Line(share)


def test_a_share_of_one_puts_the_foreground_always_first() -> None:
    """With ``share=1`` every grant goes to a waiting foreground request, even one younger than the polls."""
    line = Line(1.0)
    polls = [line.join(9.0) for _ in range(3)]
    foreground = [line.join() for _ in range(3)]
    assert drain(line) == foreground + polls


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("join"), st.none() | st.integers(-3, 3).map(float)),
            st.tuples(st.just("leave"), st.integers(0, 40)),
            st.tuples(st.just("pick"), st.none()),
        ),
        max_size=120,
    )
)
def test_the_line_matches_a_plain_model(steps: list[tuple[str, float | int | None]]) -> None:
    """Against a list-based model: the same grants, membership and counts after any joins, leaves and picks."""
    line = Line()
    model_fg: list[int] = []
    model_polls: list[tuple[float, int]] = []
    credit = 0.0
    issued: list[int] = []
    for op, arg in steps:
        if op == "join":
            priority = None if arg is None else float(arg)
            ticket = line.join(priority)
            issued.append(ticket)
            if priority is None:
                model_fg.append(ticket)
            else:
                model_polls.append((priority, ticket))
        elif op == "leave":
            if issued:
                ticket = issued[int(arg or 0) % len(issued)]
                was = ticket in model_fg or any(t == ticket for _, t in model_polls)
                model_fg = [t for t in model_fg if t != ticket]
                model_polls = [(p, t) for p, t in model_polls if t != ticket]
                assert line.leave(ticket) is was
        else:
            if model_fg:
                credit = min(1.0, credit + 1 / 3)
            oldest_poll = min((t for _, t in model_polls), default=None)
            if model_fg and (
                not model_polls or credit >= 1.0 - 1e-9 or (oldest_poll is not None and model_fg[0] < oldest_poll)
            ):
                credit = max(0.0, credit - 1.0)
                expected: int | None = model_fg.pop(0)
            elif model_polls:
                best = min(model_polls, key=lambda entry: (-entry[0], entry[1]))
                model_polls.remove(best)
                expected = best[1]
            else:
                expected = None
            assert line.pick() == expected
        assert len(line) == len(model_fg) + len(model_polls)
        assert line.foreground_waiting == len(model_fg)
