"""
The PDF method in the gateway's chain (S/MIME, PGP, PDF, webmail): who gets
a PDF, with which password, what the sender is told, and what happens when
the password cannot reach the recipient or the PDF cannot be made.  The
PDFs are opened by qpdf and poppler (L{tests.pdf_peers}).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from cipherd.mpa import policy
from cipherd.mpa.tunnel import read_tunnel, tunnel_id
from cipherd.settings import GLOBAL, REGISTRY, Level, scope_for
from cipherd.testing import result_of
from cipherd.webmail.accounts import LinkRefused
from cipherd.webmail.pdfreply import read_token
from tests.pdf_peers import PDFReaders, pdf_of, text_of
from tests.test_gateway import (  # noqa: F401
    QUEUE_ID,
    RECEIVED,
    SENT,
    WEBMAIL_RECIPIENT,
    WEBMAIL_SENDER,
    World,
    pki,
)

DEFAULTS = {name: prop.default for name, prop in REGISTRY.items()}
PDF_ON = {"encrypt_mode": "mandatory", "pdf_enabled": True}


@pytest.fixture
def world(pki: dict[str, Any]) -> World:  # noqa: F811
    world = World(pki)
    world.set(GLOBAL, **PDF_ON)
    return world


@pytest.fixture
def readers(tmp_path: Path) -> PDFReaders:
    return PDFReaders(tmp_path)


def password_in(notice: bytes) -> str:
    found = re.search(r"The password to open it is:\s+(\S+)", text_of(notice))
    assert found is not None
    return found.group(1)


def test_no_certificate_no_key_a_pdf_with_a_random_password_for_the_sender(
        world: World, readers: PDFReaders, log_lines: list[str]) -> None:
    parts = world.process("bob@partner.example", "dave@partner.example")
    # Bob has a certificate: S/MIME comes first in the chain.
    assert b"application/pkcs7-mime" in parts[("bob@partner.example",)].content
    mail = parts[("dave@partner.example",)].content
    pdf = pdf_of(mail)
    [(_, recipients, notice)] = world.submitted
    assert recipients == ["alice@example.com"]
    password = password_in(notice)
    assert len(password) == 16
    assert "dave@partner.example" in text_of(notice)
    text = readers.text(pdf, password)
    assert "Quarterly figures [encrypt]" in text and "Grüße" in text and ".dot" in text
    readers.refuses(pdf, "")
    carrier = text_of(mail)
    assert "alice@example.com sent you an encrypted message" in carrier
    assert "will give it to you another way" in carrier and password not in carrier
    assert any("PDF encrypted (AES-256, random password sent to the sender); Recipient: "
               "dave@partner.example" in line for line in log_lines)
    assert not any(password in line for line in log_lines)


def test_a_random_password_per_recipient(world: World, readers: PDFReaders) -> None:
    parts = world.process("dave@partner.example", "erin@other.example")
    notices = {recipient: password_in(content) for _, _, content in world.submitted
               for recipient in ("dave@partner.example", "erin@other.example")
               if recipient in text_of(content)}
    assert len(set(notices.values())) == 2
    for recipient, password in notices.items():
        assert "Grüße" in readers.text(pdf_of(parts[(recipient,)].content), password)


def test_a_static_password_set_for_the_recipient_or_its_domain(
        world: World, readers: PDFReaders) -> None:
    world.domain("partner.example", pdf_password_mode="static",
                 pdf_password="partner-wide-secret")
    world.set(scope_for(Level.USER, "dave@partner.example"), pdf_password="dave-own-secret")
    parts = world.process("dave@partner.example", "erin@partner.example")
    assert world.submitted == []  # no notice: the password is agreed beforehand
    assert "Grüße" in readers.text(pdf_of(parts[("dave@partner.example",)].content),
                                   "dave-own-secret")
    erin = pdf_of(parts[("erin@partner.example",)].content)
    assert "Grüße" in readers.text(erin, "partner-wide-secret")
    readers.refuses(erin, "dave-own-secret")
    assert "Its password is the PDF password agreed with you." in text_of(
        parts[("erin@partner.example",)].content)


def test_static_without_a_password_goes_on_to_webmail(world: World,
                                                     log_lines: list[str]) -> None:
    world.set(GLOBAL, webmail_enabled=True)
    world.tunnel_certificates()
    world.domain("partner.example", pdf_password_mode="static")
    parts = world.process("dave@partner.example")
    assert parts[("dave@partner.example",)].relay == "webmail"
    assert any("PDF not used: there is no PDF password for the recipient (PDF password mode: "
               "static); Recipient: dave@partner.example" in line for line in log_lines)


def test_mandatory_without_any_method_tells_the_sender_why(world: World) -> None:
    world.domain("partner.example", pdf_password_mode="static")
    parts = world.process("dave@partner.example")
    outcome = parts[("dave@partner.example",)].outcome
    assert outcome is not None and outcome.status == "bounced"
    [(_, _, notice)] = world.submitted
    assert b"there is no PDF password for the recipient" in notice


def test_the_null_sender_cannot_be_told_a_random_password(world: World) -> None:
    parts = world.process("dave@partner.example", sender="")
    outcome = parts[("dave@partner.example",)].outcome
    assert outcome is not None and outcome.status == "bounced"
    assert world.submitted == []  # no notice to the null sender


def test_obscure_subject_keeps_the_subject_inside_the_pdf_only(
        world: World, readers: PDFReaders) -> None:
    world.set(GLOBAL, pdf_obscure_subject=True)
    parts = world.process("dave@partner.example")
    mail = parts[("dave@partner.example",)].content
    assert b"Subject: [...]" in mail and b"Quarterly" not in mail
    [(_, _, notice)] = world.submitted
    assert "Quarterly figures [encrypt]" in readers.text(pdf_of(mail), password_in(notice))


def test_the_templates_are_the_administrators(world: World) -> None:
    world.set(GLOBAL, template_pdf_message="For {{ recipient }}: see {{ filename }}.\n",
              template_pdf_password="Subject: PDF password\n\nIt is {{ password }} for "
                                    "{{ recipient }}.\n")
    parts = world.process("dave@partner.example")
    assert text_of(parts[("dave@partner.example",)].content).strip() == (
        "For dave@partner.example: see encrypted-message.pdf.")
    [(_, _, notice)] = world.submitted
    assert b"Subject: PDF password" in notice
    assert re.fullmatch(r"It is \S{16} for dave@partner.example.", text_of(notice).strip())


def test_a_message_that_cannot_be_made_a_pdf_is_not_sent(world: World,
                                                         log_lines: list[str]) -> None:
    nested = b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n"
                      % (n, n + 1) for n in range(3000))
    content = (RECEIVED + b"From: alice@example.com\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n" + nested)
    parts = world.process("dave@partner.example", content=content)
    outcome = parts[("dave@partner.example",)].outcome
    assert outcome is not None and outcome.status == "bounced"
    [(_, recipients, notice)] = world.submitted
    assert recipients == ["alice@example.com"]
    assert b"PDF encryption failed: the message is nested too deeply" in notice
    assert any("PDF encryption failed" in line for line in log_lines)


# The decision alone -----------------------------------------------------------


def facts(sender: dict[str, Any], recipient: dict[str, Any], **more: Any) -> policy.Facts:
    return policy.Facts("dave@partner.example", {**DEFAULTS, **sender},
                        {**DEFAULTS, **recipient}, False, sender="alice@example.com", **more)


def test_the_chain_is_smime_pgp_pdf_webmail() -> None:
    on = {**PDF_ON, "webmail_enabled": True}
    key: Any = object()
    certificate: Any = object()
    assert policy.decide(facts(on, on, certificates=(certificate,))).method == policy.SMIME
    assert policy.decide(facts(on, on, pgp_keys=(key,))).method == policy.PGP
    assert policy.decide(facts(on, on)).method == policy.PDF
    assert policy.decide(facts(on, {"pdf_enabled": False, "webmail_enabled": True}
                               )).method == policy.WEBMAIL
    assert policy.decide(facts({**on, "pdf_enabled": False}, on)).method == policy.WEBMAIL


def test_pdf_under_allow_only_when_the_policy_encrypts() -> None:
    allow = {"encrypt_mode": "allow", "pdf_enabled": True}
    decision = policy.decide(facts(allow, allow))
    assert (decision.method, decision.mandatory) == (policy.PDF, False)
    assert policy.decide(facts({**allow, "encrypt_mode": "no_encryption"},
                               {"encrypt_mode": "no_encryption"})).method == policy.PLAIN


def test_the_pdf_and_its_mail_carry_a_signed_reply_link(world: World,
                                                        readers: PDFReaders) -> None:
    world.set(GLOBAL, pdf_reply_url="https://secure.example.com", pdf_obscure_subject=True,
              pdf_reply_single_use=True, server_secret="a server secret of some length")
    parts = world.process("dave@partner.example")
    mail = parts[("dave@partner.example",)].content
    found = re.search(r"https://secure\.example\.com/pdf/reply\?token=(\S+)", text_of(mail))
    assert found is not None
    token = found.group(1)
    [(_, _, notice)] = world.submitted
    text = readers.text(pdf_of(mail), password_in(notice))
    assert "Reply securely:" in text and token[:40] in "".join(text.split())
    secret = result_of(world.settings.by_address([""]))[""]["server_secret"]
    link = read_token(secret, token, world.clock.seconds())
    assert (link.sender, link.recipient, link.single_use) == (
        "alice@example.com", "dave@partner.example", True)
    assert link.subject == ""  # obscured: not in the clear text of the mail either
    assert link.expires == int(world.clock.seconds()) + 30 * 86400


def test_the_reply_link_ends_with_the_messages_expiry(world: World) -> None:
    world.set(GLOBAL, pdf_reply_url="https://secure.example.com",
              server_secret="a server secret of some length")
    content = RECEIVED + b"X-Cipherd-Expires: 2d\r\n" + SENT
    mail = world.process("dave@partner.example", content=content)[
        ("dave@partner.example",)].content
    assert mail is not None and b"X-Cipherd-Expires" not in mail
    found = re.search(r"https://secure\.example\.com/pdf/reply\?token=(\S+)", text_of(mail))
    assert found is not None
    link = read_token("a server secret of some length", found.group(1), world.clock.seconds())
    assert link.expires == int(world.clock.seconds()) + 2 * 86400
    with pytest.raises(LinkRefused, match="expired"):
        read_token("a server secret of some length", found.group(1),
                   world.clock.seconds() + 2 * 86400 + 1)


def test_no_reply_link_without_an_address_for_it(world: World, log_lines: list[str]) -> None:
    world.set(GLOBAL, server_secret="a server secret of some length")
    parts = world.process("dave@partner.example")
    assert "/pdf/reply" not in text_of(parts[("dave@partner.example",)].content)
    assert any("the PDF has no reply link: set the PDF reply URL or the Portal base URL"
               in line for line in log_lines)


# Passwords in the portal and by SMS --------------------------------------------


def test_portal_the_password_goes_to_the_recipients_mailbox_in_a_tunnel_of_its_own(
        world: World, readers: PDFReaders, log_lines: list[str]) -> None:
    world.tunnel_certificates()
    world.domain("partner.example", pdf_password_mode="portal")
    world.set(GLOBAL, portal_base_url="https://webmail.example.com")
    parts = world.process("dave@partner.example")
    mail = parts[("dave@partner.example",)].content
    carrier = text_of(mail).replace("\r\n", "\n")
    assert "waiting for you in the secure webmail portal:\n\nhttps://webmail.example.com" \
        in carrier
    [(sender, recipients, sealed)] = world.submitted
    assert (sender, recipients) == (WEBMAIL_SENDER, [WEBMAIL_RECIPIENT])
    unsealed = result_of(world.engine.open(sealed))
    assert unsealed.signature_valid
    metadata, message = read_tunnel(unsealed.message)
    assert (metadata.sender, metadata.recipients) == ("alice@example.com",
                                                      ("dave@partner.example",))
    # Its own tunnel id: the message itself tunnelled to dave would not
    # be taken for it.
    assert metadata.tunnel_id != tunnel_id("gw.example.com", QUEUE_ID,
                                           ["dave@partner.example"])
    assert b'Subject: Password for the encrypted PDF "Quarterly figures [encrypt]"' in message
    password = password_in(message)
    assert "Grüße" in readers.text(pdf_of(mail), password)
    assert any("PDF encrypted (AES-256, random password put in the portal in tunnel message "
               f"{metadata.tunnel_id}); Recipient: dave@partner.example" in line
               for line in log_lines)
    assert not any(password in line for line in log_lines)


def test_portal_keeps_an_obscured_subject_out_of_the_password_message(
        world: World) -> None:
    world.tunnel_certificates()
    world.set(GLOBAL, pdf_password_mode="portal", pdf_obscure_subject=True)
    world.process("dave@partner.example")
    [(_, _, sealed)] = world.submitted
    _, message = read_tunnel(result_of(world.engine.open(sealed)).message)
    # The webmail messenger's notices show this subject in the clear.
    assert b"Subject: Password for the encrypted PDF\r\n" in message
    assert b"Quarterly" not in message


def test_portal_without_a_tunnel_sends_no_pdf_and_the_chain_goes_on(
        world: World, log_lines: list[str]) -> None:
    # The webmail recipient's certificate is missing: the password cannot
    # reach the portal; webmail, the next method, is off.
    world.tunnel_certificates(recipient=False)
    world.domain("partner.example", pdf_password_mode="portal")
    parts = world.process("dave@partner.example")
    outcome = parts[("dave@partner.example",)].outcome
    assert outcome is not None and outcome.status == "bounced"
    [(_, recipients, notice)] = world.submitted  # no PDF, no tunnel
    assert recipients == ["alice@example.com"]
    assert (b"no method could encrypt the message: there is no valid S/MIME certificate for "
            b"the recipient; there is no PGP key for the recipient; the PDF password could "
            b"not be put in the portal: There are no valid S/MIME certificates for the "
            b"webmail recipient; Webmail is disabled for the sender." in notice)
    assert any("the PDF is not sent: the PDF password could not be put in the portal"
               in line for line in log_lines)


def test_portal_needs_the_webmail_sender_and_recipient(world: World) -> None:
    world.set(GLOBAL, webmail_sender="", webmail_recipient="")
    world.domain("partner.example", pdf_password_mode="portal")
    world.process("dave@partner.example")
    [(_, _, notice)] = world.submitted
    assert (b"the PDF password cannot be put in the portal: the webmail sender and webmail "
            b"recipient are not set (PDF password mode: portal)" in notice)


SMS = {"pdf_password_mode": "sms", "sms_gateway_url": "https://sms.example/send",
       "sms_gateway_credential": "k3y"}


def test_sms_the_password_goes_to_the_recipients_phone(
        world: World, readers: PDFReaders, log_lines: list[str]) -> None:
    world.set(GLOBAL, **SMS)
    world.set(scope_for(Level.USER, "dave@partner.example"), sms_phone="+31 6 1234 5678")
    parts = world.process("dave@partner.example")
    mail = parts[("dave@partner.example",)].content
    assert "The password was sent to your mobile phone in a text message." in text_of(mail)
    [(config, phone, text)] = world.sms.sent
    assert (config.url, config.credential, phone) == ("https://sms.example/send", "k3y",
                                                       "+31612345678")
    found = re.fullmatch(r"Password for the encrypted PDF from alice@example.com: (\S+)", text)
    assert found is not None
    assert "Grüße" in readers.text(pdf_of(mail), found.group(1))
    assert world.submitted == []  # no notice to the sender
    assert any("PDF encrypted (AES-256, random password sent by SMS); Recipient: "
               "dave@partner.example" in line for line in log_lines)
    assert not any(found.group(1) in line for line in log_lines)


def test_sms_refused_sends_no_pdf_and_the_message_goes_to_webmail(
        world: World, log_lines: list[str]) -> None:
    world.set(GLOBAL, webmail_enabled=True, **SMS)
    world.tunnel_certificates()
    for user in ("dave", "erin"):
        world.set(scope_for(Level.USER, f"{user}@partner.example"), sms_phone="+31612345678")
    world.sms.refusal = "the SMS gateway sms.example answered HTTP 503"
    parts = world.process("dave@partner.example", "erin@partner.example")
    assert parts[("dave@partner.example", "erin@partner.example")].relay == "webmail"
    [(sender, _, sealed)] = world.submitted  # the tunnel, and no PDF
    assert sender == WEBMAIL_SENDER
    metadata, original = read_tunnel(result_of(world.engine.open(sealed)).message)
    assert original == SENT
    assert metadata.recipients == ("dave@partner.example", "erin@partner.example")
    assert world.sms.asked == 1  # a refusing gateway is not asked again for the message
    assert any("the PDF is not sent: the PDF password could not be sent by SMS: the SMS "
               "gateway sms.example answered HTTP 503; Recipient: dave@partner.example" in line
               for line in log_lines)
    assert not any("PDF not used" in line for line in log_lines)


@pytest.mark.parametrize(("sender", "recipient", "why"), [
    (SMS, {}, "there is no mobile number for the recipient (PDF password mode: SMS)"),
    ({**SMS, "sms_gateway_url": ""}, {"sms_phone": "+31612345678"},
     "no SMS gateway is set (PDF password mode: SMS)"),
])
def test_sms_needs_a_number_and_a_gateway(sender: dict[str, Any], recipient: dict[str, Any],
                                         why: str) -> None:
    decision = policy.decide(facts({**PDF_ON, **sender}, {**PDF_ON, **SMS, **recipient}))
    assert decision.method == policy.BOUNCE and why in decision.reason
