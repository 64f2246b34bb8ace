"""
Every S/MIME layer of what real clients send, opened from the outside in
(issue 15): the Thunderbird/NSS corpus's 29 messages encrypted to Bob, in
every nesting of encryption, opaque and detached signatures, through
L{SmimeEngine.open_layers} and the gateway's incoming path, with the
store's trust decisions; and the bounds (depth, a layer that cannot be
opened, a PGP signature around S/MIME).
"""

from __future__ import annotations

import base64
import email
import email.message
import os
import re
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from twisted.internet.task import Clock

from cipherd.core.envelope import Envelope
from cipherd.mpa.discovery import KeyDiscovery
from cipherd.mpa.gateway import Gateway
from cipherd.pki import cms, smime
from cipherd.pki.certstore import CertificateStore
from cipherd.pki.engine import MAX_LAYERS, PGP_SIGNED, LayerOpener, OpenedLayers, SmimeEngine
from cipherd.pki.pgp import SequoiaOpenPGP
from cipherd.pki.pgpmime import PGPEngine
from cipherd.pki.pgpopen import PGPOpener
from cipherd.settings import Level, scope_for
from cipherd.smtp.config import MTAConfig, apply_changes
from cipherd.smtp.processing import ProcessingResult
from cipherd.store.certificates import ROOTS
from cipherd.store.settings import SettingsRepository
from cipherd.testing import SynchronousRunner, migrated_store, result_of
from cipherd.testing.pgp import MemoryKeyDirectory, MemoryKeyring
from cipherd.testing.sms import MemorySMSGateway
from cipherd.webmail.pdf import PDFMaker
from tests.conftest import Appliance
from tests.peers import require_tool, run
from tests.pki_factory import make_ca, make_user
from tests.sink import Captured, Sink
from tests.test_mta_appliance import NEW_PASSWORD, api

CORPUS = Path(os.environ.get(
    "CIPHERD_SMIME_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus")
) / "smime-thunderbird"
NSS = CORPUS / "nss"
MANUAL = CORPUS / "manual"
TEXT = b"This is a test message from Alice to Bob."
# Inside the certificates' validity (2026-01-26 to 2031-01-26).
NOW = datetime(2027, 1, 15, tzinfo=UTC)
ENCRYPTED_TO_BOB = sorted(path.name for path in NSS.glob("*.env*.eml"))

pytestmark = pytest.mark.skipif(
    not NSS.is_dir() and os.environ.get("CI") != "true",
    reason=f"the S/MIME test corpus is not at {CORPUS} (set CIPHERD_SMIME_CORPUS)")


def expected_kinds(name: str) -> list[str]:
    """
    The layers a corpus file name says, outermost first: the NSS names
    list them from the inside out (C{alice.sig.SHA256.opaque.env}: an
    opaque signature, then encrypted).
    """
    kinds = []
    for token in name.removesuffix(".eml").split("."):
        if token == "env":
            kinds.append("enveloped-data")
        elif token == "opaque":
            kinds.append("signed-data")
        elif token == "multipart":
            kinds.append("signed")
    return kinds[::-1]


def readable_texts(message: bytes) -> list[bytes]:
    """
    The decoded text parts a mail client without S/MIME shows.
    """
    parsed = email.message_from_bytes(message)
    return [part.get_payload(decode=True) or b"" for part in parsed.walk()
            if part.get_content_maintype() == "text"]


def shows_alices_text(message: bytes) -> bool:
    return any(TEXT in text for text in readable_texts(message))


