"""
Incoming PGP for internal recipients (issue 16): the Thunderbird OpenPGP
messages of ../shared/corpus/openpgp/ read as its README says Thunderbird
reads them -- through the gateway's incoming path and over a running
appliance -- and what GnuPG and Sequoia make (PGP/MIME, inline, signed,
compressed, several recipients, RSA and Curve25519) decrypted and verified.

The recipient is Alice, whose secret key the keyring holds; Bob's
certificate is there too, trusted; Carol's is not (as in Thunderbird's
tests).
"""

from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cipherd.pki.pgp import PGPError
from cipherd.pki.smime import canonicalize
from cipherd.smtp.config import apply_changes
from cipherd.testing import result_of
from tests.conftest import Appliance
from tests.openpgp_keys import (
    ALICE_PUB,
    ALICE_SECRET,
    ALICE_SECRET_PP,
    BOB_PUB,
    BOB_SECRET,
    CAROL_REVOKED,
    KEYS,
)
from tests.peers import require_tool, run
from tests.sink import Sink
from tests.test_gateway import RECEIVED, World, pki  # noqa: F401
from tests.test_mta_appliance import NEW_PASSWORD, api

THUNDERBIRD = KEYS.parent
EML = THUNDERBIRD / "eml"
WEBEXT = THUNDERBIRD / "webext"
RNP = THUNDERBIRD / "rnp-data"
ALICE = "alice@openpgp.example"
CALLALOO = "Sundays are nothing without callaloo."

pytestmark = pytest.mark.skipif(
    not EML.is_dir() and os.environ.get("CI") != "true",
    reason="the corpus (../shared/corpus) is not here")


@dataclass(frozen=True)
class Expected:
    """
    What Alice's copy of a corpus message must show.

    @ivar fields: C{X-Cipherd-Info-} fields (without the prefix) and a text
        their value contains.
    @ivar absent: fields that must not be there.
    @ivar text: texts the delivered message shows (decoded).
    @ivar hidden: texts it must not show (still encrypted, or never).
    @ivar as_received: delivered as received, our fields on top.
    """

    fields: dict[str, str] = field(default_factory=dict)
    absent: tuple[str, ...] = ()
    text: tuple[str, ...] = ()
    hidden: tuple[str, ...] = ()
    as_received: bool = False


BOB_TRUSTED = {"Signed": "True", "Signer-0": "Bob Babbage", "Signer-Verified-0": "True",
               "Signer-Trusted-0": "True"}
ALICE_TRUSTED = {"Signed": "True", "Signer-0": "Alice Lovelace", "Signer-Verified-0": "True",
                 "Signer-Trusted-0": "True"}
CAROL_UNKNOWN = {"Signed": "True", "Signer-0": "PGP key B8F2F6F4BD3AD3F82DC446833099FF12",
                 "Signer-Verified-0": "False",
                 "Signer-Reason-0": "B8F2F6F4BD3AD3F82DC446833099FF1238852B9F is not in the "
                                    "keyring"}
DECRYPTED = {"Encrypted": "True", "Decrypted-With": "Alice Lovelace <alice@openpgp.example>; "
             "PGP key EB85BB5FA33A75E15E944E63F231550C4F47E38E, subkey 4766F6B9D5F21EB6"}
NOTHING = Expected(absent=("Encrypted", "Signed", "Error", "Layer-1"))
# Not opened: in a multipart/mixed behind a signature (Thunderbird does
# not decrypt it automatically either).
NOT_AUTOMATIC = Expected(absent=("Encrypted", "Error"), text=("-----BEGIN PGP MESSAGE-----",))

