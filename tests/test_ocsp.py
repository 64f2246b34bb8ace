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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from zope.interface import implementer
from zope.interface.verify import verifyObject

from cipherd.pki import certs
from cipherd.pki.certstore import CertificateStore
from cipherd.pki.ocsp import IOCSPClient, OCSPClient, ocsp_client, read_response, request_for
from cipherd.pki.trust import (
    CTLStatus,
    OCSPAnswer,
    OCSPStatus,
    Purpose,
    TrustContext,
    check,
    ocsp_key,
)
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


# The client, with a clock and an agent made here ---------------------------


class FakeResponse:
    def __init__(self, body: bytes, code: int = 200, phrase: bytes = b"OK") -> None:
        self.code, self.phrase, self._body = code, phrase, body

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(None)
        protocol.dataReceived(self._body)
        protocol.connectionLost(Failure(ResponseDone()))


class FakeAgent:
    """
    Answers each request with what C{answer(url, body)} gives: a response,
    an exception, or C{None} to never answer.
    """

    def __init__(self, answer: Callable[[str, bytes], Any]) -> None:
        self._answer = answer
        self.asked: list[str] = []

    def request(self, method: bytes, uri: bytes, headers: Any = None,
                body: Any = None) -> Deferred[Any]:
        assert method == b"POST"
        url = uri.decode()
        self.asked.append(url)
        answer = self._answer(url, _read_producer(body))
        if answer is None:
            return Deferred()
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)


def _read_producer(producer: Any) -> bytes:
    # FileBodyProducer writes through the reactor's cooperator: read its
    # file instead.
    data: bytes = producer._inputFile.getvalue()
    return data


def _client(answer: Callable[[str, bytes], Any]) -> tuple[OCSPClient, FakeAgent, Clock]:
    clock = Clock()
    clock.advance(NOW.timestamp())
    agent = FakeAgent(answer)
    return OCSPClient(agent, clock), agent, clock  # type: ignore[arg-type]


def _status(client: OCSPClient, cert: x509.Certificate, issuer: x509.Certificate
            ) -> Deferred[OCSPAnswer | None]:
    return client.status(cert, issuer)


def _fired(d: Deferred[Any]) -> OCSPAnswer:
    results: list[Any] = []
    d.addBoth(results.append)
    [result] = results
    assert isinstance(result, OCSPAnswer), result
    return result


def _good_for(pki: dict[str, Identity], next_update: datetime | None
              ) -> Callable[[str, bytes], Any]:
    """
    A responder that answers GOOD for alice with the request's nonce.
    """
    def answer(url: str, body: bytes) -> FakeResponse:
        nonce = ocsp.load_der_ocsp_request(body).extensions.get_extension_for_class(
            x509.OCSPNonce).value.nonce
        return FakeResponse(_answer(pki["alice"].cert, pki["root"], pki["root"], nonce=nonce,
                                    next_update=next_update))
    return answer


def test_answers_are_kept_until_their_next_update(pki: dict[str, Identity]) -> None:
    client, agent, clock = _client(_good_for(pki, NOW + timedelta(hours=1)))
    alice, root = pki["alice"].cert, pki["root"].cert
    first = _fired(_status(client, alice, root))
    assert first.status is OCSPStatus.GOOD, first.reason
    clock.advance(3599)
    assert _fired(_status(client, alice, root)) is first
    assert len(agent.asked) == 1
    clock.advance(2)  # past its nextUpdate: asked again
    assert _fired(_status(client, alice, root)).status is OCSPStatus.GOOD
    assert len(agent.asked) == 2


def test_questions_asked_together_share_one_request(pki: dict[str, Identity]) -> None:
    client, agent, clock = _client(lambda url, body: None)
    alice, root = pki["alice"].cert, pki["root"].cert
    waiting = [_status(client, alice, root) for _ in range(3)]
    assert len(agent.asked) == 1
    clock.advance(10)  # the responder never answers
    answers = [_fired(d) for d in waiting]
    assert answers[0] is answers[1] is answers[2]
    assert answers[0].reason == f"the OCSP responder {URL} did not answer within 10 seconds"


def test_the_second_responder_is_asked_when_the_first_fails(pki: dict[str, Identity]) -> None:
    root = pki["root"]
    user = make_user("dan@partner.example", root, not_before=BEFORE, not_after=AFTER,
                     extra=[(x509.AuthorityInformationAccess([
                         x509.AccessDescription(x509.oid.AuthorityInformationAccessOID.OCSP,
                                                x509.UniformResourceIdentifier(url))
                         for url in ("http://a.example/", "http://b.example/",
                                     "http://c.example/")]), False)])
    good = _good_for({"alice": user, "root": root}, NOW + timedelta(hours=1))

    def answer(url: str, body: bytes) -> Any:
        if url == "http://a.example/":
            return FakeResponse(b"busy", 503, b"Service Unavailable")
        return good(url, body)

    client, _, _ = _client(answer)
    got = _fired(_status(client, user.cert, root.cert))
    assert got.status is OCSPStatus.GOOD and got.responder == "http://b.example/"
    # At most two responders: the third is never asked.
    client, agent, _ = _client(lambda url, body: ConnectionRefusedError())
    got = _fired(_status(client, user.cert, root.cert))
    assert agent.asked == ["http://a.example/", "http://b.example/"]
    assert got.reason == ("the OCSP responder http://b.example/ could not be reached "
                          "(ConnectionRefusedError)")


