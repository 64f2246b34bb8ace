"""
The durable mail queue: one file per message on local disk, as MTAs keep it.

A message is written under C{incoming/}, flushed to disk (the file, then the
directory entry), and renamed into C{active/} before the SMTP server answers
250: from then on a crash at any moment loses nothing, and a restart finds
every message where it was.  Messages move between the queue states
(C{active}, C{deferred}, C{hold}) by renaming, which is atomic on one file
system; a message leaves the queue only when it is removed.

Each file holds the envelope as one line of JSON, then the content, byte for
byte: no pickle, nothing a crafted message could make the spool execute.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from zope.interface import Interface, implementer

from cipherd.logs import mail_logger

log = mail_logger("cipherd.mta.spool")

MAGIC = b"cipherd-spool 1\n"
STATES = ("active", "deferred", "hold")
_INCOMING = "incoming"
# Postfix-like queue ids: upper-case hex, long enough never to repeat on one
# node (48 random bits).
_QUEUE_ID = re.compile(r"[0-9A-F]{12}")


class SpoolError(Exception):
    """
    A spool file could not be written, read or moved.
    """


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
        if not isinstance(value, dict) or not _QUEUE_ID.fullmatch(str(value.get("queue_id"))):
            raise ValueError("no queue id")
        return cls(
            queue_id=value["queue_id"], sender=str(value["sender"]),
            recipients=tuple(str(r) for r in value["recipients"]),
            received=float(value["received"]), client=str(value.get("client", "")),
            attempts=int(value.get("attempts", 0)),
            next_attempt=float(value.get("next_attempt", 0.0)),
            reason=str(value.get("reason", "")), extra=dict(value.get("extra", {})),
        )


@dataclass(frozen=True)
class QueuedMessage:
    """
    A message in the queue: its envelope, its state and where it lies.
    """

    envelope: Envelope
    state: str
    path: Path
    size: int


class ISpool(Interface):
    """
    Where accepted mail waits for delivery.  Every method blocks on disk:
    call it through an L{IBlockingRunner}.
    """

    def new_queue_id() -> str:
        """
        @return: a queue id not in use on this node.
        """

    def store(envelope: Envelope, content: bytes) -> QueuedMessage:
        """
        Write a message durably into C{active}.

        @return: the message as queued, once it is on disk.
        @raise SpoolError: it could not be written; nothing is left behind.
        """

    def load(queue_id: str) -> tuple[QueuedMessage, bytes]:
        """
        @return: the queued message and its content.
        @raise KeyError: no message with that id.
        @raise SpoolError: the file is damaged.
        """

    def move(queue_id: str, state: str, envelope: Envelope | None = None,
             keep_hold: bool = False) -> QueuedMessage:
        """
        Put a message in another state, with a new envelope if given.

        @param keep_hold: a message the admin holds stays held (it still
            gets the new envelope): for the queue's own moves.
        @raise KeyError: no message with that id.
        """

    def remove(queue_id: str) -> bool:
        """
        Take a message out of the queue (delivered, bounced or deleted).

        @return: whether it was there.
        """

    def messages() -> list[QueuedMessage]:
        """
        @return: every queued message, with its state, oldest first.
        """


def new_queue_id() -> str:
    """
    A fresh queue id (48 random bits: L{ISpool.store} refuses the rare one
    already taken rather than overwrite it).
    """
    return secrets.token_hex(6).upper()


def _write_file(path: Path, mode: str, envelope: Envelope, content: bytes) -> None:
    with open(path, mode) as f:
        f.write(MAGIC + envelope.to_json() + b"\n")
        f.write(content)
        f.flush()
        os.fsync(f.fileno())


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@implementer(ISpool)
class DirectorySpool:
    """
    The spool in a directory of its own, with a subdirectory per state.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # One change to the queue files at a time: a find-then-rename from
        # two threads (a delivery settling, the admin holding) could leave
        # a message in two states.
        self._lock = threading.RLock()
        for name in (_INCOMING, *STATES):
            (directory / name).mkdir(mode=0o700, parents=True, exist_ok=True)
        # A message still in incoming/ was never answered 250: its client
        # will send it again.
        for leftover in (directory / _INCOMING).iterdir():
            leftover.unlink()

    def new_queue_id(self) -> str:
        return new_queue_id()

    def store(self, envelope: Envelope, content: bytes) -> QueuedMessage:
        # Not under the lock: the slow part (writing, fsync) of many
        # messages goes on at once; the id is new, nothing else touches it.
        incoming = self.directory / _INCOMING / envelope.queue_id
        target = self.directory / "active" / envelope.queue_id
        if not _QUEUE_ID.fullmatch(envelope.queue_id) or any(
                (self.directory / state / envelope.queue_id).exists() for state in STATES):
            raise SpoolError(f"the queue id {envelope.queue_id!r} is not free")
        try:
            _write_file(incoming, "xb", envelope, content)
            # A hard link, not a rename: it fails rather than overwrite.
            os.link(incoming, target)
            os.unlink(incoming)
            _fsync_directory(target.parent)
        except FileExistsError:
            incoming.unlink(missing_ok=True)
            raise SpoolError(f"the queue id {envelope.queue_id!r} is not free") from None
        except OSError as e:
            incoming.unlink(missing_ok=True)
            raise SpoolError(f"cannot write the queue file: {e.strerror or e}") from e
        return QueuedMessage(envelope, "active", target, len(content))

    def _find(self, queue_id: str) -> tuple[str, Path]:
        if not _QUEUE_ID.fullmatch(queue_id):
            raise KeyError(queue_id)
        for state in STATES:
            path = self.directory / state / queue_id
            if path.exists():
                return state, path
        raise KeyError(queue_id)

    @staticmethod
    def _read_envelope(f: Any, path: Path) -> Envelope:
        if f.readline() != MAGIC:
            raise SpoolError(f"{path.name} is not a cipherd queue file")
        try:
            return Envelope.from_json(f.readline())
        except (ValueError, KeyError, TypeError) as e:
            raise SpoolError(f"{path.name} has a damaged envelope: {e}") from e

    def load(self, queue_id: str) -> tuple[QueuedMessage, bytes]:
        state, path = self._find(queue_id)
        with open(path, "rb") as f:
            envelope = self._read_envelope(f, path)
            content = f.read()
        return QueuedMessage(envelope, state, path, len(content)), content

    def move(self, queue_id: str, state: str, envelope: Envelope | None = None,
             keep_hold: bool = False) -> QueuedMessage:
        with self._lock:
            return self._move(queue_id, state, envelope, keep_hold)

    def _move(self, queue_id: str, state: str, envelope: Envelope | None,
              keep_hold: bool) -> QueuedMessage:
        if state not in STATES:
            raise ValueError(f"no queue state {state!r}")
        current, path = self._find(queue_id)
        if keep_hold and current == "hold":
            state = "hold"
        target = self.directory / state / queue_id
        if envelope is None:
            os.rename(path, target)
            _fsync_directory(target.parent)
            message, _ = self.load(queue_id)
            return message
        # A new envelope: write the whole file again and swap it in where
        # the old one is, then move it.  Each step is one rename: a crash
        # leaves exactly one copy, with the old envelope or the new.
        envelope = replace(envelope, queue_id=queue_id)
        _, content = self.load(queue_id)
        incoming = self.directory / _INCOMING / queue_id
        _write_file(incoming, "wb", envelope, content)
        _, path = self._find(queue_id)  # where it is now, not where it was
        os.rename(incoming, path)
        if target != path:
            os.rename(path, target)
        _fsync_directory(path.parent)
        _fsync_directory(target.parent)
        return QueuedMessage(envelope, state, target, len(content))

    def remove(self, queue_id: str) -> bool:
        with self._lock:
            return self._remove(queue_id)

    def _remove(self, queue_id: str) -> bool:
        try:
            _, path = self._find(queue_id)
        except KeyError:
            return False
        # No fsync: a removal lost in a crash brings back a message already
        # delivered (delivered twice, as any MTA may), never loses one.
        path.unlink(missing_ok=True)
        return True

    def _all(self) -> Iterator[QueuedMessage]:
        for state in STATES:
            for path in (self.directory / state).iterdir():
                if not _QUEUE_ID.fullmatch(path.name):
                    continue
                try:
                    with open(path, "rb") as f:
                        envelope = self._read_envelope(f, path)
                        header = f.tell()
                    size = path.stat().st_size - header
                except FileNotFoundError:
                    # Delivered (or moved) while the queue was being read:
                    # one message's going must not stop the whole scan.
                    continue
                except SpoolError as e:
                    log.error("{why}: left where it is for the administrator ({path})",
                              why=e, path=path)
                    continue
                yield QueuedMessage(envelope, state, path, size)

    def messages(self) -> list[QueuedMessage]:
        return sorted(self._all(), key=lambda m: (m.envelope.received, m.envelope.queue_id))