THUNDERBIRD_READS: dict[str, Expected] = {
    "alice-broken-exchange.eml": Expected(
        {**DECRYPTED, "Layer-1-Note": "MS Exchange"}, text=("Test message",)),
    "alice-signed.eml": Expected({**ALICE_TRUSTED, "Layer-1": "inline PGP; 1 cleartext-signed"},
                                 absent=("Encrypted",), text=("can we meet tomorrow?",)),
    "alice-utf.eml": Expected(ALICE_TRUSTED, absent=("Encrypted",), text=("£35.00",)),
    "bob-enc-html-nbsp.eml": Expected(
        {**DECRYPTED, "Layer-1": "inline PGP; 1 decrypted"},
        text=("My real name is not Bob.",), hidden=("BEGIN PGP MESSAGE",)),
    "bob-enc-inline-nbsp-qp.eml": Expected(DECRYPTED, text=("My real name is not Bob.",),
                                           hidden=("BEGIN PGP MESSAGE",)),
    "bob-to-alice-signed-damaged-signature.eml": Expected(
        {"Signer-0": "Bob Babbage", "Signer-Verified-0": "False",
         "Signer-Reason-0": "does not verify", "Layer-1": "PGP signed (PGP/MIME); kept"},
        absent=("Encrypted",)),
    "dual-signed-uncommon-content-type.eml": Expected(
        {"Layer-1": "signed (multipart/signed); kept", "Layer-1-Signer-Verified-0": "False",
         "Layer-2": "PGP signed (PGP/MIME); kept", "Layer-2-Signer-Verified-0": "False"},
        absent=("Encrypted",)),
    "enc-to-carol@pgp.icu-revoked.eml": Expected(
        {"Error": "PGP decryption failed: The message is not encrypted to any of the "
                  "recipients' secret keys (it is for CE934B0AE4EC83FA, 7781AC6531C72CF9)"},
        absent=("Encrypted",), as_received=True),
    "encrypted-and-signed-alice-to-bob-nonascii.eml": Expected(
        {**DECRYPTED, **ALICE_TRUSTED, "Layer-2": "PGP signed (PGP/MIME); removed",
         "Header-Protection": "shown from inside: From, Message-Id, Subject, To"},
        text=("Detta är krypterat!",)),
    "encrypted-to-alice-as-hidden-recipient.eml": Expected(
        {"Encrypted": "True", "Decrypted-With": "subkey 4766F6B9D5F21EB6"}, absent=("Signed",),
        text=("hidden recipient encryption",)),
    "eve-duplicate.eml": NOTHING,
    "forwarded-eml-signed-by-alice.eml": NOTHING,
    "fwd-signed.eml": NOTHING,
    "fwd-unsigned-encrypted.eml": Expected(absent=("Encrypted", "Signed", "Layer-1"),
                                           text=("wrapper message with plain text",)),
    "inline-signed-latin1.eml": Expected(
        {"Signer-0": "PGP key D2A760109A51DFAF3D42BD4C0E27928F241B4D20",
         "Signer-Verified-0": "False"}, absent=("Encrypted",), text=("àèìòù",)),
    "inline-signed-utf8.eml": Expected(
        {"Signer-0": "PGP key D2A760109A51DFAF3D42BD4C0E27928F241B4D20",
         "Signer-Verified-0": "False"}, absent=("Encrypted",), text=("àèìòù",)),
    "inner-smime-sig-in-pgp-encrypted.eml": Expected(DECRYPTED, absent=("Signed", "Error")),
    "multiple-signatures.eml": Expected(absent=("Encrypted", "Signed", "Error"),
                                        text=("hello1", "hello2", "hello3")),
    "openpgp__stripped_sig.eml": Expected(
        {"Error": "PGP verification failed: The OpenPGP signature part holds no signature"},
        absent=("Encrypted", "Signed"), as_received=True),
    "outer-pgp-sig-inner-pgp-enc-sig.eml": Expected(
        {**DECRYPTED, **CAROL_UNKNOWN, "Layer-1": "PGP signed (PGP/MIME); removed",
         "Layer-2": "PGP encrypted (PGP/MIME); decrypted", "Layer-3": "PGP signed"}),
    "outer-pgp-sig-inner-pgp-enc-with-mixed.eml": NOT_AUTOMATIC,
    "outer-pgp-sig-inner-pgp-enc.eml": Expected(
        {**DECRYPTED, "Layer-1": "PGP signed (PGP/MIME); removed"},
        # The signature around the encryption covers no plaintext.
        absent=("Signed",)),
    "outer-smime-bad-sig-inner-pgp-enc-sig-with-mixed.eml": NOT_AUTOMATIC,
    "outer-smime-bad-sig-inner-pgp-enc-sig.eml": Expected(
        {**DECRYPTED, **CAROL_UNKNOWN, "Layer-1": "signed (multipart/signed); removed"}),
    "outer-smime-bad-sig-inner-pgp-enc.eml": Expected(
        {**DECRYPTED, "Layer-1-Signer-Verified-0": "False"}, absent=("Signed",)),
    "partial-encrypt-for-alice-html.eml": Expected(
        {"Encrypted": "Partly", "Layer-1": "inline PGP; 1 decrypted; partly encrypted"},
        text=("Insert a coin to play your personal lucky melody.", "prefix", "suffix")),
    "partial-encrypt-for-alice-plaintext.eml": Expected(
        {"Encrypted": "Partly", "Layer-1": "inline PGP; 1 decrypted; partly encrypted"},
        text=("Insert a coin to play your personal lucky melody.", "prefix", "suffix")),
    "partial-encrypt-for-carol-html.eml": Expected(
        {"Error": "PGP decryption failed: The message is not encrypted to any of the "
                  "recipients' secret keys (it is for B2FD4A8E4FF5B93D)"},
        absent=("Encrypted",), as_received=True),
    "partial-encrypt-for-carol-plaintext.eml": Expected(
        {"Error": "it is for B2FD4A8E4FF5B93D"}, absent=("Encrypted",), as_received=True),
    "signed-by-0x3099ff1238852b9f-encrypted-to-0xf231550c4f47e38e-with-key.eml": Expected(
        {**DECRYPTED, **CAROL_UNKNOWN, "Layer-2": "PGP signed (PGP/MIME); kept"}),
    "signed-by-0x3099ff1238852b9f-encrypted-to-0xf231550c4f47e38e.eml": Expected(
        {**DECRYPTED, **CAROL_UNKNOWN}, text=(CALLALOO,)),
    "signed-by-0x3099ff1238852b9f-to-0xf231550c4f47e38e-unencrypted-with-key.eml": Expected(
        CAROL_UNKNOWN, absent=("Encrypted",)),
    "signed-by-0x3099ff1238852b9f-to-0xf231550c4f47e38e-unencrypted.eml": Expected(
        CAROL_UNKNOWN, absent=("Encrypted",), text=(CALLALOO,)),
    "signed-by-0xfbfcc82a015e7330-encrypted-to-0xf231550c4f47e38e-multi-from.eml": Expected(
        {**DECRYPTED, "Signer-0": "Bob Babbage", "Signer-Verified-0": "True",
         "Signer-Trusted-0": "False", "Signer-Reason-0": "the message has 2 From fields"}),
    "signed-by-0xfbfcc82a015e7330-encrypted-to-0xf231550c4f47e38e-with-key.eml": Expected(
        {**DECRYPTED, **BOB_TRUSTED}),
    "signed-by-0xfbfcc82a015e7330-encrypted-to-0xf231550c4f47e38e.eml": Expected(
        {**DECRYPTED, **BOB_TRUSTED, "Layer-2": "PGP signed (PGP/MIME); removed"},
        text=(CALLALOO,), hidden=("BEGIN PGP",)),
    "signed-by-0xfbfcc82a015e7330-to-0xf231550c4f47e38e-unencrypted-in-mixed.eml": Expected(
        absent=("Encrypted", "Signed", "Error")),
    "signed-by-0xfbfcc82a015e7330-to-0xf231550c4f47e38e-unencrypted-with-key.eml": Expected(
        BOB_TRUSTED, absent=("Encrypted",)),
    "signed-by-0xfbfcc82a015e7330-to-0xf231550c4f47e38e-unencrypted.eml": Expected(
        {**BOB_TRUSTED, "Layer-1": "PGP signed (PGP/MIME); removed"}, absent=("Encrypted",),
        text=(CALLALOO,), hidden=("BEGIN PGP SIGNATURE",)),
    "signed-encrypted-autocrypt-gossip.eml": Expected(
        {**DECRYPTED, **BOB_TRUSTED, "Layer-1": "PGP encrypted (PGP/MIME); decrypted; "
         "signed inside"}),
    "signed-inline-indented.eml": Expected(ALICE_TRUSTED, absent=("Encrypted",),
                                           text=("indent test with £",)),
    "signed-mismatch-email-date.eml": Expected(
        {"Signer-0": "Bob Babbage", "Signer-Verified-0": "True", "Signer-Trusted-0": "False",
         "Signer-Reason-0": "the signature was made on 2020-10-14 18:21 UTC, the message's "
                            "Date is 2019-10-14"}, absent=("Encrypted",)),
    "signed-with-mailman-footer.eml": Expected(absent=("Encrypted", "Signed")),
    "sigspoof-git-commit.eml": Expected(
        {"Error": "PGP decryption failed: The OpenPGP data is not an encrypted message"},
        absent=("Encrypted",), as_received=True),
    "unob-signed-by-0x3099ff1238852b9f-to-0xf231550c4f47e38e.eml": NOTHING,
    "unrelated-and-fake-keys-attached.eml": NOTHING,
    "unsigned-encrypted-to-0xf231550c4f47e38e-from-0x3099ff1238852b9f-with-key.eml": Expected(
        DECRYPTED, absent=("Signed",)),
    "unsigned-encrypted-to-0xf231550c4f47e38e-from-0x3099ff1238852b9f.eml": Expected(
        DECRYPTED, absent=("Signed",), text=(CALLALOO,)),
    "unsigned-encrypted-to-0xf231550c4f47e38e-from-0xfbfcc82a015e7330-with-key.eml": Expected(
        DECRYPTED, absent=("Signed",)),
    "unsigned-encrypted-to-0xf231550c4f47e38e-from-0xfbfcc82a015e7330.eml": Expected(
        DECRYPTED, absent=("Signed",), text=(CALLALOO,)),
    "unsigned-unencrypted-0x3099ff1238852b9f-autocrypt.eml": NOTHING,
    "unsigned-unencrypted-from-bob-to-alice.eml": NOTHING,
    "unsigned-unencrypted-key-0x1f10171bfb881b1c-attached.eml": NOTHING,
    "webext/encryptedNestedMessages.eml": Expected(DECRYPTED, text=("yellowPixel.png",)),
    "webext/msg-with-enc-openpgp-attachment.eml": Expected(
        {"Encrypted": "Partly", "Layer-1": "inline PGP; 1 decrypted"},
        text=("Unicorn-Party", 'filename="encrypted-attachment.txt"')),
    "webext/msg-with-enc-openpgp-inline.eml": Expected(
        DECRYPTED, text=("Somewhere over the rainbow",)),
}


