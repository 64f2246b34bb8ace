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
# Per message: received over TLS; handed to a next hop, and of those over TLS.
RECEIVED_TLS = "received.tls"
HANDED_ON = "handed_on"
HANDED_ON_TLS = "handed_on.tls"
# Warnings and errors logged.
ERRORS = "errors"
# Observed: seconds from a message's arrival to a recipient's delivery.
DELIVERY_DELAY = "delivery_delay"
DELAY_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
                 86400.0)
METHODS = ("plain", "smime", "pgp", "pdf", "webmail", "incoming", "mailbox")

# Marks: the last time something happened.
TUNNEL_SENT = "tunnel.sent"
TUNNEL_RECEIVED = "tunnel.received"
RELAY_FAILURE = "relay.failure"
DELIVERY_FAILURE = "delivery.failure"
BACKUP_MADE = "backup.made"
BACKUP_FAILURE = "backup.failure"

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

    def observe(name: str, value: float) -> None:
        """
        Count C{value} into histogram C{name} (L{DELAY_BUCKETS}).
        """


@dataclass
class Histogram:
    """
    Cumulative counts per upper bound, as Prometheus keeps them.
    """

    buckets: list[int] = field(default_factory=lambda: [0] * len(DELAY_BUCKETS))
    count: int = 0
    total: float = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(DELAY_BUCKETS):
            if value <= bound:
                self.buckets[i] += 1
        self.count += 1
        self.total += value


@implementer(ICounters)
class Counters:
    """
    The counts of this process, kept in memory until taken.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._tally = Tally()
        self._errors: deque[ErrorNote] = deque(maxlen=MAX_ERRORS)
        # Since this process started, never taken: for the metrics.
        self.totals: Counter[str] = Counter()
        self.histograms: dict[str, Histogram] = {}

    def add(self, name: str, amount: int = 1) -> None:
        if amount:
            self._tally.counts[(int(self._clock.seconds() // HOUR), name)] += amount
            self.totals[name] += amount

    def observe(self, name: str, value: float) -> None:
        self.histograms.setdefault(name, Histogram()).observe(value)

    def mark(self, name: str, detail: str = "") -> None:
        self._tally.marks[name] = Mark(self._clock.seconds(), _clip(detail))

    def error(self, source: str, message: str) -> None:
        self._errors.append(ErrorNote(self._clock.seconds(), source, _clip(message)))
        self.totals[ERRORS] += 1

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
