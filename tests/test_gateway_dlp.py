"""
DLP in the gateway (L{cipherd.mpa.gateway} with L{cipherd.mpa.dlp_policy}):
warn adds a header, encrypt makes encryption mandatory whatever the encrypt
mode, quarantine keeps the message sealed and tells the sender and the DLP
manager, block bounces naming the rule only; a released message goes
through as if no rule had matched, and a forged release mark does not.
Internal recipients and those on the skip list are not acted for.
"""

from __future__ import annotations

from typing import Any

import pytest

from cipherd.mpa.dlp import BUILTIN
from cipherd.pki import smime
from cipherd.settings import GLOBAL
from cipherd.testing import result_of
from tests import dlp_samples as samples
from tests.test_gateway import RECEIVED, World, pki  # noqa: F401 -- pki is a fixture

CARD_MAIL = RECEIVED + samples.message(
    subject="Payment", text=f"Please charge {samples.CARD} today.").replace(
    b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")


@pytest.fixture
def world(pki: dict[str, Any]) -> World:  # noqa: F811
    world = World(pki)
    result_of(world.dlp.add_builtin(["credit-card", "confidential"]))
    world.set(GLOBAL, dlp_enabled=True, dlp_manager="dlp@example.com")
    return world


def set_action(world: World, name: str, action: str) -> None:
    pattern = next(p for p in result_of(world.dlp.patterns()) if p.name == name)
    from dataclasses import replace

    result_of(world.dlp.save(replace(pattern, action=action)))


def test_encrypt_makes_encryption_mandatory(world: World, log_lines: list[str]) -> None:
    # No encryption by policy: the rule makes it mandatory all the same.
    parts = world.process("bob@partner.example", "dave@nocert.example", content=CARD_MAIL)
    bob = parts[("bob@partner.example",)]
    assert smime.classify(bob.content).kind == "enveloped-data"
    dave = parts[("dave@nocert.example",)]
    assert dave.outcome is not None and dave.outcome.status == "bounced"
    (_, to, notice), *_ = world.submitted
    assert to == ["alice@example.com"]
    assert b"Encryption is mandatory (by the DLP rule credit-card)" in notice
    assert samples.CARD.encode() not in notice
    assert any("DLP rules credit-card matched; action encrypt" in line for line in log_lines)


def test_warn_adds_a_header(world: World) -> None:
    content = RECEIVED + b"Subject: plan\r\n\r\nThis is strictly confidential.\r\n"
    parts = world.process("dave@nocert.example", content=content)
    delivered = parts[("dave@nocert.example",)].content
    assert delivered.startswith(b"X-Cipherd-DLP: confidential\r\n")
    # A header the sender wrote is not kept as ours.
    forged = b"X-Cipherd-DLP: nothing to see\r\n" + RECEIVED + b"Subject: x\r\n\r\nhello\r\n"
    parts = world.process("dave@nocert.example", content=forged)
    assert b"X-Cipherd-DLP" not in parts[("dave@nocert.example",)].content


def test_quarantine_then_release(world: World) -> None:
    set_action(world, "credit-card", "quarantine")
    parts = world.process("dave@nocert.example", "carol@example.com", content=CARD_MAIL)
    held = parts[("dave@nocert.example",)].outcome
    assert held is not None and (held.status, held.dsn) == ("sent", "2.7.0")
    assert "quarantined by DLP (credit-card)" in held.reason
    # The internal recipient gets it as usual.
    assert parts[("carol@example.com",)].content == CARD_MAIL
    [row] = result_of(world.dlp.quarantined())
    assert (row.sender, row.recipients, row.subject) == ("alice@example.com",
                                                         ("dave@nocert.example",), "Payment")
    assert row.findings[0]["rule"] == "credit-card"
    assert samples.CARD not in str(row.findings) and "1111" in row.findings[0]["excerpt"]
    notices = {tuple(to): text for _, to, text in world.submitted}
    assert b"held for review" in notices[("alice@example.com",)]
    assert b"quarantine id" in notices[("dlp@example.com",)].lower()
    assert samples.CARD.encode() not in b"".join(notices.values())

    taken = result_of(world.dlp.take(row.id))
    assert taken is not None and taken[1] == CARD_MAIL
    assert result_of(world.dlp.take(row.id)) is None  # once only
    released = world.dlp.mark_released(row.id, taken[1])
    parts = world.process("dave@nocert.example", content=released)
    assert parts[("dave@nocert.example",)].content == CARD_MAIL  # unchanged, no mark


def test_a_forged_release_mark_changes_nothing(world: World) -> None:
    set_action(world, "credit-card", "quarantine")
    forged = b"X-Cipherd-DLP-Released: 0123456789abcdef 00ff\r\n" + CARD_MAIL
    parts = world.process("dave@nocert.example", content=forged)
    assert "quarantined" in parts[("dave@nocert.example",)].outcome.reason
    [row] = result_of(world.dlp.quarantined())
    assert result_of(world.dlp.take(row.id))[1] == CARD_MAIL  # kept without the mark


def test_block_bounces_naming_the_rule_only(world: World) -> None:
    set_action(world, "credit-card", "block")
    parts = world.process("dave@nocert.example", content=CARD_MAIL)
    outcome = parts[("dave@nocert.example",)].outcome
    assert outcome is not None and outcome.status == "bounced" and outcome.notified
    assert outcome.reason == "the message was blocked by the DLP rule credit-card"
    bounce = next(text for _, to, text in world.submitted if to == ["alice@example.com"])
    assert b"data loss prevention rule credit-card" in bounce
    assert samples.CARD.encode() not in bounce and b"Please charge" not in bounce
    assert result_of(world.dlp.quarantined()) == []


def test_skip_list_internal_recipients_and_patterns_that_apply(world: World) -> None:
    set_action(world, "credit-card", "block")
    world.set(GLOBAL, dlp_skip="partner.example, erin@other.example")
    parts = world.process("bob@partner.example", "erin@other.example", "carol@example.com",
                          content=CARD_MAIL)
    assert all(p.outcome is None for p in parts.values())
    world.set(GLOBAL, dlp_skip="", dlp_patterns="confidential")
    parts = world.process("dave@nocert.example", content=CARD_MAIL)
    assert parts[("dave@nocert.example",)].outcome is None  # credit-card does not apply
    world.set(GLOBAL, dlp_patterns="", dlp_enabled=False)
    parts = world.process("dave@nocert.example", content=CARD_MAIL)
    assert parts[("dave@nocert.example",)].outcome is None


def test_unscannable_attachments_have_their_own_action(world: World) -> None:
    world.set(GLOBAL, dlp_unscannable_action="quarantine")
    content = RECEIVED + samples.message(attachments=[
        ("locked.zip", "application/zip", samples.encrypted_zip())])
    parts = world.process("dave@nocert.example", content=content)
    assert "quarantined by DLP (unscannable)" in parts[("dave@nocert.example",)].outcome.reason
    assert BUILTIN["credit-card"].name == "credit-card"
