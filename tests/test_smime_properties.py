"""
Property tests (hypothesis) for C{cipherd.pki.cms} and C{cipherd.pki.smime}:
whatever the content -- arbitrary bytes, 8-bit text, bare LF and bare CR,
lines longer than 998 characters -- what is signed verifies and what is
encrypted decrypts, and it comes back: byte for byte at the CMS layer,
canonicalised (CRLF, RFC 8551 §3.1.1) at the message layer.  And whatever
bytes arrive, only PKIError subclasses come out.

The RSA and EC keys are made once for the module; example counts are kept
low so that the suite stays fast.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import re
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.parser import BytesParser
from functools import cache
from unittest import mock

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from cipherd.pki import cms, smime
from cipherd.pki.errors import PKIError
from tests.peers import PrivateKey, make_ca, make_user_certificate

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
MAX_LINE = 998  # RFC 5322 §2.1.1

PROPERTY_SETTINGS = settings(
    max_examples=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class Keys:
    rsa: tuple[x509.Certificate, PrivateKey]
    rsa_other: tuple[x509.Certificate, PrivateKey]
    ec: tuple[x509.Certificate, PrivateKey]


@cache
def keys() -> Keys:
    """
    Made once per module: RSA-2048 keys take a while.
    """
    start, end = NOW - timedelta(days=1), NOW + timedelta(days=365)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = make_ca(ca_key, start, end)

    def user(email: str, key: PrivateKey) -> tuple[x509.Certificate, PrivateKey]:
        return make_user_certificate(email, key, ca, ca_key, start, end), key

    return Keys(
        rsa=user("alice@example.org", rsa.generate_private_key(public_exponent=65537,
                                                                key_size=2048)),
        rsa_other=user("bob@example.org", rsa.generate_private_key(public_exponent=65537,
                                                                    key_size=2048)),
        ec=user("carol@example.org", ec.generate_private_key(ec.SECP256R1())),
    )


# Strategies -----------------------------------------------------------------------------

# Pieces of bodies that have broken MIME code before: line ends of every
# kind, dot and "From " lines, boundaries, QP soft breaks, long lines.
_TRICKY = st.sampled_from([
    b"\r\n", b"\n", b"\r", b"\r\r\n", b"\n\r", b"\r\n\r\n", b"From ", b".", b"\r\n.\r\n",
    b"--", b"=\r\n", b" \t", b"\x00", b"\xff\xfe", "é€😀".encode(),
])
_SEGMENTS = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=120).map(lambda t: t.encode("utf-8")),
    _TRICKY,
    st.integers(min_value=MAX_LINE - 2, max_value=2500).map(lambda n: b"L" * n),
)
BODIES = st.lists(_SEGMENTS, max_size=10).map(b"".join)
TEXTS = st.text(max_size=2000)
ENTITY_HEADERS = st.sampled_from([
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n",
    b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n",
    b"Content-Type: text/plain\r\n",
])
LINE_ENDS = st.sampled_from(["crlf", "lf"])

OUTER = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: property\r\n"
    b"Date: Sat, 28 Nov 2026 12:00:00 +0000\r\n"
    b"MIME-Version: 1.0\r\n"
)


def canonical(data: bytes) -> bytes:
    """
    CRLF line ends (RFC 8551 §3.1.1), written independently of cipherd's.
    """
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


def build_message(headers: bytes, body: bytes, eol: str) -> tuple[bytes, bytes]:
    """
    A whole message with the entity C{headers} + C{body}, and the entity
    that should come back (canonical).
    """
    head = OUTER + headers + b"\r\n"
    if eol == "lf":
        head = head.replace(b"\r\n", b"\n")
    return head + body, canonical(headers + b"\r\n") + canonical(body)


def decoded_body(entity: bytes) -> bytes:
    parsed = BytesParser(policy=email.policy.default).parsebytes(entity)
    assert not parsed.is_multipart()
    payload = parsed.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload


def is_seven_bit(data: bytes) -> bool:
    return data.isascii() and all(len(line) <= MAX_LINE for line in data.split(b"\r\n"))


# The CMS layer: byte for byte -------------------------------------------------------------


@PROPERTY_SETTINGS
@given(content=st.binary(max_size=5000), detached=st.booleans(),
       signer=st.sampled_from(["rsa", "ec"]),
       digest=st.sampled_from(["sha256", "sha384", "sha512"]))
def test_cms_sign_verify_round_trip(content: bytes, detached: bool, signer: str,
                                    digest: str) -> None:
    cert, key = getattr(keys(), signer)
    signature = cms.sign(content, cert, key, signing_time=NOW, detached=detached, digest=digest)
    result = cms.verify(signature, content if detached else None)
    assert result.all_valid, [s.reason for s in result.signers]
    assert result.content == content
    [check] = result.signers
    assert (check.certificate, check.digest_algorithm, check.signing_time) == (
        cert, digest, NOW)


@PROPERTY_SETTINGS
@given(content=st.binary(max_size=5000), changed=st.data())
def test_cms_changed_content_never_verifies(content: bytes, changed: st.DataObject) -> None:
    cert, key = keys().rsa
    signature = cms.sign(content, cert, key, signing_time=NOW)
    other = changed.draw(st.binary(max_size=5000).filter(lambda b: b != content))
    result = cms.verify(signature, other)
    assert not result.all_valid
    assert "changed" in result.signers[0].reason


@PROPERTY_SETTINGS
@given(content=st.binary(max_size=5000), cipher=st.sampled_from(cms.ENCRYPTION_CIPHERS),
       oaep=st.booleans(), both=st.booleans())
def test_cms_encrypt_decrypt_round_trip(content: bytes, cipher: str, oaep: bool,
                                        both: bool) -> None:
    k = keys()
    recipients = [k.rsa_other[0], k.rsa[0]] if both else [k.rsa[0]]
    encrypted = cms.encrypt(content, recipients, cipher=cipher, oaep=oaep)
    result = cms.decrypt(encrypted, [k.rsa])
    assert result.content == content
    assert result.cipher == cipher
    assert result.key_transport == ("rsaes_oaep" if oaep else "rsaes_pkcs1v15")
    assert result.certificate == k.rsa[0]


# The message layer: canonicalised ---------------------------------------------------------


@PROPERTY_SETTINGS
@given(headers=ENTITY_HEADERS, body=BODIES, eol=LINE_ENDS, detached=st.booleans())
def test_signed_message_round_trip(headers: bytes, body: bytes, eol: str,
                                   detached: bool) -> None:
    cert, key = keys().rsa
    original, entity = build_message(headers, body, eol)
    signed = smime.sign_message(original, cert, key, signing_time=NOW, detached=detached)
    assert signed.startswith(OUTER[: OUTER.index(b"MIME-Version")])
    verified = smime.verify_message(signed)
    assert verified.result.all_valid, [s.reason for s in verified.result.signers]
    if not detached or is_seven_bit(entity):
        # RFC 8551 §3.1.1: the entity, canonical, is what was signed.
        assert verified.entity == entity
    else:
        # RFC 8551 §3.1.2: re-encoded to 7 bits for multipart/signed; the
        # content is the same once decoded.
        assert is_seven_bit(signed)
        assert decoded_body(verified.entity) == canonical(body)
    assert verified.message.endswith(verified.entity)


@PROPERTY_SETTINGS
@given(text=TEXTS, eol=LINE_ENDS, detached=st.booleans())
def test_signed_text_message_round_trip(text: str, eol: str, detached: bool) -> None:
    cert, key = keys().ec
    headers = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
    original, _ = build_message(headers, text.encode("utf-8"), eol)
    signed = smime.sign_message(original, cert, key, signing_time=NOW, detached=detached)
    verified = smime.verify_message(signed)
    assert verified.result.all_valid, [s.reason for s in verified.result.signers]
    body = decoded_body(verified.entity)
    assert body == canonical(text.encode("utf-8"))
    assert body.decode("utf-8") == canonical(text.encode("utf-8")).decode("utf-8")


@PROPERTY_SETTINGS
@given(headers=ENTITY_HEADERS, body=BODIES, eol=LINE_ENDS,
       cipher=st.sampled_from(cms.ENCRYPTION_CIPHERS), oaep=st.booleans())
def test_encrypted_message_round_trip(headers: bytes, body: bytes, eol: str, cipher: str,
                                      oaep: bool) -> None:
    k = keys()
    original, entity = build_message(headers, body, eol)
    encrypted = smime.encrypt_message(original, [k.rsa[0]], cipher=cipher, oaep=oaep)
    assert encrypted.isascii()
    assert smime.classify(encrypted).kind == (
        "authEnveloped-data" if cipher.endswith("gcm") else "enveloped-data")
    decrypted = smime.decrypt_message(encrypted, [k.rsa_other, k.rsa])
    assert decrypted.entity == entity
    assert decrypted.message.startswith(OUTER[: OUTER.index(b"MIME-Version")])
    assert decrypted.message.endswith(entity)


@PROPERTY_SETTINGS
@given(headers=ENTITY_HEADERS, body=BODIES, text=TEXTS, eol=LINE_ENDS,
       detached=st.booleans(), cipher=st.sampled_from(cms.ENCRYPTION_CIPHERS))
def test_signed_then_encrypted_message_round_trip(
    headers: bytes, body: bytes, text: str, eol: str, detached: bool, cipher: str
) -> None:
    """
    The gateway's usual path: sign, encrypt; then decrypt, verify.
    """
    k = keys()
    original, entity = build_message(headers, body + text.encode("utf-8"), eol)
    signed = smime.sign_message(original, *k.rsa, signing_time=NOW, detached=detached)
    encrypted = smime.encrypt_message(signed, [k.rsa_other[0]], cipher=cipher)
    decrypted = smime.decrypt_message(encrypted, [k.rsa_other])
    verified = smime.verify_message(decrypted.message)
    assert verified.result.all_valid, [s.reason for s in verified.result.signers]
    if not detached or is_seven_bit(entity):
        assert verified.entity == entity
    else:
        assert decoded_body(verified.entity) == canonical(body + text.encode("utf-8"))


@PROPERTY_SETTINGS
@given(headers=ENTITY_HEADERS, body=BODIES, eol=LINE_ENDS, detached=st.booleans(),
       cipher=st.sampled_from(cms.ENCRYPTION_CIPHERS))
def test_signed_and_encrypted_in_one_step_is_sign_then_encrypt(
    headers: bytes, body: bytes, eol: str, detached: bool, cipher: str
) -> None:
    """
    The engine's one step, which never holds the signed message whole,
    encrypts exactly what L{smime.sign_message} makes (RSA PKCS#1 v1.5
    signatures are deterministic; the boundary is fixed for the test).
    """
    k = keys()
    original, _ = build_message(headers, body, eol)
    boundary = smime._boundary()
    with mock.patch.object(smime, "_boundary", lambda: boundary):
        one_step = smime.sign_and_encrypt_message(original, *k.rsa, [k.rsa_other[0]],
                                                  signing_time=NOW, detached=detached,
                                                  cipher=cipher)
        signed = smime.sign_message(original, *k.rsa, signing_time=NOW, detached=detached)
    assert smime.decrypt_message(one_step, [k.rsa_other]).message == signed
    assert len(one_step) == len(smime.encrypt_message(signed, [k.rsa_other[0]], cipher=cipher))


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.binary(max_size=400), max_size=12), lines=st.integers(1, 4))
def test_base64_made_from_pieces_is_base64_of_the_whole(pieces: list[bytes],
                                                        lines: int) -> None:
    """
    Base64 made a block at a time from pieces cut anywhere (blocks of a few
    lines here, so that pieces straddle them) is the whole's, in 76-character
    CRLF lines.
    """
    whole = b"".join(pieces)
    encoded = binascii.b2a_base64(whole, newline=False)
    expected = b"".join(encoded[i : i + 76] + b"\r\n" for i in range(0, len(encoded), 76))
    with mock.patch.object(smime, "_BASE64_BLOCK", 57 * lines):
        assert b"".join(smime._base64_stream(pieces)) == (expected or b"\r\n")
    assert smime._base64_size(len(whole)) == len(expected or b"\r\n")


@settings(max_examples=50, deadline=None)
@given(pieces=st.lists(st.binary(max_size=300), max_size=6), detached=st.booleans())
def test_signed_data_from_pieces_holds_them(pieces: list[bytes], detached: bool) -> None:
    """
    A signature made over pieces is laid out as DER that reads back: the
    content is their concatenation (or absent, detached), and the pieces
    are in it as they are, not copied.
    """
    from asn1crypto import cms as asn1_cms

    cert, key = keys().rsa
    der = cms.sign_chunks(pieces, cert, key, signing_time=NOW, detached=detached)
    if not detached:
        assert all(any(piece is chunk for chunk in der) for piece in pieces)
    signed = asn1_cms.ContentInfo.load(b"".join(der))["content"]
    content = signed["encap_content_info"]["content"]
    assert content.native == (None if detached else b"".join(pieces))
    assert smime.verify_message(smime.sign_message(
        b"Content-Type: text/plain\r\n\r\n" + b"".join(pieces), cert, key,
        signing_time=NOW, detached=False)).result.all_valid


def test_encrypted_stream_refuses_content_of_another_length() -> None:
    _, der = cms.encrypt_chunks([b"abc", b"def"], [keys().rsa[0]], length=7)
    try:
        b"".join(der)
    except RuntimeError as e:
        assert "6 bytes of content where 7" in str(e)
    else:
        raise AssertionError("content shorter than laid out was encrypted")


# Only PKIError comes out ---------------------------------------------------------------------


def _only_pki_errors(call: object) -> None:
    assert callable(call)
    with warnings.catch_warnings():
        # Damaged certificates make cryptography warn; not the point here.
        warnings.simplefilter("ignore")
        try:
            call()
        except PKIError:
            pass


@PROPERTY_SETTINGS
@given(data=st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_pki_errors(data: bytes) -> None:
    k = keys()
    _only_pki_errors(lambda: cms.decrypt(data, [k.rsa]))
    _only_pki_errors(lambda: cms.verify(data, b"content"))
    _only_pki_errors(lambda: cms.verify(data))
    for smime_type in (b"enveloped-data", b"signed-data"):
        message = (OUTER + b"Content-Type: application/pkcs7-mime; smime-type=" + smime_type
                   + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(data))
        _only_pki_errors(lambda message=message: smime.decrypt_message(message, [k.rsa]))
        _only_pki_errors(lambda message=message: smime.verify_message(message))


HEADER_BYTES = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@PROPERTY_SETTINGS
@given(encoding=HEADER_BYTES, parameter=HEADER_BYTES, boundary=HEADER_BYTES)
def test_hostile_mime_headers_raise_only_pki_errors(encoding: bytes, parameter: bytes,
                                                    boundary: bytes) -> None:
    """
    8-bit and malformed values in the headers S/MIME reads (transfer
    encoding, smime-type, protocol, boundary) give a clear error, never a
    crash.
    """
    k = keys()
    body = b"\r\nContent-Transfer-Encoding: " + encoding + b"\r\n\r\nMIIB\r\n"
    messages = [
        OUTER + b"Content-Type: application/pkcs7-mime; smime-type=" + parameter + body,
        OUTER + b"Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\";"
        b" boundary=\"" + boundary + b"\"" + body,
        OUTER + b"Content-Type: multipart/signed; protocol=" + parameter + b"; boundary=x"
        + body,
    ]
    for message in messages:
        _only_pki_errors(lambda message=message: smime.decrypt_message(message, [k.rsa]))
        _only_pki_errors(lambda message=message: smime.verify_message(message))


CORRUPTION_CONTENT = b"Content-Type: text/plain\r\n\r\nhello\r\n"


@cache
def valid_cms() -> dict[str, bytes]:
    k = keys()
    return {
        "enveloped": cms.encrypt(CORRUPTION_CONTENT, [k.rsa[0]]),
        "auth-enveloped": cms.encrypt(CORRUPTION_CONTENT, [k.rsa[0]], cipher="aes128_gcm"),
        "signed": cms.sign(CORRUPTION_CONTENT, *k.rsa, signing_time=NOW),
        "signed-opaque": cms.sign(CORRUPTION_CONTENT, *k.ec, signing_time=NOW, detached=False),
    }


# No shrinking: a failure here is a parse error deep in the DER, and
# shrinking one takes tens of seconds; the interop test's byte-by-byte sweep
# lists the positions.
@settings(max_examples=100, deadline=None, report_multiple_bugs=False,
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(kind=st.sampled_from(["enveloped", "auth-enveloped", "signed", "signed-opaque"]),
       position=st.floats(min_value=0, max_value=1, exclude_max=True),
       mask=st.integers(min_value=1, max_value=255))
def test_corrupted_cms_raises_only_pki_errors(kind: str, position: float, mask: int) -> None:
    """
    One byte of valid DER changed.  (Fails today: see
    test_smime_interop.test_corrupted_der_raises_only_pki_errors.)
    """
    corrupted = bytearray(valid_cms()[kind])
    corrupted[int(position * len(corrupted))] ^= mask
    data, k = bytes(corrupted), keys()
    if kind == "signed":
        _only_pki_errors(lambda: cms.verify(data, CORRUPTION_CONTENT))
    elif kind == "signed-opaque":
        _only_pki_errors(lambda: cms.verify(data))
    else:
        _only_pki_errors(lambda: cms.decrypt(data, [k.rsa]))


# The Content-* fields S/MIME reads, from pieces that exercise quoting,
# folding, case, repeated parameters and fields, and bare attributes.
_PARAM_NAMES = st.sampled_from(["protocol", "Protocol", "smime-type", "boundary", "BOUNDARY",
                                "name", "micalg", "x"])
_PARAM_VALUES = st.one_of(
    st.sampled_from(['"application/pkcs7-signature"', "application/x-pkcs7-signature",
                     "signed-data", '"enveloped-data"', "authEnveloped-data", '"a;b"',
                     '"sep \\" quote"', '"----=_Part_0 "', "<angle>", '""', "", '"\\\\x"',
                     "=", "a=b"]),
    st.text(alphabet="abc -_=\";\\/", max_size=12),
)
_TYPES = st.sampled_from(["multipart/signed", "Multipart/Signed", "application/pkcs7-mime",
                          "application/x-pkcs7-mime", "text/plain", "text", "a/b/c", "",
                          " multipart/signed "])
_SEPARATORS = st.sampled_from([";", "; ", " ;", ";\r\n ", ";\r\n\t", ";;"])


@st.composite
def _content_headers(draw: st.DrawFn) -> bytes:
    value = draw(_TYPES)
    for _ in range(draw(st.integers(0, 4))):
        value += draw(_SEPARATORS) + draw(_PARAM_NAMES)
        if draw(st.booleans()):
            value += draw(st.sampled_from(["=", " = ", "= "])) + draw(_PARAM_VALUES)
    fields = [b"Content-Type: " + value.encode()]
    if draw(st.booleans()):
        fields.append(b"Content-Transfer-Encoding:" + draw(st.sampled_from(
            [b" base64", b" BASE64 ", b"base64", b" 7bit", b"", b" \r\n base64"])))
    if draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))),
                      b"content-type: application/pkcs7-mime; smime-type=signed-data")
    return b"\r\n".join(fields)


@settings(max_examples=500, deadline=None)  # cheap: no crypto
@given(headers=_content_headers())
def test_the_fast_header_reader_agrees_with_the_email_package(headers: bytes) -> None:
    parts = smime.Parts.split(OUTER + headers + b"\r\n\r\nbody\r\n")
    fast = smime._content_fields_fast(parts)
    assert fast is not None
    assert fast == smime._content_fields_by_email(parts)


@settings(max_examples=300, deadline=None)
@given(when=st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1),
                         timezones=st.just(UTC)),
       number=st.integers(min_value=-(2**160), max_value=2**160))
def test_hand_made_der_matches_asn1crypto(when: datetime, number: int) -> None:
    """
    The DER cms builds by hand on every message (signing time, integers)
    is what asn1crypto would build.
    """
    from asn1crypto import cms as asn1_cms
    from asn1crypto import core

    time = (asn1_cms.Time({"utc_time": when}) if 1950 <= when.year < 2050
            else asn1_cms.Time({"generalized_time": when.replace(microsecond=0)}))
    expected = asn1_cms.CMSAttribute({"type": "signing_time", "values": [time]}).dump()
    assert cms._signing_time_attribute(when) == expected
    assert cms._der_int(number) == core.Integer(number).dump()


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.integers(min_value=0, max_value=1100), max_size=30),
       eight_bit=st.booleans())
def test_long_lines_and_8bit_are_found(lines: list[int], eight_bit: bool) -> None:
    entity = b"\r\n".join(b"a" * n for n in lines) + (b"\xe9" if eight_bit else b"")
    naive = eight_bit or any(n > MAX_LINE for n in lines)
    assert smime._needs_encoding(entity) is naive