def corpus_file(name: str) -> Path:
    return WEBEXT / name.removeprefix("webext/") if name.startswith("webext/") else EML / name


def test_the_table_covers_the_corpus() -> None:
    assert sorted(THUNDERBIRD_READS) == sorted(
        [p.name for p in EML.glob("*.eml")] + [f"webext/{p.name}" for p in WEBEXT.glob("*.eml")])


def received(name: str) -> bytes:
    """
    A corpus message as a mail server would pass it on: CRLF, without the
    mbox C{From } line some files start with.
    """
    data = corpus_file(name).read_bytes()
    if data.startswith(b"From "):
        data = data.partition(b"\n")[2]
    return canonicalize(data)


def info(delivered: bytes) -> dict[str, str]:
    head = delivered[:delivered.index(b"\r\n\r\n")].decode("utf-8", "replace")
    head = re.sub(r"\r\n[ \t]+", " ", head).replace("\r\n", "\n")
    return {name[len("X-Cipherd-Info-"):]: value for name, value in
            re.findall(r"^(X-Cipherd-Info-[\w-]+): (.*)$", head, re.MULTILINE)}


def shown(delivered: bytes) -> str:
    """
    What a reader's client shows of a message: every part decoded, and
    each part's header fields (attachment names).
    """
    parsed = email.message_from_bytes(delivered, policy=email.policy.compat32)
    texts = []
    for part in parsed.walk():
        texts.append(str(part.get("Content-Disposition", "")))
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            charset = part.get_content_charset() or "utf-8"
            try:
                texts.append(payload.decode(charset, "replace"))
            except LookupError:
                texts.append(payload.decode("utf-8", "replace"))
    # Folded lines as one, for texts split over a line end.
    return "\n".join(texts).replace("=\n", "")


