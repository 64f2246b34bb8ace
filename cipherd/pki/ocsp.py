"""
Revocation status by OCSP (RFC 6960): asking the responders a certificate
names in its authority information access, and reading their answers as
strictly as a signature.

An answer is believed only when it is about the certificate asked for (its
issuer's name and key hashes and its serial), is signed by the issuer
itself or by a responder the issuer certified for OCSP signing
(id-kp-OCSPSigning), carries back the nonce the request sent when it
carries one, and is current (thisUpdate not in the future, nextUpdate not
past, with L{CLOCK_SKEW}; an answer without nextUpdate is current for
L{UNSCHEDULED_LIFETIME} after its thisUpdate, so an old one replayed
without the nonce is not).  Anything else is
L{OCSPStatus.UNAVAILABLE} with its reason: whether that refuses the
certificate is the trust check's decision (fail open or closed).

Answers are kept until their nextUpdate, failures for L{RETRY_AFTER}, so a
busy gateway asks a responder about a certificate a few times a day, not
once per message; concurrent questions about one certificate share one
request.  A certificate's first L{MAX_RESPONDERS} responders are asked,
within L{TIMEOUT} in all, and at most L{MAX_ASKING} requests are open at
once.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from datetime import datetime
from io import BytesIO
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm as CryptographyUnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID
from twisted.internet.defer import Deferred, DeferredSemaphore, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse
from zope.interface import Interface, implementer

from cipherd.core.clock import utc_from_seconds
from cipherd.core.failures import describe_error
from cipherd.pki.certs import describe_name, issued_by, same_name, signature_verifies
from cipherd.pki.trust import (
    CLOCK_SKEW,
    UNSCHEDULED_LIFETIME,
    OCSPAnswer,
    OCSPStatus,
    ocsp_key,
)

# How long a certificate's responders may take in all, and how much one
# may send; how many of them are asked, and how many requests are open at
# once.
TIMEOUT = 10.0
MAX_RESPONSE = 64 * 1024
MAX_RESPONDERS = 2
MAX_ASKING = 32
# How long a failure is remembered before the responder is asked again,
# and how long an answer is kept at least (one just past its nextUpdate,
# within the clock skew, is not asked for again on every message).
RETRY_AFTER = 300.0
KEEP_AT_LEAST = 60.0
# Answers remembered at most (least recently used out first).
KEPT = 8192

NONCE_SIZE = 16

log = Logger(namespace="cipherd.pki")


def responder_urls(cert: x509.Certificate) -> list[str]:
    """
    The OCSP responders C{cert} names (HTTP and HTTPS only), in its order.
    """
    try:
        access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    except (x509.ExtensionNotFound, ValueError):
        return []
    return [d.access_location.value for d in access.value
            if d.access_method == AuthorityInformationAccessOID.OCSP
            and isinstance(d.access_location, x509.UniformResourceIdentifier)
            and d.access_location.value.lower().startswith(("http://", "https://"))
            and d.access_location.value.isascii()]


def request_for(cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes) -> bytes:
    """
    The DER of an OCSP request for C{cert} (SHA-1 certificate ID, as every
    responder understands) with C{nonce}.
    """
    builder = (ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303
               .add_extension(x509.OCSPNonce(nonce), critical=False))
    return builder.build().public_bytes(serialization.Encoding.DER)


def _unavailable(url: str, reason: str) -> OCSPAnswer:
    return OCSPAnswer(OCSPStatus.UNAVAILABLE, url, f"the OCSP responder {url} {reason}")


def read_response(der: bytes, cert: x509.Certificate, issuer: x509.Certificate,
                  nonce: bytes | None, now: datetime, url: str) -> OCSPAnswer:
    """
    What responder C{url}'s answer C{der} says of C{cert}, or why it says
    nothing that may be believed.

    @param nonce: the nonce the request carried (C{None}: none).
    """
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as e:
        return _unavailable(url, f"sent an answer that is not OCSP ({e})")
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        return _unavailable(url, f"refused to answer ({response.response_status.name})")
    try:
        single = _single_response(response, cert, issuer)
        if single is None:
            return _unavailable(url, "answered about another certificate")
        problem = (_nonce_problem(response, nonce) or _signer_problem(response, issuer, now)
                   or _time_problem(single, now))
        if problem:
            return _unavailable(url, problem)
        status = single.certificate_status
        this_update = single.this_update_utc
        next_update = single.next_update_utc
        revoked_at = single.revocation_time_utc
    except (ValueError, TypeError, CryptographyUnsupportedAlgorithm) as e:
        return _unavailable(url, f"sent an answer that cannot be read ({e})")
    if status is ocsp.OCSPCertStatus.REVOKED:
        return OCSPAnswer(OCSPStatus.REVOKED, url, "", this_update, next_update, revoked_at)
    if status is ocsp.OCSPCertStatus.UNKNOWN:
        return OCSPAnswer(OCSPStatus.UNKNOWN, url, f"the OCSP responder {url} does not know "
                          "the certificate", this_update, next_update)
    return OCSPAnswer(OCSPStatus.GOOD, url, "", this_update, next_update)


def _single_response(response: ocsp.OCSPResponse, cert: x509.Certificate,
                     issuer: x509.Certificate) -> ocsp.OCSPSingleResponse | None:
    asked: dict[str, ocsp.OCSPRequest] = {}
    for single in response.responses:
        algorithm = single.hash_algorithm
        if algorithm.name not in asked:
            try:
                asked[algorithm.name] = (ocsp.OCSPRequestBuilder()
                                         .add_certificate(cert, issuer, algorithm).build())
            except ValueError:
                continue  # a hash a request may not use: not our certificate ID
        request = asked[algorithm.name]
        if (single.serial_number == request.serial_number
                and single.issuer_key_hash == request.issuer_key_hash
                and single.issuer_name_hash == request.issuer_name_hash):
            return single
    return None


def _nonce_problem(response: ocsp.OCSPResponse, nonce: bytes | None) -> str | None:
    try:
        echoed = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        # Responders that pre-produce their answers (RFC 5019) send none;
        # the answer's own validity period bounds a replay.
        return None
    if nonce is not None and echoed != nonce:
        return "sent an answer with another request's nonce (a replayed answer?)"
    return None


def _responder_is(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if response.responder_key_hash is not None:
        return (x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
                == response.responder_key_hash)
    return response.responder_name is not None and same_name(response.responder_name,
                                                             cert.subject)


def _signer_problem(response: ocsp.OCSPResponse, issuer: x509.Certificate,
                    now: datetime) -> str | None:
    """
    Why the answer's signature is not the issuer's or its authorised
    responder's (RFC 6960 §4.2.2.2).
    """
    if _responder_is(response, issuer):
        return _signature_problem(response, issuer)
    delegated = [c for c in response.certificates if _responder_is(response, c)]
    if not delegated:
        return "signed its answer with a certificate it did not include"
    # Each certificate that bears the responder's name or key is tried: a
    # decoy put first does not hide the real one.
    problems = [_delegate_problem(signer, issuer, now) or _signature_problem(response, signer)
                for signer in delegated]
    return None if None in problems else problems[0]


def _delegate_problem(signer: x509.Certificate, issuer: x509.Certificate,
                      now: datetime) -> str | None:
    name = describe_name(signer.subject)
    if not issued_by(signer, issuer):
        return (f"signed its answer as {name}, which the certificate's issuer "
                f"{describe_name(issuer.subject)} did not certify")
    try:
        extensions = signer.extensions
        usage = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (x509.ExtensionNotFound, ValueError):
        usage = None
    if usage is None or ExtendedKeyUsageOID.OCSP_SIGNING not in usage:
        return (f"signed its answer as {name}, which is not allowed to sign OCSP answers "
                "(id-kp-OCSPSigning)")
    try:
        key_usage = extensions.get_extension_for_class(x509.KeyUsage).value
        if not key_usage.digital_signature:
            return f"signed its answer as {name}, whose key usage does not allow signing"
    except x509.ExtensionNotFound:
        pass
    if any(e.critical and e.oid not in _DELEGATE_UNDERSTOOD for e in extensions):
        return f"signed its answer as {name}, which has a critical extension not understood"
    if not signer.not_valid_before_utc <= now <= signer.not_valid_after_utc:
        return f"signed its answer as {name}, whose certificate is not valid now"
    return None


# What a delegated responder's certificate may mark critical.
_DELEGATE_UNDERSTOOD = {
    x509.oid.ExtensionOID.BASIC_CONSTRAINTS, x509.oid.ExtensionOID.KEY_USAGE,
    x509.oid.ExtensionOID.EXTENDED_KEY_USAGE, x509.oid.ExtensionOID.OCSP_NO_CHECK,
    x509.oid.ExtensionOID.SUBJECT_ALTERNATIVE_NAME, x509.oid.ExtensionOID.CERTIFICATE_POLICIES,
}


def _signature_problem(response: ocsp.OCSPResponse, signer: x509.Certificate) -> str | None:
    key = signer.public_key()
    hash_algorithm = response.signature_hash_algorithm
    parameters: Any = None
    if isinstance(key, rsa.RSAPublicKey):
        if response.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.RSASSA_PSS:
            return "signed its answer with RSA-PSS, which cipherd does not check in OCSP"
        parameters = padding.PKCS1v15()
    elif isinstance(key, ec.EllipticCurvePublicKey) and hash_algorithm is not None:
        parameters = ec.ECDSA(hash_algorithm)
    if not signature_verifies(key, response.signature, response.tbs_response_bytes,
                              parameters, hash_algorithm):
        return "sent an answer whose signature does not verify"
    return None


def _time_problem(single: ocsp.OCSPSingleResponse, now: datetime) -> str | None:
    this_update = single.this_update_utc
    if this_update > now + CLOCK_SKEW:
        return f"sent an answer dated in the future ({this_update:%Y-%m-%d %H:%M} UTC)"
    next_update = single.next_update_utc
    if next_update is not None and next_update + CLOCK_SKEW < now:
        return f"sent an out-of-date answer (next update {next_update:%Y-%m-%d %H:%M} UTC)"
    if next_update is None and this_update + UNSCHEDULED_LIFETIME + CLOCK_SKEW < now:
        return (f"sent an out-of-date answer (from {this_update:%Y-%m-%d %H:%M} UTC, without "
                "a next update)")
    return None


class IOCSPClient(Interface):
    """
    Revocation status of certificates from their OCSP responders.
    """

    def status(cert: x509.Certificate, issuer: x509.Certificate
               ) -> Deferred[OCSPAnswer | None]:
        """
        @return: what C{cert}'s responders say of it (the first usable
            answer, else the last failure), or C{None} when it names no
            responder.  Never fails.
        """


class _Body(Protocol):
    """
    A response body, at most L{MAX_RESPONSE} bytes.
    """

    def __init__(self, done: Deferred[bytes]) -> None:
        self._done = done
        self._parts: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > MAX_RESPONSE:
            self.stop()
            if not self._done.called:
                self._done.errback(ValueError(f"more than {MAX_RESPONSE} bytes"))
            return
        self._parts.append(data)

    def stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._done.called:
            return
        # Without a length the end of the body is the end of the connection
        # (PotentialDataLoss): the DER says whether it is whole.
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback(b"".join(self._parts))
        else:
            self._done.errback(reason)  # the connection broke before the end


@implementer(IOCSPClient)
class OCSPClient:
    """
    The L{IOCSPClient} of a deployment: HTTP POST to each responder through
    C{agent}, answers kept in memory (per node).
    """

    def __init__(self, agent: IAgent, clock: IReactorTime) -> None:
        self._agent = agent
        self._clock = clock
        self._kept: OrderedDict[tuple[str, int], tuple[OCSPAnswer, float]] = OrderedDict()
        self._asking: dict[tuple[str, int], list[Deferred[OCSPAnswer | None]]] = {}
        self._open = DeferredSemaphore(MAX_ASKING)

    def status(self, cert: x509.Certificate, issuer: x509.Certificate
               ) -> Deferred[OCSPAnswer | None]:
        urls = responder_urls(cert)[:MAX_RESPONDERS]
        if not urls:
            return succeed(None)
        key = ocsp_key(cert, issuer)
        kept = self._kept.get(key)
        if kept is not None and self._clock.seconds() < kept[1]:
            self._kept.move_to_end(key)
            return succeed(kept[0])
        waiting: Deferred[OCSPAnswer | None] = Deferred()
        if key in self._asking:
            self._asking[key].append(waiting)
            return waiting
        self._asking[key] = [waiting]
        Deferred.fromCoroutine(self._ask(key, urls, cert, issuer)).addErrback(
            lambda failure: log.failure("OCSP for {key}", failure, key=key))
        return waiting

    async def _ask(self, key: tuple[str, int], urls: list[str], cert: x509.Certificate,
                   issuer: x509.Certificate) -> None:
        answer = _unavailable(urls[0], "was not asked")
        deadline = self._clock.seconds() + TIMEOUT
        try:
            await self._open.acquire()
            try:
                for url in urls:
                    left = deadline - self._clock.seconds()
                    if left <= 0:
                        break
                    try:
                        answer = await self._ask_one(url, cert, issuer, left)
                    except Exception as e:  # a fault reading one answer: told, logged
                        log.failure("OCSP responder {url}", url=url)
                        answer = _unavailable(url, f"sent an answer that cannot be read ({e})")
                    if answer.status is not OCSPStatus.UNAVAILABLE:
                        break
            finally:
                self._open.release()
        finally:
            self._keep(key, answer)
            for waiting in self._asking.pop(key):
                waiting.callback(answer)

    def _keep(self, key: tuple[str, int], answer: OCSPAnswer) -> None:
        now = self._clock.seconds()
        relied_on = answer.until()
        if answer.status is OCSPStatus.UNAVAILABLE or relied_on is None:
            until = now + RETRY_AFTER
        else:
            until = max(relied_on.timestamp(), now + KEEP_AT_LEAST)
        self._kept[key] = (answer, until)
        self._kept.move_to_end(key)
        if len(self._kept) > KEPT:
            self._kept.popitem(last=False)

    async def _ask_one(self, url: str, cert: x509.Certificate, issuer: x509.Certificate,
                       timeout: float) -> OCSPAnswer:
        nonce = os.urandom(NONCE_SIZE)
        request = request_for(cert, issuer, nonce)
        waiting: list[Deferred[Any]] = []

        def expire() -> None:
            for d in waiting:
                d.cancel()

        expiry = self._clock.callLater(timeout, expire)
        try:
            body = FileBodyProducer(BytesIO(request))
            asked = self._agent.request(
                b"POST", url.encode("ascii"),
                Headers({b"Content-Type": [b"application/ocsp-request"],
                         b"Accept": [b"application/ocsp-response"]}), body)
            waiting[:] = [asked]
            response: IResponse = await asked
            received: Deferred[bytes] = Deferred(lambda _: reader.stop())
            reader = _Body(received)
            waiting[:] = [received]
            response.deliverBody(reader)
            der = await received
        except Exception as e:  # the network's failures: refused, reset, DNS, too big
            if not expiry.active():
                return _unavailable(url, f"did not answer within {timeout:g} seconds")
            if isinstance(e, ValueError):
                return _unavailable(url, f"sent a bad answer ({e})")
            return _unavailable(url, f"could not be reached ({describe_error(e)})")
        finally:
            if expiry.active():
                expiry.cancel()
        if response.code != 200:
            return _unavailable(url, f"answered HTTP {response.code} "
                                     f"{response.phrase.decode('latin-1')}")
        return read_response(der, cert, issuer, nonce, utc_from_seconds(self._clock.seconds()),
                             url)


def ocsp_client(reactor: Any) -> OCSPClient:
    """
    The L{OCSPClient} of a running appliance, over C{reactor}'s network.
    """
    return OCSPClient(Agent(reactor, connectTimeout=TIMEOUT), reactor)


__all__ = ["IOCSPClient", "OCSPClient", "ocsp_client", "read_response", "request_for",
           "responder_urls"]
