"""
The mail queue: takes what the SMTP server accepted into the spool, passes
each message through the processing seam, delivers it to its next hops,
defers what could not be delivered yet (retrying with exponential back-off
up to the queue lifetime) and bounces what cannot be delivered at all —
never losing a message on the way: the spool changes only after the next
hop said 250, or after a bounce was queued in its place.

When a message is due is read from its queue file's own record
(C{next_attempt}), whatever directory the file is in, so a crash in the
middle of a deferral neither retries it at once nor counts the attempt
twice.  A database that is locked or down (L{DatabaseUnavailable} from
processing) is our own fault, not the message's: it is retried within
seconds, then deferred for a short while without counting as an attempt,
and never bounced.  (That exception is all smtp takes from cipherd.store,
which imports nothing of smtp.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from zope.interface import Interface, implementer

from cipherd.core.counters import (
    BOUNCED,
    DEFERRED,
    DELIVERED,
    DELIVERY_DELAY,
    DELIVERY_FAILURE,
    HANDED_ON,
    HANDED_ON_TLS,
    METHOD,
    RECEIVED,
    RECEIVED_TLS,
    TUNNEL_SENT,
    ICounters,
)
from cipherd.core.envelope import Envelope, Outcome, Received
from cipherd.logs import mail_logger
from cipherd.smtp.bounce import Failed, build_bounce
from cipherd.smtp.client import ConnectionCache, Delivery, SMTPClient
from cipherd.smtp.config import MTAConfig
from cipherd.smtp.processing import Disposition, IMessageProcessor, Made, ProcessingResult
from cipherd.smtp.routing import (
    HopNotFound,
    IHopResolver,
    NextHop,
    connect_failure_reason,
    next_hop,
)
from cipherd.smtp.spool import ISpool, QueuedMessage, SpoolError, new_queue_id
from cipherd.store import DatabaseUnavailable
from cipherd.threads import IBlockingRunner

Connect = Callable[[str, int, Protocol], "Deferred[Any]"]

log = mail_logger("cipherd.mta.qmgr")


# What each outcome of a recipient counts as.
_COUNTED = {"sent": DELIVERED, "bounced": BOUNCED, "deferred": DEFERRED}

def _seconds(value: float) -> str:
    """
    A delay as Postfix logs it: two significant digits, 10 ms resolution.
    """
    if value < 0.005:
        return "0"
    return f"{max(value, 0.01):.2g}"


class MailQueue:
    """
    @param spool: where messages are kept.
    @param runner: where the spool's disk work runs.
    @param clock: for the time a message was received.
    """

    def __init__(self, spool: ISpool, runner: IBlockingRunner, clock: IReactorTime) -> None:
        self._spool = spool
        self._runner = runner
        self._clock = clock
        # The admin's changes so far (held, released, deleted): a message
        # written while one was made is read back before it is delivered,
        # not taken from memory as it was written.
        self.changes = 0

    def accept(self, received: Received) -> Deferred[QueuedMessage]:
        """
        Write an accepted message to disk; the server answers 250 when this
        fires, 451 when it fails.
        """
        return self.enqueue(received.queue_id, received.sender, received.recipients,
                            received.content, received.client)

    def enqueue(self, queue_id: str, sender: str, recipients: list[str], content: bytes,
                client: str, *, processed: bool = False) -> Deferred[QueuedMessage]:
        """
        Write a new message to disk, with Postfix's qmgr line once it is there.

        @param processed: made by processing: not to be processed again.
        """
        envelope = Envelope(queue_id, sender, tuple(recipients), self._clock.seconds(),
                            client=client, extra={PROCESSED: True} if processed else {})
        d: Deferred[QueuedMessage] = self._runner.run(self._spool.store, envelope, content)

        def queued(message: QueuedMessage) -> QueuedMessage:
            log.info("{queue_id}: from=<{sender}>, size={size}, nrcpt={count} (queue active)",
                     queue_id=queue_id, sender=sender, size=message.size,
                     count=len(recipients))
            return message

        return d.addCallback(queued)

    async def messages(self) -> list[QueuedMessage]:
        result: list[QueuedMessage] = await self._runner.run(self._spool.messages)
        return result

    async def delete(self, queue_id: str, *, quiet: bool = False) -> bool:
        """
        Remove a message: the admin's decision, or, C{quiet}, the queue's
        own once it is delivered or bounced.
        """
        if not quiet:
            self.changes += 1
        removed: bool = await self._runner.run(self._spool.remove, queue_id)
        if removed and not quiet:
            log.info("{queue_id}: removed", queue_id=queue_id)
        return removed

    async def hold(self, queue_id: str) -> bool:
        """
        Keep a message from delivery until it is released.
        """
        return await self._set_state(queue_id, "hold", "held")

    async def release(self, queue_id: str) -> bool:
        """
        Put a held (or deferred) message back for delivery now: the spool
        clears its next attempt as it moves it into C{active}.
        """
        return await self._set_state(queue_id, "active", "released")

    async def _set_state(self, queue_id: str, state: str, what: str) -> bool:
        self.changes += 1
        try:
            await self.move(queue_id, state)
        except KeyError:
            return False
        log.info("{queue_id}: {what}", queue_id=queue_id, what=what)
        return True

    async def load(self, queue_id: str) -> tuple[QueuedMessage, bytes]:
        result: tuple[QueuedMessage, bytes] = await self._runner.run(self._spool.load,
                                                                     queue_id)
        return result

    async def head(self, queue_id: str, limit: int) -> tuple[QueuedMessage, bytes]:
        """
        The message and the first C{limit} bytes of its content.

        @raise KeyError: no message with that id.
        """
        found: tuple[QueuedMessage, bytes] = await self._runner.run(self._spool.head, queue_id,
                                                                    limit)
        return found

    async def store(self, envelope: Envelope, content: bytes) -> QueuedMessage:
        stored: QueuedMessage = await self._runner.run(self._spool.store, envelope, content)
        return stored

    async def commit(self, queue_id: str, results: list[tuple[Envelope, bytes]],
                     keep: Envelope | None) -> tuple[QueuedMessage | None,
                                                     list[QueuedMessage]]:
        committed: tuple[QueuedMessage | None, list[QueuedMessage]] = await self._runner.run(
            self._spool.commit, queue_id, results, keep)
        return committed

    async def move(self, queue_id: str, state: str, envelope: Envelope | None = None,
                   keep_hold: bool = False) -> QueuedMessage:
        moved: QueuedMessage = await self._runner.run(self._spool.move, queue_id, state,
                                                      envelope, keep_hold)
        return moved


def describe(message: QueuedMessage) -> dict[str, Any]:
    """
    A queued message as the API shows it.
    """
    envelope = message.envelope
    return {
        "id": envelope.queue_id, "state": message.state, "sender": envelope.sender,
        "recipients": list(envelope.recipients), "size": message.size,
        "received": envelope.received, "attempts": envelope.attempts,
        "reason": envelope.reason,
    }


class ISubmission(Interface):
    """
    Outbound submission: how mail made here (the admin's test mail, the
    portal's replies and password resets) enters the queue.
    """

    def submit(sender: str, recipients: list[str], content: bytes, client: str, *,
               processed: bool = False) -> Deferred[QueuedMessage]:
        """
        Queue a message, no relay check, and deliver it soon.

        @param processed: made by processing: delivered as it is.
        @return: the message as queued, once it is on disk.
        """


# Envelope.extra: the message was made by processing (a tunnel message, a
# notice): it is delivered as it is, never processed again.
PROCESSED = "processed"


# Postfix's defaults: minimal_backoff_time, maximal_backoff_time,
# maximal_queue_lifetime, and the queue manager's scan interval.
MIN_BACKOFF = 300.0
MAX_BACKOFF = 4000.0
QUEUE_LIFETIME = 5 * 86400.0
SCAN_INTERVAL = 60.0
# Processing that found the database locked or down is tried again after
# each of these waits (seconds; ~15 s in all, a lock held by a backup or a
# migration is usually gone by then), then the message is deferred for
# DATABASE_DEFERRAL: not a back-off step, and never towards a bounce.  The
# scan (SCAN_INTERVAL) takes it up again within a minute.
DATABASE_RETRY_WAITS = (2.0, 4.0, 8.0)
DATABASE_DEFERRAL = 30.0
# Messages delivered at once (Postfix's default_process_limit), and
# connections to one next hop at once (default_destination_concurrency_limit).
CONCURRENT_DELIVERIES = 100
PER_DESTINATION = 20
# Address verification probes to one next hop at once.
PROBES_PER_DESTINATION = 5


@implementer(ISubmission)
class QueueRunner:
    """
    Delivers what is due in the queue.

    @param queue: the queue (spool and its runner).
    @param config: the MTA config in force (relay hosts, transports, names).
    @param resolver: next hop → addresses.
    @param connect: C{connect(address, port, protocol)} → Deferred firing
        when connected, failing with the socket error.
    @param processor: what every message not made by processing passes
        before delivery.
    @param tls: client TLS options for opportunistic STARTTLS, or C{None}.
    @param counters: counts what arrives, what becomes of each recipient and
        how processing sent it on.
    """

    def __init__(self, queue: MailQueue, config: Callable[[], MTAConfig],
                 resolver: IHopResolver, connect: Connect, clock: IReactorTime,
                 processor: IMessageProcessor, *, counters: ICounters, tls: Any = None,
                 lifetime: float = QUEUE_LIFETIME) -> None:
        self._queue = queue
        self._counters = counters
        self._config = config
        self._resolver = resolver
        self._connect = connect
        self._clock = clock
        self._tls = tls
        self._processor = processor
        self._lifetime = lifetime
        self._busy: set[str] = set()
        self._limit = DeferredSemaphore(CONCURRENT_DELIVERIES)
        self._per_hop: dict[NextHop, DeferredSemaphore] = {}
        self._per_hop_probes: dict[NextHop, DeferredSemaphore] = {}
        # Connections to next hops between two messages.
        self._connections = ConnectionCache(clock, PER_DESTINATION)
        self._stuck: set[str] = set()  # delivered in part, queue file not updated
        self._scheduled: Any = None
        # Waits before processing is tried again, cancelled by stop().
        self._waits: set[Deferred[None]] = set()
        # An episode of database unavailability: when it began, and how
        # many messages were deferred for it (logged at its start and end).
        self._database_down_since: float | None = None
        self._database_deferrals = 0

    def accept(self, received: Received) -> Deferred[QueuedMessage]:
        """
        Queue a message the SMTP server accepted, and deliver it soon.
        """
        changes = self._queue.changes  # before the write begins
        return self._queue.accept(received).addCallback(self._counted, received.tls).addCallback(
            self._kicked, received.content, changes)

    def _counted(self, message: QueuedMessage, tls: bool = False) -> QueuedMessage:
        self._counters.add(RECEIVED)
        if tls:
            self._counters.add(RECEIVED_TLS)
        return message

    def _kicked(self, message: QueuedMessage, content: bytes, changes: int) -> QueuedMessage:
        self.deliver_soon(message.envelope.queue_id, self._as_written(message, content, changes))
        return message

    def _as_written(self, message: QueuedMessage, content: bytes, changes: int
                    ) -> tuple[QueuedMessage, bytes] | None:
        """
        The message as it was just written, to deliver from memory; or
        C{None} (read it back) when the admin held, released or deleted a
        message since the write began: it may be this one.
        """
        return (message, content) if self._queue.changes == changes else None

    def deliver_soon(self, queue_id: str,
                     stored: tuple[QueuedMessage, bytes] | None = None) -> None:
        """
        Start delivery of one message that just arrived, without scanning
        the whole queue for it.

        @param stored: the message as it was just written, used instead of
            reading it again if its attempt starts at once (L{_as_written}
            says whether the admin may have changed it meanwhile).
        """
        if queue_id in self._busy:
            return
        self._busy.add(queue_id)
        if not self._limit.tokens:
            stored = None  # it waits for a place: read it when its turn comes
        d = Deferred.fromCoroutine(self._attempt_claimed(queue_id, stored=stored))
        d.addErrback(lambda f: log.failure("{queue_id}: the delivery attempt failed", f,
                                           queue_id=queue_id))

    def deliver_now(self, queue_id: str) -> bool:
        """
        Start an attempt at one message now, deferred or not (the admin's
        *deliver now* for a selection); not one that is held or under way.

        @return: whether an attempt was started.
        """
        if queue_id in self._busy:
            return False
        self._busy.add(queue_id)
        self._stuck.discard(queue_id)
        d = Deferred.fromCoroutine(self._attempt_claimed(queue_id, flush=True))
        d.addErrback(lambda f: log.failure("{queue_id}: the delivery attempt failed", f,
                                           queue_id=queue_id))
        return True

    def submit(self, sender: str, recipients: list[str], content: bytes, client: str, *,
               processed: bool = False) -> Deferred[QueuedMessage]:
        """
        Queue a message made here (the admin's test mail, the portal's
        replies and resets): no relay check, the same queue, delivered at
        once (L{ISubmission}).
        """
        changes = self._queue.changes
        d = self._queue.enqueue(new_queue_id(), sender, recipients, content, client,
                                processed=processed)
        return d.addCallback(self._counted).addCallback(self._kicked, content, changes)

    def now(self) -> float:
        return self._clock.seconds()

    def kick(self) -> None:
        """
        Look at the queue soon (a message arrived, or the admin flushed).
        """
        if self._scheduled is None or not self._scheduled.active():
            self._scheduled = self._clock.callLater(0, self._scan_logged)

    def stop(self) -> None:
        """
        Start nothing more: messages waiting to be processed again stay in
        the queue as they are on disk.
        """
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._connections.close()
        for wait in list(self._waits):
            wait.cancel()

    def _scan_logged(self) -> Deferred[None]:
        d = Deferred.fromCoroutine(self.scan())
        d.addErrback(lambda f: log.failure("The queue scan failed", f))
        return d

    async def scan(self, *, flush: bool = False) -> None:
        """
        Deliver every message that is due: not held, and its record's next
        attempt has come (all that are not held, with C{flush}).  New and
        released messages have none; a deferred one in C{active/} (a crash
        between the renames of its deferral) waits like any deferred one.
        """
        now = self._clock.seconds()
        if flush:
            self._stuck.clear()
        due = [m for m in await self._queue.messages()
               if m.envelope.queue_id not in self._busy
               and m.envelope.queue_id not in self._stuck and m.state != "hold"
               and (flush or m.envelope.next_attempt <= now)]
        # Claimed now, not when its turn comes: a second scan meanwhile must
        # not start the same message again.
        self._busy.update(m.envelope.queue_id for m in due)
        attempts = [Deferred.fromCoroutine(self._attempt_claimed(m.envelope.queue_id, flush))
                    for m in due]
        for attempt in attempts:
            attempt.addErrback(lambda f: log.failure("A delivery attempt failed", f))
        await DeferredList(attempts)

    async def _attempt_claimed(self, queue_id: str, flush: bool = False, *,
                               stored: tuple[QueuedMessage, bytes] | None = None) -> None:
        """
        Attempt a claimed message, within the limit of deliveries at once;
        while the database is unavailable, try again after each of
        L{DATABASE_RETRY_WAITS} (without holding a place meanwhile).
        """
        try:
            for tries_left in range(len(DATABASE_RETRY_WAITS), -1, -1):
                again = await self._limit.run(self._attempt, queue_id, flush,
                                              tries_left > 0, stored)
                stored = None
                if not again:
                    return
                wait = deferLater(self._clock,
                                  DATABASE_RETRY_WAITS[-tries_left], lambda: None)
                self._waits.add(wait)
                try:
                    await wait
                except CancelledError:
                    return  # stopping: the queue file is as it was
                finally:
                    self._waits.discard(wait)
        finally:
            self._busy.discard(queue_id)

    async def _attempt(self, queue_id: str, flush: bool, may_wait: bool = False,
                       stored: tuple[QueuedMessage, bytes] | None = None) -> bool:
        """
        Process and deliver one message, and settle it in the queue.

        @param may_wait: if the database is unavailable, return C{True}
            (to be tried again soon) instead of deferring the message.
        @param stored: the message as it was written a moment ago, not
            to be read again.
        @return: whether to try again soon.
        """
        started = self._clock.seconds()
        if stored is not None:
            queued, content = stored
        else:
            try:
                queued, content = await self._queue.load(queue_id)
            except KeyError:
                return False  # deleted meanwhile
        envelope = queued.envelope
        # Claimed a while ago maybe (waiting for a place): as it is now.
        # The record says when it is due, whichever directory it is in.
        if queued.state == "hold" or (not flush and envelope.next_attempt > started):
            return False
        if not envelope.extra.get(PROCESSED):
            try:
                processed = await self._processor.process(envelope, content)
                self._database_answered()
            except DatabaseUnavailable as e:
                self._database_unavailable(queue_id, e)
                if may_wait:
                    return True
                await self._defer_for_database(queued, e, started)
                return False
            except Exception as e:
                self._database_answered()
                log.failure("{queue_id}: processing failed; the message stays queued",
                            queue_id=queue_id)
                # Retried like a next hop that is down, and bounced when the
                # queue lifetime is over: a message no attempt can process
                # must not stay for ever.
                why = f"processing failed ({type(e).__name__}: {str(e)[:200]})"
                self._counters.add(DEFERRED, len(envelope.recipients))
                await self._settle(queued, content, {
                    r: Outcome("deferred", "4.3.0", why) for r in envelope.recipients},
                    started)
                return False
            if processed.is_unchanged(envelope, content):
                # Nothing to write: the message is its own processed form
                # (marked so in memory, and on disk if it is deferred).
                envelope = replace(envelope, extra={**envelope.extra, PROCESSED: True})
                queued = replace(queued, envelope=envelope)
                self._count_processing(processed)
            else:
                written = await self._write_results(queued, content, processed, started)
                if written is None:
                    return False
                queued, content = written
                envelope = queued.envelope
                if queued.state == "hold":
                    return False
        config = self._config()
        outcomes: dict[str, Outcome] = {}
        relays: dict[str, str] = {}
        limit = config.after_filter_message_size_limit
        if limit and len(content) > limit:
            outcomes = dict.fromkeys(envelope.recipients, Outcome(
                "bounced", "5.3.4", f"message size exceeds the after-filter limit ({limit} "
                "bytes)"))
        else:
            by_hop: dict[NextHop, list[str]] = {}
            for recipient in envelope.recipients:
                by_hop.setdefault(next_hop(recipient, config), []).append(recipient)
            results = await DeferredList([
                Deferred.fromCoroutine(self._deliver_to(hop, envelope.sender, rcpts,
                                                        content, config))
                for hop, rcpts in by_hop.items()], consumeErrors=True)
            for (ok, result), (hop, rcpts) in zip(results, by_hop.items(), strict=True):
                if ok:
                    hop_outcomes, relay = result
                else:
                    log.failure("{queue_id}: delivery to {hop} failed",
                                result,  # type: ignore[arg-type]  # a Failure when not ok
                                queue_id=queue_id, hop=hop.name)
                    hop_outcomes = {r: Outcome("deferred", "4.3.0", "internal error")
                                    for r in rcpts}
                    relay = "none"
                outcomes.update(hop_outcomes)
                relays.update(dict.fromkeys(hop_outcomes, relay))
        for recipient in envelope.recipients:
            outcome = outcomes.setdefault(
                recipient, Outcome("deferred", "4.3.0", "the processor lost this recipient"))
            self._log_outcome(envelope, recipient, outcome, relays.get(recipient, "none"),
                              started)
        try:
            await self._settle(queued, content, outcomes, started)
        except Exception:
            # The queue file could not be read or renamed at all (a full
            # disk alone does not get here: the spool keeps the new envelope
            # in memory).  The recipients already served must not get it
            # again at every scan: this node leaves it alone until a flush
            # or a restart.
            log.failure("{queue_id}: the queue file could not be updated after delivery; "
                        "it is not tried again until the queue is flushed",
                        queue_id=queue_id)
            self._stuck.add(queue_id)
        return False

    async def _write_results(self, queued: QueuedMessage, content: bytes,
                             result: ProcessingResult, started: float
                             ) -> tuple[QueuedMessage, bytes] | None:
        """
        Queue what processing made of a message and settle it, in one step
        (L{ISpool.commit}); log what became of each of its recipients.  A
        result that cannot be queued (nothing written, or a processor's
        result that does not hold together) defers the message as it is,
        to be processed again, as a processing failure does.

        @return: what now lies under its queue id (its processed form, to
            be delivered in this attempt), or C{None}: nothing (or only
            recipients processing deferred, deferred here).
        """
        envelope = queued.envelope
        try:
            planned = self._plan(envelope, content, result)
            made, ids, dispositions, kept, failed = planned
            results = [(Envelope(ids[i], made[i].sender, made[i].recipients, envelope.received,
                                 client="mpa", extra={PROCESSED: True}), made[i].content)
                       for i in sorted(range(len(made)), key=lambda i: ids[i] != envelope.queue_id)]
            keep = replace(envelope, recipients=tuple(kept)) if kept else None
            head: QueuedMessage | None = queued
            others: list[QueuedMessage] = []
            changes = self._queue.changes
            if made or len(kept) < len(envelope.recipients):
                head, others = await self._queue.commit(envelope.queue_id, results, keep)
            # else nothing made, nobody settled: nothing to write.
        except KeyError:
            log.info("{queue_id}: deleted while it was processed", queue_id=envelope.queue_id)
            return None
        except Exception as e:
            if isinstance(e, SpoolError):
                log.error("{queue_id}: the results of processing could not be queued: {why}",
                          queue_id=envelope.queue_id, why=e)
                why = f"the results of processing could not be queued: {e}"
            else:
                log.failure("{queue_id}: the results of processing could not be queued",
                            queue_id=envelope.queue_id)
                why = f"processing failed ({type(e).__name__}: {str(e)[:200]})"
            outcome = Outcome("deferred", "4.3.0", why)
            for recipient in envelope.recipients:
                self._log_outcome(envelope, recipient, outcome, "none", started)
            await self._settle(queued, content, dict.fromkeys(envelope.recipients, outcome),
                               started)
            return None
        for recipient in envelope.recipients:
            disposition = dispositions[recipient]
            outcome = disposition.outcome
            if outcome.status == "deferred":
                continue  # logged when it is deferred, below
            if disposition.made is not None:
                if ids[disposition.made] == envelope.queue_id and \
                        recipient in made[disposition.made].recipients:
                    continue  # its delivery is logged under the same queue id
                outcome = replace(outcome, reason=f"queued as {ids[disposition.made]}: "
                                                  f"{outcome.reason}")
            # Carried on by a message made: counted when that is delivered.
            self._log_outcome(envelope, recipient, outcome, disposition.relay, started,
                              count=disposition.made is None)
        self._count_processing(result)
        if failed and not envelope.sender:
            log.info("{queue_id}: undeliverable bounce discarded (null sender)",
                     queue_id=envelope.queue_id)
        elif failed:
            log.info("{queue_id}: sender non-delivery notification: {bounce_id}",
                     queue_id=envelope.queue_id, bounce_id=ids[-1])
        if head is not None and keep is None and head.envelope.sender != envelope.sender:
            others = [head, *others]  # logged as made: another message now has this id
        for other in others:
            log.info("{queue_id}: from=<{sender}>, size={size}, nrcpt={count} (queue {state}; "
                     "made by processing {parent})", queue_id=other.envelope.queue_id,
                     sender=other.envelope.sender, size=other.size,
                     count=len(other.envelope.recipients), state=other.state,
                     parent=envelope.queue_id)
            if other.state == "active" and other.envelope.queue_id != envelope.queue_id:
                self.deliver_soon(other.envelope.queue_id, self._as_written(
                    other, made[ids.index(other.envelope.queue_id)].content, changes))
        for callback in result.written:
            try:
                await callback()
            except Exception:
                log.failure("{queue_id}: after processing's results were written",
                            queue_id=envelope.queue_id)
        if head is None:
            log.info("{queue_id}: removed", queue_id=envelope.queue_id)
            return None
        if keep is not None:
            await self._settle(head, content, {r: dispositions[r].outcome for r in kept},
                               started)
            for recipient in kept:
                self._log_outcome(envelope, recipient, dispositions[recipient].outcome,
                                  dispositions[recipient].relay, started)
            return None
        return head, results[0][1]

    def _plan(self, envelope: Envelope, content: bytes, result: ProcessingResult
              ) -> tuple[list[Made], list[str], dict[str, Disposition], list[str],
                         list[Failed]]:
        """
        What to write for C{result}: the messages made (with a bounce for
        recipients refused and not told), their queue ids, each
        recipient's disposition, the recipients that stay with the
        original, and those to bounce.  The processed original (the
        sender's message, to some of its recipients) takes the original's
        queue id, unless recipients stay with it; failing that, the first
        message made does.

        @raise ValueError: the result does not hold together.
        """
        dispositions: dict[str, Disposition] = {}
        for disposition in result.dispositions:
            for recipient in disposition.recipients:
                if recipient in envelope.recipients and recipient not in dispositions:
                    dispositions[recipient] = disposition
        made = list(result.made)
        if any(d.made is not None and not 0 <= d.made < len(made)
               for d in dispositions.values()):
            raise ValueError("a disposition names a message processing did not make")
        lost = Disposition((), Outcome("deferred", "4.3.0", "the processor lost this recipient"))
        kept = [r for r in envelope.recipients
                if dispositions.setdefault(r, lost).outcome.status == "deferred"]
        # Refused by processing and not told yet: the bounce is one of the
        # results (on disk with them).
        failed = [Failed(r, d.outcome.dsn, d.outcome.reason) for r, d in dispositions.items()
                  if d.outcome.status == "bounced" and not d.outcome.notified]
        if failed and envelope.sender:
            config = self._config()
            made.append(Made("", (envelope.sender,), build_bounce(
                my_hostname=config.my_hostname, queue_id=envelope.queue_id,
                sender=envelope.sender, received=envelope.received,
                now=self._clock.seconds(), failed=failed, original=content)))
        ids = [new_queue_id() for _ in made]
        if made and not kept:
            head = next((i for i, m in enumerate(made) if m.sender == envelope.sender
                         and set(m.recipients) <= set(envelope.recipients)), 0)
            ids[head] = envelope.queue_id
        return made, ids, dispositions, kept, failed

    def _database_unavailable(self, queue_id: str, error: DatabaseUnavailable) -> None:
        if self._database_down_since is not None:
            return
        self._database_down_since = self._clock.seconds()
        self._database_deferrals = 0
        log.error("{queue_id}: processing waits for the database ({reason}): messages are "
                  "tried again for {retry:g} s, then deferred for {deferral:g} s, until it "
                  "answers (logged once until then)", queue_id=queue_id,
                  reason=error.reason, retry=sum(DATABASE_RETRY_WAITS),
                  deferral=DATABASE_DEFERRAL)

    def _database_answered(self) -> None:
        if self._database_down_since is None:
            return
        log.info("Processing works again: the database answered after {seconds:.0f} s "
                 "({count} messages were deferred meanwhile)",
                 seconds=self._clock.seconds() - self._database_down_since,
                 count=self._database_deferrals)
        self._database_down_since = None

    async def _defer_for_database(self, queued: QueuedMessage, error: DatabaseUnavailable,
                                  started: float) -> None:
        # Not _settle: however old the message, our database being down is
        # no reason to bounce it, nor a step of its back-off.
        outcome = Outcome("deferred", "4.3.0", f"the database is unavailable: {error.reason}")
        for recipient in queued.envelope.recipients:
            self._log_outcome(queued.envelope, recipient, outcome, "none", started)
        self._database_deferrals += 1
        try:
            await self._defer(queued, dict.fromkeys(queued.envelope.recipients, outcome),
                              started, delay=DATABASE_DEFERRAL)
        except Exception:
            log.failure("{queue_id}: the queue file could not be updated; it is not tried "
                        "again until the queue is flushed", queue_id=queued.envelope.queue_id)
            self._stuck.add(queued.envelope.queue_id)

    async def probe(self, recipient: str) -> tuple[Outcome, str]:
        """
        Ask the next hop for C{recipient}, routed as its mail would be,
        whether it takes the address: C{MAIL FROM:<>} and C{RCPT TO} only
        (Postfix's address verification probe), within the same limit on
        connections to that hop as deliveries.

        @return: the outcome (C{"deliverable"}, C{"bounced"} or
            C{"deferred"}) and the relay asked.
        """
        config = self._config()
        hop = next_hop(recipient, config)
        outcomes, relay = await self._deliver_to(hop, "", [recipient], b"", config, probe=True)
        outcome = outcomes[recipient]
        log.info("verify: to=<{rcpt}>, relay={relay}, dsn={dsn}, status={status} ({reason})",
                 rcpt=recipient, relay=relay, dsn=outcome.dsn,
                 status="undeliverable" if outcome.status == "bounced" else outcome.status,
                 reason=outcome.reason)
        return outcome, relay

    async def _deliver_to(self, hop: NextHop, sender: str, recipients: list[str],
                          content: bytes, config: MTAConfig, *, probe: bool = False
                          ) -> tuple[dict[str, Outcome], str]:
        # Probes have connections of their own to each hop: a client asking
        # about many addresses cannot take the places of deliveries.
        limits, size = ((self._per_hop_probes, PROBES_PER_DESTINATION) if probe
                        else (self._per_hop, PER_DESTINATION))
        limit = limits.get(hop)
        if limit is None:
            limit = limits[hop] = DeferredSemaphore(size)
        await limit.acquire()
        try:
            return await self._deliver_to_hop(hop, sender, recipients, content, config,
                                              probe)
        finally:
            limit.release()
            if limit.tokens == limit.limit and not limit.waiting:
                limits.pop(hop, None)

    async def _deliver_to_hop(self, hop: NextHop, sender: str, recipients: list[str],
                              content: bytes, config: MTAConfig, probe: bool
                              ) -> tuple[dict[str, Outcome], str]:
        try:
            addresses = await self._resolver.resolve(hop)
        except HopNotFound as e:
            outcome = (Outcome("bounced", "5.4.4", str(e)) if e.permanent
                       else Outcome("deferred", "4.4.3", str(e)))
            return dict.fromkeys(recipients, outcome), "none"
        last = last_relay = ""
        for host, address in addresses:
            peer = f"{host}[{address}]"
            relay = f"{peer}:{hop.port}"
            # A kept connection carries on as it began: with this EHLO name
            # (the TLS settings are the runner's, the same for every host).
            key = (peer, hop.port, config.helo_name)

            def delivery() -> Delivery:
                return Delivery(sender, list(recipients), content, config.helo_name,
                                my_hostname=config.my_hostname, destination=hop.name,
                                probe=probe)

            cached = None if probe else self._connections.take(key)
            if cached is not None:
                done = await cached.deliver(delivery())
                if cached.reached_mail or not all(
                        o.status == "deferred" for o in done.outcomes.values()):
                    self._connections.put(key, cached)
                    self._count_hand_on(cached, done.outcomes, probe)
                    return done.outcomes, relay
                # The next hop had closed it meanwhile: a new connection.
            client = SMTPClient(delivery(), peer, self._clock, self._tls, keep=not probe)
            try:
                await self._connect(address, hop.port, client)
            except Exception as e:
                last = connect_failure_reason(e, host, address, hop.port)
                continue
            done = await client.done
            if not client.reached_mail and all(
                    o.status == "deferred" for o in done.outcomes.values()):
                # Refused or lost before the transaction began (a 4xx greeting,
                # a timeout): the next MX host may do better, as Postfix tries.
                last = next(iter(done.outcomes.values())).reason
                last_relay = relay
                continue
            self._connections.put(key, client)
            self._count_hand_on(client, done.outcomes, probe)
            return done.outcomes, relay
        if last_relay:
            return dict.fromkeys(recipients, Outcome("deferred", "4.4.2", last)), last_relay
        return dict.fromkeys(recipients, Outcome("deferred", "4.4.1", last)), "none"

    def _count_processing(self, result: ProcessingResult) -> None:
        """
        Count how processing sent each recipient on, and what it marked.
        """
        for disposition in result.dispositions:
            if disposition.method and disposition.outcome.status == "sent":
                self._counters.add(METHOD + disposition.method, len(disposition.recipients))
                if disposition.method == "webmail":
                    self._counters.mark(TUNNEL_SENT, disposition.outcome.reason)
        for name, detail in result.events:
            self._counters.mark(name, detail)

    def _count_hand_on(self, client: SMTPClient, outcomes: dict[str, Outcome],
                       probe: bool) -> None:
        """
        Count a message handed to a next hop, and whether over TLS.
        """
        if not probe and any(o.status == "sent" for o in outcomes.values()):
            self._counters.add(HANDED_ON)
            if client.tls_active:
                self._counters.add(HANDED_ON_TLS)

    def _log_outcome(self, envelope: Envelope, recipient: str, outcome: Outcome,
                     relay: str, started: float, *, count: bool = True) -> None:
        if count:
            self._counters.add(_COUNTED[outcome.status])
            if outcome.status == "sent":
                self._counters.observe(DELIVERY_DELAY,
                                       self._clock.seconds() - envelope.received)
            if outcome.status != "sent" and relay != "mpa":
                self._counters.mark(DELIVERY_FAILURE, f"{envelope.queue_id} to <{recipient}>: "
                                                      f"{outcome.dsn} {outcome.reason}")
        now = self._clock.seconds()
        log.info("{queue_id}: to=<{rcpt}>, relay={relay}, delay={delay}, "
                 "delays={before}/0/0/{during}, dsn={dsn}, status={status} ({reason})",
                 queue_id=envelope.queue_id, rcpt=recipient, relay=relay,
                 delay=_seconds(now - envelope.received),
                 before=_seconds(started - envelope.received), during=_seconds(now - started),
                 dsn=outcome.dsn, status=outcome.status, reason=outcome.reason)

    async def _settle(self, queued: QueuedMessage, content: bytes,
                      outcomes: dict[str, Outcome], started: float) -> None:
        envelope = queued.envelope
        now = self._clock.seconds()
        expired = now - envelope.received >= self._lifetime
        failed = [Failed(r, o.dsn if o.status == "bounced" else "4.4.7" if expired else o.dsn,
                         o.reason if o.status == "bounced" else
                         f"message expired after {self._lifetime / 86400:g} days: {o.reason}",
                         o.reason.split(" said:")[0].removeprefix("host ")
                         if o.reason.startswith("host ") else "")
                  for r, o in outcomes.items()
                  if (o.status == "bounced" and not o.notified)
                  or (o.status == "deferred" and expired)]
        unbounced: set[str] = set()
        if failed:
            try:
                await self._bounce(envelope, content, failed)
            except SpoolError:
                # No room for the notice (a full disk): these recipients
                # stay queued and are tried again, as deferred ones are.
                log.failure("{queue_id}: the non-delivery notification could not be queued; "
                            "its recipients stay queued", queue_id=envelope.queue_id)
                unbounced = {f.recipient for f in failed}
        remaining = {r: o for r, o in outcomes.items()
                     if (o.status == "deferred" and not expired) or r in unbounced}
        if remaining:
            await self._defer(queued, remaining, started)
        elif await self._queue.delete(envelope.queue_id, quiet=True):
            log.info("{queue_id}: removed", queue_id=envelope.queue_id)

    async def _bounce(self, envelope: Envelope, content: bytes, failed: list[Failed]) -> None:
        if not envelope.sender:
            # RFC 5321 §4.5.5: never a bounce of a bounce.
            log.info("{queue_id}: undeliverable bounce discarded (null sender)",
                     queue_id=envelope.queue_id)
            return
        config = self._config()
        bounce = build_bounce(my_hostname=config.my_hostname, queue_id=envelope.queue_id,
                              sender=envelope.sender, received=envelope.received,
                              now=self._clock.seconds(), failed=failed, original=content)
        stored = await self._queue.store(Envelope(new_queue_id(), "", (envelope.sender,),
                                                  self._clock.seconds(), client="local",
                                                  extra={PROCESSED: True}),
                                         bounce)
        log.info("{queue_id}: sender non-delivery notification: {bounce_id}",
                 queue_id=envelope.queue_id, bounce_id=stored.envelope.queue_id)
        self.kick()

    async def _defer(self, queued: QueuedMessage, remaining: dict[str, Outcome],
                     started: float, *, delay: float | None = None) -> None:
        """
        Keep the C{remaining} recipients queued for a later attempt: after
        the next back-off step, or after C{delay} without counting an
        attempt.
        """
        envelope = queued.envelope
        if delay is None:
            attempts = envelope.attempts + 1
            backoff = min(MAX_BACKOFF, MIN_BACKOFF * 2 ** (attempts - 1))
        else:
            attempts, backoff = envelope.attempts, delay
        reason = next(iter(remaining.values())).reason
        try:
            # Held by the admin meanwhile: it stays held.
            await self._queue.move(envelope.queue_id, "deferred", replace(
                envelope, recipients=tuple(r for r in envelope.recipients if r in remaining),
                attempts=attempts, next_attempt=self._clock.seconds() + backoff,
                reason=reason), keep_hold=True)
        except KeyError:
            return  # deleted by the admin meanwhile
