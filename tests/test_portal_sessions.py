"""
Portal sessions, login throttling and the TOTP second factor, with
C{task.Clock}: timeouts to the second, lockout and its end, throttling of
parallel guesses, wrong codes counted, RFC 6238's test vectors, sealed
secrets bound to their account.
"""

from __future__ import annotations

import os

import pytest
from twisted.internet.task import Clock

from cipherd.testing import SynchronousRunner, cheap_hasher, migrated_store, result_of
from cipherd.webmail import totp
from cipherd.webmail.accounts import Accounts
from cipherd.webmail.sessions import (
    LOCKED,
    WRONG,
    LoginRefused,
    PortalSessions,
    hash_token,
)

ADDRESS = "dave@partner.example"
PASSWORD = "correct horse battery staple"
CLIENT = "192.0.2.7"


@pytest.fixture
def sessions(clock: Clock) -> PortalSessions:
    store = migrated_store()
    accounts = Accounts(store, clock, SynchronousRunner(), cheap_hasher())
    account, _ = result_of(accounts.invite(ADDRESS))
    assert result_of(accounts.set_password(account, PASSWORD))
    return PortalSessions(store, clock, accounts.verify_password)


def refusal(sessions: PortalSessions, password: str, client: str = CLIENT,
            address: str = ADDRESS) -> LoginRefused:
    with pytest.raises(LoginRefused) as refused:
        result_of(sessions.check_password(address, password, client))
    return refused.value


def test_a_session_ends_after_fifteen_idle_minutes_to_the_second(
        clock: Clock, sessions: PortalSessions) -> None:
    token = result_of(sessions.open(ADDRESS, second_factor=True))
    clock.advance(15 * 60)
    found = result_of(sessions.get(token))
    assert found is not None and found.address == ADDRESS and found.second_factor
    assert found.token_hash == hash_token(token) and token not in found.token_hash
    clock.advance(15 * 60)  # exactly the idle timeout since the last request
    assert result_of(sessions.get(token)) is not None
    clock.advance(15 * 60 + 1)
    assert result_of(sessions.get(token)) is None
    clock.advance(-(15 * 60 + 1))  # deleted, not merely refused
    assert result_of(sessions.get(token)) is None


def test_a_session_ends_eight_hours_after_login_however_busy(clock: Clock,
                                                             sessions: PortalSessions) -> None:
    token = result_of(sessions.open(ADDRESS, second_factor=True))
    for _ in range(8 * 6):
        clock.advance(600)
        assert result_of(sessions.get(token)) is not None
    clock.advance(1)
    assert result_of(sessions.get(token)) is None


def test_sessions_are_swept_and_others_closed(clock: Clock, sessions: PortalSessions) -> None:
    old = result_of(sessions.open(ADDRESS, second_factor=True))
    clock.advance(16 * 60)
    kept = result_of(sessions.open(ADDRESS, second_factor=True))
    other = result_of(sessions.open(ADDRESS, second_factor=False))
    assert result_of(sessions.expire()) == 1
    result_of(sessions.close_others(ADDRESS, keep=hash_token(kept)))
    assert result_of(sessions.get(other)) is None and result_of(sessions.get(old)) is None
    assert result_of(sessions.get(kept)) is not None
    assert result_of(sessions.get("x" * 500)) is None and result_of(sessions.get("")) is None


def test_five_failures_lock_the_address_for_that_client_only(clock: Clock,
                                                             sessions: PortalSessions) -> None:
    for _ in range(4):
        assert refusal(sessions, "wrong").reason == WRONG
    fifth = refusal(sessions, "wrong")
    assert (fifth.reason, fifth.minutes) == (LOCKED, 15)
    # The right password is not even checked while locked.
    assert refusal(sessions, PASSWORD).reason == LOCKED
    # Another client, and another address from this client, are not locked.
    assert result_of(sessions.check_password(ADDRESS, PASSWORD, "198.51.100.1"))
    assert refusal(sessions, "x", address="erin@partner.example").reason == WRONG
    clock.advance(15 * 60 - 1)
    assert refusal(sessions, PASSWORD).minutes == 1
    clock.advance(1)
    assert result_of(sessions.check_password(ADDRESS, PASSWORD, CLIENT)).address == ADDRESS
    # A success forgets the failures.
    for _ in range(4):
        refusal(sessions, "wrong")
    assert refusal(sessions, "wrong").reason == LOCKED


def test_failures_outside_the_window_do_not_add_up(clock: Clock,
                                                   sessions: PortalSessions) -> None:
    for _ in range(4):
        refusal(sessions, "wrong")
    clock.advance(15 * 60 + 1)
    for _ in range(4):
        assert refusal(sessions, "wrong").reason == WRONG


