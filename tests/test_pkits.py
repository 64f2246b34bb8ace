"""
NIST PKITS (2011) through the whole path a signed message takes here:
the trust anchor imported as a root, every certificate and CRL imported as
an administrator would (CRLs checked at import), each signed message opened
by the S/MIME engine and its signer judged for signing.

Each C{SignedValid...} message must pass and each C{SignedInvalid...} must
fail, except for the deviations listed below, each for a stated reason; the
test fails when the list is wrong in either direction, so an improvement
shows up as well as a regression.
"""

from __future__ import annotations

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

CORPUS = Path(os.environ.get(
    "CIPHERD_SMIME_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus"))
PKITS = CORPUS / "smime-pkits"
# Inside the validity of the suite (notAfter 2030-12-31) and after its
# revocation dates.
NOW = datetime(2026, 11, 28, tzinfo=UTC)

# Revocation is soft-fail: a certificate whose issuer has no usable CRL here
# (none imported, or the CRL was refused at import: wrong signer, stale-only
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


def _outcome(engine: SmimeEngine, path: Path) -> tuple[bool, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            opened = result_of(engine.open(path.read_bytes()))
        except PKIError as e:
            return False, str(e)
    [signer] = opened.signers
    return signer.valid, signer.reason


def test_pkits_matches_except_for_the_stated_deviations(engine: SmimeEngine) -> None:
    cases = sorted(p for p in (PKITS / "smime").glob("*.eml")
                   if p.name.startswith(("SignedValid", "SignedInvalid")))
    assert len(cases) == 202
    deviations = {}
    for path in cases:
        valid, reason = _outcome(engine, path)
        if valid != path.name.startswith("SignedValid"):
            deviations[path.stem] = reason
    assert set(deviations) == KNOWN_DEVIATIONS, {
        "unexpected": {k: v for k, v in deviations.items() if k not in KNOWN_DEVIATIONS},
        "now right": sorted(KNOWN_DEVIATIONS - set(deviations)),
    }


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
