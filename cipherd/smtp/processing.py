"""
Processing: the stage between two spools.

Every message the queue holds passes a processor (the gateway, the webmail
relay: see L{cipherd.mpa.composite}) once.  The processor does not touch
the queue: it says what it made (L{ProcessingResult}) and the queue writes
all of it durably and settles the original in one step
(L{cipherd.smtp.spool.ISpool.commit}), then delivers what was made as
messages that are never processed again.  A crash before that step leaves
the original, processed again at the next start; a crash after it leaves
the results, delivered once.  A retry of a delivery never processes again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from twisted.internet.defer import Deferred
from zope.interface import Interface

from cipherd.core.envelope import Envelope, Outcome


@dataclass(frozen=True)
class Made:
    """
    A message processing made: queued as it is, never processed again.
    """

    sender: str
    recipients: tuple[str, ...]
    content: bytes


@dataclass(frozen=True)
class Disposition:
    """
    What became of some of the original's recipients.

    @ivar outcome: C{"sent"}: carried on by a message made (C{made}) or
        handled by processing itself; C{"bounced"}: refused, the sender
        told (C{notified}) or to be told by the queue; C{"deferred"}: they
        stay with the original, to be processed again later.
    @ivar relay: the MTA log's C{relay=}.
    @ivar made: the index in L{ProcessingResult.made} of the message that
        carries them on (the log says C{queued as} its queue id).
    @ivar method: how processing sent them on, for the counts
        (L{cipherd.core.counters.METHODS}), or C{""}.
    """

    recipients: tuple[str, ...]
    outcome: Outcome
    relay: str = "mpa"
    made: int | None = None
    method: str = ""


@dataclass(frozen=True)
class ProcessingResult:
    """
    Everything processing made of one message.

    @ivar made: the messages to queue: the processed original per group of
        recipients, tunnel messages, notices, notifications.
    @ivar dispositions: every recipient of the original, in exactly one.
    @ivar written: called once the results are on disk and the original
        settled (e.g. to mark notifications as sent); a crash before it
        runs means it does not run.
    @ivar events: C{(name, detail)} marks to count once the results are
        written (L{cipherd.core.counters.ICounters.mark}).
    """

    made: tuple[Made, ...] = ()
    dispositions: tuple[Disposition, ...] = ()
    written: tuple[Callable[[], Awaitable[None]], ...] = field(default=())
    events: tuple[tuple[str, str], ...] = ()

    @classmethod
    def unchanged(cls, envelope: Envelope, content: bytes) -> ProcessingResult:
        """
        The message as it came, for all its recipients.
        """
        return cls((Made(envelope.sender, envelope.recipients, content),),
                   (Disposition(envelope.recipients, PROCESSED_AS_IS, made=0),))

    def is_unchanged(self, envelope: Envelope, content: bytes) -> bool:
        """
        Whether processing left the message as it came: nothing to write.
        """
        if len(self.made) != 1 or self.written:
            return False
        made = self.made[0]
        return (made.sender == envelope.sender
                and sorted(made.recipients) == sorted(envelope.recipients)
                and all(d.made == 0 and d.outcome.status == "sent" for d in self.dispositions)
                and made.content == content)

    def __add__(self, other: ProcessingResult) -> ProcessingResult:
        shift = len(self.made)
        return ProcessingResult(
            self.made + other.made,
            self.dispositions + tuple(
                replace(d, made=None if d.made is None else d.made + shift)
                for d in other.dispositions),
            self.written + other.written, self.events + other.events)


PROCESSED_AS_IS = Outcome("sent", "2.0.0", "processed")


class Results:
    """
    Builds a L{ProcessingResult}, one path at a time.
    """

    def __init__(self) -> None:
        self._made: list[Made] = []
        self._dispositions: list[Disposition] = []
        self._written: list[Callable[[], Awaitable[None]]] = []
        self._events: list[tuple[str, str]] = []

    def deliver(self, sender: str, recipients: Sequence[str], content: bytes,
                what: str = "processed", method: str = "") -> None:
        """
        C{recipients} get C{content} (the original as processing left it).
        """
        self.hand_on(recipients, Made(sender, tuple(recipients), content),
                     Outcome("sent", "2.0.0", what), method=method)

    def hand_on(self, recipients: Sequence[str], made: Made, outcome: Outcome,
                relay: str = "mpa", method: str = "") -> None:
        """
        C{recipients} are carried on by C{made} (a tunnel message, a
        forward to the postmaster).
        """
        self._made.append(made)
        self._dispositions.append(Disposition(tuple(recipients), outcome, relay,
                                              len(self._made) - 1, method))

    def settle(self, recipients: Sequence[str], outcome: Outcome, relay: str = "mpa",
               method: str = "") -> None:
        """
        Processing settled C{recipients} itself.
        """
        self._dispositions.append(Disposition(tuple(recipients), outcome, relay,
                                              method=method))

    def event(self, name: str, detail: str = "") -> None:
        """
        Mark C{name} as happened, once the results are written.
        """
        self._events.append((name, detail))

    def send(self, made: Made) -> None:
        """
        One more message to queue (a notice, a notification).
        """
        self._made.append(made)

    def when_written(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._written.append(callback)

    def result(self) -> ProcessingResult:
        return ProcessingResult(tuple(self._made), tuple(self._dispositions),
                                tuple(self._written), tuple(self._events))


class IMessageProcessor(Interface):
    """
    The processing stage: what becomes of a queued message before it is
    delivered (encryption, the webmail tunnel, the webmail relay).
    """

    def process(envelope: Envelope, content: bytes) -> Deferred[ProcessingResult]:
        """
        Decide and make, without queueing anything: the queue writes what
        the result lists.  Processing the same message again (after a
        crash) must make the same messages, as far as their readers can
        tell (the same tunnel id; a relay message handled twice stored
        once).

        @raise DatabaseUnavailable: (in the Deferred) the database could not
            be used just now: retried soon, and never bounced.
        """
