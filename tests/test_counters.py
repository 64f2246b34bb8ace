"""
What the services count for the dashboard: the in-memory counts (per hour,
by the injected clock), their storage per node and hour (added to, never
overwritten, on SQLite and PostgreSQL, by two processes of one node and by
two nodes), what the queue counts as mail flows, and the warnings and
errors passed to the counts from the log stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger, LogPublisher

from cipherd.core.counters import (
    BOUNCED,
    DEFERRED,
    DELIVERED,
    DELIVERY_FAILURE,
    HANDED_ON,
    HOUR,
    MAX_ERRORS,
    METHOD,
    RECEIVED,
    RELAY_FAILURE,
    TUNNEL_SENT,
    Counters,
)
from cipherd.core.envelope import Envelope, Outcome, Received
from cipherd.logs import ErrorsCounted
from cipherd.smtp.processing import Made, ProcessingResult, Results
from cipherd.smtp.spool import new_queue_id
from cipherd.store.counters import KEEP_ERRORS, CounterStore
from cipherd.testing import deferred_result, migrated_store, result_of
from tests.test_queue_runner import CONTENT, World

START = 1_800_000_000.0


def clock_at(seconds: float = START) -> Clock:
    clock = Clock()
    clock.advance(seconds)
    return clock


def test_counts_are_kept_per_hour_and_taken_once() -> None:
    clock = clock_at()
    counts = Counters(clock)
    counts.add(RECEIVED)
    counts.add(RECEIVED, 2)
    counts.add(DELIVERED, 0)
    clock.advance(HOUR)
    counts.add(RECEIVED)
    counts.mark(TUNNEL_SENT, "tunnel 1")
    counts.mark(TUNNEL_SENT, "tunnel 2")
    counts.error("cipherd.test", "x" * 1000)
    assert counts.pending(RECEIVED) == 4
    tally = counts.take()
    hour = int(START // HOUR)
    assert dict(tally.counts) == {(hour, RECEIVED): 3, (hour + 1, RECEIVED): 1}
    assert tally.marks[TUNNEL_SENT].detail == "tunnel 2"
    (error,) = tally.errors
    assert len(error.message) == 500 and error.message.endswith("…")
    assert not counts.take()


def test_a_tally_given_back_is_taken_again_with_what_came_since() -> None:
    clock = clock_at()
    counts = Counters(clock)
    counts.add(RECEIVED, 2)
    counts.mark(TUNNEL_SENT, "old")
    counts.error("cipherd.a", "first")
    tally = counts.take()
    counts.add(RECEIVED)
    counts.mark(TUNNEL_SENT, "new")
    counts.error("cipherd.a", "second")
    counts.restore(tally)
    again = counts.take()
    assert sum(again.counts.values()) == 3
    assert again.marks[TUNNEL_SENT].detail == "new"  # the newer mark stays
    assert [e.message for e in again.errors] == ["first", "second"]


def test_only_the_latest_errors_are_kept_in_memory() -> None:
    counts = Counters(clock_at())
    for n in range(MAX_ERRORS + 5):
        counts.error("cipherd.a", str(n))
    errors = counts.take().errors
    assert len(errors) == MAX_ERRORS and errors[0].message == "5"


def test_stored_counts_add_up_across_processes_and_nodes(database_url: str) -> None:
    store = migrated_store(database_url)
    clock = clock_at()
    main, worker, other = Counters(clock), Counters(clock), Counters(clock)
    stores = [CounterStore(store, main, "node-a"), CounterStore(store, worker, "node-a"),
              CounterStore(store, other, "node-b")]
    for _ in range(2):
        main.add(RECEIVED, 5)
        worker.add(RECEIVED, 1)
        other.add(RECEIVED, 10)
        other.add(METHOD + "smime", 3)
        for counter_store in stores:
            result_of(counter_store.store())
    clock.advance(HOUR)
    main.add(DELIVERED, 7)
    main.mark(RELAY_FAILURE, "on a")
    clock.advance(60)
    other.mark(RELAY_FAILURE, "on b")
    for counter_store in stores:
        result_of(counter_store.store())
    hour = int(START // HOUR)
    assert result_of(stores[0].hourly(hour)) == {
        (hour, RECEIVED): 32, (hour, METHOD + "smime"): 6, (hour + 1, DELIVERED): 7}
    assert result_of(stores[0].hourly(hour + 1)) == {(hour + 1, DELIVERED): 7}
    mark = result_of(stores[0].marks())[RELAY_FAILURE]
    assert (mark.node, mark.detail, mark.at) == ("node-b", "on b", START + HOUR + 60)
    # Nothing counted: nothing written.
    result_of(stores[0].store())
    # Old hours go: 4 rows, one per node, hour and name.
    assert result_of(stores[0].expire(START + 91 * 86400)) == 4


def test_counts_that_cannot_be_stored_are_kept(tmp_path: Path) -> None:
    store = migrated_store()
    counts = Counters(clock_at())
    counter_store = CounterStore(store, counts, "node-a")
    counts.add(RECEIVED, 4)
    store.close()
    d = Deferred.fromCoroutine(counter_store.store())
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures
    assert counts.pending(RECEIVED) == 4


def test_only_the_latest_errors_are_kept_in_the_database(database_url: str) -> None:
    store = migrated_store(database_url)
    counts = Counters(clock_at())
    counter_store = CounterStore(store, counts, "node-a")
    for batch in range(5):
        for n in range(MAX_ERRORS):
            counts.error("cipherd.a", f"{batch}-{n}")
        result_of(counter_store.store())
    errors = result_of(counter_store.errors(KEEP_ERRORS + 10))
    assert len(errors) == KEEP_ERRORS
    assert errors[0].message == f"4-{MAX_ERRORS - 1}"


def test_warnings_and_errors_of_cipherd_are_counted() -> None:
    publisher = LogPublisher()
    counts = Counters(clock_at())
    watcher = ErrorsCounted(counts, publisher)
    watcher.startService()
    log = Logger(namespace="cipherd.mpa.relay", observer=publisher)
    log.info("fine")
    log.warn("S/MIME decryption key not found; Queue id: {queue_id}", queue_id="ABC")
    log.error("two\nlines")
    Logger(namespace="twisted.web", observer=publisher).error("not ours")
    watcher.stopService()
    log.error("after the stop")
    assert [(e.source, e.message) for e in counts.take().errors] == [
        ("cipherd.mpa.relay", "S/MIME decryption key not found; Queue id: ABC"),
        ("cipherd.mpa.relay", "two lines")]


# What the queue counts --------------------------------------------------------


def test_the_queue_counts_what_arrives_and_what_becomes_of_each_recipient(
        tmp_path: Path) -> None:
    world = World(tmp_path)
    world.runner.kick = lambda: None  # type: ignore[method-assign]  # scan by hand
    deferred_result(world.runner.accept(Received(new_queue_id(), "a@example.org",
                                      ["b@example.com", "c@example.com"], "192.0.2.9",
                                      "client.example.org", CONTENT)))
    world.scan()
    assert world.counters.pending(RECEIVED) == 1
    assert world.counters.pending(DELIVERED) == 2
    down = World(tmp_path / "down")
    down.network.up = False
    down.enqueue()
    down.scan()
    assert down.counters.pending(DEFERRED) == 1
    tally = down.counters.take()
    assert "b@example.com" in tally.marks[DELIVERY_FAILURE].detail
    assert "Connection refused" in tally.marks[DELIVERY_FAILURE].detail


class ByMethod:
    """
    Sends the first recipient on encrypted, tunnels the second, refuses
    the third, and marks an event.
    """

    def process(self, envelope: Envelope, content: bytes) -> Deferred[ProcessingResult]:
        results = Results()
        first, second, third = envelope.recipients
        results.deliver(envelope.sender, [first], content + b"encrypted", "S/MIME", "smime")
        results.hand_on([second], Made(envelope.sender, ("relay@example.com",),
                                       b"tunnel"),
                        Outcome("sent", "2.0.0", "webmail tunnel message T1"),
                        relay="webmail", method="webmail")
        results.settle([third], Outcome("bounced", "5.7.1", "refused", notified=True))
        results.event(RELAY_FAILURE, "something")
        return Deferred.fromCoroutine(_result(results))


async def _result(results: Results) -> ProcessingResult:
    return results.result()


def test_processing_methods_are_counted_once_and_tunnels_marked(tmp_path: Path) -> None:
    world = World(tmp_path, processor=ByMethod())
    world.enqueue(recipients=("b@example.com", "c@example.com", "d@example.com"))
    world.scan()
    tally = world.counters.take()
    by_name: dict[str, int] = {}
    for (_, name), amount in tally.counts.items():
        by_name[name] = by_name.get(name, 0) + amount
    # The tunnel message is delivered (one recipient) and so is the
    # encrypted message; the refused one counts as bounced, by processing.
    assert by_name == {METHOD + "smime": 1, METHOD + "webmail": 1, DELIVERED: 2, BOUNCED: 1,
                       HANDED_ON: 2}
    assert tally.marks[TUNNEL_SENT].detail == "webmail tunnel message T1"
    assert tally.marks[RELAY_FAILURE].detail == "something"
