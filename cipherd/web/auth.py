"""
Admin authentication: accounts, passwords (Argon2id), lockout after failed
logins, and database-backed sessions with idle and absolute timeouts.

Shared by the HTML admin pages (sessions) and the JSON API (HTTP Basic),
so one lockout counts failures from both.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zxcvbn import zxcvbn

from cipherd.store import Store
from cipherd.store import admins as q
from cipherd.threads import IBlockingRunner

DEFAULT_ADMIN = "admin"
DEFAULT_PASSWORD = "admin"  # noqa: S105 -- the guide's documented first login; must be changed
MIN_ADMIN_PASSWORD_LENGTH = 10
MIN_ADMIN_PASSWORD_SCORE = 3  # zxcvbn: "safely unguessable" (>= 10^8 guesses)
# Password checks (Argon2) allowed to wait for the auth thread at once;
# beyond this, logins are refused at once instead of queueing CPU work.
MAX_PENDING_CHECKS = 16
# Credentials recently proven correct, so that API clients (HTTP Basic on
# every request) do not pay an Argon2 check per call.
VERIFIED_CACHE_SIZE = 32
VERIFIED_CACHE_SECONDS = 300

log = Logger(namespace="cipherd.admin")
T = TypeVar("T")


class LoginRefused(Exception):
    """
    Wrong credentials or locked out; the message is safe to show.
    """


class ServerBusy(LoginRefused):
    """
    Too many password checks are under way: refused before anything was
    counted or changed; the client may try again at once.
    """


class WeakPassword(ValueError):
    """
    A new password is refused; the message says why.
    """


@dataclass(frozen=True)
class AdminSession:
    """
    A valid admin session.
    """

    admin_name: str
    csrf_token: str
    token_hash: str
    must_change_password: bool


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def _locked_message(seconds: float) -> str:
    minutes = int((seconds + 59) // 60)
    return f"Too many failed logins. Login is locked for {minutes} more minute(s)."


def password_problem(name: str, password: str) -> str | None:
    """
    Why C{password} is not good enough for admin C{name}, or C{None}.
    """
    if len(password) < MIN_ADMIN_PASSWORD_LENGTH:
        return f"The password must be at least {MIN_ADMIN_PASSWORD_LENGTH} characters long."
    if password.lower() in (name.lower(), DEFAULT_PASSWORD):
        return "The password must not be the user name or the default password."
    result = zxcvbn(password[:72], user_inputs=[name, "cipherd", "ciphermail"])  # its limit
    if result["score"] < MIN_ADMIN_PASSWORD_SCORE:
        feedback = result["feedback"]
        hints = " ".join(filter(None, [feedback.get("warning"), *feedback.get("suggestions", [])]))
        return ("The password is too easy to guess. " + hints).strip()
    return None


class AdminAuthority:
    """
    Checks admin credentials and manages admin sessions.

    @param store: the database.
    @param runner: where Argon2 hashing runs (it takes ~100 ms of CPU): a
        pool of its own, so that a flood of logins cannot starve mail.
    @param clock: the source of time for sessions and lockouts.
    @param hasher: an Argon2id hasher (tests pass cheaper parameters).
    """

    def __init__(
        self,
        store: Store,
        runner: IBlockingRunner,
        clock: IReactorTime,
        *,
        idle_timeout: int,
        max_age: int,
        lockout_threshold: int,
        lockout_window: int,
        lockout_duration: int,
        hasher: PasswordHasher | None = None,
    ) -> None:
        self._store = store
        self._runner = runner
        self._clock = clock
        self.idle_timeout = idle_timeout
        self.max_age = max_age
        self._threshold = lockout_threshold
        self._window = lockout_window
        self._duration = lockout_duration
        self._hasher = hasher or PasswordHasher()
        self._dummy_hash: str | None = None
        self._pending = 0
        # (name, HMAC of the password) -> (the hash it matched, when).
        self._verified: OrderedDict[tuple[str, bytes], tuple[str, float]] = OrderedDict()
        self._cache_key = secrets.token_bytes(32)

    async def ensure_default_admin(self) -> None:
        """
        Create C{admin}/C{admin}, to be changed at first login, when there is
        no admin account yet.
        """
        hashed = await self._runner.run(self._hasher.hash, DEFAULT_PASSWORD)
        if await self._store.run(q.ensure_admin, DEFAULT_ADMIN, hashed):
            log.info("Created the default admin account; its password must be changed")

    def _verify(self, hashed: str, password: str) -> bool:
        try:
            return self._hasher.verify(hashed, password)
        except (VerificationError, InvalidHashError):
            return False

    @contextlib.contextmanager
    def _reserved(self) -> Iterator[None]:
        """
        Take one of the places for password work, or refuse at once when
        too many are taken: before anything is counted, so a flood of
        logins from elsewhere neither queues hashes nor locks anyone out.

        @raise ServerBusy: no place is free.
        """
        if self._pending >= MAX_PENDING_CHECKS:
            raise ServerBusy("The server is busy checking other logins; try again in a "
                             "moment.")
        self._pending += 1
        try:
            yield
        finally:
            self._pending -= 1

    async def _check(self, fn: Callable[..., T], *args: Any) -> T:
        # A password hash or check, on the auth runner (one thread).
        return await self._runner.run(fn, *args)

    def _cache_slot(self, name: str, password: str) -> tuple[str, bytes]:
        return name, hmac.digest(self._cache_key, password.encode("utf-8", "surrogatepass"),
                                 "sha256")

    def _recently_verified(self, admin: q.AdminRow, password: str, now: float) -> bool:
        hit = self._verified.get(self._cache_slot(admin.name, password))
        # The entry only vouches for the hash it was checked against: a
        # password change makes it worthless at once.
        return (hit is not None and hmac.compare_digest(hit[0], admin.password_hash)
                and now - hit[1] < VERIFIED_CACHE_SECONDS)

    def _remember_verified(self, admin: q.AdminRow, password: str, now: float) -> None:
        slot = self._cache_slot(admin.name, password)
        self._verified[slot] = (admin.password_hash, now)
        self._verified.move_to_end(slot)
        while len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)

    async def check_password(self, name: str, password: str, client: str) -> q.AdminRow:
        """
        Check credentials, counting failures per account and client.

        @param client: the client's address, the unit of lockout.
        @return: the account.
        @raise LoginRefused: wrong credentials, or locked out.
        @raise ServerBusy: too many checks under way; nothing was counted.
        """
        with self._reserved():
            return await self._check_password(name[:64], password, client)

    async def _check_password(self, name: str, password: str, client: str) -> q.AdminRow:
        now = self._clock.seconds()
        # Count the attempt before checking the password, in one transaction:
        # parallel guesses each take a place in the count and those past the
        # threshold are refused unchecked.
        attempt = await self._store.run(self._count_attempt, name, client, now)
        if attempt.locked_until and now < attempt.locked_until:
            raise LoginRefused(_locked_message(attempt.locked_until - now))
        if attempt.count > self._threshold:
            raise LoginRefused("Too many login attempts at once; try again in a moment.")
        admin = await self._store.run(q.get_admin, name)
        if admin is not None and self._recently_verified(admin, password, now):
            ok = True
        elif admin is None:
            # Spend the same time as for a real account: no user enumeration.
            if self._dummy_hash is None:
                self._dummy_hash = await self._check(self._hasher.hash, secrets.token_hex())
            await self._check(self._verify, self._dummy_hash, password)
            ok = False
        else:
            ok = await self._check(self._verify, admin.password_hash, password)
        if ok and admin is not None:
            self._remember_verified(admin, password, now)
            await self._store.run(q.clear_failures, name, client)
            return admin
        message = "Wrong user name or password."
        if attempt.count >= self._threshold:
            locked = q.FailureRow(attempt.count, attempt.first_failure, now + self._duration)
            await self._store.run(q.put_failures, name, client, locked)
            log.warn(
                "Admin login for {account!r} from {client} locked after {count} failures",
                account=name, client=client, count=attempt.count,
            )
            message += " " + _locked_message(self._duration)
        raise LoginRefused(message)

    def _count_attempt(self, conn: Connection, name: str, client: str,
                       now: float) -> q.FailureRow:
        row = q.get_failures(conn, name, client, for_update=True)
        if row is not None and row.locked_until and now < row.locked_until:
            return row
        # A lock that ran out starts the count afresh.
        if row is None or row.locked_until or now - row.first_failure > self._window:
            row = q.FailureRow(1, now, None)
        else:
            row = q.FailureRow(row.count + 1, row.first_failure, None)
        q.put_failures(conn, name, client, row)
        return row

    async def change_password(self, name: str, password: str, keep_session: str | None) -> None:
        """
        Set a new password for admin C{name} and end its other sessions.

        @param keep_session: the token hash of the session to keep, if any.
        @raise WeakPassword: the password is refused; nothing changed.
        @raise ServerBusy: too many password checks under way; nothing changed.
        """
        problem = await self._runner.run(password_problem, name, password)
        if problem:
            raise WeakPassword(problem)
        with self._reserved():
            hashed = await self._check(self._hasher.hash, password)
        now = self._clock.seconds()

        def change(conn: Connection) -> None:
            q.set_admin_password(conn, name, hashed, now)
            q.delete_sessions_of(conn, name, keep=keep_session)

        await self._store.run(change)
        log.info("Admin {account!r} changed the password", account=name)

    async def open_session(self, name: str) -> str:
        """
        Start a session for admin C{name}.

        @return: the session token for the cookie.
        """
        token = secrets.token_urlsafe(32)
        await self._store.run(
            q.create_session, _hash_token(token), name, secrets.token_urlsafe(32),
            self._clock.seconds(),
        )
        return token

    async def session(self, token: str) -> AdminSession | None:
        """
        The session for C{token} if it is valid, extending its idle timeout;
        an expired session is deleted.
        """
        if not token or len(token) > 128:
            return None
        token_hash = _hash_token(token)
        now = self._clock.seconds()

        def load(conn: Connection) -> AdminSession | None:
            row = q.get_session(conn, token_hash)
            if row is None:
                return None
            if now - row.last_seen > self.idle_timeout or now - row.created > self.max_age:
                q.delete_session(conn, token_hash)
                return None
            admin = q.get_admin(conn, row.admin_name)
            if admin is None:
                return None
            q.touch_session(conn, token_hash, now)
            return AdminSession(admin.name, row.csrf_token, token_hash,
                                admin.must_change_password)

        return await self._store.run(load)

    async def close_session(self, token_hash: str) -> None:
        await self._store.run(q.delete_session, token_hash)

    async def expire_sessions(self) -> int:
        """
        Delete sessions past their timeouts, and failed-login records that
        no longer count; for the periodic sweep.
        """
        now = self._clock.seconds()

        def sweep(conn: Connection) -> int:
            q.delete_stale_failures(conn, now - self._window, now)
            return q.delete_expired_sessions(conn, now - self.idle_timeout, now - self.max_age)

        return await self._store.run(sweep)


def csrf_matches(expected: str, submitted: str | None) -> bool:
    """
    Constant-time comparison of a submitted CSRF token.
    """
    if not submitted:
        return False
    return hmac.compare_digest(expected.encode(), submitted.encode())
