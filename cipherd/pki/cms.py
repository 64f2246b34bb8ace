"""
CMS (RFC 5652) SignedData, EnvelopedData and AuthEnvelopedData (RFC 5083),
built and read with asn1crypto; the cryptography package supplies only the
primitives.  (cryptography cannot verify SignedData and decrypts only what
it builds itself; see FIELD-NOTES.)

Everything here works on bytes: the DER (or BER) of a ContentInfo and the
content it protects.  MIME is ``cipherd.pki.smime``'s business; trust is
``cipherd.pki.trust``'s: L{verify} says whether each signature is
mathematically right and who made it, not whether to believe that signer.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.exceptions import UnsupportedAlgorithm as CryptographyUnsupportedAlgorithm
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, keywrap, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap

from cipherd.pki.errors import (
    CMSFormatError,
    DecryptionFailed,
    DecryptionKeyNotFound,
    UnsupportedAlgorithm,
)
from cipherd.pki.memo import bytes_size, certificate_size, small_lru

PrivateKey = (rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
              | x25519.X25519PrivateKey | x448.X448PrivateKey)
# Keys that only agree on keys (RFC 8418): they decrypt, never sign.
_AGREEMENT_ONLY = (x25519.X25519PrivateKey, x448.X448PrivateKey)

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
    "md5": hashes.MD5,
}

# The ciphers we decrypt: name -> (key bytes, kind).
_CIPHERS: dict[str, tuple[int, str]] = {
    "aes128_cbc": (16, "cbc"),
    "aes192_cbc": (24, "cbc"),
    "aes256_cbc": (32, "cbc"),
    "tripledes_3key": (24, "3des"),
    "aes128_gcm": (16, "gcm"),
    "aes192_gcm": (24, "gcm"),
    "aes256_gcm": (32, "gcm"),
}

# What we offer when we encrypt.
ENCRYPTION_CIPHERS = ("aes256_cbc", "aes128_cbc", "aes256_gcm", "aes128_gcm")


class GCMParameters(core.Sequence):
    """
    RFC 5084 §3.2; asn1crypto has no type for it.
    """

    _fields = [
        ("aes_nonce", core.OctetString),
        ("aes_icv_len", core.Integer, {"default": 12}),
    ]


# Parsing ---------------------------------------------------------------------


def load_content_info(data: bytes) -> cms.ContentInfo:
    """
    Parse a DER or BER ContentInfo (also accepted: PEM, as openssl and some
    clients write it).

    @raise CMSFormatError: not a ContentInfo.
    """
    data = _strip_pem(data)
    try:
        info = cms.ContentInfo.load(data)
        # Parse the outer layers now, so malformed input fails here.
        info["content_type"].native  # noqa: B018
        info["content"]
    except (ValueError, TypeError, KeyError) as e:
        raise CMSFormatError(f"The data is not a CMS message: {e}") from None
    return info


def _strip_pem(data: bytes) -> bytes:
    stripped = data.lstrip()
    if not stripped.startswith(b"-----BEGIN"):
        return data
    import base64

    lines = [ln for ln in stripped.splitlines() if ln and not ln.startswith(b"-----")]
    try:
        return base64.b64decode(b"".join(lines), validate=False)
    except ValueError:
        raise CMSFormatError("The PEM data is not valid base64.") from None


def _certificate(choice: cms.CertificateChoices) -> x509.Certificate | None:
    if choice.name != "certificate":
        return None
    return _load_certificate(choice.chosen.dump())


def _issuer_serial(cert: x509.Certificate) -> tuple[bytes, int]:
    return (cert.issuer.public_bytes(), cert.serial_number)


def subject_key_identifier(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None


def _identifier_matches(identifier: Any, cert: x509.Certificate) -> bool:
    """
    Whether a SignerIdentifier / RecipientIdentifier names C{cert}.
    """
    if identifier.name == "issuer_and_serial_number":
        value = identifier.chosen
        if value["serial_number"].native != cert.serial_number:
            return False
        issuer = value["issuer"]
        if issuer.dump() == cert.issuer.public_bytes():
            return True
        # Compare names as asn1crypto does (normalised), not byte for byte:
        # clients re-encode issuer names (PrintableString vs UTF8String).
        return bool(issuer == _der_name(cert.issuer))
    ski = subject_key_identifier(cert)
    return ski is not None and hmac.compare_digest(identifier.chosen.native, ski)


def _key_agreement_matches(identifier: Any, cert: x509.Certificate) -> bool:
    """
    Whether a KeyAgreeRecipientIdentifier (RFC 5652 §6.2.2) names C{cert}.
    """
    if identifier.name == "issuer_and_serial_number":
        return _identifier_matches(identifier, cert)
    ski = subject_key_identifier(cert)
    wanted = identifier.chosen["subject_key_identifier"].native
    return ski is not None and hmac.compare_digest(wanted, ski)


def describe_identifier(identifier: Any) -> str:
    """
    A signer or recipient identifier as the logs show it.
    """
    return _describe(identifier.dump(), identifier.__class__.__name__)


_IDENTIFIER_TYPES = {"SignerIdentifier": cms.SignerIdentifier,
                     "RecipientIdentifier": cms.RecipientIdentifier}


@small_lru(256, bytes_size)
def _describe(der: bytes, kind: str) -> str:
    identifier = _IDENTIFIER_TYPES[kind].load(der)
    if identifier.name == "issuer_and_serial_number":
        value = identifier.chosen
        return f"issuer {value['issuer'].human_friendly}, serial {value['serial_number'].native:x}"
    return f"subject key identifier {identifier.chosen.native.hex()}"



# DER by hand for what we build on every message --------------------------------


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(raw),)) + raw


def _header(tag: int, length: int) -> bytes:
    return bytes((tag,)) + _der_length(length)


def _tlv(tag: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return _header(tag, len(body)) + body


def _der_int(n: int) -> bytes:
    # Two's complement in the fewest bytes (X.690 §8.3).
    return _tlv(0x02, n.to_bytes((n + (n < 0)).bit_length() // 8 + 1, "big", signed=True))


# What is derived from a certificate on every message is derived once (for
# certificates of an ordinary size: see memo).
@small_lru(256, certificate_size)
def _issuer_and_serial_der(cert: x509.Certificate) -> bytes:
    return _tlv(0x30, cert.issuer.public_bytes(), _der_int(cert.serial_number))


@small_lru(256, certificate_size)
def _certificate_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@small_lru(256, certificate_size)
def _public_key(cert: x509.Certificate) -> Any:
    return cert.public_key()


_DIGEST_ALGORITHM_DER = {
    name: algos.DigestAlgorithm({"algorithm": name}).dump() for name in _HASHES
}
_ATTR_CONTENT_TYPE_DATA = cms.CMSAttribute({"type": "content_type", "values": ["data"]}).dump()
_ATTR_CAPABILITIES = cms.CMSAttribute({"type": "smime_capabilities", "values": [
    cms.SMIMECapabilites([{"capability_id": alg} for alg in ("aes256_cbc", "aes128_cbc")])
]}).dump()
_OID_MESSAGE_DIGEST = core.ObjectIdentifier("1.2.840.113549.1.9.4").dump()
_OID_DATA = core.ObjectIdentifier("1.2.840.113549.1.7.1").dump()
_OID_SIGNED_DATA = core.ObjectIdentifier("1.2.840.113549.1.7.2").dump()
_OID_ENVELOPED_DATA = core.ObjectIdentifier("1.2.840.113549.1.7.3").dump()
_OID_AUTH_ENVELOPED_DATA = core.ObjectIdentifier("1.2.840.113549.1.9.16.1.23").dump()
_RSA_PKCS1_SIGNATURE_DER = algos.SignedDigestAlgorithm({"algorithm": "rsassa_pkcs1v15"}).dump()
_RSA_PKCS1_TRANSPORT_DER = cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15"}).dump()
_VERSION_0 = _der_int(0)
_VERSION_1 = _der_int(1)


# Signing ----------------------------------------------------------------------


def _der_name(name: x509.Name) -> asn1_x509.Name:
    return asn1_x509.Name.load(name.public_bytes())


def _signature_algorithm(key: PrivateKey, digest: str, pss: bool = False
                         ) -> algos.SignedDigestAlgorithm:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return algos.SignedDigestAlgorithm({"algorithm": "ed25519"})
    if isinstance(key, rsa.RSAPrivateKey):
        if pss:
            # RFC 4056 §3: MGF1 with the same hash, a salt of its length.
            return algos.SignedDigestAlgorithm({"algorithm": "rsassa_pss", "parameters": {
                "hash_algorithm": {"algorithm": digest},
                "mask_gen_algorithm": {"algorithm": "mgf1",
                                       "parameters": {"algorithm": digest}},
                "salt_length": _HASHES[digest]().digest_size}})
        return algos.SignedDigestAlgorithm({"algorithm": "rsassa_pkcs1v15"})
    return algos.SignedDigestAlgorithm({"algorithm": f"{digest}_ecdsa"})


_OID_SIGNING_TIME = core.ObjectIdentifier("1.2.840.113549.1.9.5").dump()


def _signing_time_attribute(when: datetime) -> bytes:
    # RFC 5652 §11.3: UTCTime for 1950-2049, GeneralizedTime otherwise;
    # both in UTC, to the second, with Z.
    when = when.astimezone(UTC) if when.tzinfo else when
    if 1950 <= when.year < 2050:
        time = _tlv(0x17, when.strftime("%y%m%d%H%M%SZ").encode())
    else:
        time = _tlv(0x18, f"{when.year:04d}{when.strftime('%m%d%H%M%S')}Z".encode())
    return _tlv(0x30, _OID_SIGNING_TIME, _tlv(0x31, time))


Chunk = bytes | memoryview


def sign(
    content: bytes,
    certificate: x509.Certificate,
    key: PrivateKey,
    *,
    signing_time: datetime,
    detached: bool = True,
    chain: Sequence[x509.Certificate] = (),
    digest: str = "sha256",
    pss: bool = False,
) -> bytes:
    """
    A SignedData ContentInfo over C{content} (RFC 5652 §5, RFC 8551 §2.5):
    signed attributes content-type, signing-time, message-digest and
    S/MIME capabilities; the signer's certificate and C{chain} embedded.
    Signed with PKCS#1 v1.5 or, with C{pss}, RSASSA-PSS (RFC 4056) for an
    RSA key; ECDSA for an EC key; Ed25519 (RFC 8419, with SHA-512 as the
    digest whatever C{digest} says) for an Ed25519 key.

    @param signing_time: from the injected clock.
    @param detached: leave the content out (for multipart/signed).
    @return: DER.
    """
    return b"".join(sign_chunks([content], certificate, key, signing_time=signing_time,
                                detached=detached, chain=chain, digest=digest, pss=pss))


def sign_chunks(
    chunks: Sequence[Chunk],
    certificate: x509.Certificate,
    key: PrivateKey,
    *,
    signing_time: datetime,
    detached: bool = True,
    chain: Sequence[x509.Certificate] = (),
    digest: str = "sha256",
    pss: bool = False,
) -> list[Chunk]:
    """
    L{sign} for content given in pieces, its DER given in pieces too: an
    opaque signature holds the content's pieces themselves, never a copy.
    """
    chunks = list(chunks)  # read three times: a generator would be read once
    if isinstance(key, _AGREEMENT_ONLY):
        raise UnsupportedAlgorithm("An X25519 or X448 key agrees on keys; it cannot sign.")
    if isinstance(key, ed25519.Ed25519PrivateKey):
        digest = "sha512"  # RFC 8419 §3.1
    hash_cls = _HASHES[digest]
    message_digest = hashes.Hash(hash_cls())
    for chunk in chunks:
        message_digest.update(chunk)
    attributes = [
        _ATTR_CONTENT_TYPE_DATA,
        _signing_time_attribute(signing_time),
        _tlv(0x30, _OID_MESSAGE_DIGEST, _tlv(0x31, _tlv(0x04, message_digest.finalize()))),
        _ATTR_CAPABILITIES,
    ]
    attributes_body = b"".join(sorted(attributes))  # DER: a SET OF is sorted
    to_sign = _header(0x31, len(attributes_body)) + attributes_body
    if isinstance(key, rsa.RSAPrivateKey) and not pss:
        signature = key.sign(to_sign, asym_padding.PKCS1v15(), hash_cls())
        signature_algorithm = _RSA_PKCS1_SIGNATURE_DER
    else:
        if isinstance(key, rsa.RSAPrivateKey):
            signature = key.sign(to_sign, asym_padding.PSS(
                asym_padding.MGF1(hash_cls()), asym_padding.PSS.DIGEST_LENGTH), hash_cls())
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            signature = key.sign(to_sign)  # PureEdDSA over the attributes
        else:
            signature = key.sign(to_sign, ec.ECDSA(hash_cls()))
        signature_algorithm = _signature_algorithm(key, digest, pss).dump()
    digest_algorithm = _DIGEST_ALGORITHM_DER[digest]
    signer_info = _tlv(
        0x30,
        _VERSION_1,
        _issuer_and_serial_der(certificate),
        digest_algorithm,
        b"\xa0" + to_sign[1:],  # [0] IMPLICIT
        signature_algorithm,
        _tlv(0x04, signature),
    )
    before = _VERSION_1 + _tlv(0x31, digest_algorithm)
    certificates = [_certificate_der(c) for c in (certificate, *chain)]
    after = _tlv(0xA0, *certificates) + _tlv(0x31, signer_info)
    if detached:
        encap_head, content_length = _tlv(0x30, _OID_DATA), 0
    else:
        # encapContentInfo: SEQUENCE { id-data, [0] EXPLICIT OCTET STRING }
        content_length = sum(len(chunk) for chunk in chunks)
        octets = _header(0x04, content_length)
        explicit = _header(0xA0, len(octets) + content_length)
        encap_length = len(_OID_DATA) + len(explicit) + len(octets) + content_length
        encap_head = _header(0x30, encap_length) + _OID_DATA + explicit + octets
    signed_length = len(before) + len(encap_head) + content_length + len(after)
    signed_head = _header(0x30, signed_length)
    explicit_head = _header(0xA0, len(signed_head) + signed_length)
    outer_head = _header(0x30, len(_OID_SIGNED_DATA) + len(explicit_head) + len(signed_head)
                         + signed_length)
    head = (outer_head + _OID_SIGNED_DATA + explicit_head + signed_head + before
            + encap_head)
    return [head, *([] if detached else chunks), after]


# Verification -----------------------------------------------------------------


@dataclass(frozen=True)
class SignatureCheck:
    """
    The cryptographic check of one SignerInfo.

    @ivar certificate: the signer's certificate, if found (embedded or
        given).
    @ivar valid: the digest and the signature are right.
    @ivar reason: why not, when not valid; C{""} when valid.
    @ivar signer_id: the signer's identifier as the message names it.
    @ivar signing_time: the signing-time attribute, if any.
    """

    certificate: x509.Certificate | None
    valid: bool
    reason: str
    signer_id: str
    digest_algorithm: str
    signing_time: datetime | None = None
    sid_issuer_serial: tuple[bytes, int] | None = None  # (issuer DER, serial)
    sid_key_id: bytes | None = None


@dataclass(frozen=True)
class VerifiedContent:
    """
    The result of reading a SignedData.

    @ivar content: the signed content (for detached signatures, what was
        passed in).
    @ivar signers: one check per SignerInfo, in order.
    @ivar certificates: every certificate embedded, for path building.
    """

    content: bytes
    signers: list[SignatureCheck]
    certificates: list[x509.Certificate] = field(default_factory=list)

    @property
    def all_valid(self) -> bool:
        return bool(self.signers) and all(s.valid for s in self.signers)


def _verify_with(
    cert: x509.Certificate, signature: bytes, data: bytes, algorithm: str, hash_cls: Any,
    signature_algorithm: Any,
) -> None:
    """
    @raise InvalidSignature: the signature does not verify.
    @raise UnsupportedAlgorithm: a key or signature type we cannot check.
    """
    public_key = _public_key(cert)
    if isinstance(public_key, rsa.RSAPublicKey):
        if algorithm == "rsassa_pss":
            params = signature_algorithm["parameters"]
            pss_hash = _HASHES[params["hash_algorithm"]["algorithm"].native]()
            mgf_hash = _HASHES[params["mask_gen_algorithm"]["parameters"]["algorithm"].native]()
            public_key.verify(
                signature, data,
                asym_padding.PSS(asym_padding.MGF1(mgf_hash), params["salt_length"].native),
                pss_hash,
            )
        elif algorithm == "rsassa_pkcs1v15":
            public_key.verify(signature, data, asym_padding.PKCS1v15(), hash_cls())
        else:
            raise UnsupportedAlgorithm(f"signature algorithm {algorithm} with an RSA key")
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        if algorithm != "ecdsa":
            raise UnsupportedAlgorithm(f"signature algorithm {algorithm} with an EC key")
        public_key.verify(signature, data, ec.ECDSA(hash_cls()))
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        # RFC 8419: PureEdDSA over the signed attributes (or the content),
        # whose digest MUST be SHA-512 (§3.1).
        if algorithm != "ed25519":
            raise UnsupportedAlgorithm(f"signature algorithm {algorithm} with an Ed25519 key")
        if hash_cls is not hashes.SHA512:
            raise UnsupportedAlgorithm("an Ed25519 signature with a digest other than SHA-512")
        public_key.verify(signature, data)
    else:
        raise UnsupportedAlgorithm(f"{type(public_key).__name__} signer keys")


@dataclass(frozen=True)
class _SignerFields:
    """
    What verification needs of one SignerInfo, read by the DER walker or,
    for BER and unusual forms, by asn1crypto.

    @ivar signed_attrs: the DER the signature covers when there are signed
        attributes (the SET OF tag instead of [0] IMPLICIT, RFC 5652
        §5.4), else C{None}.
    @ivar message_digests: the values of the message-digest attribute.
    @ivar content_type_matches: the content-type attribute has one value
        and it names the encapsulated content type.
    """

    sid_der: bytes
    issuer_der: bytes | None
    serial: int | None
    key_id: bytes | None
    digest_name: str
    signed_attrs: bytes | None
    message_digests: list[bytes] | None
    content_type_matches: bool
    signing_time: datetime | None
    signature_algorithm_der: bytes
    signature: bytes


def _fields_from_asn1(signer: cms.SignerInfo, content_type: str) -> _SignerFields:
    sid = signer["sid"]
    issuer_der = serial = key_id = None
    if sid.name == "issuer_and_serial_number":
        issuer_der, serial = sid.chosen["issuer"].dump(), sid.chosen["serial_number"].native
    else:
        key_id = sid.chosen.native
    signed_attrs = signer["signed_attrs"]
    digests = None
    type_matches = False
    signing_time = None
    raw = None
    if not isinstance(signed_attrs, core.Void):
        problem = _attribute_problem([a["type"].dump() for a in signed_attrs])
        if problem:
            raise CMSFormatError(problem)
        attrs = {a["type"].native: a["values"] for a in signed_attrs}
        if "message_digest" in attrs:
            digests = [v.native for v in attrs["message_digest"]]
        types = attrs.get("content_type")
        type_matches = types is not None and len(types) == 1 and (
            types[0].native == content_type)
        if "signing_time" in attrs and len(attrs["signing_time"]) == 1:
            signing_time = attrs["signing_time"][0].native
        raw = b"\x31" + signed_attrs.dump()[1:]
    return _SignerFields(
        sid.dump(), issuer_der, serial, key_id, signer["digest_algorithm"]["algorithm"].native,
        raw, digests, type_matches, signing_time, signer["signature_algorithm"].dump(),
        signer["signature"].native,
    )


@small_lru(64, bytes_size)
def _signature_algorithm_of(der: bytes) -> tuple[str, algos.SignedDigestAlgorithm]:
    algorithm = algos.SignedDigestAlgorithm.load(der)
    return algorithm.signature_algo, algorithm


@small_lru(256, certificate_size)
def _issuer_der(cert: x509.Certificate) -> bytes:
    return cert.issuer.public_bytes()


def _names_certificate(fields: _SignerFields | _KeyTransport, cert: x509.Certificate) -> bool:
    """
    Whether a signer's or recipient's identifier (issuer and serial, or
    subject key identifier) names C{cert}.
    """
    if fields.issuer_der is not None:
        if fields.serial != cert.serial_number:
            return False
        if fields.issuer_der == _issuer_der(cert):
            return True
        # Clients re-encode issuer names (PrintableString vs UTF8String):
        # compare them as asn1crypto normalises them.
        return bool(asn1_x509.Name.load(fields.issuer_der) == _der_name(cert.issuer))
    ski = subject_key_identifier(cert)
    return ski is not None and fields.key_id is not None and hmac.compare_digest(
        fields.key_id, ski)


def _check_signer(
    fields: _SignerFields, content: bytes, candidates: Sequence[x509.Certificate],
) -> SignatureCheck:
    signer_id = _describe(fields.sid_der, "SignerIdentifier")
    digest_name = fields.digest_name
    cert = next((c for c in candidates if _names_certificate(fields, c)), None)
    issuer_serial = (None if fields.issuer_der is None or fields.serial is None
                     else (fields.issuer_der, fields.serial))

    def result(valid: bool, reason: str, when: datetime | None = None) -> SignatureCheck:
        return SignatureCheck(cert, valid, reason, signer_id, digest_name, when,
                              issuer_serial, fields.key_id)

    if cert is None:
        return result(False, "The signer's certificate is not in the message or the store.")
    hash_cls = _HASHES.get(digest_name)
    if hash_cls is None:
        return result(False, f"The digest algorithm {digest_name} is not supported.")
    if digest_name == "md5":
        return result(False, "The message is signed with MD5, which is not secure.")
    digest = hashes.Hash(hash_cls())
    digest.update(content)
    computed = digest.finalize()

    signing_time = None
    if fields.signed_attrs is not None:
        wanted_digest = fields.message_digests
        if wanted_digest is None or len(wanted_digest) != 1:
            return result(False, "The signature has no message-digest attribute.")
        if not hmac.compare_digest(wanted_digest[0], computed):
            return result(False, "The message was changed after it was signed: "
                                 "the content does not match the message digest.")
        if not fields.content_type_matches:
            return result(False, "The content-type attribute does not match the content.")
        signing_time = fields.signing_time
        signed_bytes = fields.signed_attrs
    else:
        signed_bytes = content
    try:
        algorithm, signature_algorithm = _signature_algorithm_of(fields.signature_algorithm_der)
        _verify_with(cert, fields.signature, signed_bytes, algorithm, hash_cls,
                     signature_algorithm)
    except InvalidSignature:
        return result(False, "The signature is not valid: the message or its signed "
                             "attributes were changed, or it was not made with this "
                             "certificate's key.", signing_time)
    except (UnsupportedAlgorithm, CryptographyUnsupportedAlgorithm, ValueError, KeyError) as e:
        return result(False, f"The signature cannot be checked: {e}", signing_time)
    return result(True, "", signing_time)


def verify(
    data: bytes,
    detached_content: bytes | None = None,
    *,
    known_certificates: Iterable[x509.Certificate] = (),
) -> VerifiedContent:
    """
    Check every signature of a SignedData.

    @param detached_content: the content of a detached signature.
    @param known_certificates: more certificates to find signers among
        (from the store), after the embedded ones.
    @raise CMSFormatError: not a SignedData, or no content to check.
    """
    try:
        return _verify(data, detached_content, known_certificates)
    except (ValueError, TypeError, KeyError) as e:  # asn1crypto parses lazily
        raise _malformed(e) from None


def _malformed(e: Exception) -> CMSFormatError:
    return CMSFormatError(f"The CMS structure is malformed: {str(e).splitlines()[0]}")


def _verify(data: bytes, detached_content: bytes | None,
            known_certificates: Iterable[x509.Certificate]) -> VerifiedContent:
    data = _strip_pem(data)
    try:
        embedded, certificates, signers = _signed_data_fast(data)
        embedded_certs = [c for c in map(_load_certificate, certificates) if c]
    except _NotDER:
        embedded, embedded_certs, signers = _signed_data_asn1(data)
    if detached_content is not None:
        content = detached_content
    elif embedded is None:
        raise CMSFormatError("The signature is detached but no content was given.")
    else:
        content = embedded
    candidates = [*embedded_certs, *known_certificates]
    checks = [_check_signer(s, content, candidates) for s in signers]
    return VerifiedContent(content, checks, embedded_certs)


def _load_certificate(der: bytes) -> x509.Certificate | None:
    try:
        return x509.load_der_x509_certificate(der)
    except (ValueError, x509.InvalidVersion):
        return None


def _signed_data_asn1(data: bytes) -> tuple[bytes | None, list[x509.Certificate],
                                            list[_SignerFields]]:
    info = load_content_info(data)
    if info["content_type"].native != "signed_data":
        raise CMSFormatError(f"Expected signed data, found {info['content_type'].native}.")
    signed = info["content"]
    encap = signed["encap_content_info"]
    content_type = encap["content_type"].native
    embedded = encap["content"]
    content = None if embedded.native is None else _octets(embedded)
    certificates = [c for c in map(_certificate, signed["certificates"] or []) if c]
    return content, certificates, [_fields_from_asn1(s, content_type)
                                   for s in signed["signer_infos"]]


_DIGEST_BY_OID = {
    core.ObjectIdentifier(algos.DigestAlgorithmId.unmap(name)).dump(): name
    for name in _HASHES if name != "md5"
}
_OID_CONTENT_TYPE = core.ObjectIdentifier("1.2.840.113549.1.9.3").dump()


def _signed_data_fast(data: bytes) -> tuple[bytes | None, list[bytes], list[_SignerFields]]:
    """
    Walk a definite-length DER SignedData: the embedded content, the
    certificates (DER) and the signers.  Everything unusual (BER, a
    constructed content, unknown digests or attribute forms, elements that
    do not nest) raises L{_NotDER}, and asn1crypto reads the message instead.
    """
    buf = memoryview(data)
    oid, pos, signed_end = _content_body(buf)
    if oid != _OID_SIGNED_DATA:
        raise _NotDER()
    tag, _, pos = _read_tlv(buf, pos, signed_end)  # digestAlgorithms
    _expect(tag, 0x31)
    tag, encap_start, encap_end = _read_tlv(buf, pos, signed_end)
    _expect(tag, 0x30)
    tag, _, type_end = _read_tlv(buf, encap_start, encap_end)
    _expect(tag, 0x06)
    content_type = bytes(buf[encap_start:type_end])
    content = None
    if type_end < encap_end:
        tag, start, explicit_end = _read_tlv(buf, type_end, encap_end)
        _expect(tag, 0xA0)
        tag, start, end = _read_tlv(buf, start, explicit_end)
        _expect(tag, 0x04)
        content = bytes(buf[start:end])
    certificates = []
    tag, start, end = _read_tlv(buf, encap_end, signed_end)
    if tag == 0xA0:
        element = start
        while element < end:
            kind, _, element_end = _read_tlv(buf, element, end)
            if kind == 0x30:
                certificates.append(bytes(buf[element:element_end]))
            element = element_end
        tag, start, end = _read_tlv(buf, end, signed_end)
    if tag == 0xA1:  # crls
        tag, start, end = _read_tlv(buf, end, signed_end)
    _expect(tag, 0x31)
    signers = []
    element = start
    while element < end:
        tag, signer_start, signer_end = _read_tlv(buf, element, end)
        _expect(tag, 0x30)
        signers.append(_signer_fast(buf, signer_start, signer_end, content_type))
        element = signer_end
    return content, certificates, signers


# Signed attributes that may appear once only (RFC 5652 §11.1-11.3).
_SINGLE_ATTRIBUTES = {_OID_CONTENT_TYPE: "content-type", _OID_MESSAGE_DIGEST: "message-digest",
                      _OID_SIGNING_TIME: "signing-time"}


def _attribute_problem(oids: list[bytes]) -> str | None:
    """
    What is wrong with signed attributes of these types, or C{None}.
    """
    if not oids:
        return "A signer's signed attributes are present but empty (RFC 5652 §5.3)."
    for oid, name in _SINGLE_ATTRIBUTES.items():
        if oids.count(oid) > 1:
            return (f"A signer's signed attributes hold the {name} attribute more than once "
                    "(RFC 5652 §11).")
    return None


def _signer_fast(buf: memoryview, pos: int, end: int, content_type: bytes) -> _SignerFields:
    tag, _, pos = _read_tlv(buf, pos, end)  # version
    _expect(tag, 0x02)
    tag, start, sid_end = _read_tlv(buf, pos, end)
    sid_der = bytes(buf[pos:sid_end])
    issuer_der, serial, key_id = _identifier_fast(buf, tag, start, sid_end)
    tag, start, pos = _read_tlv(buf, sid_end, end)  # digestAlgorithm
    _expect(tag, 0x30)
    _, _, oid_end = _read_tlv(buf, start, pos)
    digest_name = _DIGEST_BY_OID.get(bytes(buf[start:oid_end]))
    if digest_name is None:
        raise _NotDER()
    signed_attrs = digests = None
    type_matches = False
    signing_time = None
    tag, start, attrs_end = _read_tlv(buf, pos, end)
    if tag == 0xA0:
        attributes: dict[bytes, list[tuple[int, int, int]]] = {}
        oids = []
        element = start
        while element < attrs_end:
            tag, attr_start, attr_end = _read_tlv(buf, element, attrs_end)
            _expect(tag, 0x30)
            tag, _, oid_end = _read_tlv(buf, attr_start, attr_end)
            _expect(tag, 0x06)
            tag, value, values_end = _read_tlv(buf, oid_end, attr_end)
            _expect(tag, 0x31)
            found = []
            while value < values_end:
                value_tag, _, value_end = _read_tlv(buf, value, values_end)
                found.append((value_tag, value, value_end))
                value = value_end
            oid = bytes(buf[attr_start:oid_end])
            oids.append(oid)
            attributes[oid] = found
            element = attr_end
        problem = _attribute_problem(oids)
        if problem:
            raise CMSFormatError(problem)
        signed_attrs = b"\x31" + bytes(buf[pos + 1:attrs_end])
        digests = _digest_values(buf, attributes.get(_OID_MESSAGE_DIGEST))
        types = attributes.get(_OID_CONTENT_TYPE)
        type_matches = types is not None and len(types) == 1 and (
            bytes(buf[types[0][1]:types[0][2]]) == content_type)
        times = attributes.get(_OID_SIGNING_TIME)
        if times is not None and len(times) == 1:
            signing_time = cms.Time.load(bytes(buf[times[0][1]:times[0][2]])).native
        pos = attrs_end
        tag, start, attrs_end = _read_tlv(buf, pos, end)
    _expect(tag, 0x30)
    algorithm_der = bytes(buf[pos:attrs_end])
    tag, start, signature_end = _read_tlv(buf, attrs_end, end)
    _expect(tag, 0x04)
    return _SignerFields(sid_der, issuer_der, serial, key_id, digest_name, signed_attrs,
                         digests, type_matches, signing_time, algorithm_der,
                         bytes(buf[start:signature_end]))


def _digest_values(buf: memoryview, values: list[tuple[int, int, int]] | None
                   ) -> list[bytes] | None:
    if values is None:
        return None
    digests = []
    for tag, start, end in values:
        if tag != 0x04:
            raise _NotDER()
        _, content_start, _ = _read_tlv(buf, start, end)
        digests.append(bytes(buf[content_start:end]))
    return digests


def _octets(value: Any) -> bytes:
    """
    The bytes of a (possibly constructed, BER) OCTET STRING.
    """
    native = value.native
    if isinstance(value, core.ParsableOctetString):
        native = value.contents if not value.method else value.native
    if isinstance(native, bytes):
        return native
    raise CMSFormatError("The content is not an OCTET STRING.")


# Encryption -------------------------------------------------------------------


def _recipient_info(cert: x509.Certificate, cek: bytes, oaep: bool) -> cms.RecipientInfo:
    public_key = _public_key(cert)
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise UnsupportedAlgorithm(
            f"Encryption to {type(public_key).__name__} certificates is not supported "
            "(RSA recipients only)."
        )
    padding_: asym_padding.AsymmetricPadding
    if oaep:
        padding_ = asym_padding.OAEP(asym_padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
        algorithm = cms.KeyEncryptionAlgorithm(
            {
                "algorithm": "rsaes_oaep",
                "parameters": algos.RSAESOAEPParams(
                    {
                        "hash_algorithm": {"algorithm": "sha256"},
                        "mask_gen_algorithm": {"algorithm": "mgf1",
                                               "parameters": {"algorithm": "sha256"}},
                    }
                ),
            }
        )
    else:
        padding_ = asym_padding.PKCS1v15()
        algorithm = cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15"})
    return cms.RecipientInfo(
        {
            "ktri": cms.KeyTransRecipientInfo(
                {
                    "version": "v0",
                    "rid": cms.RecipientIdentifier(
                        {
                            "issuer_and_serial_number": cms.IssuerAndSerialNumber(
                                {"issuer": _der_name(cert.issuer),
                                 "serial_number": cert.serial_number}
                            )
                        }
                    ),
                    "key_encryption_algorithm": algorithm,
                    "encrypted_key": public_key.encrypt(cek, padding_),
                }
            )
        }
    )


# What we use to encrypt to an EC certificate, by curve (RFC 5008's
# pairs): the key agreement scheme (X9.63 KDF hash) and the key wrap.
_EC_RECIPIENT = {
    "secp256r1": ("1.3.132.1.11.1", "2.16.840.1.101.3.4.1.5", 16),  # sha256, aes128-wrap
    "secp384r1": ("1.3.132.1.11.2", "2.16.840.1.101.3.4.1.45", 32),  # sha384, aes256-wrap
    "secp521r1": ("1.3.132.1.11.3", "2.16.840.1.101.3.4.1.45", 32),  # sha512, aes256-wrap
}
EC_RECIPIENT_CURVES = frozenset(_EC_RECIPIENT)
_OID_EC_PUBLIC_KEY = core.ObjectIdentifier("1.2.840.10045.2.1").dump()
# RFC 8418 §2: X25519 with the SHA-256 X9.63 KDF and AES-128 wrap, X448
# with SHA-512 and AES-256 wrap; the originator key's algorithm by its OID.
_OID_X25519, _OID_X448 = "1.3.101.110", "1.3.101.111"
_MONTGOMERY_RECIPIENT = {
    _OID_X25519: ("1.3.132.1.11.1", "2.16.840.1.101.3.4.1.5", 16),
    _OID_X448: ("1.3.132.1.11.3", "2.16.840.1.101.3.4.1.45", 32),
}
MontgomeryPublicKey = x25519.X25519PublicKey | x448.X448PublicKey


def _key_agreement_der(cert: x509.Certificate,
                       public_key: ec.EllipticCurvePublicKey | MontgomeryPublicKey,
                       cek: bytes) -> bytes:
    """
    A KeyAgreeRecipientInfo (RFC 5753 §3.1.1 and RFC 8418, ephemeral-static
    ECDH) for C{cert}: a new key on its curve, the shared secret through
    the X9.63 KDF to a key that wraps the CEK.
    """
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in _EC_RECIPIENT:
            raise UnsupportedAlgorithm(
                f"Encryption to certificates on the curve {public_key.curve.name} is not "
                "supported (P-256, P-384, P-521).")
        scheme, wrap, size = _EC_RECIPIENT[public_key.curve.name]
        ephemeral = ec.generate_private_key(public_key.curve)
        shared = ephemeral.exchange(ec.ECDH(), public_key)
        point = ephemeral.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        algorithm = _OID_EC_PUBLIC_KEY
    else:
        oid = _OID_X25519 if isinstance(public_key, x25519.X25519PublicKey) else _OID_X448
        scheme, wrap, size = _MONTGOMERY_RECIPIENT[oid]
        if isinstance(public_key, x25519.X25519PublicKey):
            mine = x25519.X25519PrivateKey.generate()
            shared, point = mine.exchange(public_key), mine.public_key().public_bytes_raw()
        else:
            other = x448.X448PrivateKey.generate()
            shared, point = other.exchange(public_key), other.public_key().public_bytes_raw()
        algorithm = core.ObjectIdentifier(oid).dump()  # parameters absent (RFC 8418 §2)
    wrap_der = _tlv(0x30, core.ObjectIdentifier(wrap).dump())
    kek = _ecdh_kek(shared, _KEY_AGREEMENT[scheme], wrap_der, size)
    originator = _tlv(0xA0, _tlv(0xA1, _tlv(0x30, algorithm), _tlv(0x03, b"\x00" + point)))
    return _tlv(
        0xA1,  # [1] IMPLICIT KeyAgreeRecipientInfo
        _tlv(0x02, b"\x03"),
        originator,
        _tlv(0x30, core.ObjectIdentifier(scheme).dump(), wrap_der),
        _tlv(0x30, _tlv(0x30, _issuer_and_serial_der(cert),
                        _tlv(0x04, keywrap.aes_key_wrap(kek, cek)))),
    )


def _recipient_info_der(cert: x509.Certificate, cek: bytes, oaep: bool) -> bytes:
    public_key = _public_key(cert)
    if isinstance(public_key, ec.EllipticCurvePublicKey | MontgomeryPublicKey):
        return _key_agreement_der(cert, public_key, cek)
    if oaep or not isinstance(public_key, rsa.RSAPublicKey):
        return _recipient_info(cert, cek, oaep).dump()
    return _tlv(
        0x30,
        _VERSION_0,
        _issuer_and_serial_der(cert),
        _RSA_PKCS1_TRANSPORT_DER,
        _tlv(0x04, public_key.encrypt(cek, asym_padding.PKCS1v15())),
    )


def encrypt(
    content: bytes,
    recipients: Sequence[x509.Certificate],
    *,
    cipher: str = "aes256_cbc",
    oaep: bool = False,
) -> bytes:
    """
    An EnvelopedData (CBC ciphers) or AuthEnvelopedData (GCM, RFC 5083)
    ContentInfo of C{content} for each of C{recipients}.

    @param cipher: one of L{ENCRYPTION_CIPHERS}.
    @param oaep: RSAES-OAEP with SHA-256 instead of PKCS#1 v1.5.
    @return: DER.
    @raise UnsupportedAlgorithm: a recipient key we cannot encrypt to (RSA;
        EC on P-256, P-384 or P-521 by ECDH) or an unknown cipher.
    """
    # The stream checks its own length as it ends.
    _, pieces = encrypt_chunks([content], recipients, length=len(content), cipher=cipher,
                               oaep=oaep)
    return b"".join(pieces)


_GCM_TAG = 16
# Content encrypted per step of the stream: pieces of a large message are
# never all alive at once.
_ENCRYPT_STEP = 1 << 20


def encrypt_chunks(
    chunks: Iterable[Chunk],
    recipients: Sequence[x509.Certificate],
    *,
    length: int,
    cipher: str = "aes256_cbc",
    oaep: bool = False,
) -> tuple[int, Iterator[bytes]]:
    """
    L{encrypt} for content given in pieces (C{length} bytes in all), its
    DER given as a stream: the headers first (every length is known in
    advance), then the content encrypted a megabyte at a time.  The stream
    is made as it is read, pieces included, so neither the content nor the
    ciphertext need ever be held whole.

    @return: the length of the DER and its pieces.
    """
    if cipher not in ENCRYPTION_CIPHERS:
        raise UnsupportedAlgorithm(f"Cannot encrypt with {cipher}.")
    if not recipients:
        raise ValueError("encrypt() needs at least one recipient")
    key_size, kind = _CIPHERS[cipher]
    cek = os.urandom(key_size)
    recipient_list = sorted(_recipient_info_der(c, cek, oaep) for c in recipients)
    recipient_infos = _tlv(0x31, *recipient_list)
    oid = core.ObjectIdentifier(algos.EncryptionAlgorithmId.unmap(cipher)).dump()
    encryptor: Any
    if kind == "gcm":
        nonce = os.urandom(12)
        params = GCMParameters({"aes_nonce": nonce, "aes_icv_len": _GCM_TAG}).dump()
        encryptor = Cipher(algorithms.AES(cek), modes.GCM(nonce)).encryptor()
        ciphertext_length, mac_length, outer_oid = length, 2 + _GCM_TAG, _OID_AUTH_ENVELOPED_DATA
    else:
        iv = os.urandom(16)
        params = _tlv(0x04, iv)
        encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
        ciphertext_length, mac_length, outer_oid = (length // 16 + 1) * 16, 0, _OID_ENVELOPED_DATA
    algorithm = _tlv(0x30, oid, params)
    content_header = _header(0x80, ciphertext_length)
    content_info = _header(
        0x30, len(_OID_DATA) + len(algorithm) + len(content_header) + ciphertext_length
    ) + _OID_DATA + algorithm + content_header
    # RFC 5652 §6.1: version 2 with key agreement recipients; RFC 5083's
    # AuthEnvelopedData is always version 0.
    version = _VERSION_0 if kind == "gcm" or b"\xa1" not in (
        r[:1] for r in recipient_list) else _tlv(0x02, b"\x02")
    prefix = version + recipient_infos + content_info
    inner_length = len(prefix) + ciphertext_length + mac_length
    envelope_header = _header(0x30, inner_length)
    explicit_length = len(envelope_header) + inner_length
    explicit_header = _header(0xA0, explicit_length)
    head = (_header(0x30, len(outer_oid) + len(explicit_header) + explicit_length)
            + outer_oid + explicit_header + envelope_header + prefix)

    def stream() -> Iterator[bytes]:
        yield head
        written = read = 0
        for chunk in chunks:
            read += len(chunk)
            view = memoryview(chunk)
            for start in range(0, len(view), _ENCRYPT_STEP):
                piece = encryptor.update(view[start : start + _ENCRYPT_STEP])
                written += len(piece)
                yield piece
        if read != length:
            raise RuntimeError(f"encrypted {read} bytes of content where {length} were laid out")
        if kind == "cbc":
            pad = 16 - length % 16  # PKCS#7 (RFC 5652 §6.3)
            piece = encryptor.update(bytes((pad,)) * pad) + encryptor.finalize()
            written += len(piece)
            yield piece
        else:
            encryptor.finalize()
            yield _tlv(0x04, encryptor.tag)
            written += mac_length
        if written != ciphertext_length + mac_length:
            raise RuntimeError(f"encrypted {written} bytes where "
                               f"{ciphertext_length + mac_length} were laid out")

    return len(head) + ciphertext_length + mac_length, stream()


# Decryption -------------------------------------------------------------------


@dataclass(frozen=True)
class DecryptedContent:
    """
    @ivar certificate: the recipient certificate whose key decrypted it.
    @ivar cipher: the content cipher, e.g. C{aes256_cbc}.
    @ivar key_transport: C{rsaes_pkcs1v15} or C{rsaes_oaep}.
    """

    content: bytes
    certificate: x509.Certificate
    cipher: str
    key_transport: str
    recipients: list[str]


@dataclass(frozen=True)
class _KeyTransport:
    """
    A KeyTransRecipientInfo (RFC 5652 §6.2.1), read by the DER walker or by
    asn1crypto.
    """

    rid_der: bytes
    issuer_der: bytes | None
    serial: int | None
    key_id: bytes | None
    algorithm_der: bytes
    encrypted_key: bytes

    @classmethod
    def from_asn1(cls, ktri: cms.KeyTransRecipientInfo) -> _KeyTransport:
        rid = ktri["rid"]
        issuer_der = serial = key_id = None
        if rid.name == "issuer_and_serial_number":
            issuer_der, serial = rid.chosen["issuer"].dump(), rid.chosen["serial_number"].native
        else:
            key_id = rid.chosen.native
        return cls(rid.dump(), issuer_der, serial, key_id,
                   ktri["key_encryption_algorithm"].dump(), ktri["encrypted_key"].native)


@small_lru(64, bytes_size)
def _key_encryption_of(der: bytes) -> tuple[str, cms.KeyEncryptionAlgorithm]:
    algorithm = cms.KeyEncryptionAlgorithm.load(der)
    return algorithm["algorithm"].native, algorithm


def _unwrap_cek(transport: _KeyTransport, key: PrivateKey) -> bytes:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UnsupportedAlgorithm("Key transport to non-RSA keys is not supported.")
    name, algorithm = _key_encryption_of(transport.algorithm_der)
    encrypted = transport.encrypted_key
    if name in ("rsaes_pkcs1v15", "rsa"):
        return key.decrypt(encrypted, asym_padding.PKCS1v15())
    if name == "rsaes_oaep":
        params = algorithm["parameters"]
        hash_name = params["hash_algorithm"]["algorithm"].native
        mgf_hash = params["mask_gen_algorithm"]["parameters"]["algorithm"].native
        label = params["p_source_algorithm"]["parameters"].native or None
        return key.decrypt(
            encrypted,
            asym_padding.OAEP(asym_padding.MGF1(_HASHES[mgf_hash]()), _HASHES[hash_name](), label),
        )
    raise UnsupportedAlgorithm(f"The key transport algorithm {name} is not supported.")


_CONTENT_FAILED = ("The content could not be decrypted: wrong key, or the message was damaged or "
                   "changed after it was encrypted.")


@dataclass(frozen=True)
class _ContentCipher:
    """
    The content encryption of an envelope, checked before any key is
    unwrapped: every fault of the message's own description is named here,
    and after the unwrap the only outcome besides the content is
    L{DecryptionFailed} with one wording (RFC 3218 §2.3: an attacker who
    forges the key transport must learn nothing from the answer).
    """

    key_size: int
    kind: str
    iv: bytes
    tag: bytes | None

    @classmethod
    def of(cls, kind: str, cipher: str, params: bytes, tag: bytes | None) -> _ContentCipher:
        """
        @param kind: C{enveloped_data} or C{authenticated_enveloped_data}.
        @param params: the DER of the content encryption algorithm's parameters.
        @raise UnsupportedAlgorithm: a cipher we lack.
        @raise CMSFormatError: parameters that cannot be right.
        """
        if cipher not in _CIPHERS:
            raise UnsupportedAlgorithm(f"The content cipher {cipher} is not supported.")
        key_size, mode = _CIPHERS[cipher]
        authenticated = kind == "authenticated_enveloped_data"
        if authenticated != (mode == "gcm"):
            raise CMSFormatError(
                f"AuthEnvelopedData must use an authenticated cipher (AES-GCM), not {cipher}."
                if authenticated else "GCM content outside AuthEnvelopedData has no tag.")
        try:
            if mode == "gcm":
                gcm = GCMParameters.load(params)
                iv, tag_size = gcm["aes_nonce"].native, gcm["aes_icv_len"].native
            else:
                iv, tag_size = core.OctetString.load(params).native, None
        except (ValueError, TypeError):
            raise CMSFormatError(f"The {cipher} parameters are malformed.") from None
        if mode == "gcm":
            assert tag is not None
            if len(tag) != tag_size or not 12 <= len(tag) <= 16:
                raise CMSFormatError(f"The GCM tag is {len(tag)} bytes; its parameters say "
                                     f"{tag_size} (12 to 16 are accepted).")
            if not 8 <= len(iv) <= 128:
                raise CMSFormatError(f"The GCM nonce is {len(iv)} bytes (8 to 128 are "
                                     "accepted).")
        elif len(iv) != (16 if mode == "cbc" else 8):
            raise CMSFormatError(f"The {cipher} IV is {len(iv)} bytes, not one block.")
        return cls(key_size, mode, iv, tag)

    def decrypt(self, cek: bytes, ciphertext: bytes | memoryview,
                aad: bytes | None = None) -> bytes:
        """
        @raise DecryptionFailed: a wrong key, or content that was changed.
        """
        if len(cek) != self.key_size:
            raise DecryptionFailed(_CONTENT_FAILED)
        if self.kind == "gcm":
            assert self.tag is not None
            try:
                gcm_decryptor = Cipher(algorithms.AES(cek), modes.GCM(
                    self.iv, self.tag, min_tag_length=len(self.tag))).decryptor()
                if aad:
                    gcm_decryptor.authenticate_additional_data(aad)
                content = gcm_decryptor.update(ciphertext)
                gcm_decryptor.finalize()
                return content
            except (ValueError, InvalidTag):
                raise DecryptionFailed(_CONTENT_FAILED) from None
        block: Any = algorithms.AES(cek) if self.kind == "cbc" else TripleDES(cek)
        try:
            decryptor = Cipher(block, modes.CBC(self.iv)).decryptor()
            # Decrypt into one buffer and strip the padding in place: no
            # copies of a large message beyond the result.
            size = block.block_size // 8
            if len(ciphertext) % size or not ciphertext:
                raise ValueError("not a whole number of blocks")
            plain = bytearray(len(ciphertext) + size - 1)
            written = decryptor.update_into(ciphertext, plain)
            decryptor.finalize()
            del plain[written:]
            pad = plain[-1] if plain else 0
            # Compared in constant time: no padding oracle.
            if not 1 <= pad <= size or not hmac.compare_digest(plain[-pad:],
                                                               bytes((pad,)) * pad):
                raise ValueError("bad padding")
            del plain[-pad:]
            return bytes(plain)
        except ValueError:
            raise DecryptionFailed(_CONTENT_FAILED) from None


def decrypt(
    data: bytes,
    keys: Iterable[tuple[x509.Certificate, PrivateKey]],
) -> DecryptedContent:
    """
    Decrypt an EnvelopedData or AuthEnvelopedData with whichever of C{keys}
    it is addressed to (by issuer and serial, or subject key identifier).

    @raise DecryptionKeyNotFound: it is for none of C{keys}.
    @raise DecryptionFailed: the key did not open it, or it was changed.
    @raise UnsupportedAlgorithm: a cipher or key transport we lack.
    @raise CMSFormatError: not encrypted CMS.
    """
    try:
        return _decrypt(data, keys)
    except (ValueError, TypeError, KeyError) as e:  # asn1crypto parses lazily
        raise _malformed(e) from None


@dataclass(frozen=True)
class _Envelope:
    """
    The parts of an (Auth)EnvelopedData that decryption needs; the large
    encrypted content as a view into the input, not a copy.
    """

    # _KeyTransport for each ktri; asn1crypto RecipientInfo for the rest.
    recipient_infos: list[Any]
    cipher: str
    parameters: bytes
    encrypted: bytes | memoryview | None
    tag: bytes | None
    # authAttrs of an AuthEnvelopedData, DER with the SET OF tag: the
    # additional authenticated data of GCM (RFC 5083 §2.2).
    aad: bytes | None = None


class _NotDER(Exception):
    """
    The input uses BER forms (indefinite lengths) the fast reader skips.
    """


def _read_tlv(buf: memoryview, pos: int, limit: int | None = None) -> tuple[int, int, int]:
    """
    @param limit: where the enclosing element ends (default: the input).
    @return: (tag byte, content start, content end) of the element at C{pos}.
    @raise _NotDER: an indefinite length, a high tag number, or an element
        that runs past the end of the one it is in (asn1crypto then names
        the fault).
    @raise CMSFormatError: truncated.
    """
    size = len(buf)
    limit = size if limit is None else limit
    if pos + 2 > limit:
        if limit < size:
            raise _NotDER()
        raise CMSFormatError("The CMS structure is truncated.")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise _NotDER()
    first = buf[pos + 1]
    start = pos + 2
    if first == 0x80:
        raise _NotDER()
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count > 8 or start + count > size:
            raise CMSFormatError("The CMS structure has an invalid length.")
        length = int.from_bytes(buf[start:start + count], "big")
        start += count
    end = start + length
    if end > limit:
        if end <= size:
            raise _NotDER()
        raise CMSFormatError("The CMS structure is truncated.")
    return tag, start, end


def _expect(tag: int, wanted: int) -> None:
    if tag != wanted:
        raise _NotDER()


def _identifier_fast(buf: memoryview, tag: int, start: int, end: int
                     ) -> tuple[bytes | None, int | None, bytes | None]:
    """
    A SignerIdentifier or RecipientIdentifier (same shape): issuer and
    serial number (a SEQUENCE), or a subject key identifier ([0]).

    @return: (issuer DER, serial, key identifier), the unused ones C{None}.
    """
    if tag == 0x30:
        tag, _, issuer_end = _read_tlv(buf, start, end)
        _expect(tag, 0x30)
        tag, serial_start, serial_end = _read_tlv(buf, issuer_end, end)
        _expect(tag, 0x02)
        return (bytes(buf[start:issuer_end]),
                int.from_bytes(buf[serial_start:serial_end], "big", signed=True), None)
    if tag == 0x80:
        return None, None, bytes(buf[start:end])
    raise _NotDER()


def _content_body(buf: memoryview) -> tuple[bytes, int, int]:
    """
    Open a DER ContentInfo down to the fields after the content's version.

    @return: (the content type OID's DER, where the next field starts,
        where the content SEQUENCE ends).
    """
    tag, start, info_end = _read_tlv(buf, 0)
    _expect(tag, 0x30)
    tag, _, oid_end = _read_tlv(buf, start, info_end)
    _expect(tag, 0x06)
    oid = bytes(buf[start:oid_end])
    tag, start, explicit_end = _read_tlv(buf, oid_end, info_end)
    _expect(tag, 0xA0)
    tag, pos, body_end = _read_tlv(buf, start, explicit_end)
    _expect(tag, 0x30)
    tag, _, pos = _read_tlv(buf, pos, body_end)  # version
    _expect(tag, 0x02)
    return oid, pos, body_end


def _envelope_fast(data: bytes) -> tuple[str, _Envelope]:
    """
    Walk definite-length DER to the parts of an (Auth)EnvelopedData without
    copying the encrypted content (asn1crypto keeps a copy per nesting level:
    four copies of a 25 MB message).

    @raise _NotDER: use the general parser instead.
    """
    buf = memoryview(data)
    oid, pos, envelope_end = _content_body(buf)
    if oid == _OID_ENVELOPED_DATA:
        kind = "enveloped_data"
    elif oid == _OID_AUTH_ENVELOPED_DATA:
        kind = "authenticated_enveloped_data"
    else:
        raise _NotDER()
    tag, start, next_pos = _read_tlv(buf, pos, envelope_end)
    if tag == 0xA0:  # originatorInfo
        pos = next_pos
        tag, start, next_pos = _read_tlv(buf, pos, envelope_end)
    _expect(tag, 0x31)
    recipient_infos = _recipient_infos_fast(buf, start, next_pos)
    tag, pos, content_end = _read_tlv(buf, next_pos, envelope_end)  # EncryptedContentInfo
    _expect(tag, 0x30)
    tag, _, pos = _read_tlv(buf, pos, content_end)  # contentType
    _expect(tag, 0x06)
    tag, start, algorithm_end = _read_tlv(buf, pos, content_end)
    _expect(tag, 0x30)
    tag, _, oid_end = _read_tlv(buf, start, algorithm_end)
    cipher = _CIPHER_BY_OID.get(bytes(buf[start:oid_end]))
    if cipher is None:
        raise _NotDER()  # asn1crypto names it for the error
    parameters = bytes(buf[oid_end:algorithm_end])
    encrypted: bytes | memoryview | None = None
    if algorithm_end < content_end:
        tag, start, end = _read_tlv(buf, algorithm_end, content_end)
        if tag == 0x80:
            encrypted = buf[start:end]
        elif tag == 0xA0:  # constructed: a series of OCTET STRINGs
            chunks = []
            while start < end:
                tag, chunk_start, chunk_end = _read_tlv(buf, start, end)
                _expect(tag, 0x04)
                chunks.append(buf[chunk_start:chunk_end])
                start = chunk_end
            encrypted = b"".join(chunks)
        else:
            raise _NotDER()
    tag_value = aad = None
    if kind == "authenticated_enveloped_data":
        tag, start, end = _read_tlv(buf, content_end, envelope_end)
        if tag == 0xA1:  # authAttrs
            aad = b"\x31" + bytes(buf[content_end + 1:end])
            tag, start, end = _read_tlv(buf, end, envelope_end)
        _expect(tag, 0x04)
        tag_value = bytes(buf[start:end])
    return kind, _Envelope(recipient_infos, cipher, parameters, encrypted, tag_value, aad)


_CIPHER_BY_OID = {
    core.ObjectIdentifier(algos.EncryptionAlgorithmId.unmap(name)).dump(): name
    for name in _CIPHERS
}


def _recipient_infos_fast(buf: memoryview, pos: int, end: int) -> list[Any]:
    found: list[Any] = []
    while pos < end:
        tag, start, element_end = _read_tlv(buf, pos, end)
        if tag == 0x30:  # KeyTransRecipientInfo
            tag, _, rid_start = _read_tlv(buf, start, element_end)  # version
            _expect(tag, 0x02)
            rid_tag, rid_contents, rid_end = _read_tlv(buf, rid_start, element_end)
            issuer_der, serial, key_id = _identifier_fast(buf, rid_tag, rid_contents, rid_end)
            tag, _, algorithm_end = _read_tlv(buf, rid_end, element_end)
            _expect(tag, 0x30)
            tag, key_start, key_end = _read_tlv(buf, algorithm_end, element_end)
            _expect(tag, 0x04)
            found.append(_KeyTransport(
                bytes(buf[rid_start:rid_end]), issuer_der, serial, key_id,
                bytes(buf[rid_end:algorithm_end]), bytes(buf[key_start:key_end])))
        else:  # key agreement and the rest: rare, and asn1crypto reads them
            found.append(cms.RecipientInfo.load(bytes(buf[pos:element_end])))
        pos = element_end
    return found


def _envelope(data: bytes) -> tuple[str, _Envelope]:
    try:
        return _envelope_fast(data)
    except _NotDER:
        return _envelope_asn1(data)


def _envelope_asn1(data: bytes) -> tuple[str, _Envelope]:
    info = load_content_info(data)
    kind = info["content_type"].native
    aad = None
    if kind == "enveloped_data":
        content_info = info["content"]["encrypted_content_info"]
        tag = None
    elif kind == "authenticated_enveloped_data":
        content_info = info["content"]["auth_encrypted_content_info"]
        tag = info["content"]["mac"].native
        attributes = info["content"]["auth_attrs"]
        if not isinstance(attributes, core.Void):
            aad = b"\x31" + attributes.dump()[1:]
    else:
        raise CMSFormatError(f"Expected encrypted data, found {kind}.")
    encrypted = content_info["encrypted_content"]
    algorithm = content_info["content_encryption_algorithm"]
    recipient_infos = [_KeyTransport.from_asn1(r.chosen) if r.name == "ktri" else r
                       for r in info["content"]["recipient_infos"]]
    return kind, _Envelope(recipient_infos, algorithm["algorithm"].native,
                           algorithm["parameters"].dump(),
                           None if encrypted.native is None else encrypted.native, tag, aad)


# Key agreement (RFC 5753 §7.1.4, SEC 1): dhSinglePass-stdDH and
# -cofactorDH with the ANSI X9.63 KDF, by the KDF's hash.  On the curves
# we take (P-256, P-384, P-521: cofactor 1) both compute the same secret.
_KEY_AGREEMENT: dict[str, str] = {
    "1.3.133.16.840.63.0.2": "sha1", "1.3.132.1.11.0": "sha224",
    "1.3.132.1.11.1": "sha256", "1.3.132.1.11.2": "sha384", "1.3.132.1.11.3": "sha512",
    "1.3.133.16.840.63.0.3": "sha1", "1.3.132.1.14.0": "sha224",
    "1.3.132.1.14.1": "sha256", "1.3.132.1.14.2": "sha384", "1.3.132.1.14.3": "sha512",
    # The same schemes under the X9.63 arc, as some RFC 8418 modules name them.
    "1.3.133.16.840.63.0.11.1": "sha256", "1.3.133.16.840.63.0.11.2": "sha384",
    "1.3.133.16.840.63.0.11.3": "sha512",
}
_KEY_WRAP_SIZES = {"aes128_wrap": 16, "aes192_wrap": 24, "aes256_wrap": 32}


@dataclass(frozen=True)
class _KeyAgreement:
    """
    A KeyAgreeRecipientInfo (RFC 5652 §6.2.2) and the one of its encrypted
    keys that is for our certificate.
    """

    info: cms.KeyAgreeRecipientInfo
    encrypted_key: bytes

    @property
    def description(self) -> str:
        algorithm = self.info["key_encryption_algorithm"]
        kdf = _KEY_AGREEMENT.get(algorithm["algorithm"].dotted, algorithm["algorithm"].dotted)
        wrap = cms.KeyEncryptionAlgorithm.load(algorithm["parameters"].dump())
        return f"ECDH {kdf} KDF, {wrap['algorithm'].native}"

    def unwrap(self, key: PrivateKey) -> bytes:
        """
        The content-encryption key: the shared secret of the originator's
        ephemeral key and ours, through the KDF, unwraps it.

        @raise UnsupportedAlgorithm: an algorithm we lack.
        @raise ValueError: it does not unwrap (a wrong key or damage).
        """
        if not isinstance(key, (ec.EllipticCurvePrivateKey, *_AGREEMENT_ONLY)):
            raise UnsupportedAlgorithm("Key agreement with a key other than EC, X25519 or "
                                       "X448 is not supported.")
        algorithm = self.info["key_encryption_algorithm"]
        hash_name = _KEY_AGREEMENT.get(algorithm["algorithm"].dotted)
        if hash_name is None:
            raise UnsupportedAlgorithm(
                f"The key agreement algorithm {algorithm['algorithm'].dotted} is not supported.")
        wrap_der = algorithm["parameters"].dump()
        wrap = cms.KeyEncryptionAlgorithm.load(wrap_der)["algorithm"].native
        if wrap not in _KEY_WRAP_SIZES:
            raise UnsupportedAlgorithm(f"The key wrap algorithm {wrap} is not supported.")
        originator = self.info["originator"]
        if originator.name != "originator_key":
            raise UnsupportedAlgorithm("Key agreement with a static originator key is not "
                                       "supported (only ephemeral-static ECDH).")
        point = originator.chosen["public_key"].native
        kind = originator.chosen["algorithm"]["algorithm"].dotted
        if isinstance(key, ec.EllipticCurvePrivateKey):
            shared = key.exchange(
                ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(key.curve, point))
        elif isinstance(key, x25519.X25519PrivateKey) and kind == _OID_X25519:
            shared = key.exchange(x25519.X25519PublicKey.from_public_bytes(point))
        elif isinstance(key, x448.X448PrivateKey) and kind == _OID_X448:
            shared = key.exchange(x448.X448PublicKey.from_public_bytes(point))
        else:
            raise ValueError(f"the originator's key ({kind}) is not of our key's kind")
        ukm = self.info["ukm"]
        kek = _ecdh_kek(shared, hash_name, wrap_der, _KEY_WRAP_SIZES[wrap],
                        None if isinstance(ukm, core.Void) else ukm.native)
        return keywrap.aes_key_unwrap(kek, self.encrypted_key)


def _ecdh_kek(shared: bytes, hash_name: str, wrap_der: bytes, size: int,
              ukm: bytes | None = None) -> bytes:
    """
    The key-encryption key of an ECDH recipient (RFC 5753 §3.1.2): the
    shared secret through the X9.63 KDF with the ECC-CMS-SharedInfo (§7.2)
    of keyInfo (the key wrap algorithm), entityUInfo [0] (the UKM, if any)
    and suppPubInfo [2] (the KEK's length in bits).
    """
    entity_info = b"" if ukm is None else _tlv(0xA0, _tlv(0x04, ukm))
    shared_info = _tlv(0x30, wrap_der, entity_info,
                       _tlv(0xA2, _tlv(0x04, (size * 8).to_bytes(4, "big"))))
    return X963KDF(_HASHES[hash_name](), size, shared_info).derive(shared)


def _key_agreement_for(recipient: Any, keys: Sequence[tuple[x509.Certificate, PrivateKey]]
                       ) -> tuple[_KeyAgreement, x509.Certificate, PrivateKey] | None:
    for encrypted in recipient.chosen["recipient_encrypted_keys"]:
        for cert, key in keys:
            if _key_agreement_matches(encrypted["rid"], cert):
                return (_KeyAgreement(recipient.chosen, encrypted["encrypted_key"].native),
                        cert, key)
    return None


def _decrypt(data: bytes, keys: Iterable[tuple[x509.Certificate, PrivateKey]]) -> DecryptedContent:
    kind, envelope = _envelope(data)
    keys = list(keys)
    recipients: list[str] = []
    match: tuple[_KeyTransport | _KeyAgreement, x509.Certificate, PrivateKey] | None = None
    for recipient in envelope.recipient_infos:
        if isinstance(recipient, _KeyTransport):
            recipients.append(_describe(recipient.rid_der, "RecipientIdentifier"))
            if match is None:
                for cert, key in keys:
                    if _names_certificate(recipient, cert):
                        match = (recipient, cert, key)
                        break
        elif recipient.name == "kari":
            recipients.append("key agreement recipient")
            if match is None:
                match = _key_agreement_for(recipient, keys)
        else:
            recipients.append(f"{recipient.name} recipient (not supported)")
    if match is None:
        raise DecryptionKeyNotFound()
    transport, cert, key = match
    # Everything the message itself gets wrong is refused before the key
    # is unwrapped; after it, only DecryptionFailed (see _ContentCipher).
    content_cipher = _ContentCipher.of(kind, envelope.cipher, envelope.parameters, envelope.tag)
    if envelope.encrypted is None:
        raise CMSFormatError("The encrypted content is missing (detached).")
    try:
        if isinstance(transport, _KeyAgreement):
            cek = transport.unwrap(key)
            key_transport = transport.description
        else:
            cek = _unwrap_cek(transport, key)
            key_transport = _key_encryption_of(transport.algorithm_der)[0]
    except KeyError as e:
        raise UnsupportedAlgorithm(f"The key transport uses the unsupported digest {e}.") from None
    except (ValueError, TypeError, InvalidUnwrap):
        cek = b""
        key_transport = ""
    unwrapped = len(cek) == content_cipher.key_size
    if not unwrapped:
        # RFC 3218 §2.3.2: a failed unwrap goes on with a random key, so the
        # time taken does not tell it from content that fails to decrypt;
        # its result is never used.
        cek = os.urandom(content_cipher.key_size)
    content = content_cipher.decrypt(cek, envelope.encrypted, envelope.aad)
    if not unwrapped:
        raise DecryptionFailed(_CONTENT_FAILED)
    return DecryptedContent(content, cert, envelope.cipher, key_transport, recipients)


def content_type(data: bytes) -> str:
    """
    The outer content type of a CMS message: C{signed_data},
    C{enveloped_data}, C{authenticated_enveloped_data}, ...

    @raise CMSFormatError: not CMS.
    """
    return str(load_content_info(data)["content_type"].native)


def digest_of(data: bytes, algorithm: str = "sha256") -> bytes:
    return hashlib.new(algorithm, data).digest()
