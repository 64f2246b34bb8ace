"""
The gateway's processing with the real store, certificate store and S/MIME
engine behind it (in memory, the clock injected): one message split over
every path, the tunnel message opened again, the guide's faults with their
log lines and notices, trigger removal, and incoming S/MIME for internal
recipients.
"""

from __future__ import annotations

import email
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from asn1crypto import cms as asn1_cms
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from cipherd.core.envelope import Envelope, Outcome
from cipherd.mpa.discovery import KeyDiscovery
from cipherd.mpa.dlp_policy import DataLossPrevention
from cipherd.mpa.gateway import Gateway
from cipherd.mpa.sealing import NO_WEBMAIL_CERTIFICATE, NOT_SIGNED
from cipherd.mpa.tunnel import TunnelMetadata, build_tunnel, read_tunnel, tunnel_id
from cipherd.pki import smime
from cipherd.pki.ca import CertificateAuthority
from cipherd.pki.certs import email_addresses, thumbprint
from cipherd.pki.certstore import CertificateStore
from cipherd.pki.engine import LayerOpener, SmimeEngine
from cipherd.pki.ocsp import IOCSPClient
from cipherd.pki.pgp import SequoiaOpenPGP
from cipherd.pki.pgpmime import PGPEngine
from cipherd.pki.pgpopen import PGPOpener
from cipherd.pki.trust import CTLStatus, OCSPAnswer, OCSPStatus, ocsp_key
from cipherd.settings import GLOBAL, Level, scope_for
from cipherd.smtp.config import MTAConfig, apply_changes
from cipherd.smtp.processing import IMessageProcessor, ProcessingResult
from cipherd.store.certificates import ROOTS
from cipherd.store.settings import SettingsRepository
from cipherd.testing import RecordingSubmission, SynchronousRunner, migrated_store, result_of
from cipherd.testing.certificates import MemoryOCSPClient
from cipherd.testing.pgp import MemoryKeyDirectory, MemoryKeyring
from cipherd.testing.sms import MemorySMSGateway
from cipherd.webmail.pdf import PDFMaker
from tests.pki_factory import EMAIL_EKU, START, make_ca, make_user

NOW = START + timedelta(days=10)
QUEUE_ID = "4A1B2C3D4E5F"
RECEIVED = (b"Received: from client.example.org (unknown[127.0.0.1])\r\n\tby gw.example.com "
            b"(cipherd) with ESMTP id " + QUEUE_ID.encode() + b";\r\n"
            b"\tSat, 28 Nov 2026 10:00:00 +0000\r\n")
SENT = (b"From: alice@example.com\r\nTo: several\r\nSubject: Quarterly figures [encrypt]\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n.dot\r\nGr\xc3\xbc\xc3\x9fe\r\n"
        + b"y" * 1200 + b"\r\n")
WEBMAIL_SENDER = "webmail-sender@example.com"
WEBMAIL_RECIPIENT = "webmail@webmail.local"


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    root = make_ca("Gateway Root")
    return {"root": root, "alice": make_user("alice@example.com", root),
            "bob": make_user("bob@partner.example", root),
            "carol": make_user("carol@example.com", root)}


