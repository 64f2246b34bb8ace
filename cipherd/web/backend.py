"""
What the admin pages and the JSON API work with, assembled once by the
service: one object to pass, so both fronts always see the same parts.
"""

from __future__ import annotations

import base64
import email.policy
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from cipherd.core.clock import utc_from_seconds
from cipherd.logs import LogQuery, MailLog
from cipherd.mpa.dlp_policy import DataLossPrevention
from cipherd.mpa.sealing import TunnelSealer
from cipherd.netinfo import NetworkInfo, gather
from cipherd.pki.ca import CAError, CertificateAuthority
from cipherd.pki.certs import thumbprint
from cipherd.pki.certstore import ICertificateStore
from cipherd.pki.keyring import IKeyring, StoredKey
from cipherd.pki.pgp import emails_of
from cipherd.pki.sitetls import ISiteCertificate, SiteCertificateInfo
from cipherd.pki.trust import CTLStatus, Purpose
from cipherd.settings import GLOBAL, PASSWORD_ALPHABET, REGISTRY, Scope, email_problem
from cipherd.smtp.compose import compose
from cipherd.smtp.config import MTAConfigSource, domain_name_problem
from cipherd.smtp.queue import MailQueue, QueueRunner
from cipherd.smtp.spool import QueuedMessage
from cipherd.store.backup import IBackups
from cipherd.store.ca import IssuedRow
from cipherd.store.dlp import QuarantinedRow
from cipherd.store.settings import SettingsRepository
from cipherd.threads import IBlockingRunner
from cipherd.web.audit import AuditTrail
from cipherd.web.auth import AdminAuthority
from cipherd.web.dashboard import Dashboard
from cipherd.webmail.administration import AccountAdministration
from cipherd.webmail.notify import TEMPLATES
from cipherd.webmail.pdf import random_password
from cipherd.webmail.sms import ISMSGateway, SMSError, SMSGatewayConfig

# A PGP key's name in a URL: its fingerprint, 40 hexadecimal digits (v4
# keys) or 64 (v6 keys, RFC 9580 §5.5.4).
FINGERPRINT = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")

# RFC 1035 §3.3.14: a TXT record is strings of at most 255 octets each;
# RFC 6376 §3.6.2.2: a DKIM key record longer than that is split into
# several, which verifiers join again.
TXT_STRING_LIMIT = 255

# The subject becomes the certificate's common name; RFC 5280 appendix A:
# ub-common-name INTEGER ::= 64.
MAX_CERTIFICATE_SUBJECT = 64
# The name in a generated PGP key's user ID ("name <address>"): a person's
# or a role's name, not a paragraph.
MAX_KEY_NAME = 128
# Guide §3.9, figure 16 (and the same sentence on the webmail side, §2.3.11).
WEBMAIL_CERTIFICATE_AVAILABLE = (
    "A valid webmail certificate is available. There is no need to create a new certificate."
)


@dataclass(frozen=True)
class TunnelEnd:
    """
    One end of the webmail tunnel (guide figure 1, step 4) and the
    certificate with private key it needs there.

    @ivar label: what the address is called in messages ("webmail sender").
    @ivar setting: the global property that holds the address.
    @ivar purpose: what the certificate must be valid for to count as
        available: the gateway signs as the webmail sender, the webmail
        messenger decrypts as the relay recipient.
    @ivar subject: the subject the "Create" page proposes.
    @ivar where: where the admin sets the address.
    @ivar missing: what goes wrong without a certificate, and what to do.
    """

    label: str
    setting: str
    purpose: Purpose
    subject: str
    where: str
    missing: str


# Gateway side, guide §3.8, figure 15.
WEBMAIL_SENDER = TunnelEnd("webmail sender", "webmail_sender", Purpose.SIGNING,
                           "Webmail sender tunnel certificate",
                           "Settings → webmail → Webmail sender",
                           "Tunnel messages cannot be signed: messages for the secure webmail "
                           "bounce to their sender. Create one with “create webmail "
                           "certificate” (guide §3.8).")
# Webmail side, guide §2.3.11, figure 10: the gateway encrypts to it.
RELAY_RECIPIENT = TunnelEnd("relay recipient", "relay_recipient", Purpose.ENCRYPTION,
                            "Webmail relay recipient certificate",
                            "Settings → General → Relay recipient",
                            "Tunnel messages from the gateway cannot be decrypted here and go "
                            "to the postmaster. Create one with “webmail certificate” (guide "
                            "§2.3.11) and import it on the gateway.")
