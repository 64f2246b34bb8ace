"""
OpenPGP: keys read and judged, messages encrypted and signed, behind one
small interface (L{IOpenPGP}) so the library can be swapped.

The library is Sequoia-PGP through C{pysequoia} (RFC 9580, v4 and v6 keys),
chosen over PGPy and over driving C{gpg} by a measured comparison (see
C{bench/README.md}, "OpenPGP libraries").  Sequoia checks every binding and
self-signature; what it does not do for us, this module does:

  - a key is judged at a given time (L{PGPKey.encryption_problem}): revoked
    or expired keys, and keys whose every encryption subkey is expired or
    revoked, are refused.  C{pysequoia.encrypt} itself falls back to an
    expired subkey when no live one is left, and encrypts to a revoked
    certificate; so encryption goes only to the live subkeys, by a copy of
    the certificate without the others (L{_for_encryption});
  - which subkeys live is read from the newest binding signature of each
    (its key flags and key expiration), and from subkey revocations.
    Sequoia has checked that the binding is valid (a subkey without a valid
    binding is never encrypted to); a forged binding that is newer than the
    valid one could only make us believe a subkey of the key's own owner
    lives longer than it does.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import getaddresses
from typing import Any

import pysequoia
from pysequoia.packet import PacketPile, SignatureType, Tag
from zope.interface import Interface, implementer

from cipherd.core.addresses import canonical_address
from cipherd.core.clock import minute_utc
from cipherd.pki.errors import PKIError

# Key flags as we name them.
CERTIFY = "certify"
SIGN = "sign"
ENCRYPT = "encrypt"
AUTHENTICATE = "authenticate"

# What an armored key, message or signature looks like.
ARMOR_BEGIN = re.compile(rb"-----BEGIN PGP (PUBLIC KEY BLOCK|PRIVATE KEY BLOCK|MESSAGE|SIGNATURE"
                         rb"|SIGNED MESSAGE)-----")

# Algorithms a generated key may use.
SUITES = {
    "cv25519": pysequoia.CipherSuite.Cv25519,
    "rsa3072": pysequoia.CipherSuite.RSA3k,
    "rsa4096": pysequoia.CipherSuite.RSA4k,
    "p256": pysequoia.CipherSuite.P256,
}


class PGPError(PKIError):
    """
    OpenPGP data that cannot be read or used; the message says why, in a
    line (never the library's backtrace).
    """


def _why(error: Exception) -> str:
    """
    The library's message, first line only (with C{RUST_BACKTRACE} set it
    carries a backtrace).
    """
    text = str(error).strip().splitlines()
    return text[0].rstrip(".") if text else type(error).__name__


@dataclass(frozen=True)
class Subkey:
    """
    One key of a certificate: the primary (first) or a subkey.

    @ivar expires: POSIX time, or C{None} for never.
    """

    key_id: str
    fingerprint: str
    algorithm: str
    created: float
    expires: float | None
    flags: frozenset[str]
    revoked: bool = False

    def live_at(self, now: float) -> bool:
        return not self.revoked and self.created <= now + _SKEW and (
            self.expires is None or now < self.expires)


# Clock skew allowed for a key made "in the future" by a fast clock.
_SKEW = 300.0


@dataclass(frozen=True)
class PGPKey:
    """
    An OpenPGP certificate, read: what the keyring stores and shows.

    @ivar fingerprint: of the primary key, lower-case hex (40 or 64 digits).
    @ivar emails: the addresses of its valid user IDs, canonical spelling,
        lower case.
    @ivar expires: when the certificate expires (POSIX), or C{None}.
    @ivar keys: the primary key first, then the subkeys.
    @ivar public: the certificate, binary, without secrets.
    @ivar secret: the transferable secret key, binary, or C{None}.
    @ivar secret_protected: the secret key material needs a passphrase.
    """

    fingerprint: str
    user_ids: tuple[str, ...]
    emails: tuple[str, ...]
    created: float
    expires: float | None
    revoked: bool
    keys: tuple[Subkey, ...]
    version: int
    public: bytes = field(repr=False)
    secret: bytes | None = field(default=None, repr=False)
    secret_protected: bool = False

    @property
    def key_id(self) -> str:
        return self.keys[0].key_id

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(k.key_id for k in self.keys)

    def usable_keys(self, flag: str, now: float) -> list[Subkey]:
        return [k for k in self.keys if flag in k.flags and k.live_at(now)]

    def problem(self, now: float) -> str | None:
        """
        Why the certificate as a whole is not valid at C{now}, or C{None}.
        """
        if self.revoked:
            return "the key is revoked"
        if self.expires is not None and now >= self.expires:
            return f"the key expired on {minute_utc(self.expires)}"
        if self.created > now + _SKEW:
            return f"the key is not valid before {minute_utc(self.created)}"
        return None

    def encryption_problem(self, now: float) -> str | None:
        """
        Why nothing can be encrypted to this key at C{now}, or C{None}.
        """
        problem = self.problem(now)
        if problem is None and not self.usable_keys(ENCRYPT, now):
            expired = [k for k in self.keys if ENCRYPT in k.flags]
            problem = ("every encryption subkey of the key is expired or revoked" if expired
                       else "the key has no encryption subkey")
        return problem

    def signing_problem(self, now: float) -> str | None:
        problem = self.problem(now)
        if problem is None and self.secret is None:
            problem = "there is no secret key"
        if problem is None and not self.usable_keys(SIGN, now):
            problem = "the key has no valid signing key"
        return problem



def _seconds(when: datetime | None) -> float | None:
    return None if when is None else when.timestamp()


def _flags(packet: Any) -> frozenset[str]:
    flags = packet.key_flags
    if flags is None:
        return frozenset()
    return frozenset(name for name, on in (
        (CERTIFY, flags.certification), (SIGN, flags.signing),
        (ENCRYPT, flags.transport_encryption or flags.storage_encryption),
        (AUTHENTICATE, flags.authentication)) if on)


_SELF_CERTIFICATIONS = (SignatureType.PositiveCertification, SignatureType.GenericCertification,
                        SignatureType.CasualCertification, SignatureType.PersonaCertification,
                        SignatureType.DirectKey)
_KEY_TAGS = (Tag.PublicKey, Tag.SecretKey)
_SUBKEY_TAGS = (Tag.PublicSubkey, Tag.SecretSubkey)


def _keys(public: bytes, expires: float | None) -> tuple[Subkey, ...]:
    """
    The primary key and subkeys of a certificate with their flags and
    expiry, from the newest self-signature of each (see the module's
    docstring for what Sequoia has checked already).
    """
    primary: Any = None
    primary_id = ""
    current: Any = None  # the key whose signatures follow
    signatures: dict[str, list[Any]] = {}
    order: list[Any] = []
    for packet in PacketPile.from_bytes(public):
        tag = packet.tag
        if tag in _KEY_TAGS:
            primary = current = packet
            primary_id = packet.fingerprint or ""
            order.append(packet)
        elif tag in _SUBKEY_TAGS:
            current = packet
            order.append(packet)
        elif tag == Tag.UserID or tag == Tag.UserAttribute:
            current = primary
        elif tag == Tag.Signature and current is not None:
            issuer = packet.issuer_fingerprint
            if issuer is not None and issuer != primary_id:
                continue  # a third party's certification
            if issuer is None and (packet.issuer_key_id or "") != (primary.key_id or ""):
                continue
            signatures.setdefault(current.fingerprint, []).append(packet)
    keys = []
    for n, key in enumerate(order):
        own = signatures.get(key.fingerprint, [])
        if n == 0:
            binding = [s for s in own if s.signature_type in _SELF_CERTIFICATIONS]
            revoked = False  # the certificate's revocation is Sequoia's to judge
            until = expires
        else:
            binding = [s for s in own if s.signature_type == SignatureType.SubkeyBinding]
            revoked = any(s.signature_type == SignatureType.SubkeyRevocation for s in own)
            until = None
        newest = max(binding, key=lambda s: s.signature_created or datetime.min.replace(
            tzinfo=UTC), default=None)
        created = _seconds(key.key_created) or 0.0
        flags: frozenset[str] = frozenset()
        if newest is not None:
            flags = _flags(newest)
            if n > 0 and newest.key_validity_period is not None:
                until = created + newest.key_validity_period.total_seconds()
        if not flags and n == 0:
            flags = frozenset({CERTIFY, SIGN})  # a v3-style primary without flags
        if n > 0 and expires is not None:
            until = expires if until is None else min(until, expires)
        keys.append(Subkey(key_id=(key.key_id or "").lower(),
                           fingerprint=(key.fingerprint or "").lower(),
                           algorithm=str(key.key_algorithm).rpartition(".")[2],
                           created=created, expires=until, flags=flags, revoked=revoked))
    return tuple(keys)


def emails_of(user_ids: Sequence[str]) -> tuple[str, ...]:
    """
    The addresses in user IDs (C{Name <address>} or a bare address),
    canonical and lower case, each once.
    """
    found: dict[str, None] = {}
    for user_id in user_ids:
        for _, address in getaddresses([user_id.replace(",", " ")]):
            if "@" in address:
                found[canonical_address(address).lower()] = None
    return tuple(found)


class IOpenPGP(Interface):
    """
    The OpenPGP operations cipherd uses.  Every method is CPU work: call it
    on a crypto thread.
    """

    def read_keys(data: bytes) -> list[PGPKey]:
        """
        The certificates and secret keys in C{data} (armored or binary; one
        or many).

        @raise PGPError: nothing readable, or a certificate is broken.
        """

    def unlock(key: PGPKey, passphrase: str | None) -> Any:
        """
        A signer for C{key}'s secret signing key.

        @raise PGPError: no secret key, or the passphrase is wrong.
        """

    def check_passphrase(key: PGPKey, passphrase: str | None) -> None:
        """
        @raise PGPError: C{passphrase} does not open C{key}'s secret keys.
        """

    def encrypt(data: bytes, recipients: Sequence[PGPKey], signer: Any = None, *,
                now: float) -> bytes:
        """
        C{data} as an armored OpenPGP message to the live encryption
        subkeys of C{recipients} at C{now}, signed by C{signer} (from
        L{unlock}) if given.

        @raise PGPError: a recipient has no live encryption subkey.
        """

    def sign_detached(data: bytes, signer: Any) -> bytes:
        """
        An armored detached signature over C{data} (binary signature type).
        """

    def generate(user_id: str, suite: str = "cv25519") -> PGPKey:
        """
        A new key (certify-only primary, a signing and an encryption
        subkey) without expiry or passphrase, for C{user_id}.
        """

    def keep_user_ids(key: PGPKey, email: str) -> PGPKey:
        """
        C{key} with only its user IDs for C{email} (and its subkeys), no
        secrets.

        @raise PGPError: it has none.
        """

    def decryptor(key: PGPKey, passphrase: str | None) -> Any:
        """
        What decrypts with C{key}'s secret encryption keys (also when the
        key has been revoked or has expired since: mail sent to it then is
        still read).

        @raise PGPError: no secret key, or the passphrase is wrong.
        """

    def recipients(message: bytes) -> list[str]:
        """
        The key IDs (lower-case hex) an encrypted OpenPGP message says it
        is for; C{"0000000000000000"} for a hidden recipient.

        @raise PGPError: C{message} is not an encrypted OpenPGP message.
        """

    def decrypt(message: bytes, decryptors: Sequence[tuple[PGPKey, Any]],
                certificates: Sequence[PGPKey]) -> Decryption:
        """
        C{message} (armored or binary) decrypted with the first of
        C{decryptors} (from L{decryptor}) it is for -- each in turn for a
        hidden recipient -- and the signatures inside checked against
        C{certificates}.

        @raise PGPError: it is not for any of the keys, or cannot be read.
        """

    def verify_detached(data: bytes, signature: bytes,
                        certificates: Sequence[PGPKey]) -> list[SignatureCheck]:
        """
        Each signature in C{signature} (armored or binary) checked over
        C{data} with C{certificates}.

        @raise PGPError: C{signature} holds no signature.
        """

    def verify_cleartext(text: bytes, certificates: Sequence[PGPKey]
                         ) -> tuple[bytes, list[SignatureCheck]]:
        """
        A cleartext-signed message (C{-----BEGIN PGP SIGNED MESSAGE-----})
        checked: its text and a check per signature.

        @raise PGPError: it cannot be read.
        """


@implementer(IOpenPGP)
class SequoiaOpenPGP:
    """
    L{IOpenPGP} with Sequoia-PGP.
    """

    def read_keys(self, data: bytes) -> list[PGPKey]:
        try:
            certs = pysequoia.Cert.split_bytes(data)
        except Exception as e:
            cleaned = _without_noise(data)
            if cleaned == data:
                raise PGPError(f"No OpenPGP key could be read: {_why(e)}.") from None
            try:
                certs = pysequoia.Cert.split_bytes(cleaned)
            except Exception:
                raise PGPError(f"No OpenPGP key could be read: {_why(e)}.") from None
        if not certs:
            raise PGPError("No OpenPGP key could be read: the data holds none.")
        return [self._read(cert) for cert in certs]

    def _read(self, cert: Any) -> PGPKey:
        fingerprint = cert.fingerprint.lower()
        secret: bytes | None = None
        protected = False
        with warnings.catch_warnings():
            # "Use Tsk::from_*": that reads one key, this any of a keyring.
            warnings.simplefilter("ignore", DeprecationWarning)
            tsk = cert.secrets if cert.has_secret_keys else None
        if tsk is not None:
            secret = bytes(tsk)
            protected = _needs_passphrase(tsk)
            cert = tsk.extract_certificate()
        public = bytes(cert)
        try:
            user_ids = tuple(str(u) for u in cert.user_ids)
        except Exception as e:
            raise PGPError(f"The key {fingerprint.upper()} cannot be used: {_why(e)}.") from None
        expires = _seconds(cert.expiration)
        keys = _keys(public, expires)
        if not keys:
            raise PGPError(f"The key {fingerprint.upper()} has no key packet.")
        version = 6 if len(fingerprint) == 64 else 4
        return PGPKey(fingerprint=fingerprint, user_ids=user_ids, emails=emails_of(user_ids),
                      created=keys[0].created, expires=expires, revoked=bool(cert.is_revoked),
                      keys=keys, version=version, public=public, secret=secret,
                      secret_protected=protected)

    def unlock(self, key: PGPKey, passphrase: str | None) -> Any:
        if key.secret is None:
            raise PGPError(f"There is no secret key for {key.fingerprint.upper()}.")
        try:
            return pysequoia.Tsk.from_bytes(key.secret).signer(passphrase or None)
        except Exception as e:
            why = _why(e)
            if "encrypted" in why or "EOF" in why or "decrypt" in why.lower():
                raise PGPError(f"The passphrase of the secret key {key.fingerprint.upper()} "
                               "is wrong or missing.") from None
            raise PGPError(f"The secret key {key.fingerprint.upper()} cannot sign: "
                           f"{why}.") from None

    def check_passphrase(self, key: PGPKey, passphrase: str | None) -> None:
        """
        @raise PGPError: C{passphrase} does not open C{key}'s secret keys.
        """
        if key.secret is None:
            return
        tsk = pysequoia.Tsk.from_bytes(key.secret)
        for use in (tsk.signer, tsk.decryptor):
            try:
                use(passphrase or None)
                return
            except Exception as e:
                why = _why(e)
                if "encrypted" in why or "EOF" in why:
                    raise PGPError(f"The passphrase of the secret key {key.fingerprint.upper()}"
                                   " is wrong or missing.") from None
        # Neither signs nor decrypts (e.g. only a certification key): fine.

    def encrypt(self, data: bytes, recipients: Sequence[PGPKey], signer: Any = None, *,
                now: float) -> bytes:
        certs = [_for_encryption(key, now) for key in recipients]
        try:
            return bytes(pysequoia.encrypt(data, recipients=certs, signer=signer))
        except Exception as e:
            raise PGPError(f"OpenPGP encryption failed: {_why(e)}.") from None

    def sign_detached(self, data: bytes, signer: Any) -> bytes:
        try:
            return bytes(pysequoia.sign(signer, data, mode=pysequoia.SignatureMode.DETACHED))
        except Exception as e:
            raise PGPError(f"OpenPGP signing failed: {_why(e)}.") from None

    def generate(self, user_id: str, suite: str = "cv25519") -> PGPKey:
        try:
            tsk = pysequoia.Tsk.generate(user_id, cipher_suite=SUITES[suite])
        except KeyError:
            raise PGPError(f"Unknown key type {suite!r}: one of {', '.join(SUITES)}.") from None
        return self._read(pysequoia.Cert.from_bytes(bytes(tsk)))


    def decryptor(self, key: PGPKey, passphrase: str | None) -> Any:
        if key.secret is None:
            raise PGPError(f"There is no secret key for {key.fingerprint.upper()}.")
        try:
            sequoia = pysequoia.Tsk.from_bytes(key.secret).decryptor(passphrase or None)
        except Exception as e:
            why = _why(e)
            if "encrypted" in why or "EOF" in why or "decrypt" in why.lower():
                raise PGPError(f"The passphrase of the secret key {key.fingerprint.upper()} "
                               "is wrong or missing.") from None
            raise PGPError(f"The secret key {key.fingerprint.upper()} cannot decrypt: "
                           f"{why}.") from None
        return _Decrypting(sequoia, key.secret, passphrase)

    def keep_user_ids(self, key: PGPKey, email: str) -> PGPKey:
        kept: list[Any] = []
        skipping = False
        for packet in PacketPile.from_bytes(key.public):
            if packet.tag in (Tag.UserID, Tag.UserAttribute):
                skipping = packet.tag == Tag.UserAttribute or email not in emails_of(
                    [bytes(packet.body).decode("utf-8", "replace")])
            elif packet.tag in _SUBKEY_TAGS:
                skipping = False
            if not skipping:
                kept.append(packet)
        try:
            only = self._read(pysequoia.Cert.from_packets(kept))
        except Exception as e:
            raise PGPError(f"The key {key.fingerprint.upper()} cannot be used: {_why(e)}.") \
                from None
        if email not in only.emails:
            raise PGPError(f"The key {key.fingerprint.upper()} has no user ID for {email}.")
        return only

    def recipients(self, message: bytes) -> list[str]:
        try:
            packets = list(PacketPile.from_bytes(message))
        except Exception as e:
            raise PGPError(f"The OpenPGP message cannot be read: {_why(e)}.") from None
        found = [_pkesk_recipient(p.body) for p in packets if p.tag == Tag.PKESK]
        if not any(p.tag in _ENCRYPTED_DATA for p in packets):
            raise PGPError("The OpenPGP data is not an encrypted message.")
        return found

    def decrypt(self, message: bytes, decryptors: Sequence[tuple[PGPKey, Any]],
                certificates: Sequence[PGPKey]) -> Decryption:
        wanted = self.recipients(message)
        hidden = WILDCARD in wanted
        chosen = [(key, d) for key, d in decryptors
                  if hidden or any(k in wanted for k in key.key_ids)]
        if not chosen:
            raise PGPError("The message is not encrypted to any of the recipients' secret "
                           f"keys (it is for {', '.join(k.upper() for k in wanted) or 'none'}).")
        failure = "no key decrypted it"
        for key, decrypting in chosen:
            refused: list[str] = []
            try:
                data, checks = _checked(
                    lambda store, d=decrypting: _decrypt_bounded(message, d.sequoia, store),
                    lambda d=decrypting: _decrypt_bounded(message, d.sequoia, None),
                    certificates, refused=refused)
            except Exception as e:
                failure = _why(e)
                continue
            if checks and data is not None and any(_UNREACHED in why for why in refused):
                checks = _signatures_inside(message, decrypting, data, certificates) or checks
            subkey = next((k for k in key.keys if k.key_id in wanted),
                          next((k for k in key.keys if ENCRYPT in k.flags), key.keys[0]))
            return Decryption(data or b"", key.fingerprint, subkey.key_id, tuple(wanted),
                              tuple(checks))
        raise PGPError(f"OpenPGP decryption failed: {failure}.")

    def verify_detached(self, data: bytes, signature: bytes,
                        certificates: Sequence[PGPKey]) -> list[SignatureCheck]:
        try:
            packets = [p for p in PacketPile.from_bytes(signature) if p.tag == Tag.Signature]
        except Exception as e:
            raise PGPError(f"The OpenPGP signature cannot be read: {_why(e)}.") from None
        if not packets:
            raise PGPError("The OpenPGP signature part holds no signature.")
        checks = []
        for packet in packets:
            try:
                sig = pysequoia.Sig.from_bytes(bytes(packet))
            except Exception as e:
                raise PGPError(f"The OpenPGP signature cannot be read: {_why(e)}.") from None
            created = _seconds(sig.created)
            _, found = _checked(
                lambda store, s=sig: pysequoia.verify(data, store=store, signature=s),
                None, certificates,
                issuers=[(sig.issuer_fingerprint or sig.issuer_key_id or "").lower()])
            checks += [replace(c, created=created) for c in found]
        return checks

    def verify_cleartext(self, text: bytes, certificates: Sequence[PGPKey]
                         ) -> tuple[bytes, list[SignatureCheck]]:
        text = _canonical_cleartext(text)
        content, checks = _checked(lambda store: pysequoia.verify(text, store=store),
                                   None, certificates)
        if content is None:
            content = _cleartext_body(text)
        return content, checks


WILDCARD = "0" * 16
# What a decrypted message may grow to (a compressed one can be a bomb).
MAX_PLAINTEXT = 64 * 1024 * 1024


@dataclass(frozen=True)
class _Decrypted:
    bytes: bytes
    valid_sigs: list[Any]


def _decrypt_bounded(message: bytes, decryptor: Any, store: Any,
                     limit: int | None = None) -> _Decrypted:
    """
    C{pysequoia.decrypt}, but the plaintext refused beyond C{limit}
    (L{MAX_PLAINTEXT}): C{pysequoia.decrypt} gathers it in memory whatever
    its size, and a few hundred kilobytes of compressed ciphertext can hold
    gigabytes.  pysequoia keeps the GIL while it decrypts, so no thread of
    ours can watch: Sequoia writes the plaintext into a FIFO that C{head -c}
    (another process) copies into a file and stops reading after C{limit}
    bytes, and Sequoia's next write fails (EPIPE).

    @raise PGPError: the plaintext is larger than C{limit}.
    """
    limit = MAX_PLAINTEXT if limit is None else limit
    with tempfile.TemporaryDirectory(prefix="cipherd-pgp-") as directory:
        ciphertext = os.path.join(directory, "in")
        fifo = os.path.join(directory, "fifo")
        plaintext = os.path.join(directory, "out")
        with open(ciphertext, "wb") as sink:
            sink.write(message)
        os.mkfifo(fifo, 0o600)
        with open(plaintext, "wb") as out:
            copier = subprocess.Popen(["head", "-c", str(limit + 1), fifo], stdout=out,
                                      stderr=subprocess.DEVNULL)
        result: Any = None
        error: BaseException | None = None
        try:
            result = pysequoia.decrypt_file(ciphertext, fifo, decryptor=decryptor,
                                            store=store)
        except BaseException as e:
            error = e
        finally:
            _release(fifo, copier)
        with open(plaintext, "rb") as source:
            data = source.read(limit + 1)
    if len(data) > limit:
        raise PGPError(f"the decrypted message is larger than {limit // (1024 * 1024)} MiB")
    if error is not None:
        raise error
    return _Decrypted(data, list(result.valid_sigs))


def _release(fifo: str, copier: subprocess.Popen[bytes]) -> None:
    """
    Let C{head} finish: it has read all Sequoia wrote (Sequoia closed the
    FIFO), or it never saw a writer (the decryption failed before writing)
    and a writer that opens and closes gives it its end of file.
    """
    for _ in range(200):
        if copier.poll() is not None:
            return
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # no reader yet (ENXIO): head has not opened it yet
        try:
            copier.wait(timeout=0.01)
            return
        except subprocess.TimeoutExpired:
            continue
    copier.kill()
    copier.wait()


@dataclass(frozen=True)
class _Decrypting:
    """
    What L{SequoiaOpenPGP.decryptor} gives: Sequoia's decryptor, and the
    secret key with its passphrase for L{_signatures_inside}.
    """

    sequoia: Any
    secret: bytes = field(repr=False)
    passphrase: str | None = field(repr=False)


def _signatures_inside(message: bytes, decrypting: _Decrypting, data: bytes,
                       certificates: Sequence[PGPKey]) -> list[SignatureCheck]:
    """
    The signatures of a signed message inside a compressed, encrypted one
    -- GnuPG's usual output -- checked.  pysequoia (0.1.35) verifies no
    signature there: its verification helper accepts a compression layer
    only as the message's first (C{src/decrypt.rs}, C{check}), refusing
    encryption, compression, signatures.  So PGPy decrypts the message
    again to read the signature packets, and Sequoia checks each as a
    detached signature over the plaintext Sequoia decrypted (what is
    delivered); PGPy's plaintext is not used.

    @return: a check per signature; empty when PGPy cannot read it (the
        caller keeps its own "not verified" checks).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgpy

            key, _ = pgpy.PGPKey.from_blob(decrypting.secret)
            encrypted = pgpy.PGPMessage.from_blob(message)
            if key.is_protected:
                with key.unlock(decrypting.passphrase or ""):
                    opened = _pgpy_decrypt(key, encrypted)
            else:
                opened = _pgpy_decrypt(key, encrypted)
            signatures = [bytes(sig) for sig in opened.signatures]
    except Exception:
        return []
    checks: list[SignatureCheck] = []
    for raw in signatures:
        try:
            sig = pysequoia.Sig.from_bytes(raw)
        except Exception:  # noqa: S112 - a packet Sequoia cannot read: not checked
            continue
        _, found = _checked(
            lambda store, s=sig: pysequoia.verify(data, store=store, signature=s),
            None, certificates,
            issuers=[(sig.issuer_fingerprint or sig.issuer_key_id or "").lower()])
        checks += [replace(c, created=_seconds(sig.created)) for c in found]
    return checks


