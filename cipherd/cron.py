"""
Schedules as the guide writes them (figure 12): cleanup intervals like
``8h``, ``1d``, ``2w`` (and ``30m``) and Quartz cron expressions like ``0 0 2 * * ?``.

Quartz expressions have six or seven fields -- seconds, minutes, hours,
day of month, month, day of week, optional year -- and number the weekdays
1 (Sunday) to 7 (Saturday).  croniter does the scheduling; this module
translates Quartz into croniter's dialect and explains what is wrong with an
expression in words an administrator can act on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import croniter
from croniter.croniter import CroniterError

_INTERVAL = re.compile(r"(\d{1,6})([mhdw])")
_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1),
          "w": timedelta(weeks=1)}

INTERVAL_HELP = ("a whole number followed by h (hours), d (days) or w (weeks), like 8h, 1d or "
                 "2w (or m for minutes, like 30m)")


class ScheduleError(ValueError):
    """
    An interval or cron expression is not valid; the message says why.
    """


def parse_interval(text: str) -> timedelta:
    """
    Parse a cleanup interval.

    @raise ScheduleError: not an interval, or zero.
    """
    match = _INTERVAL.fullmatch(text.strip())
    if match is None:
        raise ScheduleError(f"{text!r} is not a valid interval: use {INTERVAL_HELP}")
    count, unit = int(match.group(1)), match.group(2)
    if count == 0:
        raise ScheduleError(f"{text!r} is not a valid interval: it must be longer than 0")
    return count * _UNITS[unit]


_FIELD_NAMES = ("seconds", "minutes", "hours", "day-of-month", "month", "day-of-week")
_WEEKDAY_NUMBER = re.compile(r"(?<![/#\d])(\d+)")


def _quartz_weekdays_to_croniter(field: str) -> str:
    """
    Quartz counts weekdays 1=Sunday..7=Saturday; croniter 0=Sunday..6.
    Numbers after '/' (a step) or '#' (the n-th weekday) are not weekdays.
    """

    def shift(match: re.Match[str]) -> str:
        day = int(match.group(1))
        if not 1 <= day <= 7:
            raise ScheduleError(
                f"day-of-week {day} is out of range: Quartz numbers 1 (SUN) to 7 (SAT)"
            )
        return str(day - 1)

    return _WEEKDAY_NUMBER.sub(shift, field)


@dataclass(frozen=True)
class QuartzSchedule:
    """
    A parsed Quartz cron expression.
    """

    expression: str
    _croniter_expression: str

    def next_after(self, when: datetime) -> datetime:
        """
        The first time strictly after C{when} the schedule fires.
        """
        result: datetime = croniter(
            self._croniter_expression, when, second_at_beginning=True
        ).get_next(datetime)
        return result

    def next_after_seconds(self, seconds: float) -> float:
        """
        L{next_after} in seconds since the epoch (UTC), as the scheduled
        jobs' claims (L{cipherd.store.jobs.claim}) count.
        """
        return self.next_after(datetime.fromtimestamp(seconds, UTC)).timestamp()


def parse_quartz(expression: str) -> QuartzSchedule:
    """
    Parse a Quartz cron expression.

    @raise ScheduleError: the message names the field at fault.
    """
    fields = expression.split()
    prefix = f"{expression!r} is not a valid cron expression"
    if len(fields) not in (6, 7):
        raise ScheduleError(
            f"{prefix}: it has {len(fields)} fields; Quartz needs 6 or 7 "
            "(seconds minutes hours day-of-month month day-of-week [year]), like 0 0 2 * * ?"
        )
    if len(fields) == 7:
        if fields[6] != "*":
            raise ScheduleError(f"{prefix}: only * is supported in the year field")
        fields = fields[:6]
    dom, dow = fields[3], fields[5]
    if (dom == "?") == (dow == "?"):
        raise ScheduleError(
            f"{prefix}: put ? in exactly one of day-of-month and day-of-week, like 0 0 2 * * ?"
        )
    for name, field in zip(_FIELD_NAMES, fields, strict=True):
        if field == "?" and name not in ("day-of-month", "day-of-week"):
            raise ScheduleError(f"{prefix}: ? is allowed only in day-of-month and day-of-week")
    try:
        fields[5] = "*" if dow == "?" else _quartz_weekdays_to_croniter(dow)
    except ScheduleError as e:
        raise ScheduleError(f"{prefix}: {e}") from None
    fields[3] = "*" if dom == "?" else dom
    translated = " ".join(fields)
    for name, field in zip(_FIELD_NAMES, fields, strict=True):
        # Check each field alone so the message can name the one at fault.
        probe = ["*"] * 6
        probe[_FIELD_NAMES.index(name)] = field
        if not croniter.is_valid(" ".join(probe), second_at_beginning=True):
            raise ScheduleError(f"{prefix}: the {name} field {field!r} is not valid")
    try:
        croniter(translated, datetime(2000, 1, 1), second_at_beginning=True).get_next(datetime)
    except (CroniterError, ValueError) as e:
        raise ScheduleError(f"{prefix}: {e}") from None
    return QuartzSchedule(expression, translated)
