"""
The dashboard (the admin site's home page): is mail flowing, what is stuck,
what expires soon, does the tunnel work, is there room on the disk and does
the database answer.

Its numbers come from what the services count (L{cipherd.core.counters},
stored per node and hour), summed over the nodes; its charts are SVG made
here, with the same numbers in a table beside them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy import Connection, text
from twisted.internet.interfaces import IReactorTime

from cipherd.core.counters import (
    BACKUP_FAILURE,
    BACKUP_MADE,
    BOUNCED,
    DEFERRED,
    DELAY_BUCKETS,
    DELIVERED,
    DELIVERY_DELAY,
    DELIVERY_FAILURE,
    ERRORS,
    HANDED_ON,
    HANDED_ON_TLS,
    HOUR,
    METHOD,
    METHODS,
    RECEIVED,
    RECEIVED_TLS,
    RELAY_FAILURE,
    TUNNEL_RECEIVED,
    TUNNEL_SENT,
    Counters,
    Histogram,
)
from cipherd.smtp.queue import MailQueue
from cipherd.store import DatabaseUnavailable, Store
from cipherd.store.ca import expiring_cas
from cipherd.store.certificates import ROOTS, addresses_with_valid_keys, expiring_certificates
from cipherd.store.counters import CounterStore, StoredError, StoredMark
from cipherd.store.pgpkeys import expiring_keys

HOURS = 48
DAY = 86400.0
WARN_DAYS = 30
# The disk is short of room below this share free (or this many bytes).
DISK_LOW_SHARE = 0.10
DISK_LOW_BYTES = 1 << 30

METHOD_TITLES = {
    "plain": "Plain (not encrypted)", "smime": "S/MIME", "pgp": "PGP", "pdf": "PDF",
    "webmail": "Webmail tunnel", "incoming": "Incoming, opened", "mailbox": "Into mailboxes",
}
MARK_TITLES = {
    TUNNEL_SENT: "Last tunnel message sent", TUNNEL_RECEIVED: "Last tunnel message received",
    RELAY_FAILURE: "Last relay failure", DELIVERY_FAILURE: "Last delivery failure",
    BACKUP_MADE: "Last scheduled backup", BACKUP_FAILURE: "Last failed backup",
}


@dataclass(frozen=True)
class Expiry:
    """
    A certificate or key of ours that expires soon (C{severity}
    C{"warning"}) or has expired while still the only one of its address
    (C{"error"}).
    """

    kind: str
    name: str
    addresses: tuple[str, ...]
    expires: float
    severity: str
    link: str


@dataclass(frozen=True)
class QueueState:
    state: str
    count: int
    oldest: float | None


@dataclass
class DashboardView:
    """
    What the dashboard shows.  A part that could not be read has its
    reason in C{problems} instead.
    """

    now: float
    node: str
    hours: list[int] = field(default_factory=list)
    hourly: dict[tuple[int, str], int] = field(default_factory=dict)
    queue: list[QueueState] = field(default_factory=list)
    errors: list[StoredError] = field(default_factory=list)
    marks: dict[str, StoredMark] = field(default_factory=dict)
    expiring: list[Expiry] = field(default_factory=list)
    disk_free: int = 0
    disk_total: int = 0
    database_ms: float | None = None
    problems: dict[str, str] = field(default_factory=dict)

    def series(self, name: str) -> list[int]:
        return [self.hourly.get((hour, name), 0) for hour in self.hours]

    def total(self, name: str, hours: int = HOURS) -> int:
        return sum(self.series(name)[-hours:])

    @property
    def hour_rows(self) -> list[tuple[str, int, int, int, int]]:
        """
        (hour, received, delivered, deferred, bounced) for each hour with
        mail, newest first.
        """
        received, delivered, deferred, bounced = (
            self.series(name) for name in (RECEIVED, DELIVERED, DEFERRED, BOUNCED))
        rows = [(datetime.fromtimestamp(hour * HOUR, UTC).strftime("%d %b %H:00"),
                 received[i], delivered[i], deferred[i], bounced[i])
                for i, hour in enumerate(self.hours)
                if received[i] or delivered[i] or deferred[i] or bounced[i]]
        return rows[::-1]

    @property
    def methods(self) -> list[tuple[str, str, int, int]]:
        """
        (method, title, last hour, last 48 hours) for every method.
        """
        return [(m, METHOD_TITLES[m], self.total(METHOD + m, 1), self.total(METHOD + m))
                for m in METHODS]

    @property
    def disk_low(self) -> bool:
        return self.disk_total > 0 and (self.disk_free < DISK_LOW_BYTES
                                        or self.disk_free < DISK_LOW_SHARE * self.disk_total)


def _ping(conn: Connection) -> None:
    conn.execute(text("SELECT 1"))


class Dashboard:
    """
    Gathers the dashboard's numbers.

    @param disk_usage: C{(free, total)} bytes of the spool's file system.
    """

    def __init__(self, store: Store, counts: CounterStore, queue: MailQueue,
                 disk_usage: Callable[[], tuple[int, int]], node: str,
                 clock: IReactorTime) -> None:
        self._store = store
        self._counts = counts
        self._queue = queue
        self._disk_usage = disk_usage
        self._node = node
        self._clock = clock

    async def view(self) -> DashboardView:
        now = self._clock.seconds()
        current = int(now // HOUR)
        view = DashboardView(now, self._node, hours=list(range(current - HOURS + 1,
                                                                current + 1)))
        started = time.monotonic()
        try:
            await self._store.read(_ping)
            view.database_ms = (time.monotonic() - started) * 1000
        except DatabaseUnavailable as e:
            view.problems["database"] = e.reason
        for part, fill in (("counts", self._fill_counts), ("expiring", self._fill_expiring)):
            try:
                await fill(view)
            except DatabaseUnavailable as e:
                view.problems[part] = e.reason
        messages = await self._queue.messages()
        states: dict[str, list[float]] = {}
        for message in messages:
            states.setdefault(message.state, []).append(message.envelope.received)
        view.queue = [QueueState(state, len(states.get(state, [])),
                                 min(states[state]) if states.get(state) else None)
                      for state in ("active", "deferred", "hold")]
        view.disk_free, view.disk_total = self._disk_usage()
        return view

    async def metrics(self) -> bytes:
        """
        The Prometheus text of this process (L{metrics}).
        """
        return await metrics(self._counts.counts, self._queue, self._node,
                             self._clock.seconds())

    async def _fill_counts(self, view: DashboardView) -> None:
        view.hourly = await self._counts.hourly(view.hours[0])
        view.marks = await self._counts.marks()
        view.errors = await self._counts.errors(10)

    async def _fill_expiring(self, view: DashboardView) -> None:
        soon = view.now + WARN_DAYS * DAY
        certs = await self._store.read(expiring_certificates, soon)
        valid = await self._store.read(addresses_with_valid_keys, view.now)
        keys = await self._store.read(expiring_keys, soon)
        cas = await self._store.read(expiring_cas, soon)
        found: list[Expiry] = [Expiry(
            "Certificate authority", ca.subject, (), ca.not_after or 0,
            "error" if (ca.not_after or 0) < view.now else "warning",
            f"/ca/authorities/{ca.id}") for ca in cas]
        mine = {ca.thumbprint for ca in cas}
        for row in certs:
            if row.thumbprint in mine:
                continue  # a root made here: said once, as a CA
            expired = row.not_after < view.now
            if expired and (row.store == ROOTS or set(row.emails) & valid):
                # A root past its date, or an old certificate of an address
                # that has a newer one: nothing uses it any more.
                continue
            found.append(Expiry(
                "Root" if row.store == ROOTS else "Certificate with key", row.subject,
                row.emails, row.not_after, "error" if expired else "warning",
                f"/pki/{row.store}/{row.thumbprint}"))
        for key in keys:
            assert key.expires is not None
            found.append(Expiry(
                "PGP key" + (" with secret" if key.secret is not None else ""),
                key.fingerprint.upper(), key.user_ids, key.expires,
                "error" if key.expires < view.now else "warning",
                f"/pgp/keys/{key.fingerprint.upper()}"))
        view.expiring = sorted(found, key=lambda e: (e.severity != "error", e.expires))


# Charts -----------------------------------------------------------------------

_WIDTH = 720
_HEIGHT = 180
_LEFT = 44
_BOTTOM = 22
_TOP = 10


def _nice_top(value: int) -> int:
    """
    The chart's top: a round number at or above C{value}.
    """
    if value <= 4:
        return 4
    step = 10 ** (len(str(value)) - 1)
    for factor in (1, 2, 2.5, 5, 10):
        top = int(step * factor)
        if top >= value:
            return top
    return value


def hourly_chart(title: str, hours: Sequence[int],
                 series: Sequence[tuple[str, str, Sequence[int]]]) -> Markup:
    """
    A bar chart of C{series} (name, CSS class, values per hour) stacked
    per hour, as inline SVG with a title and a description for screen
    readers.
    """
    totals = [sum(values[i] for _, _, values in series) for i in range(len(hours))]
    top = _nice_top(max(totals, default=0))
    plot_w = _WIDTH - _LEFT - 6
    plot_h = _HEIGHT - _BOTTOM - _TOP
    slot = plot_w / max(len(hours), 1)
    bar = max(slot - 2, 1)
    summary = ", ".join(f"{name} {sum(values):,}" for name, _, values in series)
    parts = [
        Markup('<svg class="chart" viewBox="0 0 {} {}" role="img" aria-label="{}: in the last '
               '{} hours, {}" preserveAspectRatio="xMidYMid meet"><title>{}</title>').format(
            _WIDTH, _HEIGHT, title, len(hours), summary, title),
    ]
    for fraction in (0, 0.5, 1):
        y = _TOP + plot_h * (1 - fraction)
        parts.append(Markup('<line class="grid" x1="{}" x2="{}" y1="{:.1f}" y2="{:.1f}"/>'
                            '<text class="axis" x="{}" y="{:.1f}" text-anchor="end">{:,}</text>'
                            ).format(_LEFT, _WIDTH - 6, y, y, _LEFT - 6, y + 4,
                                     int(top * fraction)))
    for i, hour in enumerate(hours):
        x = _LEFT + i * slot + 1
        base = 0
        when = datetime.fromtimestamp(hour * HOUR, UTC)
        for name, css, values in series:
            value = values[i]
            if value:
                y = _TOP + plot_h * (1 - (base + value) / top)
                parts.append(Markup(
                    '<rect class="{}" x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}">'
                    '<title>{} UTC: {} {:,}</title></rect>').format(
                    css, x, y, bar, plot_h * value / top, when.strftime("%d %b %H:00"), name,
                    value))
                base += value
        if hour % 6 == 0:
            label = when.strftime("%d %b" if hour % 24 == 0 else "%H:00")
            parts.append(Markup('<text class="axis" x="{:.1f}" y="{}" text-anchor="middle">{}'
                                '</text>').format(x + bar / 2, _HEIGHT - 6, label))
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def charts(view: DashboardView) -> dict[str, Any]:
    """
    The dashboard's two charts: messages received, and what became of the
    recipients.
    """
    return {
        "received": hourly_chart("Messages received per hour", view.hours,
                                 [("received", "received", view.series(RECEIVED))]),
        "outcomes": hourly_chart(
            "Recipients delivered, deferred and bounced per hour", view.hours,
            [("delivered", "delivered", view.series(DELIVERED)),
             ("deferred", "deferred", view.series(DEFERRED)),
             ("bounced", "bounced", view.series(BOUNCED))]),
    }


# Metrics (Prometheus) ---------------------------------------------------------


class _Snapshot:
    """
    A collector of metric families read once, for one scrape.
    """

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


async def metrics(counts: Counters, queue: MailQueue, node: str, now: float) -> bytes:
    """
    This process's counts since it started and the queue now, in the
    Prometheus text format.
    """
    totals = counts.totals
    queued = GaugeMetricFamily("cipherd_queue_messages", "Messages in the queue, by state.",
                               labels=["state"])
    oldest = GaugeMetricFamily("cipherd_queue_oldest_seconds",
                               "Age of the oldest message in the queue, by state.",
                               labels=["state"])
    by_state: dict[str, list[float]] = {"active": [], "deferred": [], "hold": []}
    for message in await queue.messages():
        by_state.setdefault(message.state, []).append(message.envelope.received)
    for state, times in by_state.items():
        queued.add_metric([state], len(times))
        oldest.add_metric([state], now - min(times) if times else 0.0)
    received = CounterMetricFamily("cipherd_messages_received", "Messages accepted into the "
                                   "queue, by whether they came over TLS.", labels=["tls"])
    received.add_metric(["true"], totals[RECEIVED_TLS])
    received.add_metric(["false"], totals[RECEIVED] - totals[RECEIVED_TLS])
    handed = CounterMetricFamily("cipherd_messages_handed_on", "Messages handed to a next "
                                 "hop, by whether over TLS.", labels=["tls"])
    handed.add_metric(["true"], totals[HANDED_ON_TLS])
    handed.add_metric(["false"], totals[HANDED_ON] - totals[HANDED_ON_TLS])
    outcomes = CounterMetricFamily("cipherd_recipients", "What became of recipients at "
                                   "delivery attempts.", labels=["outcome"])
    for name in (DELIVERED, DEFERRED, BOUNCED):
        outcomes.add_metric([name], totals[name])
    methods = CounterMetricFamily("cipherd_recipients_processed", "Recipients by how "
                                  "processing sent them on.", labels=["method"])
    for method in METHODS:
        methods.add_metric([method], totals[METHOD + method])
    errors = CounterMetricFamily("cipherd_errors", "Warnings and errors logged.")
    errors.add_metric([], totals[ERRORS])
    delay = HistogramMetricFamily("cipherd_delivery_delay_seconds", "Seconds from a "
                                  "message's arrival to a recipient's delivery.")
    histogram = counts.histograms.get(DELIVERY_DELAY, Histogram())
    delay.add_metric([], [*((f"{bound:g}", n) for bound, n in zip(DELAY_BUCKETS,
                                                                   histogram.buckets,
                                                                   strict=True)),
                          ("+Inf", histogram.count)], histogram.total)
    info = GaugeMetricFamily("cipherd_node_info", "This node.", labels=["node"])
    info.add_metric([node], 1)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot([queued, oldest, received, handed, outcomes, methods, errors,
                                 delay, info]))
    return generate_latest(registry)
