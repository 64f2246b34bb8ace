"""
Admin authentication: accounts, passwords (Argon2id), lockout after failed
logins, and database-backed sessions with idle and absolute timeouts.

Shared by the HTML admin pages (sessions) and the JSON API (HTTP Basic),
so one lockout counts failures from both.

A correct login writes nothing: the API has to work on a full disk, when
the administrator needs it most.  Only what must be remembered is written
-- a failure, the end of a nonzero count, a new session, a session's idle
time now and then -- and a failure that cannot be written is counted in
memory instead.

The lockout holds however the database behaves.  Each guess under way
takes a place in its (account, client) count from before its password is
checked until its failure is recorded, so parallel guesses past the
threshold are refused unchecked even while the failures' writes are slow;
and a count only grows (the stronger of the stored and the in-memory row,
never one computed from what was known before a write began), so a write
that fails late cannot undo a lock counted meanwhile.

Parallel guesses are counted per process: behind a load balancer, N nodes
on one database let a first burst of parallel guesses have up to
N x the threshold password checks before the stored count locks them all
(sequential guesses are counted in the database, across nodes).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Connection
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zxcvbn import zxcvbn

from cipherd.store import DatabaseUnavailable, Store
from cipherd.store import admins as q
from cipherd.threads import IBlockingRunner
from cipherd.webmail import totp

DEFAULT_ADMIN = "admin"
DEFAULT_PASSWORD = "admin"  # noqa: S105 -- the guide's documented first login; must be changed
MIN_ADMIN_PASSWORD_LENGTH = 10
MIN_ADMIN_PASSWORD_SCORE = 3  # zxcvbn: "safely unguessable" (>= 10^8 guesses)
# Password checks (Argon2) allowed to wait for the auth thread at once;
# beyond this, logins are refused at once instead of queueing CPU work.
# A check whose client went away keeps its place until its hash is done.
MAX_PENDING_CHECKS = 16
# Credentials recently proven correct, so that API clients (HTTP Basic on
# every request) do not pay an Argon2 check per call.
VERIFIED_CACHE_SIZE = 32
VERIFIED_CACHE_SECONDS = 300
# A session's idle time restarts at most this often (a write each time):
# its idle timeout is kept to within this.
SESSION_TOUCH_INTERVAL = 60
# The failure counts kept in memory (those the database would not take, and
# the latest written, which a read begun before its write may not show),
# for at most this many account/client pairs.
MAX_FAILURES_IN_MEMORY = 10_000

log = Logger(namespace="cipherd.admin")

ADMIN_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
# How long a right password waits for its second factor's code.
PENDING_LOGIN = 300
API_TOKEN = re.compile(r"cdt_([0-9a-f]{16})_[A-Za-z0-9_-]{43}")
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


class AccountRefused(Exception):
    """
    An admin account change that is refused; the message says why.
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
    role: str = q.ADMINISTRATOR


