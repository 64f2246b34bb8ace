"""
Address rules every layer shares.
"""

from __future__ import annotations

import re

# RFC 5322's dot-atom: a local part that needs no quotes.
LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def canonical_address(address: str) -> str:
    """
    One spelling of an address for look-ups: the domain lower-cased and
    without a final dot, a quoted local part unquoted when it needs no
    quotes (C{"bob"@Example.com.} is C{bob@example.com}), so that no
    spelling escapes a user's settings or certificates.
    """
    local, at, domain = address.strip().rpartition("@")
    if not at:
        return address.strip()
    if len(local) >= 2 and local.startswith('"') and local.endswith('"') and \
            LOCAL_PART.fullmatch(local[1:-1]):
        local = local[1:-1]
    return f"{local}@{domain.rstrip('.').lower()}"