@pytest.mark.parametrize(("body", "code", "reason"), [
    (b"<html>", 503, "answered HTTP 503 Service Unavailable"),
    (b"x" * 70_000, 200, "sent a bad answer (more than 65536 bytes)"),
])
def test_what_is_not_an_answer_says_why(pki: dict[str, Identity], body: bytes, code: int,
                                        reason: str) -> None:
    phrase = b"Service Unavailable" if code == 503 else b"OK"
    client, _, _ = _client(lambda url, request: FakeResponse(body, code, phrase))
    got = _fired(_status(client, pki["alice"].cert, pki["root"].cert))
    assert got.status is OCSPStatus.UNAVAILABLE
    assert got.reason == f"the OCSP responder {URL} {reason}"


def test_the_client_keeps_failures_for_a_while(pki: dict[str, Identity]) -> None:
    """
    An unreachable responder is asked again only after RETRY_AFTER.
    """
    client, agent, clock = _client(lambda url, body: ConnectionRefusedError("refused"))
    alice, root = pki["alice"].cert, pki["root"].cert
    first = _fired(_status(client, alice, root))
    assert first.reason.endswith("could not be reached (ConnectionRefusedError: refused)")
    _fired(_status(client, alice, root))
    assert len(agent.asked) == 1
    clock.advance(301)
    _fired(_status(client, alice, root))
    assert len(agent.asked) == 2


def test_an_old_answer_without_a_next_update_is_not_believed(
        pki: dict[str, Identity]) -> None:
    """
    Replayed without the nonce, an answer with no nextUpdate from long ago
    (before a revocation) says nothing; a fresh one counts for minutes.
    """
    alice, root = pki["alice"].cert, pki["root"]
    old = _read(pki, _answer(alice, root, root, this_update=NOW - timedelta(days=700),
                             next_update=None))
    assert old.status is OCSPStatus.UNAVAILABLE
    assert "sent an out-of-date answer (from " in old.reason
    fresh = _read(pki, _answer(alice, root, root, next_update=None))
    assert fresh.status is OCSPStatus.GOOD
    assert fresh.current(NOW + timedelta(minutes=9))
    assert not fresh.current(NOW + timedelta(minutes=11))


def test_an_answer_in_an_unknown_algorithm_says_so(pki: dict[str, Identity]) -> None:
    der = bytearray(_answer(pki["alice"].cert, pki["root"], pki["root"]))
    # sha256WithRSAEncryption (1.2.840.113549.1.1.11) made 1.2.840.113549.1.1.99.
    oid = bytes.fromhex("2a864886f70d01010b")
    at = der.rindex(oid)
    der[at + len(oid) - 1] = 99
    answer = _read(pki, bytes(der))
    assert answer.status is OCSPStatus.UNAVAILABLE
    assert "sent an answer that cannot be read (" in answer.reason


def test_a_decoy_delegate_does_not_hide_the_real_one(pki: dict[str, Identity]) -> None:
    real = pki["delegate"]
    decoy = make_user("r@ca.example", pki["root"], not_before=BEFORE, not_after=AFTER,
                      eku=EMAIL_EKU, san=False, key=real.key)  # same key, no OCSP signing
    der = (ocsp.OCSPResponseBuilder().add_response(
        cert=pki["alice"].cert, issuer=pki["root"].cert, algorithm=hashes.SHA256(),
        cert_status=ocsp.OCSPCertStatus.GOOD, this_update=NOW,
        next_update=NOW + timedelta(hours=1), revocation_time=None, revocation_reason=None)
        .responder_id(ocsp.OCSPResponderEncoding.HASH, real.cert)
        .certificates([decoy.cert, real.cert])
        .sign(real.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    assert _read(pki, der).status is OCSPStatus.GOOD


def test_a_verdict_made_before_a_blacklisting_is_not_kept(pki: dict[str, Identity]) -> None:
    """
    A blacklisting that lands while a responder is being asked is not
    undone by a verdict made from what was read before it.
    """
    pending: list[Deferred[OCSPAnswer | None]] = []

    @implementer(IOCSPClient)
    class Slow:
        def status(self, cert: x509.Certificate, issuer: x509.Certificate
                   ) -> Deferred[OCSPAnswer | None]:
            d: Deferred[OCSPAnswer | None] = Deferred()
            pending.append(d)
            return d

    clock = Clock()
    clock.advance(NOW.timestamp())
    store = CertificateStore(migrated_store(), clock, os.urandom(32), SynchronousRunner(),
                             Slow())
    root = pki["root"]
    first = _user("erin", root, URL)
    second = make_user("erin@partner.example", root, not_before=BEFORE,
                       not_after=AFTER - timedelta(days=1), key_usage=SMIME_USAGE,
                       eku=EMAIL_EKU)
    result_of(store.add_certificate(root.cert, store=ROOTS))
    result_of(store.add_certificate(first.cert))
    result_of(store.add_certificate(second.cert))
    selecting = Deferred.fromCoroutine(store.encryption_certificates("erin@partner.example"))
    assert len(pending) == 1  # the first certificate's responder is being asked
    result_of(store.set_ctl(certs.thumbprint(second.cert), CTLStatus.BLACKLISTED))
    # Another question reads the change meanwhile (a new epoch).
    assert result_of(store.check(root.cert, Purpose.ANY)).valid
    pending[0].callback(None)
    [pending_d.callback(None) for pending_d in pending[1:]]
    assert selecting.called
    verdict = result_of(store.check(second.cert, Purpose.ENCRYPTION))
    assert not verdict.valid and "blacklisted" in verdict.reason
