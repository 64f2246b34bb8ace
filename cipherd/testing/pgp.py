"""
An OpenPGP keyring and a Web Key Directory in memory: the L{IKeyring} fake for tests of what uses
one (processing, the admin), and the plain reference the real keyring's
caches are held to: it keeps the keys and their trust and works every
answer out afresh at the clock's time.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from cipherd.core.addresses import canonical_address
from cipherd.mpa.discovery import IKeyDirectory, WKDError, wkd_locations
from cipherd.pki.keyring import (
    ADMIN,
    GENERATED,
    EncryptionKeys,
    IKeyring,
    ImportedKey,
    StoredKey,
    for_encryption,
    introduced,
    normal_email,
    normal_fingerprint,
)
from cipherd.pki.pgp import IOpenPGP, PGPError, PGPKey, SequoiaOpenPGP


@dataclass
class _Entry:
    key: PGPKey
    passphrase: str | None
    trusted: bool
    source: str
    imported: float
    introducer: bool = False


@implementer(IKeyring)
class MemoryKeyring:
    def __init__(self, clock: IReactorTime, openpgp: IOpenPGP | None = None) -> None:
        self._clock = clock
        self._openpgp = openpgp or SequoiaOpenPGP()
        self._keys: dict[str, _Entry] = {}
        self.changes = 0

    def now(self) -> float:
        return self._clock.seconds()

    def forget(self) -> None:
        pass  # nothing kept

    def _stored(self, entry: _Entry) -> StoredKey:
        return StoredKey(entry.key, entry.trusted, entry.source, entry.imported,
                         entry.introducer)

    async def import_keys(self, data: bytes, *, passphrase: str | None = None,
                          trusted: bool | None = True, source: str = ADMIN
                          ) -> list[ImportedKey]:
        keys = self._openpgp.read_keys(data)
        for key in keys:
            if key.secret is not None and key.secret_protected:
                self._openpgp.check_passphrase(key, passphrase)
        imported = []
        for key in keys:
            old = self._keys.get(key.fingerprint)
            if old is not None and key.secret is None:
                key = replace(key, secret=old.key.secret)
            self._keys[key.fingerprint] = _Entry(
                key, passphrase if key.secret_protected else (old.passphrase if old else None),
                (old.trusted if old else False) if trusted is None else trusted,
                old.source if old else source, old.imported if old else self.now())
            imported.append(ImportedKey(key.fingerprint, key.user_ids, old is None,
                                        key.secret is not None))
        self.changes += 1
        return imported

    async def generate(self, email: str, name: str = "", suite: str = "cv25519") -> StoredKey:
        address = canonical_address(email.strip())
        user_id = f"{name.strip()} <{address}>" if name.strip() else f"<{address}>"
        key = self._openpgp.generate(user_id, suite)
        self._keys[key.fingerprint] = _Entry(key, None, True, GENERATED, self.now())
        self.changes += 1
        return self._stored(self._keys[key.fingerprint])

    async def get(self, fingerprint: str) -> StoredKey | None:
        entry = self._keys.get(normal_fingerprint(fingerprint))
        return None if entry is None else self._stored(entry)

    async def by_key_id(self, key_id: str) -> list[StoredKey]:
        key_id = normal_fingerprint(key_id)[-16:]
        return [self._stored(e) for e in self._keys.values() if key_id in e.key.key_ids]

    def _matching(self, text: str, email: str) -> list[_Entry]:
        text = text.strip().lower()
        email = normal_email(email) if email else ""
        found = [e for e in self._keys.values()
                 if (not email or email in e.key.emails)
                 and (not text or text in e.key.fingerprint
                      or any(text in a for a in e.key.emails)
                      or any(text in u.lower() for u in e.key.user_ids))]
        return sorted(found, key=lambda e: (-e.imported, e.key.fingerprint))

    async def listing(self, *, text: str = "", email: str = "", offset: int = 0,
                      limit: int | None = None) -> list[StoredKey]:
        found = self._matching(text, email)[offset:]
        return [self._stored(e) for e in (found if limit is None else found[:limit])]

    async def count(self, *, text: str = "", email: str = "") -> int:
        return len(self._matching(text, email))

    def _mark(self, fingerprint: str, **values: bool) -> bool:
        entry = self._keys.get(normal_fingerprint(fingerprint))
        if entry is None:
            return False
        for name, value in values.items():
            setattr(entry, name, value)
        self.changes += 1
        return True

    async def set_trusted(self, fingerprint: str, trusted: bool) -> bool:
        return self._mark(fingerprint, trusted=trusted)

    async def set_introducer(self, fingerprint: str, introducer: bool) -> bool:
        return self._mark(fingerprint, introducer=introducer)

    async def delete(self, fingerprint: str) -> bool:
        self.changes += 1
        return self._keys.pop(normal_fingerprint(fingerprint), None) is not None

    def _for(self, email: str) -> list[_Entry]:
        email = normal_email(email)
        return sorted((e for e in self._keys.values() if email in e.key.emails),
                      key=lambda e: (-e.key.created, e.key.fingerprint))

    async def encryption_keys(self, email: str) -> EncryptionKeys:
        return for_encryption(await self.keys_for(email), self.now())

    async def signer(self, email: str) -> tuple[PGPKey, Any] | None:
        now = self.now()
        for entry in self._for(email):
            if entry.key.signing_problem(now) is not None:
                continue
            try:
                return entry.key, self._openpgp.unlock(entry.key, entry.passphrase)
            except PGPError:
                continue
        return None

    async def keys_for(self, email: str) -> list[StoredKey]:
        introducers = [self._stored(e) for e in self._keys.values() if e.introducer]
        return introduced([self._stored(e) for e in self._for(email)], introducers,
                          normal_email(email), self.now())

    async def decryptors(self, emails: Collection[str]) -> list[tuple[PGPKey, Any]]:
        found: dict[str, tuple[PGPKey, Any]] = {}
        for email in emails:
            for entry in self._for(email):
                if entry.key.secret is None or entry.key.fingerprint in found:
                    continue
                try:
                    found[entry.key.fingerprint] = (
                        entry.key, self._openpgp.decryptor(entry.key, entry.passphrase))
                except PGPError:
                    continue
        return list(found.values())


@implementer(IKeyDirectory)
class MemoryKeyDirectory:
    """
    The L{IKeyDirectory} fake: a directory of keys by address; addresses in
    C{slow} are never answered, not even when the lookup is cancelled (a
    dead directory behind a resolver that goes on to its next question),
    those in C{broken} fail.

    @ivar asked: the addresses asked for, in order.
    """

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.slow: set[str] = set()
        self.broken: dict[str, str] = {}
        self.asked: list[str] = []

    def fetch(self, address: str) -> Deferred[tuple[bytes | None, str]]:
        self.asked.append(address)
        url = wkd_locations(address)[0].url
        if address in self.slow:
            return Deferred.fromCoroutine(_stubborn())
        if address in self.broken:
            return fail(WKDError(self.broken[address]))
        return succeed((self.keys.get(address), url))


async def _stubborn() -> tuple[bytes | None, str]:
    try:
        return await Deferred()
    except CancelledError:
        return await Deferred()  # goes on as if nothing happened
