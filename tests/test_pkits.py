"""
NIST PKITS (2011) through the whole path a signed message takes here:
the trust anchor imported as a root, every certificate and CRL imported as
an administrator would (CRLs checked at import), each signed message opened
by the S/MIME engine and its signer judged for signing.

Each C{SignedValid...} message must pass and each C{SignedInvalid...} must
fail, except for the deviations listed below, each for a stated reason; the
test fails when the list is wrong in either direction, so an improvement
shows up as well as a regression.  It is run with revocation failing open
(the default) and failing closed, and compared with C{openssl verify} on
the same paths.
"""

from __future__ import annotations

import base64
import os
import warnings
from datetime import UTC, datetime
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from cipherd.pki.certstore import CertificateStore
from cipherd.pki.engine import SmimeEngine
from cipherd.pki.errors import PKIError
from cipherd.store.certificates import ROOTS
from cipherd.testing import SynchronousRunner, migrated_store, result_of
from tests import peers

CORPUS = Path(os.environ.get(
    "CIPHERD_SMIME_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus"))
PKITS = CORPUS / "smime-pkits"
# Inside the validity of the suite (notAfter 2030-12-31) and after its
# revocation dates.
NOW = datetime(2026, 11, 28, tzinfo=UTC)

# Failing open: a certificate whose issuer has no usable CRL here (none
# imported, or the CRL was refused at import: wrong signer, stale-only
# partial, delta or distribution-point CRLs, unknown critical extensions) is
# not treated as revoked.  PKITS expects "status unknown" to fail.
NO_USABLE_CRL = {
    "SignedInvalidBadCRLIssuerNameTest5", "SignedInvalidBadCRLSignatureTest4",
    "SignedInvalidIDPwithindirectCRLTest23", "SignedInvalidIDPwithindirectCRLTest26",
    "SignedInvalidOldCRLnextUpdateTest11", "SignedInvalidSeparateCertificateandCRLKeysTest21",
    "SignedInvalidUnknownCRLExtensionTest10", "SignedInvalidUnknownCRLExtensionTest9",
    "SignedInvalidWrongCRLTest6", "SignedInvalidcRLIssuerTest27", "SignedInvalidcRLIssuerTest31",
    "SignedInvalidcRLIssuerTest32", "SignedInvalidcRLIssuerTest34",
    "SignedInvalidcRLIssuerTest35", "SignedInvaliddeltaCRLIndicatorNoBaseTest1",
    "SignedInvaliddeltaCRLTest10", "SignedInvaliddeltaCRLTest4",
    "SignedInvaliddistributionPointTest2", "SignedInvaliddistributionPointTest3",
    "SignedInvaliddistributionPointTest6", "SignedInvaliddistributionPointTest8",
    "SignedInvaliddistributionPointTest9", "SignedInvalidkeyUsageCriticalcRLSignFalseTest4",
    "SignedInvalidkeyUsageNotCriticalcRLSignFalseTest5",
    "SignedInvalidonlyContainsAttributeCertsTest14",
    "SignedInvalidonlyContainsCACertsCRLTest12", "SignedInvalidonlyContainsUserCertsCRLTest11",
    "SignedInvalidonlySomeReasonsTest15", "SignedInvalidonlySomeReasonsTest16",
    "SignedInvalidonlySomeReasonsTest17", "SignedInvalidonlySomeReasonsTest20",
    "SignedInvalidonlySomeReasonsTest21", "SignedInvalidpre2000CRLnextUpdateTest12",
}
# Delta CRLs are refused at import, so the hold in the base CRL stands.
DELTA_CRLS = {"SignedValiddeltaCRLTest5"}
# DSA signatures are not supported (obsolete for S/MIME).
DSA = {"SignedValidDSASignaturesTest4", "SignedValidDSAParameterInheritanceTest5"}
KNOWN_DEVIATIONS = NO_USABLE_CRL | DELTA_CRLS | DSA