class World:
    def __init__(self, pki: dict[str, Any], ocsp: IOCSPClient | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        store = migrated_store()
        self.settings = SettingsRepository(store, self.clock)
        self.certificates = CertificateStore(store, self.clock, os.urandom(32),
                                             SynchronousRunner(), ocsp)
        self.engine = SmimeEngine(self.certificates, SynchronousRunner())
        # The built-in CA: it issues only when asked (auto request certificate).
        self.authority = CertificateAuthority(
            store, self.certificates, self.settings, SynchronousRunner(), self.clock,
            os.urandom(32), internal=lambda address: self.config.receive_policy().relay_domain(
                address))
        # Data loss prevention: off until a test turns it on (dlp_enabled).
        self.dlp = DataLossPrevention(store, SynchronousRunner(), self.clock, os.urandom(32))
        result_of(self.certificates.import_data(pki["root"].pem(), store=ROOTS))
        for name in ("alice", "bob", "carol"):
            result_of(self.certificates.import_data(pki[name].pkcs12(b"pw"), password="pw"))
        self.config, errors = apply_changes(MTAConfig(), {
            "relay_domains": ["example.com"], "my_hostname": "gw.example.com"})
        assert not errors
        # The messages processing made besides the processed original.
        self.submission = RecordingSubmission()
        self.submitted = self.submission.submitted
        self.keyring = MemoryKeyring(self.clock)
        self.directory = MemoryKeyDirectory()
        self.sms = MemorySMSGateway()
        self.gateway = Gateway(self.settings, self.certificates, self.engine, self.keyring,
                               PGPEngine(SequoiaOpenPGP(), SynchronousRunner()),
                               PDFMaker(SynchronousRunner()), self.sms,
                               LayerOpener(self.engine, PGPOpener(
                                   self.keyring, SequoiaOpenPGP(), SynchronousRunner())),
                               KeyDiscovery(self.keyring, self.directory, SequoiaOpenPGP(),
                                            SynchronousRunner(), self.clock),
                               lambda: self.config, self.clock, authority=self.authority,
                               dlp=self.dlp)
        self.processor: IMessageProcessor = self.gateway
        self.set(GLOBAL, webmail_sender=WEBMAIL_SENDER, webmail_recipient=WEBMAIL_RECIPIENT)

    def set(self, scope: Any, **values: Any) -> None:
        assert result_of(self.settings.update(scope, values)) == {}

    def domain(self, name: str, **values: Any) -> None:
        self.set(scope_for(Level.DOMAIN, name), **values)

    def tunnel_certificates(self, *, sender: bool = True, recipient: bool = True) -> None:
        for wanted, address in ((sender, WEBMAIL_SENDER), (recipient, WEBMAIL_RECIPIENT)):
            if wanted:
                thumbprint = result_of(self.certificates.create_tunnel_certificate(
                    address, "Webmail tunnel certificate"))
                result_of(self.certificates.set_ctl(thumbprint, CTLStatus.WHITELISTED))

    def process(self, *recipients: str, content: bytes = RECEIVED + SENT,
                sender: str = "alice@example.com", written: bool = True
                ) -> dict[tuple[str, ...], Part]:
        """
        What became of the recipients, by group: the content they get
        (the original as processed), or the outcome processing gave them;
        what else it made is in C{submitted}.

        @param written: whether the queue wrote the results (if not: a
            crash just before, and nothing made is kept).
        """
        envelope = Envelope(QUEUE_ID, sender, recipients, NOW.timestamp())

        async def processed() -> ProcessingResult:
            result = await self.processor.process(envelope, content)
            if written:
                for callback in result.written:
                    await callback()
            return result

        result = result_of(processed())
        assert verifyObject(IMessageProcessor, self.processor)
        if not written:
            return {}
        parts = []
        delivering = set()
        for d in result.dispositions:
            made = None if d.made is None else result.made[d.made]
            if made is not None and made.sender == sender and made.recipients == d.recipients:
                delivering.add(d.made)
                parts.append(Part(d.recipients, made.content))
            else:
                parts.append(Part(d.recipients, b"", d.outcome, d.relay))
        self.submitted += [(m.sender, list(m.recipients), m.content)
                           for i, m in enumerate(result.made) if i not in delivering]
        assert sorted(r for p in parts for r in p.recipients) == sorted(recipients)
        return {p.recipients: p for p in parts}


@dataclass(frozen=True)
class Part:
    recipients: tuple[str, ...]
    content: bytes
    outcome: Outcome | None = None
    relay: str = "mpa"


@pytest.fixture
def world(pki: dict[str, Any]) -> World:
    return World(pki)


def test_one_message_split_over_every_path(world: World, log_lines: list[str]) -> None:
    world.set(GLOBAL, encrypt_mode="allow", webmail_enabled=True)
    world.domain("mandatory.example", encrypt_mode="mandatory")
    world.domain("plain.example", webmail_enabled=False)
    world.domain("strict.example", encrypt_mode="mandatory", webmail_enabled=False)
    world.tunnel_certificates()
    parts = world.process("carol@example.com", "bob@partner.example", "dave@mandatory.example",
                          "erin@plain.example", "frank@strict.example")
    internal = parts[("carol@example.com",)]
    assert internal.outcome is None and internal.content == RECEIVED + SENT
    assert parts[("erin@plain.example",)].content == RECEIVED + SENT
    encrypted = parts[("bob@partner.example",)]
    assert smime.classify(encrypted.content).kind == "enveloped-data"
    opened = result_of(world.engine.open(encrypted.content))
    assert opened.decrypted is not None and opened.decrypted.result.recipients
    assert opened.signature_valid  # alice has a key: signed too
    # Signed as multipart/signed: the 8-bit body travels base64-encoded.
    body = email.message_from_bytes(opened.message).get_payload(decode=True)
    assert body == SENT[SENT.index(b"\r\n\r\n") + 4:]

    tunnel = parts[("dave@mandatory.example",)]
    assert tunnel.outcome is not None and tunnel.outcome.status == "sent"
    assert tunnel.relay == "webmail" and "webmail tunnel message" in tunnel.outcome.reason
    refused = parts[("frank@strict.example",)]
    assert refused.outcome is not None
    assert (refused.outcome.status, refused.outcome.notified) == ("bounced", True)

    (tunnel_sender, tunnel_to, sealed), (notice_sender, notice_to, notice) = world.submitted
    assert (tunnel_sender, tunnel_to) == (WEBMAIL_SENDER, [WEBMAIL_RECIPIENT])
    assert sealed.startswith(b"From: <webmail-sender@example.com>\r\nTo: "
                             b"<webmail@webmail.local>\r\nSubject: Secure Webmail message\r\n")
    unsealed = result_of(world.engine.open(sealed))
    assert unsealed.signature_valid and unsealed.signers[0].emails == [WEBMAIL_SENDER]
    metadata, original = read_tunnel(unsealed.message)
    assert original == SENT  # as the client sent it: byte for byte
    assert (metadata.sender, metadata.recipients) == ("alice@example.com",
                                                      ("dave@mandatory.example",))
    assert metadata.created == NOW.timestamp() and not metadata.read_receipt

    assert (notice_sender, notice_to) == ("", ["alice@example.com"])
    text = notice.decode()
    assert ("The message with Subject\r\n\r\nQuarterly figures [encrypt]\r\n\r\nhas not been "
            "sent to the following recipients because the message could not be encrypted."
            "\r\n\r\nfrank@strict.example\r\n\r\nEncryption is mandatory (by policy)") in text
    assert "y" * 100 not in text  # the header only, never the content in the clear
    assert any(line.startswith("Webmail is disabled for the recipient; Recipient: "
                               "frank@strict.example") for line in log_lines), log_lines


def test_header_external_is_on_what_leaves_for_external_recipients(world: World) -> None:
    """
    Settings → General → Header external, the sender's: on top of mail sent
    as it is, outside S/MIME, on the original in the tunnel; not on mail
    for internal recipients nor on the sender's bounce.
    """
    world.set(GLOBAL, encrypt_mode="allow", webmail_enabled=True)
    world.domain("mandatory.example", encrypt_mode="mandatory")
    world.domain("strict.example", encrypt_mode="mandatory", webmail_enabled=False)
    world.domain("plain.example", webmail_enabled=False)
    world.set(scope_for(Level.USER, "alice@example.com"),
              header_external="X-Sent-Via: Example gateway")
    world.tunnel_certificates()
    added = b"X-Sent-Via: Example gateway\r\n"
    parts = world.process("carol@example.com", "erin@plain.example", "bob@partner.example",
                          "dave@mandatory.example", "frank@strict.example",
                          content=RECEIVED + SENT)
    # erin has no certificate, encryption is allowed, webmail is not: as it is.
    assert parts[("erin@plain.example",)].content == added + RECEIVED + SENT
    assert parts[("carol@example.com",)].content == RECEIVED + SENT
    encrypted = parts[("bob@partner.example",)].content
    assert encrypted.startswith(added)
    assert smime.classify(encrypted).kind == "enveloped-data"
    (_, _, sealed), (_, _, bounce) = world.submitted
    _, original = read_tunnel(result_of(world.engine.open(sealed)).message)
    assert original == added + SENT  # the client's message, the field on top
    assert b"X-Sent-Via" not in bounce
    # Someone else's mail: not theirs.
    other = world.process("erin@plain.example", sender="carol@example.com")
    assert other[("erin@plain.example",)].content == RECEIVED + SENT


@pytest.mark.parametrize(("original", "inside", "encoding"), [
    (b"Subject: a\r\n\r\nline1\r\nline2\r\n", b"Subject: a\r\n\r\nline1\r\nline2\r\n",
     b"7bit"),
    (b"Subject: a\r\n\r\nline1\nline2\r\n", b"Subject: a\r\n\r\nline1\r\nline2\r\n",
     b"7bit"),
    (b"Subject: a\r\n\r\nline1\r\nline2", b"Subject: a\r\n\r\nline1\r\nline2\r\n", b"7bit"),
    (b"Subject: a\r\n\r\n" + b"x" * 999 + b"\nend\r\n",
     b"Subject: a\r\n\r\n" + b"x" * 999 + b"\r\nend\r\n", b"binary"),
    (b"Subject: \xc3\xa9\r\n\r\nok\r\n", b"Subject: \xc3\xa9\r\n\r\nok\r\n", b"8bit"),
])
def test_the_tunnel_carries_the_original_canonical_with_one_line_end(
        original: bytes, inside: bytes, encoding: bytes) -> None:
    """
    The original goes into the tunnel without our Received field, with CRLF
    line ends and one at its end (never a second), labelled by what it is
    once canonical.
    """
    from cipherd.mpa.gateway import _sent_from

    ours = (b"Received: from c (c [192.0.2.1])\r\n\tby gw (cipherd) with ESMTP id "
            + QUEUE_ID.encode() + b"\r\n\tfor <x@y>; Fri, 4 Dec 2026 10:00:00 +0000\r\n")
    content = ours + original
    assert _sent_from(content, QUEUE_ID) == len(ours)
    assert _sent_from(content, "other") == 0
    metadata = TunnelMetadata(tunnel_id("gw.example.com", QUEUE_ID, ["b@example.org"]),
                              NOW.timestamp(), "a@example.com", ("b@example.org",))
    tunnel = build_tunnel(content, metadata, webmail_sender=WEBMAIL_SENDER,
                          webmail_recipient=WEBMAIL_RECIPIENT, my_hostname="gw.example.com",
                          start=_sent_from(content, QUEUE_ID)).join()
    assert read_tunnel(smime.Parts.split(tunnel).entity())[1] == inside
    assert b"Content-Transfer-Encoding: " + encoding + b"\r\n\r\n" + inside + b"\r\n--" in tunnel


def test_the_tunnel_id_is_the_same_when_the_same_message_is_processed_again(
        world: World) -> None:
    world.set(GLOBAL, encrypt_mode="mandatory", webmail_enabled=True)
    world.tunnel_certificates()
    world.process("dave@partner.example")
    world.process("dave@partner.example")
    ids = {read_tunnel(result_of(world.engine.open(sealed)).message)[0].tunnel_id
           for _, _, sealed in world.submitted}
    assert len(ids) == 1


@pytest.mark.parametrize("missing, line, reason", [
    ("sender", "The tunneled message should have been signed", NOT_SIGNED),
    ("recipient", "There are no valid S/MIME certificates for the webmail recipient",
     NO_WEBMAIL_CERTIFICATE),
])
def test_tunnel_faults_as_the_guide_names_them(world: World, log_lines: list[str],
                                               missing: str, line: str, reason: str) -> None:
    world.set(GLOBAL, encrypt_mode="mandatory", webmail_enabled=True)
    world.tunnel_certificates(sender=missing != "sender", recipient=missing != "recipient")
    parts = world.process("dave@partner.example")
    outcome = parts[("dave@partner.example",)].outcome
    assert outcome is not None and outcome.status == "bounced" and reason in outcome.reason
    ((sender, to, notice),) = world.submitted
    assert (sender, to) == ("", ["alice@example.com"])
    assert f"dave@partner.example\r\n\r\n{reason}\r\n".encode() in notice
    assert any(entry.startswith(line) for entry in log_lines), log_lines


def test_webmail_disabled_for_the_sender_is_logged(world: World, log_lines: list[str]) -> None:
    world.set(GLOBAL, encrypt_mode="mandatory")
    world.process("dave@partner.example")
    assert any(entry.startswith("Webmail is disabled for the sender; Recipient: "
                                "dave@partner.example; Sender: alice@example.com")
               for entry in log_lines), log_lines


def test_an_untrusted_webmail_certificate_is_no_certificate(world: World) -> None:
    world.set(GLOBAL, encrypt_mode="mandatory", webmail_enabled=True)
    world.tunnel_certificates(recipient=False)
    # Imported but not on the CTL white list (guide section 3.3 skipped).
    result_of(world.certificates.create_tunnel_certificate(WEBMAIL_RECIPIENT, "untrusted"))
    parts = world.process("dave@partner.example")
    outcome = parts[("dave@partner.example",)].outcome
    assert outcome is not None and NO_WEBMAIL_CERTIFICATE in outcome.reason


def test_the_subject_trigger_is_removed_from_what_is_encrypted(world: World) -> None:
    world.set(GLOBAL, encrypt_mode="allow", subject_trigger_enabled=True)
    parts = world.process("bob@partner.example", "erin@partner.example")
    encrypted = result_of(world.engine.open(parts[("bob@partner.example",)].content))
    assert b"Subject: Quarterly figures\r\n" in encrypted.message
    # erin has no certificate: a trigger makes it mandatory, and nothing can.
    refused = parts[("erin@partner.example",)].outcome
    assert refused is not None and "(by trigger)" in refused.reason


def test_an_internal_sender_without_a_certificate_gets_one_and_signs(
        world: World, log_lines: list[str]) -> None:
    world.set(GLOBAL, encrypt_mode="mandatory")
    ca = result_of(world.authority.create_root("CN=Gateway Mail CA", "ec-p256", 3650,
                                               "http://pki.example.com/mail.crl"))
    # Off (the default): dave's mail is encrypted, not signed.
    parts = world.process("bob@partner.example", sender="dave@example.com")
    opened = result_of(world.engine.open(parts[("bob@partner.example",)].content))
    assert opened.decrypted is not None and not opened.signers
    assert result_of(world.authority.count_issued()) == 0

    world.set(GLOBAL, auto_request_certificate=True)
    # Not for an external sender (nor one with a certificate: alice signs
    # with hers).
    world.process("bob@partner.example", sender="zed@elsewhere.example")
    world.process("bob@partner.example", sender="alice@example.com")
    assert result_of(world.authority.count_issued()) == 0
    parts = world.process("bob@partner.example", sender="dave@example.com")
    opened = result_of(world.engine.open(parts[("bob@partner.example",)].content))
    assert opened.decrypted is not None and opened.signature_valid
    signer = opened.signers[0].verdict
    assert signer is not None and signer.chain[-1] == ca.certificate
    assert email_addresses(signer.chain[0]) == ["dave@example.com"]
    [issued] = result_of(world.authority.issued())
    assert issued.origin == "auto" and issued.thumbprint == thumbprint(signer.chain[0])
    assert any("a certificate was issued for the sender dave@example.com" in line
               for line in log_lines)
    # The next message uses it: no second certificate.
    world.process("bob@partner.example", sender="dave@example.com")
    assert result_of(world.authority.count_issued()) == 1


def _signature_algorithm(signed_message: bytes) -> str:
    info = smime.classify(signed_message)
    assert info.kind == "signed" and info.boundary
    _, signature = smime.split_signed(signed_message, info.boundary)
    signer = asn1_cms.ContentInfo.load(signature)["content"]["signer_infos"][0]
    return str(signer["signature_algorithm"]["algorithm"].native)


@pytest.mark.parametrize(("scheme", "algorithm"), [("pkcs1", "rsassa_pkcs1v15"),
                                                   ("pss", "rsassa_pss")])
def test_the_signature_scheme_is_the_senders_setting(world: World, scheme: str,
                                                     algorithm: str) -> None:
    world.set(GLOBAL, encrypt_mode="mandatory")
    world.set(scope_for(Level.USER, "alice@example.com"), smime_signature_scheme=scheme)
    parts = world.process("bob@partner.example")
    opened = result_of(world.engine.open(parts[("bob@partner.example",)].content))
    assert opened.decrypted is not None and opened.signature_valid
    assert _signature_algorithm(opened.decrypted.message) == algorithm


@pytest.mark.parametrize("status", [OCSPStatus.UNAVAILABLE, OCSPStatus.UNKNOWN,
                                    OCSPStatus.REVOKED])
def test_revocation_unknown_is_the_recipients_domain_setting(
        pki: dict[str, Any], status: OCSPStatus) -> None:
    """
    Bob's responder cannot say (or says revoked): failing open, his
    certificate is used unless revoked; with I{S/MIME revocation unknown}
    = fail closed for his domain it is not, and mandatory encryption
    without another method bounces.
    """
    answer = OCSPAnswer(status, "http://ocsp.example/", reason="the OCSP responder "
                        "http://ocsp.example/ could not be reached (ConnectionRefusedError)",
                        revoked_at=NOW - timedelta(days=1))
    ocsp = MemoryOCSPClient({ocsp_key(pki["bob"].cert, pki["root"].cert): answer})
    world = World(pki, ocsp)
    world.set(GLOBAL, encrypt_mode="mandatory")
    sent = world.process("bob@partner.example")[("bob@partner.example",)]
    assert ocsp.asked
    if status is OCSPStatus.REVOKED:
        assert sent.outcome is not None and sent.outcome.status == "bounced"
        return
    assert smime.classify(sent.content).kind == "enveloped-data"
    world.domain("partner.example", smime_revocation_unknown="fail closed")
    refused = world.process("bob@partner.example")[("bob@partner.example",)]
    assert refused.outcome is not None and refused.outcome.status == "bounced"
    # Failing open again: used again.
    world.domain("partner.example", smime_revocation_unknown="fail open")
    assert world.process("bob@partner.example")[("bob@partner.example",)].outcome is None


def test_an_incoming_signer_is_judged_by_its_own_domain(pki: dict[str, Any]) -> None:
    """
    Bob's responder cannot say: with partner.example failing closed, his
    signature is not trusted whatever MAIL FROM the sender chose; with
    another domain failing closed instead, it is.
    """
    answer = OCSPAnswer(OCSPStatus.UNAVAILABLE, "http://ocsp.example/", reason="the OCSP "
                        "responder http://ocsp.example/ did not answer within 10 seconds")
    world = World(pki, MemoryOCSPClient({ocsp_key(pki["bob"].cert, pki["root"].cert): answer}))
    signer = result_of(world.certificates.signing_identity("bob@partner.example"))
    carol = result_of(world.certificates.encryption_certificates("carol@example.com"))
    incoming = result_of(world.engine.protect(SENT, signer=signer, recipients=carol))

    def trusted(sender: str) -> bool:
        (part,) = world.process("carol@example.com", content=incoming, sender=sender).values()
        header = part.content[:part.content.index(b"\r\n\r\n")].decode()
        assert "X-Cipherd-Info-Signer-Verified-0: True" in header
        return "X-Cipherd-Info-Signer-Trusted-0: True" in header

    assert trusted("bob@partner.example")
    world.domain("partner.example", smime_revocation_unknown="fail closed")
    assert not trusted("bob@partner.example")
    assert not trusted("someone@elsewhere.example")
    world.domain("partner.example", smime_revocation_unknown="fail open")
    world.domain("elsewhere.example", smime_revocation_unknown="fail closed")
    assert trusted("someone@elsewhere.example")


def test_an_ed25519_sender_signs_with_ed25519(world: World, pki: dict[str, Any]) -> None:
    frank = make_user("frank@example.com", pki["root"], key=ed25519.Ed25519PrivateKey.generate(),
                      key_usage={"digital_signature": True}, eku=EMAIL_EKU)
    result_of(world.certificates.import_data(frank.pkcs12(b"pw"), password="pw"))
    world.set(GLOBAL, encrypt_mode="mandatory")
    # PSS is for RSA keys: an Ed25519 key signs with Ed25519 whatever it says.
    world.set(scope_for(Level.USER, "frank@example.com"), smime_signature_scheme="pss")
    parts = world.process("bob@partner.example", sender="frank@example.com")
    opened = result_of(world.engine.open(parts[("bob@partner.example",)].content))
    assert opened.decrypted is not None and opened.signature_valid
    assert opened.signers[0].emails == ["frank@example.com"]
    assert _signature_algorithm(opened.decrypted.message) == "ed25519"
    assert b"micalg=sha-512;" in opened.decrypted.message


def test_header_protection_round_trip(world: World) -> None:
    """
    RFC 9788: what the gateway encrypts carries its header fields inside
    (hp="cipher", HP-Outer for what is outside), the Subject outside
    obscured when the sender's setting says so; the incoming path of a
    gateway that holds the recipient's key shows the protected fields.
    """
    world.set(GLOBAL, encrypt_mode="mandatory")
    world.set(scope_for(Level.USER, "alice@example.com"), smime_obscure_subject=True)
    parts = world.process("bob@partner.example")
    encrypted = parts[("bob@partner.example",)].content
    outer = encrypted[:encrypted.index(b"\r\n\r\n")]
    assert b"\r\nSubject: [...]\r\n" in outer and b"Quarterly" not in outer
    opened = result_of(world.engine.open(encrypted))
    assert opened.decrypted is not None and opened.signature_valid
    info = smime.classify(opened.decrypted.message)
    assert info.boundary is not None
    entity, _ = smime.split_signed(opened.decrypted.message, info.boundary)
    head = entity[:entity.index(b"\r\n\r\n") + 2]
    assert head.startswith(b"Content-Type: text/plain; charset=utf-8; hp=\"cipher\"\r\n")
    assert b"\r\nSubject: Quarterly figures [encrypt]\r\n" in head
    assert b"\r\nFrom: alice@example.com\r\n" in head
    assert b"\r\nHP-Outer: Subject: [...]\r\n" in head
    assert b"\r\nHP-Outer: From: alice@example.com\r\n" in head
    assert b"Received" not in head  # the transport's fields stay outside

    # The same message arriving where bob is internal and his key is held.
    world.domain("partner.example", locality="internal")
    (part,) = world.process("bob@partner.example", content=encrypted).values()
    header = part.content[:part.content.index(b"\r\n\r\n") + 2]
    assert header.count(b"Subject: ") == 1
    assert b"\r\nSubject: Quarterly figures [encrypt]\r\n" in header
    assert b"HP-Outer" not in header
    assert b"X-Cipherd-Info-Header-Protection: hp=cipher; " in header
    assert smime.classify(part.content).kind is None


def test_signed_only_mail_has_its_header_fields_protected_in_clear(
        world: World, pki: dict[str, Any]) -> None:
    signer = result_of(world.certificates.signing_identity("alice@example.com"))
    signed = result_of(world.engine.protect(SENT, signer=signer, recipients=(),
                                            protect_headers=True, obscure_subject=True))
    outer = signed[:signed.index(b"\r\n\r\n")]
    # Nothing is obscured where nothing is encrypted.
    assert b"Subject: Quarterly figures [encrypt]" in outer
    verified = smime.verify_message(signed)
    assert verified.result.all_valid
    assert b'hp="clear"' in verified.entity and b"HP-Outer" not in verified.entity
    assert smime.header_protection(verified.message) == "clear"


def test_incoming_smime_is_opened_for_internal_recipients(world: World, pki: dict[str, Any]
                                                          ) -> None:
    signer = result_of(world.certificates.signing_identity("bob@partner.example"))
    carol = result_of(world.certificates.encryption_certificates("carol@example.com"))
    incoming = (b"X-Cipherd-Info-Signer-Trusted-0: True\r\n" +
                result_of(world.engine.protect(SENT, signer=signer, recipients=carol)))
    (part,) = world.process("carol@example.com", content=incoming,
                            sender="bob@partner.example").values()
    header = part.content[:part.content.index(b"\r\n\r\n")].decode()
    assert "X-Cipherd-Info-Encrypted: True\r\n" in header
    assert "X-Cipherd-Info-Encryption-Algorithm: AES256_CBC, key transport rsaes_pkcs1v15" \
        in header
    assert "X-Cipherd-Info-Decrypted-With: CN=Carol, EMAILADDRESS=carol@example.com" in header
    assert "X-Cipherd-Info-Signer-0: CN=Bob, EMAILADDRESS=bob@partner.example\r\n" in header
    assert "X-Cipherd-Info-Signer-Verified-0: True\r\nX-Cipherd-Info-Signer-Trusted-0: True" \
        in header
    assert header.count("Info-Signer-Trusted-0") == 1  # the forged field went
    # A block per layer, outermost first.
    assert ("X-Cipherd-Info-Layer-1: encrypted (enveloped-data); decrypted\r\n"
            "X-Cipherd-Info-Layer-1-Encryption-Algorithm: AES256_CBC, key transport "
            "rsaes_pkcs1v15\r\nX-Cipherd-Info-Layer-1-Decrypted-With: CN=Carol") in header
    assert ("X-Cipherd-Info-Layer-2: signed (multipart/signed); removed\r\n"
            "X-Cipherd-Info-Layer-2-Signer-0: CN=Bob, EMAILADDRESS=bob@partner.example\r\n"
            "X-Cipherd-Info-Layer-2-Signer-Verified-0: True\r\n"
            "X-Cipherd-Info-Layer-2-Signer-Trusted-0: True\r\n") in header
    # Delivered as plain MIME by default (S/MIME remove signature)...
    assert smime.classify(part.content).kind is None
    body = email.message_from_bytes(part.content).get_payload(decode=True)
    assert body.endswith(b"y" * 1200 + b"\r\n")

    # ...or decrypted and still signed: the mail client can check it too.
    world.set(scope_for(Level.USER, "carol@example.com"), smime_remove_signature=False)
    (part,) = world.process("carol@example.com", content=incoming,
                            sender="bob@partner.example").values()
    assert b"X-Cipherd-Info-Layer-2: signed (multipart/signed); kept\r\n" in part.content
    assert smime.classify(part.content).kind == "signed"
    entity = smime.verify_message(part.content).entity
    assert email.message_from_bytes(entity).get_payload(decode=True).endswith(b"y" * 1200 +
                                                                               b"\r\n")


def test_undecryptable_incoming_mail_is_delivered_as_received_saying_why(
        world: World, pki: dict[str, Any]) -> None:
    stranger = make_user("zed@example.com", pki["root"])
    encrypted = smime.encrypt_message(SENT, [stranger.cert])
    (part,) = world.process("carol@example.com", content=encrypted).values()
    assert part.content.endswith(encrypted)
    assert part.content.startswith(b"X-Cipherd-Info-Error: S/MIME decryption failed: A "
                                   b"suitable decryption key could not be found.\r\n")


@pytest.mark.parametrize("spelling", ['"bob"@partner.example', "bob@partner.example.",
                                      "bob@PARTNER.example"])
def test_no_spelling_of_an_address_escapes_its_certificate(world: World, spelling: str) -> None:
    world.set(GLOBAL, encrypt_mode="allow")
    (part,) = world.process(spelling).values()
    assert part.recipients == (spelling,)  # delivered as addressed...
    assert smime.classify(part.content).kind == "enveloped-data"  # ...but encrypted


def test_a_tunnel_too_large_once_encrypted_is_told_to_the_sender(world: World) -> None:
    world.set(GLOBAL, encrypt_mode="mandatory", webmail_enabled=True)
    world.tunnel_certificates()
    world.config, errors = apply_changes(world.config, {
        "before_filter_message_size_limit": 2048, "after_filter_message_size_limit": 4096})
    assert not errors
    outcome = world.process("dave@partner.example")[("dave@partner.example",)].outcome
    assert outcome is not None and outcome.status == "bounced"
    assert "too large for the secure webmail once encrypted" in outcome.reason
    ((sender, to, notice),) = world.submitted
    assert (sender, to) == ("", ["alice@example.com"])
    assert b"too large for the secure webmail" in notice


def test_a_verified_signature_of_an_untrusted_signer_is_not_called_invalid(
        world: World, log_lines: list[str]) -> None:
    """
    Issue 12: "S/MIME signature was not valid" was logged for signatures
    that verified but whose signer is not trusted.  Each fault has its line.
    """
    stranger = make_user("mallory@elsewhere.example", make_ca("Unknown root"))
    signed = smime.sign_message(SENT, stranger.cert, stranger.key, signing_time=START)
    (part,) = world.process("carol@example.com", content=signed,
                            sender="mallory@elsewhere.example").values()
    assert b"X-Cipherd-Info-Signer-Verified-0: True\r\nX-Cipherd-Info-Signer-Trusted-0: False" \
        in part.content
    untrusted = [line for line in log_lines if "signer not trusted" in line]
    assert len(untrusted) == 1 and untrusted[0].startswith(
        "S/MIME signature verified, signer not trusted; Signer IDs: CN=Mallory, "
        "EMAILADDRESS=mallory@elsewhere.example; Queue id: "), log_lines
    assert not any("signature was not valid" in line for line in log_lines)

    # The same signature over a changed text: that one is not valid.
    log_lines.clear()
    # The first character of the signed part's body, changed.
    boundary = signed.index(b"\r\n--", signed.index(b"\r\n\r\n"))
    at = signed.index(b"\r\n\r\n", boundary) + 4
    tampered = signed[:at] + (b"A" if signed[at:at + 1] != b"A" else b"B") + signed[at + 1:]
    (part,) = world.process("carol@example.com", content=tampered,
                            sender="mallory@elsewhere.example").values()
    assert b"X-Cipherd-Info-Signer-Verified-0: False" in part.content
    assert any(line.startswith("S/MIME signature was not valid; Signer IDs: CN=Mallory")
               for line in log_lines), log_lines
    assert not any("signer not trusted" in line for line in log_lines)


def test_a_header_external_stored_before_it_was_checked_is_not_added(
        log_lines: list[str]) -> None:
    from cipherd.mpa.gateway import _with_header

    content = b"Subject: a\r\n\r\nb\r\n"
    assert _with_header(content, "no colon here") == content
    assert any("Header external is not added" in line for line in log_lines), log_lines
    assert _with_header(content, "X-A: b") == b"X-A: b\r\n" + content
