"""
Webmail tunnel messages signed and encrypted: what the gateway hands the
webmail messenger, a message for recipients' mailboxes or a request to
recall one from them.  Signed with the *webmail sender*'s key, encrypted to
the *webmail recipient*'s certificates (see L{cipherd.mpa.tunnel}).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from twisted.internet.interfaces import IReactorTime

from cipherd.logs import mail_logger
from cipherd.mpa.tunnel import TunnelMetadata, build_tunnel, tunnel_id
from cipherd.pki.certstore import ICertificateStore
from cipherd.pki.engine import SmimeEngine
from cipherd.smtp.config import MTAConfig
from cipherd.smtp.processing import Made
from cipherd.webmail.notify import one_line

log = mail_logger("cipherd.mpa.gateway")

NOT_SIGNED = "The tunneled message should have been signed."
NO_WEBMAIL_CERTIFICATE = "There are no valid S/MIME certificates for the webmail recipient."


class TunnelSealer:
    def __init__(self, certificates: ICertificateStore, engine: SmimeEngine,
                 clock: IReactorTime) -> None:
        self._certificates = certificates
        self._engine = engine
        self._clock = clock

    async def seal(self, queue_id: str, sender: str, protected: bytes, start: int,
                   recipients: tuple[str, ...], sender_settings: Mapping[str, Any],
                   config: MTAConfig, *, read_receipt: bool, part: str = "",
                   delivery_receipt: bool = False, expires: float = 0.0, recall: str = "",
                   recall_by: str = "", controls: tuple[str, ...] = ()
                   ) -> tuple[Made, str] | str:
        """
        C{protected} (from C{start}) for C{recipients}' webmail mailboxes:
        a tunnel message signed with the *webmail sender*'s key and
        encrypted to the *webmail recipient*'s certificates.

        @param part: for a second tunnel of one queued message (a PDF's
            password, a recall), what it is: its tunnel id differs from the
            message's.
        @param recall: the tunnel id of a message to recall from
            C{recipients}' mailboxes (see L{TunnelMetadata.recall}).
        @return: the message to queue and its tunnel id; or why it cannot
            be made (logged, in the guide's words where it has them).
        """
        webmail_sender = sender_settings["webmail_sender"]
        webmail_recipient = sender_settings["webmail_recipient"]
        facts = dict(queue_id=queue_id, sender=sender, rcpts=", ".join(recipients) or "(all)",
                     webmail_sender=webmail_sender or "(not set)",
                     webmail_recipient=webmail_recipient or "(not set)")
        if not webmail_recipient or not webmail_sender:
            missing = "webmail recipient" if not webmail_recipient else "webmail sender"
            log.warn("The {missing} is not set (Settings → webmail); Recipients: {rcpts}; "
                     "Queue id: {queue_id}", missing=missing, **facts)
            return f"The {missing} is not set."
        signer = await self._certificates.signing_identity(webmail_sender)
        if signer is None:
            log.warn("The tunneled message should have been signed but there is no valid "
                     "signing certificate with private key for the webmail sender "
                     "{webmail_sender}; Recipients: {rcpts}; Queue id: {queue_id}", **facts)
            return NOT_SIGNED
        certificates = await self._certificates.encryption_certificates(webmail_recipient)
        if not certificates:
            log.warn("There are no valid S/MIME certificates for the webmail recipient "
                     "{webmail_recipient}; Recipients: {rcpts}; Queue id: {queue_id}", **facts)
            return NO_WEBMAIL_CERTIFICATE
        metadata = TunnelMetadata(
            tunnel_id(config.my_hostname, f"{queue_id}/{part}" if part else queue_id,
                      recipients),
            self._clock.seconds(), sender, recipients, read_receipt=read_receipt,
            delivery_receipt=delivery_receipt, expires=expires, recall=recall,
            recall_by=recall_by, controls=controls)
        tunnel = build_tunnel(protected, metadata, webmail_sender=webmail_sender,
                              webmail_recipient=webmail_recipient,
                              my_hostname=config.my_hostname, start=start)
        sealed = await self._engine.protect(tunnel, signer=signer, recipients=certificates,
                                            detached=False)
        limit = config.after_filter_message_size_limit
        if limit and len(sealed) > limit:
            # Signed and encrypted, a message grows by nearly 1.9 times: the
            # sender hears it from us, not the webmail sender from the MTA.
            log.warn("The tunnel message would be too large ({size} bytes; the after-filter "
                     "limit is {limit}); Recipients: {rcpts}; Queue id: {queue_id}",
                     size=len(sealed), limit=limit, **facts)
            return (f"The message is too large for the secure webmail once encrypted "
                    f"({len(sealed)} bytes; the limit is {limit}).")
        return Made(webmail_sender, (webmail_recipient,), sealed), metadata.tunnel_id

    async def recall(self, recalled: str, recipients: Sequence[str], by: str,
                     settings: Mapping[str, Any], config: MTAConfig
                     ) -> tuple[Made, str] | str:
        """
        A request to the webmail messenger to recall the message of tunnel
        C{recalled} from C{recipients}' mailboxes (from everyone's when
        empty), signed and encrypted like the tunnel that carried it.

        @param by: who asks, for the message's timeline.
        @param settings: the global settings (the webmail sender and
            recipient).
        """
        now = self._clock.seconds()
        by = one_line(by)[:200]
        date = format_datetime(datetime.fromtimestamp(now, UTC))
        note = (f"From: <{settings['webmail_sender']}>\r\nTo: <{settings['webmail_recipient']}>"
                f"\r\nSubject: Recall of webmail message {recalled}\r\nDate: {date}\r\n"
                f"Content-Type: text/plain; charset=utf-8\r\n\r\n"
                f"Recall the webmail message {recalled} from "
                f"{', '.join(recipients) or 'every recipient'}; asked by {by}.\r\n")
        made = await self.seal(f"recall-{recalled}-{now!r}", "", note.encode(), 0,
                               tuple(sorted(recipients)), settings, config,
                               read_receipt=False, part="recall", recall=recalled,
                               recall_by=by)
        if not isinstance(made, str):
            log.info("Recall of webmail message {recalled} from {rcpts} sent in tunnel message "
                     "{tunnel}; asked by {by}", recalled=recalled,
                     rcpts=", ".join(recipients) or "every recipient", tunnel=made[1], by=by)
        return made