@dataclass(frozen=True)
class NewToken:
    """
    An API token as made: its id, the token itself (shown once) and its
    label as stored.
    """

    id: str
    token: str
    label: str


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
    @param clock: the source of time for sessions and lockouts (and, as
        C{clock}, for the admin site's request deadlines).
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
        totp_key: bytes,
    ) -> None:
        self._store = store
        self._totp_key = totp_key
        self._runner = runner
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.max_age = max_age
        self._threshold = lockout_threshold
        self._window = lockout_window
        self._duration = lockout_duration
        self._hasher = hasher or PasswordHasher()
        self._dummy_hash: str | None = None
        # Places taken for password work: requests checking a password,
        # and hashes still running for requests that went away.
        self._pending = 0
        # Password checks under way, by (account, client): parallel guesses
        # each take a place before they are checked.
        self._checking: dict[tuple[str, str], int] = {}
        # The latest failure count this process knows, by (account, client):
        # counted here when the database would not take it, and kept after
        # a write so that a read begun before the write still meets it.
        self._counted: OrderedDict[tuple[str, str], q.FailureRow] = OrderedDict()
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

    def _check(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """
        A password hash or check, on the auth runner (one thread).  When
        the request waiting for it is cancelled (its client went away), the
        thread goes on hashing, and keeps a place (L{MAX_PENDING_CHECKS})
        until it is done: else connect-send-close would queue hashes
        without limit.
        """
        abandoned = False

        def abandon(_: Deferred[T]) -> None:
            nonlocal abandoned
            abandoned = True
            self._pending += 1  # the thread's; given back when it ends

        answer: Deferred[T] = Deferred(abandon)

        def done(result: object) -> None:
            if not abandoned:
                if isinstance(result, Failure):
                    answer.errback(result)
                else:
                    answer.callback(cast(T, result))
                return
            self._pending -= 1
            if isinstance(result, Failure) and not result.check(CancelledError):
                log.failure("A password check no one waits for any more failed", result)

        self._runner.run(fn, *args).addBoth(done)
        return answer

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
        now = self.clock.seconds()
        pair = (name, client)

        def load(conn: Connection) -> tuple[q.AdminRow | None, q.FailureRow | None]:
            return q.get_admin(conn, name), q.get_failures(conn, name, client)

        admin, stored = await self._store.read(load)
        failures = self._merged(stored, self._counted.get(pair), now)
        if failures is not None and failures.locked_until:
            raise LoginRefused(_locked_message(failures.locked_until - now))
        if admin is not None and self._recently_verified(admin, password, now):
            await self._forget_failures(name, client, failures)
            return admin
        # Each check under way takes a place in the count, from before its
        # password is checked until its failure is recorded (the write may
        # take seconds), so parallel guesses past the threshold are refused
        # unchecked.
        counted = (failures.count if failures else 0) + self._checking.get(pair, 0)
        if counted >= self._threshold:
            raise LoginRefused("Too many login attempts at once; try again in a moment.")
        self._checking[pair] = self._checking.get(pair, 0) + 1
        try:
            ok = await self._password_matches(admin, password)
            if not (ok and admin is not None):
                recorded = await self._record_failure(name, client, now, stored)
        finally:
            self._checking[pair] -= 1
            if not self._checking[pair]:
                del self._checking[pair]
        if ok and admin is not None:
            self._remember_verified(admin, password, now)
            await self._forget_failures(name, client, failures)
            return admin
        message = "Wrong user name or password."
        if recorded.locked_until:
            log.warn(
                "Admin login for {account!r} from {client} locked after {count} failures",
                account=name, client=client, count=recorded.count,
            )
            message += " " + _locked_message(self._duration)
        raise LoginRefused(message)

    async def _password_matches(self, admin: q.AdminRow | None, password: str) -> bool:
        if admin is not None:
            return await self._check(self._verify, admin.password_hash, password)
        # Spend the same time as for a real account: no user enumeration.
        if self._dummy_hash is None:
            self._dummy_hash = await self._check(self._hasher.hash, secrets.token_hex())
        await self._check(self._verify, self._dummy_hash, password)
        return False

    def _live(self, row: q.FailureRow | None, now: float) -> q.FailureRow | None:
        """
        C{row} while it counts: a lock still running, or failures inside
        the window.  A lock that ran out starts the count afresh.
        """
        if row is None:
            return None
        if row.locked_until:
            return row if now < row.locked_until else None
        return row if now - row.first_failure <= self._window else None

    @staticmethod
    def _stronger(a: q.FailureRow | None, b: q.FailureRow | None) -> q.FailureRow | None:
        # The stored count and the one kept in memory: the more severe.
        if a is None or b is None:
            return a or b
        return max(a, b, key=lambda row: (row.locked_until or 0, row.count))

    def _merged(self, a: q.FailureRow | None, b: q.FailureRow | None,
                now: float) -> q.FailureRow | None:
        # The stronger of two counts that still count (a lock that ran out
        # must not hide a count begun since).
        return self._stronger(self._live(a, now), self._live(b, now))

    def _next_failure(self, row: q.FailureRow | None, now: float) -> q.FailureRow:
        live = self._live(row, now)
        count, first = (live.count + 1, live.first_failure) if live else (1, now)
        return q.FailureRow(count, first, now + self._duration if count >= self._threshold
                            else None)

    async def _record_failure(self, name: str, client: str, now: float,
                              stored: q.FailureRow | None) -> q.FailureRow:
        """
        Count a failed login, locking the pair at the threshold; in memory
        when the database cannot take it.  The count only grows: what is
        counted meanwhile (the write may wait seconds for a lock while other
        failures are counted in memory) is never overwritten by a count
        computed from what was known before.

        @param stored: the pair's row as read before the password check.
        @return: the pair's count now.
        """
        pair = (name, client)
        known = self._counted.get(pair)

        def record(conn: Connection) -> q.FailureRow:
            current = q.get_failures(conn, name, client, for_update=True)
            row = self._next_failure(self._merged(current, known, now), now)
            q.put_failures(conn, name, client, row)
            return row

        try:
            written: q.FailureRow = await self._store.run(record)
        except DatabaseUnavailable as e:
            counted = self._next_failure(self._merged(stored, self._counted.get(pair), now),
                                         now)
            log.warn("A failed admin login for {account!r} from {client} is counted in memory:"
                     " the database cannot record it ({reason})", account=name, client=client,
                     reason=e.reason)
            return self._remember_failures(pair, counted, now)
        meanwhile = self._counted.get(pair)
        if meanwhile is not known:
            # Failures counted while the write was under way are not in it;
            # this one is not in them.
            counted = self._next_failure(self._merged(written, meanwhile, now), now)
            if self._stronger(written, counted) is counted:
                await self._store_count(name, client, counted, now)
                written = counted
        return self._remember_failures(pair, written, now)

    async def _store_count(self, name: str, client: str, row: q.FailureRow,
                           now: float) -> None:
        # Make a count reached in memory durable (a lock survives a
        # restart), unless the database already holds a stronger one.
        def store(conn: Connection) -> None:
            current = q.get_failures(conn, name, client, for_update=True)
            if self._merged(current, row, now) is row:
                q.put_failures(conn, name, client, row)

        try:
            await self._store.run(store)
        except DatabaseUnavailable as e:
            log.info("Could not store the failed logins of {account!r} from {client}: "
                     "{reason}", account=name, client=client, reason=e.reason)

    def _remember_failures(self, pair: tuple[str, str], row: q.FailureRow,
                           now: float) -> q.FailureRow:
        # Never lower what is kept: the stronger of it and C{row}.
        stronger = self._merged(self._counted.get(pair), row, now) or row
        self._counted[pair] = stronger
        self._counted.move_to_end(pair)
        while len(self._counted) > MAX_FAILURES_IN_MEMORY:
            self._counted.popitem(last=False)
        return stronger

    async def _forget_failures(self, name: str, client: str,
                               failures: q.FailureRow | None) -> None:
        """
        A correct login ends the pair's count, when there is one: a write
        only then, and one whose failure does not refuse the login.
        """
        if failures is None:
            return
        self._counted.pop((name, client), None)
        try:
            await self._store.run(q.clear_failures, name, client)
        except DatabaseUnavailable as e:
            log.info("Could not clear the failed logins of {account!r} from {client}: "
                     "{reason}", account=name, client=client, reason=e.reason)

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
        now = self.clock.seconds()

        def change(conn: Connection) -> None:
            q.set_admin_password(conn, name, hashed, now)
            q.delete_sessions_of(conn, name, keep=keep_session)

        await self._store.run(change)

    # Admin accounts (Admin → Admin accounts) --------------------------------

    async def accounts(self) -> list[q.AdminRow]:
        return await self._store.read(q.list_admins)

    async def account(self, name: str) -> q.AdminRow | None:
        return await self._store.read(q.get_admin, name)

    async def _temporary_password(self) -> tuple[str, str]:
        password = secrets.token_urlsafe(15)
        with self._reserved():
            return password, await self._check(self._hasher.hash, password)

    async def create_account(self, name: str, role: str) -> str:
        """
        Make an admin account with a random password it must change at its
        first login.

        @return: that password, to give to its owner (shown once).
        @raise AccountRefused: the name is taken or not allowed.
        """
        if not ADMIN_NAME.fullmatch(name):
            raise AccountRefused("A name is 1 to 64 letters, digits, '.', '_', '-' or '@'.")
        password, hashed = await self._temporary_password()
        if not await self._store.run(q.ensure_admin, name, hashed, role):
            raise AccountRefused(f"There is an admin account {name} already.")
        return password

    async def reset_account_password(self, name: str) -> str:
        """
        Give account C{name} a random password it must change at its next
        login; its sessions end.

        @return: that password (shown once).
        """
        password, hashed = await self._temporary_password()
        if not await self._store.run(q.reset_password, name, hashed):
            raise AccountRefused(f"There is no admin account {name}.")
        self._verified.clear()
        return password

    async def set_role(self, name: str, role: str) -> None:
        """
        @raise AccountRefused: no such account, or it is the last
            administrator.
        """
        def change(conn: Connection) -> None:
            if role != q.ADMINISTRATOR:
                _not_the_last_administrator(conn, name, "make another one first")
            elif q.get_admin(conn, name) is None:
                raise AccountRefused(f"There is no admin account {name}.")
            q.set_role(conn, name, role)

        await self._store.run(change)
        self._verified.clear()

    async def delete_account(self, name: str) -> None:
        """
        Delete account C{name} with its sessions and API tokens.

        @raise AccountRefused: no such account, or it is the last
            administrator.
        """
        def remove(conn: Connection) -> None:
            _not_the_last_administrator(conn, name, "it cannot be deleted")
            q.delete_admin(conn, name)

        await self._store.run(remove)
        self._verified.clear()

    # The second factor (TOTP) ------------------------------------------------------

    def pending_login(self, name: str) -> str:
        """
        A token saying that C{name} gave the right password a moment ago
        and has a code to give: for a cookie, valid L{PENDING_LOGIN}
        seconds.
        """
        expires = int(self.clock.seconds() + PENDING_LOGIN)
        payload = f"{expires}:{name}"
        mac = hmac.new(self._cache_key, payload.encode(), hashlib.sha256).hexdigest()
        return f"{payload}:{mac}"

    def pending_name(self, token: str) -> str | None:
        """
        The account a L{pending_login} token is for, while it is valid.
        """
        payload, _, mac = token.rpartition(":")
        expected = hmac.new(self._cache_key, payload.encode(), hashlib.sha256).hexdigest()
        expires, _, name = payload.partition(":")
        if not hmac.compare_digest(expected, mac) or not expires.isdigit() or \
                int(expires) < self.clock.seconds():
            return None
        return name

    def seal_totp(self, name: str, secret: bytes) -> bytes:
        return totp.seal_secret(self._totp_key, f"admin:{name}", secret)

    def unseal_totp(self, name: str, sealed: bytes) -> bytes:
        """
        @raise totp.SealedSecretError: not sealed for C{name} here.
        """
        return totp.unseal_secret(self._totp_key, f"admin:{name}", sealed)

    async def set_totp(self, name: str, secret: bytes | None, used_step: int | None = None
                       ) -> None:
        """
        Give account C{name} a second factor (C{None}: remove it); the
        step of the code that proved it was copied cannot log in.
        """
        sealed = None if secret is None else self.seal_totp(name, secret)

        def write(conn: Connection) -> None:
            if not q.set_totp_secret(conn, name, sealed):
                raise AccountRefused(f"There is no admin account {name}.")
            if used_step is not None:
                q.use_totp_step(conn, name, used_step)

        await self._store.run(write)

    async def check_code(self, name: str, code: str, client: str) -> q.AdminRow:
        """
        Check the second factor's code of account C{name}, counted with its
        failed logins from C{client}; each code works once.

        @raise LoginRefused: a wrong or spent code, or locked out.
        """
        now = self.clock.seconds()

        def load(conn: Connection) -> tuple[q.AdminRow | None, bytes | None,
                                            q.FailureRow | None]:
            return (q.get_admin(conn, name), q.totp_secret(conn, name),
                    q.get_failures(conn, name, client))

        admin, sealed, stored = await self._store.read(load)
        failures = self._merged(stored, self._counted.get((name, client)), now)
        if failures is not None and failures.locked_until:
            raise LoginRefused(_locked_message(failures.locked_until - now))
        step = None
        if admin is not None and sealed is not None:
            try:
                step = totp.matching_step(self.unseal_totp(name, sealed), code, now)
            except totp.SealedSecretError:
                step = None
        if step is not None and admin is not None and \
                await self._store.run(q.use_totp_step, name, step):
            await self._forget_failures(name, client, failures)
            return admin
        recorded = await self._record_failure(name, client, now, stored)
        message = "That code is not right, or was used already."
        if recorded.locked_until:
            message += " " + _locked_message(self._duration)
        raise LoginRefused(message)

    # API tokens -----------------------------------------------------------------

    async def create_token(self, name: str, label: str) -> NewToken:
        """
        A new API token for account C{name}: C{cdt_<id>_<secret>}; only
        its hash is kept, so this is the one time it is seen.
        """
        token_id = secrets.token_hex(8)
        made = NewToken(token_id, f"cdt_{token_id}_{secrets.token_urlsafe(32)}",
                        label.strip()[:100] or "API token")
        await self._store.run(q.add_token, q.TokenRow(
            made.id, name, _hash_token(made.token), made.label, self.clock.seconds(), None))
        return made

    async def tokens(self, name: str) -> list[q.TokenRow]:
        return await self._store.read(q.tokens_of, name)

    async def revoke_token(self, name: str, token_id: str) -> bool:
        revoked: bool = await self._store.run(q.delete_token, name, token_id)
        return revoked

    async def check_token(self, token: str) -> q.AdminRow:
        """
        The account an API token belongs to.

        @raise LoginRefused: not a token, or revoked.
        """
        match = API_TOKEN.fullmatch(token)
        if match is None:
            raise LoginRefused("That is not an API token of this appliance.")

        def load(conn: Connection) -> tuple[q.TokenRow | None, q.AdminRow | None]:
            row = q.get_token(conn, match.group(1))
            return row, None if row is None else q.get_admin(conn, row.admin_name)

        row, admin = await self._store.read(load)
        # Compared in constant time even when there is no such token.
        expected = row.token_hash if row is not None else "0" * 64
        if not hmac.compare_digest(expected, _hash_token(token)) or admin is None:
            raise LoginRefused("The API token is wrong or was revoked.")
        now = self.clock.seconds()
        assert row is not None
        if row.last_used is None or now - row.last_used >= SESSION_TOUCH_INTERVAL:
            await self._bookkeeping("note an API token's use", q.token_used, row.id, now)
        return admin

    async def open_session(self, name: str) -> str:
        """
        Start a session for admin C{name}.

        @return: the session token for the cookie.
        """
        token = secrets.token_urlsafe(32)
        await self._store.run(
            q.create_session, _hash_token(token), name, secrets.token_urlsafe(32),
            self.clock.seconds(),
        )
        return token

    async def session(self, token: str) -> AdminSession | None:
        """
        The session for C{token} if it is valid, its idle time restarted
        (at most every L{SESSION_TOUCH_INTERVAL}); an expired session is
        deleted.  Only reads, but for those writes, which may fail (the
        disk full) without refusing the session.
        """
        if not token or len(token) > 128:
            return None
        token_hash = _hash_token(token)
        now = self.clock.seconds()

        def load(conn: Connection) -> tuple[q.SessionRow | None, q.AdminRow | None]:
            row = q.get_session(conn, token_hash)
            return row, None if row is None else q.get_admin(conn, row.admin_name)

        row, admin = await self._store.read(load)
        if row is None:
            return None
        if now - row.last_seen > self.idle_timeout or now - row.created > self.max_age:
            await self._bookkeeping("delete an expired admin session", q.delete_session,
                                    token_hash)
            return None
        if admin is None:
            return None
        if now - row.last_seen >= SESSION_TOUCH_INTERVAL:
            await self._bookkeeping("restart an admin session's idle time", q.touch_session,
                                    token_hash, now)
        return AdminSession(admin.name, row.csrf_token, token_hash, admin.must_change_password,
                            admin.role)

    async def _bookkeeping(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        try:
            await self._store.run(fn, *args)
        except DatabaseUnavailable as e:
            log.info("Could not {what}: {reason}", what=what, reason=e.reason)

    async def close_session(self, token_hash: str) -> None:
        await self._store.run(q.delete_session, token_hash)

    async def expire_sessions(self) -> int:
        """
        Delete sessions past their timeouts, and failed-login records that
        no longer count; for the periodic sweep.
        """
        now = self.clock.seconds()

        def sweep(conn: Connection) -> int:
            q.delete_stale_failures(conn, now - self._window, now)
            return q.delete_expired_sessions(conn, now - self.idle_timeout, now - self.max_age)

        return await self._store.run(sweep)


def _not_the_last_administrator(conn: Connection, name: str, why: str) -> None:
    """
    @raise AccountRefused: there is no account C{name}, or it is the last
        administrator.
    """
    account = q.get_admin(conn, name)
    if account is None:
        raise AccountRefused(f"There is no admin account {name}.")
    if account.role == q.ADMINISTRATOR and q.administrators(conn) <= 1:
        raise AccountRefused(f"This is the last administrator: {why}.")


def admin_totp_key(kek: bytes) -> bytes:
    """
    The key admin accounts' second-factor secrets are sealed with, derived
    from the data dir's key-encryption key (one key, one purpose).
    """
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"cipherd admin totp v1").derive(kek)


def csrf_matches(expected: str, submitted: str | None) -> bool:
    """
    Constant-time comparison of a submitted CSRF token.
    """
    if not submitted:
        return False
    return hmac.compare_digest(expected.encode(), submitted.encode())