def check(name: str, sent: bytes, delivered: bytes) -> None:
    expected = THUNDERBIRD_READS[name]
    found = info(delivered)
    for key, value in expected.fields.items():
        assert key in found, (name, key, found)
        assert value in found[key], (name, key, found[key])
    for key in expected.absent:
        assert key not in found, (name, key, found)
    text = shown(delivered)
    for wanted in expected.text:
        assert wanted in text, (name, wanted, text[:3000])
    for unwanted in expected.hidden:
        assert unwanted not in text, (name, unwanted)
    if expected.as_received:
        assert delivered.endswith(sent.partition(b"\r\n\r\n")[2]), name


# Through the gateway's incoming path ------------------------------------------------

@pytest.fixture
def alices_world(pki: dict[str, Any]) -> World:  # noqa: F811
    world = World(pki)
    world.config, errors = apply_changes(world.config, {
        "relay_domains": ["example.com", "openpgp.example", "pgp.icu"]})
    assert not errors
    result_of(world.keyring.import_keys(ALICE_SECRET_PP.read_bytes(),
                                        passphrase="alice-passphrase"))
    result_of(world.keyring.import_keys(BOB_PUB.read_bytes()))
    return world


@pytest.mark.parametrize("name", sorted(THUNDERBIRD_READS))
def test_alice_reads_the_thunderbird_corpus_as_thunderbird_does(
        alices_world: World, name: str) -> None:
    sent = received(name)
    parts = alices_world.process(ALICE, content=sent, sender="bob@openpgp.example")
    check(name, sent, parts[(ALICE,)].content)


