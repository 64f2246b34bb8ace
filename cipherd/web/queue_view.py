"""
A look into the mail queue for the admin pages and the API: messages found
by queue id, address or subject; one message's envelope and header (its
body only on request, which the caller audits); the actions on a selection.
"""

from __future__ import annotations

from collections.abc import Iterable
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

from cipherd.core.envelope import QUEUE_ID
from cipherd.smtp.queue import MailQueue, QueueRunner, describe
from cipherd.smtp.spool import QueuedMessage

# How much of a message is read for its header, and shown of its content.
HEAD_BYTES = 64 * 1024
CONTENT_SHOWN = 1024 * 1024
# What a selection can be given: action -> (button, what was done).
BULK_ACTIONS = {
    "hold": ("Hold", "held"), "release": ("Release", "released"),
    "deliver": ("Deliver now", "started delivery of"), "delete": ("Delete", "deleted"),
}
MAX_SELECTION = 1000


def header_fields(head: bytes) -> list[tuple[str, str]]:
    """
    The header fields of a message's first bytes, unfolded, encoded words
    decoded where they can be (as written where not).
    """
    header_end = head.find(b"\r\n\r\n")
    block = head if header_end < 0 else head[: header_end + 2]
    parsed = BytesHeaderParser(policy=compat32).parsebytes(block)
    fields = []
    for name, value in parsed.items():
        text = str(value)
        try:
            text = str(make_header(decode_header(text)))
        except (ValueError, LookupError, UnicodeError):
            pass
        fields.append((name, " ".join(text.split())))
    return fields


def subject_of(head: bytes) -> str:
    return next((value for name, value in header_fields(head) if name.lower() == "subject"),
                "")


def _matches(message: QueuedMessage, text: str) -> bool:
    envelope = message.envelope
    return any(text in value.lower() for value in
               (envelope.queue_id, envelope.sender, *envelope.recipients))


async def find(queue: MailQueue, text: str) -> list[QueuedMessage]:
    """
    The queued messages whose queue id, sender or a recipient contains
    C{text} (any case), or whose subject does (read from each message's
    header): all of them for C{""}; oldest first.
    """
    messages = await queue.messages()
    text = text.strip().lower()
    if not text:
        return messages
    found = []
    for message in messages:
        if _matches(message, text):
            found.append(message)
            continue
        try:
            _, head = await queue.head(message.envelope.queue_id, HEAD_BYTES)
        except (KeyError, OSError):
            continue  # delivered meanwhile
        if text in subject_of(head).lower():
            found.append(message)
    return found


def message_json(message: QueuedMessage, head: bytes) -> dict[str, Any]:
    """
    A queued message with its whole envelope and its header fields.
    """
    envelope = message.envelope
    return {
        **describe(message), "client": envelope.client,
        "next_attempt": envelope.next_attempt or None,
        "headers": [{"name": name, "value": value} for name, value in header_fields(head)],
    }


def selection(ids: Iterable[str]) -> list[str]:
    """
    The well-formed queue ids of a selection, each once, at most
    L{MAX_SELECTION}.
    """
    return [i for i in dict.fromkeys(ids) if QUEUE_ID.fullmatch(i)][:MAX_SELECTION]


def what_was_done(action: str, done: list[str]) -> tuple[str, str]:
    """
    The audit log's summary and target for C{action} done for C{done}.
    """
    return (f"{BULK_ACTIONS[action][1]} {', '.join(done)}",
            done[0] if len(done) == 1 else f"{len(done)} messages")


async def act(queue: MailQueue, runner: QueueRunner | None, action: str, ids: Iterable[str]
              ) -> list[str]:
    """
    Do C{action} (L{BULK_ACTIONS}) for each of C{ids}.

    @return: the ids it was done for (a message gone meanwhile, or held
        when delivery is asked for, is left out).
    """
    done = []
    for queue_id in selection(ids):
        if action == "hold":
            ok = await queue.hold(queue_id)
        elif action == "release":
            ok = await queue.release(queue_id)
        elif action == "delete":
            ok = await queue.delete(queue_id)
        elif action == "deliver":
            try:
                message, _ = await queue.head(queue_id, 0)
            except KeyError:
                continue
            ok = runner is not None and message.state != "hold" and runner.deliver_now(
                queue_id)
        else:
            raise ValueError(f"no queue action {action!r}")
        if ok:
            done.append(queue_id)
    if action == "release" and done and runner is not None:
        runner.kick()
    return done
