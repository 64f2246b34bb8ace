"""
The encryption policy, branch by branch: locality, the stricter encrypt
mode, triggers (and removing them from the subject), the method chain
S/MIME → webmail (enabled for sender and recipient, only if mandatory),
and what is left: a bounce when mandatory, the message as is when allowed.
"""

from __future__ import annotations

from typing import Any

import pytest

from cipherd.core.headers import (
    header_fields,
    replace_subject,
    subject,
    with_fields,
    without_fields,
)
from cipherd.mpa import policy
from cipherd.mpa.policy import BOUNCE, INTERNAL, PLAIN, SMIME, WEBMAIL, Facts, Trigger, decide
from cipherd.settings import REGISTRY

DEFAULTS = {name: prop.default for name, prop in REGISTRY.items()}
CERTIFICATE: Any = object()  # the decision only asks whether there is one


def settings(**values: Any) -> dict[str, Any]:
    return {**DEFAULTS, **values}


def facts(sender: dict[str, Any] | None = None, recipient: dict[str, Any] | None = None, *,
          relay_domain: bool = False, trigger: Trigger | None = None,
          certificates: bool = False, can_sign: bool = False) -> Facts:
    return Facts("bob@partner.example", sender or settings(), recipient or settings(),
                 relay_domain, trigger, (CERTIFICATE,) if certificates else (), can_sign)


WEBMAIL_ON = {"webmail_enabled": True}


def test_relay_domains_and_internal_locality_are_internal() -> None:
    mandatory = settings(encrypt_mode="mandatory")
    assert decide(facts(mandatory, relay_domain=True)).method == INTERNAL
    assert decide(facts(mandatory, settings(locality="internal"))).method == INTERNAL
    assert decide(facts(mandatory, certificates=True)).method == SMIME


@pytest.mark.parametrize("sender_mode, recipient_mode, expected", [
    ("no_encryption", "no_encryption", PLAIN),
    ("no_encryption", "allow", SMIME),
    ("allow", "no_encryption", SMIME),
    ("mandatory", "no_encryption", SMIME),
    ("no_encryption", "mandatory", SMIME),
])
def test_the_stricter_mode_applies(sender_mode: str, recipient_mode: str,
                                   expected: str) -> None:
    decision = decide(facts(settings(encrypt_mode=sender_mode),
                            settings(encrypt_mode=recipient_mode), certificates=True))
    assert decision.method == expected


def test_no_encryption_ignores_triggers() -> None:
    decision = decide(facts(settings(), trigger=Trigger("subject"), certificates=True))
    assert (decision.method, decision.mandatory) == (PLAIN, False)


def test_smime_signs_when_the_sender_can_and_wants_to() -> None:
    mandatory = settings(encrypt_mode="mandatory")
    assert decide(facts(mandatory, certificates=True, can_sign=True)).sign is True
    assert decide(facts(mandatory, certificates=True, can_sign=False)).sign is False
    no_sign = settings(encrypt_mode="mandatory", smime_sign=False)
    assert decide(facts(no_sign, certificates=True, can_sign=True)).sign is False


def test_smime_disabled_for_either_side_goes_down_the_chain() -> None:
    for sender, recipient in [(settings(encrypt_mode="mandatory", smime_enabled=False),
                               settings()),
                              (settings(encrypt_mode="mandatory"),
                               settings(smime_enabled=False))]:
        assert not policy.needs_certificates(facts(sender, recipient))
        decision = decide(facts(sender, recipient, certificates=True))
        assert decision.method == BOUNCE and "S/MIME is disabled" in decision.reason


def test_webmail_when_there_is_no_certificate() -> None:
    decision = decide(facts(settings(encrypt_mode="mandatory", **WEBMAIL_ON),
                            settings(**WEBMAIL_ON)))
    assert (decision.method, decision.mandatory, decision.notes) == (WEBMAIL, True, ())


@pytest.mark.parametrize("sender_on, recipient_on, line", [
    (False, True, "Webmail is disabled for the sender"),
    (True, False, "Webmail is disabled for the recipient"),
])
def test_webmail_disabled_is_logged_as_the_guide_says_and_mandatory_bounces(
        sender_on: bool, recipient_on: bool, line: str) -> None:
    decision = decide(facts(settings(encrypt_mode="mandatory", webmail_enabled=sender_on),
                            settings(webmail_enabled=recipient_on)))
    assert decision.method == BOUNCE and decision.mandatory
    assert decision.notes == (("info", f"{line}; Recipient: bob@partner.example"),)
    assert decision.reason == (
        "Encryption is mandatory (by policy) but no method could encrypt the message: there "
        f"is no valid S/MIME certificate for the recipient; there is no PGP key for the "
        f"recipient; PDF is disabled; {line}.")


