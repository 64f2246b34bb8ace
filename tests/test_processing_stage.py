"""
Processing as a stage between two spools (issue 13): what processing made
is written with the original settled in one step, and delivered as
processed; a retry never processes again; C{kill -9} on either side of
the step leaves each result delivered exactly once; the composite sends
the relay recipient's part to the relay and the rest to the gateway.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer
from zope.interface.verify import verifyObject

from cipherd.core.envelope import Envelope, Outcome
from cipherd.mpa.composite import Composite
from cipherd.mpa.discovery import KeyDiscovery
from cipherd.mpa.gateway import Gateway
from cipherd.pki.engine import LayerOpener, SmimeEngine
from cipherd.pki.pgp import SequoiaOpenPGP
from cipherd.pki.pgpmime import PGPEngine
from cipherd.pki.pgpopen import PGPOpener
from cipherd.settings import GLOBAL, Level, scope_for
from cipherd.smtp.processing import Disposition, IMessageProcessor, Made, ProcessingResult, Results
from cipherd.smtp.queue import MIN_BACKOFF, PROCESSED, ISubmission
from cipherd.smtp.server import ReceivePolicy
from cipherd.smtp.spool import ISpool
from cipherd.testing import SynchronousRunner, result_of
from cipherd.testing.pgp import MemoryKeyDirectory
from cipherd.testing.sms import MemorySMSGateway
from cipherd.webmail.pdf import PDFMaker
from tests.crash_at_commit import NOTICE, TUNNEL, Splitting
from tests.crash_at_commit import PROCESSED as PROCESSED_CONTENT
from tests.test_gateway import RECEIVED, SENT, pki  # noqa: F401
from tests.test_gateway import World as GatewayWorld
from tests.test_queue_runner import World

ROOT = Path(__file__).resolve().parents[1]
RECIPIENTS = ("a@example.com", "b@example.com", "c@example.com")
SENDER = "s@example.com"


def delivered(world: World) -> Counter[tuple[str, tuple[str, ...], bytes]]:
    # Without the Received field the hop put on top.
    return Counter((r.sender, tuple(r.recipients), r.content[r.content.index(b"Subject:"):])
                   for r in world.network.queued)


def expected() -> Counter[tuple[str, tuple[str, ...], bytes]]:
    return Counter({(SENDER, ("a@example.com",), PROCESSED_CONTENT): 1,
                    ("tunnel@example.org", ("t@example.com",), TUNNEL): 1,
                    ("", (SENDER,), NOTICE): 1})


def test_results_are_queued_with_the_original_settled_and_delivered_as_processed(
        tmp_path: Path, log_lines: list[str]) -> None:
    processor = Splitting()
    world = World(tmp_path, processor=processor)
    assert verifyObject(ISpool, world.spool) and verifyObject(IMessageProcessor, processor)
    assert verifyObject(ISubmission, world.runner)
    queue_id = world.enqueue(SENDER, RECIPIENTS)
    world.scan()
    world.scan()
    assert processor.calls == 1 and world.queued() == []
    assert delivered(world) == expected()
    # The processed original kept the queue id: its delivery is logged under
    # it; the tunnel's recipient is logged as handed on, the refused one once.
    assert any(line.startswith(f"{queue_id}: to=<a@example.com>, relay=gw")
               or line.startswith(f"{queue_id}: to=<a@example.com>, relay=relay")
               for line in log_lines), log_lines
    (tunnel,) = [line for line in log_lines if "to=<b@example.com>" in line]
    assert tunnel.startswith(f"{queue_id}: to=<b@example.com>, relay=webmail, ")
    assert "status=sent (queued as " in tunnel and ": webmail tunnel message 1)" in tunnel
    (refused,) = [line for line in log_lines if "to=<c@example.com>" in line]
    assert "status=bounced (not encrypted)" in refused


def test_a_deferred_result_is_retried_without_processing_again(tmp_path: Path) -> None:
    processor = Splitting()
    world = World(tmp_path, processor=processor)
    world.enqueue(SENDER, RECIPIENTS)
    world.network.up = False
    world.scan()
    deferred = world.spool.messages()
    assert len(deferred) == 3 and {m.state for m in deferred} == {"deferred"}
    assert all(m.envelope.extra.get(PROCESSED) for m in deferred)
    world.network.up = True
    world.clock.advance(3600)
    world.scan()
    assert processor.calls == 1 and world.queued() == []
    assert delivered(world) == expected()


class CountingEngine(SmimeEngine):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.protected = 0

    async def protect(self, *args: Any, **kwargs: Any) -> bytes:
        self.protected += 1
        return await super().protect(*args, **kwargs)


def test_a_deferred_smime_message_is_not_signed_and_encrypted_again(
        tmp_path: Path, pki: dict[str, Any], log_lines: list[str]) -> None:  # noqa: F811
    world_of_pki = GatewayWorld(pki)
    engine = CountingEngine(world_of_pki.certificates, world_of_pki.engine._crypto)
    gateway = Gateway(world_of_pki.settings, world_of_pki.certificates, engine,
                      world_of_pki.keyring, PGPEngine(SequoiaOpenPGP(), SynchronousRunner()),
                      PDFMaker(SynchronousRunner()), MemorySMSGateway(),
                      LayerOpener(engine, PGPOpener(world_of_pki.keyring, SequoiaOpenPGP(),
                                                    SynchronousRunner())),
                      KeyDiscovery(world_of_pki.keyring, MemoryKeyDirectory(), SequoiaOpenPGP(),
                                   SynchronousRunner(), world_of_pki.clock),
                      lambda: world_of_pki.config, world_of_pki.clock)
    world_of_pki.set(GLOBAL, encrypt_mode="mandatory")
    world = World(tmp_path, processor=gateway)
    world.network.policy = ReceivePolicy("next-hop.example.net",
                                         relay_domains=("partner.example",))
    queue_id = world.enqueue("alice@example.com", ("bob@partner.example",), RECEIVED + SENT)
    world.network.up = False
    world.scan()
    ((_, state, _),) = world.queued()
    assert state == "deferred" and engine.protected == 1
    for _ in range(3):  # three retries, the hop still down
        world.clock.advance(4000)
        world.scan()
    world.network.up = True
    world.clock.advance(4000)
    world.scan()
    assert world.queued() == [] and engine.protected == 1
    (arrived,) = world.network.queued
    assert b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data" in \
        arrived.content
    # Under the original's queue id, as its form after processing.
    assert any(line.startswith(f"{queue_id}: to=<bob@partner.example>, relay=relay")
               and "status=sent" in line for line in log_lines), log_lines


@pytest.mark.parametrize("when", ["before", "after"])
def test_kill_9_at_the_commit_leaves_each_result_delivered_exactly_once(
        tmp_path: Path, when: str) -> None:
    first = World(tmp_path)
    first.enqueue(SENDER, RECIPIENTS)
    crashed = subprocess.run(
        [sys.executable, "-m", "tests.crash_at_commit", str(tmp_path / "spool"), when],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()
    staged = sorted(p.name for p in (tmp_path / "spool" / "incoming").iterdir())
    assert len(staged) == (3 if when == "before" else 2)  # the results, written
    # The restart, with the same processing.
    processor = Splitting()
    world = World(tmp_path, clock=first.clock, processor=processor)
    assert list((tmp_path / "spool" / "incoming").iterdir()) == []
    world.scan()
    world.scan()
    # Before: the original is processed again; after: it was not.
    assert processor.calls == (1 if when == "before" else 0)
    assert world.queued() == []
    assert delivered(world) == expected()


def test_results_that_cannot_be_written_leave_the_original_to_be_processed_again(
        tmp_path: Path, log_lines: list[str]) -> None:
    full = [True]

    def rename(source: Path, target: Path) -> None:
        if full[0] and source.parent.name == "incoming":
            full[0] = False  # once: the deferral's rewrite finds room
            raise OSError(28, "No space left on device")
        os.rename(source, target)

    processor = Splitting()
    world = World(tmp_path, rename=rename, processor=processor)
    queue_id = world.enqueue(SENDER, RECIPIENTS)
    world.scan()
    assert world.network.queued == []
    ((found, state, recipients),) = world.queued()
    assert (found, state, recipients) == (queue_id, "deferred", RECIPIENTS)
    (message,) = world.spool.messages()
    assert PROCESSED not in message.envelope.extra
    assert message.envelope.reason.startswith("the results of processing could not be "
                                              "queued: cannot write the results")
    assert list((tmp_path / "spool" / "incoming").iterdir()) == []
    world.clock.advance(MIN_BACKOFF)
    world.scan()
    world.scan()
    assert processor.calls == 2 and world.queued() == []
    assert delivered(world) == expected()


@implementer(IMessageProcessor)
class Recording:
    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[tuple[str, ...]] = []

    def process(self, envelope: Any, content: bytes) -> Deferred[ProcessingResult]:
        self.seen.append(envelope.recipients)
        results = Results()
        results.deliver(envelope.sender, envelope.recipients, content + self.name.encode())
        return succeed(results.result())


def test_the_composite_sends_the_relay_recipient_to_the_relay_and_the_rest_to_the_gateway(
        pki: dict[str, Any]) -> None:  # noqa: F811
    world = GatewayWorld(pki)
    world.set(GLOBAL, relay_recipient="Webmail@Webmail.Local")
    world.set(scope_for(Level.DOMAIN, "example.com"))
    relay, gateway = Recording("relay"), Recording("gateway")
    composite = Composite(world.settings, relay, gateway)
    assert verifyObject(IMessageProcessor, composite)
    envelope = Envelope("0123456789AB", "gw@example.org",
                        ("bob@example.com", "webmail@webmail.local", "carol@example.com"), 0.0)

    async def process() -> ProcessingResult:
        return await composite.process(envelope, b"M")

    result = result_of(process())
    assert relay.seen == [("webmail@webmail.local",)]
    assert gateway.seen == [("bob@example.com", "carol@example.com")]
    # The SMTP server's recipient verification asks the same question.
    assert result_of(composite.is_relay_recipient('"webmail"@WEBMAIL.local.'))
    assert not result_of(composite.is_relay_recipient("bob@example.com"))
    by_recipients = {d.recipients: result.made[d.made].content for d in result.dispositions
                     if d.made is not None}
    assert by_recipients == {("webmail@webmail.local",): b"Mrelay",
                             ("bob@example.com", "carol@example.com"): b"Mgateway"}
    # Without a relay recipient set, all of it is the gateway's.
    world.set(GLOBAL, relay_recipient=None)
    world.clock.advance(5)
    result_of(process())
    assert relay.seen == [("webmail@webmail.local",)]
    assert gateway.seen[-1] == envelope.recipients


def test_results_not_queued_after_the_commit_are_queued_by_the_next_scan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    processor = Splitting()
    world = World(tmp_path, processor=processor)
    world.enqueue(SENDER, RECIPIENTS)
    real_link = os.link
    broken = [True]

    def link(source: Any, target: Any) -> None:
        if broken[0] and Path(source).parent.name == "incoming" and \
                Path(target).parent.name == "active":
            raise OSError(5, "Input/output error")
        real_link(source, target)

    monkeypatch.setattr(os, "link", link)
    world.network.up = False
    world.scan()
    # Committed: the original is its processed form; the tunnel and the
    # notice are written, not yet queued, and nothing was processed twice.
    assert [(r, s) for _, s, r in world.queued()] == [(("a@example.com",), "deferred")]
    assert len(list((tmp_path / "spool" / "incoming").iterdir())) == 2
    broken[0] = False
    world.network.up = True
    world.clock.advance(MIN_BACKOFF)
    world.scan()
    world.scan()
    assert processor.calls == 1 and world.queued() == []
    assert delivered(world) == expected()


@implementer(IMessageProcessor)
class Inconsistent:
    calls = 0

    def process(self, envelope: Envelope, content: bytes) -> Deferred[ProcessingResult]:
        self.calls += 1
        # Carried on by a seventh message made, of none.
        return succeed(ProcessingResult((), (Disposition(
            envelope.recipients, Outcome("sent", "2.0.0", "x"), "mpa", 7),)))


def test_a_result_that_does_not_hold_together_defers_the_message_like_a_failure(
        tmp_path: Path) -> None:
    processor = Inconsistent()
    world = World(tmp_path, processor=processor)
    world.enqueue(SENDER, RECIPIENTS)
    world.scan()
    world.scan()
    (message,) = world.spool.messages()
    assert processor.calls == 1 and message.state == "deferred"
    assert message.envelope.attempts == 1
    assert message.envelope.reason.startswith("processing failed (ValueError: ")


@implementer(IMessageProcessor)
class Steered:
    """
    Processing that waits for the test (the admin acts meanwhile).
    """

    def __init__(self) -> None:
        self.waiting: Deferred[None] = Deferred()

    def process(self, envelope: Envelope, content: bytes) -> Deferred[ProcessingResult]:
        d: Deferred[Any] = self.waiting.addCallback(
            lambda _: Splitting().process(envelope, content))
        return d


def test_a_message_held_while_it_is_processed_keeps_its_results_held(tmp_path: Path) -> None:
    processor = Steered()
    world = World(tmp_path, processor=processor)
    queue_id = world.enqueue(SENDER, RECIPIENTS)
    scan = Deferred.fromCoroutine(world.runner.scan())
    assert result_of(world.queue.hold(queue_id))
    processor.waiting.callback(None)
    assert scan.called and world.network.queued == []
    assert {state for _, state, _ in world.queued()} == {"hold"} and len(world.queued()) == 3


def test_a_message_deleted_while_it_is_processed_leaves_nothing(
        tmp_path: Path, log_lines: list[str]) -> None:
    processor = Steered()
    world = World(tmp_path, processor=processor)
    queue_id = world.enqueue(SENDER, RECIPIENTS)
    scan = Deferred.fromCoroutine(world.runner.scan())
    assert result_of(world.queue.delete(queue_id))
    processor.waiting.callback(None)
    assert scan.called and world.network.queued == [] and world.queued() == []
    assert list((tmp_path / "spool" / "incoming").iterdir()) == []
    assert f"{queue_id}: deleted while it was processed" in log_lines


def test_the_senders_processed_message_keeps_the_queue_id_whatever_comes_first(
        tmp_path: Path, log_lines: list[str]) -> None:
    @implementer(IMessageProcessor)
    class NoticeFirst:
        def process(self, envelope: Envelope, content: bytes) -> Deferred[ProcessingResult]:
            results = Results()
            results.send(Made("", ("a@example.com",), NOTICE))
            results.deliver(envelope.sender, envelope.recipients, PROCESSED_CONTENT)
            return succeed(results.result())

    world = World(tmp_path, processor=NoticeFirst())
    queue_id = world.enqueue(SENDER, ("b@example.com",))
    world.scan()
    world.scan()
    assert any(line.startswith(f"{queue_id}: to=<b@example.com>, relay=relay")
               and "status=sent" in line for line in log_lines), log_lines
    (notice,) = [line for line in log_lines if "made by processing" in line]
    assert not notice.startswith(queue_id)