# Failing closed, those are refused as PKITS expects; what remains: CRLs
# that cover part of their issuer's certificates (issuing distribution
# points, indirect CRLs) are refused at import, so the certificates they
# cover have no status.
PARTITIONED_CRLS = {
    "SignedValidIDPwithindirectCRLTest22", "SignedValidIDPwithindirectCRLTest24",
    "SignedValidIDPwithindirectCRLTest25", "SignedValidcRLIssuerTest28",
    "SignedValidcRLIssuerTest29", "SignedValidcRLIssuerTest30", "SignedValidcRLIssuerTest33",
    "SignedValiddistributionPointTest1", "SignedValiddistributionPointTest4",
    "SignedValiddistributionPointTest5", "SignedValiddistributionPointTest7",
    "SignedValidonlyContainsCACertsCRLTest13", "SignedValidonlySomeReasonsTest18",
    "SignedValidonlySomeReasonsTest19",
}
# ... and a revocation only a delta CRL lists is not seen.
FAIL_CLOSED_DEVIATIONS = (PARTITIONED_CRLS | DELTA_CRLS | DSA
                          | {"SignedInvaliddeltaCRLTest4"})

CASES = sorted(p for p in (PKITS / "smime").glob("*.eml")
               if p.name.startswith(("SignedValid", "SignedInvalid")))