def test_a_revoked_key_still_decrypts_what_was_sent_to_it(alices_world: World) -> None:
    """
    Carol's key was revoked after the message was sent: she still reads it
    (as Thunderbird does); its signer, not in the keyring, is unknown.
    """
    result_of(alices_world.keyring.import_keys(CAROL_REVOKED.read_bytes()))
    sent = received("enc-to-carol@pgp.icu-revoked.eml")
    parts = alices_world.process("carol@pgp.icu", content=sent)
    found = info(parts[("carol@pgp.icu",)].content)
    assert found["Encrypted"] == "True"
    assert "subkey 7781AC6531C72CF9" in found["Decrypted-With"]
    assert "1422E161826FC2A2 is not in the keyring" in found["Signer-Reason-0"]
    assert "billie-jean" in shown(parts[("carol@pgp.icu",)].content)


def test_an_encrypted_binary_attachment_is_decrypted_byte_for_byte(
        alices_world: World) -> None:
    result_of(alices_world.keyring.import_keys(BOB_SECRET.read_bytes()))
    attached = (RNP / "bluebird50.jpg.gpg").read_bytes()
    message = (b"From: alice@openpgp.example\r\nTo: bob@openpgp.example\r\nSubject: bird\r\n"
               b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
               b"--b1\r\nContent-Type: text/plain\r\n\r\nA bird.\r\n--b1\r\n"
               b"Content-Type: application/octet-stream; name=bluebird50.jpg.gpg\r\n"
               b"Content-Disposition: attachment; filename=bluebird50.jpg.gpg\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\n"
               + base64.encodebytes(attached).replace(b"\n", b"\r\n") + b"--b1--\r\n")
    parts = alices_world.process("bob@openpgp.example", content=message,
                                 sender=ALICE)
    delivered = parts[("bob@openpgp.example",)].content
    parsed = email.message_from_bytes(delivered, policy=email.policy.compat32)
    (picture,) = [p for p in parsed.walk() if p.get_filename() == "bluebird50.jpg"]
    assert picture.get_content_type() == "image/jpeg"
    assert picture.get_payload(decode=True) == (RNP / "bluebird50.jpg").read_bytes()
    assert info(delivered)["Layer-1"] == "inline PGP; 1 decrypted; partly encrypted"


# What GnuPG and Sequoia make -------------------------------------------------------

class Peers:
    """
    GnuPG (with Bob's secret key and Alice's certificate) and Sequoia.
    """

    def __init__(self, home: Path) -> None:
        self.gpg = require_tool("gpg")
        self.sq = require_tool("sq")
        home.mkdir(mode=0o700, exist_ok=True)
        self.env = dict(os.environ, GNUPGHOME=str(home))
        run([self.gpg, "--batch", "--import", BOB_SECRET, ALICE_PUB], env=self.env)

    def gpg_run(self, *args: str, data: bytes) -> bytes:
        return run([self.gpg, "--batch", "--yes", "--trust-model", "always", *args],
                   stdin=data, env=self.env).stdout


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Peers]:
    yield Peers(tmp_path / "gnupg")


MIME_BODY = ("Content-Type: multipart/mixed; boundary=inner\r\n\r\n--inner\r\n"
             "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
             "\r\nGrüße aus Köln. " + "x" * 2000 + "\r\n--inner\r\n"
             "Content-Type: application/octet-stream; name=data.bin\r\n"
             "Content-Transfer-Encoding: base64\r\n\r\nAAECA//+/fz7\r\n--inner--\r\n").encode()


def _pgp_mime(armored: bytes, subject: str = "from a peer") -> bytes:
    return (b"From: Bob Babbage <bob@openpgp.example>\r\nTo: alice@openpgp.example\r\n"
            b"Subject: " + subject.encode() + b"\r\nDate: " + _date() + b"\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/encrypted; "
            b'protocol="application/pgp-encrypted"; boundary=outer\r\n\r\n--outer\r\n'
            b"Content-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n--outer\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + canonicalize(armored)
            + b"\r\n--outer--\r\n")


def _date() -> bytes:
    return email.utils.format_datetime(datetime.now(UTC)).encode()


