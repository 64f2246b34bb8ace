"""
The gateway: the mail processing the queue runner calls for every message
(L{cipherd.smtp.queue.IMessageProcessor}), joining the policy, the PKI and
the MTA.

For each recipient the policy (L{cipherd.mpa.policy}) decides; the message
is then split per path:

    - internal recipients get incoming S/MIME and PGP opened: decrypted
      with their keys, signatures verified, and the outcome in
      C{X-Cipherd-Info-*} header fields (any such fields that came with the
      message are removed first: they are ours alone);
    - S/MIME recipients get one message encrypted to all their certificates
      (and signed with the sender's key when the policy says so);
    - PGP recipients get one message encrypted to all their keys, PGP/MIME
      or inline as their *PGP encoding* says (and signed with the sender's
      PGP key when the policy says so);
    - PDF recipients get each a mail of their own with the message as an
      AES-256 encrypted PDF (L{cipherd.webmail.pdf}), its password the
      static one set for them or a random one, delivered first: to the
      sender in a notice, to the recipient's webmail mailbox in a tunnel
      of its own, or by SMS (L{cipherd.webmail.sms}); a recipient whose
      password cannot be delivered gets no PDF but the next method;
    - webmail recipients are handed to the webmail messenger in one tunnel
      message (L{cipherd.mpa.tunnel}), signed with the *webmail sender*'s
      key and encrypted to the *webmail recipient*'s certificates, queued as
      a message of its own: the MTA routes it (the transport for
      C{webmail.local}) and bounces it to the webmail sender if it cannot;
    - recipients whose mail must be encrypted but cannot be get a notice
      from us to the sender, in the guide's words, and nothing else;
    - the rest get the message as it is.

The MPA log says what was done and why, with the guide's lines where the
guide has them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from cipherd.core.addresses import canonical_address
from cipherd.core.envelope import Envelope, Outcome
from cipherd.core.headers import (
    field_name,
    header_fields,
    replace_subject,
    with_fields,
    without_fields,
)
from cipherd.logs import mail_logger
from cipherd.mpa import policy
from cipherd.mpa.discovery import KeyDiscovery, autocrypt_header
from cipherd.mpa.dlp_policy import RELEASED, WARNING, DataLossPrevention, Verdict
from cipherd.mpa.options import SenderOptions, sender_options
from cipherd.mpa.sealing import TunnelSealer
from cipherd.mpa.tunnel import SUBJECT as TUNNEL_SUBJECT
from cipherd.pki.ca import ICertificateAuthority
from cipherd.pki.certs import describe_name
from cipherd.pki.certstore import ICertificateStore
from cipherd.pki.cms import DecryptedContent
from cipherd.pki.engine import (
    PGP_ENCRYPTED,
    PGP_INLINE,
    PGP_SIGNED,
    SIGNED,
    Layer,
    LayerOpener,
    OpenedLayers,
    SignerReport,
    SmimeEngine,
)
from cipherd.pki.keyring import IKeyring
from cipherd.pki.pgp import PGPError, PGPKey
from cipherd.pki.pgpmime import INLINE, PGPEngine
from cipherd.pki.pgpopen import PGPSignerReport
from cipherd.settings import REGISTRY, IAddressSettings, InvalidValue, listed
from cipherd.smtp.bounce import Failed, build_bounce
from cipherd.smtp.config import MTAConfig
from cipherd.smtp.processing import IMessageProcessor, Made, ProcessingResult, Results
from cipherd.webmail.notify import Notices
from cipherd.webmail.notify import build as build_notice
from cipherd.webmail.pdf import PDF_FILENAME, PDFMaker, PDFOptions, PDFRenderError, random_password
from cipherd.webmail.pdfreply import make_token, may_reply_to, new_link, reply_url
from cipherd.webmail.sms import ISMSGateway, SMSError, SMSGatewayConfig

log = mail_logger("cipherd.mpa.gateway")

INFO_PREFIX = "X-Cipherd-Info-"

@dataclass(frozen=True)
class _NotDelivered:
    """
    Why a PDF's password could not be delivered (so the PDF is not sent).
    """

    why: str


@implementer(IMessageProcessor)
class Gateway:
    """
    The processing of every message not for the webmail relay recipient
    (see L{cipherd.mpa.composite}): it makes the messages to queue and
    queues nothing itself.
    """

    def __init__(self, settings: IAddressSettings, certificates: ICertificateStore,
                 engine: SmimeEngine, keyring: IKeyring, pgp: PGPEngine, pdf: PDFMaker,
                 sms: ISMSGateway, opener: LayerOpener, discovery: KeyDiscovery,
                 mta: Callable[[], MTAConfig], clock: IReactorTime, *,
                 authority: ICertificateAuthority | None = None,
                 dlp: DataLossPrevention | None = None) -> None:
        """
        @param authority: the built-in CA, which issues a certificate for an
            internal sender who should sign and has none (*auto request
            certificate*); C{None}: none is issued.
        @param dlp: data loss prevention (C{None}: none).
        """
        self._settings = settings
        self._dlp = dlp
        self._authority = authority
        self._certificates = certificates
        self._engine = engine
        self._tunnels = TunnelSealer(certificates, engine, clock)
        self._keyring = keyring
        self._pgp = pgp
        self._pdf = pdf
        self._sms = sms
        self._notices = Notices(clock)
        self._opener = opener
        self._discovery = discovery
        self._mta = mta
        self._clock = clock

    def process(self, envelope: Envelope, content: bytes) -> Deferred[ProcessingResult]:
        return Deferred.fromCoroutine(self._process(envelope, content))

    # Deciding --------------------------------------------------------------

    async def _process(self, envelope: Envelope, content: bytes) -> ProcessingResult:
        config = self._mta()
        receive = config.receive_policy()
        known = await self._settings.by_address(["", envelope.sender, *envelope.recipients])
        fields = header_fields(content)
        sender_settings = known[envelope.sender]
        # Every look-up by one spelling of each address (see canonical_address).
        canonical = {r: canonical_address(r) for r in envelope.recipients}
        results = Results()
        relay_recipient = canonical_address(known[""]["relay_recipient"]).lower()
        if _looks_like_a_tunnel(fields) and any(
                receive.relay_domain(canonical[r]) for r in envelope.recipients):
            # Guide, Troubleshooting ("The tunnel message gets stuck in the
            # MTA queue of the webmail appliance"): the relay recipient is
            # not set, or not the gateway's webmail recipient.  A tunnel is
            # never opened or passed on as ordinary mail: it waits here for
            # the administrator (and bounces to the webmail sender at the
            # end of the queue lifetime).  Only for our own domains (the
            # guide's webmail.local): mail passing through to others is not
            # held for its subject.
            log.info("Email is not a relay email; Queue id: {queue_id}; Relay recipient: "
                     "{relay}; Recipients: [{rcpts}]", queue_id=envelope.queue_id,
                     relay=relay_recipient or "(not set)", rcpts=", ".join(envelope.recipients))
            results.settle(envelope.recipients, Outcome(
                "deferred", "4.3.0", "Email is not a relay email: the relay recipient is not "
                f"set or is not {', '.join(envelope.recipients)} (Settings → General)"), "none")
            return results.result()
        if sender_settings["pgp_autocrypt"] and any(name == "autocrypt" for name, _ in fields):
            await self._autocrypt(envelope, fields, receive)
        subject = next((value for name, value in fields if name == "subject"), "")
        options = sender_options(content, fields, subject, sender_settings,
                                 self._clock.seconds())
        if options.content is not content:
            content = options.content
            fields = header_fields(content)
            subject = next((value for name, value in fields if name == "subject"), "")
        for note in options.notes:
            log.info("{queue_id}: {note}; Sender: {sender}", queue_id=envelope.queue_id,
                     note=note, sender=envelope.sender)
        trigger = policy.find_trigger(sender_settings, subject, fields)
        stopped: set[str] = set()
        dlp_rules: dict[str, str] = {}
        if self._dlp is not None and (sender_settings["dlp_enabled"] or any(
                name == RELEASED.lower() for name, _ in fields)):
            content, stopped, dlp_rules = await self._data_loss(
                envelope, content, fields, subject, canonical, known, sender_settings,
                receive, config, results)
        signer: Any = None
        signer_looked_up = False
        certificates: dict[str, list[x509.Certificate]] = {}
        pgp_keys: dict[str, tuple[PGPKey, ...]] = {}
        pgp_signer: Any = None
        pgp_signer_looked_up = False
        decisions: list[policy.Decision] = []
        facts_of: dict[str, policy.Facts] = {}
        for recipient in envelope.recipients:
            if recipient in stopped:
                continue
            facts = policy.Facts(recipient, sender_settings, known[recipient],
                                 receive.relay_domain(canonical[recipient]), trigger,
                                 sender=envelope.sender, dlp=dlp_rules.get(recipient, ""))
            if policy.needs_certificates(facts):
                found = await self._certificates.encryption_certificates(
                    canonical[recipient], fail_closed=_fails_closed(known[recipient]))
                certificates[recipient] = found
                if found and not signer_looked_up and sender_settings["smime_sign"]:
                    signer = await self._signing_identity(envelope, sender_settings, receive)
                    signer_looked_up = True
                facts = replace(facts, certificates=tuple(found), can_sign=signer is not None)
            if policy.needs_pgp_keys(facts):
                keys = await self._keyring.encryption_keys(canonical[recipient])
                if not keys.keys and not keys.refused and policy.may_look_up_pgp_key(facts) \
                        and await self._discovery.look_up(
                            canonical[recipient],
                            trusted=bool(known[recipient]["pgp_discovered_trust"])):
                    keys = await self._keyring.encryption_keys(canonical[recipient])
                pgp_keys[recipient] = keys.keys
                if keys.keys and not pgp_signer_looked_up and sender_settings["pgp_sign"]:
                    pgp_signer = envelope.sender and await self._keyring.signer(
                        canonical_address(envelope.sender))
                    pgp_signer_looked_up = True
                facts = replace(facts, pgp_keys=keys.keys, can_pgp_sign=bool(pgp_signer),
                                pgp_refused=keys.reason() if keys.refused and not keys.keys
                                else "")
            facts_of[recipient] = facts
            decisions.append(self._decided(envelope, facts))
        by_method: dict[str, list[policy.Decision]] = {}
        for decision in decisions:
            by_method.setdefault(decision.method, []).append(decision)
        protected = content
        if trigger is not None and trigger.remove is not None:
            protected = replace_subject(content, policy.remove_pattern(subject, trigger.remove))
        # Header external: on what leaves for external recipients, not on
        # bounces to the sender nor on mail for internal ones.
        header = sender_settings["header_external"]
        bounced: list[tuple[str, str]] = []
        if internal := by_method.get(policy.INTERNAL):
            recipients = tuple(d.recipient for d in internal)
            for group, delivered in await self._incoming(envelope, content, recipients,
                                                         canonical, known):
                results.deliver(envelope.sender, group, delivered, "incoming", "incoming")
        if chosen := by_method.get(policy.PDF):
            # First: a recipient whose PDF password cannot be delivered
            # goes on to the next method (webmail, plain or a bounce).
            pdf_bounced, fallen = await self._pdf_path(
                envelope, _with_header(protected, header), chosen, known, sender_settings,
                config, options, results)
            bounced += pdf_bounced
            for recipient, why in fallen:
                # What PGP and PDF say was logged already; the rest of the
                # chain (the guide's "Webmail is disabled") was not.
                decision = self._decided(envelope, facts_of[recipient], policy.without_pdf(why),
                                         skip=("PGP not used", "PDF not used"))
                by_method.setdefault(decision.method, []).append(decision)
        if plain := by_method.get(policy.PLAIN):
            for d in plain:
                if d.reason:
                    log.info("{queue_id}: sent without encryption (allowed, not mandatory): "
                             "{reason}; Recipient: {rcpt}", queue_id=envelope.queue_id,
                             reason=d.reason, rcpt=d.recipient)
            results.deliver(envelope.sender, [d.recipient for d in plain],
                            _with_header(content, header), "not encrypted", "plain")
        if chosen := by_method.get(policy.SMIME):
            await self._smime(envelope, _with_header(protected, header), chosen, certificates,
                              signer, sender_settings, results)
        if chosen := by_method.get(policy.PGP):
            bounced += await self._pgp_path(envelope, _with_header(protected, header), chosen,
                                            pgp_keys, pgp_signer, known, sender_settings,
                                            results)
        if webmail := by_method.get(policy.WEBMAIL):
            # The tunnel carries the message as the client sent it (from
            # below the Received field our server added), not copied; with
            # header external on top of it.
            start = _sent_from(protected, envelope.queue_id)
            if header:
                protected, start = _with_header(protected[start:], header), 0
            bounced += await self._tunnel(envelope, protected, start, webmail,
                                          sender_settings, config, options, results)
        for d in by_method.get(policy.BOUNCE, []):
            log.warn("{queue_id}: the message could not be encrypted: {reason}; Recipient: "
                     "{rcpt}", queue_id=envelope.queue_id, reason=d.reason, rcpt=d.recipient)
            bounced.append((d.recipient, d.reason))
        if bounced:
            self._not_encrypted(envelope, content, subject, bounced, config, results)
        return results.result()

    # Data loss prevention ------------------------------------------------------

    async def _data_loss(self, envelope: Envelope, content: bytes,
                         fields: list[tuple[str, str]], subject: str,
                         canonical: Mapping[str, str], known: Mapping[str, Any],
                         sender_settings: Mapping[str, Any], receive: Any, config: MTAConfig,
                         results: Results) -> tuple[bytes, set[str], dict[str, str]]:
        """
        The DLP verdict on the message for the sender's external recipients
        not on the skip list, and what it does: a warning header, encryption
        made mandatory, the message quarantined or bounced for them.

        @return: the content to go on with (its release mark and any DLP
            header it came with removed, the warning added), the recipients
            DLP settled, and per recipient the rules that make encryption
            mandatory.
        """
        assert self._dlp is not None
        released, content = self._dlp.released(content, fields)
        if released:
            log.info("{queue_id}: released from the DLP quarantine: not searched again",
                     queue_id=envelope.queue_id)
            return content, set(), {}
        if not sender_settings["dlp_enabled"]:
            return content, set(), {}
        skip = listed(sender_settings["dlp_skip"])
        acted = [r for r in envelope.recipients
                 if not (receive.relay_domain(canonical[r])
                         or known[r]["locality"] == policy.INTERNAL)
                 and not _on_list(canonical[r], skip)]
        if not acted:
            return content, set(), {}
        content = without_fields(content, WARNING)
        verdict = await self._dlp.inspect(content, sender_settings)
        if verdict.action == "none":
            return content, set(), {}
        rules = ", ".join(verdict.rules())
        log.warn("{queue_id}: DLP rules {rules} matched; action {action}; Sender: {sender}; "
                 "Recipients: {rcpts}", queue_id=envelope.queue_id, rules=rules,
                 action=verdict.action, sender=envelope.sender, rcpts=", ".join(acted))
        if verdict.action in ("quarantine", "block"):
            await self._stop(envelope, content, subject, acted, verdict, sender_settings,
                             config, results)
            return content, set(acted), {}
        content = with_fields(content, [(WARNING, rules)])
        if verdict.action == "encrypt":
            forcing = ", ".join(verdict.rules("encrypt"))
            return content, set(), dict.fromkeys(acted, forcing)
        return content, set(), {}

    async def _stop(self, envelope: Envelope, content: bytes, subject: str,
                    acted: list[str], verdict: Verdict, sender_settings: Mapping[str, Any],
                    config: MTAConfig, results: Results) -> None:
        """
        Quarantine the message for C{acted} (the sender told), or bounce it
        to the sender naming the rules only; the DLP manager told of both.
        """
        assert self._dlp is not None
        action = verdict.action
        rules = ", ".join(verdict.rules(action))
        quarantine_id = ""
        if action == "quarantine":
            quarantine_id = await self._dlp.quarantine(envelope.sender, acted, subject,
                                                       content, verdict)
            results.settle(acted, Outcome(
                "sent", "2.7.0", f"quarantined by DLP ({rules}), quarantine id "
                f"{quarantine_id}", notified=True))
            log.info("{queue_id}: quarantined as {id}; Recipients: {rcpts}",
                     queue_id=envelope.queue_id, id=quarantine_id, rcpts=", ".join(acted))
            if envelope.sender:
                notice = self._notices.render("dlp_sender", dict(
                    recipients=", ".join(acted), subject=subject, rules=rules),
                    sender_settings)
                results.send(self._notices.message(envelope.sender, notice, sender_settings,
                                                   config.my_hostname))
        else:
            reason = f"the message was blocked by the DLP rule {rules}"
            outcome = Outcome("bounced", "5.7.1", reason, notified=True)
            results.settle(acted, outcome)
            if envelope.sender:
                bounce = build_bounce(
                    my_hostname=config.my_hostname, queue_id=envelope.queue_id,
                    sender=envelope.sender, received=envelope.received,
                    now=self._clock.seconds(), failed=[Failed(r, "5.7.1", reason) for r in acted],
                    original=content, subject="Message not sent: blocked by a DLP rule",
                    notice=["The message with Subject", "", subject or "(no subject)", "",
                            "has not been sent to the following recipients: it matched the "
                            f"data loss prevention rule {rules}.", "",
                            *[r for r in acted], ""],
                    headers_only=True)
                results.send(Made("", (envelope.sender,), bounce))
        manager = sender_settings["dlp_manager"]
        if manager:
            notice = self._notices.render("dlp_manager", dict(
                sender=envelope.sender or "<>", recipients=", ".join(acted), subject=subject,
                rules=rules, action=action, quarantine_id=quarantine_id), sender_settings)
            results.send(self._notices.message(manager, notice, sender_settings,
                                               config.my_hostname))

    async def _signing_identity(self, envelope: Envelope, sender_settings: Mapping[str, Any],
                                receive: Any) -> Any:
        """
        The sender's S/MIME signing identity; for an internal sender without
        one whose *auto request certificate* is on, one the CA issues now.
        """
        fail_closed = _fails_closed(sender_settings)
        signer = await self._certificates.signing_identity(envelope.sender,
                                                           fail_closed=fail_closed)
        if signer is not None or self._authority is None or not envelope.sender \
                or not sender_settings["auto_request_certificate"]:
            return signer
        sender = canonical_address(envelope.sender)
        if not (receive.relay_domain(sender) or sender_settings["locality"] == policy.INTERNAL):
            return None
        issued = await self._authority.auto_issue(sender)
        if issued is None:
            return None
        log.info("{queue_id}: a certificate was issued for the sender {sender} "
                 "(auto request certificate): {thumbprint}", queue_id=envelope.queue_id,
                 sender=sender, thumbprint=issued)
        return await self._certificates.signing_identity(envelope.sender,
                                                         fail_closed=fail_closed)

    def _decided(self, envelope: Envelope, facts: policy.Facts,
                 methods: Sequence[tuple[str, policy.Offer]] = policy.METHODS, *,
                 skip: tuple[str, ...] = ()) -> policy.Decision:
        """
        The policy's decision for one recipient, its notes logged (but
        those beginning with one of C{skip}).
        """
        decision = policy.decide(facts, methods)
        for level, text in decision.notes:
            if skip and text.startswith(skip):
                continue
            getattr(log, level)("{text}; Sender: {sender}; Queue id: {queue_id}",
                                text=text, sender=envelope.sender, queue_id=envelope.queue_id)
        return decision

    async def _autocrypt(self, envelope: Envelope, fields: list[tuple[str, str]],
                         receive: Any) -> None:
        """
        The Autocrypt header's key collected, when the message comes from
        outside: its address (the From address) is not ours, and is in the
        envelope sender's domain; trusted as the settings of that address
        say.
        """
        found = autocrypt_header(fields)
        if found is None or not envelope.sender:
            return
        address, keydata = found
        sender_domain = canonical_address(envelope.sender).rpartition("@")[2].lower()
        if address.rpartition("@")[2] != sender_domain or receive.relay_domain(address):
            return
        settings = (await self._settings.by_address([address]))[address]
        if settings["locality"] == policy.INTERNAL:
            return
        await self._discovery.collect_autocrypt(
            address, keydata, trusted=bool(settings["pgp_discovered_trust"]))

    # Paths -----------------------------------------------------------------

    async def _smime(self, envelope: Envelope, content: bytes,
                     chosen: list[policy.Decision],
                     certificates: dict[str, list[x509.Certificate]], signer: Any,
                     sender_settings: Mapping[str, Any], results: Results) -> None:
        recipients = tuple(d.recipient for d in chosen)
        sign = signer if any(d.sign for d in chosen) else None
        encrypted = await self._engine.protect(
            content, signer=sign, recipients=_unique(c for r in recipients
                                                     for c in certificates[r]),
            pss=sender_settings["smime_signature_scheme"] == "pss", protect_headers=True,
            obscure_subject=bool(sender_settings["smime_obscure_subject"]))
        what = "signed and encrypted" if sign is not None else "encrypted"
        log.info("{queue_id}: S/MIME {what}; Recipients: {rcpts}", queue_id=envelope.queue_id,
                 what=what, rcpts=", ".join(recipients))
        results.deliver(envelope.sender, recipients, encrypted, f"S/MIME {what}", "smime")

    async def _pgp_path(self, envelope: Envelope, content: bytes, chosen: list[policy.Decision],
                        keys: Mapping[str, tuple[PGPKey, ...]], signer: Any,
                        known: Mapping[str, Mapping[str, Any]],
                        sender_settings: Mapping[str, Any],
                        results: Results) -> list[tuple[str, str]]:
        """
        One message per PGP encoding the recipients ask for, encrypted to
        all their keys; signed when the policy says so.

        @return: recipients that could not be encrypted to after all (a
            key that failed in the library), with why.
        """
        groups: dict[str, list[policy.Decision]] = {}
        for d in chosen:
            groups.setdefault(str(known[d.recipient]["pgp_encoding"]), []).append(d)
        bounced: list[tuple[str, str]] = []
        for encoding, group in groups.items():
            recipients = tuple(d.recipient for d in group)
            sign = signer if any(d.sign for d in group) and signer else None
            try:
                encrypted, how = await self._pgp.protect(
                    content, list({k.fingerprint: k for r in recipients for k in keys[r]}
                                  .values()),
                    signer=sign[1] if sign else None, encoding=encoding,
                    obscure_subject=bool(sender_settings["smime_obscure_subject"]),
                    now=self._keyring.now())
            except PGPError as e:
                log.warn("{queue_id}: PGP encryption failed: {why}; Recipients: {rcpts}",
                         queue_id=envelope.queue_id, why=e, rcpts=", ".join(recipients))
                bounced += [(r, f"PGP encryption failed: {e}") for r in recipients]
                continue
            what = "signed and encrypted" if sign else "encrypted"
            form = "inline" if how == INLINE else "PGP/MIME"
            log.info("{queue_id}: PGP {what} ({form}); Recipients: {rcpts}; Keys: {keys}",
                     queue_id=envelope.queue_id, what=what, form=form,
                     rcpts=", ".join(recipients),
                     keys=", ".join(sorted({k.fingerprint.upper() for r in recipients
                                            for k in keys[r]})))
            results.deliver(envelope.sender, recipients, encrypted, f"PGP {what}", "pgp")
        return bounced

    async def _pdf_path(self, envelope: Envelope, content: bytes,
                        chosen: list[policy.Decision],
                        known: Mapping[str, Mapping[str, Any]],
                        sender_settings: Mapping[str, Any], config: MTAConfig,
                        options: SenderOptions, results: Results
                        ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """
        A mail per recipient with the message as a PDF encrypted with that
        recipient's password: a static one, or a random one delivered
        first (to the sender in a notice, to the recipient's webmail
        mailbox through the tunnel, or by SMS); never logged.

        @return: recipients the PDF could not be made for, with why; and
            recipients whose password could not be delivered (their PDF
            is not sent), with why.
        """
        bounced: list[tuple[str, str]] = []
        fallen: list[tuple[str, str]] = []
        fields = dict(reversed(header_fields(content)))  # the first of each name
        subject, message_id = fields.get("subject", ""), fields.get("message-id", "")
        obscure = bool(sender_settings["pdf_obscure_subject"])
        reply_base = self._reply_base(envelope, sender_settings, config)
        sms_down = ""
        for d in chosen:
            settings = known[d.recipient]
            mode = str(settings["pdf_password_mode"])
            if mode == "static":
                password = str(settings["pdf_password"])
            else:
                password = random_password(int(sender_settings["pdf_password_length"]),
                                           str(sender_settings["pdf_password_alphabet"]))
            reply = ""
            if reply_base:
                # The subject stays out of the link when it is obscured: the
                # link stands in the mail's clear text too.
                link = new_link(sender=envelope.sender, recipient=d.recipient,
                                message_id=message_id, subject="" if obscure else subject,
                                now=self._clock.seconds(),
                                validity_days=int(sender_settings["pdf_reply_link_validity"]),
                                single_use=bool(sender_settings["pdf_reply_single_use"]),
                                not_after=options.expires)
                reply = reply_url(reply_base, make_token(
                    str(sender_settings["server_secret"]), link))
            text = self._notices.render("pdf_message", dict(
                sender=envelope.sender, recipient=d.recipient,
                subject="" if obscure else subject, filename=PDF_FILENAME,
                password_mode=mode, reply_link=reply,
                portal_link=str(sender_settings["portal_base_url"])), sender_settings).text
            pdf_options = PDFOptions(user_password=password,
                                     page_size=str(sender_settings["pdf_page_size"]),
                                     reply_url=reply, created=self._clock.seconds())
            try:
                mail = await self._pdf.protect(content, pdf_options, text, obscure_subject=obscure)
            except PDFRenderError as e:
                log.warn("{queue_id}: PDF encryption failed: {why}; Recipient: {rcpt}",
                         queue_id=envelope.queue_id, why=e, rcpt=d.recipient)
                bounced.append((d.recipient, f"PDF encryption failed: {e}"))
                continue
            if mode == "sms" and sms_down:
                # One silent or refusing SMS gateway is not asked again for
                # this message: each try can cost its timeout.
                fallen.append((d.recipient, sms_down))
                continue
            how = await self._deliver_password(
                envelope, d.recipient, mode, password, "" if obscure else subject, settings,
                sender_settings, config, options.expires, results)
            if isinstance(how, _NotDelivered):
                fallen.append((d.recipient, how.why))
                if mode == "sms":
                    sms_down = how.why
                continue
            log.info("{queue_id}: PDF encrypted (AES-256, {how}); Recipient: {rcpt}",
                     queue_id=envelope.queue_id, how=how, rcpt=d.recipient)
            results.deliver(envelope.sender, (d.recipient,), mail, "PDF encrypted", "pdf")
        return bounced, fallen

    async def _deliver_password(self, envelope: Envelope, recipient: str, mode: str,
                                password: str, subject: str,
                                settings: Mapping[str, Any],
                                sender_settings: Mapping[str, Any], config: MTAConfig,
                                expires: float, results: Results) -> str | _NotDelivered:
        """
        The password of a recipient's PDF on its way, as the recipient's
        password mode says, before the PDF is sent.

        @param subject: the message's subject, or C{""} when it is
            obscured (the portal's notices show it in the clear).

        @return: how, for the log; or why it could not be (logged: the
            PDF is not sent).
        """
        if mode == "static":
            return "static password"
        if mode == "random_to_sender":
            notice = self._notices.render("pdf_password", dict(
                recipient=recipient, subject=subject, password=password,
                filename=PDF_FILENAME), sender_settings)
            results.send(self._notices.message(envelope.sender, notice, sender_settings,
                                               config.my_hostname))
            return "random password sent to the sender"
        why = ""
        if mode == "portal":
            notice = self._notices.render("pdf_portal_password", dict(
                sender=envelope.sender, recipient=recipient, subject=subject,
                password=password, filename=PDF_FILENAME), sender_settings)
            message = build_notice(sender=envelope.sender, recipient=recipient, notice=notice,
                                   my_hostname=config.my_hostname, now=self._clock.seconds())
            sealed = await self._tunnels.seal(
                envelope.queue_id, envelope.sender, message, 0, (recipient,), sender_settings,
                config, part="pdf-password", read_receipt=False, expires=expires)
            if not isinstance(sealed, str):
                made, tunnel = sealed
                results.send(made)
                return f"random password put in the portal in tunnel message {tunnel}"
            why = f"the PDF password could not be put in the portal: {sealed.rstrip('.')}"
        elif mode == "sms":
            text = self._notices.render("pdf_sms", dict(
                sender=envelope.sender, password=password, filename=PDF_FILENAME),
                sender_settings).text.strip()
            try:
                await self._sms.send(SMSGatewayConfig.from_settings(sender_settings),
                                     str(settings["sms_phone"]), text)
            except SMSError as e:
                why = f"the PDF password could not be sent by SMS: {e}"
            else:
                return "random password sent by SMS"
        else:
            why = f"the PDF password mode {mode!r} is unknown"
        log.warn("{queue_id}: the PDF is not sent: {why}; Recipient: {rcpt}",
                 queue_id=envelope.queue_id, why=why, rcpt=recipient)
        return _NotDelivered(why)

    def _reply_base(self, envelope: Envelope, sender_settings: Mapping[str, Any],
                    config: MTAConfig) -> str:
        """
        Where the PDF reply links of the sender's mail lead, or C{""} for
        no link (replies off, a sender replies may not go to, or no URL to
        give: logged).
        """
        if not sender_settings["pdf_reply_enabled"] or not may_reply_to(config,
                                                                         envelope.sender):
            return ""
        base = str(sender_settings["pdf_reply_url"] or sender_settings["portal_base_url"])
        if not base or not sender_settings["server_secret"]:
            log.info("{queue_id}: the PDF has no reply link: set the PDF reply URL or the "
                     "Portal base URL (Settings → PDF)", queue_id=envelope.queue_id)
            return ""
        return base

    async def _tunnel(self, envelope: Envelope, protected: bytes, start: int,
                      chosen: list[policy.Decision], sender_settings: Mapping[str, Any],
                      config: MTAConfig, options: SenderOptions, results: Results
                      ) -> list[tuple[str, str]]:
        recipients = tuple(d.recipient for d in chosen)
        sealed = await self._tunnels.seal(
            envelope.queue_id, envelope.sender, protected, start, recipients, sender_settings,
            config, read_receipt=bool(sender_settings["webmail_read_receipt"]),
            delivery_receipt=bool(sender_settings["webmail_delivery_receipt"]),
            expires=options.expires, controls=options.controls)
        if isinstance(sealed, str):
            return [(r, sealed) for r in recipients]
        made, tunnel = sealed
        expiry = "" if not options.expires else "; Expires: " + datetime.fromtimestamp(
            options.expires, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        controls = f"; Controls: {', '.join(options.controls)}" if options.controls else ""
        log.info("{queue_id}: sent to the webmail messenger in tunnel message {tunnel} (to "
                 "{webmail_recipient}); Recipients: {rcpts}{expiry}{controls}",
                 queue_id=envelope.queue_id, tunnel=tunnel,
                 webmail_recipient=made.recipients[0], rcpts=", ".join(recipients),
                 expiry=expiry, controls=controls)
        results.hand_on(recipients, made,
                        Outcome("sent", "2.0.0", f"webmail tunnel message {tunnel} "
                                                 f"to <{made.recipients[0]}>"), relay="webmail",
                        method="webmail")
        return []

    def _not_encrypted(self, envelope: Envelope, content: bytes, subject: str,
                       bounced: list[tuple[str, str]], config: MTAConfig,
                       results: Results) -> None:
        """
        Tell the sender, in the guide's words, which recipients did not get
        the message and why; the original's content is not sent back (it
        was to be encrypted), only its header.
        """
        recipients = tuple(r for r, _ in bounced)
        outcome = Outcome("bounced", "5.7.1", "the message could not be encrypted: " +
                          "; ".join(sorted({reason for _, reason in bounced})), notified=True)
        if not envelope.sender:
            log.info("{queue_id}: no notice for a message from the null sender",
                     queue_id=envelope.queue_id)
            results.settle(recipients, outcome)
            return
        notice = ["The message with Subject", "", subject or "(no subject)", "",
                  "has not been sent to the following recipients because the message could "
                  "not be encrypted.", ""]
        for recipient, reason in bounced:
            notice += [recipient, "", reason, ""]
        bounce = build_bounce(
            my_hostname=config.my_hostname, queue_id=envelope.queue_id, sender=envelope.sender,
            received=envelope.received, now=self._clock.seconds(),
            failed=[Failed(r, "5.7.1", reason) for r, reason in bounced], original=content,
            notice=notice, subject="Message not sent: it could not be encrypted",
            headers_only=True)
        log.info("{queue_id}: sender notice that the message could not be encrypted",
                 queue_id=envelope.queue_id)
        results.settle(recipients, outcome)
        results.send(Made("", (envelope.sender,), bounce))

    async def _signer_fails_closed(self, addresses: list[str]) -> bool:
        """
        A signer certificate's revocation fails closed when the settings
        of any of its addresses say so (the global setting when it has
        none).
        """
        known = await self._settings.by_address(
            [canonical_address(a) for a in addresses] or [""])
        return any(_fails_closed(settings) for settings in known.values())

    async def _incoming(self, envelope: Envelope, content: bytes,
                        recipients: tuple[str, ...], canonical: Mapping[str, str],
                        known: Mapping[str, Mapping[str, Any]]
                        ) -> list[tuple[tuple[str, ...], bytes]]:
        """
        Every S/MIME and PGP layer opened for internal C{recipients}; what
        each group of them gets by its I{S/MIME remove signature} setting.
        """
        content = without_fields(content, INFO_PREFIX)
        # Each recipient's copy decrypted with that recipient's keys only
        # (one internal recipient must not read what was encrypted to
        # another); each signer judged as the settings of its certificate's
        # addresses say (not of an address the sender chose).
        first, *others = recipients
        opened = await self._open(content, canonical[first])
        if not opened.layers:
            return [(recipients, content)]  # neither S/MIME nor PGP
        by_recipient = {first: opened}
        # Only decryption depends on who reads: signatures are the same for all.
        if any(layer.encrypted or layer.kind == PGP_INLINE for layer in opened.layers):
            for recipient in others:
                by_recipient[recipient] = await self._open(content, canonical[recipient])
        else:
            by_recipient.update((recipient, opened) for recipient in others)
        logged: set[int] = set()
        made: dict[bytes, list[str]] = {}
        for recipient in recipients:
            this = by_recipient[recipient]
            if id(this) not in logged:
                logged.add(id(this))
                _log_layers(envelope, this)
            delivered = _delivered(this, bool(known[recipient]["smime_remove_signature"]))
            made.setdefault(delivered, []).append(recipient)
        return [(tuple(group), delivered) for delivered, group in made.items()]

    async def _open(self, content: bytes, recipient: str) -> OpenedLayers:
        return await self._opener.open_layers(content, decrypt_for=[recipient],
                                              fail_closed=self._signer_fails_closed)


def _delivered(opened: OpenedLayers, remove: bool) -> bytes:
    """
    What a recipient gets of C{opened}, by its I{S/MIME remove signature}
    setting: the message as far as opened, with our fields on top.
    """
    fields = _info_fields(opened, remove)
    protection = opened.header_protection() if opened.removes(remove) else None
    if protection is None:
        delivered = opened.delivered(remove)
    else:
        # RFC 9788: the fields protected inside shown, as far as they are
        # to be believed.
        delivered = opened.protected_message(protection)
        shown = ", ".join(sorted(name.decode().title() for name in protection.names))
        fields.append((f"{INFO_PREFIX}Header-Protection", f"hp={protection.hp}; "
                       f"shown from inside: {shown or 'none'}"
                       + (f"; {protection.note}" if protection.note else "")))
    # What was inside the encryption may carry our fields too.
    delivered = without_fields(delivered, INFO_PREFIX)
    return with_fields(delivered, fields)


def _fails_closed(settings: Mapping[str, Any]) -> bool:
    return bool(settings["smime_revocation_unknown"] == "fail closed")


def _info_fields(opened: OpenedLayers, remove: bool) -> list[tuple[str, str]]:
    """
    The C{X-Cipherd-Info-*} fields for what was opened: a block per layer
    (C{Layer-<n>}, outermost first), and the summary fields of the first
    decryption, the innermost signature inside the encryption (or of a
    message not encrypted) and the first error.
    """
    removed = opened.removed(remove)
    fields: list[tuple[str, str]] = []
    for n, layer in enumerate(opened.layers, start=1):
        prefix = f"{INFO_PREFIX}Layer-{n}"
        fields.append((prefix, _describe(layer, n <= removed)))
        fields += _decryption_fields(prefix + "-", layer)
        if layer.note:
            fields.append((f"{prefix}-Note", layer.note))
        fields += _signer_fields(prefix + "-", layer.signers)
        if layer.error:
            fields.append((f"{prefix}-Error", layer.error))
    summary: list[tuple[str, str]] = []
    decrypted = next((layer for layer in opened.layers if layer.decrypting), None)
    if decrypted is not None:
        partly = any(layer.inline is not None and layer.inline.partly
                     for layer in opened.layers)
        encrypted = "True"
        if partly and decrypted.kind == PGP_INLINE:
            encrypted = "Partly: text or parts beside the encrypted PGP blocks were not encrypted"
        summary += [(f"{INFO_PREFIX}Encrypted", encrypted),
                    *_decryption_fields(INFO_PREFIX, decrypted)]
    # A signature around the encryption does not cover what was inside
    # (anyone can sign ciphertext): only those inside are the summary's.
    start = max((n for n, layer in enumerate(opened.layers) if layer.decrypting), default=0)
    # Inline: only a signature over all the reader sees (one text part,
    # nothing beside the blocks) speaks for the message.
    signed = [layer for layer in opened.layers[start:]
              if (layer.kind in SIGNED or layer.signers) and not layer.error
              and (layer.inline is None or layer.inline.whole)]
    if signed:
        summary += [(f"{INFO_PREFIX}Signed", "True"),
                    *_signer_fields(INFO_PREFIX, signed[-1].signers)]
    failed = next((layer for layer in opened.layers if layer.error), None)
    if failed is not None:
        what = "decryption" if failed.encrypted or failed.kind == PGP_INLINE else "verification"
        summary.append((f"{INFO_PREFIX}Error", f"{failed.family} {what} failed: {failed.error}"))
    return summary + fields


def _describe(layer: Layer, removed: bool) -> str:
    if layer.kind == PGP_INLINE:
        if layer.inline is None:
            return "inline PGP; not opened"
        found = layer.inline
        what = ", ".join(part for part in (
            f"{found.decrypted} decrypted" if found.decrypted else "",
            f"{found.signed} cleartext-signed checked and kept" if found.signed else "",
            f"{len(found.errors)} not opened" if found.errors else "") if part)
        return (f"inline PGP; {what}" + ("; partly encrypted" if found.partly else "")
                + ("; text beside the signed blocks is not signed"
                   if found.signed and not found.whole else ""))
    what = {"enveloped-data": "encrypted (enveloped-data)",
            "authEnveloped-data": "encrypted (authEnveloped-data)",
            "signed": "signed (multipart/signed)",
            "signed-data": "signed (opaque signed-data)",
            PGP_ENCRYPTED: "PGP encrypted (PGP/MIME)",
            PGP_SIGNED: "PGP signed (PGP/MIME)"}[layer.kind]
    if layer.error:
        return f"{what}; not opened"
    if layer.encrypted:
        return f"{what}; decrypted" + ("; signed inside" if layer.signers else "")
    return f"{what}; {'removed' if removed else 'kept'}"


def _decryption_fields(prefix: str, layer: Layer) -> list[tuple[str, str]]:
    if layer.decrypted is not None:
        result: DecryptedContent = layer.decrypted.result
        how = "key agreement" if result.key_transport.startswith("ECDH") else "key transport"
        return [(f"{prefix}Encryption-Algorithm",
                 f"{result.cipher.upper()}, {how} {result.key_transport}"),
                (f"{prefix}Decrypted-With", describe_name(result.certificate.subject)
                 + "; SHA-256 " + result.certificate.fingerprint(hashes.SHA256()).hex())]
    keys = [layer.pgp] if layer.pgp is not None else list(
        layer.inline.keys if layer.inline is not None else ())
    return [(f"{prefix}Decrypted-With", "; ".join(dict.fromkeys(k.describe() for k in keys)))
            ] if keys else []


# Signers reported per layer: their number is the sender's to choose.
MAX_SIGNERS_REPORTED = 8


def _signer_fields(prefix: str, signers: Sequence[SignerReport | PGPSignerReport]
                   ) -> list[tuple[str, str]]:
    fields = []
    if len(signers) > MAX_SIGNERS_REPORTED:
        fields.append((f"{prefix}Signers", f"{len(signers)}, the first "
                       f"{MAX_SIGNERS_REPORTED} reported"))
    for i, signer in enumerate(signers[:MAX_SIGNERS_REPORTED]):
        fields += [(f"{prefix}Signer-{i}", signer.signer),
                   (f"{prefix}Signer-Verified-{i}", str(signer.verified)),
                   (f"{prefix}Signer-Trusted-{i}", str(signer.valid))]
        if signer.emails:
            fields.append((f"{prefix}Signer-Email-{i}", ", ".join(signer.emails)))
        if not signer.valid:
            fields.append((f"{prefix}Signer-Reason-{i}", signer.reason))
    return fields


def _log_layers(envelope: Envelope, opened: OpenedLayers) -> None:
    """
    The MPA log's lines for what was opened: the guide's warnings for each
    signature that is not valid and for a layer that could not be opened,
    then one line with every layer.
    """
    for layer in opened.layers:
        if layer.error:
            what = ("decryption" if layer.encrypted or layer.kind == PGP_INLINE
                    else "verification")
            log.warn("{family} {what} failed; Queue id: {queue_id}; Message: {why}",
                     family=layer.family, what=what, queue_id=envelope.queue_id,
                     why=layer.error)
        elif layer.signers and not layer.signature_valid:
            # The guide's "not valid" is for a signature that does not
            # verify (or none at all); one that verifies with a signer we
            # do not trust is a different fault for the reader.
            broken = [s for s in layer.signers if not s.verified]
            if broken:
                log.warn("{family} signature was not valid; Signer IDs: {signers}; Queue id: "
                         "{queue_id}; Message: {why}", family=layer.family,
                         signers="; ".join(s.signer for s in layer.signers),
                         queue_id=envelope.queue_id, why=broken[0].reason)
            else:
                untrusted = [s for s in layer.signers if not s.valid]
                log.warn("{family} signature verified, signer not trusted; Signer IDs: "
                         "{signers}; Queue id: {queue_id}; Message: {why}",
                         family=layer.family, signers="; ".join(s.signer for s in untrusted),
                         queue_id=envelope.queue_id, why=untrusted[0].reason)
        elif layer.kind in SIGNED and not layer.signers:
            log.warn("{family} signature was not valid; Signer IDs: (none); Queue id: "
                     "{queue_id}; Message: no signer", family=layer.family,
                     queue_id=envelope.queue_id)
    families = " and ".join(dict.fromkeys(layer.family for layer in opened.layers))
    log.info("{queue_id}: incoming {families}: {what}", queue_id=envelope.queue_id,
             families=families,
             what=", ".join(_summary(n, layer) for n, layer in enumerate(opened.layers, 1)))


def _summary(n: int, layer: Layer) -> str:
    if layer.error:
        return f"{n}: {layer.kind} not opened"
    if layer.decrypted is not None:
        result = layer.decrypted.result
        return f"{n}: {layer.kind} {result.cipher.upper()} decrypted"
    if layer.decrypting:
        decrypted = f"{n}: {layer.kind} decrypted"
        return decrypted + (f", signed {_verdicts(layer)}" if layer.signers else "")
    return f"{n}: {layer.kind} " + (_verdicts(layer) or "not checked")


def _verdicts(layer: Layer) -> str:
    return "/".join(("trusted" if s.valid else "verified, not trusted" if s.verified
                     else "not valid") for s in layer.signers)


def _with_header(content: bytes, field: str) -> bytes:
    """
    C{content} with C{field} (C{Name: value}) on top of its header;
    C{content} itself when C{field} is empty, or is no header field (a
    value stored before this version checked it: logged, not added).
    """
    if not field:
        return content
    try:
        field = REGISTRY["header_external"].validate(field)
    except InvalidValue as e:
        log.warn("Header external is not added: {why} (Settings → General)", why=e)
        return content
    name, _, value = field.partition(":")
    return with_fields(content, [(name, value.strip())])


def _on_list(address: str, entries: list[str]) -> bool:
    """
    C{address} is on a list of addresses and domains (a domain covers the
    addresses in it).
    """
    address = address.lower()
    domain = address.rpartition("@")[2]
    return address in entries or domain in entries


def _looks_like_a_tunnel(fields: list[tuple[str, str]]) -> bool:
    found = dict(fields)
    return found.get("subject") == TUNNEL_SUBJECT and "pkcs7-mime" in found.get(
        "content-type", "")


def _unique(certificates: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    # A certificate is equal to (and hashes as) another with the same DER.
    return list(dict.fromkeys(certificates))


def _sent_from(content: bytes, queue_id: str) -> int:
    """
    Where the message as the client sent it starts in C{content}: after the
    Received field our SMTP server put on top, if it is there.
    """
    end = content.find(b"\r\n")
    while end >= 0 and content[end + 2 : end + 3] in (b" ", b"\t"):
        end = content.find(b"\r\n", end + 2)
    first = content if end < 0 else content[: end + 2]
    if field_name(first) == "received" and b"(cipherd) with" in first \
            and f" id {queue_id}".encode() in first:
        return len(first)
    return 0
