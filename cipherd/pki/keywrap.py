"""
Private keys at rest: sealed with AES-256-GCM under the data dir's
key-encryption key, bound to the certificate they belong to, so a sealed key
copied to another row does not open.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cipherd.pki.cms import PrivateKey
from cipherd.pki.errors import PKIError

_VERSION = b"\x01"


class KeyUnsealError(PKIError):
    """
    A stored key cannot be opened: another key-encryption key, or damage.
    """


def seal_key(kek: bytes, key: PrivateKey, bound_to: str) -> bytes:
    """
    @param bound_to: the certificate thumbprint (authenticated, not stored).
    """
    plain = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return seal_bytes(kek, plain, bound_to)


def seal_bytes(kek: bytes, plain: bytes, bound_to: str) -> bytes:
    """
    C{plain} (secret key material) sealed, bound to C{bound_to} (a
    certificate thumbprint or OpenPGP fingerprint; authenticated, not
    stored).
    """
    nonce = os.urandom(12)
    return _VERSION + nonce + AESGCM(kek).encrypt(nonce, plain, bound_to.encode())


def unseal_bytes(kek: bytes, sealed: bytes, bound_to: str) -> bytes:
    """
    @raise KeyUnsealError: see the class.
    """
    if sealed[:1] != _VERSION or len(sealed) < 30:
        raise KeyUnsealError("The stored private key has an unknown format.")
    try:
        return AESGCM(kek).decrypt(sealed[1:13], sealed[13:], bound_to.encode())
    except InvalidTag:
        raise KeyUnsealError(
            "The stored private key cannot be opened with this data dir's key-encryption key."
        ) from None


def unseal_key(kek: bytes, sealed: bytes, bound_to: str) -> PrivateKey:
    """
    @raise KeyUnsealError: see the class.
    """
    plain = unseal_bytes(kek, sealed, bound_to)
    # The RSA consistency check (about 30 ms a key, the whole cost of a
    # signature several times over) was made when the key was imported and
    # sealed; what comes out of the AEAD is those bytes, unaltered.
    key = serialization.load_der_private_key(plain, None, unsafe_skip_rsa_key_validation=True)
    return key  # type: ignore[return-value]
