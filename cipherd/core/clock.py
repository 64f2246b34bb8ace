"""
Time as the reactor gives it, for the code that needs dates.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc_from_seconds(seconds: float) -> datetime:
    """
    A timezone-aware datetime from an C{IReactorTime.seconds()} value.
    """
    return datetime.fromtimestamp(seconds, UTC)


def minute_utc(seconds: float) -> str:
    """
    A moment as notices and pages tell people of it: C{2026-12-07 03:19 UTC}.
    """
    return utc_from_seconds(seconds).strftime("%Y-%m-%d %H:%M UTC")