def test_allowed_falls_back_to_plain_and_says_why() -> None:
    decision = decide(facts(settings(encrypt_mode="allow")))
    assert (decision.method, decision.mandatory) == (PLAIN, False)
    assert decision.reason == ("there is no valid S/MIME certificate for the recipient; "
                               "there is no PGP key for the recipient; PDF is disabled; "
                               "Webmail is disabled for the sender")


def test_only_if_mandatory() -> None:
    sender = settings(encrypt_mode="allow", webmail_only_if_mandatory=True, **WEBMAIL_ON)
    allowed = decide(facts(sender, settings(**WEBMAIL_ON)))
    assert allowed.method == PLAIN
    assert "only used when encryption is mandatory" in allowed.reason
    triggered = decide(facts(sender, settings(**WEBMAIL_ON), trigger=Trigger("subject")))
    assert (triggered.method, triggered.mandatory) == (WEBMAIL, True)
    mandatory = decide(facts(settings(encrypt_mode="mandatory", webmail_only_if_mandatory=True,
                                      **WEBMAIL_ON), settings(**WEBMAIL_ON)))
    assert mandatory.method == WEBMAIL
    without = decide(facts(settings(encrypt_mode="allow", **WEBMAIL_ON),
                           settings(**WEBMAIL_ON)))
    assert (without.method, without.mandatory) == (WEBMAIL, False)


def test_a_trigger_makes_allowed_encryption_mandatory() -> None:
    decision = decide(facts(settings(encrypt_mode="allow"), trigger=Trigger("header")))
    assert (decision.method, decision.mandatory) == (BOUNCE, True)
    assert decision.reason.startswith("Encryption is mandatory (by trigger)")


def test_the_chain_takes_new_methods() -> None:
    def pgp(facts: Facts, mandatory: bool) -> policy.Decision | str:
        return policy.Decision(facts.recipient, "pgp", mandatory)

    methods = (policy.METHODS[0], ("pgp", pgp), policy.METHODS[1])
    mandatory = settings(encrypt_mode="mandatory")
    assert decide(facts(mandatory), methods).method == "pgp"
    assert decide(facts(mandatory, certificates=True), methods).method == SMIME


# Triggers -------------------------------------------------------------------


def test_subject_trigger_and_its_removal() -> None:
    sender = settings(subject_trigger_enabled=True)
    found = policy.find_trigger(sender, "Offer [Encrypt] for you", [])
    assert found == Trigger("subject", r"(?i)\[encrypt\]")
    assert policy.remove_pattern("Offer [Encrypt] for you", found.remove or "") == \
        "Offer for you"
    kept = policy.find_trigger(settings(subject_trigger_enabled=True,
                                        subject_trigger_remove_pattern=False), "[encrypt]", [])
    assert kept == Trigger("subject", None)
    assert policy.find_trigger(settings(), "[encrypt]", []) is None  # not enabled
    assert policy.find_trigger(sender, "nothing here", []) is None


def test_header_trigger() -> None:
    sender = settings(header_trigger_enabled=True)
    assert policy.find_trigger(sender, "", [("x-encrypt", " yes ")]) == Trigger("header")
    assert policy.find_trigger(sender, "", [("x-encrypt", "no")]) is None
    assert policy.find_trigger(sender, "", [("x-other", "yes")]) is None


# The header, on raw bytes ---------------------------------------------------

MESSAGE = (b"Received: from x\r\n\tby y; Sat, 28 Nov 2026 10:00:00 +0000\r\n"
           b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe_=5Bencrypt=5D?=\r\n"
           b"X-Cipherd-Info-Signer-0: forged\r\n"
           b"X-Encrypt: yes\r\n\r\nBody\r\nSubject: not a header\r\n")


def test_header_fields_are_decoded_and_the_body_is_left_alone() -> None:
    assert header_fields(MESSAGE)[1:] == [("subject", "Grüße [encrypt]"),
                                          ("x-cipherd-info-signer-0", "forged"),
                                          ("x-encrypt", "yes")]
    assert subject(MESSAGE) == "Grüße [encrypt]"
    changed = replace_subject(MESSAGE, "Grüße")
    assert subject(changed) == "Grüße"
    assert changed.endswith(b"\r\n\r\nBody\r\nSubject: not a header\r\n")
    assert changed.startswith(MESSAGE[:MESSAGE.index(b"Subject")])
    assert subject(replace_subject(MESSAGE, "a\r\nBcc: x@example.org")) == "a Bcc: x@example.org"


def test_security_fields_are_ours_alone() -> None:
    cleaned = without_fields(MESSAGE, "X-Cipherd-Info-")
    assert b"forged" not in cleaned and cleaned.endswith(b"X-Encrypt: yes\r\n\r\nBody\r\n"
                                                         b"Subject: not a header\r\n")
    added = with_fields(cleaned, [("X-Cipherd-Info-Signed", "True")])
    assert added.startswith(b"X-Cipherd-Info-Signed: True\r\nReceived: from x\r\n")
