"""
PGP key discovery for recipients the keyring has no key for: the Web Key
Directory (draft-koch-openpgp-webkey-service, advanced and direct method)
and the Autocrypt headers of incoming mail from external senders.

What is found goes into the keyring (source C{wkd} or C{autocrypt}),
trusted at once only when the address's I{PGP trust discovered keys}
setting says so; otherwise it waits for an administrator.

A lookup is bounded in time (L{WKD_TIMEOUT}: a slow or dead directory
costs the queue that much at most, then the chain goes on to the next
method), done once at a time per address, and remembered: a key found is
in the keyring; "no key" for L{NOT_FOUND_KEPT}, a failure for
L{FAILURE_KEPT}.  Names are resolved with the MTA's DNS servers, as for
MX records; the directory's certificate is checked against the system's
trust store (C{SSL_CERT_FILE} is honoured).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any
from urllib.parse import quote

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import optionsForClientTLS
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import Interface, implementer

from cipherd.core.addresses import canonical_address
from cipherd.core.failures import describe_error
from cipherd.logs import mail_logger
from cipherd.pki.keyring import AUTOCRYPT, WKD, IKeyring
from cipherd.pki.pgp import IOpenPGP, PGPError, PGPKey
from cipherd.smtp.routing import HopNotFound, IHopResolver, NextHop
from cipherd.threads import IBlockingRunner

log = mail_logger("cipherd.mpa.discovery")

WKD_TIMEOUT = 4.0
NOT_FOUND_KEPT = 3600.0
FAILURE_KEPT = 600.0
MAX_KEY_SIZE = 256 * 1024
ADDRESSES_KEPT = 10_000

_ZBASE32 = "ybndrfg8ejkmcpqxot1uwisza345h769"


def zbase32(data: bytes) -> str:
    """
    z-base-32 (as WKD names a key: the SHA-1 of the local part, 32
    characters).
    """
    bits = "".join(f"{byte:08b}" for byte in data)
    bits += "0" * (-len(bits) % 5)
    return "".join(_ZBASE32[int(bits[i:i + 5], 2)] for i in range(0, len(bits), 5))


@dataclass(frozen=True)
class Location:
    host: str
    path: str

    @property
    def url(self) -> str:
        return f"https://{self.host}{self.path}"


def wkd_locations(address: str) -> tuple[Location, Location]:
    """
    Where the advanced and the direct method look for C{address}'s key.
    """
    local, _, domain = canonical_address(address).rpartition("@")
    domain = domain.lower()
    hashed = zbase32(hashlib.sha1(local.lower().encode()).digest())  # noqa: S324 - WKD's
    query = "?l=" + quote(local, safe="")
    return (Location(f"openpgpkey.{domain}",
                     f"/.well-known/openpgpkey/{domain}/hu/{hashed}{query}"),
            Location(domain, f"/.well-known/openpgpkey/hu/{hashed}{query}"))


class WKDError(Exception):
    """
    The directory could not be asked (the message says why, in a line).
    """


class IKeyDirectory(Interface):
    def fetch(address: str) -> Deferred[tuple[bytes | None, str]]:
        """
        The keys a directory has for C{address} (C{None}: none), and where
        it asked (a URL).

        @raise WKDError: it could not be asked.
        """


@implementer(IAgentEndpointFactory)
class _ToAddress:
    """
    Connections for one URL to one address the MTA's resolver gave, TLS
    checked for the URL's host name.
    """

    def __init__(self, reactor: Any, address: str, port: int, timeout: float) -> None:
        self._reactor = reactor
        self._address = address
        self._port = port
        self._timeout = timeout

    def endpointForURI(self, uri: Any) -> Any:
        host = uri.host.decode("idna")
        kind = TCP6ClientEndpoint if ":" in self._address else TCP4ClientEndpoint
        return wrapClientTLS(optionsForClientTLS(host),
                             kind(self._reactor, self._address, self._port,
                                  timeout=self._timeout))


class _Body(Protocol):
    """
    A response body, up to C{limit} bytes; with C{limit} 0, read and
    dropped.  Cancelling stops the transfer.
    """

    def __init__(self, limit: int) -> None:
        self.done: Deferred[bytes] = Deferred(lambda _: self._stop())
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if not self._limit or self.done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._stop()
            self.done.errback(WKDError(f"the answer is larger than {self._limit} bytes"))
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called or not self._limit:
            return
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(WKDError("the answer was cut short"))


@implementer(IKeyDirectory)
class WebKeyDirectory:
    """
    L{IKeyDirectory} over HTTPS: the advanced method, and the direct method
    when the advanced method's host name does not exist.

    @param resolver: the MTA's (L{cipherd.smtp.routing.DNSHopResolver}).
    @param port: 443 but in tests.
    """

    def __init__(self, reactor: Any, resolver: IHopResolver, *, port: int = 443,
                 timeout: float = WKD_TIMEOUT) -> None:
        self._reactor = reactor
        self._resolver = resolver
        self._port = port
        self._timeout = timeout

    def fetch(self, address: str) -> Deferred[tuple[bytes | None, str]]:
        return Deferred.fromCoroutine(self._fetch(address))

    async def _fetch(self, address: str) -> tuple[bytes | None, str]:
        advanced, direct = wkd_locations(address)
        try:
            addresses = await self._addresses(advanced.host)
            location = advanced
        except HopNotFound as e:
            if not e.permanent:
                raise WKDError(str(e)) from None
            location = direct
            try:
                addresses = await self._addresses(direct.host)
            except HopNotFound as e2:
                raise WKDError(str(e2)) from None
        return await self._get(location, addresses[0]), location.url

    async def _addresses(self, host: str) -> list[str]:
        found = await self._resolver.resolve(NextHop(host, host, self._port, False))
        return [address for _, address in found]

    async def _get(self, location: Location, address: str) -> bytes | None:
        agent = Agent.usingEndpointFactory(
            self._reactor, _ToAddress(self._reactor, address, self._port, self._timeout))
        try:
            response = await agent.request(
                b"GET", location.url.encode(),
                Headers({b"User-Agent": [b"cipherd"], b"Accept": [b"application/octet-stream"]}))
        except defer.CancelledError:
            raise  # the bound: L{defer.TimeoutError} for the caller
        except Exception as e:
            raise WKDError(f"{location.host} ({address}): {describe_error(e)}") from None
        if response.code == 404:
            response.deliverBody(_Body(0))  # read and dropped
            return None
        if response.code != 200:
            response.deliverBody(_Body(0))
            raise WKDError(f"{location.url} answered HTTP {response.code}")
        if response.length is not None and isinstance(response.length, int) \
                and response.length > MAX_KEY_SIZE:
            raise WKDError(f"the answer is larger than {MAX_KEY_SIZE} bytes")
        body = _Body(MAX_KEY_SIZE)
        response.deliverBody(body)
        return await body.done


class KeyDiscovery:
    """
    Keys found (see the module's docstring) and put into the keyring.
    """

    def __init__(self, keyring: IKeyring, directory: IKeyDirectory, openpgp: IOpenPGP,
                 crypto: IBlockingRunner, clock: IReactorTime,
                 timeout: float = WKD_TIMEOUT) -> None:
        self._keyring = keyring
        self._directory = directory
        self._openpgp = openpgp
        self._crypto = crypto
        self._clock = clock
        self._timeout = timeout
        self._remembered: dict[str, float] = {}
        self._running: dict[str, Deferred[bool]] = {}

    async def look_up(self, address: str, *, trusted: bool) -> bool:
        """
        Ask the recipient's Web Key Directory for C{address}'s key and keep
        what is found.

        @return: whether a key was stored.
        """
        address = canonical_address(address).lower()
        until = self._remembered.get(address)
        if until is not None and self._clock.seconds() < until:
            return False
        running = self._running.get(address)
        if running is None:
            running = Deferred.fromCoroutine(self._look_up(address, trusted))
            self._running[address] = running
            running.addBoth(self._done, address)
        return bool(await _shared(running))

    def _done(self, result: Any, address: str) -> Any:
        self._running.pop(address, None)
        return result

    async def _look_up(self, address: str, trusted: bool) -> bool:
        try:
            return await self._look_up_bounded(address, trusted)
        except Exception as e:  # the keyring, or the directory's client: not the queue's
            self._remember(address, FAILURE_KEPT)
            log.failure("WKD: the key of {address} could not be looked up", address=address,
                        failure=Failure(e))
            return False

    async def _look_up_bounded(self, address: str, trusted: bool) -> bool:
        started = self._clock.seconds()
        asking = self._directory.fetch(address)
        # The bound: whatever the lookup does when cancelled (a resolver may
        # go on to its next question), the answer is awaited no longer.
        outcome: Deferred[tuple[bool, Any]] = Deferred()

        def settle(result: Any, answered: bool) -> None:
            if not outcome.called:
                outcome.callback((answered, result))

        asking.addCallbacks(settle, settle, callbackArgs=(True,), errbackArgs=(False,))

        def give_up() -> None:
            settle(None, False)
            asking.cancel()

        bound = self._clock.callLater(self._timeout, give_up)
        answered, result = await outcome
        if bound.active():
            bound.cancel()
        if not answered:
            self._remember(address, FAILURE_KEPT)
            if result is None:
                log.warn("WKD: no answer for {address} within {seconds:g} s: the next "
                         "method", address=address, seconds=self._timeout)
                return False
            if not result.check(WKDError):
                result.raiseException()
            log.warn("WKD: the key of {address} could not be looked up: {why}",
                     address=address, why=result.value)
            return False
        data, url = result
        if data is None:
            self._remember(address, NOT_FOUND_KEPT)
            log.info("WKD: no key for {address} at {url}", address=address, url=url)
            return False
        try:
            keys = await self._crypto.run(self._openpgp.read_keys, data)
        except PGPError as e:
            self._remember(address, FAILURE_KEPT)
            log.warn("WKD: what {url} gave for {address} is not a key: {why}", url=url,
                     address=address, why=e)
            return False
        stored = await self._store(keys, address, trusted, WKD)
        if not stored:
            self._remember(address, NOT_FOUND_KEPT)
            log.warn("WKD: {url} gave no key with a user ID for {address}", url=url,
                     address=address)
            return False
        log.info("WKD: key {keys} for {address} from {url} ({seconds:.2f} s), stored "
                 "{trust}", keys=", ".join(k.upper() for k in stored), address=address,
                 url=url, seconds=self._clock.seconds() - started,
                 trust="trusted" if trusted else "untrusted: an administrator decides "
                 "(PGP keys)")
        return True

    def _remember(self, address: str, seconds: float) -> None:
        if len(self._remembered) >= ADDRESSES_KEPT:
            now = self._clock.seconds()
            self._remembered = {a: t for a, t in self._remembered.items() if t > now}
            if len(self._remembered) >= ADDRESSES_KEPT:
                self._remembered.clear()
        self._remembered[address] = self._clock.seconds() + seconds

    async def _store(self, keys: Sequence[PGPKey], address: str, trusted: bool,
                     source: str) -> list[str]:
        """
        The keys of C{keys} with a user ID for C{address} stored with that
        user ID only (the key's other addresses are the key's say-so, not
        the directory's or the sender's), without their secrets, trusted
        as C{trusted} says; a key the keyring has already is left as it is.

        @return: the fingerprints of the keys found.
        """
        stored = []
        for key in keys:
            if address not in key.emails:
                continue
            if await self._keyring.get(key.fingerprint) is None:
                try:
                    only = await self._crypto.run(self._openpgp.keep_user_ids, key, address)
                except PGPError:
                    continue
                await self._keyring.import_keys(only.public, trusted=trusted, source=source)
            stored.append(key.fingerprint)
        return stored

    async def collect_autocrypt(self, address: str, keydata: bytes, *, trusted: bool) -> None:
        """
        Store the key of an Autocrypt header (see L{autocrypt_header}) for
        C{address}, unless the keyring has it already.
        """
        try:
            keys = await self._crypto.run(self._openpgp.read_keys, keydata)
        except PGPError as e:
            log.warn("Autocrypt: the key in the header of {address}'s mail is not usable: "
                     "{why}", address=address, why=e)
            return
        for key in keys:
            if await self._keyring.get(key.fingerprint) is not None:
                return  # known already: trust and all
        stored = await self._store(keys[:1], address, trusted, AUTOCRYPT)
        if stored:
            log.info("Autocrypt: key {key} for {address} collected, stored {trust}",
                     key=stored[0].upper(), address=address,
                     trust="trusted" if trusted else "untrusted: an administrator decides "
                     "(PGP keys)")


def autocrypt_header(fields: Sequence[tuple[str, str]]) -> tuple[str, bytes] | None:
    """
    The address and key data of a message's Autocrypt header (Autocrypt
    Level 1), when there is one such header, its C{addr} is the (one) From
    address, and it has no critical attribute we do not know.
    """
    headers = [value for name, value in fields if name == "autocrypt"]
    senders = [value for name, value in fields if name == "from"]
    if len(headers) != 1 or len(senders) != 1:
        return None
    attributes = _attributes(headers[0])
    if attributes is None:
        return None
    from_addresses = [a for _, a in getaddresses(senders) if "@" in a]
    addr = canonical_address(attributes.get("addr", "")).lower()
    if len(from_addresses) != 1 or canonical_address(from_addresses[0]).lower() != addr:
        return None
    try:
        return addr, base64.b64decode(attributes.get("keydata", ""), validate=False)
    except ValueError:
        return None


def _attributes(value: str) -> Mapping[str, str] | None:
    """
    An Autocrypt header's attributes; C{None} when a critical one (not
    starting with C{_}) is unknown.
    """
    found: dict[str, str] = {}
    for item in value.split(";"):
        name, equals, content = item.strip().partition("=")
        name = name.strip().lower()
        if not equals:
            continue
        if name not in ("addr", "prefer-encrypt", "keydata") and not name.startswith("_"):
            return None
        found[name] = re.sub(r"\s+", "", content) if name == "keydata" else content.strip()
    return found if "addr" in found and "keydata" in found else None


def _shared(running: Deferred[bool]) -> Deferred[bool]:
    """
    A Deferred that fires as C{running} does, which cancelling does not
    cancel (another message may wait for the same lookup).  C{running}
    never fails (L{KeyDiscovery._look_up} catches everything).
    """
    result: Deferred[bool] = Deferred()

    def passed(value: bool) -> bool:
        if not result.called:
            result.callback(value)
        return value

    running.addCallback(passed)
    return result


__all__ = ["IKeyDirectory", "KeyDiscovery", "WKDError", "WebKeyDirectory", "autocrypt_header",
           "wkd_locations",
           "zbase32"]
