"""
Recipient address verification, Postfix's C{reject_unverified_recipient}:
before a recipient in a relay domain is accepted from a client outside
*my networks*, the next hop for it is asked (a probe: C{MAIL FROM:<>} and
C{RCPT TO}, routed as the mail would be).  What it said is remembered, so
one probe serves many messages:

    - deliverable: for 31 days (Postfix's
      C{address_verify_positive_expire_time});
    - undeliverable (a 5xx, or a name that does not exist): 3 days
      (C{address_verify_negative_expire_time});
    - not known yet (a 4xx, an unreachable hop): one minute, so a client
      that retries does not start a probe a time.

A probe that takes longer than C{WAIT} seconds goes on in the background;
the client meanwhile hears "450 ... Address verification in progress" and,
like any MTA, tries again later, when the answer is known.  The memory is
per process and bounded (C{MAX_ENTRIES}, least recently used out): a
restart only means new probes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from cipherd.core.envelope import Outcome
from cipherd.logs import mail_logger

log = mail_logger("cipherd.mta.verify")

POSITIVE_TTL = 31 * 86400.0
NEGATIVE_TTL = 3 * 86400.0
UNKNOWN_TTL = 60.0
# Postfix's smtpd polls three times, three seconds apart.
WAIT = 6.0
MAX_ENTRIES = 100_000


@dataclass(frozen=True)
class Verdict:
    """
    What is known of an address.

    @ivar status: C{"deliverable"}, C{"undeliverable"} or C{"unknown"}.
    @ivar reason: the next hop's words (Postfix's), for the reply and the log.
    """

    status: str
    reason: str


_IN_PROGRESS = Verdict("unknown", "Address verification in progress")


def _verdict(outcome: Outcome) -> Verdict:
    if outcome.status == "deliverable":
        return Verdict("deliverable", outcome.reason)
    if outcome.status == "bounced":
        return Verdict("undeliverable", outcome.reason)
    return Verdict("unknown", outcome.reason)


_TTL = {"deliverable": POSITIVE_TTL, "undeliverable": NEGATIVE_TTL, "unknown": UNKNOWN_TTL}


class AddressVerifier:
    """
    @param probe: C{probe(address)} → awaitable (L{Outcome}, relay): asks
        the next hop (L{cipherd.smtp.queue.QueueRunner.probe}).
    @param clock: for the memory's expiry and the wait.
    """

    def __init__(self, probe: Callable[[str], Awaitable[tuple[Outcome, str]]],
                 clock: IReactorTime, *, max_entries: int = MAX_ENTRIES,
                 handled_here: Callable[[str], Awaitable[bool]] | None = None) -> None:
        self._probe = probe
        self._clock = clock
        self._handled_here = handled_here
        self._max = max_entries
        self._known: OrderedDict[str, tuple[Verdict, float]] = OrderedDict()
        self._probing: dict[str, list[Deferred[Verdict]]] = {}

    def verify(self, address: str) -> Deferred[Verdict]:
        """
        What is known of C{address}, asking its next hop if need be; never
        fails, and fires within C{WAIT} seconds.
        """
        if self._handled_here is None:
            return self._verify(address)
        return Deferred.fromCoroutine(self._verify_unless_here(address))

    async def _verify_unless_here(self, address: str) -> Verdict:
        # The webmail relay recipient is this appliance's own: its mail is
        # never passed on, so there is no next hop to ask.
        assert self._handled_here is not None
        try:
            here = await self._handled_here(address)
        except Exception:
            log.failure("verify: could not tell whether <{rcpt}> is handled here",
                        rcpt=address)
            here = False
        if here:
            return Verdict("deliverable", "handled here")
        return await self._verify(address)

    def _verify(self, address: str) -> Deferred[Verdict]:
        local, at, domain = address.rpartition("@")
        key = f"{local}{at}{domain.lower()}"
        known = self._known.get(key)
        if known is not None:
            if known[1] > self._clock.seconds():
                self._known.move_to_end(key)
                return succeed(known[0])
            del self._known[key]
        waiter: Deferred[Verdict] = Deferred()
        timer = self._clock.callLater(WAIT, self._gave_up, waiter)
        waiter.addBoth(self._stop_timer, timer)
        waiting = self._probing.get(key)
        if waiting is not None:
            waiting.append(waiter)
            return waiter
        self._probing[key] = [waiter]
        probing = Deferred.fromCoroutine(self._ask(address))
        probing.addCallback(self._answered, key)
        return waiter

    async def _ask(self, address: str) -> Verdict:
        try:
            outcome, _ = await self._probe(address)
        except Exception:
            log.failure("verify: the probe for <{rcpt}> failed", rcpt=address)
            return Verdict("unknown", "Address verification failed")
        return _verdict(outcome)

    def _answered(self, verdict: Verdict, key: str) -> None:
        self._known[key] = (verdict, self._clock.seconds() + _TTL[verdict.status])
        self._known.move_to_end(key)
        while len(self._known) > self._max:
            self._known.popitem(last=False)
        for waiter in self._probing.pop(key, []):
            if not waiter.called:
                waiter.callback(verdict)

    @staticmethod
    def _gave_up(waiter: Deferred[Verdict]) -> None:
        if not waiter.called:
            waiter.callback(_IN_PROGRESS)

    @staticmethod
    def _stop_timer(result: Any, timer: Any) -> Any:
        if timer.active():
            timer.cancel()
        return result
