"""
Time-based one-time passwords, the portal's optional second factor:
RFC 6238 (TOTP) over RFC 4226 (HOTP), HMAC-SHA1, 30-second steps, six
digits — what every authenticator app reads from an C{otpauth://} URI.

The secret is kept sealed (AES-256-GCM, bound to the account's address)
under a key of its own derived from the mailbox key, never in the clear.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import struct
from urllib.parse import quote, urlencode

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

STEP = 30  # RFC 6238 §4.1: X, the time step, 30 seconds by default
DIGITS = 6
# RFC 6238 §5.2: accept one step either side for clocks that drift and
# codes typed slowly.
WINDOW = 1
SECRET_BYTES = 20  # RFC 4226 §4: at least 128 bits; 160 recommended
_VERSION = b"\x01"


def new_secret() -> bytes:
    return os.urandom(SECRET_BYTES)


def hotp(secret: bytes, counter: int, digits: int = DIGITS,
         digest: str = "sha1") -> str:
    """
    RFC 4226 §5.3: HMAC of the counter, dynamically truncated.
    """
    mac = hmac.new(secret, struct.pack(">Q", counter), getattr(hashlib, digest)).digest()
    offset = mac[-1] & 0x0F
    code = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(code % 10**digits).zfill(digits)


def totp(secret: bytes, now: float, digits: int = DIGITS, digest: str = "sha1") -> str:
    """
    RFC 6238 §4.2: HOTP of the number of steps since the Unix epoch.
    """
    return hotp(secret, int(now) // STEP, digits, digest)


def verify(secret: bytes, code: str, now: float) -> bool:
    """
    Whether C{code} is the code for C{now} or a step either side; every
    candidate is compared, in constant time.
    """
    return matching_step(secret, code, now) is not None


def matching_step(secret: bytes, code: str, now: float) -> int | None:
    """
    The time step whose code C{code} is (C{now}'s or one either side), or
    C{None}: a login records it, so that no code works twice (RFC 6238
    §5.2).
    """
    code = re.sub(r"\s", "", code)
    if not re.fullmatch(rf"\d{{{DIGITS}}}", code):
        return None
    counter = int(now) // STEP
    found = None
    for step in range(counter - WINDOW, counter + WINDOW + 1):
        if hmac.compare_digest(hotp(secret, step), code):
            found = step
    return found


def secret_text(secret: bytes) -> str:
    """
    The secret as people type it into an app: base32 in groups of four.
    """
    text = base64.b32encode(secret).decode("ascii").rstrip("=")
    return " ".join(text[i:i + 4] for i in range(0, len(text), 4))


def otpauth_uri(secret: bytes, address: str, issuer: str) -> str:
    """
    The Key Uri Format authenticator apps read (C{otpauth://totp/...}).
    """
    label = quote(f"{issuer}:{address}", safe="@:")
    query = urlencode({"secret": base64.b32encode(secret).decode("ascii").rstrip("="),
                       "issuer": issuer, "algorithm": "SHA1", "digits": DIGITS,
                       "period": STEP}, quote_via=quote)
    return f"otpauth://totp/{label}?{query}"


class SealedSecretError(Exception):
    """
    A sealed secret does not open: another key, another account, or damaged.
    """


def seal_secret(key: bytes, address: str, secret: bytes) -> bytes:
    nonce = os.urandom(12)
    return _VERSION + nonce + AESGCM(key).encrypt(nonce, secret, b"totp\0" + address.encode())


def unseal_secret(key: bytes, address: str, sealed: bytes) -> bytes:
    if sealed[:1] != _VERSION or len(sealed) < 13 + 16:
        raise SealedSecretError("unknown format")
    try:
        return AESGCM(key).decrypt(sealed[1:13], sealed[13:], b"totp\0" + address.encode())
    except InvalidTag:
        raise SealedSecretError("the second-factor secret does not open") from None
