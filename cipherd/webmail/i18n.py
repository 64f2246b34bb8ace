"""
The portal's languages: English (the source text) and Dutch, as plain
catalogs (English text → translation) that jinja2's i18n extension and
the portal's own messages look up.  A text without a translation is shown
in English.

The language is the reader's choice (a cookie set by the language switch),
else the best match of the browser's C{Accept-Language}, else English.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from cipherd.webmail.i18n_nl import CATALOG as DUTCH

DEFAULT = "en"
# Code → (name in its own language, catalog).
LANGUAGES: dict[str, tuple[str, dict[str, str]]] = {
    "en": ("English", {}),
    "nl": ("Nederlands", DUTCH),
}
_RANGE = re.compile(r"\s*([A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*|\*)\s*(?:;\s*q\s*=\s*([0-9.]+))?\s*")

# Messages of the back end with a number in them, as patterns.
_PATTERNS = [
    re.compile(r"The password is too easy to guess \((?P<bits>\d+) bits; at least "
               r"(?P<needed>\d+) are needed\)\.(?P<hints>.*)", re.S),
]


def negotiate(accept_language: str | None, chosen: str | None = None) -> str:
    """
    The language for a request: C{chosen} when we have it, else the first
    of C{Accept-Language} (by q-value, RFC 9110 §12.5.4) we have.
    """
    if chosen in LANGUAGES:
        return chosen
    ranges: list[tuple[float, int, str]] = []
    for position, item in enumerate((accept_language or "")[:500].split(",")):
        match = _RANGE.fullmatch(item)
        if not match:
            continue
        try:
            quality = float(match.group(2) or 1)
        except ValueError:
            continue
        ranges.append((-quality, position, match.group(1).lower()))
    for quality, _, tag in sorted(ranges):
        if quality == 0:
            break
        primary = tag.split("-")[0]
        if primary in LANGUAGES:
            return primary
    return DEFAULT


def translator(language: str) -> Callable[..., str]:
    """
    C{gettext} for C{language}, new-style: C{_("%(n)s left", n=3)}.
    """
    catalog = LANGUAGES.get(language, LANGUAGES[DEFAULT])[1]

    def gettext(text: str, **values: Any) -> str:
        found = catalog.get(text)
        if found is None:
            found = _translate_pattern(catalog, text)
        return found % values if values else found

    return gettext


def _translate_pattern(catalog: dict[str, str], text: str) -> str:
    for pattern in _PATTERNS:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        translated = catalog.get(pattern.pattern)
        if translated is None:
            return text
        values = match.groupdict()
        hints = values.pop("hints", "")
        return (translated.format(**values) + hints).strip()
    return text


def ngettext_for(gettext: Callable[..., str]) -> Callable[..., str]:
    """
    C{ngettext} for jinja2's new-style i18n, which fills in the values
    itself.  Dutch, like English, has one singular and one plural form.
    """
    def ngettext(singular: str, plural: str, n: int) -> str:
        return gettext(singular if n == 1 else plural)

    return ngettext