@pytest.fixture(scope="module")
def engine() -> SmimeEngine:
    clock = Clock()
    clock.advance(NOW.timestamp())
    store = CertificateStore(migrated_store(), clock, os.urandom(32), SynchronousRunner())
    anchor = PKITS / "certs" / "TrustAnchorRootCertificate.crt"
    result_of(store.import_data(anchor.read_bytes(), store=ROOTS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PKITS has negative serial numbers on purpose
        for path in sorted((PKITS / "certs").glob("*.crt")):
            if path != anchor:
                try:
                    result_of(store.import_data(path.read_bytes(), skip_self_signed=False))
                except PKIError:
                    pass  # the DSA parameter-inheritance certificates: not readable
        for path in sorted((PKITS / "crls").glob("*.crl")):
            result_of(store.import_data(path.read_bytes()))
    return SmimeEngine(store, SynchronousRunner())


def _outcome(engine: SmimeEngine, path: Path, *, fail_closed: bool = False
             ) -> tuple[bool, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            opened = result_of(engine.open(path.read_bytes(), fail_closed=fail_closed))
        except PKIError as e:
            return False, str(e)
    [signer] = opened.signers
    return signer.valid, signer.reason


def _deviations(engine: SmimeEngine, *, fail_closed: bool) -> dict[str, str]:
    assert len(CASES) == 202
    deviations = {}
    for path in CASES:
        valid, reason = _outcome(engine, path, fail_closed=fail_closed)
        if valid != path.name.startswith("SignedValid"):
            deviations[path.stem] = reason
    return deviations


@pytest.mark.parametrize(("fail_closed", "known"), [(False, KNOWN_DEVIATIONS),
                                                    (True, FAIL_CLOSED_DEVIATIONS)])
def test_pkits_matches_except_for_the_stated_deviations(
        engine: SmimeEngine, fail_closed: bool, known: set[str]) -> None:
    deviations = _deviations(engine, fail_closed=fail_closed)
    assert set(deviations) == known, {
        "unexpected": {k: v for k, v in deviations.items() if k not in known},
        "now right": sorted(known - set(deviations)),
    }


def _pem(label: bytes, path: Path) -> bytes:
    body = base64.encodebytes(path.read_bytes())
    return b"-----BEGIN " + label + b"-----\n" + body + b"-----END " + label + b"-----\n"


def _openssl_right(tmp_path: Path, revocation: str) -> int:
    """
    How many PKITS verdicts C{openssl verify} gets right on the signers of
    the same messages, with policy checking, strict X.509 and
    C{revocation} (C{-crl_check}: the end entity's CRL; C{-crl_check_all}:
    every certificate's), both failing closed.
    """
    untrusted = tmp_path / "untrusted.pem"
    crls = tmp_path / "crls.pem"
    anchor = tmp_path / "anchor.pem"
    if not anchor.exists():
        untrusted.write_bytes(b"".join(
            _pem(b"CERTIFICATE", path) for path in sorted((PKITS / "certs").glob("*.crt"))
            if path.name != "TrustAnchorRootCertificate.crt"))
        crls.write_bytes(b"".join(_pem(b"X509 CRL", path)
                                  for path in sorted((PKITS / "crls").glob("*.crl"))))
        anchor.write_bytes(_pem(b"CERTIFICATE",
                                PKITS / "certs" / "TrustAnchorRootCertificate.crt"))
    signers = {}
    for path in CASES:
        signer = tmp_path / f"{path.stem}.pem"
        if not signer.exists():
            peers.run(["openssl", "cms", "-verify", "-noverify", "-in", path, "-signer", signer,
                       "-out", os.devnull], check=False)
        if signer.exists():
            signers[path.stem] = signer
    # One run for every signer: "<file>: OK" for each that verifies.
    verified = peers.run(
        ["openssl", "verify", "-CAfile", anchor, "-untrusted", untrusted, "-CRLfile", crls,
         revocation, "-policy_check", "-x509_strict", "-purpose", "any",
         "-attime", str(int(NOW.timestamp())), *signers.values()], check=False)
    accepted = {line[:-len(": OK")] for line in verified.stdout.decode().splitlines()
                if line.endswith(": OK")}
    return sum((str(signers.get(path.stem)) in accepted) == path.name.startswith("SignedValid")
               for path in CASES)


def test_pkits_at_least_as_many_verdicts_as_openssl(engine: SmimeEngine,
                                                    tmp_path: Path) -> None:
    peers.require_tool("openssl")
    ours = len(CASES) - len(_deviations(engine, fail_closed=True))
    theirs = {flag: _openssl_right(tmp_path, flag) for flag in ("-crl_check",
                                                                "-crl_check_all")}
    print(f"PKITS verdicts right of {len(CASES)}: cipherd failing closed {ours}, openssl "
          + ", ".join(f"{flag} {n}" for flag, n in theirs.items()))
    # openssl refusing everything would be right 114 times: it must accept.
    assert min(theirs.values()) > 150, theirs
    assert ours >= max(theirs.values()), theirs


@pytest.mark.parametrize(("name", "reason"), [
    ("SignedInvalidRequireExplicitPolicyTest3", "No certificate policy is valid along the path "
     "to the certificate, and a CA requires an explicit policy."),
    ("SignedInvalidinhibitAnyPolicyTest1", "No certificate policy is valid along the path at "
     "C=US, O=Test Certificates 2011, CN=Invalid inhibitAnyPolicy EE Certificate Test1, and a "
     "CA requires an explicit policy."),
    ("SignedInvalidMappingFromanyPolicyTest7", "The policy mappings of C=US, O=Test "
     "Certificates 2011, CN=Mapping From anyPolicy CA map anyPolicy, which is not allowed."),
    ("SignedInvalidCASignatureTest2", "The certificate is not trusted: the signature on the CA "
     "certificate C=US, O=Test Certificates 2011, CN=Bad Signed CA does not verify with the "
     "certificate of its issuer C=US, O=Test Certificates 2011, CN=Trust Anchor."),
    ("SignedInvalidEESignatureTest3", "The certificate is not trusted: the signature on the "
     "certificate does not verify with the certificate of its issuer C=US, O=Test Certificates "
     "2011, CN=Good CA."),
    ("SignedInvalidCAnotAfterDateTest5", "The CA certificate C=US, O=Test Certificates 2011, "
     "CN=Bad notAfter Date CA expired on 2011-01-01 08:30:00 UTC."),
    ("SignedInvalidRevokedEETest3", "The certificate was revoked on 2010-01-01 "),
    ("SignedInvalidpathLenConstraintTest5", "allows at most 0 CA certificate(s) below it; the "
     "chain has 1."),
    ("SignedInvalidkeyUsageCriticalkeyCertSignFalseTest1", "may not sign certificates (its key "
     "usage lacks keyCertSign)."),
    ("SignedInvalidRFC822nameConstraintsTest22", "does not allow the address "),
    ("SignedInvalidDNnameConstraintsTest3", "does not allow the name "),
    ("SignedInvalidDNSnameConstraintsTest31", "does not allow the name "),
    ("SignedInvalidUnknownCriticalCertificateExtensionTest2", "The certificate has a critical "
     "extension cipherd does not understand (2.16.840.1.101.2.1.12.2)."),
    ("SignedInvalidNameChainingOrderTest2", "there is no path to a trusted root"),
    ("SignedValidNameChainingCapitalizationTest5", "chains to the trusted root"),
    ("SignedValidRolloverfromPrintableStringtoUTF8StringTest10", "chains to the trusted root"),
])
def test_pkits_reasons_name_the_cause(engine: SmimeEngine, name: str, reason: str) -> None:
    valid, said = _outcome(engine, PKITS / "smime" / f"{name}.eml")
    assert valid is name.startswith("SignedValid")
    assert reason in said, said
