"""
Third-party certifications of OpenPGP user IDs, checked: which user IDs of
a certificate a trusted introducer has certified (RFC 9580 §5.2.4, v4
signatures).

pysequoia reads certifications by others but has no way to check them (it
checks a certificate's own signatures only), so this module does, with
C{cryptography}'s primitives over the bytes the RFC says are signed: the
certified key, the user ID, the signature's hashed part and its trailer.
RSA, EdDSA (legacy and RFC 9580 Ed25519) and ECDSA on the NIST curves;
SHA-2 and SHA-3 hashes (SHA-1 certifications are refused, as Sequoia's
standard policy refuses them since 2023).  A certification counts while it
is not expired and no later certification revocation by the same key
revokes it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from pysequoia.packet import PacketPile, Tag

from cipherd.pki.pgp import PGPKey

_CERTIFICATIONS = (0x10, 0x11, 0x12, 0x13)
_CERTIFICATION_REVOCATION = 0x30
_HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    8: hashes.SHA256, 9: hashes.SHA384, 10: hashes.SHA512, 11: hashes.SHA224,
    12: hashes.SHA3_256, 14: hashes.SHA3_512}
_CURVES: dict[bytes, ec.EllipticCurve] = {
    bytes.fromhex("2a8648ce3d030107"): ec.SECP256R1(),
    bytes.fromhex("2b81040022"): ec.SECP384R1(),
    bytes.fromhex("2b81040023"): ec.SECP521R1()}
_ED25519_LEGACY = bytes.fromhex("2b06010401da470f01")
_SKEW = 300.0


class _Malformed(Exception):
    pass


@dataclass(frozen=True)
class _Signature:
    kind: int
    algorithm: int
    hash: int
    hashed: bytes  # version to the end of the hashed subpackets
    left16: bytes
    values: tuple[bytes, ...]  # the MPIs (or native fields), as bytes
    issuers: frozenset[str]
    created: float
    expires: float | None


def _mpi(data: bytes, at: int) -> tuple[bytes, int]:
    if at + 2 > len(data):
        raise _Malformed("MPI")
    bits = struct.unpack_from("!H", data, at)[0]
    size = (bits + 7) // 8
    end = at + 2 + size
    if end > len(data):
        raise _Malformed("MPI")
    return data[at + 2:end], end


# Subpackets this module reads or that change nothing for a certification;
# any other marked critical makes the signature unusable (RFC 9580 §5.2.3.7).
_UNDERSTOOD = frozenset({2, 3, 4, 16, 33})


def _subpackets(area: bytes, *, hashed: bool = False) -> list[tuple[int, bytes]]:
    found = []
    at = 0
    while at < len(area):
        first = area[at]
        if first < 192:
            size, at = first, at + 1
        elif first < 255:
            if at + 1 >= len(area):
                raise _Malformed("subpacket length")
            size, at = ((first - 192) << 8) + area[at + 1] + 192, at + 2
        else:
            if at + 5 > len(area):
                raise _Malformed("subpacket length")
            size, at = struct.unpack_from("!I", area, at + 1)[0], at + 5
        if size < 1 or at + size > len(area):
            raise _Malformed("subpacket")
        kind, critical = area[at] & 0x7F, bool(area[at] & 0x80)
        if hashed and critical and kind not in _UNDERSTOOD:
            raise _Malformed(f"critical subpacket {kind}")
        found.append((kind, area[at + 1:at + size]))
        at += size
    return found


def _signature(body: bytes) -> _Signature:
    if len(body) < 6 or body[0] != 4:
        raise _Malformed("not a v4 signature")
    kind, algorithm, hash_id = body[1], body[2], body[3]
    hashed_size = struct.unpack_from("!H", body, 4)[0]
    hashed_end = 6 + hashed_size
    if hashed_end + 2 > len(body):
        raise _Malformed("signature")
    unhashed_size = struct.unpack_from("!H", body, hashed_end)[0]
    unhashed_end = hashed_end + 2 + unhashed_size
    if unhashed_end + 2 > len(body):
        raise _Malformed("signature")
    hashed = _subpackets(body[6:hashed_end], hashed=True)
    unhashed = _subpackets(body[hashed_end + 2:unhashed_end])
    created: float | None = None
    lifetime = None
    issuers = set()
    for kind_, value in hashed + unhashed:
        if kind_ == 16 and len(value) == 8:
            issuers.add(value.hex())
        elif kind_ == 33 and len(value) > 1:
            issuers.add(value[1:].hex())
    for kind_, value in hashed:
        if kind_ == 2 and len(value) == 4:
            created = float(struct.unpack("!I", value)[0])
        elif kind_ == 3 and len(value) == 4:
            lifetime = struct.unpack("!I", value)[0] or None
    if created is None:
        raise _Malformed("no creation time")
    rest = body[unhashed_end + 2:]
    values: list[bytes] = []
    if algorithm == 27:  # Ed25519, native
        values = [rest[:64]]
    else:
        at = 0
        while at < len(rest):
            value, at = _mpi(rest, at)
            values.append(value)
    return _Signature(kind, algorithm, hash_id, body[:hashed_end],
                      body[unhashed_end:unhashed_end + 2], tuple(values),
                      frozenset(issuers), created,
                      created + lifetime if lifetime else None)


def _public_key(body: bytes) -> tuple[int, Any]:
    """
    The algorithm and the key of a v4 public key packet's body.
    """
    if len(body) < 6 or body[0] != 4:
        raise _Malformed("not a v4 key")
    algorithm = body[5]
    material = body[6:]
    if algorithm in (1, 3):
        n, at = _mpi(material, 0)
        e, _ = _mpi(material, at)
        return algorithm, rsa.RSAPublicNumbers(int.from_bytes(e), int.from_bytes(n)).public_key()
    if algorithm in (19, 22):
        oid = material[1:1 + material[0]]
        point, _ = _mpi(material, 1 + material[0])
        if algorithm == 22:
            if oid != _ED25519_LEGACY or point[:1] != b"\x40":
                raise _Malformed("EdDSA curve")
            return algorithm, ed25519.Ed25519PublicKey.from_public_bytes(point[1:])
        curve = _CURVES.get(oid)
        if curve is None:
            raise _Malformed("ECDSA curve")
        return algorithm, ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    if algorithm == 27:
        return algorithm, ed25519.Ed25519PublicKey.from_public_bytes(material[:32])
    raise _Malformed(f"public key algorithm {algorithm}")


def _verified(signature: _Signature, signed: bytes, signer: tuple[int, Any]) -> bool:
    algorithm, key = signer
    hash_type = _HASHES.get(signature.hash)
    if hash_type is None or algorithm != (signature.algorithm if signature.algorithm != 3
                                          else 1):
        return False
    trailer = b"\x04\xff" + struct.pack("!I", len(signature.hashed))
    digest = hashes.Hash(hash_type())
    digest.update(signed + signature.hashed + trailer)
    value = digest.finalize()
    if value[:2] != signature.left16:
        return False
    try:
        if algorithm == 1:
            size = (key.key_size + 7) // 8
            key.verify(signature.values[0].rjust(size, b"\0"), value, padding.PKCS1v15(),
                       Prehashed(hash_type()))
        elif algorithm in (22, 27):
            raw = (signature.values[0] if algorithm == 27 else
                   signature.values[0].rjust(32, b"\0") + signature.values[1].rjust(32, b"\0"))
            key.verify(raw, value)
        else:
            r, s = (int.from_bytes(v) for v in signature.values[:2])
            key.verify(encode_dss_signature(r, s), value, ec.ECDSA(Prehashed(hash_type())))
    except (InvalidSignature, ValueError, IndexError):
        return False
    return True


def certified_user_ids(key: PGPKey, introducer: PGPKey, now: float
                       ) -> list[tuple[str, float | None]]:
    """
    The user IDs of C{key} that C{introducer}'s primary key has certified,
    the certification valid at C{now}, each with when the certification
    expires (C{None}: never).
    """
    if key.fingerprint == introducer.fingerprint or key.version != 4:
        return []
    try:
        signer_packet = next(p for p in PacketPile.from_bytes(introducer.public)
                             if p.tag in (Tag.PublicKey, Tag.SecretKey))
        signer = _public_key(signer_packet.body)
    except (StopIteration, _Malformed, ValueError):
        return []
    names = {introducer.fingerprint, introducer.key_id}
    primary_body: bytes | None = None
    user_id: bytes | None = None
    found: dict[bytes, list[tuple[float, bool, float | None]]] = {}
    for packet in PacketPile.from_bytes(key.public):
        if packet.tag in (Tag.PublicKey, Tag.SecretKey) and primary_body is None:
            primary_body = packet.body
        elif packet.tag == Tag.UserID:
            user_id = packet.body
        elif packet.tag in (Tag.PublicSubkey, Tag.SecretSubkey, Tag.UserAttribute):
            user_id = None
        elif packet.tag == Tag.Signature and user_id is not None and primary_body is not None:
            try:
                signature = _signature(packet.body)
            except _Malformed:
                continue
            if not signature.issuers & names or signature.kind not in (
                    *_CERTIFICATIONS, _CERTIFICATION_REVOCATION):
                continue
            signed = (b"\x99" + struct.pack("!H", len(primary_body)) + primary_body
                      + b"\xb4" + struct.pack("!I", len(user_id)) + user_id)
            if signature.created > now + _SKEW or not _verified(signature, signed, signer):
                continue
            revoked = signature.kind == _CERTIFICATION_REVOCATION
            found.setdefault(user_id, []).append((signature.created, revoked,
                                                  signature.expires))
    certified = []
    for uid, signatures in found.items():
        # The latest word of the introducer on it; a revocation made in the
        # same second as a certification wins.
        _, revoked, until = max(signatures, key=lambda s: (s[0], s[1]))
        if not revoked and (until is None or now < until):
            certified.append((uid.decode("utf-8", "replace"), until))
    return certified


__all__ = ["certified_user_ids"]
