"""
The encryption policy: for each recipient of a message, whether its mail
must, may or must not be encrypted, and how.

Everything here is a pure function of facts gathered beforehand (the
effective settings of sender and recipient, the message's subject and
headers, the recipient's valid certificates), so every branch is tested
without a database or a clock.

The decision for one recipient:

    1. Locality: a recipient in a relay domain, or whose *locality* is
       internal, is internal: its mail is not encrypted here (incoming
       S/MIME is opened instead).
    2. Encrypt mode, the stricter of the sender's and the recipient's:
       *no encryption* (never; triggers are ignored), *allow* (encrypt when
       a method can, else send as is), *mandatory* (encrypt, or bounce).
       Under *allow*, a matching subject or header trigger (the sender's)
       makes encryption mandatory for this message.
    3. The method chain, first that can wins: S/MIME (the recipient has a
       valid trusted encryption certificate and S/MIME is enabled for both;
       signed too when the sender's *S/MIME sign* is on), then PGP (the
       recipient has a valid key the administrator trusts and PGP is
       enabled for both; signed too when the sender's *PGP sign* is on and
       the sender has a key with its secret), then PDF (enabled for both,
       and the password can reach the recipient: a static password set for
       the recipient, a random one sent to the message's sender, put in the
       recipient's webmail mailbox through the tunnel, or sent by SMS to the
       recipient's mobile number), then
       the webmail tunnel (enabled for the sender and for the recipient;
       with the sender's *only if mandatory*, only for mandatory
       encryption).
    4. No method: a bounce when encryption is mandatory, the message as is
       when it is merely allowed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

Settings = Mapping[str, Any]

INTERNAL = "internal"
PLAIN = "plain"
SMIME = "smime"
PGP = "pgp"
PDF = "pdf"
WEBMAIL = "webmail"
BOUNCE = "bounce"

_STRICTNESS = {"no_encryption": 0, "allow": 1, "mandatory": 2}


@dataclass(frozen=True)
class Trigger:
    """
    A trigger that matched: which, and what to take out of the subject.

    @ivar kind: C{"subject"} or C{"header"}.
    @ivar remove: for a subject trigger with *remove pattern*: the subject's
        pattern, to be removed from the subject.
    """

    kind: str
    remove: str | None = None


def find_trigger(sender: Settings, subject: str, headers: Sequence[tuple[str, str]]
                 ) -> Trigger | None:
    """
    The sender's subject or header trigger, if it matches this message.

    @param subject: the decoded subject.
    @param headers: the message's header fields, decoded, in order.
    """
    if sender["subject_trigger_enabled"]:
        pattern = sender["subject_trigger"]
        if re.search(pattern, subject):
            return Trigger("subject", pattern if sender["subject_trigger_remove_pattern"]
                           else None)
    if sender["header_trigger_enabled"]:
        name, _, pattern = sender["header_trigger"].partition(":")
        name, pattern = name.strip().lower(), pattern.strip()
        for field_name, value in headers:
            if field_name.lower() == name and re.search(pattern, value.strip()):
                return Trigger("header")
    return None


@dataclass(frozen=True)
class Facts:
    """
    What the decision for one recipient rests on.

    @ivar relay_domain: the recipient's domain is one of the MTA's relay
        domains.
    @ivar certificates: the recipient's valid, trusted encryption
        certificates.
    @ivar can_sign: the sender has a valid signing certificate with its key.
    @ivar pgp_keys: the recipient's valid, trusted PGP keys.
    @ivar pgp_refused: why the recipient's other PGP keys cannot be used
        (untrusted, expired, revoked), or that there is none.
    @ivar can_pgp_sign: the sender has a valid PGP key with its secret.
    @ivar sender: the envelope sender (empty: the null sender).
    @ivar dlp: the DLP rules that make encryption mandatory for this
        message (their names), whatever the encrypt mode says.
    """

    recipient: str
    sender_settings: Settings
    recipient_settings: Settings
    relay_domain: bool
    trigger: Trigger | None = None
    certificates: Sequence[x509.Certificate] = ()
    can_sign: bool = False
    pgp_keys: Sequence[Any] = ()
    pgp_refused: str = ""
    can_pgp_sign: bool = False
    sender: str = ""
    dlp: str = ""


@dataclass(frozen=True)
class Decision:
    """
    What happens to one recipient's mail.

    @ivar method: L{INTERNAL}, L{PLAIN}, L{SMIME}, L{PGP}, L{PDF},
        L{WEBMAIL} or L{BOUNCE}.
    @ivar mandatory: encryption was mandatory (by mode or by trigger).
    @ivar sign: for S/MIME and PGP: sign with the sender's key too.
    @ivar reason: for a bounce, the reason its notice gives; for plain
        mail that could have been encrypted, why it was not.
    @ivar notes: MPA log lines, as C{(level, text)}.
    """

    recipient: str
    method: str
    mandatory: bool = False
    sign: bool = False
    reason: str = ""
    notes: tuple[tuple[str, str], ...] = field(default=())


def is_internal(facts: Facts) -> bool:
    return facts.relay_domain or facts.recipient_settings["locality"] == INTERNAL


def encrypt_mode(facts: Facts) -> str:
    """
    The stricter of the sender's and the recipient's encrypt mode;
    C{"mandatory"} when a DLP rule says the message must be encrypted.
    """
    if facts.dlp:
        return "mandatory"
    return max(facts.sender_settings["encrypt_mode"],
               facts.recipient_settings["encrypt_mode"], key=_STRICTNESS.__getitem__)


def needs_certificates(facts: Facts) -> bool:
    """
    Whether the decision could use the recipient's certificates (so they
    are worth looking up).
    """
    return (not is_internal(facts) and encrypt_mode(facts) != "no_encryption"
            and facts.sender_settings["smime_enabled"]
            and facts.recipient_settings["smime_enabled"])


def needs_pgp_keys(facts: Facts) -> bool:
    """
    Whether the decision could use the recipient's PGP keys: PGP is
    enabled for both and S/MIME cannot be used (so S/MIME mail costs no
    keyring look-up).
    """
    return (not is_internal(facts) and encrypt_mode(facts) != "no_encryption"
            and bool(facts.sender_settings["pgp_enabled"])
            and bool(facts.recipient_settings["pgp_enabled"])
            and not isinstance(_smime(facts, False), Decision))


def may_look_up_pgp_key(facts: Facts) -> bool:
    """
    Whether a recipient the keyring has no PGP key for may have it looked
    up in its domain's Web Key Directory: PGP would be used, the message
    must be encrypted, and the recipient's I{PGP key lookup (WKD)} is on.
    """
    return (needs_pgp_keys(facts) and bool(facts.recipient_settings["pgp_wkd"])
            and (encrypt_mode(facts) == "mandatory" or facts.trigger is not None))


# A method offers a decision, or says why it cannot (for the log and the
# bounce).
Offer = Callable[[Facts, bool], "Decision | str"]


def _smime(facts: Facts, mandatory: bool) -> Decision | str:
    if not (facts.sender_settings["smime_enabled"] and facts.recipient_settings["smime_enabled"]):
        return "S/MIME is disabled"
    if not facts.certificates:
        return "there is no valid S/MIME certificate for the recipient"
    return Decision(facts.recipient, SMIME, mandatory,
                    sign=facts.can_sign and bool(facts.sender_settings["smime_sign"]))


def _pgp(facts: Facts, mandatory: bool) -> Decision | str:
    if not (facts.sender_settings["pgp_enabled"] and facts.recipient_settings["pgp_enabled"]):
        return "PGP is disabled"
    if not facts.pgp_keys:
        return facts.pgp_refused or "there is no PGP key for the recipient"
    return Decision(facts.recipient, PGP, mandatory,
                    sign=facts.can_pgp_sign and bool(facts.sender_settings["pgp_sign"]))


def _pdf(facts: Facts, mandatory: bool) -> Decision | str:
    if not (facts.sender_settings["pdf_enabled"] and facts.recipient_settings["pdf_enabled"]):
        return "PDF is disabled"
    mode = facts.recipient_settings["pdf_password_mode"]
    if mode == "static" and not facts.recipient_settings["pdf_password"]:
        return "there is no PDF password for the recipient (PDF password mode: static)"
    if mode == "random_to_sender" and not facts.sender:
        return ("the PDF password cannot be sent: the message has no sender (PDF password "
                "mode: random, sent to the sender)")
    if mode == "portal" and not (facts.sender_settings["webmail_sender"]
                                 and facts.sender_settings["webmail_recipient"]):
        return ("the PDF password cannot be put in the portal: the webmail sender and "
                "webmail recipient are not set (PDF password mode: portal)")
    if mode == "sms" and not facts.recipient_settings["sms_phone"]:
        return "there is no mobile number for the recipient (PDF password mode: SMS)"
    if mode == "sms" and not facts.sender_settings["sms_gateway_url"]:
        return "no SMS gateway is set (PDF password mode: SMS)"
    return Decision(facts.recipient, PDF, mandatory)


def _webmail(facts: Facts, mandatory: bool) -> Decision | str:
    if not facts.sender_settings["webmail_enabled"]:
        return "Webmail is disabled for the sender"
    if not facts.recipient_settings["webmail_enabled"]:
        return "Webmail is disabled for the recipient"
    if facts.sender_settings["webmail_only_if_mandatory"] and not mandatory:
        return "Webmail is only used when encryption is mandatory"
    return Decision(facts.recipient, WEBMAIL, mandatory)


# The method chain, in order (the guide's: S/MIME, PGP, PDF, webmail).
METHODS: tuple[tuple[str, Offer], ...] = ((SMIME, _smime), (PGP, _pgp), (PDF, _pdf),
                                          (WEBMAIL, _webmail))


def without_pdf(refusal: str) -> tuple[tuple[str, Offer], ...]:
    """
    The chain with PDF refusing with C{refusal}: for a recipient whose PDF
    password could not be delivered after all (the SMS gateway refused
    it, say), so the next method is used.  The methods before PDF refuse
    again, as they did (the facts are the same), for the whole reason.
    """
    return tuple((name, (lambda facts, mandatory: refusal) if name == PDF else offer)
                 for name, offer in METHODS)


def decide(facts: Facts, methods: Sequence[tuple[str, Offer]] = METHODS) -> Decision:
    """
    The decision for one recipient.
    """
    if is_internal(facts):
        return Decision(facts.recipient, INTERNAL)
    mode = encrypt_mode(facts)
    if mode == "no_encryption":
        return Decision(facts.recipient, PLAIN)
    mandatory = mode == "mandatory" or facts.trigger is not None
    refusals: list[str] = []
    notes: list[tuple[str, str]] = []
    for name, offer in methods:
        offered = offer(facts, mandatory)
        if isinstance(offered, Decision):
            return Decision(offered.recipient, offered.method, offered.mandatory,
                            offered.sign, offered.reason, tuple(notes))
        refusals.append(offered)
        if name == PGP and facts.pgp_refused:
            # A key the recipient has but that cannot be used: the
            # administrator needs to know which and why.
            notes.append(("info", f"PGP not used: {offered}; Recipient: {facts.recipient}"))
        if name == PDF and offered != "PDF is disabled":
            # Enabled, but the password cannot reach the recipient.
            notes.append(("info", f"PDF not used: {offered}; Recipient: {facts.recipient}"))
        if name == WEBMAIL and offered.startswith("Webmail is disabled"):
            # The guide's MPA log line (Troubleshooting, "Webmail is disabled").
            notes.append(("info", f"{offered}; Recipient: {facts.recipient}"))
    reason = "; ".join(refusals)
    if mandatory:
        why = (f"by the DLP rule {facts.dlp}" if facts.dlp else "by trigger"
               if mode != "mandatory" else "by policy")
        return Decision(facts.recipient, BOUNCE, True,
                        reason=f"Encryption is mandatory ({why}) but no method could "
                               f"encrypt the message: {reason}.", notes=tuple(notes))
    return Decision(facts.recipient, PLAIN, reason=reason, notes=tuple(notes))


def remove_pattern(subject: str, pattern: str) -> str:
    """
    C{subject} without the trigger's matches (and the spaces they leave).
    """
    return " ".join(re.sub(pattern, " ", subject).split())