WEBMAIL_CERTIFICATE_SUBJECT = WEBMAIL_SENDER.subject


class TunnelCertificateRefused(Exception):
    """
    The email address or subject for a tunnel certificate cannot be used;
    nothing was created.

    @ivar errors: C{{field: message}}, fields C{email} and C{subject}.
    """

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors


@dataclass(frozen=True)
class TunnelCertificate:
    """
    The certificate of one end of the tunnel after a request for one.

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


def key_name_problem(name: str) -> str | None:
    """
    Why C{name} cannot be the name in a generated PGP key's user ID, or
    C{None} (it may be empty: the user ID is then the address alone).
    """
    if not name.isprintable():
        return "The name must be one line of text, without control characters."
    if len(name) > MAX_KEY_NAME:
        return f"The name is {len(name)} characters long; at most {MAX_KEY_NAME} are allowed."
    if "<" in name or ">" in name:
        return "The name must not contain < or >."
    return None


def generated_key_problems(email: str, name: str) -> dict[str, str]:
    """
    Why no PGP key can be generated for C{email} and C{name} (both
    stripped), by field (C{email}, C{name}); empty when one can.  The API
    and the admin page both ask this before L{IKeyring.generate}.
    """
    errors = {}
    if not email:
        errors["email"] = "Enter the email address of the key."
    elif problem := email_problem(email):
        errors["email"] = f"{email!r} is not a valid email address: {problem}."
    if problem := key_name_problem(name):
        errors["name"] = problem
    elif "email" not in errors and len(emails_of([f"{name} <{email}>"])) != 1:
        # emails_of reads the addresses of a user ID: a name that looks
        # like one more would put that address on the key too.
        errors["name"] = "The name must not contain an email address."
    return errors


@dataclass(frozen=True)
class DkimRecord:
    """
    The DNS TXT record that publishes the public half of a DKIM key
    (RFC 6376 §3.6.1; RFC 8463 §4 for Ed25519).

    @ivar name: the owner name, C{<selector>._domainkey.<domain>}.
    @ivar value: the record's text, C{v=DKIM1; k=...; p=...}.
    """

    name: str
    value: str

    @property
    def zone_line(self) -> str:
        """
        The record as a zone file line, its text split into strings DNS
        can hold.
        """
        chunks = [self.value[i:i + TXT_STRING_LIMIT]
                  for i in range(0, len(self.value), TXT_STRING_LIMIT)]
        strings = "\n    ".join(f'"{chunk}"' for chunk in chunks)
        return f"{self.name}. IN TXT (\n    {strings} )"


def dkim_record_for_key(domain: str, selector: str, key_pem: str) -> DkimRecord:
    """
    The DNS record for the private key C{key_pem}: C{k=rsa} with the
    SubjectPublicKeyInfo (RFC 6376 §3.6.1), or C{k=ed25519} with the raw
    32-byte public key (RFC 8463 §4).  CPU work: run it off the reactor.

    @raise ValueError: C{key_pem} is not an RSA or Ed25519 private key.
    """
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        kind = "ed25519"
        data = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    elif isinstance(public, rsa.RSAPublicKey):
        kind = "rsa"
        data = public.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        raise ValueError("DKIM keys are RSA or Ed25519")
    return DkimRecord(f"{selector}._domainkey.{domain}",
                      f"v=DKIM1; k={kind}; p={base64.b64encode(data).decode('ascii')}")


def builtin_template_text(name: str) -> str:
    """
    The built-in text of notification template C{name} (C{"signup"}, ...).

    @raise OSError: there is no such template.
    """
    return (TEMPLATES / f"{name}.txt").read_text(encoding="utf-8")


@dataclass(frozen=True)
class AdminBackend:
    """
    @ivar logs: the MTA and MPA logs, by name.
    @ivar runner: where blocking work (reading logs) runs.
    @ivar keyring: the OpenPGP keys (Admin → PGP keys).
    @ivar mta: the MTA config in force.
    @ivar queue: the mail queue.
    @ivar audit: records the changes admins make.
    @ivar dashboard: gathers the home page's numbers.
    @ivar webmail_accounts: the webmail messenger's accounts (Admin → Webmail
        accounts).
    @ivar queue_runner: delivers it (flush).
    @ivar network_info: reads the machine's network (Admin → Network); it
        blocks, so it runs on C{runner}.
    @ivar site_tls: the sites' TLS certificate (Admin → TLS certificate).
    @ivar backups: makes and restores backups (Admin → Backup).
    @ivar ca: the built-in CA (Admin → CA).
    @ivar sms: where the password of a mailed PKCS#12 file goes by SMS.
    @ivar dlp: the DLP patterns and quarantine (Admin → DLP).
    @ivar crl_base: where the CRL listener is reached (C{http://host:port}),
        the beginning a new CA's distribution point is proposed with.
    @ivar tunnels: makes the signed and encrypted requests a gateway sends
        the webmail messenger (a recall).
    """

    authority: AdminAuthority
    settings: SettingsRepository
    logs: dict[str, MailLog]
    runner: IBlockingRunner
    certificates: ICertificateStore
    keyring: IKeyring
    mta: MTAConfigSource
    queue: MailQueue
    audit: AuditTrail
    dashboard: Dashboard
    webmail_accounts: AccountAdministration
    queue_runner: QueueRunner | None = None
    network_info: Callable[[], NetworkInfo] = gather
    site_tls: ISiteCertificate | None = None
    backups: IBackups | None = None
    ca: CertificateAuthority | None = None
    sms: ISMSGateway | None = None
    dlp: DataLossPrevention | None = None
    crl_base: Callable[[], str] = lambda: "http://localhost:8081"
    tunnels: TunnelSealer | None = None

    # PGP keys, named in URLs by fingerprint: anything else names no key.

    async def pgp_key(self, fingerprint: str) -> StoredKey | None:
        if not FINGERPRINT.fullmatch(fingerprint):
            return None
        return await self.keyring.get(fingerprint)

    async def mark_pgp_key(self, fingerprint: str, mark: str, value: bool) -> bool:
        """
        Set a key's C{"trusted"} or C{"introducer"} mark (see L{PGP_MARKS}).

        @return: whether there is such a key.
        """
        if not FINGERPRINT.fullmatch(fingerprint):
            return False
        if mark == "trusted":
            return await self.keyring.set_trusted(fingerprint, value)
        return await self.keyring.set_introducer(fingerprint, value)

    async def delete_pgp_key(self, fingerprint: str) -> bool:
        """
        @return: whether there was such a key.
        """
        return bool(FINGERPRINT.fullmatch(fingerprint)) and await self.keyring.delete(
            fingerprint)

    async def tail_log(self, name: str, lines: int, query: LogQuery | None = None
                       ) -> list[str]:
        """
        The last C{lines} lines of log C{name} that C{query} matches, read
        off the reactor thread.

        @raise KeyError: there is no such log.
        """
        log = self.logs[name]
        result: list[str] = await self.runner.run(log.tail, lines, query)
        return result

    async def appliance_role(self) -> str:
        """
        What this appliance does (Settings → General → Appliance role):
        C{"gateway"}, C{"webmail"} or C{"both"}.
        """
        role: str = await self.settings.get(GLOBAL, "appliance_role")
        return role

    # Guide §2.3.1, figure 7: relay domains, one by one -------------------------

    async def add_relay_domain(self, typed: str) -> str:
        """
        *Add domain*: C{typed} among the relay domains (already there: kept
        once).

        @return: the domain as it is stored.
        @raise ValueError: why it is no domain, in words for its field;
            nothing changed.
        """
        problem = domain_name_problem(typed.strip())
        if problem is not None:
            raise ValueError(problem)
        domain = typed.strip().lower().rstrip(".")
        refused = await self.mta.edit(
            lambda stored: {"relay_domains": [*stored.relay_domains, domain]})
        if refused:
            raise ValueError("; ".join(refused.values()))
        return domain

    async def remove_relay_domain(self, domain: str) -> bool:
        """
        C{domain} no longer a relay domain.

        @return: whether it was one.
        """
        domain = domain.strip().lower().rstrip(".")
        if domain not in (await self.mta.refresh()).relay_domains:
            return False
        await self.mta.edit(lambda stored: {
            "relay_domains": [d for d in stored.relay_domains if d != domain]})
        return True

    async def network(self) -> NetworkInfo:
        """
        The machine's network as it is now, read off the reactor thread.
        """
        info: NetworkInfo = await self.runner.run(self.network_info)
        return info

    async def replace_site_certificate(self, data: bytes, password: bytes | None
                                       ) -> SiteCertificateInfo:
        """
        The sites' TLS certificate replaced by the one in C{data}, off the
        reactor thread.

        @raise SiteCertificateError: why not; nothing changed.
        """
        assert self.site_tls is not None
        info: SiteCertificateInfo = await self.runner.run(
            self.site_tls.replace, data, password, self.certificates.now())
        return info

    # Settings → templates and Settings → DKIM -------------------------------

    async def builtin_template(self, setting: str) -> str:
        """
        The text a notification template setting stands for while it is
        empty: C{template_<name>} is C{<name>.txt}, as the notifier reads
        it.  Read off the reactor thread.

        @raise OSError: there is no such template.
        """
        name = setting.removeprefix("template_")
        text: str = await self.runner.run(builtin_template_text, name)
        return text

    async def dkim_record(self, scope: Scope) -> DkimRecord | None:
        """
        The DNS record to publish for the effective DKIM key, domain and
        selector at C{scope}; C{None} while one of them is not set.  The
        private key is read here and never leaves the server.
        """
        values = await self.settings.values(scope)
        key_pem, domain, selector = (
            values.resolve(scope, REGISTRY[name]).value
            for name in ("dkim_private_key", "dkim_domain", "dkim_selector"))
        if not (key_pem and domain and selector):
            return None
        record: DkimRecord = await self.runner.run(dkim_record_for_key, domain, selector, key_pem)
        return record

    # Guide §3.8 and §2.3.11: the tunnel certificates of both ends -------------

    async def tunnel_address(self, end: TunnelEnd, scope: Scope = GLOBAL) -> str:
        """
        The effective address of C{end} at C{scope}; C{""} when not set.
        """
        address: str = await self.settings.get(scope, end.setting)
        return address

    async def tunnel_certificate(self, end: TunnelEnd, email: str) -> str | None:
        """
        The thumbprint of a valid certificate with private key for C{email},
        valid for what C{end} does with it, or C{None}.
        """
        certificates = self.certificates
        identity = (await certificates.signing_identity(email) if end.purpose is Purpose.SIGNING
                    else await certificates.decryption_identity(email))
        return None if identity is None else thumbprint(identity[0])

    async def create_tunnel_certificate(
        self, end: TunnelEnd, scope: Scope = GLOBAL, email: str | None = None,
        subject: str | None = None, *, force: bool = False,
    ) -> TunnelCertificate:
        """
        Create the self-signed tunnel certificate and key of C{end} and
        whitelist it in the CTL: it chains to no root (guide §3.3 trusts the
        other side's copy the same way).

        @param email: blank or C{None} for C{end}'s address at C{scope}.
        @param subject: C{None} for C{end}'s proposed subject.
        @param force: create one even when a valid one exists.
        @raise TunnelCertificateRefused: nothing was created.
        """
        email = (email or "").strip() or await self.tunnel_address(end, scope)
        subject = end.subject if subject is None else subject.strip()
        errors = {}
        if not email:
            errors["email"] = (f"No {end.label} is set ({end.where}) and no email address "
                               "was given.")
        elif problem := email_problem(email):
            errors["email"] = f"{email!r} is not a valid email address: {problem}."
        if problem := subject_problem(subject):
            errors["subject"] = problem
        if errors:
            raise TunnelCertificateRefused(errors)
        existing = None if force else await self.tunnel_certificate(end, email)
        if existing is not None:
            return TunnelCertificate(existing, email, subject, created=False)
        created = await self.certificates.create_tunnel_certificate(email, subject)
        await self.certificates.set_ctl(created, CTLStatus.WHITELISTED)
        return TunnelCertificate(created, email, subject, created=True)


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


# The password a mailed PKCS#12 file gets: shown once to the admin who sent it.
PKCS12_PASSWORD_LENGTH = 20


@dataclass(frozen=True)
class PKCS12Sent:
    """
    A PKCS#12 file mailed to its owner, and where its password went: by
    SMS to C{phone}, or to the admin who sent it (C{password}), to pass on.
    """

    sent_to: str
    password: str | None
    phone: str | None


async def send_pkcs12(backend: AdminBackend, row: IssuedRow) -> PKCS12Sent:
    """
    Mail a certificate the CA issued, with its key, to its owner as a
    PKCS#12 file under a new random password, from the notification
    sender (else the postmaster).  The password goes by SMS when the owner
    has a mobile number and an SMS gateway is set (as PDF passwords do),
    first: if it cannot, nothing is mailed.  Otherwise it is the admin's to
    pass on by another channel.

    @raise CAError: nothing was sent, and why.
    """
    if backend.queue_runner is None or backend.ca is None:
        raise CAError("This node does not deliver mail.")
    values = (await backend.settings.by_address(["", row.email]))
    sender = values[""]["notification_sender"] or values[""]["postmaster"]
    if not sender:
        raise CAError("Set the notification sender (Settings → General): the mail is sent "
                      "from it.")
    password = random_password(PKCS12_PASSWORD_LENGTH, PASSWORD_ALPHABET)
    data = await backend.ca.pkcs12(row.thumbprint, password)
    user = values[row.email]
    phone = str(user["sms_phone"]) if user["sms_phone"] and user["sms_gateway_url"] \
        and backend.sms is not None else None
    if phone is not None:
        assert backend.sms is not None
        try:
            await backend.sms.send(SMSGatewayConfig.from_settings(user), phone,
                                   f"The password of your S/MIME certificate file "
                                   f"({row.email}.p12): {password}")
        except SMSError as e:
            raise CAError(f"The password could not be sent by SMS ({e}); nothing was "
                          "mailed.") from None
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = sender
    message["To"] = row.email
    message["Subject"] = "Your S/MIME certificate"
    message["Date"] = format_datetime(utc_from_seconds(backend.authority.clock.seconds()))
    message["Message-ID"] = f"<{secrets.token_hex(12)}@{backend.mta.current.my_hostname}>"
    message.set_content(
        f"Attached is your S/MIME certificate for {row.email} with its private key, as a "
        "PKCS#12 file. Import it into your mail program (Thunderbird: Settings, Privacy & "
        "Security, Manage Certificates, Your Certificates, Import; Outlook: open the file) "
        "to sign your mail and read mail encrypted to you.\n\n"
        + ("The file's password was sent to your mobile phone by text message."
           if phone else "The file's password reaches you separately, from your "
           "administrator.")
        + " Keep the file to yourself: whoever has it and the password can sign as you.\n")
    message.add_attachment(data, maintype="application", subtype="x-pkcs12",
                           filename=f"{row.email}.p12")
    await backend.queue_runner.submit(sender, [row.email], message.as_bytes(), "local (admin)")
    return PKCS12Sent(row.email, None if phone else password, phone)


async def release_quarantined(backend: AdminBackend, quarantine_id: str
                              ) -> QuarantinedRow | None:
    """
    Take a message out of the DLP quarantine and queue it for its
    recipients, marked so that processing lets it through DLP once: it is
    delivered as if no rule had matched (encrypted as the policy says).

    @return: it, or C{None} when it is not (or no longer) there.
    @raise RuntimeError: this node does not deliver mail.
    """
    if backend.queue_runner is None or backend.dlp is None:
        raise RuntimeError("this node does not deliver mail")
    taken = await backend.dlp.take(quarantine_id)
    if taken is None:
        return None
    row, content = taken
    await backend.queue_runner.submit(row.sender, list(row.recipients),
                                      backend.dlp.mark_released(row.id, content),
                                      "local (DLP release)")
    return row


class RecallRefused(Exception):
    """
    The recall request cannot be sent; the message says why.
    """


async def recall_through_tunnel(backend: AdminBackend, tunnel_id: str,
                                recipients: Sequence[str], by: str) -> tuple[str, str]:
    """
    Ask the webmail messenger, through the tunnel, to recall the message
    of tunnel C{tunnel_id} (as the MPA log names it) from C{recipients}'
    mailboxes (from everyone's when empty).

    @return: the request's queue id and its own tunnel id.
    @raise RecallRefused: this node does not deliver mail, or no tunnel
        can be made (the webmail sender or recipient is not set, or has no
        key or certificate).
    """
    if backend.queue_runner is None or backend.tunnels is None:
        raise RecallRefused("this node does not deliver mail")
    settings = (await backend.settings.by_address([""]))[""]
    made = await backend.tunnels.recall(tunnel_id, recipients, by, settings,
                                        backend.mta.current)
    if isinstance(made, str):
        raise RecallRefused(made.rstrip("."))
    message, tunnel = made
    queued = await backend.queue_runner.submit(message.sender, list(message.recipients),
                                               message.content, "local (webmail recall)",
                                               processed=True)
    return str(queued.envelope.queue_id), tunnel


# A PGP key's marks, and how the log says each value.
PGP_MARKS = {"trusted": ("untrusted", "trusted"),
             "introducer": ("not an introducer", "a trusted introducer")}