def _pgpy_decrypt(key: Any, message: Any) -> Any:
    """
    C{message} decrypted by PGPy with whichever of C{key}'s (sub)keys it is
    for.
    """
    for candidate in [key, *key.subkeys.values()]:
        try:
            return candidate.decrypt(message)
        except Exception:  # noqa: S112 - the next subkey
            continue
    raise PGPError("PGPy could not decrypt the message.")
_ENCRYPTED_DATA = (Tag.SEIP, Tag.SED, Tag.AED)


@dataclass(frozen=True)
class SignatureCheck:
    """
    One OpenPGP signature.

    @ivar issuer: the signing key's fingerprint or key ID, as the signature
        names it (lower-case hex).
    @ivar valid: it verifies with a key of the certificates given.
    @ivar key: the certificate's fingerprint, when one of them is the
        issuer's.
    @ivar created: when it was made, if known (POSIX).
    """

    issuer: str
    valid: bool
    key: str | None
    reason: str = ""
    created: float | None = None


@dataclass(frozen=True)
class Decryption:
    """
    What L{IOpenPGP.decrypt} gives.

    @ivar key: the fingerprint of the secret key that decrypted it.
    @ivar subkey: the key ID of its subkey the message was for.
    @ivar recipients: every key ID the message is for.
    """

    data: bytes
    key: str
    subkey: str
    recipients: tuple[str, ...]
    signatures: tuple[SignatureCheck, ...]


