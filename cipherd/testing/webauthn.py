"""
A WebAuthn authenticator in memory, for tests without a browser: it
answers C{navigator.credentials.create} and C{.get} options (as the server
sends them, JSON) with what a browser would post (the C{toJSON()} form),
with a P-256 key per passkey, user presence and verification, attestation
C{none} and a signature counter.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from cipherd.webmail.accounts import b64url, unb64url

_UP, _UV, _AT = 0x01, 0x04, 0x40


@dataclass
class _Credential:
    id: bytes
    key: ec.EllipticCurvePrivateKey
    rp_id: str
    user_handle: bytes
    count: int = 0


@dataclass
class SoftAuthenticator:
    """
    @ivar origin: the origin the "browser" reports (C{https://host:port}).
    @ivar verifies_user: whether it verifies its user (PIN, fingerprint).
    """

    origin: str
    verifies_user: bool = True
    credentials: list[_Credential] = field(default_factory=list)

    def _client_data(self, kind: str, challenge: str) -> bytes:
        return json.dumps({"type": kind, "challenge": challenge, "origin": self.origin,
                           "crossOrigin": False}).encode()

    def _flags(self) -> int:
        return _UP | (_UV if self.verifies_user else 0)

    def create(self, options_json: str) -> str:
        options: Any = json.loads(options_json)
        rp_id = options["rp"]["id"]
        credential = _Credential(os.urandom(32), ec.generate_private_key(ec.SECP256R1()),
                                 rp_id, unb64url(options["user"]["id"]))
        self.credentials.append(credential)
        numbers = credential.key.public_key().public_numbers()
        cose = cbor2.dumps({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"),
                            -3: numbers.y.to_bytes(32, "big")})
        auth_data = (hashlib.sha256(rp_id.encode()).digest()
                     + bytes([self._flags() | _AT]) + struct.pack(">I", 0)
                     + b"\0" * 16 + struct.pack(">H", len(credential.id)) + credential.id
                     + cose)
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        client = self._client_data("webauthn.create", options["challenge"])
        return json.dumps({
            "id": b64url(credential.id), "rawId": b64url(credential.id), "type": "public-key",
            "response": {"clientDataJSON": b64url(client),
                         "attestationObject": b64url(attestation),
                         "transports": ["internal"]},
            "clientExtensionResults": {}, "authenticatorAttachment": "platform"})

    def get(self, options_json: str, *, credential: int = 0) -> str:
        """
        The answer of the C{credential}-th passkey made for the options'
        relying party (and allowed by them, when they name some).
        """
        options: Any = json.loads(options_json)
        allowed = {a["id"] for a in options.get("allowCredentials") or []}
        mine = [c for c in self.credentials if c.rp_id == options["rpId"]
                and (not allowed or b64url(c.id) in allowed)]
        chosen = mine[credential]
        chosen.count += 1
        auth_data = (hashlib.sha256(chosen.rp_id.encode()).digest() + bytes([self._flags()])
                     + struct.pack(">I", chosen.count))
        client = self._client_data("webauthn.get", options["challenge"])
        signature = chosen.key.sign(auth_data + hashlib.sha256(client).digest(),
                                    ec.ECDSA(hashes.SHA256()))
        return json.dumps({
            "id": b64url(chosen.id), "rawId": b64url(chosen.id), "type": "public-key",
            "response": {"clientDataJSON": b64url(client), "authenticatorData": b64url(auth_data),
                         "signature": b64url(signature), "userHandle": b64url(chosen.user_handle)},
            "clientExtensionResults": {}, "authenticatorAttachment": "platform"})
