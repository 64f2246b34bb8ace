"""
S/MIME with the certificate store behind it: what the MPA calls.

L{SmimeEngine.protect} signs (with the sender's key) and encrypts (to the
recipients' valid certificates) a message; L{SmimeEngine.open} decrypts
with whichever stored key the message is for and verifies every signature,
giving each signer's trust verdict.  The cryptography runs in the crypto
thread pool; the decisions read the store as it is now.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from email.utils import getaddresses

from cryptography import x509

from cipherd.pki import pgpopen, smime
from cipherd.pki.certs import describe_name, email_addresses
from cipherd.pki.certstore import ICertificateStore
from cipherd.pki.cms import PrivateKey, SignatureCheck
from cipherd.pki.errors import PKIError
from cipherd.pki.pgpopen import (
    PGP_ENCRYPTED,
    PGP_INLINE,
    PGP_SIGNED,
    Context,
    InlineResult,
    PGPDecrypted,
    PGPOpener,
    PGPSignerReport,
)
from cipherd.pki.trust import Purpose, Verdict
from cipherd.threads import IBlockingRunner


@dataclass(frozen=True)
class SignerReport:
    """
    One signature: whether it is right, and whether its signer is trusted.
    """

    check: SignatureCheck
    verdict: Verdict | None

    @property
    def valid(self) -> bool:
        return self.check.valid and self.verdict is not None and self.verdict.valid

    @property
    def verified(self) -> bool:
        return self.check.valid

    @property
    def signer(self) -> str:
        """
        The signer as the guide's log lines name it (C{EMAILADDRESS=...}).
        """
        if self.check.certificate is None:
            return self.check.signer_id
        return describe_name(self.check.certificate.subject)

    @property
    def emails(self) -> list[str]:
        return email_addresses(self.check.certificate) if self.check.certificate else []

    @property
    def reason(self) -> str:
        if not self.check.valid:
            return self.check.reason
        return self.verdict.reason if self.verdict else ""


@dataclass
class OpenedMessage:
    """
    The result of L{SmimeEngine.open}.

    @ivar message: the message with the S/MIME layers removed (as received
        when it was neither signed nor encrypted).
    @ivar decrypted: the decryption, if the message was encrypted.
    @ivar signers: one report per signature, if it was signed.
    """

    message: bytes
    decrypted: smime.DecryptedMessage | None = None
    signers: list[SignerReport] = field(default_factory=list)
    signed: bool = False

    @property
    def signature_valid(self) -> bool:
        return self.signed and bool(self.signers) and all(s.valid for s in self.signers)

    def signer_ids(self) -> str:
        return "; ".join(s.signer for s in self.signers)


SMIME_ENCRYPTED = ("enveloped-data", "authEnveloped-data")
ENCRYPTED = (*SMIME_ENCRYPTED, PGP_ENCRYPTED)
SIGNED = ("signed", "signed-data", PGP_SIGNED)
PGP_KINDS = (PGP_ENCRYPTED, PGP_SIGNED, PGP_INLINE)
MAX_LAYERS = 8

# Whether a signer whose revocation status is unknown is refused: always,
# never, or by the signer certificate's e-mail addresses.
FailClosed = bool | Callable[[list[str]], Awaitable[bool]]


@dataclass(frozen=True)
class Layer:
    """
    One layer of a received message, as L{LayerOpener.open_layers} opened it.

    @ivar kind: S/MIME's C{"enveloped-data"}, C{"authEnveloped-data"},
        C{"signed"} (C{multipart/signed}) or C{"signed-data"} (an opaque
        signature); PGP's L{PGP_ENCRYPTED}, L{PGP_SIGNED} (PGP/MIME) or
        L{PGP_INLINE} (blocks and attachments inside the innermost entity).
    @ivar decrypted: the decryption, for an S/MIME encryption layer.
    @ivar pgp: the decryption, for a PGP/MIME encryption layer.
    @ivar inline: what the inline step found, for L{PGP_INLINE}.
    @ivar signers: one report per signature.
    @ivar error: why this layer could not be opened; C{""} when it was.
    @ivar note: something the reader should know (a repair).
    """

    kind: str
    decrypted: smime.DecryptedMessage | None = None
    signers: tuple[SignerReport | PGPSignerReport, ...] = ()
    error: str = ""
    pgp: PGPDecrypted | None = None
    inline: InlineResult | None = None
    note: str = ""

    @property
    def encrypted(self) -> bool:
        return self.kind in ENCRYPTED

    @property
    def decrypting(self) -> bool:
        """
        Whether this layer decrypted something.
        """
        return self.decrypted is not None or self.pgp is not None or bool(
            self.inline is not None and self.inline.decrypted)

    @property
    def family(self) -> str:
        return "PGP" if self.kind in PGP_KINDS else "S/MIME"

    @property
    def signature_valid(self) -> bool:
        return bool(self.signers) and all(s.valid for s in self.signers)


# Fields naming who wrote the message: believed from inside only under
# the signature of that address's certificate.
ADDRESS_FIELDS = frozenset({b"from", b"sender", b"reply-to"})


@dataclass(frozen=True)
class HeaderProtection:
    """
    What L{OpenedLayers.header_protection} found.

    @ivar hp: the payload's C{hp}: C{"cipher"} or C{"clear"}.
    @ivar names: the header fields (lower case) shown from inside.
    @ivar note: why some were not, if so.
    """

    hp: str
    names: frozenset[bytes]
    note: str = ""


@dataclass(frozen=True)
class OpenedLayers:
    """
    The result of L{LayerOpener.open_layers}.

    @ivar layers: outermost first.
    @ivar received: the message as it came.
    @ivar outer: the received message's own header fields (From, To, ...):
        those of each layer's entity are not carried to the outside.
    @ivar payload: the innermost entity reached (C{None} with no layers).
    @ivar decrypted: the entity inside the innermost decryption (C{None}
        when nothing was decrypted).
    """

    layers: tuple[Layer, ...]
    received: bytes
    outer: tuple[bytes, ...] = ()
    payload: bytes | None = None
    decrypted: bytes | None = None

    @property
    def complete(self) -> bool:
        return not any(layer.error for layer in self.layers)

    @property
    def opened(self) -> bytes:
        """
        The message with every layer opened (as far as they could be).
        """
        if self.payload is None:
            return self.received
        return smime.MessagePieces(list(self.outer), [self.payload]).join()

    @property
    def kept(self) -> bytes:
        """
        The message with the layers down to the innermost decryption
        opened, the signatures inside it kept (as received when nothing was
        decrypted).
        """
        if self.decrypted is None:
            return self.received
        return smime.MessagePieces(list(self.outer), [self.decrypted]).join()

    @property
    def _last_decryption(self) -> int:
        return max((n for n, layer in enumerate(self.layers) if layer.decrypting),
                   default=-1)

    def removes(self, remove_signatures: bool) -> bool:
        """
        Whether L{delivered} has every layer opened: when signatures are to
        be removed, every layer could be opened, and each signature inside
        the innermost encryption is valid and trusted (one that is not stays
        for the reader's client to show; an inline cleartext signature stays
        in any case, being part of the text).
        """
        inside = [layer for layer in self.layers[self._last_decryption + 1:]
                  if layer.kind != PGP_INLINE]  # a cleartext signature stays anyway
        return remove_signatures and self.complete and all(
            layer.kind in SIGNED and layer.signature_valid for layer in inside)

    def delivered(self, remove_signatures: bool) -> bytes:
        """
        What to deliver: every layer opened (see L{removes}); else the
        signatures inside the innermost encryption kept (a signature around
        encryption cannot be kept).
        """
        return self.opened if self.removes(remove_signatures) else self.kept

    def header_protection(self) -> HeaderProtection | None:
        """
        RFC 9788 for the payload, when every layer was opened and its
        Content-Type says C{hp}: which of the header fields it carries may
        take the place of the outer ones.  Only what a valid, trusted
        signature covers directly is believed in full, and its From (Sender,
        Reply-To) only when the signer's certificate is for that address;
        inside encryption alone (C{hp="cipher"}), anyone could have written
        the fields, so the addresses stay the outer ones, which the mail
        servers on the way could check.
        """
        if self.payload is None or not self.complete:
            return None
        hp = smime.header_protection(self.payload)
        if hp is None:
            return None
        carried = {smime.Parts._name(field): field
                   for field in smime.protected_fields(self.payload)}
        layers = [layer for layer in self.layers if layer.kind != PGP_INLINE]
        if not layers:
            return None
        last = layers[-1]
        allowed = set(smime.PROTECTED_FIELDS)
        note = ""
        if hp == "v1":
            # Protected headers as Thunderbird and Enigmail write them
            # (C{protected-headers="v1"}, no C{hp}): inside encryption, as
            # "cipher" says.
            hp = "cipher" if any(layer.decrypting for layer in layers) else "clear"
        if last.kind in SIGNED and last.signature_valid:
            signers = {address for report in last.signers for address in report.emails}
            from_field = carried.get(b"from", b"").partition(b":")[2].decode("ascii", "replace")
            written = {address.lower() for _, address in getaddresses([from_field]) if address}
            if b"from" in carried and not written <= signers:
                allowed -= ADDRESS_FIELDS
                note = "the From inside is not the signer's address: the outer one is kept"
        elif hp == "cipher" and any(layer.decrypting for layer in layers):
            # What was encrypted (signed or not, by anyone): the fields that
            # do not say who wrote it.
            allowed -= ADDRESS_FIELDS
        else:
            allowed = set()
            note = "not covered by a valid signature: the outer header fields are kept"
        return HeaderProtection(hp, frozenset(name for name in carried if name in allowed),
                                note)

    def protected_message(self, protection: HeaderProtection) -> bytes:
        """
        L{opened}, the payload's header fields of C{protection} in place of
        the outer ones and its other copies (C{HP-Outer}, ...) dropped.
        """
        assert self.payload is not None
        return smime.with_protected_fields(self.outer, self.payload, protection.names)

    def removed(self, remove_signatures: bool) -> int:
        """
        How many of the layers, from the outside, L{delivered} no longer has.
        """
        if self.removes(remove_signatures):
            return len(self.layers)
        return self._last_decryption + 1


class SmimeEngine:
    def __init__(self, certificates: ICertificateStore, crypto: IBlockingRunner) -> None:
        self._certificates = certificates
        self._crypto = crypto

    async def protect(
        self,
        message: bytes | smime.MessagePieces,
        *,
        signer: tuple[x509.Certificate, PrivateKey, Sequence[x509.Certificate]] | None,
        recipients: Sequence[x509.Certificate],
        cipher: str = "aes256_cbc",
        oaep: bool = False,
        detached: bool = True,
        pss: bool = False,
        protect_headers: bool = False,
        obscure_subject: bool = False,
    ) -> bytes:
        """
        Sign (when C{signer} is given) then encrypt (when C{recipients} is
        not empty), in one step on the crypto threads.

        @param message: the message, or its pieces (a large original inside
            a tunnel is never copied to be protected).
        @param detached: sign as C{multipart/signed} (readable without
            S/MIME), or, when C{False}, opaquely: the content inside the CMS
            structure, untouched by transfer encodings.
        @param pss: sign with RSASSA-PSS (RFC 4056) rather than PKCS#1 v1.5,
            when the signer's key is RSA.
        @param protect_headers: carry the user-facing header fields inside
            (RFC 9788, L{smime.protect_headers}); with C{obscure_subject},
            the Subject outside an encrypted message is C{[...]}.
        """
        if signer is None and not recipients:
            return message if isinstance(message, bytes) else message.join()
        if protect_headers:
            message = smime.protect_headers(message, encrypted=bool(recipients),
                                            obscure_subject=obscure_subject)
        return await self._crypto.run(self._protect, message, signer, list(recipients),
                                      cipher, oaep, detached, pss)

    def _protect(self, message: bytes | smime.MessagePieces,
                 signer: tuple[x509.Certificate, PrivateKey, Sequence[x509.Certificate]] | None,
                 recipients: list[x509.Certificate], cipher: str, oaep: bool,
                 detached: bool, pss: bool) -> bytes:
        if signer is None:
            return smime.encrypt_message(message, recipients, cipher=cipher, oaep=oaep)
        cert, key, chain = signer
        now = self._certificates.now()
        if not recipients:
            return smime.sign_message(message, cert, key, signing_time=now, chain=list(chain),
                                      detached=detached, pss=pss)
        return smime.sign_and_encrypt_message(message, cert, key, recipients, signing_time=now,
                                              chain=list(chain), detached=detached,
                                              cipher=cipher, oaep=oaep, pss=pss)

    async def open(self, message: bytes, *, decrypt_for: Collection[str] | None = None,
                   fail_closed: FailClosed = False) -> OpenedMessage:
        """
        Decrypt (if encrypted) and verify (if signed, also inside the
        encryption): the two layers of a tunnel message.  Incoming mail,
        which may have any layers, is opened with L{LayerOpener}.

        @param decrypt_for: decrypt only with the keys of these addresses'
            certificates (the recipients'), not with any stored key.
        @param fail_closed: a signer whose revocation status (or a CA's on
            its path) is unknown is not trusted: always, or as a function
            of the signer certificate's addresses says (the settings of
            the domains it speaks for, not of an address the sender chose).

        @raise PKIError: the message is encrypted and cannot be decrypted
            (L{DecryptionKeyNotFound}, L{DecryptionFailed}, ...), or its
            S/MIME structure is broken.
        """
        result = OpenedMessage(message)
        kind = smime.classify(message).kind
        if kind in ENCRYPTED:
            keys = await self._keys(decrypt_for)
            result.decrypted = await self._crypto.run(smime.decrypt_message, message, keys)
            result.message = result.decrypted.message
            kind = smime.classify(result.message).kind
        if kind in SIGNED:
            result.signed = True
            verified, signers = await self._verify(result.message, fail_closed)
            result.message = verified.message
            result.signers += signers
        return result

    async def _keys(self, decrypt_for: Collection[str] | None
                    ) -> list[tuple[x509.Certificate, PrivateKey]]:
        keys = await self._certificates.decryption_keys()
        if decrypt_for is None:
            return keys
        wanted = {address.lower() for address in decrypt_for}
        return [(cert, key) for cert, key in keys if wanted.intersection(email_addresses(cert))]

    async def _verify(self, signed: bytes, fail_closed: FailClosed
                      ) -> tuple[smime.VerifiedMessage, list[SignerReport]]:
        """
        The content of a signed message and a report per signature, each
        signer's certificate checked for signing now.
        """
        verified = await self._crypto.run(smime.verify_message, signed)
        missing = [c for c in verified.result.signers if c.certificate is None]
        if missing:
            # Signers whose certificate is not in the message may be in
            # the store: look them up and check again.
            known = await self._stored_signers(missing)
            if known:
                verified = await self._crypto.run(
                    lambda: smime.verify_message(signed, known_certificates=known))
        reports = []
        for check in verified.result.signers:
            verdict = None
            if check.certificate is not None:
                strict = (fail_closed if isinstance(fail_closed, bool)
                          else await fail_closed(email_addresses(check.certificate)))
                verdict = await self._certificates.check(
                    check.certificate, Purpose.SIGNING, verified.result.certificates,
                    fail_closed=strict)
            reports.append(SignerReport(check, verdict))
        return verified, reports

    async def _stored_signers(self, checks: list[SignatureCheck]) -> list[x509.Certificate]:
        found: list[x509.Certificate] = []
        for check in checks:
            if check.sid_issuer_serial is not None:
                found += await self._certificates.find_by_issuer_serial(*check.sid_issuer_serial)
            if check.sid_key_id is not None:
                found += await self._certificates.find_by_subject_key_id(check.sid_key_id)
        return found


# What a message anyone wrote may make our readers raise: a structure, or
# a certificate in it, that cannot be read (ValueError, LookupError for an
# unknown charset), or parts nested deeper than the parser goes.
_UNREADABLE = (PKIError, ValueError, LookupError, RecursionError)


class LayerOpener:
    """
    Every S/MIME and PGP layer of a received message opened, for its
    internal recipients.
    """

    def __init__(self, smime_engine: SmimeEngine, pgp: PGPOpener) -> None:
        self._smime = smime_engine
        self._pgp = pgp

    async def open_layers(self, message: bytes, *, decrypt_for: Collection[str] | None = None,
                          fail_closed: FailClosed = False) -> OpenedLayers:
        """
        Open every layer of a received message from the outside in: each
        encryption (S/MIME or PGP/MIME) decrypted (with the keys of
        C{decrypt_for}'s certificates and PGP keys only, when given; PGP
        needs them given), each signature verified over the bytes it signed
        before the layer inside it is opened, until plain MIME, a layer that
        cannot be opened (its error recorded), or L{MAX_LAYERS}.  A
        signature that does not verify is reported, and what it signed
        opened all the same.  Last, inline PGP in what was reached (see
        L{cipherd.pki.pgpopen}).

        @param fail_closed: as for L{SmimeEngine.open}.
        """
        layers: list[Layer] = []
        current = message
        payload = decrypted_entity = None
        keys: list[tuple[x509.Certificate, PrivateKey]] | None = None
        recipients = list(decrypt_for or ())
        context = Context.of(message)
        while True:
            try:
                kind = smime.classify(current).kind or pgpopen.kind(current)
            except _UNREADABLE:
                break  # its header cannot be read as S/MIME or PGP: the content, as it is
            if kind is None:
                break
            if len(layers) == MAX_LAYERS:
                layers.append(Layer(kind, error=f"more than {MAX_LAYERS} S/MIME or PGP "
                                    "layers: the rest is not opened"))
                break
            try:
                if kind == PGP_ENCRYPTED:
                    entity, how, signers, note = await self._pgp.decrypt(current, recipients,
                                                                         context)
                    layers.append(Layer(kind, signers=signers, pgp=how, note=note))
                    current, payload = pgpopen.rejoin(current, entity), entity
                    decrypted_entity = payload
                elif kind == PGP_SIGNED:
                    entity, signers = await self._pgp.verify(current, context)
                    layers.append(Layer(kind, signers=signers))
                    current, payload = pgpopen.rejoin(current, entity), entity
                elif kind in SMIME_ENCRYPTED:
                    if keys is None:
                        keys = await self._smime._keys(decrypt_for)
                    decrypted = await self._smime._crypto.run(smime.decrypt_message, current,
                                                              keys)
                    layers.append(Layer(str(kind), decrypted=decrypted))
                    current, payload = decrypted.message, decrypted.entity
                    decrypted_entity = payload
                else:
                    verified, reports = await self._smime._verify(current, fail_closed)
                    layers.append(Layer(str(kind), signers=tuple(reports)))
                    current, payload = verified.message, verified.entity
            except _UNREADABLE as e:
                layers.append(Layer(str(kind), error=str(e) or type(e).__name__))
                break
        if not layers or not layers[-1].error:
            try:
                inline, signers = await self._pgp.inline(current, recipients, context)
            except _UNREADABLE as e:
                layers.append(Layer(PGP_INLINE, error="the message cannot be read for inline "
                                    f"PGP: {str(e) or type(e).__name__}"))
                inline = InlineResult(current)
            if inline.found:
                layers.append(Layer(PGP_INLINE, signers=signers, inline=inline,
                                    error="; ".join(inline.errors)))
                if inline.decrypted:
                    payload = decrypted_entity = smime.Parts.split(inline.message).entity()
        if not layers:
            return OpenedLayers((), message)
        outer = tuple(smime.Parts.split(message).outer_fields())
        return OpenedLayers(tuple(layers), message, outer, payload, decrypted_entity)


__all__ = ["HeaderProtection", "Layer", "LayerOpener", "OpenedLayers", "OpenedMessage",
           "SignerReport", "SmimeEngine"]
