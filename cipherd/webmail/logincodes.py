"""
Sign-in by a one-time code mailed to the recipient, instead of a password
(setting C{webmail_email_code_login}, per domain): for recipients who
rarely come back and would not remember one.

A code is eight random digits, valid for L{VALIDITY} seconds, used once;
the database keeps only its HMAC (keyed from the data dir's key, bound to
the address), one live code per address (a new one replaces it), at most
one mail per address per L{RESEND_AFTER} seconds whichever node is asked,
and a code is void after L{MAX_ATTEMPTS} wrong tries from anywhere.  Wrong
codes are also counted by the portal's login throttle as wrong passwords
are, with the same lockout.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import Connection, delete, insert, select, update
from twisted.internet.interfaces import IReactorTime

from cipherd.store import Store
from cipherd.store.schema import webmail_login_codes

DIGITS = 8
VALIDITY = 600.0
RESEND_AFTER = 60.0
MAX_ATTEMPTS = 5


class LoginCodes:
    """
    @param key: the HMAC key of the codes (one purpose).
    """

    def __init__(self, store: Store, clock: IReactorTime, key: bytes) -> None:
        self._store = store
        self._clock = clock
        self._key = key

    def _hash(self, address: str, code: str) -> str:
        return hmac.new(self._key, f"{address}\0{code}".encode(), hashlib.sha256).hexdigest()

    async def issue(self, address: str) -> str | None:
        """
        A new code for C{address} (replacing any other), or C{None} when
        one was made less than L{RESEND_AFTER} seconds ago.
        """
        code = "".join(secrets.choice("0123456789") for _ in range(DIGITS))
        now = self._clock.seconds()
        values = dict(code_hash=self._hash(address, code), expires=now + VALIDITY, sent=now,
                      attempts=0)

        def write(conn: Connection) -> bool:
            mine = webmail_login_codes.c.address == address
            sent = conn.execute(select(webmail_login_codes.c.sent).where(mine)
                                .with_for_update()).scalar()
            if sent is not None and now - sent < RESEND_AFTER:
                return False
            if sent is None:
                conn.execute(insert(webmail_login_codes).values(address=address, **values))
            else:
                conn.execute(update(webmail_login_codes).where(mine).values(**values))
            return True

        made: bool = await self._store.run(write)
        return code if made else None

    async def use(self, address: str, code: str) -> bool:
        """
        Whether C{code} is C{address}'s live code; if so it is spent, if
        not it counts as a wrong try.
        """
        given = self._hash(address, code.strip().replace(" ", "")[:DIGITS * 2])
        now = self._clock.seconds()

        def write(conn: Connection) -> bool:
            mine = webmail_login_codes.c.address == address
            row = conn.execute(select(webmail_login_codes).where(mine).with_for_update()).first()
            if row is None or row.expires <= now:
                return False
            if hmac.compare_digest(row.code_hash, given):
                conn.execute(delete(webmail_login_codes).where(mine))
                return True
            if row.attempts + 1 >= MAX_ATTEMPTS:
                conn.execute(delete(webmail_login_codes).where(mine))
            else:
                conn.execute(update(webmail_login_codes).where(mine).values(
                    attempts=row.attempts + 1))
            return False

        used: bool = await self._store.run(write)
        return used



async def forget_codes(store: Store, before: float) -> int:
    """
    Remove the codes that expired before C{before}.
    """
    def write(conn: Connection) -> int:
        return int(conn.execute(delete(webmail_login_codes).where(
            webmail_login_codes.c.expires < before)).rowcount)

    removed: int = await store.run(write)
    return removed
