"""
Revocation by OCSP: the certificate store asking a real responder
(C{openssl ocsp} on 127.0.0.1) about each certificate on a path, the good,
revoked, unknown and unreachable cases with their reasons, failing open
and closed; and what an answer must be to be believed (nonce, signer,
certificate ID, dates), with answers made here.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.internet import reactor
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from cipherd.pki.certstore import CertificateStore
from cipherd.pki.ocsp import IOCSPClient, OCSPClient, ocsp_client, read_response, request_for
from cipherd.pki.trust import OCSPAnswer, OCSPStatus, Purpose, TrustContext, check, ocsp_key
from cipherd.store.certificates import ROOTS
from cipherd.testing import SynchronousRunner, migrated_store, result_of
from cipherd.testing.certificates import MemoryCertificateStore
from tests import peers
from tests.conftest import free_port
from tests.pki_factory import (
    EMAIL_EKU,
    SMIME_USAGE,
    Identity,
    make_ca,
    make_user,
    new_rsa_key,
)

NOW = datetime.now(UTC).replace(microsecond=0)
BEFORE, AFTER = NOW - timedelta(days=1), NOW + timedelta(days=30)


def _aia(url: str) -> list[tuple[x509.ExtensionType, bool]]:
    return [(x509.AuthorityInformationAccess([x509.AccessDescription(
        x509.oid.AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(url))]),
        False)]


def _user(name: str, ca: Identity, url: str | None) -> Identity:
    return make_user(f"{name}@partner.example", ca, not_before=BEFORE, not_after=AFTER,
                     key_usage=SMIME_USAGE, eku=EMAIL_EKU, extra=_aia(url) if url else [])


@dataclass
class Responder:
    """
    A PKI whose users name an C{openssl ocsp} responder, and the responder.
    """

    root: Identity
    signer: Identity
    users: dict[str, Identity]
    url: str
    process: subprocess.Popen[bytes]


def _index_line(status: str, cert: x509.Certificate, revoked: datetime | None = None) -> str:
    expiry = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
    when = revoked.strftime("%y%m%d%H%M%SZ") if revoked else ""
    subject = "/" + "/".join(a.rfc4514_string() for a in cert.subject)
    return f"{status}\t{expiry}\t{when}\t{cert.serial_number:X}\tunknown\t{subject}\n"


def _wait_until_listening(process: subprocess.Popen[bytes]) -> None:
    """
    Until the responder says it waits for clients (a probe connection would
    hold it: it serves one connection at a time).
    """
    assert process.stdout is not None
    for line in process.stdout:
        if b"waiting for OCSP client connections" in line:
            return
    raise AssertionError(f"the OCSP responder did not start ({process.wait()})")


@pytest.fixture(scope="module")
def responder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Responder]:
    openssl = peers.require_tool("openssl")
    here = tmp_path_factory.mktemp("ocsp")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    closed = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    # Keys of their own: the responder must be recognised as a delegate.
    root = make_ca("OCSP Test Root", not_before=BEFORE, not_after=AFTER, key=new_rsa_key())
    signer = make_user("responder@ca.example", root, not_before=BEFORE, not_after=AFTER,
                       eku=[ExtendedKeyUsageOID.OCSP_SIGNING], san=False, key=new_rsa_key())
    users = {"good": _user("good", root, url), "revoked": _user("revoked", root, url),
             "unknown": _user("unknown", root, url),
             "unreachable": _user("unreachable", root, closed),
             "silent": _user("silent", root, None)}
    (here / "index.txt").write_text(
        _index_line("V", users["good"].cert)
        + _index_line("R", users["revoked"].cert, NOW - timedelta(hours=2)))
    (here / "ca.pem").write_bytes(root.pem())
    (here / "signer.pem").write_bytes(signer.pem())
    (here / "signer.key").write_bytes(signer.key_pem())
    process = subprocess.Popen(
        [openssl, "ocsp", "-index", here / "index.txt", "-port", str(port),
         "-CA", here / "ca.pem", "-rsigner", here / "signer.pem", "-rkey", here / "signer.key",
         "-ndays", "1", "-timeout", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_until_listening(process)
        yield Responder(root, signer, users, url, process)
    finally:
        process.terminate()
        process.wait(10)


def _store(responder: Responder) -> CertificateStore:
    store = CertificateStore(migrated_store(), reactor, os.urandom(32), SynchronousRunner(),
                             ocsp_client(reactor))
    result_of(store.add_certificate(responder.root.cert, store=ROOTS))
    for user in responder.users.values():
        result_of(store.add_certificate(user.cert))
    return store


def test_the_client_is_an_ocsp_client() -> None:
    assert verifyObject(IOCSPClient, ocsp_client(reactor))


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(("user", "open_", "closed"), [
    ("good", "chains to the trusted root", "chains to the trusted root"),
    ("revoked", "The certificate was revoked on ", "The certificate was revoked on "),
    ("unknown", "chains to the trusted root", "does not know the certificate"),
    ("unreachable", "chains to the trusted root", "could not be reached (ConnectionRefused"),
    ("silent", "chains to the trusted root", "(no CRL of its issuer)"),
])
async def test_each_status_with_its_reason(responder: Responder, user: str, open_: str,
                                           closed: str) -> None:
    store = _store(responder)
    cert = responder.users[user].cert
    opened = await store.check(cert, Purpose.ENCRYPTION)
    refused = await store.check(cert, Purpose.ENCRYPTION, fail_closed=True)
    assert open_ in opened.reason
    assert opened.valid is (user != "revoked")
    assert closed in refused.reason
    assert refused.valid is (user == "good")
    if user == "revoked":
        assert f"(OCSP responder {responder.url})" in refused.reason
    if not refused.valid and user != "revoked":
        assert refused.reason.startswith("The revocation status of the certificate is "
                                         "unknown (no CRL of its issuer")
        assert refused.reason.endswith("and revocation checking fails closed.")


@pytest_twisted.ensureDeferred
async def test_selection_fails_closed_only_where_asked(responder: Responder) -> None:
    store = _store(responder)
    for name in ("good", "unreachable"):
        address = f"{name}@partner.example"
        assert await store.encryption_certificates(address) == [responder.users[name].cert]
        closed = await store.encryption_certificates(address, fail_closed=True)
        assert closed == ([responder.users[name].cert] if name == "good" else [])
    assert await store.encryption_certificates("revoked@partner.example") == []


@pytest_twisted.ensureDeferred
async def test_answers_are_kept_until_their_next_update(responder: Responder) -> None:
    """
    The second question about a certificate is answered from what was kept:
    it holds while the responder is unreachable.
    """
    client = ocsp_client(reactor)
    good = responder.users["good"].cert
    first = await client.status(good, responder.root.cert)
    assert first is not None and first.status is OCSPStatus.GOOD
    assert first.next_update is not None
    assert first.next_update - first.this_update == timedelta(days=1)
    responder.process.send_signal(19)  # SIGSTOP: it would not answer now
    try:
        again = await client.status(good, responder.root.cert)
    finally:
        responder.process.send_signal(18)  # SIGCONT
    assert again is first


# What an answer must be to be believed: answers made here -------------------


def _answer(cert: x509.Certificate, issuer: Identity, signer: Identity, *,
            status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
            nonce: bytes | None = None, this_update: datetime = NOW,
            next_update: datetime | None = NOW + timedelta(hours=1),
            include_signer: bool = True) -> bytes:
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=cert, issuer=issuer.cert, algorithm=hashes.SHA1(),  # noqa: S303 (as responders do)
        cert_status=status,
        this_update=this_update, next_update=next_update,
        revocation_time=NOW - timedelta(days=1) if status is ocsp.OCSPCertStatus.REVOKED
        else None, revocation_reason=None).responder_id(ocsp.OCSPResponderEncoding.HASH,
                                                        signer.cert)
    if include_signer and signer is not issuer:
        builder = builder.certificates([signer.cert])
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.sign(signer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


URL = "http://ocsp.example/"


@pytest.fixture(scope="module")
def pki() -> dict[str, Identity]:
    # Each signer with a key of its own: a shared test key would make any of
    # them look like the issuer.
    root = make_ca("Answer Root", not_before=BEFORE, not_after=AFTER, key=new_rsa_key())
    other = make_ca("Another Root", not_before=BEFORE, not_after=AFTER, key=new_rsa_key())

    def responder(name: str, issuer: Identity, eku: list[x509.ObjectIdentifier]) -> Identity:
        return make_user(f"{name}@ca.example", issuer, not_before=BEFORE, not_after=AFTER,
                         eku=eku, san=False, key=new_rsa_key())

    return {
        "root": root,
        "alice": _user("alice", root, URL),
        "bob": _user("bob", root, URL),
        "delegate": responder("r", root, [ExtendedKeyUsageOID.OCSP_SIGNING]),
        "plain": responder("p", root, EMAIL_EKU),
        "stranger": responder("s", other, [ExtendedKeyUsageOID.OCSP_SIGNING]),
    }


def _read(pki: dict[str, Identity], der: bytes, nonce: bytes | None = b"n" * 16,
          who: str = "alice") -> OCSPAnswer:
    return read_response(der, pki[who].cert, pki["root"].cert, nonce, NOW, URL)


def test_answers_signed_by_the_issuer_or_its_delegate_are_believed(
        pki: dict[str, Identity]) -> None:
    alice = pki["alice"].cert
    for signer in ("root", "delegate"):
        answer = _read(pki, _answer(alice, pki["root"], pki[signer], nonce=b"n" * 16))
        assert answer.status is OCSPStatus.GOOD, answer.reason
    revoked = _read(pki, _answer(alice, pki["root"], pki["root"],
                                 status=ocsp.OCSPCertStatus.REVOKED))
    assert revoked.status is OCSPStatus.REVOKED
    assert revoked.revoked_at == NOW - timedelta(days=1)
    unknown = _read(pki, _answer(alice, pki["root"], pki["root"],
                                 status=ocsp.OCSPCertStatus.UNKNOWN))
    assert unknown.status is OCSPStatus.UNKNOWN
    assert unknown.reason == f"the OCSP responder {URL} does not know the certificate"


@pytest.mark.parametrize(("case", "reason"), [
    ("replayed nonce", "sent an answer with another request's nonce (a replayed answer?)"),
    ("not a delegate", "which is not allowed to sign OCSP answers (id-kp-OCSPSigning)"),
    ("another CA's responder", "which the certificate's issuer C=, CN=Answer Root did not"),
    ("signer left out", "signed its answer with a certificate it did not include"),
    ("another certificate", "answered about another certificate"),
    ("from the future", "sent an answer dated in the future"),
    ("out of date", "sent an out-of-date answer"),
    ("not OCSP", "sent an answer that is not OCSP"),
    ("refused", "refused to answer (UNAUTHORIZED)"),
    ("forged signature", "sent an answer whose signature does not verify"),
])
def test_answers_that_are_not_believed_say_why(pki: dict[str, Identity], case: str,
                                               reason: str) -> None:
    alice, root = pki["alice"].cert, pki["root"]
    der = {
        "replayed nonce": lambda: _answer(alice, root, root, nonce=b"x" * 16),
        "not a delegate": lambda: _answer(alice, root, pki["plain"]),
        "another CA's responder": lambda: _answer(alice, root, pki["stranger"]),
        "signer left out": lambda: _answer(alice, root, pki["delegate"], include_signer=False),
        "another certificate": lambda: _answer(pki["bob"].cert, root, root),
        "from the future": lambda: _answer(alice, root, root,
                                           this_update=NOW + timedelta(hours=1)),
        "out of date": lambda: _answer(alice, root, root, this_update=NOW - timedelta(days=2),
                                       next_update=NOW - timedelta(days=1)),
        "not OCSP": lambda: b"<html>proxy error</html>",
        "refused": lambda: ocsp.OCSPResponseBuilder.build_unsuccessful(
            ocsp.OCSPResponseStatus.UNAUTHORIZED).public_bytes(serialization.Encoding.DER),
        "forged signature": lambda: _forged(_answer(alice, root, root)),
    }[case]()
    answer = _read(pki, der)
    assert answer.status is OCSPStatus.UNAVAILABLE
    assert answer.reason.startswith(f"the OCSP responder {URL} ")
    assert reason.replace("C=, ", "") in answer.reason, answer.reason


def _forged(der: bytes) -> bytes:
    # Flip a bit in the last byte: inside the signature.
    return der[:-1] + bytes([der[-1] ^ 1])


def test_an_answer_without_a_nonce_is_bounded_by_its_dates(pki: dict[str, Identity]) -> None:
    # Responders that pre-produce answers send no nonce (RFC 5019).
    answer = _read(pki, _answer(pki["alice"].cert, pki["root"], pki["root"]))
    assert answer.status is OCSPStatus.GOOD
    assert answer.current(NOW)
    assert not answer.current(NOW + timedelta(hours=2))


def test_requests_carry_a_nonce_and_the_certificate_id(pki: dict[str, Identity]) -> None:
    request = ocsp.load_der_ocsp_request(request_for(pki["alice"].cert, pki["root"].cert,
                                                     b"n" * 16))
    assert request.serial_number == pki["alice"].cert.serial_number
    assert request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"n" * 16


# The pure decision, with answers given -------------------------------------


def _context(pki: dict[str, Identity], answer: OCSPAnswer | None,
             fail_closed: bool) -> TrustContext:
    answers = {} if answer is None else {ocsp_key(pki["alice"].cert, pki["root"].cert): answer}
    return TrustContext(roots=[pki["root"].cert]).with_revocation(answers, fail_closed)


def test_an_out_of_date_good_answer_does_not_give_the_status(pki: dict[str, Identity]) -> None:
    stale = OCSPAnswer(OCSPStatus.GOOD, URL, this_update=NOW - timedelta(days=2),
                       next_update=NOW - timedelta(days=1))
    alice = pki["alice"].cert
    assert check(alice, Purpose.SIGNING, NOW, _context(pki, stale, False)).valid
    verdict = check(alice, Purpose.SIGNING, NOW, _context(pki, stale, True))
    assert not verdict.valid
    assert f"the OCSP answer of {URL} is out of date" in verdict.reason


def test_memory_store_answers_as_the_real_one(pki: dict[str, Identity]) -> None:
    clock = Clock()
    clock.advance(NOW.timestamp())
    alice = pki["alice"].cert
    revoked = OCSPAnswer(OCSPStatus.REVOKED, URL, revoked_at=NOW - timedelta(days=1))
    store = MemoryCertificateStore(clock, ocsp={ocsp_key(alice, pki["root"].cert): revoked})
    result_of(store.add_certificate(pki["root"].cert, store=ROOTS))
    result_of(store.add_certificate(alice))
    verdict = result_of(store.check(alice, Purpose.SIGNING))
    assert not verdict.valid and "(OCSP responder http://ocsp.example/)" in verdict.reason
    assert result_of(store.encryption_certificates("alice@partner.example")) == []


def test_the_client_keeps_failures_for_a_while() -> None:
    """
    An unreachable responder is asked again only after RETRY_AFTER: a
    fake agent counts the requests.
    """
    from twisted.internet.defer import fail

    asked = []

    class Refusing:
        def request(self, *args: object, **kwargs: object) -> object:
            asked.append(args)
            return fail(ConnectionRefusedError("refused"))

    clock = Clock()
    clock.advance(NOW.timestamp())
    root = make_ca("Retry Root", not_before=BEFORE, not_after=AFTER)
    user = _user("carol", root, "http://127.0.0.1:9/")
    client = OCSPClient(Refusing(), clock)  # type: ignore[arg-type]
    first = result_of_deferred(client.status(user.cert, root.cert))
    assert first.status is OCSPStatus.UNAVAILABLE
    assert "could not be reached (ConnectionRefusedError: refused)" in first.reason
    result_of_deferred(client.status(user.cert, root.cert))
    assert len(asked) == 1
    clock.advance(301)
    result_of_deferred(client.status(user.cert, root.cert))
    assert len(asked) == 2


def result_of_deferred(d: object) -> OCSPAnswer:
    results: list[object] = []
    d.addBoth(results.append)  # type: ignore[attr-defined]
    [result] = results
    assert isinstance(result, OCSPAnswer), result
    return result
