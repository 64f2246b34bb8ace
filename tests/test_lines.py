"""
Windows over a large message's lines (cipherd.core.lines).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cipherd.core.lines import MAX_LINE, has_long_line, windows

_LINES = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
                  max_size=30)


@settings(max_examples=300, deadline=None)
@given(lines=_LINES, step=st.integers(2, 60), start=st.integers(0, 20), view=st.booleans())
def test_windows_cover_the_data_and_cut_at_line_ends(lines: list[bytes], step: int,
                                                     start: int, view: bool) -> None:
    data = b"\r\n".join(lines)
    found = list(windows(memoryview(data) if view else data, start, step))
    assert b"".join(found) == data[start:]
    for window in found[:-1]:
        assert len(window) <= step
        # Cut after its last line end, or whole when it has none.
        assert window.endswith(b"\r\n") or (b"\r\n" not in window and len(window) == step)


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(0, 1100), max_size=8))
def test_long_lines_are_found_in_windows(lengths: list[int]) -> None:
    data = b"\r\n".join(b"x" * n for n in lengths)
    assert any(has_long_line(w) for w in windows(data, 0, 4096)) == any(
        n > MAX_LINE for n in lengths)