def test_parallel_guesses_past_the_threshold_are_refused_unchecked(clock: Clock) -> None:
    """
    Attempts are counted before the password is checked: guesses under
    way at once each take a place, and those past the threshold are
    refused unchecked -- as locked: the fifth attempt's count stored the
    lock before its check.
    """
    from twisted.internet.defer import Deferred

    store = migrated_store()
    waiting: list[Deferred[None]] = []

    async def slow_check(address: str, password: str) -> None:
        gate: Deferred[None] = Deferred()
        waiting.append(gate)
        await gate
        return None

    sessions = PortalSessions(store, clock, slow_check)
    outcomes: list[object] = []
    for _ in range(7):
        Deferred.fromCoroutine(sessions.check_password(ADDRESS, "guess", CLIENT)).addErrback(
            lambda f: outcomes.append(f.value.reason))
    assert len(waiting) == 5 and outcomes == [LOCKED, LOCKED]
    for gate in waiting:
        gate.callback(None)
    # Each checked guess, failing, finds the pair at the threshold and
    # locks it (again, from now).
    assert outcomes[2:] == [LOCKED] * 5


def test_wrong_codes_count_like_wrong_passwords(clock: Clock, sessions: PortalSessions) -> None:
    token = result_of(sessions.open(ADDRESS, second_factor=False))
    session = result_of(sessions.get(token))
    assert session is not None and not session.second_factor
    for _ in range(4):
        with pytest.raises(LoginRefused):
            result_of(sessions.check_code(session, False, CLIENT))
    with pytest.raises(LoginRefused) as locked:
        result_of(sessions.check_code(session, False, CLIENT))
    assert (locked.value.reason, locked.value.minutes) == (LOCKED, 15)
    with pytest.raises(LoginRefused) as still:
        result_of(sessions.check_code(session, True, CLIENT))  # right, but locked
    assert still.value.reason == LOCKED
    clock.advance(15 * 60)
    result_of(sessions.check_code(session, True, CLIENT))
    found = result_of(sessions.get(token))
    assert found is not None and found.second_factor


def test_a_right_password_gives_no_fresh_code_guesses(clock: Clock,
                                                      sessions: PortalSessions) -> None:
    # Whoever has the password must not get four more guesses at the code
    # each time they log in again, from one client or from many.
    session = result_of(sessions.get(result_of(sessions.open(ADDRESS, second_factor=False))))
    assert session is not None
    for client in ("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"):
        result_of(sessions.check_password(ADDRESS, PASSWORD, client))
        with pytest.raises(LoginRefused):
            result_of(sessions.check_code(session, False, client))
    result_of(sessions.check_password(ADDRESS, PASSWORD, CLIENT))
    with pytest.raises(LoginRefused) as locked:
        result_of(sessions.check_code(session, False, CLIENT))
    assert locked.value.reason == LOCKED
    with pytest.raises(LoginRefused):
        result_of(sessions.check_code(session, True, "192.0.2.99"))  # locked everywhere


# TOTP ---------------------------------------------------------------------------------

RFC_SECRET = b"12345678901234567890"


@pytest.mark.parametrize("now, code", [
    (59, "94287082"), (1111111109, "07081804"), (1111111111, "14050471"),
    (1234567890, "89005924"), (2000000000, "69279037"), (20000000000, "65353130"),
])
def test_rfc_6238_test_vectors(now: int, code: str) -> None:
    # RFC 6238 Appendix B, SHA-1, eight digits.
    assert totp.totp(RFC_SECRET, now, digits=8) == code


def test_a_code_is_accepted_one_step_either_side(clock: Clock) -> None:
    secret = totp.new_secret()
    now = clock.seconds()
    code = totp.totp(secret, now)
    assert totp.verify(secret, code, now)
    assert totp.verify(secret, code[:3] + " " + code[3:], now + totp.STEP)
    assert totp.verify(secret, code, now - totp.STEP)
    assert not totp.verify(secret, code, now + 2 * totp.STEP + 30)
    assert not totp.verify(secret, "12345", now) and not totp.verify(secret, "abcdef", now)


def test_sealed_secrets_open_only_for_their_account() -> None:
    key = os.urandom(32)
    secret = totp.new_secret()
    sealed = totp.seal_secret(key, ADDRESS, secret)
    assert secret not in sealed and totp.unseal_secret(key, ADDRESS, sealed) == secret
    with pytest.raises(totp.SealedSecretError):
        totp.unseal_secret(key, "erin@partner.example", sealed)
    with pytest.raises(totp.SealedSecretError):
        totp.unseal_secret(os.urandom(32), ADDRESS, sealed)


def test_the_otpauth_uri_and_the_typed_key() -> None:
    secret = bytes(range(20))
    assert totp.otpauth_uri(secret, ADDRESS, "Secure webmail") == (
        "otpauth://totp/Secure%20webmail:dave@partner.example?secret="
        "AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQT&issuer=Secure%20webmail&algorithm=SHA1&digits=6"
        "&period=30")
    assert totp.secret_text(secret) == "AAAQ EAYE AUDA OCAJ BIFQ YDIO B4IB CEQT"


def test_an_ipv6_host_cannot_spread_its_guesses_over_its_slash_64(
        clock: Clock, sessions: PortalSessions) -> None:
    for i in range(5):
        refusal(sessions, "wrong", client=f"2001:db8:0:1::{i + 1}")
    assert refusal(sessions, PASSWORD, client="2001:db8:0:1::99").reason == LOCKED
    # Another network is another client.
    assert result_of(sessions.check_password(ADDRESS, PASSWORD, "2001:db8:0:2::1"))