def _pkesk_recipient(body: bytes) -> str:
    """
    The recipient named in a public-key encrypted session key packet: a v3
    packet's key ID, or a v6 packet's key ID read from its fingerprint.
    """
    if body[:1] == b"\x03" and len(body) >= 9:
        return body[1:9].hex()
    if body[:1] == b"\x06" and len(body) >= 2:
        size = body[1]
        if size == 0:
            return WILDCARD
        version, fingerprint = body[2:3], body[3:2 + size]
        return (fingerprint[:8] if version == b"\x06" else fingerprint[-8:]).hex()
    return WILDCARD


def _matches(key: PGPKey, issuer: str) -> bool:
    return any(issuer in (k.fingerprint, k.key_id) or k.fingerprint.endswith(issuer)
               for k in key.keys)


_NOT_VERIFIED = ("Signature verification failed", "no valid signatures")


# What pysequoia says of a structure it verifies no signature in.
_UNREACHED = "Unexpected message structure"


def _checked(run: Any, unchecked: Any, certificates: Sequence[PGPKey],
             issuers: Sequence[str] = (), refused: list[str] | None = None
             ) -> tuple[bytes | None, list[SignatureCheck]]:
    """
    C{run(store)} (a decryption or verification that asks C{store} for the
    signers' certificates and fails when no signature verifies) done, and a
    check per signature it asked for.  When none verifies, C{unchecked()}
    gives the content without checking signatures (C{None}: no content),
    and why C{run} failed is added to C{refused}.
    """
    asked: list[str] = list(issuers)
    given: dict[str, Any] = {}

    def store(ids: Sequence[str]) -> list[Any]:
        certs = []
        for issuer in ids:
            issuer = issuer.lower()
            if issuer not in asked:
                asked.append(issuer)
            for key in certificates:
                if _matches(key, issuer) and key.fingerprint not in given:
                    given[key.fingerprint] = pysequoia.Cert.from_bytes(key.public)
                    certs.append(given[key.fingerprint])
        return certs

    valid: set[str] = set()
    try:
        result = run(store)
        data = result.bytes
        valid = {str(sig.signing_key).lower() for sig in result.valid_sigs} | {
            str(sig.certificate).lower() for sig in result.valid_sigs}
    except Exception as e:
        if refused is not None:
            refused.append(str(e))
        # Also for some structures the library verifies no further
        # ("Unexpected message structure") but reads without checking.
        if unchecked is None:
            if not any(text in str(e) for text in _NOT_VERIFIED):
                raise PGPError(_why(e) + ".") from None
            data = None
        else:
            try:
                data = unchecked().bytes
            except Exception:
                raise PGPError(_why(e) + ".") from None
    checks = []
    for issuer in dict.fromkeys(asked):
        key = next((k for k in certificates if _matches(k, issuer)), None)
        ok = any(v == issuer or v.endswith(issuer) for v in valid)
        if ok:
            # The certificate Sequoia verified with, of those with the key ID.
            key = next((k for k in certificates if k.fingerprint in valid
                        and _matches(k, issuer)), key)
            checks.append(SignatureCheck(issuer, True, key.fingerprint if key else None))
        elif key is None:
            checks.append(SignatureCheck(issuer, False, None, f"the signer's key "
                                         f"{issuer.upper()} is not in the keyring"))
        else:
            checks.append(SignatureCheck(issuer, False, key.fingerprint,
                                         "the signature does not verify"))
    return data, checks


