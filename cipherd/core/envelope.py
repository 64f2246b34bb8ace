"""
What mail is, as every layer speaks of it: the envelope the queue keeps
beside a message, a message as the SMTP server accepted it, and what
became of one recipient.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

# Postfix-like queue ids: upper-case hex, long enough never to repeat on one
# node (48 random bits).
QUEUE_ID = re.compile(r"[0-9A-F]{12}")


@dataclass(frozen=True)
class Envelope:
    """
    What SMTP said about a message, beside its content.

    @ivar queue_id: the message's id on this node (in every log line).
    @ivar sender: the reverse path, C{""} for the null sender (bounces).
    @ivar recipients: the forward paths still to deliver to.
    @ivar received: when it was accepted (seconds since the epoch).
    @ivar client: C{"name[address]"} of the SMTP client, or how it came.
    @ivar attempts: delivery attempts so far.
    @ivar next_attempt: when to try again, for deferred messages.
    @ivar reason: the last reason it was deferred or held.
    """

    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    received: float
    client: str = ""
    attempts: int = 0
    next_attempt: float = 0.0
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        value = {
            "queue_id": self.queue_id, "sender": self.sender,
            "recipients": list(self.recipients), "received": self.received,
            "client": self.client, "attempts": self.attempts,
            "next_attempt": self.next_attempt, "reason": self.reason, "extra": self.extra,
        }
        return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("ascii")

    @classmethod
    def from_json(cls, data: bytes) -> Envelope:
        value = json.loads(data)
        if not isinstance(value, dict) or not QUEUE_ID.fullmatch(str(value.get("queue_id"))):
            raise ValueError("no queue id")
        return cls(
            queue_id=value["queue_id"], sender=str(value["sender"]),
            recipients=tuple(str(r) for r in value["recipients"]),
            received=float(value["received"]), client=str(value.get("client", "")),
            attempts=int(value.get("attempts", 0)),
            next_attempt=float(value.get("next_attempt", 0.0)),
            reason=str(value.get("reason", "")), extra=dict(value.get("extra", {})),
        )


@dataclass
class Received:
    """
    A message as the server accepted it, for the queue.

    @ivar queue_id: the id in the 250 reply and the Received header.
    @ivar content: the message with our Received header on top, CRLF lines.
    """

    queue_id: str
    sender: str
    recipients: list[str]
    client: str
    helo: str
    content: bytes
    # Whether it came over TLS (STARTTLS).
    tls: bool = False



@dataclass
class Outcome:
    """
    What became of one recipient.

    @ivar status: C{"sent"}, C{"deferred"} or C{"bounced"}; for a probe,
        C{"deliverable"} where a delivery would say C{"sent"}.
    @ivar dsn: the enhanced status code (RFC 3463), e.g. C{"5.7.1"}.
    @ivar reason: Postfix's words, for the log and the bounce.
    """

    status: str
    dsn: str
    reason: str
    # The sender has been told already (processing sent its own notice):
    # no delivery status notification.
    notified: bool = False