@pytest.mark.parametrize("compress", ["zlib", "none"])
def test_pgp_mime_signed_and_encrypted_by_gpg_to_alice_and_bob(
        alices_world: World, peers: Peers, compress: str) -> None:
    armored = peers.gpg_run("--armor", "--sign", "--encrypt", "--local-user", "bob@openpgp.example",
                        "--recipient", ALICE, "--recipient", "bob@openpgp.example",
                        "--compress-algo", compress, data=MIME_BODY)
    parts = alices_world.process(ALICE, content=_pgp_mime(armored), sender="bob@openpgp.example")
    delivered = parts[(ALICE,)].content
    found = info(delivered)
    assert found["Encrypted"] == "True"
    assert found["Signer-Trusted-0"] == "True" and "Bob Babbage" in found["Signer-0"], str(found)
    assert "Grüße aus Köln. " + "x" * 2000 in shown(delivered)
    parsed = email.message_from_bytes(delivered, policy=email.policy.compat32)
    (attachment,) = [p for p in parsed.walk() if p.get_filename() == "data.bin"]
    assert attachment.get_payload(decode=True) == bytes.fromhex("00010203fffefdfcfb")


def test_pgp_mime_signed_by_gpg_lf_only_and_inline_encrypted_by_sq(
        alices_world: World, peers: Peers, tmp_path: Path) -> None:
    # A detached signature over the CRLF part, the message then sent LF-only.
    entity = b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + "Grüße\r\n".encode() * 3
    signature = peers.gpg_run("--armor", "--detach-sign", "--local-user", "bob@openpgp.example",
                          data=entity)
    signed = (b"From: bob@openpgp.example\r\nTo: alice@openpgp.example\r\nDate: " + _date()
              + b"\r\nSubject: signed\r\nMIME-Version: 1.0\r\nContent-Type: multipart/signed; "
              b'micalg=pgp-sha256; protocol="application/pgp-signature"; boundary=s\r\n\r\n'
              b"--s\r\n" + entity + b"\r\n--s\r\nContent-Type: application/pgp-signature\r\n\r\n"
              + canonicalize(signature) + b"\r\n--s--\r\n")
    parts = alices_world.process(ALICE, content=signed.replace(b"\r\n", b"\n"),
                                 sender="bob@openpgp.example")
    found = info(parts[(ALICE,)].content)
    assert found["Signer-Verified-0"] == "True" and found["Signer-Trusted-0"] == "True"

    # Sequoia's sq encrypts (to Alice's Curve25519 key) for an inline body.
    armored = run([peers.sq, "encrypt", "--recipient-cert", ALICE_PUB],
                  stdin=b"Somewhere over the rainbow, long line: " + b"y" * 3000).stdout
    inline = (b"From: someone@elsewhere.example\r\nTo: alice@openpgp.example\r\n"
              b"Subject: inline\r\nContent-Type: text/plain\r\n\r\nHello,\r\n\r\n"
              + canonicalize(armored) + b"\r\nBye.\r\n")
    parts = alices_world.process(ALICE, content=inline, sender="someone@elsewhere.example")
    delivered = parts[(ALICE,)].content
    assert info(delivered)["Encrypted"].startswith("Partly")
    assert "Somewhere over the rainbow, long line: " + "y" * 3000 in shown(delivered)


def test_sq_signs_with_rsa_and_encrypts_to_curve25519_and_rsa(
        alices_world: World, peers: Peers, tmp_path: Path) -> None:
    """
    Sequoia's C{sq} signs with Bob's RSA key and encrypts to Alice's
    Curve25519 and Bob's RSA keys in one OpenPGP message (sq 0.27 makes v4
    keys and messages only: neither peer here makes v6).
    """
    recipients = tmp_path / "recipients.pgp"
    recipients.write_bytes(ALICE_PUB.read_bytes() + BOB_PUB.read_bytes())
    armored = run([peers.sq, "encrypt", "--recipient-cert", recipients, "--signer-key",
                   BOB_SECRET], stdin=MIME_BODY).stdout
    parts = alices_world.process(ALICE, content=_pgp_mime(armored), sender="bob@openpgp.example")
    delivered = parts[(ALICE,)].content
    found = info(delivered)
    assert found["Encrypted"] == "True"
    assert found["Layer-1"] == "PGP encrypted (PGP/MIME); decrypted; signed inside"
    assert found["Signer-Trusted-0"] == "True"
    assert "Grüße aus Köln." in shown(delivered)


# Over a running appliance ---------------------------------------------------------

def _send(appliance: Appliance, message: bytes, recipient: str) -> None:
    run([require_tool("swaks"), "--server", f"127.0.0.1:{appliance.smtp_port}",
         "--from", "bob@openpgp.example", "--to", recipient,
         "--helo", "client.example.org", "--data", "-"],
        stdin=message.removesuffix(b"\r\n"))


