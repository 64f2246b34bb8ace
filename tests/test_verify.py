"""
Recipient address verification (reject unverified recipient): what is
remembered and for how long, by the injected clock; one probe for many
askers; the server's replies in Postfix's words; the probe through the
queue runner's routing to a real SMTP conversation in memory.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from cipherd.core.envelope import Outcome
from cipherd.smtp.server import ReceivePolicy, SMTPFactory
from cipherd.smtp.verify import (
    NEGATIVE_TTL,
    POSITIVE_TTL,
    UNKNOWN_TTL,
    WAIT,
    AddressVerifier,
    Verdict,
)
from cipherd.testing import result_of
from tests.test_queue_runner import World
from tests.test_smtp_server import HOST, Session, codes

SAID_550 = ("host mx.example.com[192.0.2.25] said: 550 5.1.1 <nobody@example.com>: "
            "Recipient address rejected: User unknown (in reply to RCPT TO command)")


class Prober:
    """
    Probes answered by hand: C{answer(address, outcome)}.
    """

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.pending: dict[str, Deferred[tuple[Outcome, str]]] = {}

    async def probe(self, address: str) -> tuple[Outcome, str]:
        self.asked.append(address)
        self.pending[address] = Deferred()
        return await self.pending[address]

    def answer(self, address: str, outcome: Outcome) -> None:
        self.pending.pop(address).callback((outcome, "mx.example.com[192.0.2.25]:25"))


DELIVERABLE = Outcome("deliverable", "2.1.5", "250 2.1.5 Ok")
BOUNCED = Outcome("bounced", "5.1.1", SAID_550)
DEFERRED = Outcome("deferred", "4.4.1", "connect to mx.example.com[192.0.2.25]:25: "
                                        "Connection refused")


def verified(verifier: AddressVerifier, address: str) -> list[Verdict]:
    found: list[Verdict] = []
    verifier.verify(address).addCallback(found.append)
    return found


@pytest.mark.parametrize("outcome, status, ttl", [
    (DELIVERABLE, "deliverable", POSITIVE_TTL),
    (BOUNCED, "undeliverable", NEGATIVE_TTL),
    (DEFERRED, "unknown", UNKNOWN_TTL),
])
def test_the_answer_is_remembered_until_it_expires(outcome: Outcome, status: str,
                                                   ttl: float) -> None:
    clock, prober = Clock(), Prober()
    verifier = AddressVerifier(prober.probe, clock)
    first = verified(verifier, "bob@example.com")
    assert first == [] and prober.asked == ["bob@example.com"]
    prober.answer("bob@example.com", outcome)
    assert first == [Verdict(status, outcome.reason)]
    clock.advance(ttl - 1)
    # The domain is not case-sensitive; the local part may be.
    assert verified(verifier, "bob@EXAMPLE.com") == first
    assert prober.asked == ["bob@example.com"]
    verified(verifier, "Bob@example.com")
    assert prober.asked == ["bob@example.com", "Bob@example.com"]
    clock.advance(1)
    assert verified(verifier, "bob@example.com") == []  # expired: asked again
    assert prober.asked[-1] == "bob@example.com"


def test_a_slow_probe_says_in_progress_and_its_answer_serves_the_retry() -> None:
    clock, prober = Clock(), Prober()
    verifier = AddressVerifier(prober.probe, clock)
    first, second = verified(verifier, "bob@example.com"), verified(verifier, "bob@example.com")
    assert prober.asked == ["bob@example.com"]  # one probe for both
    clock.advance(WAIT)
    in_progress = [Verdict("unknown", "Address verification in progress")]
    assert first == second == in_progress
    prober.answer("bob@example.com", BOUNCED)
    assert first == in_progress  # answered once
    assert verified(verifier, "bob@example.com") == [Verdict("undeliverable", SAID_550)]
    assert clock.getDelayedCalls() == []


def test_a_probe_that_fails_is_unknown_not_a_crash() -> None:
    clock = Clock()

    async def broken(address: str) -> tuple[Outcome, str]:
        raise RuntimeError("boom")

    verifier = AddressVerifier(broken, clock)
    assert verified(verifier, "bob@example.com") == [
        Verdict("unknown", "Address verification failed")]
    assert clock.getDelayedCalls() == []


def test_the_memory_is_bounded() -> None:
    clock, prober = Clock(), Prober()
    verifier = AddressVerifier(prober.probe, clock, max_entries=2)
    for name in ("a", "b", "c"):
        verified(verifier, f"{name}@example.com")
        prober.answer(f"{name}@example.com", DELIVERABLE)
    verified(verifier, "c@example.com")
    verified(verifier, "a@example.com")  # the oldest went
    assert prober.asked == ["a@example.com", "b@example.com", "c@example.com", "a@example.com"]


# The server -----------------------------------------------------------------


def session(verdicts: dict[str, Verdict], *, peer: str = "192.0.2.10",
            code: int = 450) -> tuple[Session, list[str]]:
    asked: list[str] = []

    def verify(address: str) -> Deferred[Verdict]:
        asked.append(address)
        return succeed(verdicts[address])

    policy = ReceivePolicy(HOST, relay_domains=("example.com",), verify_recipients=True,
                           unverified_reject_code=code)
    one = Session(policy, peer=peer)
    one.factory = SMTPFactory(lambda: policy, one._accept, one.clock, verify=verify)
    one.server.factory = one.factory
    one.send(b"EHLO client.example.org\r\nMAIL FROM:<a@example.org>\r\n")
    return one, asked


@pytest.mark.parametrize("code", [450, 550])
def test_recipients_known_to_bounce_are_rejected_with_the_next_hops_words(code: int) -> None:
    one, asked = session({"bob@example.com": Verdict("deliverable", "250 2.1.5 Ok"),
                          "nobody@example.com": Verdict("undeliverable", SAID_550)}, code=code)
    assert one.send(b"RCPT TO:<nobody@example.com>\r\n") == [
        f"{code} {code // 100}.1.1 <nobody@example.com>: Recipient address rejected: "
        f"undeliverable address: {SAID_550}".encode()]
    assert one.send(b"RCPT TO:<bob@example.com>\r\nDATA\r\n") == [
        b"250 2.1.5 Ok", b"354 End data with <CR><LF>.<CR><LF>"]
    one.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert one.queued[0].recipients == ["bob@example.com"]
    assert asked == ["nobody@example.com", "bob@example.com"]


def test_an_unknown_address_is_a_temporary_refusal() -> None:
    one, _ = session({"bob@example.com": Verdict("unknown",
                                                 "Address verification in progress")})
    assert one.send(b"RCPT TO:<bob@example.com>\r\n") == [
        b"450 4.1.1 <bob@example.com>: Recipient address rejected: unverified address: "
        b"Address verification in progress"]


def test_my_networks_and_foreign_domains_are_not_verified() -> None:
    one, asked = session({}, peer="127.0.0.1")
    assert codes(one.send(b"RCPT TO:<bob@example.com>\r\nRCPT TO:<x@elsewhere.test>\r\n")
                 ) == [b"250", b"250"]
    outsider, outsider_asked = session({})
    assert codes(outsider.send(b"RCPT TO:<x@elsewhere.test>\r\n")) == [b"454"]
    assert asked == outsider_asked == []


def test_the_next_hops_words_cannot_inject_a_reply_line() -> None:
    one, _ = session({"bob@example.com": Verdict(
        "undeliverable", "host h said: 550 no\r250 2.1.5 Ok\x00 (in reply to RCPT TO command)")})
    (line,) = one.send(b"RCPT TO:<bob@example.com>\r\n")
    assert line.startswith(b"450 4.1.1 ") and b"\r" not in line and b"\x00" not in line


# The probe through routing ------------------------------------------------


def test_the_probe_follows_the_mails_route_and_logs_its_answer(
        tmp_path: Path, log_lines: list[str]) -> None:
    world = World(tmp_path)
    outcome, relay = result_of(world.runner.probe("b@example.com"))
    assert (outcome, relay) == (DELIVERABLE, "relay.example.net[192.0.2.25]:25")
    refused, _ = result_of(world.runner.probe("x@elsewhere.test"))
    assert (refused.status, refused.dsn) == ("deferred", "4.7.1")
    assert world.network.queued == [] and world.queued() == []
    assert world.network.connections == [("192.0.2.25", 25)] * 2
    assert ("verify: to=<b@example.com>, relay=relay.example.net[192.0.2.25]:25, dsn=2.1.5, "
            "status=deliverable (250 2.1.5 Ok)") in log_lines


def test_addresses_handled_here_are_never_probed() -> None:
    clock, prober = Clock(), Prober()

    async def here(address: str) -> bool:
        return address == "webmail@webmail.local"

    verifier = AddressVerifier(prober.probe, clock, handled_here=here)
    assert verified(verifier, "webmail@webmail.local") == [Verdict("deliverable",
                                                                   "handled here")]
    assert prober.asked == []
    verified(verifier, "bob@example.com")
    assert prober.asked == ["bob@example.com"]
