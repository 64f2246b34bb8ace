"""
What the certificate store keeps in memory is always exactly what a fresh
look-up and trust check would say (issue 13): across every validity
boundary of the certificates a path uses (task.Clock, to the second and
around it), after CTL, CRL and certificate changes made here, and within a
poll interval after those made by another node.  And between changes a
message costs no database query, no parse, no check and no unsealing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from cipherd.pki.certs import thumbprint
from cipherd.pki.certstore import POLL_INTERVAL, CertificateStore
from cipherd.pki.trust import CTLStatus, Purpose, TrustContext, check, steady_interval
from cipherd.store import Store, create_engine_for_url
from cipherd.store.certificates import ROOTS
from cipherd.store.migrations import migrate
from cipherd.testing import SynchronousRunner, result_of
from tests.pki_factory import (
    EMAIL_EKU,
    END,
    SMIME_USAGE,
    START,
    make_ca,
    make_crl,
    make_user,
    new_rsa_key,
)

DAY = timedelta(days=1)
# The validity periods (days after START) whose ends the tests cross.
CA_ENDS = 120
ALICE_STARTS, ALICE_ENDS = 30, 300
BOB_ENDS = 60
ADDRESSES = ("alice@example.com", "bob@example.com")
PURPOSES = (Purpose.ENCRYPTION, Purpose.SIGNING, Purpose.ANY)


class CountingRunner(SynchronousRunner):
    """
    Runs database work at once and counts the transactions.
    """

    calls = 0

    def run(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        self.calls += 1
        return super().run(fn, *args)


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    root = make_ca("Cache Root", key=new_rsa_key())
    ca = make_ca("Cache CA", issuer=root, not_after=START + CA_ENDS * DAY, key=new_rsa_key())
    return {
        "root": root, "ca": ca,
        "alice": make_user("alice@example.com", ca, key_usage=SMIME_USAGE, eku=EMAIL_EKU,
                           not_before=START + ALICE_STARTS * DAY,
                           not_after=START + ALICE_ENDS * DAY, key=new_rsa_key()),
        "alice_too": make_user("alice@example.com", ca, key=new_rsa_key()),
        "bob": make_user("bob@example.com", ca, not_after=START + BOB_ENDS * DAY,
                         key=new_rsa_key()),
    }


class World:
    def __init__(self, pki: dict[str, Any]) -> None:
        self.pki = pki
        self.clock = Clock()
        self.clock.advance((START + 10 * DAY).timestamp())
        self.kek = os.urandom(32)
        engine = create_engine_for_url("sqlite://")
        with engine.begin() as conn:
            migrate(conn)
        self.runner = CountingRunner()
        self.database = Store(engine, self.runner)
        self.here = CertificateStore(self.database, self.clock, self.kek, SynchronousRunner())
        # Another node sharing the database (and its key-encryption key).
        self.there = CertificateStore(self.database, self.clock, self.kek,
                                      SynchronousRunner())
        result_of(self.here.import_data(pki["root"].pem(), store=ROOTS))
        result_of(self.here.import_data(pki["ca"].pem()))
        for name in ("alice", "bob"):
            result_of(self.here.import_data(pki[name].pkcs12(b"pw"), password="pw"))

    def at(self, moment: datetime) -> None:
        assert moment.timestamp() >= self.clock.seconds()
        self.clock.advance(moment.timestamp() - self.clock.seconds())

    def fresh(self) -> CertificateStore:
        """
        A store that has read nothing yet: its answers are fresh ones.
        """
        return CertificateStore(self.database, self.clock, self.kek, SynchronousRunner())

    def answers(self, store: CertificateStore) -> dict[str, Any]:
        """
        Everything processing and the engine ask, as C{store} answers now.
        """
        pki, found = self.pki, {}
        for name in ("root", "ca", "alice", "alice_too", "bob"):
            for purpose in PURPOSES:
                found[f"check {name} {purpose.value}"] = result_of(
                    store.check(pki[name].cert, purpose))
            # A path through a certificate the message carries.
            found[f"check {name} with the CA"] = result_of(
                store.check(pki[name].cert, Purpose.SIGNING, [pki["ca"].cert]))
        for address in ADDRESSES:
            found[f"encryption {address}"] = result_of(store.encryption_certificates(address))
            found[f"signing {address}"] = _identity(result_of(store.signing_identity(address)))
            found[f"decryption {address}"] = _identity(
                result_of(store.decryption_identity(address)))
        found["keys"] = sorted(thumbprint(c) for c, _ in result_of(store.decryption_keys()))
        found["ctl"] = result_of(store.ctl())
        return found

    def assert_exact(self) -> None:
        """
        The kept answers here are the fresh ones, and the fresh verdicts
        those of L{cipherd.pki.trust.check} itself.
        """
        fresh = self.fresh()
        expected = self.answers(fresh)
        assert self.answers(self.here) == expected
        context = result_of(fresh.trust_context())
        now = fresh.now()
        for purpose in PURPOSES:
            assert expected[f"check alice {purpose.value}"] == check(
                self.pki["alice"].cert, purpose, now, context)


def _identity(identity: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    """
    An identity to compare: the certificate, the key's numbers, the chain.
    """
    if identity is None:
        return None
    return (identity[0], identity[1].private_numbers(), *identity[2:])


@pytest.fixture
def world(pki: dict[str, Any]) -> World:
    return World(pki)


def _around(day: int) -> list[datetime]:
    edge = START + day * DAY
    return [edge - timedelta(seconds=1), edge - timedelta(microseconds=500_000), edge,
            edge + timedelta(microseconds=500_000), edge + timedelta(seconds=1)]


def test_kept_answers_are_fresh_ones_across_every_validity_boundary(world: World) -> None:
    """
    alice becomes valid (notBefore), bob expires, then the CA above alice
    expires (a boundary of her path, not of her certificate), then alice
    herself: each to the second, and half a second either side of it.
    """
    world.assert_exact()
    verdicts = []
    for day in (ALICE_STARTS, BOB_ENDS, CA_ENDS, ALICE_ENDS):
        for moment in _around(day):
            world.at(moment)
            world.assert_exact()
            verdicts.append(result_of(world.here.check(world.pki["alice"].cert,
                                                       Purpose.ENCRYPTION)).reason)
    assert verdicts[:3] == ["The certificate is not valid before 2026-01-31 00:00:00 UTC."] * 2 \
        + ["The certificate chains to the trusted root CN=Cache Root."]
    assert "The CA certificate CN=Cache CA expired on 2026-05-01 00:00:00 UTC." in verdicts
    assert verdicts[-1] == "The certificate expired on 2026-10-28 00:00:00 UTC."


def test_a_message_costs_no_query_parse_check_or_unsealing_while_nothing_changes(
        world: World) -> None:
    world.at(START + 40 * DAY)
    here, alice = world.here, world.pki["alice"].cert
    first = (result_of(here.encryption_certificates("alice@example.com")),
             result_of(here.signing_identity("alice@example.com")),
             result_of(here.check(alice, Purpose.SIGNING)),
             result_of(here.decryption_keys()))
    before = world.runner.calls
    for _ in range(50):
        world.clock.advance(POLL_INTERVAL / 100)
        again = (result_of(here.encryption_certificates("alice@example.com")),
                 result_of(here.signing_identity("alice@example.com")),
                 result_of(here.check(alice, Purpose.SIGNING)),
                 result_of(here.decryption_keys()))
        # The very objects kept: not parsed, checked or unsealed again.
        assert again[0][0] is first[0][0]
        assert again[1] is not None and first[1] is not None
        assert again[1][1] is first[1][1]
        assert again[2] is first[2]
        assert all(a is b for (_, a), (_, b) in zip(again[3], first[3], strict=True))
    assert world.runner.calls == before
    # Past the poll interval: one question, whether anything changed.
    world.clock.advance(POLL_INTERVAL)
    result_of(here.encryption_certificates("alice@example.com"))
    result_of(here.signing_identity("alice@example.com"))
    assert world.runner.calls == before + 1


def test_changes_made_here_are_seen_by_the_next_question(world: World) -> None:
    pki, here = world.pki, world.here
    world.at(START + 40 * DAY)
    world.assert_exact()
    alice, ca = thumbprint(pki["alice"].cert), thumbprint(pki["ca"].cert)
    result_of(here.set_ctl(alice, CTLStatus.BLACKLISTED))
    world.assert_exact()
    assert result_of(here.encryption_certificates("alice@example.com")) == []
    result_of(here.set_ctl(ca, CTLStatus.BLACKLISTED))
    world.assert_exact()
    result_of(here.remove_ctl(alice))
    result_of(here.remove_ctl(ca))
    world.assert_exact()
    assert result_of(here.encryption_certificates("alice@example.com")) == [pki["alice"].cert]
    # A new certificate for the address, then its key.
    result_of(here.import_data(pki["alice_too"].pem()))
    world.assert_exact()
    assert len(result_of(here.encryption_certificates("alice@example.com"))) == 2
    result_of(here.import_data(pki["alice_too"].pkcs12(b"pw"), password="pw"))
    world.assert_exact()
    # A CRL revoking alice, then its removal.
    crl = make_crl(pki["ca"], [(pki["alice"].cert, START)])
    result_of(here.import_data(crl.public_bytes(serialization.Encoding.DER)))
    world.assert_exact()
    assert "revoked" in result_of(here.check(pki["alice"].cert, Purpose.SIGNING)).reason
    result_of(here.delete_crl(result_of(here.crls())[0].issuer_hash))
    world.assert_exact()
    # The CA deleted: nothing chains any more.
    result_of(here.delete(ca))
    world.assert_exact()
    assert result_of(here.encryption_certificates("alice@example.com")) == []


def test_another_nodes_changes_are_seen_within_a_poll_interval(world: World) -> None:
    pki, there = world.pki, world.there
    world.at(START + 40 * DAY)
    world.assert_exact()
    changes: list[Callable[[], Any]] = [
        lambda: there.set_ctl(thumbprint(pki["ca"].cert), CTLStatus.BLACKLISTED),
        lambda: there.remove_ctl(thumbprint(pki["ca"].cert)),
        lambda: there.import_data(pki["alice_too"].pem()),
        lambda: there.import_data(pki["alice_too"].pkcs12(b"pw"), password="pw"),
        lambda: there.import_data(make_crl(pki["ca"], [(pki["bob"].cert, START)])
                                  .public_bytes(serialization.Encoding.DER)),
        lambda: there.delete(thumbprint(pki["alice"].cert)),
        lambda: there.delete(thumbprint(pki["root"].cert), ROOTS),
    ]
    for change in changes:
        result_of(change())
        world.clock.advance(POLL_INTERVAL)
        world.assert_exact()
    assert result_of(world.here.encryption_certificates("alice@example.com")) == []


def test_the_steady_interval_bounds_a_verdict_exactly(pki: dict[str, Any]) -> None:
    """
    At either end of the span C{steady_interval} gives, C{check} answers
    as it does inside; one instant past its end (here the CA's notAfter,
    which alice's own period does not show) it answers otherwise.
    """
    context = TrustContext(roots=[pki["root"].cert], intermediates=[pki["ca"].cert])
    alice = pki["alice"].cert
    now = START + 50 * DAY
    since, until = steady_interval(alice, now, context)
    assert since == START + ALICE_STARTS * DAY
    assert until == START + CA_ENDS * DAY + timedelta(microseconds=1)
    inside = check(alice, Purpose.ENCRYPTION, now, context)
    assert inside.valid
    assert check(alice, Purpose.ENCRYPTION, since, context) == inside
    assert check(alice, Purpose.ENCRYPTION, until - timedelta(microseconds=1),
                 context) == inside
    assert not check(alice, Purpose.ENCRYPTION, until, context).valid
    assert not check(alice, Purpose.ENCRYPTION, since - timedelta(microseconds=1),
                     context).valid
    # Past every boundary: steady for ever after.
    assert steady_interval(alice, END + DAY, context) == (END + timedelta(microseconds=1),
                                                          None)
    # A certificate with no issuer in the context: only its own period.
    lone = steady_interval(alice, now, TrustContext())
    assert lone == (START + ALICE_STARTS * DAY,
                    START + ALICE_ENDS * DAY + timedelta(microseconds=1))


def test_a_certificate_the_message_carries_is_part_of_what_is_kept(
        world: World, pki: dict[str, Any]) -> None:
    """
    A verdict made with certificates from a message is kept under them:
    the same certificate without them (or with others) is checked anew.
    """
    world.at(START + 40 * DAY)
    other = make_ca("Cache CA", key=new_rsa_key())  # same name, another key
    bob = pki["bob"].cert
    result_of(world.here.delete(thumbprint(pki["ca"].cert)))
    for _ in range(2):
        assert not result_of(world.here.check(bob, Purpose.SIGNING)).valid
        assert result_of(world.here.check(bob, Purpose.SIGNING, [pki["ca"].cert])).valid
        assert not result_of(world.here.check(bob, Purpose.SIGNING, [other.cert])).valid
        assert result_of(world.here.check(bob, Purpose.SIGNING,
                                          [other.cert, pki["ca"].cert])).valid
