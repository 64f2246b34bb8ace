"""
Reading a large message's lines without copying it whole.
"""

from __future__ import annotations

from collections.abc import Iterator

MAX_LINE = 998  # RFC 5322 §2.1.1, without its CRLF
_WINDOW = 1 << 20


def windows(data: bytes | memoryview, start: int = 0, step: int = _WINDOW) -> Iterator[bytes]:
    """
    C{data} from C{start}, a copy of at most C{step} bytes at a time, each
    cut just after its last CRLF when it has one: a line lies within one
    window unless it is longer than C{step}.  The windows of a large
    message are never all alive at once.
    """
    view = memoryview(data)
    size = len(view)
    while start < size:
        window = bytes(view[start : start + step])
        if start + len(window) < size:
            cut = window.rfind(b"\r\n") + 2
            if cut > 1:
                window = window[:cut]
        yield window
        start += len(window)


def has_long_line(window: bytes) -> bool:
    """
    Whether a line of C{window} is longer than SMTP allows (998 octets).
    """
    return len(window) > MAX_LINE and max(map(len, window.split(b"\r\n"))) > MAX_LINE
