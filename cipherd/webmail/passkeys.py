"""
WebAuthn passkeys for webmail accounts (the C{webauthn} library checks
every ceremony): a recipient registers passkeys on the account page, and
then signs in with one instead of a password (the authenticator verifies
its user: that is two factors in one), or uses one as the second factor
after the password.

The challenges are not stored when they are made (a login page made for
anyone costs no row): each is 16 random bytes, its expiry and an HMAC over
them, its purpose and the address it is for.  Answered, its SHA-256 is
recorded until it expires, so each is answered once.  The relying party
is the portal's own origin: the *portal base URL*, else the address the
browser asked for.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import struct
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from twisted.internet.interfaces import IReactorTime
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from cipherd.store import Store
from cipherd.store.schema import webmail_passkey_challenges, webmail_passkeys
from cipherd.webmail.accounts import b64url, unb64url

REGISTER, SIGN_IN, SECOND_FACTOR = "register", "sign-in", "second-factor"
CHALLENGE_VALIDITY = 300
MAX_PASSKEYS = 10
MAX_CREDENTIAL = 64 * 1024


class PasskeyRefused(Exception):
    """
    A passkey ceremony failed; the message says why, fit to show.
    """


@dataclass(frozen=True)
class Passkey:
    credential_id: str
    address: str
    name: str
    created: float
    last_used: float | None


@dataclass(frozen=True)
class RelyingParty:
    """
    The portal as WebAuthn sees it: C{id} its host name, C{origin}
    C{https://host[:port]}.
    """

    id: str
    origin: str
    name: str


def _row(row: Any) -> Passkey:
    return Passkey(row.credential_id, row.address, row.name, row.created, row.last_used)


class Passkeys:
    """
    @param key: the HMAC key of the challenges (one purpose).
    """

    def __init__(self, store: Store, clock: IReactorTime, key: bytes) -> None:
        self._store = store
        self._clock = clock
        self._key = key

    # Challenges ------------------------------------------------------------

    def _mac(self, purpose: str, address: str, body: bytes) -> bytes:
        return hmac.new(self._key, f"{purpose}\0{address}\0".encode() + body,
                        hashlib.sha256).digest()[:16]

    def _challenge(self, purpose: str, address: str) -> bytes:
        body = secrets.token_bytes(16) + struct.pack(
            ">I", int(self._clock.seconds() + CHALLENGE_VALIDITY))
        return body + self._mac(purpose, address, body)

    async def _answered(self, credential: dict[str, Any], purpose: str, address: str
                        ) -> bytes:
        """
        The challenge C{credential} answers, if this server made it for
        C{purpose} and C{address}, it has not expired and was not answered
        before (now it has been).

        @raise PasskeyRefused: otherwise.
        """
        try:
            client = json.loads(unb64url(str(credential["response"]["clientDataJSON"])))
            challenge = unb64url(str(client["challenge"]))
        except (KeyError, TypeError, ValueError):
            raise PasskeyRefused("The passkey's answer cannot be read.") from None
        body, mac = challenge[:20], challenge[20:]
        if len(challenge) != 36 or not hmac.compare_digest(mac, self._mac(purpose, address,
                                                                          body)):
            raise PasskeyRefused("The passkey answered another page's question. Try again.")
        expires = float(struct.unpack(">I", body[16:20])[0])
        now = self._clock.seconds()
        if expires < now:
            raise PasskeyRefused("The page was open too long. Try again.")
        digest = hashlib.sha256(challenge).hexdigest()

        def write(conn: Connection) -> bool:
            conn.execute(delete(webmail_passkey_challenges).where(
                webmail_passkey_challenges.c.expires < now))
            if conn.execute(select(webmail_passkey_challenges.c.challenge).where(
                    webmail_passkey_challenges.c.challenge == digest)).first() is not None:
                return False
            conn.execute(insert(webmail_passkey_challenges).values(challenge=digest,
                                                                   expires=expires))
            return True

        if not await self._store.run(write):
            raise PasskeyRefused("This passkey answer was used already. Try again.")
        return challenge

    # Registration ------------------------------------------------------------

    async def registration_options(self, party: RelyingParty, address: str) -> str:
        """
        The options for C{navigator.credentials.create}, as JSON: a passkey
        (discoverable, user verified) not yet registered for C{address}.
        """
        existing = await self.listing(address)
        return options_to_json(generate_registration_options(
            rp_id=party.id, rp_name=party.name, user_name=address, user_display_name=address,
            user_id=hashlib.sha256(f"cipherd webmail\0{address}".encode()).digest(),
            challenge=self._challenge(REGISTER, address),
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.REQUIRED,
                user_verification=UserVerificationRequirement.REQUIRED),
            exclude_credentials=[PublicKeyCredentialDescriptor(id=unb64url(p.credential_id))
                                 for p in existing]))

    async def register(self, party: RelyingParty, address: str, credential_json: str,
                       name: str) -> Passkey:
        """
        Keep the passkey C{credential_json} (the browser's answer to
        L{registration_options}) for C{address}.

        @raise PasskeyRefused: the answer is not good, or the account has
            L{MAX_PASSKEYS} already.
        """
        credential = _parsed(credential_json)
        challenge = await self._answered(credential, REGISTER, address)
        try:
            verified = verify_registration_response(
                credential=credential, expected_challenge=challenge, expected_rp_id=party.id,
                expected_origin=party.origin, require_user_verification=True)
        except (WebAuthnException, ValueError, KeyError, TypeError) as e:
            raise PasskeyRefused(f"The passkey was not accepted: {e}") from None
        now = self._clock.seconds()
        passkey = Passkey(b64url(verified.credential_id), address,
                          " ".join(name.split())[:100] or "Passkey", now, None)

        def write(conn: Connection) -> str:
            mine = webmail_passkeys.c.address == address
            if len(conn.execute(select(webmail_passkeys.c.credential_id).where(mine))
                   .all()) >= MAX_PASSKEYS:
                return "full"
            if conn.execute(select(webmail_passkeys.c.address).where(
                    webmail_passkeys.c.credential_id == passkey.credential_id)).first():
                return "known"
            conn.execute(insert(webmail_passkeys).values(
                credential_id=passkey.credential_id, address=address,
                public_key=verified.credential_public_key, sign_count=verified.sign_count,
                name=passkey.name, created=now, last_used=None))
            return "kept"

        done = await self._store.run(write)
        if done == "full":
            raise PasskeyRefused(f"An account has at most {MAX_PASSKEYS} passkeys: remove one "
                                 "first.")
        if done == "known":
            raise PasskeyRefused("This passkey is registered already.")
        return passkey

    # Signing in ----------------------------------------------------------------

    async def authentication_options(self, party: RelyingParty, address: str = "") -> str:
        """
        The options for C{navigator.credentials.get}, as JSON: for signing
        in (any of the portal's passkeys: the browser offers its own), or
        as the second factor of C{address} (one of its passkeys).
        """
        allowed = [PublicKeyCredentialDescriptor(id=unb64url(p.credential_id))
                   for p in await self.listing(address)] if address else None
        return options_to_json(generate_authentication_options(
            rp_id=party.id, allow_credentials=allowed,
            challenge=self._challenge(SECOND_FACTOR if address else SIGN_IN, address),
            user_verification=UserVerificationRequirement.REQUIRED if not address
            else UserVerificationRequirement.PREFERRED))

    async def authenticate(self, party: RelyingParty, credential_json: str,
                           address: str = "") -> str:
        """
        The address whose passkey answered (C{address}'s, when given: as
        its second factor; then user verification is not required).

        @raise PasskeyRefused: an unknown passkey, another account's, or
            an answer that is not good.
        """
        credential = _parsed(credential_json)
        challenge = await self._answered(credential, SECOND_FACTOR if address else SIGN_IN,
                                         address)
        credential_id = str(credential.get("id", ""))[:1400]

        def read(conn: Connection) -> Any:
            return conn.execute(select(webmail_passkeys).where(
                webmail_passkeys.c.credential_id == credential_id)).first()

        row = await self._store.run(read)
        if row is None or (address and row.address != address):
            raise PasskeyRefused("This passkey is not registered here. Sign in with your "
                                 "password, then add it on your account page.")
        try:
            verified = verify_authentication_response(
                credential=credential, expected_challenge=challenge, expected_rp_id=party.id,
                expected_origin=party.origin, credential_public_key=row.public_key,
                credential_current_sign_count=row.sign_count,
                require_user_verification=not address)
        except (WebAuthnException, ValueError, KeyError, TypeError) as e:
            raise PasskeyRefused(f"The passkey was not accepted: {e}") from None
        now = self._clock.seconds()
        await self._store.run(lambda conn: conn.execute(
            update(webmail_passkeys).where(webmail_passkeys.c.credential_id == credential_id)
            .values(sign_count=verified.new_sign_count, last_used=now)))
        return str(row.address)

    # The account's passkeys ----------------------------------------------------

    async def listing(self, address: str) -> list[Passkey]:
        def read(conn: Connection) -> list[Passkey]:
            return [_row(row) for row in conn.execute(
                select(webmail_passkeys).where(webmail_passkeys.c.address == address)
                .order_by(webmail_passkeys.c.created))]

        found: list[Passkey] = await self._store.run(read)
        return found

    async def remove(self, address: str, credential_id: str) -> bool:
        def write(conn: Connection) -> bool:
            return bool(conn.execute(delete(webmail_passkeys).where(
                (webmail_passkeys.c.address == address)
                & (webmail_passkeys.c.credential_id == credential_id))).rowcount)

        removed: bool = await self._store.run(write)
        return removed


def _parsed(credential_json: str) -> dict[str, Any]:
    if len(credential_json) > MAX_CREDENTIAL:
        raise PasskeyRefused("The passkey's answer is too large.")
    try:
        credential = json.loads(credential_json)
    except ValueError:
        raise PasskeyRefused("The passkey's answer cannot be read.") from None
    if not isinstance(credential, dict):
        raise PasskeyRefused("The passkey's answer cannot be read.")
    return credential
