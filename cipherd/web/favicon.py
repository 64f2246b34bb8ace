"""
The product's mark as a favicon: a sealed envelope, white on a rounded
square of the site's colour.  One drawing, kept here as geometry, gives
both the SVG (for browsers that take one) and the ICO that every browser
asks for at C{/favicon.ico}: each is made for the colour it is asked for,
so the portal's icon follows its branding colour.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from collections.abc import Callable
from functools import cache, lru_cache
from itertools import pairwise

# The drawing, on a 32 x 32 grid.
GRID = 32
_CORNER = 7.0  # radius of the square's corners
_STROKE = 2.6  # width of the envelope's lines
_BODY = (6.5, 9.5, 25.5, 23.5)  # the envelope: left, top, right, bottom
_FLAP = ((6.5, 9.5), (16.0, 17.0), (25.5, 9.5))
_SEAL = (16.0, 17.0, 4.6)  # centre x, y and radius of the seal on the flap
# The seal's keyhole, in the square's colour: a round head over a slot.
_KEYHOLE_HEAD = (16.0, 16.0, 1.5)
_KEYHOLE_SLOT = ((15.2, 16.5), (16.8, 19.4))  # left, top; right, bottom

# The sizes in the ICO (RFC-less format; see Microsoft's "Icons" docs): a
# browser tab shows 16 pixels, a high-density one or a bookmark 32.
ICO_SIZES = (16, 32)
# Samples per pixel side: 4 x 4 gives smooth edges.
_SUPERSAMPLE = 4

_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")

# How much of each pixel a shape covers, 0..1, by row.
Mask = list[list[float]]


def _segment_distance(x: float, y: float, a: tuple[float, float],
                      b: tuple[float, float]) -> float:
    (ax, ay), (bx, by) = a, b
    dx, dy = bx - ax, by - ay
    t = max(0.0, min(1.0, ((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy)))
    return math.hypot(x - (ax + t * dx), y - (ay + t * dy))


def _in_square(x: float, y: float) -> bool:
    # The rounded square fills the grid.
    cx = min(max(x, _CORNER), GRID - _CORNER)
    cy = min(max(y, _CORNER), GRID - _CORNER)
    return math.hypot(x - cx, y - cy) <= _CORNER


def _lines() -> list[tuple[tuple[float, float], tuple[float, float]]]:
    left, top, right, bottom = _BODY
    outline = [(left, top), (right, top), (right, bottom), (left, bottom), (left, top)]
    return [*pairwise(outline), *pairwise(_FLAP)]


_LINES = _lines()


def _in_keyhole(x: float, y: float) -> bool:
    hx, hy, hr = _KEYHOLE_HEAD
    (left, top), (right, bottom) = _KEYHOLE_SLOT
    return math.hypot(x - hx, y - hy) <= hr or (left <= x <= right and top <= y <= bottom)


def _in_envelope(x: float, y: float) -> bool:
    left, top, right, bottom = _BODY
    half = _STROKE / 2
    if not (left - half <= x <= right + half and top - half <= y <= bottom + half):
        return False
    sx, sy, sr = _SEAL
    if math.hypot(x - sx, y - sy) <= sr:
        return not _in_keyhole(x, y)
    return any(_segment_distance(x, y, a, b) <= half for a, b in _LINES)


def _coverage(size: int, inside: Callable[[float, float], bool]) -> Mask:
    """
    How much of each of C{size} x C{size} pixels C{inside} covers, 0..1.
    """
    scale = GRID / size
    step = 1 / _SUPERSAMPLE
    offsets = [(i + 0.5) * step for i in range(_SUPERSAMPLE)]
    total = _SUPERSAMPLE * _SUPERSAMPLE
    return [[sum(inside((px + ox) * scale, (py + oy) * scale)
                 for oy in offsets for ox in offsets) / total
             for px in range(size)] for py in range(size)]


@cache
def _masks(size: int) -> tuple[Mask, Mask]:
    # Drawn once per size (the first time a little CPU: ~0.1 s); only the
    # colour changes per request.  Half the size is the average of 2 x 2.
    if size % 2 == 0 and size * 2 in ICO_SIZES:
        return _halved(_masks(size * 2)[0]), _halved(_masks(size * 2)[1])
    return _coverage(size, _in_square), _coverage(size, _in_envelope)


def _halved(mask: Mask) -> Mask:
    return [[(mask[2 * y][2 * x] + mask[2 * y][2 * x + 1] + mask[2 * y + 1][2 * x]
              + mask[2 * y + 1][2 * x + 1]) / 4 for x in range(len(mask) // 2)]
            for y in range(len(mask) // 2)]


def _rgb(colour: str) -> tuple[int, int, int]:
    if not _COLOUR.fullmatch(colour):
        raise ValueError(f"not a #rrggbb colour: {colour!r}")
    value = int(colour[1:], 16)
    return value >> 16, (value >> 8) & 0xFF, value & 0xFF


def _png(size: int, colour: str) -> bytes:
    """
    The mark as an RGBA PNG (ISO/IEC 15948: IHDR, one IDAT, IEND).
    """
    red, green, blue = _rgb(colour)
    square, envelope = _masks(size)
    rows = bytearray()
    for y in range(size):
        rows.append(0)  # filter type None
        for x in range(size):
            white = envelope[y][x]
            rows += bytes((round(red + (255 - red) * white),
                           round(green + (255 - green) * white),
                           round(blue + (255 - blue) * white),
                           round(255 * square[y][x])))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(rows), 9)) + chunk(b"IEND", b""))


@lru_cache(maxsize=16)
def favicon_ico(colour: str) -> bytes:
    """
    The mark in C{colour} (C{#rrggbb}) as an ICO file holding a PNG of
    each of L{ICO_SIZES}.

    @raise ValueError: C{colour} is not C{#rrggbb}.
    """
    images = [_png(size, colour) for size in ICO_SIZES]
    # ICONDIR: reserved, type 1 (icon), count; then one ICONDIRENTRY each.
    head = struct.pack("<HHH", 0, 1, len(images))
    offset = len(head) + 16 * len(images)
    entries = b""
    for size, image in zip(ICO_SIZES, images, strict=True):
        entries += struct.pack("<BBBBHHII", size % 256, size % 256, 0, 0, 1, 32, len(image),
                               offset)
        offset += len(image)
    return head + entries + b"".join(images)


def favicon_svg(colour: str) -> bytes:
    """
    The mark in C{colour} (C{#rrggbb}) as SVG.

    @raise ValueError: C{colour} is not C{#rrggbb}.
    """
    _rgb(colour)
    left, top, right, bottom = _BODY
    flap = " ".join(f"{x:g},{y:g}" for x, y in _FLAP)
    sx, sy, sr = _SEAL
    hx, hy, hr = _KEYHOLE_HEAD
    (kl, kt), (kr, kb) = _KEYHOLE_SLOT
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {GRID} {GRID}">'
        f'<rect width="{GRID}" height="{GRID}" rx="{_CORNER:g}" fill="{colour}"/>'
        f'<g fill="none" stroke="#fff" stroke-width="{_STROKE:g}" stroke-linejoin="round" '
        f'stroke-linecap="round"><rect x="{left:g}" y="{top:g}" width="{right - left:g}" '
        f'height="{bottom - top:g}"/><polyline points="{flap}"/></g>'
        f'<circle cx="{sx:g}" cy="{sy:g}" r="{sr:g}" fill="#fff"/>'
        f'<g fill="{colour}"><circle cx="{hx:g}" cy="{hy:g}" r="{hr:g}"/>'
        f'<rect x="{kl:g}" y="{kt:g}" width="{kr - kl:g}" height="{kb - kt:g}"/></g></svg>\n'
    ).encode()
