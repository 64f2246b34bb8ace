"""
Trust checks: every verdict with its reason, at the exact validity
boundaries.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from cipherd.pki.certs import thumbprint
from cipherd.pki.trust import CTLStatus, Purpose, TrustContext, check
from tests.pki_factory import (
    EMAIL_EKU,
    END,
    SMIME_USAGE,
    START,
    make_ca,
    make_crl,
    make_user,
)

ONE_SECOND = timedelta(seconds=1)
NOW = START + timedelta(days=100)


@pytest.fixture(scope="module")
def pki() -> dict[str, object]:
    root = make_ca("Test Root")
    intermediate = make_ca("Test Intermediate", issuer=root)
    alice = make_user("alice@example.com", intermediate, key_usage=SMIME_USAGE, eku=EMAIL_EKU)
    return {"root": root, "intermediate": intermediate, "alice": alice}


def context(pki: dict[str, object], **kw: object) -> TrustContext:
    base = {"roots": [pki["root"].cert],  # type: ignore[attr-defined]
            "intermediates": [pki["intermediate"].cert]}  # type: ignore[attr-defined]
    base.update(kw)
    return TrustContext(**base)  # type: ignore[arg-type]


def test_chain_to_a_root(pki: dict) -> None:
    verdict = check(pki["alice"].cert, Purpose.ENCRYPTION, NOW, context(pki))
    assert verdict.valid
    assert verdict.reason == "The certificate chains to the trusted root CN=Test Root."
    assert [c.subject for c in verdict.chain] == [
        pki["alice"].cert.subject, pki["intermediate"].cert.subject, pki["root"].cert.subject]


def test_no_path_to_a_root(pki: dict) -> None:
    verdict = check(pki["alice"].cert, Purpose.ENCRYPTION, NOW,
                    TrustContext(roots=[pki["root"].cert]))
    assert not verdict.valid
    assert verdict.reason == ("The certificate is not trusted: there is no path to a trusted "
                              "root (no certificate of the issuer CN=Test Intermediate).")


@pytest.mark.parametrize(
    ("moment", "valid", "reason"),
    [
        (START - ONE_SECOND, False,
         "The certificate is not valid before 2026-01-01 00:00:00 UTC."),
        (START, True, ""),
        (END, True, ""),
        (END + ONE_SECOND, False, "The certificate expired on 2027-01-01 00:00:00 UTC."),
    ],
)
def test_validity_boundaries_are_inclusive(pki: dict, moment, valid, reason) -> None:
    verdict = check(pki["alice"].cert, Purpose.SIGNING, moment, context(pki))
    assert verdict.valid is valid
    if reason:
        assert verdict.reason == reason


def test_the_clock_decides(pki: dict) -> None:
    """
    The same check through a task.Clock, as the store runs it.
    """
    from twisted.internet.task import Clock

    from cipherd.core.clock import utc_from_seconds

    clock = Clock()
    clock.advance(END.timestamp())
    assert check(pki["alice"].cert, Purpose.ANY, utc_from_seconds(clock.seconds()),
                 context(pki)).valid
    clock.advance(1)
    verdict = check(pki["alice"].cert, Purpose.ANY, utc_from_seconds(clock.seconds()),
                    context(pki))
    assert verdict.reason == "The certificate expired on 2027-01-01 00:00:00 UTC."


def test_an_expired_intermediate_breaks_the_chain() -> None:
    root = make_ca("Root")
    old = make_ca("Old Intermediate", issuer=root, not_after=START + timedelta(days=10))
    user = make_user("bob@example.com", old)
    verdict = check(user.cert, Purpose.ANY, NOW,
                    TrustContext(roots=[root.cert], intermediates=[old.cert]))
    assert verdict.reason == ("The CA certificate CN=Old Intermediate expired on "
                              "2026-01-11 00:00:00 UTC.")


def test_an_end_entity_cannot_issue() -> None:
    root = make_ca("Root")
    fake_ca = make_user("ca@example.com", root)
    victim = make_user("victim@example.com", fake_ca)
    verdict = check(victim.cert, Purpose.ANY, NOW,
                    TrustContext(roots=[root.cert], intermediates=[fake_ca.cert]))
    assert verdict.reason == ("The CA certificate CN=Ca, EMAILADDRESS=ca@example.com is not "
                              "a CA certificate.")


def test_blacklisted_beats_everything(pki: dict) -> None:
    ctl = {thumbprint(pki["alice"].cert): CTLStatus.BLACKLISTED}
    verdict = check(pki["alice"].cert, Purpose.ENCRYPTION, NOW, context(pki, ctl=ctl))
    assert verdict.reason == "The certificate is blacklisted in the certificate trust list."


def test_a_blacklisted_ca_breaks_the_chain(pki: dict) -> None:
    ctl = {thumbprint(pki["intermediate"].cert): CTLStatus.BLACKLISTED}
    verdict = check(pki["alice"].cert, Purpose.ENCRYPTION, NOW, context(pki, ctl=ctl))
    assert verdict.reason == ("The CA certificate CN=Test Intermediate is blacklisted in the "
                              "certificate trust list.")


def test_a_whitelisted_self_signed_certificate_is_trusted() -> None:
    tunnel = make_user("webmail@example.com", None, key_usage=SMIME_USAGE)
    assert check(tunnel.cert, Purpose.SIGNING, NOW, TrustContext()).reason.startswith(
        "The certificate is not trusted")
    verdict = check(tunnel.cert, Purpose.SIGNING, NOW,
                    TrustContext(ctl={thumbprint(tunnel.cert): CTLStatus.WHITELISTED}))
    assert verdict.valid
    assert verdict.reason == "The certificate is whitelisted in the certificate trust list."


def test_whitelisting_does_not_revive_an_expired_certificate() -> None:
    tunnel = make_user("webmail@example.com", None)
    verdict = check(tunnel.cert, Purpose.SIGNING, END + ONE_SECOND,
                    TrustContext(ctl={thumbprint(tunnel.cert): CTLStatus.WHITELISTED}))
    assert verdict.reason == "The certificate expired on 2027-01-01 00:00:00 UTC."


def test_revoked_by_a_crl(pki: dict) -> None:
    when = START + timedelta(days=50)
    crl = make_crl(pki["intermediate"], [(pki["alice"].cert, when)])
    verdict = check(pki["alice"].cert, Purpose.ENCRYPTION, NOW, context(pki, crls=[crl]))
    assert verdict.reason == "The certificate was revoked on 2026-02-20 00:00:00 UTC."


def test_a_crl_with_a_bad_signature_is_ignored(pki: dict) -> None:
    impostor = make_ca("Test Intermediate")  # same name, other key
    crl = make_crl(impostor, [(pki["alice"].cert, START)])
    assert check(pki["alice"].cert, Purpose.ENCRYPTION, NOW, context(pki, crls=[crl])).valid


def test_a_revoked_intermediate(pki: dict) -> None:
    crl = make_crl(pki["root"], [(pki["intermediate"].cert, START)])
    verdict = check(pki["alice"].cert, Purpose.ENCRYPTION, NOW, context(pki, crls=[crl]))
    assert verdict.reason == ("The CA certificate CN=Test Intermediate was revoked on "
                              "2026-01-01 00:00:00 UTC.")


@pytest.mark.parametrize(
    ("usage", "eku", "purpose", "reason"),
    [
        ({"digital_signature": True}, None, Purpose.ENCRYPTION,
         "Its key usage does not allow encryption (keyEncipherment)."),
        ({"key_encipherment": True}, None, Purpose.SIGNING,
         "Its key usage does not allow signing (digitalSignature, nonRepudiation)."),
        (None, [ExtendedKeyUsageOID.SERVER_AUTH], Purpose.SIGNING,
         "Its extended key usage does not allow email protection."),
    ],
)
def test_key_usage_must_allow_the_purpose(pki: dict, usage, eku, purpose, reason) -> None:
    user = make_user("carol@example.com", pki["intermediate"], key_usage=usage, eku=eku)
    assert check(user.cert, purpose, NOW, context(pki)).reason == reason


@pytest.mark.parametrize("purpose", list(Purpose))
def test_no_usage_extensions_means_unrestricted(pki: dict, purpose: Purpose) -> None:
    user = make_user("dave@example.com", pki["intermediate"])
    assert check(user.cert, purpose, NOW, context(pki)).valid


def test_non_repudiation_alone_allows_signing(pki: dict) -> None:
    user = make_user("erin@example.com", pki["intermediate"],
                     key_usage={"content_commitment": True})
    assert check(user.cert, Purpose.SIGNING, NOW, context(pki)).valid
