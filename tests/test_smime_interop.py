"""
S/MIME interoperability of C{cipherd.pki.cms} and C{cipherd.pki.smime} with
independent peers, in both directions:

* what cipherd signs and encrypts, C{openssl cms}/C{openssl smime} and
  C{gpgsm} verify and decrypt (gpgsm: no GCM, no OAEP, DER only);
* what they produce (every cipher, OAEP, subject key identifiers, SHA-512,
  PSS, opaque and detached, gpgsm's indefinite-length BER), cipherd decrypts
  and verifies;
* real-client messages from the corpus (Thunderbird/NSS, OpenSSL for
  Thunderbird's OAEP tests, a Thunderbird 24 clear-signed message);
* failures: each gives one of our PKIError subclasses with a reason that
  names the cause, and nothing else escapes.

Trust (expiry, revocation, the CTL) is C{cipherd.pki.trust}'s and is tested
there; here only the cryptography is.

The messages carry 8-bit UTF-8 text, a binary attachment, a line longer than
998 characters (RFC 5322 §2.1.1), and come with LF and with CRLF line ends.
"""

from __future__ import annotations

import base64
import email.policy
import functools
import hashlib
import os
import random
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import cms as asn1_cms
from asn1crypto import core as asn1_core
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x448, x25519
from cryptography.hazmat.primitives.serialization import pkcs12

from cipherd.pki import cms, smime
from cipherd.pki.errors import (
    CMSFormatError,
    DecryptionFailed,
    DecryptionKeyNotFound,
    PKIError,
    UnsupportedAlgorithm,
)
from cipherd.pki.trust import Purpose, usage_problem
from tests.peers import (
    GpgSM,
    Identity,
    OpenSSL,
    TestPKI,
    _write_identity,
    content_type,
    gpgsm_session,
    make_pki,
    make_user_certificate,
    multipart_signed_parts,
    pkcs7_mime_der,
    run,
)

NOW = datetime.now(UTC).replace(microsecond=0)
MAX_LINE = 998  # RFC 5322 §2.1.1

# Messages ---------------------------------------------------------------------------

TEXT = (
    "Grüße aus Köln! Ça va? Ελληνικά, 日本語, emoji 📎\n"
    "Trailing spaces stay   \n"
    "From the start of a line (no mbox quoting, please)\n"
    ".A line that starts with a dot\n"
    + "".join(f"{i:04d}," for i in range(300))  # 1500 characters, nowhere to fold
    + "\nThe last line.\n"
)
TEXT_BODY = TEXT.replace("\n", "\r\n").encode()
ATTACHMENT = random.Random(8551).randbytes(20_000)
MIXED_BOUNDARY = b"mixed-boundary-8551"


def _base64_lines(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return b"".join(encoded[i:i + 76] + b"\r\n" for i in range(0, len(encoded), 76))


TEXT_ENTITY = (
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n\r\n" + TEXT_BODY
)
MIXED_ENTITY = (
    b'Content-Type: multipart/mixed; boundary="' + MIXED_BOUNDARY + b'"\r\n\r\n'
    b"This is a multi-part message in MIME format.\r\n"
    b"--" + MIXED_BOUNDARY + b"\r\n" + TEXT_ENTITY + b"\r\n"
    b"--" + MIXED_BOUNDARY + b"\r\n"
    b"Content-Type: application/octet-stream; name=random.bin\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=random.bin\r\n\r\n"
    + _base64_lines(ATTACHMENT)
    + b"\r\n--" + MIXED_BOUNDARY + b"--\r\n"
)
# The MIME entities, canonical (CRLF): what must come back.
ENTITIES = {"text": TEXT_ENTITY, "mixed": MIXED_ENTITY}
# The leaf parts, decoded: what must come back when an entity was re-encoded.
LEAVES = {
    "text": [("text/plain", TEXT_BODY)],
    "mixed": [("text/plain", TEXT_BODY), ("application/octet-stream", ATTACHMENT)],
}
OUTER = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: Interop =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    b"Date: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <interop-8551@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
)
MESSAGES = [("text", "crlf"), ("text", "lf"), ("mixed", "crlf"), ("mixed", "lf")]
MESSAGE_IDS = [f"{kind}-{eol}" for kind, eol in MESSAGES]

# Arbitrary bytes for the CMS layer, which must not touch them.
CONTENT = MIXED_ENTITY + b"bare LF\nbare CR\r8-bit \xff\xfe\x00" + ATTACHMENT[:3000]


def with_eol(data: bytes, eol: str) -> bytes:
    return data if eol == "crlf" else data.replace(b"\r\n", b"\n")


def message(kind: str, eol: str) -> bytes:
    """
    A whole RFC 5322 message with the entity C{kind}, with C{eol} line ends.
    """
    return with_eol(OUTER + ENTITIES[kind], eol)


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def leaves(entity: bytes) -> list[tuple[str, bytes]]:
    """
    The decoded leaf parts of a MIME entity, in order.
    """
    parsed = BytesParser(policy=email.policy.default).parsebytes(crlf(entity))
    return [(part.get_content_type(), part.get_payload(decode=True))
            for part in parsed.walk() if not part.is_multipart()]


def assert_outer_headers_kept(message_bytes: bytes) -> None:
    head = crlf(message_bytes).split(b"\r\n\r\n", 1)[0]
    for field in OUTER.split(b"\r\n")[:-1]:
        assert field in head, f"{field!r} is missing from the headers:\n{head.decode()}"


def assert_seven_bit(message_bytes: bytes) -> None:
    """
    RFC 8551 §3.1.2: a multipart/signed message must survive 7-bit
    transports untouched.
    """
    message_bytes.decode("ascii")
    longest = max(len(line) for line in message_bytes.split(b"\r\n"))
    assert longest <= MAX_LINE, f"a line of {longest} characters"


def reasons(result: cms.VerifiedContent) -> list[str]:
    return [s.reason for s in result.signers]


def identity(pki: TestPKI, name: str) -> Identity:
    who: Identity = getattr(pki, name)
    return who


# Fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_pki(tmp_path_factory.mktemp("pki"), NOW)