@pytest.mark.e2e
def test_a_running_appliance_reads_the_thunderbird_corpus_for_alice(
        appliance: Appliance) -> None:
    """
    The issue's test: every Thunderbird OpenPGP message, sent with swaks to
    Alice at a gateway whose keyring holds her secret key (imported through
    the API with its passphrase) and Bob's certificate, reaches her mail
    server (the sink) as the table says Thunderbird reads it.
    """
    sink = Sink()
    try:
        api(appliance, "POST", "/admin/password", {"password": NEW_PASSWORD}, password="admin")
        api(appliance, "PATCH", "/mta", {"transports": [
            {"domain": "openpgp.example", "host": "[127.0.0.1]", "port": sink.port}]})
        api(appliance, "PATCH", "/settings/domains/openpgp.example", {"locality": "internal"})
        api(appliance, "POST", "/pgp/keys?password=alice-passphrase",
            raw=ALICE_SECRET_PP.read_bytes())
        api(appliance, "POST", "/pgp/keys", raw=BOB_PUB.read_bytes())
        names = sorted(THUNDERBIRD_READS)
        sent = {}
        for name in names:
            sent[name] = received(name)
            # Outside every signature: a field on top changes nothing signed.
            _send(appliance, b"X-Corpus-File: " + name.encode() + b"\r\n" + sent[name], ALICE)
        captured = sink.wait_for(len(names), timeout=90)
        by_file = {}
        for message in captured:
            found = re.search(rb"X-Corpus-File: (\S+)", message.content)
            assert found is not None
            by_file[found.group(1).decode()] = message.content
        assert sorted(by_file) == names
        for name in names:
            check(name, sent[name], by_file[name])
        log = appliance.wait_for_log("mpa", "incoming PGP: 1: pgp-encrypted decrypted, signed "
                                     "trusted", 5)
        assert log
    finally:
        sink.close()


def test_a_message_of_many_blocks_opens_a_bounded_number(alices_world: World) -> None:
    block = received("webext/msg-with-enc-openpgp-inline.eml").partition(b"\r\n\r\n")[2]
    many = (b"From: bob@openpgp.example\r\nTo: alice@openpgp.example\r\nSubject: many\r\n"
            b"Content-Type: text/plain\r\n\r\n" + block * 40)
    parts = alices_world.process(ALICE, content=many, sender="bob@openpgp.example")
    delivered = parts[(ALICE,)].content
    found = info(delivered)
    assert found["Layer-1"].startswith("inline PGP; 16 decrypted")
    assert "more than 16 PGP blocks: the rest is not opened" in found["Error"]
    assert shown(delivered).count("Somewhere over the rainbow") == 16


def test_another_internal_recipient_does_not_read_what_was_encrypted_to_alice(
        alices_world: World) -> None:
    sent = received("unsigned-encrypted-to-0xf231550c4f47e38e-from-0xfbfcc82a015e7330.eml")
    parts = alices_world.process(ALICE, "eve@openpgp.example", content=sent,
                                 sender="bob@openpgp.example")
    assert CALLALOO in shown(parts[(ALICE,)].content)
    eves = parts[("eve@openpgp.example",)].content
    assert CALLALOO not in shown(eves)
    assert eves.endswith(sent.partition(b"\r\n\r\n")[2])
    assert info(eves)["Error"].startswith("PGP decryption failed: None of the recipients "
                                          "has a PGP secret key")


def _alices_signed_text() -> str:
    body = received("alice-signed.eml").partition(b"\r\n\r\n")[2].decode("latin-1")
    start = body.index("-----BEGIN PGP SIGNED MESSAGE-----")
    return body[start:body.index("-----END PGP SIGNATURE-----") + 27]


@pytest.mark.parametrize("shape", ["around", "alternative", "hidden-in-html"])
def test_a_cleartext_signature_speaks_only_for_all_the_reader_sees(
        alices_world: World, shape: str) -> None:
    """
    Alice's signed block with someone else's text around it, beside an HTML
    alternative that says something else, or hidden in HTML: the summary
    does not call the message signed.
    """
    block = _alices_signed_text()
    head = ("From: alice@openpgp.example\r\nTo: alice@openpgp.example\r\nSubject: x\r\n"
            "MIME-Version: 1.0\r\n")
    if shape == "around":
        message = (head + "Content-Type: text/plain; charset=iso-8859-1\r\n\r\n"
                   "Please wire the money to the account below.\r\n" + block
                   + "\r\nAccount 123.\r\n")
    elif shape == "alternative":
        message = (head + "Content-Type: multipart/alternative; boundary=a\r\n\r\n--a\r\n"
                   "Content-Type: text/plain; charset=iso-8859-1\r\n\r\n" + block
                   + "\r\n--a\r\nContent-Type: text/html\r\n\r\n<p>Wire the money.</p>\r\n"
                   "--a--\r\n")
    else:
        message = (head + "Content-Type: text/html; charset=iso-8859-1\r\n\r\n"
                   "<p>Wire the money.</p><div style='display:none'><pre>" + block
                   + "</pre></div>\r\n")
    parts = alices_world.process(ALICE, content=message.encode("latin-1"),
                                 sender="alice@openpgp.example")
    found = info(parts[(ALICE,)].content)
    assert "Signed" not in found and "Signer-0" not in found, found
    if shape == "hidden-in-html":
        assert "Layer-1" not in found  # not checked at all
    else:
        assert found["Layer-1"].endswith("text beside the signed blocks is not signed")
        assert found["Layer-1-Signer-Verified-0"] == "True"


