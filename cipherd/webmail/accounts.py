"""
Webmail accounts, their passwords, and the sign-up and password reset
links that set them.

An account is made, *invited*, when the first message for its address
arrives; it becomes *active* when its password is set from a sign-up link;
an administrator may *disable* it.  Passwords are hashed with Argon2id in a
thread pool of their own.

A link is C{<payload>.<mac>} in URL-safe base64: the payload names the
purpose (C{signup} or C{reset}), the address, the expiry and the account's
current link nonce; the MAC is HMAC-SHA256 under the *server secret*.  A
link is refused when its MAC is wrong (forged, or the secret changed), when
it expired, when it is for another purpose or address, and once used: the
nonce changes whenever a password is set.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, delete, insert, select, update
from twisted.internet.interfaces import IReactorTime
from zxcvbn import zxcvbn

from cipherd.store import Store
from cipherd.store.schema import (
    webmail_accounts,
    webmail_login_codes,
    webmail_login_failures,
    webmail_messages,
    webmail_passkeys,
    webmail_sessions,
)
from cipherd.threads import IBlockingRunner

INVITED, ACTIVE, DISABLED = "invited", "active", "disabled"
# zxcvbn refuses to look at more (a longer password is judged by its start,
# which can only understate it).
ZXCVBN_MAX = 72
SIGNUP, RESET = "signup", "reset"


@dataclass(frozen=True)
class Account:
    address: str
    state: str
    password_set: bool
    link_nonce: str
    created: float
    last_activity: float
    last_login: float | None = None


def _account(row: object) -> Account:
    return Account(row.address, row.state, row.password_hash is not None,  # type: ignore[attr-defined]
                   row.link_nonce, row.created, row.last_activity,  # type: ignore[attr-defined]
                   row.last_login)  # type: ignore[attr-defined]


# Links -----------------------------------------------------------------------


class LinkRefused(Exception):
    """
    A link that does not work, with a reason fit to show (it never says
    whether an address has an account).
    """


@dataclass(frozen=True)
class LinkClaims:
    purpose: str
    address: str
    expires: int
    nonce: str


_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,2048}\.[A-Za-z0-9_-]{43}")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


DAMAGED = "This link is damaged. Copy the whole link from the message."


def _mac(secret: str, domain: bytes, payload: bytes) -> bytes:
    return hmac.new(secret.encode(), domain + b"\0" + payload, hashlib.sha256).digest()


def signed_token(secret: str, domain: bytes, payload: bytes) -> str:
    """
    C{payload} and its HMAC-SHA256 under C{secret}, for a link: C{domain}
    keeps one kind of link from passing for another.
    """
    return f"{b64url(payload)}.{b64url(_mac(secret, domain, payload))}"


def signed_payload(secret: str, domain: bytes, token: str, shape: re.Pattern[str],
                   not_valid: str) -> bytes:
    """
    The payload of a L{signed_token} made with C{secret} for C{domain}.

    @param shape: what such a token looks like (its length bound).
    @raise LinkRefused: damaged (L{DAMAGED}), or forged or made under
        another secret (C{not_valid}).
    """
    if not shape.fullmatch(token):
        raise LinkRefused(DAMAGED)
    encoded, _, mac = token.partition(".")
    try:
        payload, given = unb64url(encoded), unb64url(mac)
    except ValueError:  # binascii.Error: a length no encoder makes
        raise LinkRefused(DAMAGED) from None
    if not secret or not hmac.compare_digest(_mac(secret, domain, payload), given):
        raise LinkRefused(not_valid)
    return payload


_DOMAIN = b"cipherd webmail link"


def make_link_token(secret: str, purpose: str, address: str, nonce: str, expires: int) -> str:
    payload = json.dumps({"p": purpose, "a": address, "e": expires, "n": nonce},
                         separators=(",", ":")).encode()
    return signed_token(secret, _DOMAIN, payload)


def read_link_token(secret: str, token: str, now: float) -> LinkClaims:
    """
    The claims of an authentic, unexpired link.

    @raise LinkRefused: forged, damaged or expired.
    """
    payload = signed_payload(secret, _DOMAIN, token, _TOKEN,
                             "This link is not valid. Copy the whole link from the message, or "
                             "ask for a new one.")
    claims = json.loads(payload)
    found = LinkClaims(str(claims["p"]), str(claims["a"]), int(claims["e"]), str(claims["n"]))
    if now > found.expires:
        raise LinkRefused("This link has expired. Ask for a new one.")
    return found


# Password strength -------------------------------------------------------------


def password_problem(password: str, min_bits: int, address: str) -> str | None:
    """
    Why C{password} is refused, or C{None}.
    """
    return password_report(password, min_bits, address)[1]


def password_report(password: str, min_bits: int, address: str) -> tuple[float, str | None]:
    """
    The strength of C{password} in bits and why it is refused (or C{None}),
    from one zxcvbn estimate (about 0.1 s of CPU: run it off the reactor).
    """
    if len(password) > 1024:
        return 0.0, "The password is too long (at most 1024 characters)."
    local, _, domain = address.partition("@")
    inputs = [address, local, *domain.split("."), "webmail", "cipherd"]
    result = zxcvbn(password[:ZXCVBN_MAX], user_inputs=inputs)
    bits = float(result["guesses_log10"]) * math.log2(10)
    if bits < min_bits:
        feedback = result["feedback"]
        hints = " ".join(filter(None, [feedback.get("warning"),
                                        *feedback.get("suggestions", [])]))
        return bits, (f"The password is too easy to guess ({bits:.0f} bits; at least "
                      f"{min_bits} are needed). {hints}").strip()
    return bits, None


# Accounts ------------------------------------------------------------------------


def remove_belongings(conn: Connection, address: str) -> int:
    """
    Everything of an account that is deleted but the account's row: its
    mailbox, sessions, failed logins, sign-in codes and passkeys.

    @return: how many messages it had.
    """
    messages = conn.execute(delete(webmail_messages).where(
        webmail_messages.c.address == address)).rowcount
    for table in (webmail_sessions, webmail_login_failures, webmail_login_codes,
                  webmail_passkeys):
        conn.execute(delete(table).where(table.c.address == address))
    return int(messages)


class Accounts:
    """
    @param hashing: where Argon2id runs (about 100 ms of CPU a hash).
    @param hasher: Argon2id parameters (tests pass cheaper ones).
    """

    def __init__(self, store: Store, clock: IReactorTime, hashing: IBlockingRunner,
                 hasher: PasswordHasher | None = None) -> None:
        self._store = store
        self._clock = clock
        self._hashing = hashing
        self._hasher = hasher or PasswordHasher()
        # Verified when an address has no account, so that a login takes
        # as long either way.
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    @property
    def store(self) -> Store:
        return self._store

    async def judge_password(self, password: str, min_bits: int, address: str
                             ) -> tuple[float, str | None]:
        """
        L{password_report}, in the thread pool passwords are hashed in.
        """
        report: tuple[float, str | None] = await self._hashing.run(
            password_report, password, min_bits, address)
        return report

    async def get(self, address: str) -> Account | None:
        found: Account | None = await self._store.run(account_in, address)
        return found

    async def invite(self, address: str) -> tuple[Account, bool]:
        """
        The account of C{address}, made (invited) if there is none.  A new
        message is activity: an account that receives mail is not idle.

        @return: the account and whether it is new.
        """
        made: tuple[Account, bool] = await self._store.run(invite_in, address,
                                                            self._clock.seconds())
        return made

    def link(self, secret: str, purpose: str, account: Account, validity_minutes: int) -> str:
        """
        A sign-up or reset link token for C{account}, valid from now for
        C{validity_minutes}.
        """
        expires = int(self._clock.seconds()) + validity_minutes * 60
        return make_link_token(secret, purpose, account.address, account.link_nonce, expires)

    async def check_link(self, secret: str, token: str, purpose: str) -> Account:
        """
        The account a link is for, if it may be used now.

        @raise LinkRefused: it may not.
        """
        claims = read_link_token(secret, token, self._clock.seconds())
        if claims.purpose != purpose:
            raise LinkRefused("This link is not valid. Copy the whole link from the message, "
                              "or ask for a new one.")
        account = await self.get(claims.address)
        if account is None or not hmac.compare_digest(account.link_nonce, claims.nonce):
            raise LinkRefused("This link has been used already. Ask for a new one.")
        if account.state == DISABLED:
            raise LinkRefused("This account is disabled. Ask the sender of your messages.")
        if purpose == SIGNUP and account.password_set:
            raise LinkRefused("A password has been set already: log in, or reset it.")
        return account

    async def set_password(self, account: Account, password: str) -> bool:
        """
        Set the password of an account a link was checked for: the account
        becomes active and every outstanding link stops working.

        @return: C{False} when the link was used meanwhile.
        """
        hashed = await self._hashing.run(self._hasher.hash, password)
        now = self._clock.seconds()

        def write(conn: Connection) -> bool:
            done = conn.execute(update(webmail_accounts).where(
                (webmail_accounts.c.address == account.address)
                & (webmail_accounts.c.link_nonce == account.link_nonce)
                & (webmail_accounts.c.state != DISABLED)).values(
                password_hash=hashed, state=ACTIVE, link_nonce=secrets.token_hex(16),
                last_activity=now))
            return bool(done.rowcount)

        changed: bool = await self._store.run(write)
        return changed

    async def verify_password(self, address: str, password: str) -> Account | None:
        """
        The active account whose password this is, or C{None}; as slow for
        an unknown address as for a wrong password.
        """
        def read(conn: Connection) -> tuple[Account, str | None] | None:
            row = conn.execute(select(webmail_accounts).where(
                webmail_accounts.c.address == address)).first()
            return None if row is None else (_account(row), row.password_hash)

        found = await self._store.run(read)
        hashed = found[1] if found is not None and found[1] else self._dummy
        try:
            await self._hashing.run(self._hasher.verify, hashed, password)
        except (VerificationError, InvalidHashError):
            return None
        if found is None or found[1] is None or found[0].state != ACTIVE:
            return None
        await self.touch(address, login=True)
        return found[0]

    async def touch(self, address: str, *, login: bool = False) -> None:
        """
        Note activity of C{address} now; a password login with C{login}.
        """
        now = self._clock.seconds()
        values = {"last_activity": now, **({"last_login": now} if login else {})}
        await self._store.run(lambda conn: conn.execute(
            update(webmail_accounts).where(webmail_accounts.c.address == address)
            .values(values)))

    async def set_state(self, address: str, state: str) -> bool:
        def write(conn: Connection) -> bool:
            changed = bool(conn.execute(update(webmail_accounts).where(
                webmail_accounts.c.address == address).values(state=state)).rowcount)
            if state == DISABLED:
                # A disabled account's open sessions end with it.
                conn.execute(delete(webmail_sessions).where(
                    webmail_sessions.c.address == address))
            return changed

        changed: bool = await self._store.run(write)
        return changed

    async def delete_inactive(self, before: float) -> dict[str, int]:
        """
        Remove the accounts without activity since C{before}, and their
        mailboxes, in one transaction: an account that comes back to life
        meanwhile (a login, a new message) keeps its mailbox.

        @return: how many messages each removed account had.
        """
        def write(conn: Connection) -> dict[str, int]:
            gone = list(conn.execute(delete(webmail_accounts).where(
                webmail_accounts.c.last_activity < before)
                .returning(webmail_accounts.c.address)).scalars())
            return {address: remove_belongings(conn, address) for address in gone}

        removed: dict[str, int] = await self._store.run(write)
        return removed

    # The second factor (TOTP) ----------------------------------------------------

    async def totp_secret(self, address: str) -> bytes | None:
        """
        The sealed TOTP secret of C{address}, or C{None} when it has none.
        """
        found: bytes | None = await self._store.run(lambda conn: conn.execute(
            select(webmail_accounts.c.totp_secret).where(
                webmail_accounts.c.address == address)).scalar())
        return found

    async def use_totp_step(self, address: str, step: int) -> bool:
        """
        Record that the code of time step C{step} was used to log in.

        @return: C{False} when that code (or a later one) was used already:
            a replayed code.
        """
        def write(conn: Connection) -> bool:
            last = webmail_accounts.c.totp_last_step
            return bool(conn.execute(update(webmail_accounts).where(
                (webmail_accounts.c.address == address)
                & (last.is_(None) | (last < step))).values(totp_last_step=step)).rowcount)

        used: bool = await self._store.run(write)
        return used

    async def set_totp_secret(self, address: str, sealed: bytes | None) -> bool:
        """
        Set (sealed, from L{cipherd.webmail.totp.seal_secret}) or remove
        (C{None}) the TOTP secret of C{address}.
        """
        def write(conn: Connection) -> bool:
            return bool(conn.execute(update(webmail_accounts).where(
                webmail_accounts.c.address == address).values(totp_secret=sealed)).rowcount)

        changed: bool = await self._store.run(write)
        return changed

    async def change_password(self, address: str, current: str, new: str) -> bool:
        """
        Replace the password of C{address} when C{current} is its password;
        outstanding reset links stop working.

        @return: C{False} when C{current} is wrong (or the account is not
            active).
        """
        account = await self.verify_password(address, current)
        if account is None:
            return False
        return await self.set_password(account, new)


def account_in(conn: Connection, address: str) -> Account | None:
    """
    The account of C{address}, within a transaction of the caller's.
    """
    row = conn.execute(select(webmail_accounts).where(
        webmail_accounts.c.address == address)).first()
    return None if row is None else _account(row)


def invite_in(conn: Connection, address: str, now: float) -> tuple[Account, bool]:
    """
    L{Accounts.invite} within a transaction of the caller's.
    """
    row = conn.execute(select(webmail_accounts).where(
        webmail_accounts.c.address == address)).first()
    if row is not None:
        conn.execute(update(webmail_accounts).where(
            webmail_accounts.c.address == address).values(last_activity=now))
        return _account(row), False
    nonce = secrets.token_hex(16)
    conn.execute(insert(webmail_accounts).values(
        address=address, state=INVITED, password_hash=None, link_nonce=nonce,
        created=now, last_activity=now))
    return Account(address, INVITED, False, nonce, now, now), True
