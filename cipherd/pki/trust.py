"""
Trust decisions with reasons.

A certificate is valid for a purpose when it is not blacklisted in the
certificate trust list (CTL); is inside its validity period; allows the
purpose by its key usage and extended key usage (absent means unrestricted,
RFC 8550 §4.4); is whitelisted in the CTL or chains, through valid CA
certificates, to a trusted root; and neither it nor any CA on that chain is
revoked by an imported CRL.  Every refusal says which of these failed.

Pure functions over a L{TrustContext}: no database, no clock of their own.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509.oid import ExtendedKeyUsageOID

from cipherd.pki.certs import describe_name, is_ca, issued_by, thumbprint

MAX_CHAIN = 10


class Purpose(enum.Enum):
    ENCRYPTION = "encryption"
    SIGNING = "signing"
    ANY = "any"


class CTLStatus(enum.Enum):
    WHITELISTED = "whitelisted"
    BLACKLISTED = "blacklisted"


@dataclass(frozen=True)
class Verdict:
    """
    @ivar valid: usable for the purpose asked.
    @ivar reason: why not; when valid, how it is trusted.
    @ivar chain: the path found, from the certificate up to its root.
    """

    valid: bool
    reason: str
    chain: list[x509.Certificate] = field(default_factory=list)


@dataclass
class TrustContext:
    """
    What a trust decision may use.

    @ivar roots: trusted root certificates.
    @ivar intermediates: other certificates to build paths through (the
        store's, and those embedded in a message).
    @ivar ctl: C{{thumbprint: status}}.
    @ivar crls: imported CRLs.
    """

    roots: Sequence[x509.Certificate] = ()
    intermediates: Sequence[x509.Certificate] = ()
    ctl: Mapping[str, CTLStatus] = field(default_factory=dict)
    crls: Sequence[x509.CertificateRevocationList] = ()

    def with_certificates(self, extra: Iterable[x509.Certificate]) -> TrustContext:
        return TrustContext(self.roots, [*self.intermediates, *extra], self.ctl, self.crls)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _validity_problem(cert: x509.Certificate, now: datetime, what: str) -> str | None:
    # RFC 5280 §4.1.2.5: both bounds are inclusive.
    if now < cert.not_valid_before_utc:
        return f"{what} is not valid before {_when(cert.not_valid_before_utc)}."
    if now > cert.not_valid_after_utc:
        return f"{what} expired on {_when(cert.not_valid_after_utc)}."
    return None


def usage_problem(cert: x509.Certificate, purpose: Purpose) -> str | None:
    """
    Why the key usage or extended key usage forbids C{purpose}, or C{None}.
    """
    if purpose is Purpose.ANY:
        return None
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None:
        if purpose is Purpose.ENCRYPTION and not usage.key_encipherment:
            return "Its key usage does not allow encryption (keyEncipherment)."
        if purpose is Purpose.SIGNING and not (usage.digital_signature
                                               or usage.content_commitment):
            return "Its key usage does not allow signing (digitalSignature, nonRepudiation)."
    try:
        extended = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    allowed = {ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
    if not allowed & set(extended):
        return "Its extended key usage does not allow email protection."
    return None


def _revocation_problem(
    cert: x509.Certificate, issuer: x509.Certificate, context: TrustContext, what: str
) -> str | None:
    for crl in context.crls:
        if crl.issuer != issuer.subject:
            continue
        try:
            if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                continue
        except (TypeError, UnsupportedAlgorithm):
            continue
        revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if revoked is not None:
            return f"{what} was revoked on {_when(revoked.revocation_date_utc)}."
    return None


def check(
    cert: x509.Certificate, purpose: Purpose, now: datetime, context: TrustContext
) -> Verdict:
    """
    Decide whether C{cert} may be used for C{purpose} at C{now}.
    """
    status = context.ctl.get(thumbprint(cert))
    if status is CTLStatus.BLACKLISTED:
        return Verdict(False, "The certificate is blacklisted in the certificate trust list.")
    problem = _validity_problem(cert, now, "The certificate") or usage_problem(cert, purpose)
    if problem:
        return Verdict(False, problem)
    if status is CTLStatus.WHITELISTED:
        return Verdict(True, "The certificate is whitelisted in the certificate trust list.",
                       [cert])

    root_prints = {thumbprint(r) for r in context.roots}
    chain = [cert]
    current = cert
    while thumbprint(current) not in root_prints:
        if len(chain) > MAX_CHAIN:
            return Verdict(False, "The certificate chain is too long.", chain)
        issuers = [c for c in (*context.roots, *context.intermediates)
                   if c is not current and issued_by(current, c)]
        # Prefer a root, then a valid CA, so an expired duplicate loses.
        issuers.sort(key=lambda c: (thumbprint(c) not in root_prints,
                                    _validity_problem(c, now, "") is not None))
        if not issuers:
            return Verdict(
                False,
                "The certificate is not trusted: there is no path to a trusted root "
                f"(no certificate of the issuer {describe_name(current.issuer)}).",
                chain,
            )
        issuer = issuers[0]
        issuer_name = f"The CA certificate {describe_name(issuer.subject)}"
        if context.ctl.get(thumbprint(issuer)) is CTLStatus.BLACKLISTED:
            return Verdict(False, f"{issuer_name} is blacklisted in the certificate trust "
                                  "list.", chain)
        if thumbprint(issuer) not in root_prints and not is_ca(issuer):
            return Verdict(False, f"{issuer_name} is not a CA certificate.", chain)
        problem = (_validity_problem(issuer, now, issuer_name)
                   or _revocation_problem(current, issuer, context,
                                          "The certificate" if current is cert
                                          else f"The CA certificate "
                                               f"{describe_name(current.subject)}"))
        if problem:
            return Verdict(False, problem, chain)
        chain.append(issuer)
        current = issuer
    return Verdict(True, f"The certificate chains to the trusted root "
                         f"{describe_name(chain[-1].subject)}.", chain)


def crl_problem(
    crl: x509.CertificateRevocationList, now: datetime, context: TrustContext
) -> str | None:
    """
    Why C{crl} cannot be relied on, or C{None}: it must be signed by a
    certificate of its issuer that is itself trusted (a root, or a CA that
    chains to one) and allowed to sign CRLs.  A forged CRL must not replace
    the real one and so lift a revocation.
    """
    candidates = [c for c in (*context.roots, *context.intermediates)
                  if c.subject == crl.issuer]
    if not candidates:
        return (f"there is no certificate of its issuer {describe_name(crl.issuer)} to check "
                "its signature; import the CA certificate first")
    problems = []
    for candidate in candidates:
        try:
            signed = crl.is_signature_valid(candidate.public_key())  # type: ignore[arg-type]
        except (TypeError, UnsupportedAlgorithm):
            signed = False
        if not signed:
            problems.append("its signature does not verify with the certificate of its issuer")
            continue
        try:
            usage = candidate.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            usage = None
        if usage is not None and not usage.crl_sign:
            problems.append("the key usage of its issuer's certificate does not allow "
                            "signing CRLs (cRLSign)")
            continue
        verdict = check(candidate, Purpose.ANY, now, context)
        if not verdict.valid:
            problems.append(f"its issuer is not trusted: {verdict.reason}")
            continue
        return None
    # The reason of the candidate that came closest.
    return problems[-1]
