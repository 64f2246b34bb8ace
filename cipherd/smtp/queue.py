"""
The mail queue: takes what the SMTP server accepted into the spool, and
answers the admin's questions about it.

Delivery (the processing seam, routing, retries, bounces) is not built yet:
accepted mail waits in C{active} until it is.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cipherd.smtp.server import Received
from cipherd.smtp.spool import Envelope, ISpool, QueuedMessage
from cipherd.threads import IBlockingRunner

log = Logger(namespace="cipherd.mta.qmgr")


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

    def accept(self, received: Received) -> Deferred[QueuedMessage]:
        """
        Write an accepted message to disk; the server answers 250 when this
        fires, 451 when it fails.
        """
        envelope = Envelope(received.queue_id, received.sender, tuple(received.recipients),
                            self._clock.seconds(), client=received.client)
        d: Deferred[QueuedMessage] = self._runner.run(self._spool.store, envelope,
                                                       received.content)

        def queued(message: QueuedMessage) -> QueuedMessage:
            # Postfix's qmgr line.
            log.info("{queue_id}: from=<{sender}>, size={size}, nrcpt={count} (queue active)",
                     queue_id=envelope.queue_id, sender=envelope.sender, size=message.size,
                     count=len(envelope.recipients))
            return message

        return d.addCallback(queued)

    async def messages(self) -> list[QueuedMessage]:
        result: list[QueuedMessage] = await self._runner.run(self._spool.messages)
        return result

    async def delete(self, queue_id: str) -> bool:
        """
        Remove a message without delivering it (the admin's decision).
        """
        removed: bool = await self._runner.run(self._spool.remove, queue_id)
        if removed:
            log.info("{queue_id}: removed", queue_id=queue_id)
        return removed


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