def test_unterminated_armor_is_read_in_one_pass(alices_world: World) -> None:
    message = (b"From: bob@openpgp.example\r\nTo: alice@openpgp.example\r\nSubject: x\r\n"
               b"Content-Type: text/plain\r\n\r\n"
               + b"-----BEGIN PGP MESSAGE-----\r\n" * 8000
               + b"-----BEGIN PGP SIGNED MESSAGE-----\r\n" * 8000)
    parts = alices_world.process(ALICE, content=message, sender="bob@openpgp.example")
    assert "Layer-1" not in info(parts[(ALICE,)].content)


@pytest.mark.parametrize(("sender", "why"), [
    (b"From: ceo at openpgp.example", "the message's From field has no address"),
    # Decoded, the display name is an address too: which is meant is unclear.
    (b"From: =?utf-8?q?bob=40openpgp=2Eexample?= <ceo@openpgp.example>",
     "the message's From field has 2 addresses"),
    (b"From: bob@openpgp.example, ceo@openpgp.example",
     "the message's From field has 2 addresses"),
    (b"X-Padding: " + b"x" * 70_000 + b"\r\nFrom: ceo@openpgp.example",
     "the From address ceo@openpgp.example is not an address of the signer's key"),
])
def test_a_signer_is_trusted_only_for_the_one_from_address_of_its_key(
        alices_world: World, sender: bytes, why: str) -> None:
    sent = received("signed-by-0xfbfcc82a015e7330-to-0xf231550c4f47e38e-unencrypted.eml")
    forged = re.sub(rb"(?m)^From: .*$", lambda _: sender, sent, count=1)
    assert forged != sent
    parts = alices_world.process(ALICE, content=forged, sender="bob@openpgp.example")
    found = info(parts[(ALICE,)].content)
    assert (found["Signer-Verified-0"], found["Signer-Trusted-0"]) == ("True", "False")
    assert found["Signer-Reason-0"] == why


def test_a_compressed_bomb_is_refused_at_the_bound(peers: Peers) -> None:
    """
    Eight megabytes of zeros compress to a few kilobytes: decrypted with a
    bound of one megabyte, refused without being read whole.
    """
    from cipherd.pki.pgp import SequoiaOpenPGP, _decrypt_bounded
    bomb = peers.gpg_run("--encrypt", "--recipient", ALICE, "--compress-algo", "zlib",
                         data=bytes(8 * 1024 * 1024))
    assert len(bomb) < 64 * 1024
    openpgp = SequoiaOpenPGP()
    (alice,) = openpgp.read_keys(ALICE_SECRET.read_bytes())
    decryptor = openpgp.decryptor(alice, None)
    with pytest.raises(PGPError, match="the decrypted message is larger than 1 MiB"):
        _decrypt_bounded(bomb, decryptor.sequoia, None, limit=1024 * 1024)
    assert len(_decrypt_bounded(bomb, decryptor.sequoia, None, limit=16 * 1024 * 1024
                                ).bytes) == 8 * 1024 * 1024


def test_parts_nested_deeper_than_the_parser_goes_are_delivered_as_received(
        alices_world: World) -> None:
    depth = 1200
    message = (b"From: bob@openpgp.example\r\nTo: alice@openpgp.example\r\nSubject: deep\r\n"
               b"MIME-Version: 1.0\r\n"
               + b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (n, n)
                          for n in range(depth))
               + b"Content-Type: text/plain\r\n\r\napplication/pgp-encrypted -----BEGIN PGP "
                 b"MESSAGE-----\r\n"
               + b"".join(b"--b%d--\r\n" % n for n in reversed(range(depth))))
    parts = alices_world.process(ALICE, content=message, sender="bob@openpgp.example")
    delivered = parts[(ALICE,)].content
    assert delivered.endswith(message.partition(b"\r\n\r\n")[2])
