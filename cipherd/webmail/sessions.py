"""
Portal sessions and login throttling, shared by every node through the
database (tables C{webmail_sessions} and C{webmail_login_failures}).

The scheme is the admin site's (L{cipherd.web.auth}): the cookie holds a
random token and the database only its SHA-256, so a copy of the database
opens no session; a session ends after C{idle_timeout} without a request
and C{max_age} after login whatever happens; each has its own CSRF token.
Failed logins are counted per address *and* client address, the count
taken before the password is checked, in one transaction, so parallel
guesses each use up a place; past the threshold within the window the pair
is locked for a while.  A locked pair learns nothing more: its guesses are
not checked.  Wrong one-time codes count the same as wrong passwords.

The lockout holds however the database behaves: an attempt whose count
cannot be written is not checked (there is no count in memory to get
wrong), and the attempt that reaches the threshold stores the lock with its
count, before its check, so no later write (refused, or never made because
the client went away) is needed for it.  A check whose client went away
goes on, and keeps its place among L{MAX_PENDING_CHECKS}, until done.

L{LoginThrottle} knows nothing of webmail but its table's columns; the
admin's lockout could move onto it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Table, delete, insert, select, update
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cipherd.store import DatabaseUnavailable, Store
from cipherd.store.schema import webmail_login_failures, webmail_sessions

IDLE_TIMEOUT = 15 * 60
MAX_AGE = 8 * 3600
LOCKOUT_THRESHOLD = 5
# The "client" under which one-time code failures are counted: the account
# as a whole.
SECOND_FACTOR = "(second factor)"
LOCKOUT_WINDOW = 15 * 60
LOCKOUT_DURATION = 15 * 60
# Argon2 checks allowed to wait at once; beyond this a login is refused at
# once (nothing counted) rather than queueing CPU work.
MAX_PENDING_CHECKS = 16
SWEEP_EVERY = 600
MAX_TOKEN = 128

WRONG, LOCKED, THROTTLED, BUSY = "wrong", "locked", "throttled", "busy"

log = Logger(namespace="cipherd.webmail.sessions")
T = TypeVar("T")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


class LoginRefused(Exception):
    """
    A login is refused.

    @ivar reason: L{WRONG} (the same for an unknown address as for a wrong
        password), L{LOCKED} (C{minutes} more), L{THROTTLED} (too many at
        once) or L{BUSY} (nothing counted: try again).
    """

    def __init__(self, reason: str, minutes: int = 0) -> None:
        super().__init__(reason, minutes)
        self.reason = reason
        self.minutes = minutes


@dataclass(frozen=True)
class Attempt:
    count: int
    first_failure: float
    locked_until: float | None


class LoginThrottle:
    """
    Failed logins per account and client, and the lockout they lead to.

    @param table: a table with the columns C{client}, C{failure_count},
        C{first_failure}, C{locked_until} and the account column C{key}.
    """

    def __init__(self, store: Store, clock: IReactorTime, table: Table, key: str, *,
                 threshold: int = LOCKOUT_THRESHOLD, window: int = LOCKOUT_WINDOW,
                 duration: int = LOCKOUT_DURATION) -> None:
        self._store = store
        self._clock = clock
        self._table = table
        self._key = table.c[key]
        self.threshold = threshold
        self.window = window
        self.duration = duration

    def _where(self, account: str, client: str) -> Any:
        return (self._key == account) & (self._table.c.client == client_key(client))

    def _read(self, conn: Connection, account: str, client: str) -> Attempt | None:
        row = conn.execute(select(self._table).where(self._where(account, client))
                           .with_for_update()).first()
        return None if row is None else Attempt(row.failure_count, row.first_failure,
                                                row.locked_until)

    def _write(self, conn: Connection, account: str, client: str, attempt: Attempt) -> None:
        values = {"failure_count": attempt.count, "first_failure": attempt.first_failure,
                  "locked_until": attempt.locked_until}
        if not conn.execute(update(self._table).where(self._where(account, client))
                            .values(values)).rowcount:
            conn.execute(insert(self._table).values({self._key.name: account,
                                                     "client": client_key(client), **values}))

    async def count(self, account: str, client: str) -> None:
        """
        Count an attempt before its credentials are checked.  The attempt
        that reaches the threshold stores the lock with its count, before
        its check: a lock that waited for the failure's write (after the
        check) was lost when that write was refused or the client went
        away, and the pair was free again at the end of the window.  A
        right password (L{succeeded}) ends it.

        @raise LoginRefused: locked, or too many attempts under way.
        """
        now = self._clock.seconds()

        def write(conn: Connection) -> tuple[Attempt, bool]:
            row = self._read(conn, account, client)
            if row is not None and row.locked_until and now < row.locked_until:
                return row, False
            # A lock that ran out starts the count afresh.
            if row is None or row.locked_until or now - row.first_failure > self.window:
                row = Attempt(1, now, None)
            else:
                row = Attempt(row.count + 1, row.first_failure, None)
            if row.count >= self.threshold:
                row = Attempt(row.count, row.first_failure, now + self.duration)
            self._write(conn, account, client, row)
            return row, True

        attempt, counted = await self._store.run(write)
        if not counted:
            raise LoginRefused(LOCKED, _minutes((attempt.locked_until or now) - now))
        if attempt.count > self.threshold:
            raise LoginRefused(THROTTLED)

    async def failed(self, account: str, client: str) -> LoginRefused:
        """
        The counted attempt failed: lock the pair from now when it reached
        the threshold (its count locked it already).  A write even when
        there is nothing to lock: a right password needs writes to log in,
        so during an outage a wrong one must fail the same way
        (L{cipherd.store.DatabaseUnavailable}), not answer "wrong".

        @return: what to raise.
        """
        now = self._clock.seconds()

        def write(conn: Connection) -> bool:
            row = self._read(conn, account, client)
            if row is None or row.count < self.threshold:
                return False
            self._write(conn, account, client,
                        Attempt(row.count, row.first_failure, now + self.duration))
            return True

        if await self._store.run(write):
            return LoginRefused(LOCKED, _minutes(self.duration))
        return LoginRefused(WRONG)

    async def succeeded(self, account: str, client: str) -> None:
        await self._store.run(lambda conn: conn.execute(
            delete(self._table).where(self._where(account, client))))

    def sweep(self, conn: Connection) -> int:
        """
        Forget records outside the window that hold no running lock.
        """
        now = self._clock.seconds()
        c = self._table.c
        return int(conn.execute(delete(self._table).where(
            (c.first_failure < now - self.window)
            & (c.locked_until.is_(None) | (c.locked_until < now)))).rowcount)


def _unless_abandoned(work: Deferred[T]) -> Deferred[T]:
    """
    C{work}'s result, in a Deferred whose cancelling (the client went away)
    leaves C{work} running: what it then fails with is logged unless it is
    an answer (L{LoginRefused}) or an outage (the store logs those).
    """
    abandoned = False

    def abandon(_: Deferred[T]) -> None:
        nonlocal abandoned
        abandoned = True

    answer: Deferred[T] = Deferred(abandon)

    def done(result: T | Failure) -> None:
        if not abandoned:
            if isinstance(result, Failure):
                answer.errback(result)
            else:
                answer.callback(result)
        elif isinstance(result, Failure) and not result.check(LoginRefused,
                                                              DatabaseUnavailable):
            log.failure("A portal login whose client went away failed", result)

    work.addBoth(done)
    return answer


def client_key(client: str) -> str:
    """
    Who failed, for counting: an IPv4 address, or the /64 network of an
    IPv6 address (one host has a whole /64 to try from).
    """
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client[:64]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address.ipv4_mapped or address) if isinstance(
        address, ipaddress.IPv6Address) else str(address)


def _minutes(seconds: float) -> int:
    return max(1, int((seconds + 59) // 60))


@dataclass(frozen=True)
class PortalSession:
    """
    A valid portal session.

    @ivar second_factor: the one-time code was given, or none is needed.
    """

    address: str
    csrf_token: str
    token_hash: str
    second_factor: bool
    created: float


class PortalSessions:
    """
    Sessions and logins of the portal.

    @param verify_password: C{(address, password)} → the active account,
        or C{None} (as slow for an unknown address as for a wrong password:
        L{cipherd.webmail.accounts.Accounts.verify_password}).
    @ivar clock: the sessions' clock; the portal's request deadlines run
        on it too.
    """

    def __init__(self, store: Store, clock: IReactorTime,
                 verify_password: Callable[[str, str], Awaitable[Any]], *,
                 idle_timeout: int = IDLE_TIMEOUT, max_age: int = MAX_AGE,
                 throttle: LoginThrottle | None = None) -> None:
        self._store = store
        self.clock = clock
        self._verify_password = verify_password
        self.idle_timeout = idle_timeout
        self.max_age = max_age
        self.throttle = throttle or LoginThrottle(store, clock, webmail_login_failures,
                                                  "address")
        self._pending = 0
        self._last_sweep = clock.seconds()

    async def check_password(self, address: str, password: str, client: str) -> Any:
        """
        @return: the account.
        @raise LoginRefused: why not.
        """
        address = address.strip().lower()[:320]
        return await self.check_login(address, client,
                                      lambda: self._verify_password(address, password))

    async def check_login(self, address: str, client: str,
                          verify: Callable[[], Awaitable[Any]]) -> Any:
        """
        A login by any means (a password, a mailed code), counted and
        locked out alike: C{verify} answers the account, or C{None} for a
        wrong secret.

        @return: the account.
        @raise LoginRefused: why not.
        """
        if self._pending >= MAX_PENDING_CHECKS:
            raise LoginRefused(BUSY)
        # The place is given back when the check is done, not when its
        # request is: a client that hangs up (the request cancelled) does
        # not stop its Argon2 thread, and a loop of connect, send, close
        # would queue hashes without limit.  The check also goes on to
        # record its outcome.
        self._pending += 1
        work = Deferred.fromCoroutine(self._check(address, client, verify))
        work.addBoth(self._give_back_place)
        account = await _unless_abandoned(work)
        return account

    def _give_back_place(self, result: object) -> object:
        self._pending -= 1
        return result

    async def _check(self, address: str, client: str, verify: Callable[[], Awaitable[Any]]
                     ) -> Any:
        await self._sweep_now_and_then()
        await self.throttle.count(address, client)
        account = await verify()
        if account is None:
            raise await self.throttle.failed(address, client)
        await self.throttle.succeeded(address, client)
        return account

    async def check_code(self, session: PortalSession, valid: bool, client: str) -> None:
        """
        Count a one-time code as a login attempt; on success the session
        has its second factor.

        @param valid: whether the code was right (checked by the caller).
        @raise LoginRefused: wrong, or locked (checked before C{valid} is
            believed, so a locked pair cannot keep guessing).
        """
        # Counted per account, whatever the client, and cleared only by a
        # right code: a right password (which clears the password count)
        # must not give the one who has it a fresh set of code guesses.
        await self.throttle.count(session.address, SECOND_FACTOR)
        if not valid:
            raise await self.throttle.failed(session.address, SECOND_FACTOR)
        await self.throttle.succeeded(session.address, SECOND_FACTOR)
        await self._store.run(lambda conn: conn.execute(
            update(webmail_sessions).where(webmail_sessions.c.token_hash == session.token_hash)
            .values(second_factor=True)))

    async def open(self, address: str, *, second_factor: bool) -> str:
        """
        Start a session (a new token every login: no fixation).

        @return: the token for the cookie.
        """
        token = secrets.token_urlsafe(32)
        now = self.clock.seconds()
        await self._store.run(lambda conn: conn.execute(insert(webmail_sessions).values(
            token_hash=hash_token(token), address=address,
            csrf_token=secrets.token_urlsafe(32), second_factor=second_factor, created=now,
            last_seen=now)))
        return token

    async def get(self, token: str | None) -> PortalSession | None:
        """
        The session of C{token} while it is valid, its idle time restarted;
        an expired one is deleted.
        """
        if not token or len(token) > MAX_TOKEN:
            return None
        token_hash = hash_token(token)
        now = self.clock.seconds()

        def load(conn: Connection) -> PortalSession | None:
            mine = webmail_sessions.c.token_hash == token_hash
            row = conn.execute(select(webmail_sessions).where(mine)).first()
            if row is None:
                return None
            if now - row.last_seen > self.idle_timeout or now - row.created > self.max_age:
                conn.execute(delete(webmail_sessions).where(mine))
                return None
            conn.execute(update(webmail_sessions).where(mine).values(last_seen=now))
            return PortalSession(row.address, row.csrf_token, token_hash,
                                 bool(row.second_factor), row.created)

        found: PortalSession | None = await self._store.run(load)
        return found

    async def close(self, token_hash: str) -> None:
        await self._store.run(lambda conn: conn.execute(
            delete(webmail_sessions).where(webmail_sessions.c.token_hash == token_hash)))

    async def close_others(self, address: str, keep: str | None = None) -> None:
        """
        End every session of C{address} but C{keep} (a password changed).
        """
        condition = webmail_sessions.c.address == address
        if keep is not None:
            condition &= webmail_sessions.c.token_hash != keep
        await self._store.run(lambda conn: conn.execute(delete(webmail_sessions)
                                                        .where(condition)))

    async def expire(self) -> int:
        """
        Delete sessions past their timeouts and failure records that no
        longer count.

        @return: the sessions deleted.
        """
        now = self.clock.seconds()
        self._last_sweep = now

        def sweep(conn: Connection) -> int:
            self.throttle.sweep(conn)
            c = webmail_sessions.c
            return int(conn.execute(delete(webmail_sessions).where(
                (c.last_seen < now - self.idle_timeout)
                | (c.created < now - self.max_age))).rowcount)

        swept: int = await self._store.run(sweep)
        return swept

    async def _sweep_now_and_then(self) -> None:
        # No timer of its own: any node sweeps on a login now and then.
        if self.clock.seconds() - self._last_sweep >= SWEEP_EVERY:
            await self.expire()
