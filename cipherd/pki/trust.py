"""
Trust decisions with reasons.

A certificate is valid for a purpose when it is not blacklisted in the
certificate trust list (CTL); is inside its validity period; allows the
purpose by its key usage and extended key usage (absent means unrestricted,
RFC 8550 §4.4); is whitelisted in the CTL or chains, through valid CA
certificates, to a trusted root; and neither it nor any CA on that chain is
revoked by an imported CRL or by an OCSP answer the caller fetched (see
L{cipherd.pki.ocsp}).  Revocation fails open by default: a certificate
whose status no current CRL or OCSP answer gives is not refused for that;
with L{TrustContext.fail_closed} it is.  Every refusal says which of these
failed.

Pure functions over a L{TrustContext}: no database, no clock of their own.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from cipherd.pki import cms
from cipherd.pki.certs import (
    describe_name,
    email_addresses,
    is_ca,
    issued_by,
    name_key,
    same_name,
    thumbprint,
)

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


class OCSPStatus(enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"  # the responder does not know the certificate
    UNAVAILABLE = "unavailable"  # no usable answer: unreachable, refused, forged


@dataclass(frozen=True)
class OCSPAnswer:
    """
    What an OCSP responder said of one certificate, already checked (see
    L{cipherd.pki.ocsp.read_response}).

    @ivar responder: the responder's URL.
    @ivar reason: for L{OCSPStatus.UNKNOWN} and L{OCSPStatus.UNAVAILABLE},
        why there is no status.
    @ivar this_update: when the status was known to be correct.
    @ivar next_update: until when it may be relied on (C{None}: the
        responder keeps no schedule).
    @ivar revoked_at: for L{OCSPStatus.REVOKED}.
    """

    status: OCSPStatus
    responder: str
    reason: str = ""
    this_update: datetime | None = None
    next_update: datetime | None = None
    revoked_at: datetime | None = None

    def current(self, now: datetime) -> bool:
        until = self.until()
        return (self.this_update is not None and self.this_update <= now + CLOCK_SKEW
                and until is not None and now <= until + CLOCK_SKEW)

    def until(self) -> datetime | None:
        """
        Until when it may be relied on: its nextUpdate, or
        L{UNSCHEDULED_LIFETIME} after its thisUpdate when it has none.
        """
        if self.next_update is not None:
            return self.next_update
        if self.this_update is not None:
            return self.this_update + UNSCHEDULED_LIFETIME
        return None


# How far a responder's clock and ours may disagree.
CLOCK_SKEW = timedelta(minutes=5)
# How long an answer without nextUpdate ("newer information is always
# available", RFC 6960 §4.2.2.1) counts after its thisUpdate.
UNSCHEDULED_LIFETIME = timedelta(minutes=5)


def ocsp_key(cert: x509.Certificate, issuer: x509.Certificate) -> tuple[str, int]:
    """
    What L{TrustContext.ocsp} knows a certificate's answer by.
    """
    return thumbprint(issuer), cert.serial_number


@dataclass
class TrustContext:
    """
    What a trust decision may use.

    @ivar roots: trusted root certificates.
    @ivar intermediates: other certificates to build paths through (the
        store's, and those embedded in a message).
    @ivar ctl: C{{thumbprint: status}}.
    @ivar crls: imported CRLs.
    @ivar ocsp: OCSP answers by L{ocsp_key}.
    @ivar fail_closed: a certificate on the path whose revocation status
        neither a current CRL nor a current OCSP answer gives is refused.
    """

    roots: Sequence[x509.Certificate] = ()
    intermediates: Sequence[x509.Certificate] = ()
    ctl: Mapping[str, CTLStatus] = field(default_factory=dict)
    crls: Sequence[x509.CertificateRevocationList] = ()
    ocsp: Mapping[tuple[str, int], OCSPAnswer] = field(default_factory=dict)
    fail_closed: bool = False

    def with_certificates(self, extra: Iterable[x509.Certificate]) -> TrustContext:
        extra = list(extra)
        # Index the extra certificates on top of this context's index (the
        # store's certificates are indexed once, not once per message).
        index = dict(self._by_subject)
        for cert in extra:
            key = name_key(cert.subject)
            index[key] = [*index.get(key, []), cert]
        return self._derived(index, intermediates=[*self.intermediates, *extra])

    def with_revocation(self, ocsp: Mapping[tuple[str, int], OCSPAnswer],
                        fail_closed: bool) -> TrustContext:
        return self._derived(self._by_subject, ocsp=ocsp, fail_closed=fail_closed)

    def _derived(self, by_subject: dict[Any, list[x509.Certificate]],
                 **changes: Any) -> TrustContext:
        context = replace(self, **changes)
        context.__dict__["_by_subject"] = by_subject
        context.__dict__["_crls_by_issuer"] = self._crls_by_issuer
        context.__dict__["root_prints"] = self.root_prints
        return context

    def named(self, name: x509.Name) -> list[x509.Certificate]:
        """
        The roots and intermediates whose subject is C{name} (RFC 5280 name
        matching), roots first.
        """
        return self._by_subject.get(name_key(name), [])

    def crls_of(self, name: x509.Name) -> list[x509.CertificateRevocationList]:
        return self._crls_by_issuer.get(name_key(name), [])

    @functools.cached_property
    def root_prints(self) -> frozenset[str]:
        return frozenset(thumbprint(r) for r in self.roots)

    @functools.cached_property
    def _by_subject(self) -> dict[Any, list[x509.Certificate]]:
        index: dict[Any, list[x509.Certificate]] = {}
        for cert in (*self.roots, *self.intermediates):
            index.setdefault(name_key(cert.subject), []).append(cert)
        return index

    @functools.cached_property
    def _crls_by_issuer(self) -> dict[Any, list[x509.CertificateRevocationList]]:
        index: dict[Any, list[x509.CertificateRevocationList]] = {}
        for crl in self.crls:
            index.setdefault(name_key(crl.issuer), []).append(crl)
        return index


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _validity_problem(cert: x509.Certificate, now: datetime, what: str) -> str | None:
    # RFC 5280 §4.1.2.5: both bounds are inclusive.
    if now < cert.not_valid_before_utc:
        return f"{what} is not valid before {_when(cert.not_valid_before_utc)}."
    if now > cert.not_valid_after_utc:
        return f"{what} expired on {_when(cert.not_valid_after_utc)}."
    return None


# Extensions whose meaning trust decisions take into account (policies are
# accepted whatever they say, as openssl does without -policy).  A critical
# extension outside this set makes a certificate unusable (RFC 5280 §4.2).
_UNDERSTOOD = {
    ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE, ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.ISSUER_ALTERNATIVE_NAME,
    ExtensionOID.NAME_CONSTRAINTS, ExtensionOID.CERTIFICATE_POLICIES,
    ExtensionOID.POLICY_CONSTRAINTS, ExtensionOID.INHIBIT_ANY_POLICY,
    ExtensionOID.POLICY_MAPPINGS, ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
}


def _extension_problem(cert: x509.Certificate, what: str) -> str | None:
    try:
        extensions = cert.extensions
    except ValueError as e:
        return f"{what} has a malformed extension ({e})."
    for extension in extensions:
        if extension.critical and extension.oid not in _UNDERSTOOD:
            return (f"{what} has a critical extension cipherd does not understand "
                    f"({extension.oid.dotted_string}).")
    return None


def _issuer_problem(issuer: x509.Certificate, chain: list[x509.Certificate],
                    name: str) -> str | None:
    """
    Why C{issuer} may not have issued the last certificate of C{chain}
    (which runs from the end entity up): key usage, path length and name
    constraints (RFC 5280 §4.2.1.3, §4.2.1.9, §4.2.1.10).
    """
    problem = _extension_problem(issuer, name)
    if problem:
        return problem
    extensions = issuer.extensions
    try:
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.key_cert_sign:
            return f"{name} may not sign certificates (its key usage lacks keyCertSign)."
    except x509.ExtensionNotFound:
        pass
    try:
        limit = extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    except x509.ExtensionNotFound:
        limit = None
    # Self-issued CA certificates (key rollover) do not count.
    below = sum(1 for c in chain[1:] if not same_name(c.subject, c.issuer))
    if limit is not None and below > limit:
        return (f"{name} allows at most {limit} CA certificate(s) below it; the chain has "
                f"{below}.")
    try:
        constraints = extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    for cert in chain:
        if cert is not chain[0] and same_name(cert.subject, cert.issuer):
            continue
        problem = _name_constraints_problem(cert, constraints)
        if problem:
            return f"{name} does not allow {problem}."
    return None


def _email_within(address: str, base: str) -> bool:
    base = base.lower()
    domain = address.rpartition("@")[2]
    if "@" in base:
        return address == base
    if base.startswith("."):
        return domain.endswith(base)
    return domain == base


def _name_within(name: x509.Name, base: x509.Name) -> bool:
    prefix = name_key(base)
    return name_key(name)[:len(prefix)] == prefix


def _host_within(host: str, base: str, *, subdomains: bool) -> bool:
    """
    RFC 5280 §4.2.1.10: a leading dot means any host below; without it a
    DNS constraint also covers the hosts below (C{subdomains}) while a URI
    constraint names one host.
    """
    host, base = host.lower().rstrip("."), base.lower().rstrip(".")
    if base.startswith("."):
        return host.endswith(base)
    return not base or host == base or (subdomains and host.endswith("." + base))


def _uri_host(uri: str) -> str:
    from urllib.parse import urlsplit

    try:
        return urlsplit(uri).hostname or ""
    except ValueError:
        return ""


def _name_constraints_problem(cert: x509.Certificate,
                              constraints: x509.NameConstraints) -> str | None:
    permitted = constraints.permitted_subtrees or []
    excluded = constraints.excluded_subtrees or []
    for address in email_addresses(cert):
        allowed = [t.value for t in permitted if isinstance(t, x509.RFC822Name)]
        if allowed and not any(_email_within(address, base) for base in allowed):
            return f"the address {address}"
        if any(_email_within(address, t.value) for t in excluded
               if isinstance(t, x509.RFC822Name)):
            return f"the address {address}"
    try:
        san = list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        san = []
    names = [cert.subject] if cert.subject.rdns else []
    names += [n.value for n in san if isinstance(n, x509.DirectoryName)]
    allowed_names = [t.value for t in permitted if isinstance(t, x509.DirectoryName)]
    for name in names:
        if allowed_names and not any(_name_within(name, b) for b in allowed_names):
            return f"the name {describe_name(name)}"
        if any(_name_within(name, t.value) for t in excluded
               if isinstance(t, x509.DirectoryName)):
            return f"the name {describe_name(name)}"
    hosts = {x509.DNSName: lambda v: v, x509.UniformResourceIdentifier: _uri_host}
    for general_name in san:
        kind = type(general_name)
        if kind in hosts:
            host = hosts[kind](general_name.value)
            allowed = [t.value for t in permitted if type(t) is kind]
            below = kind is x509.DNSName
            if allowed and not any(_host_within(host, b, subdomains=below) for b in allowed):
                return f"the name {general_name.value}"
            if any(_host_within(host, t.value, subdomains=below) for t in excluded
                   if type(t) is kind):
                return f"the name {general_name.value}"
        elif kind not in (x509.RFC822Name, x509.DirectoryName) and any(
                type(t) is kind for t in (*permitted, *excluded)):
            # Other constrained forms (IP addresses, ...): cipherd cannot
            # check them, so it refuses (RFC 5280 §4.2.1.10).
            return f"names of the form {kind.__name__}, which cipherd cannot check"
    return None


def _public_key_of(cert: x509.Certificate) -> object:
    try:
        return cert.public_key()
    except (UnsupportedAlgorithm, ValueError):
        return None


def usage_problem(cert: x509.Certificate, purpose: Purpose) -> str | None:
    """
    Why the key usage or extended key usage forbids C{purpose}, or C{None}.
    For encryption, also a key cipherd cannot encrypt to (RSA, EC on the
    curves of L{cms.EC_RECIPIENT_CURVES}, X25519, X448); for signing, a key
    that cannot sign (X25519, X448).
    """
    if purpose is Purpose.ANY:
        return None
    key = _public_key_of(cert)
    agreement = isinstance(key, ec.EllipticCurvePublicKey | cms.MontgomeryPublicKey)
    if purpose is Purpose.ENCRYPTION:
        if isinstance(key, ec.EllipticCurvePublicKey):
            if key.curve.name not in cms.EC_RECIPIENT_CURVES:
                return (f"Its key is on the curve {key.curve.name}, which cipherd cannot "
                        "encrypt to (P-256, P-384, P-521).")
        elif not isinstance(key, rsa.RSAPublicKey | cms.MontgomeryPublicKey):
            return ("Its key is of a kind cipherd cannot encrypt to (RSA, EC, X25519 or X448 "
                    "only).")
    elif isinstance(key, cms.MontgomeryPublicKey):
        return "Its key (X25519 or X448) agrees on keys for encryption; it cannot sign."
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None:
        if purpose is Purpose.ENCRYPTION:
            # RFC 8550 §4.4.2: an EC key encrypts by key agreement.
            if agreement:
                if not usage.key_agreement:
                    return "Its key usage does not allow encryption (keyAgreement)."
            elif not usage.key_encipherment:
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
    cert: x509.Certificate, issuer: x509.Certificate, now: datetime, context: TrustContext,
    what: str,
) -> str | None:
    signers: list[x509.Certificate] | None = None
    # Whether a current CRL gave the status, else why none did.
    known = False
    unknown = ["no CRL of its issuer"]
    for crl in context.crls_of(issuer.subject):
        if not _crl_signed_by(crl, issuer):
            if signers is None:
                signers = _other_crl_signers(issuer, now, context)
            if not any(_crl_signed_by(crl, c) for c in signers):
                unknown = ["no CRL signed by its issuer"]
                continue
        revoked = _revoked_entry(crl, cert.serial_number)
        if revoked is not None:
            return f"{what} was revoked on {_when(revoked.revocation_date_utc)}."
        next_update = crl.next_update_utc
        if crl.last_update_utc > now:
            unknown = [f"the CRL of its issuer is not valid before {_when(crl.last_update_utc)}"]
        elif next_update is not None and next_update < now:
            unknown = [f"the CRL of its issuer is out of date since {_when(next_update)}"]
        else:
            known = True
    answer = context.ocsp.get(ocsp_key(cert, issuer))
    if answer is not None:
        if answer.status is OCSPStatus.REVOKED:
            when = f" on {_when(answer.revoked_at)}" if answer.revoked_at else ""
            return f"{what} was revoked{when} (OCSP responder {answer.responder})."
        if answer.status is OCSPStatus.GOOD and answer.current(now):
            known = True
        elif answer.status is OCSPStatus.GOOD:
            unknown.append(f"the OCSP answer of {answer.responder} is out of date")
        else:
            unknown.append(answer.reason)
    if known or not context.fail_closed:
        return None
    return (f"The revocation status of {what[0].lower()}{what[1:]} is unknown "
            f"({'; '.join(unknown)}), and revocation checking fails closed.")


def _other_crl_signers(
    issuer: x509.Certificate, now: datetime, context: TrustContext
) -> list[x509.Certificate]:
    """
    The other keys of the CA C{issuer} that may sign its CRLs (RFC 5280
    §6.3.3: key rollover, or a separate CRL-signing key): certificates of
    the same name that C{issuer}'s own issuer also certified, or that
    C{issuer} certified or was certified by (self-issued), valid now and
    allowed to sign CRLs.  A CA of the same name in another hierarchy, or a
    whitelisted certificate that merely bears the name, is not one of them:
    its CRL must neither lift nor add revocations of this CA's certificates.
    """
    own = thumbprint(issuer)
    parents = [p for p in context.named(issuer.issuer) if issued_by(issuer, p)]
    found = []
    for candidate in context.named(issuer.subject):
        if thumbprint(candidate) == own or _validity_problem(candidate, now, "") is not None:
            continue
        if not _may_sign_crls(candidate):
            continue
        if issued_by(candidate, issuer) or issued_by(issuer, candidate):
            found.append(candidate)
        elif any(issued_by(candidate, p) and not _listed_by(candidate, p, context)
                 for p in parents):
            # A separate CRL-signing key its parent revoked signs nothing.
            found.append(candidate)
    return found


def _listed_by(cert: x509.Certificate, issuer: x509.Certificate,
               context: TrustContext) -> bool:
    """
    C{cert} is on a CRL C{issuer} signed.
    """
    return any(_crl_signed_by(crl, issuer) and _revoked_entry(crl, cert.serial_number)
               is not None for crl in context.crls_of(issuer.subject))


def _may_sign_crls(cert: x509.Certificate) -> bool:
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage.crl_sign


def _revoked_entry(crl: x509.CertificateRevocationList,
                   serial: int) -> x509.RevokedCertificate | None:
    try:
        return crl.get_revoked_certificate_by_serial_number(serial)
    except ValueError:
        # A negative serial number (RFC 5280 forbids it, CAs have issued
        # them): cryptography's look-up refuses it, so search.
        return next((r for r in crl if r.serial_number == serial), None)


def _crl_signed_by(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(cert.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError, UnsupportedAlgorithm):
        return False


def check(
    cert: x509.Certificate, purpose: Purpose, now: datetime, context: TrustContext,
    *, whitelist: bool = True,
) -> Verdict:
    """
    Decide whether C{cert} may be used for C{purpose} at C{now}.

    @param whitelist: whether a CTL whitelisting makes C{cert} valid on its
        own; without, it must chain to a trusted root.
    """
    status = context.ctl.get(thumbprint(cert))
    if status is CTLStatus.BLACKLISTED:
        return Verdict(False, "The certificate is blacklisted in the certificate trust list.")
    problem = (_extension_problem(cert, "The certificate")
               or _validity_problem(cert, now, "The certificate")
               or usage_problem(cert, purpose))
    if problem:
        return Verdict(False, problem)
    if status is CTLStatus.WHITELISTED and whitelist:
        return Verdict(True, "The certificate is whitelisted in the certificate trust list.",
                       [cert])

    root_prints = context.root_prints
    chain = [cert]
    current = cert
    while thumbprint(current) not in root_prints:
        if len(chain) > MAX_CHAIN:
            return Verdict(False, "The certificate chain is too long.", chain)
        current_print = thumbprint(current)
        named = [c for c in context.named(current.issuer) if thumbprint(c) != current_print]
        issuers = [c for c in named if issued_by(current, c)]
        # Prefer a root, then a valid CA, so an expired duplicate loses.
        issuers.sort(key=lambda c: (thumbprint(c) not in root_prints,
                                    _validity_problem(c, now, "") is not None))
        if not issuers:
            subject = ("the certificate" if current is cert
                       else f"the CA certificate {describe_name(current.subject)}")
            if same_name(current.subject, current.issuer) and not named:
                return Verdict(
                    False,
                    "The certificate is not trusted: there is no path to a trusted root (its "
                    f"chain ends at {describe_name(current.subject)}, which is not a trusted "
                    "root).",
                    chain,
                )
            if named:
                # A certificate of that name exists, but its key did not sign.
                return Verdict(
                    False,
                    f"The certificate is not trusted: the signature on {subject} does not "
                    f"verify with the certificate of its issuer {describe_name(current.issuer)}.",
                    chain,
                )
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
        problem = (_issuer_problem(issuer, chain, issuer_name)
                   or _validity_problem(issuer, now, issuer_name)
                   or _revocation_problem(current, issuer, now, context,
                                          "The certificate" if current is cert
                                          else f"The CA certificate "
                                               f"{describe_name(current.subject)}"))
        if problem:
            return Verdict(False, problem, chain)
        chain.append(issuer)
        current = issuer
    problem = policy_problem(chain[-2::-1])
    if problem:
        return Verdict(False, problem, chain)
    return Verdict(True, f"The certificate chains to the trusted root "
                         f"{describe_name(chain[-1].subject)}.", chain)


# Certificate policies (RFC 5280 §6.1, with the initial inputs of an
# S/MIME client: any policy acceptable, no explicit policy required,
# mapping and anyPolicy not inhibited).
ANY_POLICY = "2.5.29.32.0"


@dataclass(eq=False)
class _PolicyNode:
    policy: str
    expected: set[str]
    parent: _PolicyNode | None
    children: list[_PolicyNode] = field(default_factory=list)


def _extension(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> Any:
    try:
        return cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None


def _policy_mappings(cert: x509.Certificate) -> list[tuple[str, str]]:
    mappings = _extension(cert, ExtensionOID.POLICY_MAPPINGS)
    if mappings is None:
        return []
    return [(m["issuer_domain_policy"].dotted, m["subject_domain_policy"].dotted)
            for m in asn1_x509.PolicyMappings.load(mappings.value)]


def _prune(levels: list[list[_PolicyNode]], depth: int) -> None:
    """
    RFC 5280 §6.1.3 (d)(3): nodes of depth C{depth} or less without
    children go, until none is left.
    """
    for d in range(depth, -1, -1):
        for node in [n for n in levels[d] if not n.children]:
            levels[d].remove(node)
            if node.parent is not None:
                node.parent.children.remove(node)


def policy_problem(path: Sequence[x509.Certificate]) -> str | None:
    """
    Why the certificate policies of C{path} (from the certificate the trust
    anchor issued to the end entity; the anchor itself is not part of it)
    make it invalid (RFC 5280 §6.1.2-6.1.5), or C{None}.
    """
    n = len(path)
    levels: list[list[_PolicyNode]] | None = [[_PolicyNode(ANY_POLICY, {ANY_POLICY}, None)]]
    explicit_policy = inhibit_any = policy_mapping = n + 1
    for i, cert in enumerate(path, start=1):
        what = describe_name(cert.subject)
        policies = _extension(cert, ExtensionOID.CERTIFICATE_POLICIES)
        self_issued = same_name(cert.subject, cert.issuer)
        if levels is not None and policies is not None:
            oids = [p.policy_identifier.dotted_string for p in policies]
            previous, level = levels[i - 1], []
            for oid in oids:  # (d)(1)
                if oid == ANY_POLICY:
                    continue
                parents = [node for node in previous if oid in node.expected] or [
                    node for node in previous if node.policy == ANY_POLICY]
                for parent in parents:
                    level.append(_PolicyNode(oid, {oid}, parent))
                    parent.children.append(level[-1])
            if ANY_POLICY in oids and (inhibit_any > 0 or (i < n and self_issued)):  # (d)(2)
                for parent in previous:
                    taken = {child.policy for child in parent.children}
                    for oid in sorted(parent.expected - taken):
                        level.append(_PolicyNode(oid, {oid}, parent))
                        parent.children.append(level[-1])
            levels.append(level)
            _prune(levels, i - 1)  # (d)(3)
            if not levels[0]:
                levels = None
        elif policies is None:
            levels = None  # (e)
        if explicit_policy == 0 and levels is None:  # (f)
            return (f"No certificate policy is valid along the path at {what}, and a CA "
                    "requires an explicit policy.")
        if i == n:
            break
        # Preparation for the next certificate (§6.1.4).
        try:
            mappings = _policy_mappings(cert)
        except (ValueError, TypeError, KeyError):  # asn1crypto reads lazily
            return f"The policy mappings of {what} cannot be read."
        if any(ANY_POLICY in pair for pair in mappings):  # (a)
            return f"The policy mappings of {what} map anyPolicy, which is not allowed."
        if levels is not None:  # (b)
            for issuer_policy in dict.fromkeys(p for p, _ in mappings):
                subjects = {s for p, s in mappings if p == issuer_policy}
                nodes = [node for node in levels[i] if node.policy == issuer_policy]
                if policy_mapping > 0:
                    for node in nodes:
                        node.expected = subjects
                    if not nodes:
                        for node in levels[i]:
                            if node.policy == ANY_POLICY and node.parent is not None:
                                child = _PolicyNode(issuer_policy, subjects, node.parent)
                                node.parent.children.append(child)
                                levels[i].append(child)
                                break
                else:
                    for node in nodes:
                        levels[i].remove(node)
                        if node.parent is not None:
                            node.parent.children.remove(node)
                    _prune(levels, i - 1)
                    if not levels[0]:
                        levels = None
                        break
        if not self_issued:  # (h)
            explicit_policy = max(explicit_policy - 1, 0)
            policy_mapping = max(policy_mapping - 1, 0)
            inhibit_any = max(inhibit_any - 1, 0)
        constraints = _extension(cert, ExtensionOID.POLICY_CONSTRAINTS)
        if constraints is not None:  # (i)
            if constraints.require_explicit_policy is not None:
                explicit_policy = min(explicit_policy, constraints.require_explicit_policy)
            if constraints.inhibit_policy_mapping is not None:
                policy_mapping = min(policy_mapping, constraints.inhibit_policy_mapping)
        inhibit = _extension(cert, ExtensionOID.INHIBIT_ANY_POLICY)
        if inhibit is not None:  # (j)
            inhibit_any = min(inhibit_any, inhibit.skip_certs)
    # Wrap-up (§6.1.5).
    explicit_policy = max(explicit_policy - 1, 0)  # (a)
    constraints = _extension(path[-1], ExtensionOID.POLICY_CONSTRAINTS) if path else None
    if constraints is not None and constraints.require_explicit_policy == 0:  # (b)
        explicit_policy = 0
    if explicit_policy == 0 and levels is None:
        return ("No certificate policy is valid along the path to the certificate, and a CA "
                "requires an explicit policy.")
    return None


# The smallest step of a datetime: a certificate is valid up to and including
# its notAfter (RFC 5280 §4.1.2.5) and expired from the next instant on.
_INSTANT = timedelta(microseconds=1)


def steady_interval(
    cert: x509.Certificate, now: datetime, context: TrustContext
) -> tuple[datetime | None, datetime | None]:
    """
    The span C{[since, until)} around C{now} in which L{check} of C{cert}
    against C{context} answers, for every purpose, as it does at C{now}
    (C{None}: unbounded on that side).  What a cached verdict may be reused
    for.

    Time enters a check only through validity periods: of C{cert}, and of
    the certificates a path may be built through -- the candidates for each
    issuer (an expired one sorts last) and the other keys of a CA that may
    sign its CRLs.  All of those bear an issuer name reachable from C{cert}
    through C{context}, so every such certificate's notBefore and notAfter
    bound the span, and so do the thisUpdate and nextUpdate of their
    issuers' CRLs and of the context's OCSP answers (whether a status is
    current matters when revocation fails closed).  A listed certificate
    counts as revoked whatever its revocation date.
    """
    edges: list[datetime] = [cert.not_valid_before_utc, cert.not_valid_after_utc + _INSTANT]
    seen: set[Any] = set()
    names = [cert.issuer]
    while names:
        key = name_key(names.pop())
        if key in seen:
            continue
        seen.add(key)
        for candidate in context._by_subject.get(key, []):
            edges += (candidate.not_valid_before_utc, candidate.not_valid_after_utc + _INSTANT)
            names.append(candidate.issuer)
        for crl in context._crls_by_issuer.get(key, []):
            edges.append(crl.last_update_utc)
            if crl.next_update_utc is not None:
                edges.append(crl.next_update_utc + _INSTANT)
    for answer in context.ocsp.values():
        if answer.this_update is not None:
            edges.append(answer.this_update - CLOCK_SKEW)
        relied_on_until = answer.until()
        if relied_on_until is not None:
            edges.append(relied_on_until + CLOCK_SKEW + _INSTANT)
    since: datetime | None = None
    until: datetime | None = None
    for edge in edges:
        if edge <= now:
            since = edge if since is None else max(since, edge)
        else:
            until = edge if until is None else min(until, edge)
    return since, until


@dataclass(frozen=True)
class CRLCheck:
    """
    The outcome of checking a CRL for import: the certificate whose key
    signed it, or why it cannot be relied on.
    """

    signer: x509.Certificate | None
    problem: str | None


def crl_check(
    crl: x509.CertificateRevocationList, now: datetime, context: TrustContext
) -> CRLCheck:
    """
    A CRL may be relied on when it is signed by a certificate of its issuer
    that chains to a trusted root (a CTL whitelisting is not enough: it
    vouches for one certificate, not for a CA's revocations) and is allowed
    to sign CRLs.  A forged CRL must not replace the real one and so lift a
    revocation.
    """
    try:
        extensions = crl.extensions
    except ValueError as e:
        return CRLCheck(None, f"it has a malformed extension ({e})")
    for extension in extensions:
        # The store keeps one complete CRL per issuer and key: a delta or a
        # partitioned CRL would replace it and lose revocations.
        if isinstance(extension.value, x509.DeltaCRLIndicator):
            return CRLCheck(None, "it is a delta CRL; import the issuer's complete CRL")
        if isinstance(extension.value, x509.IssuingDistributionPoint):
            return CRLCheck(None, "it covers only part of its issuer's certificates (issuing "
                                  "distribution point); import the issuer's complete CRL")
        if extension.critical:
            return CRLCheck(None, f"it has a critical extension cipherd does not understand "
                                  f"({extension.oid.dotted_string})")
    candidates = context.named(crl.issuer)
    if not candidates:
        return CRLCheck(None, f"there is no certificate of its issuer "
                              f"{describe_name(crl.issuer)} to check its signature; import "
                              "the CA certificate first")
    # The reason given is that of a certificate whose key signed it, if any.
    problems = ["its signature does not verify with the certificate of its issuer"]
    for candidate in candidates:
        if not _crl_signed_by(crl, candidate):
            continue
        if not _may_sign_crls(candidate):
            problems.append("the key usage of its issuer's certificate does not allow "
                            "signing CRLs (cRLSign)")
            continue
        verdict = check(candidate, Purpose.ANY, now, context, whitelist=False)
        if not verdict.valid:
            problems.append(f"its issuer is not trusted: {verdict.reason}")
            continue
        return CRLCheck(candidate, None)
    return CRLCheck(None, problems[-1])
