"""
Intervals and Quartz cron expressions as the guide writes them (figure 12).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cipherd.cron import ScheduleError, parse_interval, parse_quartz


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8h", timedelta(hours=8)), ("1d", timedelta(days=1)), ("2w", timedelta(weeks=2))],
)
def test_guide_intervals(text: str, expected: timedelta) -> None:
    assert parse_interval(text) == expected


@given(st.integers(1, 999_999), st.sampled_from("mhdw"))
def test_every_count_and_unit(count: int, unit: str) -> None:
    minutes = {"m": 1, "h": 60, "d": 24 * 60, "w": 7 * 24 * 60}[unit]
    assert parse_interval(f"{count}{unit}") == timedelta(minutes=count * minutes)


@given(st.text(max_size=12))
def test_interval_parser_only_raises_schedule_error(text: str) -> None:
    try:
        assert parse_interval(text) > timedelta(0)
    except ScheduleError as e:
        assert repr(text) in str(e)


@pytest.mark.parametrize("text", ["", "8", "h", "1.5d", "3x", "-1d", "1 d d"])
def test_bad_intervals(text: str) -> None:
    with pytest.raises(ScheduleError, match="use a whole number followed by h"):
        parse_interval(text)


def test_zero_interval() -> None:
    with pytest.raises(ScheduleError, match="longer than 0"):
        parse_interval("0d")


START = datetime(2026, 1, 1)  # a Thursday


@pytest.mark.parametrize(
    ("expression", "first", "second"),
    [
        # The guide's three examples.
        ("0 0 12 * * ?", datetime(2026, 1, 1, 12), datetime(2026, 1, 2, 12)),
        ("0 0 2 * * ?", datetime(2026, 1, 1, 2), datetime(2026, 1, 2, 2)),
        ("0 0 23 1/7 * ?", datetime(2026, 1, 1, 23), datetime(2026, 1, 8, 23)),
        # Quartz weekdays: 1 is Sunday, 2-6 Monday to Friday.
        ("0 0 2 ? * 1", datetime(2026, 1, 4, 2), datetime(2026, 1, 11, 2)),
        ("0 30 6 ? * 2-6", datetime(2026, 1, 1, 6, 30), datetime(2026, 1, 2, 6, 30)),
        ("0 0 2 ? * SAT", datetime(2026, 1, 3, 2), datetime(2026, 1, 10, 2)),
        ("0 0 2 ? * 7", datetime(2026, 1, 3, 2), datetime(2026, 1, 10, 2)),
        ("0 0 2 * * ? *", datetime(2026, 1, 1, 2), datetime(2026, 1, 2, 2)),
    ],
)
def test_quartz_schedules(expression: str, first: datetime, second: datetime) -> None:
    schedule = parse_quartz(expression)
    assert schedule.next_after(START) == first
    assert schedule.next_after(first) == second


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("0 0 2 * *", "it has 5 fields; Quartz needs 6 or 7 (seconds minutes hours "
         "day-of-month month day-of-week [year]), like 0 0 2 * * ?"),
        ("0 0 2 * * *", "put ? in exactly one of day-of-month and day-of-week, like 0 0 2 * * ?"),
        ("0 0 2 ? * ?", "put ? in exactly one of day-of-month and day-of-week, like 0 0 2 * * ?"),
        ("0 ? 2 * * ?", "? is allowed only in day-of-month and day-of-week"),
        ("0 61 2 * * ?", "the minutes field '61' is not valid"),
        ("0 0 25 * * ?", "the hours field '25' is not valid"),
        ("0 0 2 ? 13 1", "the month field '13' is not valid"),
        ("0 0 2 ? * 8", "day-of-week 8 is out of range: Quartz numbers 1 (SUN) to 7 (SAT)"),
        ("0 0 2 * * ? 2027", "only * is supported in the year field"),
    ],
)
def test_bad_quartz_expressions_say_why(expression: str, message: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_quartz(expression)
    assert str(caught.value) == f"{expression!r} is not a valid cron expression: {message}"


@given(st.text(alphabet="0123456789*?/-,# LWSUNMOTEDFRIA", max_size=30))
def test_quartz_parser_only_raises_schedule_error(text: str) -> None:
    try:
        parse_quartz(text).next_after(START)
    except ScheduleError:
        pass