class Bob:
    """
    A store with Bob's key and the NSS test CA as a root, an engine and a
    gateway for which example.com (Bob's domain) is internal.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        store = migrated_store()
        self.settings = SettingsRepository(store, self.clock)
        self.certificates = CertificateStore(store, self.clock, os.urandom(32),
                                             SynchronousRunner())
        result_of(self.certificates.import_data((NSS / "TestCA.pem").read_bytes(),
                                                store=ROOTS))
        result_of(self.certificates.import_data((NSS / "Bob.p12").read_bytes(),
                                                password="nss"))
        self.engine = SmimeEngine(self.certificates, SynchronousRunner())
        self.config, errors = apply_changes(MTAConfig(), {"relay_domains": ["example.com"]})
        assert not errors
        self.keyring = MemoryKeyring(self.clock)
        self.opener = LayerOpener(self.engine, PGPOpener(self.keyring, SequoiaOpenPGP(),
                                                         SynchronousRunner()))
        self.gateway = Gateway(self.settings, self.certificates, self.engine, self.keyring,
                               PGPEngine(SequoiaOpenPGP(), SynchronousRunner()),
                               PDFMaker(SynchronousRunner()), MemorySMSGateway(), self.opener,
                               KeyDiscovery(self.keyring, MemoryKeyDirectory(), SequoiaOpenPGP(),
                                            SynchronousRunner(), self.clock),
                               lambda: self.config, self.clock)

    def open(self, message: bytes) -> OpenedLayers:
        return result_of(self.opener.open_layers(message, decrypt_for=["bob@example.com"]))

    def set(self, scope: Any, **values: Any) -> None:
        assert result_of(self.settings.update(scope, values)) == {}

    def process(self, message: bytes, *recipients: str) -> ProcessingResult:
        envelope = Envelope("4A1B2C3D4E5F", "alice@example.com", recipients, NOW.timestamp())

        async def processed() -> ProcessingResult:
            return await self.gateway.process(envelope, message)

        return result_of(processed())

    def deliver(self, message: bytes) -> bytes:
        (made,) = self.process(message, "bob@example.com").made
        return made.content


@pytest.fixture(scope="module")
def bob() -> Bob:
    return Bob()


def test_the_corpus_has_the_29_messages_encrypted_to_bob() -> None:
    assert len(ENCRYPTED_TO_BOB) == 29


@pytest.mark.parametrize("name", ENCRYPTED_TO_BOB)
def test_every_layer_is_opened(bob: Bob, name: str) -> None:
    received = (NSS / name).read_bytes()
    opened = bob.open(received)
    assert [layer.kind for layer in opened.layers] == expected_kinds(name)
    assert opened.complete, [layer.error for layer in opened.layers]
    assert smime.classify(opened.opened).kind is None
    assert shows_alices_text(opened.opened)
    for layer in opened.layers:
        if layer.kind == "enveloped-data":
            assert layer.decrypted is not None
            assert layer.decrypted.result.cipher == "aes128_cbc"
            continue
        (signer,) = layer.signers
        # NSS signed the detached signature around the encryption over
        # LF line ends, and the file has CRLF: not valid, as Thunderbird
        # and openssl say (corpus README).
        around_encryption = ".env.dsig." in name and layer.kind == "signed" and \
            "Alice" in signer.signer
        assert signer.check.valid is not around_encryption, (name, signer.reason)
        if signer.check.valid:
            assert signer.valid, signer.reason  # the NSS test CA is a root here
    # The outer header fields stay.
    assert b"To: Bob@example.com\r\n" in opened.opened


@pytest.mark.parametrize("name", ENCRYPTED_TO_BOB)
def test_the_gateway_delivers_plain_mime_with_a_block_per_layer(bob: Bob, name: str) -> None:
    delivered = bob.deliver((NSS / name).read_bytes())
    header = delivered[:delivered.index(b"\r\n\r\n")].decode()
    assert smime.classify(delivered).kind is None
    assert shows_alices_text(delivered)
    kinds = expected_kinds(name)
    blocks = re.findall(r"^X-Cipherd-Info-Layer-(\d+): (.*?)\r?$", header, re.MULTILINE)
    assert [int(n) for n, _ in blocks] == list(range(1, len(kinds) + 1))
    for (_, description), kind in zip(blocks, kinds, strict=True):
        assert description.endswith("; decrypted" if kind == "enveloped-data"
                                    else "; removed"), description
    assert "X-Cipherd-Info-Encrypted: True" in header


def test_with_remove_signature_off_the_inner_signature_stays_for_the_client(
        bob: Bob) -> None:
    bob.set(scope_for(Level.USER, "bob@example.com"), smime_remove_signature=False)
    try:
        for name in ENCRYPTED_TO_BOB:
            delivered = bob.deliver((NSS / name).read_bytes())
            kinds = expected_kinds(name)
            inner_signature = kinds[-1] != "enveloped-data"
            kind = smime.classify(delivered).kind
            if inner_signature:
                # The signature inside the encryption is kept, and still
                # verifies (openssl checks the same in the appliance test).
                assert kind == kinds[-1], name
                verified = smime.verify_message(delivered)
                assert verified.result.all_valid, name
                assert b"X-Cipherd-Info-Layer-%d: " % len(kinds) in delivered
                assert delivered.count(b"; kept\r\n") == 1, name
            else:
                # A signature around the encryption cannot be kept.
                assert kind is None and shows_alices_text(delivered), name
    finally:
        bob.set(scope_for(Level.USER, "bob@example.com"), smime_remove_signature=None)


def test_a_signature_that_does_not_verify_is_reported_and_its_content_opened(
        bob: Bob) -> None:
    delivered = bob.deliver((NSS / "alice.env.dsig.SHA256.multipart.eml").read_bytes())
    assert b"X-Cipherd-Info-Layer-1: signed (multipart/signed); removed" in delivered
    assert b"X-Cipherd-Info-Layer-1-Signer-Verified-0: False" in delivered
    assert b"X-Cipherd-Info-Layer-2: encrypted (enveloped-data); decrypted" in delivered
    assert shows_alices_text(delivered)


def test_an_undecryptable_layer_keeps_the_message_as_received(bob: Bob) -> None:
    """
    Dave's outer signature verifies; the encryption inside is for someone
    whose key is not here: the message goes on as received, its outer
    signature intact for the reader, the layers' outcome in the fields.
    """
    root = make_ca("Elsewhere")
    zed = make_user("zed@example.com", root)
    encrypted = smime.encrypt_message(
        b"Subject: hello\r\nContent-Type: text/plain\r\n\r\n" + TEXT + b"\r\n", [zed.cert])
    signed = smime.sign_message(encrypted, zed.cert, zed.key, signing_time=NOW,
                                detached=False)
    opened = bob.open(signed)
    assert [layer.kind for layer in opened.layers] == ["signed-data", "enveloped-data"]
    assert not opened.complete and "decryption key" in opened.layers[1].error
    assert opened.delivered(True) == signed
    delivered = bob.deliver(signed)
    assert delivered.endswith(signed)
    assert b"X-Cipherd-Info-Layer-2: encrypted (enveloped-data); not opened\r\n" in delivered
    assert b"X-Cipherd-Info-Error: S/MIME decryption failed: " in delivered


def test_layers_beyond_the_bound_are_not_opened(bob: Bob) -> None:
    alice = make_user("alice@example.com", make_ca("Deep"))
    message = b"Subject: deep\r\nContent-Type: text/plain\r\n\r\n" + TEXT + b"\r\n"
    for _ in range(MAX_LAYERS + 1):
        message = smime.sign_message(message, alice.cert, alice.key, signing_time=NOW,
                                     detached=False)
    opened = bob.open(message)
    assert len(opened.layers) == MAX_LAYERS + 1
    assert "more than 8 S/MIME or PGP layers" in opened.layers[-1].error
    assert opened.delivered(True) == message  # nothing decrypted: as received


@pytest.mark.parametrize("name", ["outer-pgp-sig-inner-smime-enc.eml",
                                  "outer-pgp-sig-inner-smime-enc-sig.eml"])
def test_a_pgp_signature_around_smime_is_checked_and_the_smime_inside_opened(
        bob: Bob, name: str) -> None:
    received = (MANUAL / name).read_bytes()
    opened = bob.open(received)
    assert opened.layers[0].kind == PGP_SIGNED
    # The signer's key (Carol's) is not in the keyring: checked, not
    # verified, and what it signed opened all the same.
    assert not opened.layers[0].signers[0].verified
    assert "is not in the keyring" in opened.layers[0].signers[0].reason
    assert opened.layers[1].kind == "enveloped-data"
    # Made by hand from an older key set of Bob's: the encryption is for a
    # key that is not here, so the message goes on as received, its PGP
    # signature intact for a client that checks it.
    assert "decryption key could not be found" in opened.layers[1].error
    delivered = bob.deliver(received)
    assert delivered.endswith(received)
    assert b"X-Cipherd-Info-Layer-1: PGP signed (PGP/MIME); kept\r\n" in delivered
    assert b"X-Cipherd-Info-Layer-1-Signer-Verified-0: False\r\n" in delivered
    assert b"X-Cipherd-Info-Layer-2: encrypted (enveloped-data); not opened\r\n" in delivered


def test_encryption_inside_a_mixed_part_is_not_a_layer(bob: Bob) -> None:
    """
    An encrypted part beside other parts under a signature (a Thunderbird
    test of mixed content, the shape of EFAIL's exfiltration) is not
    opened: only whole-message layers are.
    """
    received = (MANUAL / "alice.env.mixed.dsig.SHA256.multipart.eml").read_bytes()
    opened = bob.open(received)
    assert [layer.kind for layer in opened.layers] == ["signed"]
    assert b"smime-type=enveloped-data" in opened.opened
    assert not shows_alices_text(opened.opened)


@pytest.mark.parametrize("name", ["outer-smime-bad-sig-inner-smime-enc.eml",
                                  "outer-smime-bad-sig-inner-smime-enc-sig.eml",
                                  "alice.dsig.SHA256.multipart.env.dsig.eml"])
def test_a_bad_outer_signature_around_encryption_is_reported_and_the_rest_opened(
        bob: Bob, name: str) -> None:
    opened = bob.open((MANUAL / name).read_bytes())
    outer, *inner = opened.layers
    assert outer.kind == "signed" and not outer.signature_valid
    assert "changed after it was signed" in outer.signers[0].reason
    assert inner and inner[0].kind == "enveloped-data" and opened.complete
    assert all(layer.signature_valid for layer in inner[1:])
    assert shows_alices_text(opened.delivered(True))


def test_a_message_that_is_not_smime_is_delivered_untouched(bob: Bob) -> None:
    plain = (b"From: Alice@example.com\r\nTo: Bob@example.com\r\nSubject: hi\r\n"
             b"Content-Type: text/plain\r\n\r\n" + TEXT + b"\r\n")
    assert bob.deliver(plain) == plain
    assert bob.open(plain).layers == ()


def test_each_recipient_gets_what_their_setting_says(bob: Bob) -> None:
    bob.set(scope_for(Level.USER, "bob@example.com"), smime_remove_signature=False)
    try:
        received = (NSS / "alice.sig.SHA256.opaque.env.eml").read_bytes()
        result = bob.process(received, "bob@example.com", "carol@example.com")
        made = {m.recipients: m.content for m in result.made}
        assert smime.classify(made[("bob@example.com",)]).kind == "signed-data"
        # Carol has no key here: what was encrypted to Bob is not hers to
        # read, though she is a recipient too.
        carols = made[("carol@example.com",)]
        assert smime.classify(carols).kind == "enveloped-data"
        assert not shows_alices_text(carols)
        assert carols.endswith(received.partition(b"\r\n\r\n")[2])
        assert b"X-Cipherd-Info-Error: S/MIME decryption failed" in carols
    finally:
        bob.set(scope_for(Level.USER, "bob@example.com"), smime_remove_signature=None)


def _nss_identity(name: str) -> tuple[Any, x509.Certificate]:
    with warnings.catch_warnings():
        # NSS writes its PKCS#12 in BER, which cryptography reads with a warning.
        warnings.simplefilter("ignore", UserWarning)
        key, cert, _ = pkcs12.load_key_and_certificates((NSS / name).read_bytes(), b"nss")
    assert key is not None and cert is not None
    return key, cert


def test_a_message_built_to_rfc_9788_is_shown_with_its_protected_fields(
        bob: Bob, tmp_path: Path) -> None:
    """
    Built to RFC 9788's example "smime-one-part-complex-encrypted-hcp-
    baseline" (Appendix C) with openssl and the NSS keys: a text part with
    hp="cipher", its header fields and HP-Outer copies inside an opaque
    signature by Alice, encrypted to Bob, the Subject outside obscured.
    """
    inner = (b'Content-Type: text/plain; charset="us-ascii"; hp="cipher"\r\n'
             b"Date: Sat, 04 Dec 2027 10:00:00 +0000\r\n"
             b"From: Alice <Alice@example.com>\r\nTo: Bob <Bob@example.com>\r\n"
             b"Subject: Handling the Jones contract\r\n"
             b"Message-ID: <jones@example.com>\r\n"
             b"HP-Outer: Date: Sat, 04 Dec 2027 10:00:00 +0000\r\n"
             b"HP-Outer: From: Alice <Alice@example.com>\r\n"
             b"HP-Outer: To: Bob <Bob@example.com>\r\nHP-Outer: Subject: [...]\r\n"
             b"HP-Outer: Message-ID: <jones@example.com>\r\n\r\n"
             b"Please review the Jones contract.\r\n")
    (tmp_path / "inner.eml").write_bytes(inner)
    key, cert = _nss_identity("Alice.p12")
    (tmp_path / "alice.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "alice.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    bob_cert = _nss_identity("Bob.p12")[1]
    (tmp_path / "bob.pem").write_bytes(bob_cert.public_bytes(serialization.Encoding.PEM))
    openssl = require_tool("openssl")
    run([openssl, "cms", "-sign", "-nodetach", "-binary", "-in", tmp_path / "inner.eml",
         "-signer", tmp_path / "alice.pem", "-inkey", tmp_path / "alice.key",
         "-outform", "SMIME", "-out", tmp_path / "signed.eml"])
    run([openssl, "cms", "-encrypt", "-aes256", "-in", tmp_path / "signed.eml",
         "-out", tmp_path / "encrypted.eml", "-from", "Alice <Alice@example.com>",
         "-to", "Bob <Bob@example.com>", "-subject", "[...]", tmp_path / "bob.pem"])
    received = (b"Date: Sat, 04 Dec 2027 10:00:00 +0000\r\nMessage-ID: <jones@example.com>\r\n"
                + smime.canonicalize((tmp_path / "encrypted.eml").read_bytes()))
    assert b"Subject: [...]" in received and b"Jones" not in received

    delivered = bob.deliver(received)
    header = delivered[:delivered.index(b"\r\n\r\n") + 2].decode()
    assert "\r\nSubject: Handling the Jones contract\r\n" in header
    assert "[...]" not in header and "HP-Outer" not in header
    assert header.count("\r\nFrom: ") == 1 and "From: Alice <Alice@example.com>" in header
    assert "X-Cipherd-Info-Header-Protection: hp=cipher; " in header
    assert "X-Cipherd-Info-Layer-2: signed (opaque signed-data); removed" in header
    assert "X-Cipherd-Info-Layer-2-Signer-Trusted-0: True" in header
    assert delivered.endswith(b"Please review the Jones contract.\r\n")


def _wrapped(kind: bytes, der: bytes, outer: bytes) -> bytes:
    return (outer + b"MIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; smime-type="
            + kind + b"; name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(der).replace(b"\n", b"\r\n"))


OUTER = (b"Received: from mx.example.net by gw.example.com\r\n"
         b"Authentication-Results: gw.example.com; dmarc=fail\r\n"
         b"From: Alice@example.com\r\nTo: Bob@example.com\r\nSubject: [...]\r\n")


def _signed_by_alice(entity: bytes) -> bytes:
    key, cert = _nss_identity("Alice.p12")
    return cms.sign(entity, cert, key, signing_time=NOW, detached=False)


def _encrypted_to_bob(entity: bytes) -> bytes:
    return cms.encrypt(entity, [_nss_identity("Bob.p12")[1]])


def test_fields_are_believed_from_a_signed_payload_only_as_far_as_the_signer_goes(
        bob: Bob) -> None:
    entity = (b'Content-Type: text/plain; hp="cipher"\r\nFrom: ceo@example.com\r\n'
              b"Subject: Wire the money today\r\nReceived: from nowhere\r\n"
              b"Authentication-Results: gw.example.com; dmarc=pass\r\n"
              b"HP-Outer: Subject: [...]\r\n\r\n" + TEXT + b"\r\n")
    signed = _wrapped(b"signed-data", _signed_by_alice(entity), b"")
    received = _wrapped(b"enveloped-data", _encrypted_to_bob(signed[signed.index(
        b"Content-Type"):]), OUTER)
    delivered = bob.deliver(received)
    header = delivered[:delivered.index(b"\r\n\r\n") + 2].decode()
    # Alice signed it, but not as the CEO: her From stays; the Subject she
    # signed is shown; the transport's fields are the outer ones only.
    assert "\r\nFrom: Alice@example.com\r\n" in header and "ceo@" not in header
    assert "\r\nSubject: Wire the money today\r\n" in header and "[...]" not in header
    assert "dmarc=fail" in header and "dmarc=pass" not in header
    assert "from nowhere" not in header and "HP-Outer" not in header
    assert ("X-Cipherd-Info-Header-Protection: hp=cipher; shown from inside: Subject; "
            "the From inside is not the signer's address") in header


def test_fields_of_a_layer_around_a_signed_message_are_not_believed(bob: Bob) -> None:
    """
    A message Alice signed, wrapped by someone else in an encryption whose
    entity carries a From and Subject of their choosing: neither is shown,
    and nothing from the wrapping reaches the outside.
    """
    signed = (NSS / "alice.sig.SHA256.opaque.eml").read_bytes()
    inner = signed[signed.index(b"Content-Type"):]
    forged = (b"From: ceo@example.com\r\nSubject: Wire the money today\r\n"
              + inner.replace(b"smime-type=signed-data", b'smime-type=signed-data; hp="cipher"',
                              1))
    received = _wrapped(b"enveloped-data", _encrypted_to_bob(smime.canonicalize(forged)),
                        OUTER)
    opened = bob.open(received)
    assert [layer.kind for layer in opened.layers] == ["enveloped-data", "signed-data"]
    assert opened.layers[1].signature_valid
    delivered = bob.deliver(received)
    header = delivered[:delivered.index(b"\r\n\r\n") + 2].decode()
    assert "ceo@" not in header and "Wire the money" not in header
    assert "\r\nSubject: [...]\r\n" in header
    assert "Header-Protection" not in header  # Alice's own content says no hp


def test_protected_fields_under_an_untrusted_signature_are_not_shown(bob: Bob) -> None:
    stranger = make_user("Alice@example.com", make_ca("Not the NSS test CA"))
    entity = (b'Content-Type: text/plain; hp="clear"\r\nSubject: Believe me\r\n\r\n'
              + TEXT + b"\r\n")
    received = _wrapped(b"signed-data", cms.sign(entity, stranger.cert, stranger.key,
                                                 signing_time=NOW, detached=False), OUTER)
    opened = bob.open(received)
    assert not opened.layers[0].signature_valid
    # Not valid and trusted: the signature stays for the client, whatever
    # S/MIME remove signature says, and nothing is taken from inside.
    assert not opened.removes(True)
    delivered = bob.deliver(received)
    assert smime.classify(delivered).kind == "signed-data"
    assert b"Believe me" not in delivered[:delivered.index(b"\r\n\r\n")]


# A running appliance ----------------------------------------------------------------------


def _send(appliance: Appliance, message: bytes) -> None:
    run([require_tool("swaks"), "--server", f"127.0.0.1:{appliance.smtp_port}",
         "--from", "Alice@example.com", "--to", "Bob@example.com",
         "--helo", "client.example.org", "--data", "-"],
        stdin=message.removesuffix(b"\r\n"))


def _by_file(captured: list[Captured]) -> dict[str, bytes]:
    found = {}
    for message in captured:
        name = re.search(rb"X-Corpus-File: (\S+)", message.content)
        assert name is not None
        found[name.group(1).decode()] = message.content
    return found


@pytest.mark.e2e
def test_a_running_appliance_makes_all_29_readable_for_bob(
        appliance: Appliance, tmp_path: Path) -> None:
    """
    The issue's test: the 29 messages encrypted to Bob, sent with swaks to
    a gateway that holds Bob's key, reach the internal mail server (the
    sink) with Alice's text readable and a block per layer; with S/MIME
    remove signature off, the signatures inside the encryption are kept and
    C{openssl cms -verify} accepts them.
    """
    sink = Sink()
    try:
        api(appliance, "POST", "/admin/password", {"password": NEW_PASSWORD}, password="admin")
        api(appliance, "PATCH", "/mta", {"transports": [
            {"domain": "example.com", "host": "[127.0.0.1]", "port": sink.port}]})
        api(appliance, "POST", "/certificates?store=roots", raw=(NSS / "TestCA.pem").read_bytes())
        api(appliance, "POST", "/certificates?password=nss", raw=(NSS / "Bob.p12").read_bytes())
        api(appliance, "PATCH", "/settings/users/bob@example.com", {"locality": "internal"})
        for name in ENCRYPTED_TO_BOB:
            # Outside every signature: a field on top changes nothing signed.
            _send(appliance, b"X-Corpus-File: " + name.encode() + b"\r\n"
                  + (NSS / name).read_bytes())
        delivered = _by_file(sink.wait_for(len(ENCRYPTED_TO_BOB), timeout=60))
        readable = [name for name, content in delivered.items()
                    if smime.classify(content).kind is None and shows_alices_text(content)]
        assert sorted(readable) == ENCRYPTED_TO_BOB
        for name, content in delivered.items():
            header = content[:content.index(b"\r\n\r\n")]
            blocks = re.findall(rb"^X-Cipherd-Info-Layer-(\d+): ", header, re.MULTILINE)
            assert [int(n) for n in blocks] == list(range(1, len(expected_kinds(name)) + 1))

        api(appliance, "PATCH", "/settings/users/bob@example.com",
            {"smime_remove_signature": False})
        signed_inside = [name for name in ENCRYPTED_TO_BOB
                         if expected_kinds(name)[-1] != "enveloped-data"]
        assert len(signed_inside) == 12
        for name in signed_inside:
            _send(appliance, b"X-Corpus-File: kept-" + name.encode() + b"\r\n"
                  + (NSS / name).read_bytes())
        captured = sink.wait_for(len(ENCRYPTED_TO_BOB) + len(signed_inside), timeout=60)
        kept = {name.removeprefix("kept-"): content
                for name, content in _by_file(captured).items() if name.startswith("kept-")}
        assert sorted(kept) == sorted(signed_inside)
        for name, content in kept.items():
            assert smime.classify(content).kind == expected_kinds(name)[-1], name
            path = tmp_path / name
            path.write_bytes(content)
            verified = run(["openssl", "cms", "-verify", "-purpose", "any", "-in", path,
                            "-CAfile", NSS / "TestCA.pem"])
            assert TEXT in verified.stdout, name
    finally:
        sink.close()
