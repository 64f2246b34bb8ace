"""
What the services count for the dashboard and the metrics: messages per
hour by what became of them and by method, the time and detail of the last
event of a kind (a tunnel sent, a relay failure), and the last errors.

The services add to an L{ICounters} on the reactor thread; nothing there
waits.  The counts are kept per hour (UTC, the hour of the clock when they
happened) until L{Counters.take} hands them to whoever stores them (see
L{cipherd.store.counters}, one row per node, hour and name), and given back
with L{Counters.restore} when they could not be stored.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface, implementer

HOUR = 3600

# The names counted.  Per message: RECEIVED.  Per recipient: what became of
# it at a delivery (DELIVERED, BOUNCED, DEFERRED), and the method processing
# chose for it (METHOD + plain, smime, pgp, pdf, webmail, incoming,
# mailbox).
RECEIVED = "received"
DELIVERED = "delivered"
BOUNCED = "bounced"
DEFERRED = "deferred"
METHOD = "method."
OUTCOMES = (RECEIVED, DELIVERED, BOUNCED, DEFERRED)
METHODS = ("plain", "smime", "pgp", "pdf", "webmail", "incoming", "mailbox")

# Marks: the last time something happened.
TUNNEL_SENT = "tunnel.sent"
TUNNEL_RECEIVED = "tunnel.received"
RELAY_FAILURE = "relay.failure"
DELIVERY_FAILURE = "delivery.failure"

# The errors remembered between two stores, and shown.
MAX_ERRORS = 50
# The longest detail or error text kept.
MAX_TEXT = 500


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


@dataclass(frozen=True)
class Mark:
    at: float
    detail: str


@dataclass(frozen=True)
class ErrorNote:
    at: float
    source: str
    message: str


@dataclass
class Tally:
    """
    What was counted since the last L{Counters.take}.

    @ivar counts: C{{(hour, name): amount}}, the hour as hours since the
        epoch.
    """

    counts: Counter[tuple[int, str]] = field(default_factory=Counter)
    marks: dict[str, Mark] = field(default_factory=dict)
    errors: list[ErrorNote] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.counts or self.marks or self.errors)


class ICounters(Interface):
    """
    Where the services count what they do.
    """

    def add(name: str, amount: int = 1) -> None:
        """
        Count C{amount} more of C{name} in the current hour.
        """

    def mark(name: str, detail: str = "") -> None:
        """
        Remember that C{name} happened now, with C{detail} (no secrets).
        """

    def error(source: str, message: str) -> None:
        """
        Remember an error (shown on the dashboard; no secrets).
        """


@implementer(ICounters)
class Counters:
    """
    The counts of this process, kept in memory until taken.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._tally = Tally()
        self._errors: deque[ErrorNote] = deque(maxlen=MAX_ERRORS)

    def add(self, name: str, amount: int = 1) -> None:
        if amount:
            self._tally.counts[(int(self._clock.seconds() // HOUR), name)] += amount

    def mark(self, name: str, detail: str = "") -> None:
        self._tally.marks[name] = Mark(self._clock.seconds(), _clip(detail))

    def error(self, source: str, message: str) -> None:
        self._errors.append(ErrorNote(self._clock.seconds(), source, _clip(message)))

    def take(self) -> Tally:
        """
        Everything counted since the last take; counting starts afresh.
        """
        tally, self._tally = self._tally, Tally()
        tally.errors = list(self._errors)
        self._errors.clear()
        return tally

    def restore(self, tally: Tally) -> None:
        """
        Give back a tally that could not be stored: counted again with what
        came since, taken with it next time.
        """
        self._tally.counts.update(tally.counts)
        for name, mark in tally.marks.items():
            if name not in self._tally.marks:
                self._tally.marks[name] = mark
        newer = list(self._errors)
        self._errors.clear()
        self._errors.extend([*tally.errors, *newer])

    def pending(self, name: str) -> int:
        """
        How many of C{name} are counted and not yet taken (all hours).
        """
        return sum(n for (_, counted), n in self._tally.counts.items() if counted == name)
