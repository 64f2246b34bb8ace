"""
What the admin pages and the JSON API work with, assembled once by the
service: one object to pass, so both fronts always see the same parts.
"""

from __future__ import annotations

from dataclasses import dataclass

from cipherd.logs import MailLog
from cipherd.pki.certs import thumbprint
from cipherd.pki.certstore import CertificateStore
from cipherd.pki.trust import CTLStatus
from cipherd.settings import GLOBAL, Scope, email_problem
from cipherd.smtp.compose import compose
from cipherd.smtp.config import MTAConfigSource
from cipherd.smtp.queue import MailQueue, QueueRunner
from cipherd.smtp.spool import QueuedMessage
from cipherd.store.settings import SettingsRepository
from cipherd.threads import IBlockingRunner
from cipherd.web.auth import AdminAuthority

# Guide §3.8, figure 15: the subject the "Create" page proposes.
WEBMAIL_CERTIFICATE_SUBJECT = "Webmail sender tunnel certificate"
# The subject becomes the certificate's common name; RFC 5280 appendix A:
# ub-common-name INTEGER ::= 64.
MAX_CERTIFICATE_SUBJECT = 64
# Guide §3.9, figure 16.
WEBMAIL_CERTIFICATE_AVAILABLE = (
    "A valid webmail certificate is available. There is no need to create a new certificate."
)


class SenderCertificateRefused(Exception):
    """
    The email address or subject for a webmail sender certificate cannot
    be used; nothing was created.

    @ivar errors: C{{field: message}}, fields C{email} and C{subject}.
    """

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors


@dataclass(frozen=True)
class SenderCertificate:
    """
    The webmail sender's signing certificate after a request for one.

    @ivar created: C{False} when a valid one was there already and is the
        one named.
    """

    thumbprint: str
    email: str
    subject: str
    created: bool


def subject_problem(subject: str) -> str | None:
    """
    Why C{subject} cannot be a tunnel certificate's subject, or C{None}.
    """
    if not subject:
        return "Enter a subject."
    if not subject.isprintable():
        return "The subject must be one line of text, without control characters."
    if len(subject) > MAX_CERTIFICATE_SUBJECT:
        return (f"The subject is {len(subject)} characters long; a certificate's subject "
                f"may have at most {MAX_CERTIFICATE_SUBJECT}.")
    return None


@dataclass(frozen=True)
class AdminBackend:
    """
    @ivar logs: the MTA and MPA logs, by name.
    @ivar runner: where blocking work (reading logs) runs.
    @ivar mta: the MTA config in force.
    @ivar queue: the mail queue.
    @ivar queue_runner: delivers it (flush).
    """

    authority: AdminAuthority
    settings: SettingsRepository
    logs: dict[str, MailLog]
    runner: IBlockingRunner
    certificates: CertificateStore
    mta: MTAConfigSource
    queue: MailQueue
    queue_runner: QueueRunner | None = None

    async def tail_log(self, name: str, lines: int) -> list[str]:
        """
        The last C{lines} lines of log C{name}, read off the reactor thread.

        @raise KeyError: there is no such log.
        """
        log = self.logs[name]
        result: list[str] = await self.runner.run(log.tail, lines)
        return result

    # Guide §3.8: the gateway's webmail tunnel certificate ----------------------

    async def webmail_sender(self, scope: Scope = GLOBAL) -> str:
        """
        The effective I{Webmail sender} at C{scope}; C{""} when not set.
        """
        sender: str = await self.settings.get(scope, "webmail_sender")
        return sender

    async def webmail_certificate(self, email: str) -> str | None:
        """
        The thumbprint of a valid signing certificate with private key for
        C{email} -- what the tunnel messages are signed with -- or C{None}.
        """
        identity = await self.certificates.signing_identity(email)
        return None if identity is None else thumbprint(identity[0])

    async def create_webmail_sender_certificate(
        self, scope: Scope = GLOBAL, email: str | None = None, subject: str | None = None,
        *, force: bool = False,
    ) -> SenderCertificate:
        """
        Create the self-signed tunnel certificate and key the gateway signs
        its tunnel messages to the webmail messenger with, and whitelist it
        in the CTL: it chains to no root (guide §3.3 does the same on the
        other side).

        @param email: blank or C{None} for the webmail sender at C{scope}.
        @param subject: C{None} for L{WEBMAIL_CERTIFICATE_SUBJECT}.
        @param force: create one even when a valid one exists.
        @raise SenderCertificateRefused: nothing was created.
        """
        email = (email or "").strip() or await self.webmail_sender(scope)
        subject = WEBMAIL_CERTIFICATE_SUBJECT if subject is None else subject.strip()
        errors = {}
        if not email:
            errors["email"] = ("No webmail sender is set (Settings → webmail → Webmail sender) "
                               "and no email address was given.")
        elif problem := email_problem(email):
            errors["email"] = f"{email!r} is not a valid email address: {problem}."
        if problem := subject_problem(subject):
            errors["subject"] = problem
        if errors:
            raise SenderCertificateRefused(errors)
        existing = None if force else await self.webmail_certificate(email)
        if existing is not None:
            return SenderCertificate(existing, email, subject, created=False)
        created = await self.certificates.create_tunnel_certificate(email, subject)
        await self.certificates.set_ctl(created, CTLStatus.WHITELISTED)
        return SenderCertificate(created, email, subject, created=True)


async def send_test_email(backend: AdminBackend, sender: str, recipients: list[str],
                          subject: str, body: str) -> QueuedMessage:
    """
    The *send email* tool: a message written here, queued for delivery.

    @raise ComposeError: a field cannot be used; nothing was queued.
    @raise RuntimeError: this node does not deliver mail.
    """
    if backend.queue_runner is None:
        raise RuntimeError("this node does not deliver mail")
    config = backend.mta.current
    content = compose(sender=sender, recipients=recipients, subject=subject, body=body,
                      now=backend.queue_runner.now(), my_hostname=config.my_hostname)
    return await backend.queue_runner.submit(sender, recipients, content, "local (admin)")
