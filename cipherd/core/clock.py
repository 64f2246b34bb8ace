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
