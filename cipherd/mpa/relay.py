"""
The webmail messenger's side of the tunnel: a message for the *relay
recipient* is a relay message from a gateway.

It is decrypted with the relay recipient's key, its signature must be
valid and its signer trusted (whitelisted in the CTL or chained to a
trusted root), it must not be a replay (a tunnel id seen before, or made
longer ago than L{VALIDITY}), and it must be a tunnel message this version
reads.  Then the original goes into the mailbox of each recipient it names
(once, however often it comes), each recipient's account is made if need
be, and each is told: a sign-up invitation, or a new-message notice.

On any failure the relay message goes to the *postmaster*, attached, with
the reason ("The webmail relay message could not be handled. ..."), and the
MPA log says why in the guide's words.  Nothing is dropped: without a
postmaster address the relay message stays in the queue.

It is a processor (L{IMessageProcessor}) for the relay recipient alone (see
L{cipherd.mpa.composite}): the notices it makes are results the queue
writes, and only once they are written are the recipients marked as told
and the tunnel id recorded as handled.  A crash before that handles the
relay message again: the mailboxes take it once, and whoever was not told
yet is told then.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from cipherd.core.addresses import canonical_address
from cipherd.core.clock import minute_utc
from cipherd.core.counters import RELAY_FAILURE, TUNNEL_RECEIVED
from cipherd.core.envelope import Envelope, Outcome
from cipherd.core.headers import subject as subject_of
from cipherd.logs import mail_logger
from cipherd.mpa.tunnel import TunnelFormatError, TunnelMetadata, read_tunnel
from cipherd.pki.certs import thumbprint
from cipherd.pki.engine import OpenedMessage, SmimeEngine
from cipherd.pki.errors import DecryptionKeyNotFound, PKIError
from cipherd.pki.trust import CTLStatus
from cipherd.settings import EmailAddresses, IAddressSettings
from cipherd.smtp.config import MTAConfig
from cipherd.smtp.processing import IMessageProcessor, Made, ProcessingResult, Results
from cipherd.webmail import notify, tracking
from cipherd.webmail.accounts import INVITED, Account, Accounts
from cipherd.webmail.invitations import NoInvitation, signup_invitation
from cipherd.webmail.mailbox import (
    FULL,
    RECALLED_BEFORE,
    REPEATED,
    STORED,
    Mailboxes,
    TunnelDelivery,
)

log = mail_logger("cipherd.mpa.relay")

# A tunnel message older than this is refused as a replay: the gateway's
# queue gives up after five days, and a day is left for clocks.
VALIDITY = 6 * 86400.0
# A tunnel made this far in the future is refused too.
CLOCK_SKEW = 3600.0

NOT_SIGNED = "The web relay message was not properly signed."


@implementer(IMessageProcessor)
class WebmailRelay:
    """
    @param notices: makes the invitations, notices and the postmaster's mail.
    @param settings: the settings of the recipients, and the global ones.
    """

    def __init__(self, engine: SmimeEngine, mailboxes: Mailboxes, accounts: Accounts,
                 notices: notify.Notices,
                 settings: IAddressSettings, mta: Callable[[], MTAConfig],
                 clock: IReactorTime,
                 ctl: Callable[[], Awaitable[Mapping[str, CTLStatus]]]) -> None:
        self._engine = engine
        self._certificates_ctl = ctl
        self._mailboxes = mailboxes
        self._accounts = accounts
        self._notices = notices
        self._settings = settings
        self._mta = mta
        self._clock = clock

    def process(self, envelope: Envelope, content: bytes) -> Deferred[ProcessingResult]:
        """
        Handle a relay message: C{envelope}'s recipients are the relay
        recipient (in whatever spelling it came).
        """
        return Deferred.fromCoroutine(self._process(envelope, content))

    async def _process(self, envelope: Envelope, content: bytes) -> ProcessingResult:
        results = Results()
        relay_recipient = canonical_address(
            (await self._settings.by_address([""]))[""]["relay_recipient"]).lower()
        outcome, method = await self._handle(envelope, content, self._mta(), relay_recipient,
                                             results)
        results.settle(envelope.recipients, outcome, "webmail-messenger", method=method)
        return results.result()

    async def _handle(self, envelope: Envelope, content: bytes, config: MTAConfig,
                      relay_recipient: str, results: Results) -> tuple[Outcome, str]:
        """
        Handle the relay message C{content}: the outcome for its relay
        recipient, and C{"mailbox"} if it was delivered to mailboxes.
        """
        facts = {"queue_id": envelope.queue_id, "sender": envelope.sender}
        try:
            # Only the relay recipient's key may open it: it is no ordinary
            # incoming mail for whoever else has a key here.
            opened = await self._engine.open(content, decrypt_for=[relay_recipient])
        except DecryptionKeyNotFound as e:
            log.warn("S/MIME decryption key not found; Queue id: {queue_id}; Sender: {sender}; "
                     "Message: {why}.", why=e, **facts)
            return await self._to_postmaster(envelope, content, config, results,
                                             f"The web relay message could not be decrypted: "
                                             f"{e}")
        except (PKIError, ValueError) as e:
            # A structure (or a certificate in it) that cannot be read.
            log.warn("S/MIME relay message could not be opened; Queue id: {queue_id}; Sender: "
                     "{sender}; Message: {why}", why=e, **facts)
            return await self._to_postmaster(envelope, content, config, results,
                                             f"The web relay message could not be opened: {e}")
        if opened.decrypted is None:
            log.warn("The relay message was not encrypted; Queue id: {queue_id}; Sender: "
                     "{sender}", **facts)
            return await self._to_postmaster(envelope, content, config, results,
                                             "The web relay message was not encrypted.")
        refused = await self._signers_refused(opened)
        if refused is not None:
            log.warn("S/MIME signature was not valid; Signer IDs: {signers}; Queue id: "
                     "{queue_id}; Sender: {sender}; Message: {why}",
                     signers=opened.signer_ids() or "(none)", why=refused, **facts)
            return await self._to_postmaster(envelope, content, config, results,
                                             f"{NOT_SIGNED} {refused}")
        try:
            metadata, original = read_tunnel(opened.message)
        except TunnelFormatError as e:
            log.warn("The relay message is not a tunnel message; Queue id: {queue_id}; "
                     "Message: {why}", why=e, **facts)
            return await self._to_postmaster(envelope, content, config, results,
                                             f"The web relay message could not be read: {e}")
        now = self._clock.seconds()
        if not now - VALIDITY <= metadata.created <= now + CLOCK_SKEW:
            made = datetime.fromtimestamp(metadata.created, UTC).strftime("%Y-%m-%d %H:%M:%S")
            log.warn("The relay message is too old or from the future (made {made} UTC): a "
                     "replay?; Queue id: {queue_id}; Tunnel id: {tunnel}", made=made,
                     tunnel=metadata.tunnel_id, **facts)
            return await self._to_postmaster(
                envelope, content, config, results,
                f"The web relay message was made {made} UTC, outside the "
                f"{VALIDITY / 86400:g} days a relay message is accepted: it may be a replay.")
        if metadata.recall:
            return await self._recall(envelope, metadata, results)
        if metadata.expires and metadata.expires <= now:
            log.info("Relay message {tunnel} expired before it arrived; not stored; Queue id: "
                     "{queue_id}; Recipients: {rcpts}", tunnel=metadata.tunnel_id,
                     rcpts=", ".join(metadata.recipients), **facts)
            return Outcome("sent", "2.0.0", f"webmail relay message {metadata.tunnel_id} "
                                            "expired before it arrived"), ""
        return await self._deliver(envelope, metadata, original, config, results)

    async def _recall(self, envelope: Envelope, metadata: TunnelMetadata, results: Results
                      ) -> tuple[Outcome, str]:
        """
        A gateway's request to recall a message from mailboxes (a request
        that comes twice recalls nothing the second time).
        """
        now = self._clock.seconds()
        asked = sorted({r.lower() for r in metadata.recipients})
        recalled = await self._mailboxes.recall(
            metadata.recall, asked or None, now,
            f"by {metadata.recall_by or 'the gateway'} (through the gateway, queue id "
            f"{envelope.queue_id})")
        results.when_written(functools.partial(
            self._mailboxes.handled, metadata.tunnel_id, [], metadata.created, now))
        return Outcome("sent", "2.0.0", f"recall of webmail message {metadata.recall}: "
                                        f"recalled from {len(recalled)} mailbox(es)"), "mailbox"

    async def _signers_refused(self, opened: OpenedMessage) -> str | None:
        """
        Why the relay message's signature is not one a gateway of ours
        made, or C{None}.  Every signature must be right and its signer
        trusted, and one signer must be a gateway: its certificate
        whitelisted in the CTL, or its address a *trusted gateway sender*
        (a certificate merely chaining to some trusted root is not enough:
        anyone with such a certificate could fill any mailbox).
        """
        if not opened.signed or not opened.signers:
            return "It carries no signature."
        if not opened.signature_valid:
            return "; ".join(s.reason for s in opened.signers if not s.valid)
        listed = set(EmailAddresses().addresses(
            (await self._settings.by_address([""]))[""]["trusted_gateway_senders"]))
        ctl = await self._certificates_ctl()
        for signer in opened.signers:
            certificate = signer.check.certificate
            if certificate is None:
                continue
            if ctl.get(thumbprint(certificate)) is CTLStatus.WHITELISTED or \
                    listed.intersection(signer.emails):
                return None
        return ("The signer is trusted, but is not a gateway: its certificate is not "
                "whitelisted in the certificate trust list, nor its address a trusted gateway "
                "sender.")

    async def _deliver(self, envelope: Envelope, metadata: TunnelMetadata, original: bytes,
                       config: MTAConfig, results: Results) -> tuple[Outcome, str]:
        addresses = sorted({r.lower() for r in metadata.recipients})
        settings = await self._settings.by_address(["", *addresses])
        subject = notify.one_line(subject_of(original))
        # One transaction: each account (its row is the lock) and mailbox,
        # the tunnel id recorded as handled, and who is still to be told.
        delivery = await self._mailboxes.deliver_tunnel(
            addresses, metadata.tunnel_id, self._clock.seconds(), original,
            metadata.sender if metadata.read_receipt else "",
            {a: settings[a]["mailbox_size_limit"] for a in addresses}, metadata.created,
            metadata.expires, metadata.controls)
        if delivery.seen:
            # Handled already (and perhaps cleaned up since): a second copy
            # from a gateway that crashed, or a replay; not stored again.
            # Whoever is still to be told (this node crashed before its
            # notices were written) is told now.
            log.info("Relay message {tunnel} was handled before; not again; Queue id: "
                     "{queue_id}", tunnel=metadata.tunnel_id, queue_id=envelope.queue_id)
            self._tell(delivery, metadata, subject, settings, config, results)
            return Outcome("sent", "2.0.0", f"webmail relay message {metadata.tunnel_id} "
                                            "was handled before"), ""
        stored, repeated, full, recalled = ([a for a in addresses if delivery.done[a] == kind]
                                            for kind in (STORED, REPEATED, FULL,
                                                         RECALLED_BEFORE))
        if repeated:
            log.info("Relay message {tunnel} was stored already for {rcpts}; not again; "
                     "Queue id: {queue_id}", tunnel=metadata.tunnel_id,
                     rcpts=", ".join(repeated), queue_id=envelope.queue_id)
        for address in stored:
            log.info("Relay message {tunnel} stored in the mailbox of {rcpt}; Sender: "
                     "{sender}; Queue id: {queue_id}", tunnel=metadata.tunnel_id, rcpt=address,
                     sender=metadata.sender, queue_id=envelope.queue_id)
        self._tell(delivery, metadata, subject, settings, config, results)
        if stored and metadata.delivery_receipt and metadata.sender:
            self._delivery_receipt(metadata, stored, subject, settings[""], config, results)
        if full:
            log.warn("Mailbox full: relay message {tunnel} not stored for {rcpts}; Queue id: "
                     "{queue_id}", tunnel=metadata.tunnel_id, rcpts=", ".join(full),
                     queue_id=envelope.queue_id)
            self._mailbox_full(metadata.sender, full, subject, settings[""], config, results)
        if recalled:
            log.info("Relay message {tunnel} was recalled before it arrived; not shown to "
                     "{rcpts}; Queue id: {queue_id}", tunnel=metadata.tunnel_id,
                     rcpts=", ".join(recalled), queue_id=envelope.queue_id)
        words = [f"stored for {', '.join(stored)}" if stored else "",
                 f"recalled before it arrived for {', '.join(recalled)}" if recalled else "",
                 f"already stored for {', '.join(repeated)}" if repeated else "",
                 f"mailbox full for {', '.join(full)} (the sender was told)" if full else ""]
        results.event(TUNNEL_RECEIVED, f"tunnel {metadata.tunnel_id} from <{metadata.sender}> "
                                       f"for {len(addresses)} recipient(s)")
        return Outcome("sent", "2.0.0", f"webmail relay message {metadata.tunnel_id}: " +
                       "; ".join(w for w in words if w)), "mailbox"

    # Telling people ------------------------------------------------------

    def _tell(self, delivery: TunnelDelivery, metadata: TunnelMetadata, subject: str,
              settings: Mapping[str, Mapping[str, Any]], config: MTAConfig,
              results: Results) -> None:
        """
        Those who have the message stored but were not yet told of it (this
        time, or by an attempt that crashed before its notices were
        written): told now, and marked as told once the notices are on
        disk.
        """
        told = delivery.not_notified
        for address in told:
            self._notify(delivery.accounts[address], metadata.sender, subject,
                         settings[address], config, results)
        results.when_written(functools.partial(
            self._mailboxes.handled, metadata.tunnel_id, told, metadata.created,
            self._clock.seconds()))

    def _send(self, recipient: str, notice: notify.Notice, settings: Mapping[str, Any],
              config: MTAConfig, results: Results, attachment: bytes | None = None
              ) -> Made:
        made = self._notices.message(recipient, notice, settings, config.my_hostname,
                                     attachment)
        results.send(made)
        return made

    def _notify(self, account: Account, sender: str, subject: str,
                settings: Mapping[str, Any], config: MTAConfig, results: Results) -> None:
        address = account.address
        base = settings["portal_base_url"].rstrip("/")
        if account.state == INVITED and not account.password_set:
            try:
                notice = signup_invitation(self._accounts, self._notices, account, sender,
                                           subject, settings, config.my_hostname,
                                           self._clock.seconds())
            except NoInvitation as e:
                (log.warn if e.misconfigured else log.info)(
                    "No sign-up invitation for {rcpt}: {why}", rcpt=address, why=e)
                return
            kind = "sign-up invitation"
        else:
            page = settings["webmail_login_url"] or (f"{base}/login" if base else "")
            if base and settings["webmail_email_code_login"]:
                # Who rarely comes back gets a code mailed, not a password asked.
                page = f"{base}/login/email?{urlencode({'address': address})}"
            if not page:
                log.warn("No new-message notice for {rcpt}: the portal base URL is not set "
                         "(Settings → General)", rcpt=address)
                return
            notice = self._notices.render("new_message", {
                "sender": sender or "Someone", "subject": subject, "link": page}, settings)
            kind = "new-message notice"
        self._send(address, notice, settings, config, results)
        log.info("Sent a {kind} to {rcpt}", kind=kind, rcpt=address)

    def _delivery_receipt(self, metadata: TunnelMetadata, stored: list[str], subject: str,
                          settings: Mapping[str, Any], config: MTAConfig,
                          results: Results) -> None:
        """
        The sender told the message is in C{stored}'s mailboxes, with the
        signed links to its status and to recall it (none without the
        *portal base URL*: logged).
        """
        base = settings["portal_base_url"].rstrip("/")
        if not base or not settings["server_secret"]:
            log.warn("No delivery receipt for relay message {tunnel}: the portal base URL is "
                     "not set (Settings → General)", tunnel=metadata.tunnel_id)
            return
        now = self._clock.seconds()
        valid_until = now + int(settings["status_link_validity"]) * 86400
        status, recall = tracking.links(settings["server_secret"], base, metadata.tunnel_id,
                                        metadata.sender, valid_until)
        expires = minute_utc(metadata.expires) if metadata.expires else ""
        notice = self._notices.render("delivery_receipt", {
            "recipients": stored, "subject": subject, "status_link": status,
            "recall_link": recall, "expires": expires}, settings)
        self._send(metadata.sender, notice, settings, config, results)
        log.info("Delivery receipt for relay message {tunnel} sent to {sender}",
                 tunnel=metadata.tunnel_id, sender=metadata.sender)

    def _mailbox_full(self, sender: str, full: list[str], subject: str,
                      settings: Mapping[str, Any], config: MTAConfig,
                      results: Results) -> None:
        if not sender:
            return
        notice = notify.render("mailbox_full", {"subject": subject, "recipients": full})
        self._send(sender, notice, settings, config, results)

    async def _to_postmaster(self, envelope: Envelope, content: bytes, config: MTAConfig,
                             results: Results, reason: str) -> tuple[Outcome, str]:
        results.event(RELAY_FAILURE, f"{envelope.queue_id} from <{envelope.sender}>: {reason}")
        settings = (await self._settings.by_address([""]))[""]
        postmaster = settings["postmaster"]
        if not postmaster:
            log.error("The relay message stays queued: it could not be handled and no "
                      "postmaster is set (Settings → General); Queue id: {queue_id}",
                      queue_id=envelope.queue_id)
            return Outcome("deferred", "4.3.0", f"{reason} (no postmaster is set)"), ""
        notice = notify.render("postmaster", {"reason": reason, "queue_id": envelope.queue_id,
                                              "sender": envelope.sender})
        self._send(postmaster, notice, settings, config, results, attachment=content)
        log.info("The relay message was forwarded to the postmaster {postmaster}; Queue id: "
                 "{queue_id}", postmaster=postmaster, queue_id=envelope.queue_id)
        return Outcome("sent", "2.0.0",
                       f"forwarded to the postmaster <{postmaster}>: {reason}"), ""