def _canonical_cleartext(text: bytes) -> bytes:
    """
    A cleartext-signed message as the library reads it: LF line ends, the
    trailing blanks of each line gone (RFC 9580 §7.2 ignores them).
    """
    lines = text.replace(b"\r\n", b"\n").split(b"\n")
    return b"\n".join(line.rstrip(b" \t\r") for line in lines)


def _cleartext_body(text: bytes) -> bytes:
    """
    The signed text of a cleartext-signed message, dash-escaping undone.
    """
    lines = text.split(b"\n")
    start = next((n for n, line in enumerate(lines) if not line.strip()), len(lines)) + 1
    end = next((n for n, line in enumerate(lines)
                if line.startswith(b"-----BEGIN PGP SIGNATURE-----")), len(lines))
    return b"\n".join(line[2:] if line.startswith(b"- ") else line
                      for line in lines[start:end])


def _needs_passphrase(tsk: Any) -> bool:
    """
    Whether none of C{tsk}'s secret keys opens without a passphrase (a
    primary kept offline, a gnu-dummy stub, does not count).
    """
    locked = False
    for use in (tsk.decryptor, tsk.signer):
        try:
            use(None)
            return False
        except Exception as e:
            locked = locked or "encrypted" in _why(e)
    return locked


def _for_encryption(key: PGPKey, now: float) -> Any:
    """
    C{key}'s certificate with only the subkeys that may be encrypted to at
    C{now} (and the primary key, user IDs and signatures).

    @raise PGPError: there is none.
    """
    problem = key.encryption_problem(now)
    if problem is not None:
        raise PGPError(f"{key.fingerprint.upper()}: {problem}.")
    live = {k.fingerprint for k in key.usable_keys(ENCRYPT, now)}
    dropped = {k.fingerprint for k in key.keys[1:] if k.fingerprint not in live}
    if not dropped:
        return pysequoia.Cert.from_bytes(key.public)
    kept: list[Any] = []
    skipping = False
    for packet in PacketPile.from_bytes(key.public):
        if packet.tag in _SUBKEY_TAGS:
            skipping = (packet.fingerprint or "").lower() in dropped
        elif packet.tag in (Tag.UserID, Tag.UserAttribute):
            skipping = False
        if not skipping:
            kept.append(packet)
    return pysequoia.Cert.from_packets(kept)


def _without_noise(data: bytes) -> bytes:
    """
    C{data} without what real key files carry that the library refuses: a
    UTF-8 byte order mark, blanks at the end (a binary key with a stray
    space after it), CR line ends in armor.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if ARMOR_BEGIN.search(data[:4096]) is not None:
        return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").strip() + b"\n"
    return data.rstrip(b" \t\r\n")
