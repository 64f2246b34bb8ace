"""
The OpenPGP keyring: certificates and secret keys in the database, shared
by every node, with the administrator's trust decision on each.

A key is encrypted to only when it is trusted and valid at that moment
(L{IKeyring.encryption_keys}): not revoked, not expired, with a live
encryption subkey.  Secret keys are stored with their passphrase, sealed
under the data dir's key-encryption key and bound to their fingerprint.

What processing reads -- each address's keys, parsed, and unlocked signers
-- is kept in memory until a change here, or another node's change (the
change count the certificate store shares, asked for at most once a
second), says it may be wrong.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.internet.interfaces import IReactorTime
from zope.interface import Attribute, Interface, implementer

from cipherd.core.addresses import canonical_address
from cipherd.pki.certstore import _Recent
from cipherd.pki.keywrap import KeyUnsealError, seal_bytes, unseal_bytes
from cipherd.pki.pgp import IOpenPGP, PGPError, PGPKey, emails_of
from cipherd.pki.pgpcert import certified_user_ids
from cipherd.store import Store
from cipherd.store import certificates as certificate_queries
from cipherd.store import pgpkeys as q
from cipherd.threads import IBlockingRunner

ADMIN = "admin"
GENERATED = "generated"
WKD = "wkd"  # found in a Web Key Directory
AUTOCRYPT = "autocrypt"  # collected from an Autocrypt header

# How often a node asks whether another node changed the keyring, at most.
POLL_INTERVAL = 1.0
ADDRESSES_KEPT = 8192
SIGNERS_KEPT = 1024


@dataclass(frozen=True)
class StoredKey:
    """
    A key of the keyring, read, with what the keyring says of it.
    """

    key: PGPKey
    trusted: bool
    source: str
    imported: float
    introducer: bool = False
    # The introducer that certified it for the address asked, and until when
    # (the introducer's or the certification's expiry; None: for good).
    introduced_by: str = ""
    introduced_until: float | None = None

    def introduced_at(self, now: float) -> bool:
        return bool(self.introduced_by) and (self.introduced_until is None
                                             or now < self.introduced_until)

    @property
    def fingerprint(self) -> str:
        return self.key.fingerprint


@dataclass(frozen=True)
class ImportedKey:
    fingerprint: str
    user_ids: tuple[str, ...]
    new: bool
    secret: bool


@dataclass(frozen=True)
class EncryptionKeys:
    """
    What the keyring has for an address: the keys to encrypt to (trusted,
    valid now) and, for the log, why the others are not used.
    """

    keys: tuple[PGPKey, ...] = ()
    refused: tuple[str, ...] = field(default=())

    def reason(self) -> str:
        if self.refused:
            return "; ".join(self.refused)
        return "there is no PGP key for the recipient"


class IKeyring(Interface):
    """
    The OpenPGP keys of a deployment.
    """

    changes = Attribute("How many changes were written through this keyring (a processing "
                        "worker forgets what it kept when this moves).")

    def now() -> float:
        """
        The time keys are judged at (POSIX seconds).
        """

    async def import_keys(data: bytes, *, passphrase: str | None = None,
                          trusted: bool | None = True, source: str = ADMIN
                          ) -> list[ImportedKey]:
        """
        Store every key in C{data}; a key already here is updated (its
        user IDs, subkeys and signatures as now given; its secret and trust
        kept unless given).

        @param passphrase: opens the secret keys in C{data}; checked here.
        @param trusted: the trust decision for the keys, or C{None} to keep
            a stored key's (new keys untrusted).
        @raise PGPError: nothing readable, or the passphrase is wrong.
        """

    async def generate(email: str, name: str = "", suite: str = "cv25519") -> StoredKey:
        """
        A new key with a secret for C{email}, stored and trusted.
        """

    async def get(fingerprint: str) -> StoredKey | None:
        """
        The key with this fingerprint (hex, any case), if stored.
        """

    async def by_key_id(key_id: str) -> list[StoredKey]:
        """
        The keys with this primary or subkey id (16 hex digits).
        """

    async def listing(*, text: str = "", email: str = "", offset: int = 0,
                      limit: int | None = None) -> list[StoredKey]:
        """
        Keys, newest import first, matching C{text} or for C{email}.
        """

    async def count(*, text: str = "", email: str = "") -> int:
        """
        How many keys L{listing} would give without offset and limit.
        """

    async def set_trusted(fingerprint: str, trusted: bool) -> bool:
        """
        @return: whether the key is stored.
        """

    async def set_introducer(fingerprint: str, introducer: bool) -> bool:
        """
        Mark the key as a trusted introducer (or not): the keys it has
        certified for an address are encrypted to as if trusted, while it
        is trusted and valid itself.

        @return: whether the key is stored.
        """

    async def delete(fingerprint: str) -> bool:
        """
        @return: whether the key was stored.
        """

    async def encryption_keys(email: str) -> EncryptionKeys:
        """
        The trusted keys with a user ID for C{email} that can be encrypted
        to now, and why the others cannot.
        """

    async def signer(email: str) -> tuple[PGPKey, Any] | None:
        """
        A valid key of C{email}'s with its secret, and its unlocked signer
        (for L{IOpenPGP.encrypt} and L{IOpenPGP.sign_detached}); the newest
        if several.
        """

    async def keys_for(email: str) -> list[StoredKey]:
        """
        Every key with a user ID for C{email}, trusted or not, valid or not.
        """

    async def decryptors(emails: Collection[str]) -> list[tuple[PGPKey, Any]]:
        """
        The secret keys of C{emails}' keys, each with what decrypts with it
        (L{IOpenPGP.decryptor}); revoked and expired keys too (mail sent to
        them before is still read).
        """

    def forget() -> None:
        """
        Forget what is kept (another process changed the keyring).
        """


def for_encryption(stored: Iterable[StoredKey], now: float) -> EncryptionKeys:
    """
    Which of an address's keys mail is encrypted to at C{now} (trusted and
    valid), and why not the others.
    """
    keys: list[PGPKey] = []
    refused: list[str] = []
    for entry in stored:
        problem = entry.key.encryption_problem(now)
        if problem is None and not entry.trusted and not entry.introduced_at(now):
            problem = "the key is not trusted"
        if problem is None:
            keys.append(entry.key)
        else:
            refused.append(f"PGP key {entry.fingerprint.upper()}: {problem}")
    return EncryptionKeys(tuple(keys), tuple(refused))


def introduced(stored: Sequence[StoredKey], introducers: Sequence[StoredKey], email: str,
               now: float) -> list[StoredKey]:
    """
    C{stored} (an address's keys), each untrusted one that a valid trusted
    introducer certified for C{email} marked with the introducer (CPU work).
    """
    valid = [i.key for i in introducers if i.trusted and i.key.problem(now) is None]
    if not valid:
        return list(stored)
    marked = []
    for entry in stored:
        if not entry.trusted:
            for introducer in valid:
                until = [expires for user_id, expires in
                         certified_user_ids(entry.key, introducer, now)
                         if email in emails_of([user_id])]
                if until:
                    ends = [t for t in (introducer.expires, *until) if t is not None]
                    entry = replace(entry, introduced_by=introducer.fingerprint,
                                    introduced_until=min(ends) if ends else None)
                    break
        marked.append(entry)
    return marked


def normal_email(email: str) -> str:
    return canonical_address(email.strip()).lower()


def normal_fingerprint(fingerprint: str) -> str:
    return "".join(fingerprint.split()).lower()


def _seal(kek: bytes, key: PGPKey, passphrase: str | None) -> bytes | None:
    if key.secret is None:
        return None
    secret = (passphrase or "").encode()
    return seal_bytes(kek, struct.pack("!H", len(secret)) + secret + key.secret,
                      key.fingerprint)


def _unseal(kek: bytes, sealed: bytes, fingerprint: str) -> tuple[bytes, str | None]:
    """
    @return: the secret key and its passphrase (C{None}: none).
    """
    plain = unseal_bytes(kek, sealed, fingerprint)
    (length,) = struct.unpack("!H", plain[:2])
    passphrase = plain[2:2 + length].decode()
    return plain[2 + length:], passphrase or None


@implementer(IKeyring)
class Keyring:
    """
    The L{IKeyring} of a deployment, in its database.

    @param kek: the key-encryption key for secret keys at rest.
    @param crypto: where parsing, unlocking and key generation run.
    """

    def __init__(self, store: Store, clock: IReactorTime, kek: bytes,
                 crypto: IBlockingRunner, openpgp: IOpenPGP) -> None:
        self._store = store
        self._clock = clock
        self._kek = kek
        self._crypto = crypto
        self._openpgp = openpgp
        self._epoch = 0
        self._generation: int | None = None
        self._polled_at: float | None = None
        self._addresses: _Recent[str, list[StoredKey]] = _Recent(ADDRESSES_KEPT)
        self._signers: _Recent[str, Any] = _Recent(SIGNERS_KEPT)
        self._decryptors: _Recent[str, Any] = _Recent(SIGNERS_KEPT)
        self.changes = 0

    def now(self) -> float:
        return self._clock.seconds()

    # Keeping and forgetting ----------------------------------------------

    def forget(self) -> None:
        self._epoch += 1
        self._addresses.clear()
        self._signers.clear()
        self._decryptors.clear()
        self._polled_at = None

    def _changed(self) -> None:
        self.forget()
        self.changes += 1

    async def _fresh(self) -> None:
        now = self._clock.seconds()
        polled = self._polled_at
        if polled is not None and polled <= now < polled + POLL_INTERVAL:
            return
        epoch = self._epoch
        generation = await self._store.read(certificate_queries.trust_version)
        if epoch == self._epoch:
            if generation != self._generation:
                self.forget()
                self._generation = generation
            self._polled_at = now

    # Reading -------------------------------------------------------------

    def _parse(self, row: q.PGPKeyRow) -> StoredKey:
        """
        C{row} read (CPU work: run on the crypto pool).
        """
        keys = self._openpgp.read_keys(row.public)
        key = keys[0]
        if row.secret is not None:
            try:
                secret, _ = _unseal(self._kek, row.secret, row.fingerprint)
            except KeyUnsealError:
                secret = None
            key = replace(key, secret=secret)
        return StoredKey(key, row.trusted, row.source, row.imported, row.introducer)

    def _parse_all(self, rows: Sequence[q.PGPKeyRow]) -> list[StoredKey]:
        parsed = []
        for row in rows:
            try:
                parsed.append(self._parse(row))
            except PGPError:
                continue  # stored by an older version that read more: not usable
        return parsed

    async def _rows(self, fn: Any, *args: Any, **kwargs: Any) -> list[StoredKey]:
        rows = await self._store.read(lambda conn: fn(conn, *args, **kwargs))
        return await self._crypto.run(self._parse_all, rows)

    async def get(self, fingerprint: str) -> StoredKey | None:
        found = await self._rows(lambda conn, f: [r] if (r := q.get_key(conn, f)) else [],
                                 normal_fingerprint(fingerprint))
        return found[0] if found else None

    async def by_key_id(self, key_id: str) -> list[StoredKey]:
        return await self._rows(q.find_by_key_id, normal_fingerprint(key_id)[-16:])

    async def listing(self, *, text: str = "", email: str = "", offset: int = 0,
                      limit: int | None = None) -> list[StoredKey]:
        return await self._rows(q.list_keys, text=text.strip(),
                                email=normal_email(email) if email else "",
                                offset=offset, limit=limit)

    async def count(self, *, text: str = "", email: str = "") -> int:
        return await self._store.read(
            lambda conn: q.count_keys(conn, text=text.strip(),
                                      email=normal_email(email) if email else ""))

    async def _for_address(self, email: str) -> list[StoredKey]:
        await self._fresh()
        email = normal_email(email)
        kept = self._addresses.get(email)
        if kept is not None:
            return kept
        epoch = self._epoch
        found = await self._rows(q.find_by_email, email)
        if any(not k.trusted for k in found):
            introducers = await self._rows(q.introducers)
            if introducers:
                found = await self._crypto.run(introduced, found, introducers, email,
                                               self.now())
        if epoch == self._epoch:
            self._addresses.put(email, found)
        return found

    async def encryption_keys(self, email: str) -> EncryptionKeys:
        return for_encryption(await self._for_address(email), self.now())

    async def keys_for(self, email: str) -> list[StoredKey]:
        return list(await self._for_address(email))

    async def signer(self, email: str) -> tuple[PGPKey, Any] | None:
        now = self.now()
        for stored in await self._for_address(email):
            key = stored.key
            if key.signing_problem(now) is not None:
                continue
            kept = await self._unlocked(self._signers, key, self._openpgp.unlock)
            if kept is not None:
                return key, kept
        return None

    async def decryptors(self, emails: Collection[str]) -> list[tuple[PGPKey, Any]]:
        found: dict[str, tuple[PGPKey, Any]] = {}
        for email in emails:
            for stored in await self._for_address(email):
                key = stored.key
                if key.secret is None or key.fingerprint in found:
                    continue
                kept = await self._unlocked(self._decryptors, key, self._openpgp.decryptor)
                if kept is not None:
                    found[key.fingerprint] = (key, kept)
        return list(found.values())

    async def _unlocked(self, kept: _Recent[str, Any], key: PGPKey,
                        unlock: Callable[[PGPKey, str | None], Any]) -> Any:
        """
        C{unlock(key, passphrase)} for the stored secret of C{key}, kept in
        C{kept} (unlocking may cost tens of milliseconds); C{None} when it
        cannot be unlocked.
        """
        found = kept.get(key.fingerprint)
        if found is None:
            epoch = self._epoch
            row = await self._store.read(q.get_key, key.fingerprint)
            try:
                found = await self._crypto.run(self._unlock, row, unlock)
            except (PGPError, KeyUnsealError):
                return None
            if epoch == self._epoch:
                kept.put(key.fingerprint, found)
        return found

    def _unlock(self, row: q.PGPKeyRow | None,
                unlock: Callable[[PGPKey, str | None], Any]) -> Any:
        if row is None or row.secret is None:
            raise PGPError("The secret key is no longer stored.")
        secret, passphrase = _unseal(self._kek, row.secret, row.fingerprint)
        key = replace(self._openpgp.read_keys(row.public)[0], secret=secret)
        return unlock(key, passphrase)

    # Writing -------------------------------------------------------------

    async def import_keys(self, data: bytes, *, passphrase: str | None = None,
                          trusted: bool | None = True, source: str = ADMIN
                          ) -> list[ImportedKey]:
        keys = await self._crypto.run(self._read_checked, data, passphrase)
        return await self._put(keys, passphrase, trusted, source)

    def _read_checked(self, data: bytes, passphrase: str | None) -> list[PGPKey]:
        keys = self._openpgp.read_keys(data)
        for key in keys:
            if key.secret is not None and key.secret_protected:
                self._openpgp.check_passphrase(key, passphrase)
        return keys

    async def _put(self, keys: Sequence[PGPKey], passphrase: str | None,
                   trusted: bool | None, source: str) -> list[ImportedKey]:
        now = self.now()
        new_rows = [q.NewPGPKey(
            fingerprint=key.fingerprint, public=key.public,
            secret=_seal(self._kek, key, passphrase if key.secret_protected else None),
            user_ids=key.user_ids, emails=key.emails, key_ids=key.key_ids,
            created=key.created, expires=key.expires, revoked=key.revoked, trusted=trusted,
            source=source) for key in keys]

        def write(conn: Any) -> list[bool]:
            return [q.put_key(conn, row, now) for row in new_rows]

        try:
            fresh = await self._store.run(write)
        finally:
            self._changed()
        return [ImportedKey(key.fingerprint, key.user_ids, new, key.secret is not None)
                for key, new in zip(keys, fresh, strict=True)]

    async def generate(self, email: str, name: str = "", suite: str = "cv25519"
                       ) -> StoredKey:
        address = canonical_address(email.strip())
        user_id = f"{name.strip()} <{address}>" if name.strip() else f"<{address}>"
        key = await self._crypto.run(self._openpgp.generate, user_id, suite)
        await self._put([key], None, True, GENERATED)
        return StoredKey(key, True, GENERATED, self.now())

    async def set_trusted(self, fingerprint: str, trusted: bool) -> bool:
        try:
            return await self._store.run(q.set_trusted, normal_fingerprint(fingerprint),
                                         trusted)
        finally:
            self._changed()

    async def set_introducer(self, fingerprint: str, introducer: bool) -> bool:
        try:
            return await self._store.run(q.set_introducer, normal_fingerprint(fingerprint),
                                         introducer)
        finally:
            self._changed()

    async def delete(self, fingerprint: str) -> bool:
        try:
            return await self._store.run(q.delete_key, normal_fingerprint(fingerprint))
        finally:
            self._changed()