@pytest.fixture(scope="module")
def openssl(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> OpenSSL:
    return OpenSSL(tmp_path_factory.mktemp("openssl"), pki)


@pytest.fixture(scope="module")
def gpgsm(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpgSM]:
    yield from gpgsm_session(tmp_path_factory.mktemp("gnupg"), pki)


# cipherd -> openssl ----------------------------------------------------------------------

SIGNER_CELLS = [("alice", "sha256"), ("alice", "sha384"), ("alice", "sha512"),
                ("carol", "sha256"), ("carol", "sha512")]
SIGNER_IDS = [f"{'rsa' if s == 'alice' else 'ec'}-{d}" for s, d in SIGNER_CELLS]
ENCRYPTION_CELLS = [(c, oaep) for c in cms.ENCRYPTION_CIPHERS for oaep in (False, True)]
ENCRYPTION_IDS = [f"{c}-{'oaep' if oaep else 'pkcs1'}" for c, oaep in ENCRYPTION_CELLS]


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
@pytest.mark.parametrize(("signer", "digest"), SIGNER_CELLS, ids=SIGNER_IDS)
def test_openssl_verifies_our_cms_signature(
    pki: TestPKI, openssl: OpenSSL, signer: str, digest: str, detached: bool
) -> None:
    who = identity(pki, signer)
    signature = cms.sign(CONTENT, who.cert, who.key, signing_time=NOW, detached=detached,
                         digest=digest)
    assert openssl.cms_verify(signature, CONTENT if detached else None) == CONTENT


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
def test_openssl_verifies_our_cms_signature_with_chain(
    pki: TestPKI, openssl: OpenSSL, detached: bool
) -> None:
    signature = cms.sign(CONTENT, pki.alice.cert, pki.alice.key, signing_time=NOW,
                         detached=detached, chain=[pki.ca.cert])
    assert openssl.cms_verify(signature, CONTENT if detached else None) == CONTENT
    result = cms.verify(signature, CONTENT if detached else None)
    assert result.all_valid, reasons(result)
    assert set(result.certificates) == {pki.alice.cert, pki.ca.cert}


@pytest.mark.parametrize(("cipher", "oaep"), ENCRYPTION_CELLS, ids=ENCRYPTION_IDS)
def test_openssl_decrypts_our_cms_encryption(
    pki: TestPKI, openssl: OpenSSL, cipher: str, oaep: bool
) -> None:
    encrypted = cms.encrypt(CONTENT, [pki.alice.cert, pki.bob.cert], cipher=cipher, oaep=oaep)
    assert openssl.cms_decrypt(encrypted, pki.alice) == CONTENT
    assert openssl.cms_decrypt(encrypted, pki.bob) == CONTENT


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
@pytest.mark.parametrize(("kind", "eol"), MESSAGES, ids=MESSAGE_IDS)
def test_openssl_verifies_our_signed_message(
    pki: TestPKI, openssl: OpenSSL, kind: str, eol: str, detached: bool
) -> None:
    signed = smime.sign_message(message(kind, eol), pki.alice.cert, pki.alice.key,
                                signing_time=NOW, detached=detached)
    assert_outer_headers_kept(signed)
    if detached:
        assert content_type(signed)[0] == "multipart/signed"
        assert_seven_bit(signed)
    else:
        assert content_type(signed)[1]["smime-type"] == "signed-data"
    entity = openssl.smime_verify(signed)
    assert leaves(entity) == LEAVES[kind]
    if not detached:
        assert crlf(entity) == ENTITIES[kind]


@pytest.mark.parametrize(("cipher", "oaep"), ENCRYPTION_CELLS, ids=ENCRYPTION_IDS)
@pytest.mark.parametrize(("kind", "eol"), MESSAGES, ids=MESSAGE_IDS)
def test_openssl_decrypts_our_encrypted_message(
    pki: TestPKI, openssl: OpenSSL, kind: str, eol: str, cipher: str, oaep: bool
) -> None:
    encrypted = smime.encrypt_message(message(kind, eol), [pki.alice.cert], cipher=cipher,
                                      oaep=oaep)
    assert_outer_headers_kept(encrypted)
    expected_type = "authEnveloped-data" if cipher.endswith("gcm") else "enveloped-data"
    assert content_type(encrypted)[1]["smime-type"] == expected_type
    assert openssl.smime_decrypt(encrypted, pki.alice, oaep=oaep) == ENTITIES[kind]


# cipherd -> gpgsm ---------------------------------------------------------------------------

GPGSM_SIGNERS = ["alice", "carol"]
GPGSM_SIGNER_IDS = ["rsa", "ec"]


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
@pytest.mark.parametrize("signer", GPGSM_SIGNERS, ids=GPGSM_SIGNER_IDS)
def test_gpgsm_verifies_our_cms_signature(
    pki: TestPKI, gpgsm: GpgSM, signer: str, detached: bool
) -> None:
    who = identity(pki, signer)
    signature = cms.sign(CONTENT, who.cert, who.key, signing_time=NOW, detached=detached)
    assert gpgsm.verify(signature, CONTENT if detached else None) == CONTENT


def test_gpgsm_verifies_our_cms_signature_with_chain(pki: TestPKI, gpgsm: GpgSM) -> None:
    signature = cms.sign(CONTENT, pki.alice.cert, pki.alice.key, signing_time=NOW,
                         chain=[pki.ca.cert])
    assert gpgsm.verify(signature, CONTENT) == CONTENT


@pytest.mark.parametrize("cipher", ["aes128_cbc", "aes256_cbc"])
def test_gpgsm_decrypts_our_cms_encryption(pki: TestPKI, gpgsm: GpgSM, cipher: str) -> None:
    encrypted = cms.encrypt(CONTENT, [pki.alice.cert], cipher=cipher)
    assert gpgsm.decrypt(encrypted) == CONTENT


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
@pytest.mark.parametrize(("kind", "eol"), MESSAGES, ids=MESSAGE_IDS)
def test_gpgsm_verifies_our_signed_message(
    pki: TestPKI, gpgsm: GpgSM, kind: str, eol: str, detached: bool
) -> None:
    signed = smime.sign_message(message(kind, eol), pki.alice.cert, pki.alice.key,
                                signing_time=NOW, detached=detached)
    if detached:
        entity, signature = multipart_signed_parts(signed)
        assert gpgsm.verify(signature, entity) == entity
    else:
        entity = gpgsm.verify(pkcs7_mime_der(signed))
        assert entity == ENTITIES[kind]
    assert leaves(entity) == LEAVES[kind]


@pytest.mark.parametrize("cipher", ["aes128_cbc", "aes256_cbc"])
@pytest.mark.parametrize(("kind", "eol"), MESSAGES, ids=MESSAGE_IDS)
def test_gpgsm_decrypts_our_encrypted_message(
    pki: TestPKI, gpgsm: GpgSM, kind: str, eol: str, cipher: str
) -> None:
    encrypted = smime.encrypt_message(message(kind, eol), [pki.alice.cert], cipher=cipher)
    assert gpgsm.decrypt(pkcs7_mime_der(encrypted)) == ENTITIES[kind]


# openssl -> cipherd -------------------------------------------------------------------------

OPENSSL_CIPHERS = ["aes128_cbc", "aes192_cbc", "aes256_cbc", "tripledes_3key",
                   "aes128_gcm", "aes256_gcm"]
# RSAES-OAEP parameters (RFC 4055 §4.1) as openssl's -keyopt sets them.
OAEP_OPTIONS = {
    "oaep-sha1": [],
    "oaep-sha256": ["rsa_oaep_md:sha256", "rsa_mgf1_md:sha256"],
    "oaep-sha512-mgf1-sha1": ["rsa_oaep_md:sha512", "rsa_mgf1_md:sha1"],
    "oaep-sha256-label": ["rsa_oaep_md:sha256", "rsa_oaep_label:0123456789abcdef"],
}


@pytest.mark.parametrize("oaep", [False, True], ids=["pkcs1", "oaep"])
@pytest.mark.parametrize("cipher", OPENSSL_CIPHERS)
def test_we_decrypt_openssl_cms(pki: TestPKI, openssl: OpenSSL, cipher: str, oaep: bool) -> None:
    encrypted = openssl.cms_encrypt(CONTENT, [pki.alice, pki.bob], cipher=cipher, oaep=oaep)
    for who in (pki.alice, pki.bob):
        result = cms.decrypt(encrypted, [who.pair])
        assert result.content == CONTENT
        assert result.certificate == who.cert
        assert result.cipher == cipher
        assert result.key_transport == ("rsaes_oaep" if oaep else "rsaes_pkcs1v15")
        assert len(result.recipients) == 2


@pytest.mark.parametrize("options", list(OAEP_OPTIONS.values()), ids=list(OAEP_OPTIONS))
def test_we_decrypt_openssl_oaep_parameters(
    pki: TestPKI, openssl: OpenSSL, options: list[str]
) -> None:
    encrypted = openssl.cms_encrypt(CONTENT, [pki.alice], oaep=True, keyopts=options)
    result = cms.decrypt(encrypted, [pki.alice.pair])
    assert (result.content, result.key_transport) == (CONTENT, "rsaes_oaep")


@pytest.mark.parametrize("cipher", ["aes256_cbc", "aes256_gcm"])
@pytest.mark.parametrize("oaep", [False, True], ids=["pkcs1", "oaep"])
def test_we_decrypt_openssl_cms_to_subject_key_identifier(
    pki: TestPKI, openssl: OpenSSL, oaep: bool, cipher: str
) -> None:
    encrypted = openssl.cms_encrypt(CONTENT, [pki.bob, pki.alice], cipher=cipher, oaep=oaep,
                                    keyid=True)
    result = cms.decrypt(encrypted, [pki.alice.pair])
    assert result.content == CONTENT
    assert result.certificate == pki.alice.cert
    assert all(r.startswith("subject key identifier") for r in result.recipients)


OPENSSL_SIGNATURES = {
    # id: (signer, -md, PSS, -keyid)
    "rsa-sha256": ("alice", "sha256", False, False),
    "rsa-sha512": ("alice", "sha512", False, False),
    "rsa-pss-sha256": ("alice", "sha256", True, False),
    "rsa-pss-sha512": ("alice", "sha512", True, False),
    "rsa-sha256-keyid": ("alice", "sha256", False, True),
    "rsa-pss-sha512-keyid": ("alice", "sha512", True, True),
    "ec-sha256": ("carol", "sha256", False, False),
    "ec-sha512-keyid": ("carol", "sha512", False, True),
}


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
@pytest.mark.parametrize(("signer", "md", "pss", "keyid"), list(OPENSSL_SIGNATURES.values()),
                         ids=list(OPENSSL_SIGNATURES))
def test_we_verify_openssl_cms_signature(
    pki: TestPKI, openssl: OpenSSL, signer: str, md: str, pss: bool, keyid: bool,
    detached: bool,
) -> None:
    who = identity(pki, signer)
    signature = openssl.cms_sign(CONTENT, who, detached=detached, md=md, pss=pss, keyid=keyid)
    result = cms.verify(signature, CONTENT if detached else None)
    assert result.all_valid, reasons(result)
    assert result.content == CONTENT
    [check] = result.signers
    assert check.certificate == who.cert
    assert check.digest_algorithm == md
    assert check.signing_time is not None
    assert abs(check.signing_time - datetime.now(UTC)) < timedelta(minutes=5)
    assert check.signer_id.startswith("subject key identifier" if keyid else "issuer")


def test_we_verify_openssl_signature_without_signed_attributes(
    pki: TestPKI, openssl: OpenSSL
) -> None:
    signature = openssl.cms_sign(CONTENT, pki.alice, signed_attributes=False)
    result = cms.verify(signature, CONTENT)
    assert result.all_valid, reasons(result)
    assert result.signers[0].signing_time is None


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
@pytest.mark.parametrize(("kind", "eol"), MESSAGES, ids=MESSAGE_IDS)
def test_we_verify_openssl_signed_message(
    pki: TestPKI, openssl: OpenSSL, kind: str, eol: str, detached: bool
) -> None:
    signed = openssl.smime_sign(with_eol(ENTITIES[kind], eol), pki.alice, detached=detached)
    verified = smime.verify_message(signed)
    assert verified.result.all_valid, reasons(verified.result)
    assert verified.result.signers[0].certificate == pki.alice.cert
    assert verified.entity == ENTITIES[kind]
    assert b"Subject: Signed by openssl\r\n" in verified.message
    assert verified.message.endswith(ENTITIES[kind])


@pytest.mark.parametrize("cipher", ["aes128_cbc", "aes256_cbc", "tripledes_3key", "aes256_gcm"])
@pytest.mark.parametrize(("kind", "eol"), MESSAGES, ids=MESSAGE_IDS)
def test_we_decrypt_openssl_encrypted_message(
    pki: TestPKI, openssl: OpenSSL, kind: str, eol: str, cipher: str
) -> None:
    encrypted = openssl.smime_encrypt(with_eol(ENTITIES[kind], eol), [pki.alice, pki.bob],
                                      cipher=cipher)
    for who in (pki.alice, pki.bob):
        decrypted = smime.decrypt_message(encrypted, [who.pair])
        assert decrypted.entity == ENTITIES[kind]
        assert decrypted.result.cipher == cipher
        assert b"Subject: Encrypted by openssl\r\n" in decrypted.message
        assert decrypted.message.endswith(ENTITIES[kind])


# gpgsm -> cipherd ---------------------------------------------------------------------------


def _gpgsm_message(entity_der: bytes, smime_type: str) -> bytes:
    return (OUTER + b"Content-Type: application/pkcs7-mime; smime-type=" + smime_type.encode()
            + b"; name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + _base64_lines(entity_der))


def _multipart_signed(entity: bytes, signature: bytes) -> bytes:
    boundary = b"gpgsm-signed-8551"
    return (
        OUTER + b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";'
        b' micalg=sha-256; boundary="' + boundary + b'"\r\n\r\n'
        b"--" + boundary + b"\r\n" + entity + b"\r\n--" + boundary + b"\r\n"
        b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + _base64_lines(signature)
        + b"\r\n--" + boundary + b"--\r\n"
    )


@pytest.mark.parametrize("cipher", ["aes128_cbc", "aes192_cbc", "aes256_cbc", "tripledes_3key"])
def test_we_decrypt_gpgsm_encryption(pki: TestPKI, gpgsm: GpgSM, cipher: str) -> None:
    encrypted = gpgsm.encrypt(CONTENT, [pki.alice, pki.bob], cipher=cipher)
    assert encrypted.startswith(b"\x30\x80"), "gpgsm writes BER with indefinite lengths"
    for who in (pki.alice, pki.bob):
        result = cms.decrypt(encrypted, [who.pair])
        assert (result.content, result.cipher) == (CONTENT, cipher)


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
def test_we_verify_gpgsm_signature(pki: TestPKI, gpgsm: GpgSM, detached: bool) -> None:
    who = pki.alice  # gpgsm 2.2 signs with RSA keys only
    signature = gpgsm.sign(CONTENT, who, detached=detached)
    assert signature.startswith(b"\x30\x80"), "gpgsm writes BER with indefinite lengths"
    result = cms.verify(signature, CONTENT if detached else None)
    assert result.all_valid, reasons(result)
    assert result.content == CONTENT
    assert result.signers[0].certificate == who.cert


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
@pytest.mark.parametrize("kind", ["text", "mixed"])
def test_we_verify_gpgsm_signed_message(
    pki: TestPKI, gpgsm: GpgSM, kind: str, detached: bool
) -> None:
    signature = gpgsm.sign(ENTITIES[kind], pki.alice, detached=detached)
    if detached:
        signed = _multipart_signed(ENTITIES[kind], signature)
    else:
        signed = _gpgsm_message(signature, "signed-data")
    verified = smime.verify_message(with_eol(signed, "lf"))
    assert verified.result.all_valid, reasons(verified.result)
    assert verified.entity == ENTITIES[kind]
    assert_outer_headers_kept(verified.message)


@pytest.mark.parametrize("kind", ["text", "mixed"])
def test_we_decrypt_gpgsm_encrypted_message(pki: TestPKI, gpgsm: GpgSM, kind: str) -> None:
    encrypted = _gpgsm_message(gpgsm.encrypt(ENTITIES[kind], [pki.alice]), "enveloped-data")
    decrypted = smime.decrypt_message(encrypted, [pki.alice.pair])
    assert decrypted.entity == ENTITIES[kind]
    assert_outer_headers_kept(decrypted.message)


# Real clients: the corpus ----------------------------------------------------------------

CORPUS = Path(os.environ.get(
    "CIPHERD_SMIME_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus"))
NSS = CORPUS / "smime-thunderbird" / "nss"
NSS_INTEROP = CORPUS / "smime-thunderbird" / "interop"


def corpus_file(path: Path) -> bytes:
    if not path.exists():
        message_ = f"the S/MIME test corpus is not at {CORPUS} (set CIPHERD_SMIME_CORPUS)"
        if os.environ.get("CI") == "true":
            pytest.fail(message_)
        pytest.skip(message_)
    return path.read_bytes()


@functools.cache
def nss_identity(path: Path, password: bytes = b"nss") -> tuple[x509.Certificate, cms.PrivateKey]:
    with warnings.catch_warnings():
        # The NSS files are BER; cryptography says so and reads them anyway
        # (FIELD-NOTES, "cryptography").
        warnings.filterwarnings("ignore", "PKCS#12 bundle could not be parsed as DER")
        key, cert, _ = pkcs12.load_key_and_certificates(corpus_file(path), password)
    assert cert is not None and isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    return cert, key


ALICE_TO_BOB = b"This is a test message from Alice to Bob."


@pytest.mark.parametrize("digest", ["SHA256", "SHA384", "SHA512"])
def test_thunderbird_signed_then_encrypted_message(digest: str) -> None:
    bob = nss_identity(NSS / "Bob.p12")
    alice_cert, _ = nss_identity(NSS / "Alice.p12")
    raw = corpus_file(NSS / f"alice.dsig.{digest}.multipart.env.eml")
    decrypted = smime.decrypt_message(raw, [bob])
    assert (decrypted.result.cipher, decrypted.result.key_transport) == (
        "aes128_cbc", "rsaes_pkcs1v15")
    assert b"Subject: clear-signed then enveloped" in decrypted.message
    verified = smime.verify_message(decrypted.message)
    assert verified.result.all_valid, reasons(verified.result)
    assert verified.result.signers[0].certificate == alice_cert
    assert verified.result.signers[0].digest_algorithm == digest.lower()
    assert ALICE_TO_BOB in verified.entity


def test_thunderbird_enveloped_message_decrypts_exactly() -> None:
    bob = nss_identity(NSS / "Bob.p12")
    decrypted = smime.decrypt_message(corpus_file(NSS / "alice.env.eml"), [bob])
    assert decrypted.entity == crlf(corpus_file(NSS / "alice.mime"))


@pytest.mark.parametrize("name", ["alice.sig.SHA256.opaque.eml", "alice.sig.SHA512.opaque.eml",
                                  "alice.html.sig.SHA256.opaque.eml"])
def test_thunderbird_opaque_signed_message(name: str) -> None:
    alice_cert, _ = nss_identity(NSS / "Alice.p12")
    verified = smime.verify_message(corpus_file(NSS / name))
    assert verified.result.all_valid, reasons(verified.result)
    assert verified.result.signers[0].certificate == alice_cert
    assert ALICE_TO_BOB in verified.entity


def test_thunderbird_opaque_signed_then_encrypted_message() -> None:
    bob = nss_identity(NSS / "Bob.p12")
    decrypted = smime.decrypt_message(corpus_file(NSS / "alice.sig.SHA256.opaque.env.eml"), [bob])
    verified = smime.verify_message(decrypted.message)
    assert verified.result.all_valid, reasons(verified.result)
    assert ALICE_TO_BOB in verified.entity


def test_thunderbird_altered_body_is_reported_changed() -> None:
    verified = smime.verify_message(corpus_file(NSS / "alice.dsig.SHA256.multipart.bad.eml"))
    [check] = verified.result.signers
    assert not check.valid
    assert "changed" in check.reason


def test_thunderbird_mismatched_econtent_attack_is_not_valid() -> None:
    """
    The visible part is fake; the signature part is a valid opaque
    signature over the genuine text.  The visible part must not pass as
    signed.
    """
    raw = corpus_file(NSS / "alice.dsig.SHA256.multipart.mismatch-econtent.eml")
    verified = smime.verify_message(raw)
    assert b"FAKE" in verified.entity
    assert not verified.result.all_valid
    assert "changed" in verified.result.signers[0].reason


NSS_OAEP = {
    # file: content cipher (README, "interop/")
    "fran-oaep_ossl.env": "tripledes_3key",
    "fran-oaep-sha256hash_ossl.env": "aes128_cbc",
    "fran-oaep-sha256hash-sha256mgf_ossl.env": "aes256_cbc",
    "fran-oaep-label_ossl.env": "aes256_cbc",
}


@pytest.mark.parametrize(("name", "cipher"), list(NSS_OAEP.items()), ids=list(NSS_OAEP))
def test_thunderbird_oaep_interop_message(name: str, cipher: str) -> None:
    fran = nss_identity(NSS_INTEROP / "Fran.p12")
    decrypted = smime.decrypt_message(corpus_file(NSS_INTEROP / name), [fran])
    assert (decrypted.result.cipher, decrypted.result.key_transport) == (cipher, "rsaes_oaep")
    assert b"This is a test message to Fran." in decrypted.entity


def test_thunderbird_24_clear_signed_message_stored_with_lf() -> None:
    """
    A real Thunderbird 24 message (SHA-1, quoted-printable text and a JPEG),
    stored with LF but signed over CRLF.  Its certificates expired long ago:
    that is for the trust checks; the signature itself is good.
    """
    raw = corpus_file(CORPUS / "smime-mimekit" / "thunderbird-signed.txt")
    assert b"\r\n" not in raw
    verified = smime.verify_message(raw)
    assert verified.result.all_valid, reasons(verified.result)
    assert [kind for kind, _ in leaves(verified.entity)] == ["text/plain", "image/jpeg"]


# Failures: a reason naming the cause, and nothing but PKIError ----------------------------


def _flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    changed = bytearray(data)
    changed[index] ^= mask
    return bytes(changed)


PAYMENT = OUTER + b"Content-Type: text/plain; charset=us-ascii\r\n\r\nPay Mallory 100 EUR.\r\n"


def test_tampered_multipart_signed_message_is_reported_changed(pki: TestPKI) -> None:
    signed = smime.sign_message(PAYMENT, pki.alice.cert, pki.alice.key, signing_time=NOW)
    assert smime.verify_message(signed).result.all_valid
    tampered = _flip(signed, signed.index(b"100 EUR"), 0x08)
    assert b"Pay Mallory 900 EUR." in tampered
    verified = smime.verify_message(tampered)
    [check] = verified.result.signers
    assert not check.valid
    assert "changed" in check.reason
    assert check.certificate == pki.alice.cert


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
def test_tampered_cms_content_is_reported_changed(pki: TestPKI, detached: bool) -> None:
    signature = cms.sign(CONTENT, pki.alice.cert, pki.alice.key, signing_time=NOW,
                         detached=detached)
    if detached:
        result = cms.verify(signature, _flip(CONTENT, 100))
    else:
        result = cms.verify(_flip(signature, signature.index(CONTENT[:50]) + 100))
    assert not result.all_valid
    assert "changed" in result.signers[0].reason


def test_tampered_openssl_signature_is_reported_changed(pki: TestPKI, openssl: OpenSSL) -> None:
    signed = openssl.smime_sign(ENTITIES["text"], pki.alice)
    index = signed.index(b"The last line")
    verified = smime.verify_message(_flip(signed, index))
    assert not verified.result.all_valid
    assert "changed" in verified.result.signers[0].reason


def test_tampered_signed_attributes_are_reported(pki: TestPKI) -> None:
    """
    A signing time moved by one second: the digest still matches, the
    signature over the attributes does not.
    """
    signature = cms.sign(CONTENT, pki.alice.cert, pki.alice.key, signing_time=NOW)
    stamp = NOW.strftime("%y%m%d%H%M%SZ").encode()
    moved = (NOW + timedelta(seconds=1)).strftime("%y%m%d%H%M%SZ").encode()
    assert signature.count(stamp) == 1
    result = cms.verify(signature.replace(stamp, moved), CONTENT)
    assert not result.all_valid
    assert "signature is not valid" in result.signers[0].reason


def test_signer_certificate_missing_is_reported(pki: TestPKI, openssl: OpenSSL) -> None:
    info = asn1_cms.ContentInfo.load(openssl.cms_sign(CONTENT, pki.alice))
    info["content"]["certificates"] = []
    result = cms.verify(info.dump(force=True), CONTENT)
    assert not result.all_valid
    assert "certificate" in result.signers[0].reason
    found = cms.verify(info.dump(force=True), CONTENT, known_certificates=[pki.alice.cert])
    assert found.all_valid, reasons(found)


@pytest.mark.parametrize(("cipher", "oaep"), ENCRYPTION_CELLS, ids=ENCRYPTION_IDS)
def test_wrong_key_raises_decryption_key_not_found(
    pki: TestPKI, cipher: str, oaep: bool
) -> None:
    encrypted = cms.encrypt(CONTENT, [pki.alice.cert], cipher=cipher, oaep=oaep)
    with pytest.raises(DecryptionKeyNotFound) as caught:
        cms.decrypt(encrypted, [pki.bob.pair])
    assert str(caught.value) == "A suitable decryption key could not be found."
    encrypted_message = smime.encrypt_message(message("mixed", "lf"), [pki.alice.cert],
                                              cipher=cipher, oaep=oaep)
    with pytest.raises(DecryptionKeyNotFound, match="A suitable decryption key could not"):
        smime.decrypt_message(encrypted_message, [pki.bob.pair, (pki.carol.cert, pki.carol.key)])


def test_no_keys_raises_decryption_key_not_found(pki: TestPKI, openssl: OpenSSL) -> None:
    with pytest.raises(DecryptionKeyNotFound):
        cms.decrypt(openssl.cms_encrypt(CONTENT, [pki.alice]), [])


@pytest.mark.parametrize(("cipher", "oaep"), ENCRYPTION_CELLS, ids=ENCRYPTION_IDS)
def test_matching_recipient_with_wrong_private_key_raises_decryption_failed(
    pki: TestPKI, cipher: str, oaep: bool
) -> None:
    """
    The certificate names the recipient; the key paired with it is another
    (a store that mixed them up): DecryptionFailed, not garbage.  (PKCS#1
    v1.5 unwrapping with implicit rejection yields a pseudo-random key of
    random length; one time in ~60,000 it has the right length and the
    CBC padding happens to check out.  That is CBC's lack of integrity, and
    far below what would make this test flaky in practice.)
    """
    encrypted = cms.encrypt(CONTENT, [pki.alice.cert], cipher=cipher, oaep=oaep)
    with pytest.raises(DecryptionFailed):
        cms.decrypt(encrypted, [(pki.alice.cert, pki.bob.key)])


def test_matching_recipient_with_other_key_types(pki: TestPKI, openssl: OpenSSL) -> None:
    encrypted = openssl.cms_encrypt(CONTENT, [pki.alice])
    # Another key size: the encrypted key is longer than this modulus.
    smaller = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    with pytest.raises(DecryptionFailed):
        cms.decrypt(encrypted, [(pki.alice.cert, smaller)])
    with pytest.raises(UnsupportedAlgorithm):
        cms.decrypt(encrypted, [(pki.alice.cert, pki.carol.key)])


@pytest.mark.parametrize("cipher", ["aes128_gcm", "aes256_gcm"])
@pytest.mark.parametrize("where", ["ciphertext", "tag"])
def test_tampered_gcm_raises_decryption_failed(
    pki: TestPKI, openssl: OpenSSL, cipher: str, where: str
) -> None:
    for encrypted in (cms.encrypt(CONTENT, [pki.alice.cert], cipher=cipher),
                      openssl.cms_encrypt(CONTENT, [pki.alice], cipher=cipher)):
        info = asn1_cms.ContentInfo.load(encrypted)
        enveloped = info["content"]
        if where == "ciphertext":
            encrypted_content = enveloped["auth_encrypted_content_info"]["encrypted_content"]
            # The ciphertext is at the end of the DER, before the tag.
            index = encrypted.index(encrypted_content.native[-64:]) + 10
        else:
            index = encrypted.rindex(enveloped["mac"].native)
        with pytest.raises(DecryptionFailed, match="changed"):
            cms.decrypt(_flip(encrypted, index), [pki.alice.pair])


@pytest.mark.parametrize("kind", ["enveloped", "signed-detached", "signed-opaque"])
def test_truncated_der_raises_cms_format_error(pki: TestPKI, kind: str) -> None:
    if kind == "enveloped":
        data = cms.encrypt(CONTENT, [pki.alice.cert])
    else:
        data = cms.sign(CONTENT, pki.alice.cert, pki.alice.key, signing_time=NOW,
                        detached=kind == "signed-detached")
    for length in (0, 1, 2, 10, 100, len(data) // 2, len(data) - 1):
        with pytest.raises(CMSFormatError):
            if kind == "enveloped":
                cms.decrypt(data[:length], [pki.alice.pair])
            else:
                cms.verify(data[:length], CONTENT)


GARBAGE = {
    "empty": b"",
    "text": b"Hello, this is not CMS at all.\r\n",
    "random": random.Random(5652).randbytes(512),
    "bad-pem": b"-----BEGIN CMS-----\n!!!!\n-----END CMS-----\n",
    "wrong-sequence": b"\x30\x03\x02\x01\x05",
}


@pytest.mark.parametrize("name", [*GARBAGE, "certificate-pem"])
def test_garbage_raises_cms_format_error(pki: TestPKI, name: str) -> None:
    data = pki.alice.cert_pem.read_bytes() if name == "certificate-pem" else GARBAGE[name]
    with pytest.raises(CMSFormatError):
        cms.decrypt(data, [pki.alice.pair])
    with pytest.raises(CMSFormatError):
        cms.verify(data, CONTENT)


def test_signed_data_given_to_decrypt_and_back(pki: TestPKI) -> None:
    signed = cms.sign(CONTENT, pki.alice.cert, pki.alice.key, signing_time=NOW)
    with pytest.raises(CMSFormatError, match="signed_data"):
        cms.decrypt(signed, [pki.alice.pair])
    with pytest.raises(CMSFormatError, match="enveloped_data"):
        cms.verify(cms.encrypt(CONTENT, [pki.alice.cert]))


def test_broken_messages_raise_cms_format_error(pki: TestPKI) -> None:
    encrypted = smime.encrypt_message(message("text", "crlf"), [pki.alice.cert])
    head, body = encrypted.split(b"\r\n\r\n", 1)
    for broken_body in (b"", b"!!!not base64!!!\r\n", body[: len(body) // 2] + b"\r\n"):
        with pytest.raises(CMSFormatError):
            smime.decrypt_message(head + b"\r\n\r\n" + broken_body, [pki.alice.pair])
    with pytest.raises(CMSFormatError):  # NotSMIME
        smime.decrypt_message(message("text", "lf"), [pki.alice.pair])
    with pytest.raises(CMSFormatError):
        smime.verify_message(message("mixed", "lf"))
    signed = smime.sign_message(PAYMENT, pki.alice.cert, pki.alice.key, signing_time=NOW)
    delimiter = b"\r\n--" + content_type(signed)[1]["boundary"].encode()
    one_part = signed[: signed.index(delimiter, signed.index(b"100 EUR"))] + b"\r\n"
    with pytest.raises(CMSFormatError):
        smime.verify_message(one_part)


# Bugs pinned: exceptions that escape as something other than PKIError -----------------


def _escapes(call: object) -> BaseException | None:
    assert callable(call)
    try:
        call()
    except PKIError:
        return None
    except Exception as e:  # what this test looks for
        return e
    return None


@pytest.mark.parametrize("kind", ["enveloped-cbc", "auth-enveloped-gcm", "signed-detached",
                                  "signed-opaque"])
def test_corrupted_der_raises_only_pki_errors(pki: TestPKI, kind: str) -> None:
    """
    Any one byte of the DER changed: either it still works (a byte of
    ciphertext or padding) or a PKIError says why.  asn1crypto parses
    lazily, so a nested structure that is broken surfaces as a ValueError
    only when cms.decrypt/cms.verify reach it.
    """
    small = b"Content-Type: text/plain\r\n\r\nhello\r\n"
    if kind.startswith("signed"):
        data = cms.sign(small, pki.alice.cert, pki.alice.key, signing_time=NOW,
                        detached=kind == "signed-detached")

        def attempt(corrupted: bytes) -> object:
            return cms.verify(corrupted, small if kind == "signed-detached" else None)
    else:
        cipher = "aes128_cbc" if kind == "enveloped-cbc" else "aes128_gcm"
        data = cms.encrypt(small, [pki.alice.cert], cipher=cipher)

        def attempt(corrupted: bytes) -> object:
            return cms.decrypt(corrupted, [pki.alice.pair])
    escaped = {}
    # Corrupted certificates make cryptography warn (negative serial
    # numbers); that is not what this test is about.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for index in range(len(data)):
            error = _escapes(lambda index=index: attempt(_flip(data, index, 0xA5)))
            if error is not None:
                escaped[index] = f"{type(error).__name__}: {str(error).splitlines()[0][:90]}"
    assert not escaped, (f"{len(escaped)} of {len(data)} one-byte corruptions escaped as "
                         "non-PKIError exceptions, e.g.:\n"
                         + "\n".join(f"  byte {i}: {e}" for i, e in list(escaped.items())[:8]))


def _reencoded(encrypted: bytes, change: object) -> bytes:
    info = asn1_cms.ContentInfo.load(encrypted)
    assert callable(change)
    change(info["content"])
    return info.dump(force=True)


def test_cbc_ciphertext_not_a_whole_number_of_blocks_raises_decryption_failed(
    pki: TestPKI,
) -> None:
    """
    Bug: cms._decrypt_content calls decryptor.finalize() outside its
    try, so a ciphertext cut short by a byte raises ValueError.
    """
    def shorten(enveloped: asn1_cms.EnvelopedData) -> None:
        info = enveloped["encrypted_content_info"]
        info["encrypted_content"] = info["encrypted_content"].native[:-1]

    broken = _reencoded(cms.encrypt(CONTENT, [pki.alice.cert]), shorten)
    with pytest.raises(PKIError):
        cms.decrypt(broken, [pki.alice.pair])


def test_cbc_iv_of_wrong_length_raises_pki_error(pki: TestPKI) -> None:
    """
    Bug: modes.CBC(iv) raises ValueError for an IV that is not one block.
    """
    def short_iv(enveloped: asn1_cms.EnvelopedData) -> None:
        enveloped["encrypted_content_info"]["content_encryption_algorithm"] = {
            "algorithm": "aes256_cbc", "parameters": b"\x00" * 8}

    broken = _reencoded(cms.encrypt(CONTENT, [pki.alice.cert]), short_iv)
    with pytest.raises(PKIError):
        cms.decrypt(broken, [pki.alice.pair])


def test_gcm_nonce_of_wrong_length_raises_pki_error(pki: TestPKI) -> None:
    """
    Bug: AESGCM.decrypt raises ValueError for a nonce shorter than 8
    bytes; only InvalidTag is caught.
    """
    def empty_nonce(enveloped: asn1_cms.AuthEnvelopedData) -> None:
        enveloped["auth_encrypted_content_info"]["content_encryption_algorithm"] = (
            asn1_cms.EncryptionAlgorithm({
                "algorithm": "aes256_gcm",
                "parameters": cms.GCMParameters({"aes_nonce": b"", "aes_icv_len": 16})}))

    broken = _reencoded(cms.encrypt(CONTENT, [pki.alice.cert], cipher="aes256_gcm"), empty_nonce)
    with pytest.raises(PKIError):
        cms.decrypt(broken, [pki.alice.pair])


def test_openssl_oaep_with_sha3_raises_unsupported_algorithm(
    pki: TestPKI, openssl: OpenSSL
) -> None:
    """
    Bug: openssl -keyopt rsa_oaep_md:sha3-256 makes OAEP parameters naming
    SHA3-256; cms._unwrap_cek looks the hash up in _HASHES and raises
    KeyError('sha3_256').
    """
    encrypted = openssl.cms_encrypt(CONTENT, [pki.alice], oaep=True,
                                    keyopts=["rsa_oaep_md:sha3-256"])
    with pytest.raises(UnsupportedAlgorithm):
        cms.decrypt(encrypted, [pki.alice.pair])


def test_oaep_without_parameters_raises_pki_error(pki: TestPKI) -> None:
    """
    Bug: RSAES-OAEP with the parameters left out (RFC 4055 §4.1 says they
    are present, but a broken message may lack them) raises TypeError
    ('Void' object is not subscriptable) in cms._unwrap_cek.
    """
    def drop_parameters(enveloped: asn1_cms.EnvelopedData) -> None:
        ktri = enveloped["recipient_infos"][0].chosen
        ktri["key_encryption_algorithm"] = {"algorithm": "rsaes_oaep"}

    broken = _reencoded(cms.encrypt(CONTENT, [pki.alice.cert], oaep=True), drop_parameters)
    with pytest.raises(PKIError):
        cms.decrypt(broken, [pki.alice.pair])


def test_unknown_signature_algorithm_gives_a_reason(pki: TestPKI) -> None:
    """
    Bug: cms._check_signer reads signature_algorithm.signature_algo outside
    its try; for an OID asn1crypto does not know that raises ValueError
    instead of giving SignatureCheck(valid=False, reason=...).
    """
    def unknown_algorithm(signed: asn1_cms.SignedData) -> None:
        signed["signer_infos"][0]["signature_algorithm"] = {"algorithm": "1.3.6.1.4.1.99999.1"}

    broken = _reencoded(cms.sign(CONTENT, pki.alice.cert, pki.alice.key, signing_time=NOW),
                        unknown_algorithm)
    result = cms.verify(broken, CONTENT)
    assert not result.all_valid
    assert "1.3.6.1.4.1.99999.1" in result.signers[0].reason


def test_signer_key_of_unknown_type_gives_a_reason(pki: TestPKI) -> None:
    """
    Bug: a signer certificate whose key cryptography cannot load (here a
    GOST R 34.10-2012 key, as Russian S/MIME clients send) makes
    cert.public_key() in cms._verify_with raise
    cryptography.exceptions.UnsupportedAlgorithm, which _check_signer does
    not catch (it catches cipherd's UnsupportedAlgorithm of the same name).
    """
    info = asn1_cms.ContentInfo.load(
        cms.sign(CONTENT, pki.alice.cert, pki.alice.key, signing_time=NOW))
    certificate = info["content"]["certificates"][0].chosen
    certificate["tbs_certificate"]["subject_public_key_info"]["algorithm"] = {
        "algorithm": "1.2.643.7.1.1.1.1"}  # id-tc26-gost3410-12-256
    result = cms.verify(info.dump(force=True), CONTENT)
    assert not result.all_valid
    assert result.signers[0].reason


def test_embedded_certificate_of_unknown_version_is_skipped(pki: TestPKI) -> None:
    """
    Bug: cms._certificate catches ValueError around
    x509.load_der_x509_certificate, but an X.509 version cryptography does
    not know raises cryptography.x509.InvalidVersion, which is no
    ValueError: it escapes cms.verify.  The certificate should be skipped
    (and the signer then found among the known certificates).
    """
    info = asn1_cms.ContentInfo.load(
        cms.sign(CONTENT, pki.alice.cert, pki.alice.key, signing_time=NOW))
    info["content"]["certificates"][0].chosen["tbs_certificate"]["version"] = 3  # "v4"
    result = cms.verify(info.dump(force=True), CONTENT, known_certificates=[pki.alice.cert])
    assert result.all_valid, reasons(result)


def test_signature_with_microsoft_encryption_key_preference_verifies(
    pki: TestPKI, openssl: OpenSSL
) -> None:
    """
    NSS (Thunderbird) and Outlook add the signed attribute
    1.3.6.1.4.1.311.16.4 (Microsoft's encryption key preference, an
    IssuerAndSerialNumber).  asn1crypto has no spec for it, and C{.native}
    of an unknown value that contains a SET raises ValueError: verification
    must never ask for the native form of all the signed attributes (it did
    until 2267c44, and every Thunderbird signature raised).  openssl
    verifies the signature made here.
    """
    info = asn1_cms.ContentInfo.load(
        cms.sign(CONTENT, pki.alice.cert, pki.alice.key, signing_time=NOW))
    signer = info["content"]["signer_infos"][0]
    preference = asn1_cms.CMSAttribute({
        "type": "1.3.6.1.4.1.311.16.4",
        "values": [asn1_core.Any.load(signer["sid"].chosen.dump())],
    })
    signer["signed_attrs"] = asn1_cms.CMSAttributes([*signer["signed_attrs"], preference])
    # RFC 5652 §5.4: sign the attributes' DER with the SET OF tag.
    signed_attributes = b"\x31" + signer["signed_attrs"].dump(force=True)[1:]
    assert isinstance(pki.alice.key, rsa.RSAPrivateKey)
    signer["signature"] = pki.alice.key.sign(signed_attributes, padding.PKCS1v15(),
                                             hashes.SHA256())
    signature = info.dump(force=True)
    assert openssl.cms_verify(signature, CONTENT) == CONTENT
    result = cms.verify(signature, CONTENT)
    assert result.all_valid, reasons(result)


NSS_ECDH = {
    # file: content cipher, key agreement (README, "interop/")
    "fran-ec_ossl-aes128-sha256.env": ("aes128_cbc", "ECDH sha256 KDF, aes128_wrap"),
    "fran-ec_ossl-aes256-sha512.env": ("aes256_cbc", "ECDH sha512 KDF, aes256_wrap"),
}


@pytest.mark.parametrize(("name", "expected"), list(NSS_ECDH.items()), ids=list(NSS_ECDH))
def test_thunderbird_ecdh_interop_message(name: str, expected: tuple[str, str]) -> None:
    """
    Key agreement recipients (kari, RFC 5753): ephemeral-static ECDH on
    P-384 with the X9.63 KDF and AES key wrap, made by openssl for
    Thunderbird's tests.
    """
    fran_ec = nss_identity(NSS_INTEROP / "Fran-ec.p12")
    decrypted = smime.decrypt_message(corpus_file(NSS_INTEROP / name), [fran_ec])
    assert (decrypted.result.cipher, decrypted.result.key_transport) == expected
    assert b"This is a test message to Fran." in decrypted.entity
    # The same message with the wrong EC key: it does not unwrap.
    other = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(DecryptionFailed):
        smime.decrypt_message(corpus_file(NSS_INTEROP / name), [(fran_ec[0], other)])


@pytest.mark.parametrize("md", ["sha1", "sha256", "sha384", "sha512"])
@pytest.mark.parametrize("cipher", ["aes128_cbc", "aes256_cbc", "aes256_gcm"])
def test_we_decrypt_openssl_ecdh(pki: TestPKI, openssl: OpenSSL, md: str, cipher: str
                                 ) -> None:
    encrypted = openssl.cms_encrypt(CONTENT, [pki.carol], cipher=cipher,
                                    keyopts=[f"ecdh_kdf_md:{md}"])
    result = cms.decrypt(encrypted, [pki.carol.pair])
    assert (result.content, result.certificate, result.cipher) == (CONTENT, pki.carol.cert,
                                                                   cipher)
    assert result.key_transport.startswith(f"ECDH {md} KDF, aes")


@pytest.fixture(scope="module")
def erin(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> Identity:
    """
    An Ed25519 signer (RFC 8419) under the test CA.
    """
    key = ed25519.Ed25519PrivateKey.generate()
    cert = make_user_certificate("erin@example.org", key, pki.ca.cert, pki.ca.key,
                                 pki.carol.cert.not_valid_before_utc,
                                 pki.carol.cert.not_valid_after_utc)
    return _write_identity(tmp_path_factory.mktemp("erin"), "erin", "erin@example.org", cert,
                           key, pki.ca.cert_pem)


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
def test_ed25519_signature(pki: TestPKI, erin: Identity, detached: bool) -> None:
    """
    Ed25519 (RFC 8419): PureEdDSA over the DER of the signed attributes,
    SHA-512 for the message digest.  No peer here checks it (OpenSSL 3.0's
    CMS has no Ed25519: "no default digest" signing, "invalid digest"
    verifying; gpgsm 2.2 has no EdDSA in CMS), so it is checked by hand
    with the cryptography package, apart from cms.verify.
    """
    ours = cms.sign(CONTENT, *erin.pair, signing_time=NOW, detached=detached)
    signer = asn1_cms.ContentInfo.load(ours)["content"]["signer_infos"][0]
    assert signer["signature_algorithm"]["algorithm"].native == "ed25519"
    assert signer["signature_algorithm"]["parameters"].native is None  # RFC 8419 §2.3
    assert signer["digest_algorithm"]["algorithm"].native == "sha512"  # RFC 8419 §3.1
    attributes = {a["type"].native: a["values"][0].native for a in signer["signed_attrs"]}
    assert attributes["message_digest"] == hashlib.sha512(CONTENT).digest()
    signed = b"\x31" + signer["signed_attrs"].dump()[1:]  # the SET OF, as signed
    public_key = erin.cert.public_key()
    assert isinstance(public_key, ed25519.Ed25519PublicKey)
    public_key.verify(signer["signature"].native, signed)  # raises if not

    result = cms.verify(ours, CONTENT if detached else None)
    assert result.all_valid, reasons(result)
    assert not cms.verify(ours, CONTENT + b"!").all_valid
    tampered = bytearray(ours)
    tampered[-10] ^= 1  # inside the signature value, the last field
    assert not cms.verify(bytes(tampered), CONTENT if detached else None).all_valid


def test_ed25519_signed_message_says_sha_512(erin: Identity) -> None:
    signed = smime.sign_message(message("text", "crlf"), *erin.pair, signing_time=NOW)
    assert b"micalg=sha-512;" in signed
    assert smime.verify_message(signed).result.all_valid


@pytest.mark.parametrize("digest", ["sha256", "sha384", "sha512"])
def test_openssl_verifies_our_rsa_pss_signature(pki: TestPKI, openssl: OpenSSL,
                                                digest: str) -> None:
    signature = cms.sign(CONTENT, *pki.alice.pair, signing_time=NOW, digest=digest, pss=True)
    signer = asn1_cms.ContentInfo.load(signature)["content"]["signer_infos"][0]
    algorithm = signer["signature_algorithm"]
    assert algorithm["algorithm"].native == "rsassa_pss"
    assert algorithm["parameters"]["hash_algorithm"]["algorithm"].native == digest
    assert algorithm["parameters"]["salt_length"].native == {"sha256": 32, "sha384": 48,
                                                             "sha512": 64}[digest]
    assert openssl.cms_verify(signature, CONTENT) == CONTENT
    assert cms.verify(signature, CONTENT).all_valid
    # The whole message through openssl's CMS code (its PKCS#7 code,
    # behind "openssl smime", knows no PSS).
    signed = smime.sign_message(message("text", "crlf"), *pki.alice.pair, signing_time=NOW,
                                pss=True)
    assert leaves(openssl.cms_smime_verify(signed)) == LEAVES["text"]


@pytest.mark.parametrize("cipher", cms.ENCRYPTION_CIPHERS)
def test_openssl_decrypts_our_ecdh(pki: TestPKI, openssl: OpenSSL, cipher: str) -> None:
    """
    What we encrypt to an EC certificate (P-256: dhSinglePass-stdDH-
    sha256kdf-scheme, AES-128 key wrap) beside an RSA one, openssl
    decrypts with either key, and so do we.
    """
    encrypted = cms.encrypt(CONTENT, [pki.carol.cert, pki.alice.cert], cipher=cipher)
    assert openssl.cms_decrypt(encrypted, pki.carol) == CONTENT
    assert openssl.cms_decrypt(encrypted, pki.alice) == CONTENT
    result = cms.decrypt(encrypted, [pki.carol.pair])
    assert (result.content, result.key_transport) == (CONTENT, "ECDH sha256 KDF, aes128_wrap")
    info = asn1_cms.ContentInfo.load(encrypted)
    # RFC 5652 §6.1: version 2 with a kari; AuthEnvelopedData stays 0.
    assert info["content"]["version"].native == ("v0" if cipher.endswith("gcm") else "v2")


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP521R1()], ids=["P-384", "P-521"])
def test_openssl_decrypts_our_ecdh_on_larger_curves(
        pki: TestPKI, openssl: OpenSSL, tmp_path: Path, curve: ec.EllipticCurve) -> None:
    key = ec.generate_private_key(curve)
    cert = make_user_certificate("dave@example.org", key, pki.ca.cert, pki.ca.key,
                                 pki.carol.cert.not_valid_before_utc,
                                 pki.carol.cert.not_valid_after_utc)
    dave = _write_identity(tmp_path, "dave", "dave@example.org", cert, key, pki.ca.cert_pem)
    encrypted = cms.encrypt(CONTENT, [dave.cert])
    assert openssl.cms_decrypt(encrypted, dave) == CONTENT
    assert cms.decrypt(encrypted, [dave.pair]).content == CONTENT


def test_ecdh_on_an_unsupported_curve_is_refused(pki: TestPKI) -> None:
    key = ec.generate_private_key(ec.SECP256K1())
    cert = make_user_certificate("koblitz@example.org", key, pki.ca.cert, pki.ca.key,
                                 pki.carol.cert.not_valid_before_utc,
                                 pki.carol.cert.not_valid_after_utc)
    with pytest.raises(UnsupportedAlgorithm, match="secp256k1"):
        cms.encrypt(CONTENT, [cert])
    # ...and never chosen for encryption: the trust check says why.
    assert usage_problem(cert, Purpose.ENCRYPTION) == (
        "Its key is on the curve secp256k1, which cipherd cannot encrypt to (P-256, P-384, "
        "P-521).")
    assert usage_problem(pki.carol.cert, Purpose.ENCRYPTION) is None
    assert usage_problem(cert, Purpose.SIGNING) is None


def test_an_ed25519_certificate_is_not_chosen_for_encryption(erin: Identity) -> None:
    assert usage_problem(erin.cert, Purpose.ENCRYPTION) == (
        "Its key is of a kind cipherd cannot encrypt to (RSA, EC, X25519 or X448 only).")


def _auth_enveloped(pki: TestPKI, content: bytes, *, tag_length: int = 16,
                    attributes: bool = True, tamper_attributes: bool = False) -> bytes:
    """
    An AuthEnvelopedData made by hand (openssl writes no authAttrs): AES-GCM
    over C{content} with authenticated attributes as additional data
    (RFC 5083 §2.2) and a tag of C{tag_length} bytes.
    """
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    cek, nonce = os.urandom(32), os.urandom(12)
    auth_attrs = asn1_cms.CMSAttributes([asn1_cms.CMSAttribute({
        "type": "content_type", "values": ["data"]})])
    aad = auth_attrs.dump()  # SET OF: the DER the tag covers
    encryptor = Cipher(algorithms.AES(cek), modes.GCM(nonce)).encryptor()
    if attributes:
        encryptor.authenticate_additional_data(aad)
    ciphertext = encryptor.update(content) + encryptor.finalize()
    tag = encryptor.tag[:tag_length]
    if tamper_attributes:
        auth_attrs = asn1_cms.CMSAttributes([asn1_cms.CMSAttribute({
            "type": "content_type", "values": ["signed_data"]})])
    recipient = asn1_cms.RecipientInfo("ktri", asn1_cms.KeyTransRecipientInfo({
        "version": "v0",
        "rid": asn1_cms.RecipientIdentifier("issuer_and_serial_number", {
            "issuer": asn1_cms.Name.load(pki.alice.cert.issuer.public_bytes()),
            "serial_number": pki.alice.cert.serial_number}),
        "key_encryption_algorithm": {"algorithm": "rsaes_pkcs1v15"},
        "encrypted_key": pki.alice.cert.public_key().encrypt(cek, padding.PKCS1v15()),
    }))
    envelope = {
        "version": "v0",
        "recipient_infos": [recipient],
        "auth_encrypted_content_info": {
            "content_type": "data",
            "content_encryption_algorithm": {
                "algorithm": "aes256_gcm",
                "parameters": asn1_core.Any.load(cms.GCMParameters(
                    {"aes_nonce": nonce, "aes_icv_len": tag_length}).dump())},
            "encrypted_content": ciphertext,
        },
        "mac": tag,
    }
    if attributes:
        envelope["auth_attrs"] = auth_attrs
    return asn1_cms.ContentInfo({
        "content_type": "authenticated_enveloped_data",
        "content": asn1_cms.AuthEnvelopedData(envelope),
    }).dump()


@pytest.mark.parametrize("tag_length", [12, 16])
def test_gcm_with_authenticated_attributes_and_short_tags(pki: TestPKI, tag_length: int) -> None:
    data = _auth_enveloped(pki, CONTENT, tag_length=tag_length)
    assert cms.decrypt(data, [pki.alice.pair]).content == CONTENT
    # The attributes are covered by the tag: changing them is detected.
    forged = _auth_enveloped(pki, CONTENT, tag_length=tag_length, tamper_attributes=True)
    with pytest.raises(DecryptionFailed, match="changed"):
        cms.decrypt(forged, [pki.alice.pair])
    # A message without attributes has no additional data.
    without = _auth_enveloped(pki, CONTENT, tag_length=tag_length, attributes=False)
    assert cms.decrypt(without, [pki.alice.pair]).content == CONTENT


def test_a_truncated_gcm_tag_is_refused(pki: TestPKI) -> None:
    with pytest.raises(CMSFormatError, match="The GCM tag is 8 bytes"):
        cms.decrypt(_auth_enveloped(pki, CONTENT, tag_length=8), [pki.alice.pair])


def test_a_bad_key_transport_fails_like_bad_content(pki: TestPKI) -> None:
    """
    RFC 3218 §2.3.2: whether the RSA unwrapping or the content check fails,
    the error is the same, so a sender of forged messages learns nothing
    about the unwrapping.

    CBC has no integrity check: content decrypted with a wrong key (or
    changed) still ends in valid padding about once in 256 times, and then
    nothing can tell it failed.  So each CBC case is made afresh until it
    fails (five tries all passing: one chance in 2**40).
    """
    def transported(cipher: str, holder: Any) -> bytes:
        info = asn1_cms.ContentInfo.load(cms.encrypt(CONTENT, [pki.alice.cert],
                                                     cipher=cipher))
        info["content"]["recipient_infos"][0].chosen["encrypted_key"] = (
            holder.cert.public_key().encrypt(b"k" * 5, padding.PKCS1v15()))
        return bytes(info.dump(force=True))

    def bad_transport(cipher: str) -> bytes:
        # A key of another length: unwraps to noise.
        return transported(cipher, pki.alice)

    def to_another_key(cipher: str) -> bytes:
        # Wrapped for Bob: the unwrapping itself fails.
        return transported(cipher, pki.bob)

    def flipped(cipher: str) -> bytes:
        good = cms.encrypt(CONTENT, [pki.alice.cert], cipher=cipher)
        return _flip(good, len(good) - (5 if cipher == "aes256_cbc" else 20))

    messages = set()
    for cipher in ("aes256_cbc", "aes256_gcm"):
        for make in (bad_transport, to_another_key, flipped):
            for _ in range(5 if cipher == "aes256_cbc" else 1):
                try:
                    cms.decrypt(make(cipher), [pki.alice.pair])
                except DecryptionFailed as e:
                    messages.add(str(e))
                    break
            else:
                pytest.fail(f"{make.__name__} with {cipher} was decrypted")
    assert messages == {"The content could not be decrypted: wrong key, or the message was "
                        "damaged or changed after it was encrypted."}


def test_a_failed_unwrap_still_decrypts_the_content_with_a_random_key(
        pki: TestPKI, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    RFC 3218 §2.3.2: the content is decrypted whether or not the key
    transport opened (with a random key when it did not), so the time taken
    does not tell a conforming PKCS#1 block from another.
    """
    decrypted: list[bytes] = []
    real = cms._ContentCipher.decrypt

    def spy(self: Any, cek: bytes, *args: Any) -> bytes:
        decrypted.append(cek)
        return real(self, cek, *args)

    monkeypatch.setattr(cms._ContentCipher, "decrypt", spy)
    info = asn1_cms.ContentInfo.load(cms.encrypt(CONTENT * 50, [pki.alice.cert]))
    info["content"]["recipient_infos"][0].chosen["encrypted_key"] = (
        pki.alice.cert.public_key().encrypt(b"k" * 5, padding.PKCS1v15()))
    with pytest.raises(DecryptionFailed):
        cms.decrypt(info.dump(force=True), [pki.alice.pair])
    assert len(decrypted) == 1 and len(decrypted[0]) == 32


def test_the_message_is_judged_before_the_key_is_unwrapped(pki: TestPKI) -> None:
    """
    Faults in the message's own description (a short GCM tag, a CBC cipher
    in AuthEnvelopedData, a missing content) are named whatever the key
    transport holds: no answer depends on what the unwrapping gave.
    """
    short_tag = asn1_cms.ContentInfo.load(_auth_enveloped(pki, CONTENT, tag_length=8))
    short_tag["content"]["recipient_infos"][0].chosen["encrypted_key"] = b"\x00" * 256
    with pytest.raises(CMSFormatError, match="The GCM tag is 8 bytes"):
        cms.decrypt(short_tag.dump(force=True), [pki.alice.pair])

    cbc_in_auth = asn1_cms.ContentInfo.load(_auth_enveloped(pki, CONTENT))
    cbc_in_auth["content"]["auth_encrypted_content_info"]["content_encryption_algorithm"] = {
        "algorithm": "aes256_cbc", "parameters": asn1_core.OctetString(os.urandom(16))}
    with pytest.raises(CMSFormatError, match="AuthEnvelopedData must use an authenticated "
                                             "cipher"):
        cms.decrypt(cbc_in_auth.dump(force=True), [pki.alice.pair])

    short_iv = asn1_cms.ContentInfo.load(cms.encrypt(CONTENT, [pki.alice.cert]))
    short_iv["content"]["encrypted_content_info"]["content_encryption_algorithm"] = {
        "algorithm": "aes256_cbc", "parameters": asn1_core.OctetString(b"\x01" * 8)}
    with pytest.raises(CMSFormatError, match="IV is 8 bytes"):
        cms.decrypt(short_iv.dump(force=True), [pki.alice.pair])


def test_the_der_walker_reads_signatures_as_asn1crypto_does(
    pki: TestPKI, openssl: OpenSSL, gpgsm: GpgSM
) -> None:
    """
    Verification reads definite-length DER with a walker of its own (no
    copies, no generic parser) and hands everything else to asn1crypto;
    where both can read a SignedData they must agree field for field.
    """
    made = {
        "cipherd detached": cms.sign(CONTENT, *pki.alice.pair, signing_time=NOW),
        "cipherd opaque EC": cms.sign(CONTENT, *pki.carol.pair, signing_time=NOW,
                                      detached=False),
        "openssl": openssl.cms_sign(CONTENT, pki.alice, detached=False),
        "openssl keyid sha512": openssl.cms_sign(CONTENT, pki.alice, keyid=True, md="sha512"),
        "openssl no attributes": openssl.cms_sign(CONTENT, pki.alice, signed_attributes=False),
        "openssl pss": openssl.cms_sign(CONTENT, pki.alice, pss=True),
    }
    for name, data in made.items():
        content, der_certificates, fields = cms._signed_data_fast(data)
        expected = cms._signed_data_asn1(data)
        assert content == expected[0], name
        assert [x509.load_der_x509_certificate(c) for c in der_certificates] == expected[1]
        assert fields == expected[2], name
    # gpgsm writes BER (indefinite lengths): the walker declines it.
    with pytest.raises(cms._NotDER):
        cms._signed_data_fast(gpgsm.sign(CONTENT, pki.alice, detached=False))


def test_structures_that_do_not_nest_or_repeat_attributes_are_refused(pki: TestPKI) -> None:
    """
    The walker takes nothing on trust that asn1crypto would refuse: an
    element running past its parent, a wrong tag, and signed attributes
    that are empty or hold the message digest twice are all refused, by
    either reader, with the reason.
    """
    signed = cms.sign(CONTENT, *pki.alice.pair, signing_time=NOW, detached=False)
    version = signed.index(b"\x02\x01\x01\x31")  # SignedData version, then digestAlgorithms
    wrong_tag = signed[:version] + b"\x04" + signed[version + 1:]
    with pytest.raises(CMSFormatError, match="CMSVersion"):
        cms.verify(wrong_tag)
    length = int.from_bytes(signed[2:4], "big")  # ContentInfo: 30 82 xx xx
    short_parent = signed[:2] + (length - 50).to_bytes(2, "big") + signed[4:]
    with pytest.raises(CMSFormatError):
        cms.verify(short_parent)

    info = asn1_cms.ContentInfo.load(signed)
    attributes = info["content"]["signer_infos"][0]["signed_attrs"]
    digest = next(a for a in attributes if a["type"].native == "message_digest")
    twice = asn1_cms.ContentInfo.load(signed)
    twice["content"]["signer_infos"][0]["signed_attrs"] = asn1_cms.CMSAttributes(
        [*attributes, asn1_cms.CMSAttribute({"type": "message_digest",
                                             "values": [b"\x00" * 32]}), digest])
    empty = asn1_cms.ContentInfo.load(signed)
    empty["content"]["signer_infos"][0]["signed_attrs"] = asn1_cms.CMSAttributes([])
    for data, reason in ((twice.dump(force=True), "message-digest attribute more than once"),
                         (empty.dump(force=True), "present but empty")):
        with pytest.raises(CMSFormatError, match=reason):
            cms.verify(data)
        with pytest.raises(CMSFormatError, match=reason):
            cms._signed_data_asn1(data)


def test_the_der_walker_reads_envelopes_as_asn1crypto_does(
    pki: TestPKI, openssl: OpenSSL, gpgsm: GpgSM
) -> None:
    """
    Decryption reads definite-length DER (Auth)EnvelopedData with a walker of
    its own; where asn1crypto can read the same message both must agree.
    """
    two = [pki.alice, pki.bob]
    made = {
        "cipherd CBC": cms.encrypt(CONTENT, [pki.alice.cert, pki.bob.cert]),
        "cipherd GCM OAEP": cms.encrypt(CONTENT, [pki.alice.cert], cipher="aes128_gcm",
                                        oaep=True),
        "openssl 3DES keyid": openssl.cms_encrypt(CONTENT, two, cipher="tripledes_3key",
                                                  keyid=True),
        "openssl GCM": openssl.cms_encrypt(CONTENT, two, cipher="aes256_gcm"),
        "openssl OAEP": openssl.cms_encrypt(CONTENT, [pki.alice], oaep=True),
        "hand-made GCM with attributes": _auth_enveloped(pki, CONTENT, tag_length=12),
        "NSS ECDH (kari)": smime._decode_body(smime.Parts.split(
            corpus_file(NSS_INTEROP / "fran-ec_ossl-aes128-sha256.env"))),
    }

    def comparable(recipients: list) -> list:
        return [r if isinstance(r, cms._KeyTransport) else r.dump() for r in recipients]

    for name, data in made.items():
        kind, fast = cms._envelope_fast(data)
        expected_kind, slow = cms._envelope_asn1(data)
        assert kind == expected_kind, name
        assert comparable(fast.recipient_infos) == comparable(slow.recipient_infos), name
        assert (fast.cipher, fast.parameters, fast.tag, fast.aad) == (
            slow.cipher, slow.parameters, slow.tag, slow.aad), name
        assert bytes(fast.encrypted or b"") == bytes(slow.encrypted or b""), name
    with pytest.raises(cms._NotDER):
        cms._envelope_fast(gpgsm.encrypt(CONTENT, [pki.alice]))


@pytest.mark.parametrize(("kind", "scheme"), [
    ("x25519", "ECDH sha256 KDF, aes128_wrap"), ("x448", "ECDH sha512 KDF, aes256_wrap")])
@pytest.mark.parametrize("cipher", ["aes256_cbc", "aes256_gcm"])
def test_x25519_and_x448_recipients(pki: TestPKI, openssl: OpenSSL, kind: str, scheme: str,
                                    cipher: str) -> None:
    """
    RFC 8418: ephemeral-static key agreement with X25519 (SHA-256 X9.63 KDF,
    AES-128 wrap) and X448 (SHA-512, AES-256 wrap), the originator key by
    its algorithm with absent parameters.  No peer here opens it (OpenSSL
    3.0 has no X25519 key agreement in CMS: "operation not supported for
    this keytype"; gpgsm 2.2 has no ECDH in CMS): openssl reads the
    structure and opens it with the RSA recipient beside, and we open it
    with the X25519/X448 key and refuse another.
    """
    generate = {"x25519": x25519.X25519PrivateKey.generate,
                "x448": x448.X448PrivateKey.generate}[kind]
    key = generate()
    cert = make_user_certificate(f"{kind}@example.org", key, pki.ca.cert, pki.ca.key,
                                 pki.carol.cert.not_valid_before_utc,
                                 pki.carol.cert.not_valid_after_utc)
    encrypted = cms.encrypt(CONTENT, [cert, pki.alice.cert], cipher=cipher)
    result = cms.decrypt(encrypted, [(cert, key)])
    assert (result.content, result.certificate, result.key_transport) == (CONTENT, cert, scheme)
    assert openssl.cms_decrypt(encrypted, pki.alice) == CONTENT
    printed = run(["openssl", "cms", "-cmsout", "-print", "-inform", "DER"],
                  stdin=encrypted).stdout.decode()
    assert f"algorithm: {kind.upper()} (1.3.101.11{0 if kind == 'x25519' else 1})" in printed
    assert "parameter: <ABSENT>" in printed
    with pytest.raises(DecryptionFailed):
        cms.decrypt(encrypted, [(cert, generate())])
    # They agree on keys: valid for encryption, never for signing.
    assert usage_problem(cert, Purpose.ENCRYPTION) is None
    assert "cannot sign" in (usage_problem(cert, Purpose.SIGNING) or "")
    with pytest.raises(UnsupportedAlgorithm):
        cms.sign(CONTENT, cert, key, signing_time=NOW)
