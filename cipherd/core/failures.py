"""
Network errors in words for a log line or a notice.
"""

from __future__ import annotations


def describe_error(error: BaseException) -> str:
    """
    What went wrong, in a line: Twisted's wrapped errors (a connection's
    several reasons) each with its type, e.g. C{"ConnectionRefusedError:
    Connection was refused by other side: 111: Connection refused."}.
    """
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(describe_error(r.value) for r in reasons)
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
