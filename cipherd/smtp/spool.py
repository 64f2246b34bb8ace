"""
The durable mail queue: one file per message on local disk, as MTAs keep it.

A message is written under C{incoming/}, flushed to disk (the file, then the
directory entry), and renamed into C{active/} before the SMTP server answers
250: from then on a crash at any moment loses nothing, and a restart finds
every message where it was.  Messages move between the queue states
(C{active}, C{deferred}, C{hold}) by renaming, which is atomic on one file
system; a message leaves the queue only when it is removed.

When a message is deferred its file is written again with the new envelope
(attempts, next attempt, reason, the recipients still to serve) and then
renamed into C{deferred/}.  The file's own record decides when it is due,
whatever directory it lies in: a crash between the two renames leaves it
in C{active/} with its new envelope, and the next start finishes the move.
A file in C{active/} has no next attempt on disk otherwise (a move into
C{active} clears it: the admin's release means "now").

When the disk is full the new envelope cannot be written: the file is
still renamed (a rename needs no new blocks), and the envelope is kept in
memory, in front of the one on disk, until a later change to that message
can write it (see L{DirectorySpool}).

Each file holds the envelope as one line of JSON, then the content, byte for
byte: no pickle, nothing a crafted message could make the spool execute.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from zope.interface import Interface, implementer

from cipherd.core.envelope import QUEUE_ID, Envelope
from cipherd.logs import mail_logger

log = mail_logger("cipherd.mta.spool")

MAGIC = b"cipherd-spool 1\n"
# Envelope.extra of a message processing settled: the queue ids of the
# other messages it made, staged in incoming/ until they are moved into
# active/ (at once, or by the next start after a crash).
RESULTS = "results"
STATES = ("active", "deferred", "hold")
_INCOMING = "incoming"
# Postfix-like queue ids: upper-case hex, long enough never to repeat on one
# node (48 random bits).


class SpoolError(Exception):
    """
    A spool file could not be written, read or moved.
    """


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

    def head(queue_id: str, limit: int) -> tuple[QueuedMessage, bytes]:
        """
        L{load}, but only the first C{limit} bytes of the content (its
        header, for a look at a queued message).
        """

    def move(queue_id: str, state: str, envelope: Envelope | None = None,
             keep_hold: bool = False) -> QueuedMessage:
        """
        Put a message in another state, with a new envelope if given.  A
        message moved into C{active} is due at once: its next attempt is
        cleared.  When the new envelope cannot be written (a full disk) the
        message is moved all the same and the envelope is kept in memory:
        L{load} and L{messages} show it, and the next move of the message
        writes it.

        @param keep_hold: a message the admin holds stays held (it still
            gets the new envelope): for the queue's own moves.
        @return: the message as moved, with the envelope in force.
        @raise KeyError: no message with that id.
        @raise SpoolError: the file could not be read or renamed; the new
            envelope, if any, is kept in memory all the same.
        """

    def commit(queue_id: str, results: Sequence[tuple[Envelope, bytes]],
               keep: Envelope | None = None) -> tuple[QueuedMessage | None,
                                                      list[QueuedMessage]]:
        """
        Put what processing made of a message in its place, in one step: a
        crash at any moment leaves either the message as it was, or all of
        C{results} queued and the message settled, never both.

        @param results: the messages made (each with a fresh queue id).
            Without C{keep}, the first takes the message's queue id and
            state (the message becomes its processed form).
        @param keep: the message's own envelope from now on, when some of
            its recipients stay with it (deferred by processing); its
            content does not change.
        @return: what now lies under C{queue_id} (C{None} when nothing
            does), and the other results, queued in C{active} (in C{hold}
            when the message was held).  A result that cannot be moved
            there after the commit is not returned: it is tried again at
            each scan (L{messages}) and before the message is removed.
        @raise KeyError: no message with that id (deleted meanwhile);
            nothing was written.
        @raise SpoolError: nothing could be written; the message is as it
            was.
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


def _flush_after_commit(directory: Path, queue_id: str) -> None:
    # The commit has happened: a directory that cannot be flushed now is
    # flushed by the next change to it, and is no reason to undo anything.
    try:
        _fsync_directory(directory)
    except OSError as e:
        log.warn("{queue_id}: the queue directory could not be flushed ({why})",
                 queue_id=queue_id, why=e.strerror or e)


Rename = Callable[[Path, Path], None]


@implementer(ISpool)
class DirectorySpool:
    """
    The spool in a directory of its own, with a subdirectory per state.

    Envelopes that could not be written (the disk was full when a message
    was deferred) are kept in memory and win over the ones on disk until a
    later move of the same message writes them.  A restart before that
    finds the message where it was moved, with the envelope it had before:
    it is tried again at once, for all the recipients it had then.  Some
    of them may get it a second time; none loses it.

    @param rename: renames a file (C{os.rename}): the tests inject a crash
        between two renames here.
    """

    def __init__(self, directory: Path, *, rename: Rename = os.rename) -> None:
        self.directory = directory
        self._rename = rename
        # One change to the queue files at a time: a find-then-rename from
        # two threads (a delivery settling, the admin holding) could leave
        # a message in two states.
        self._lock = threading.RLock()
        # Envelopes not yet on disk, by queue id (see the class docstring).
        self._unwritten: dict[str, Envelope] = {}
        # Committed results not yet moved out of incoming/, by the queue id
        # of the message they were made of: (their state, their ids).
        self._pending: dict[str, tuple[str, list[str]]] = {}
        for name in (_INCOMING, *STATES):
            (directory / name).mkdir(mode=0o700, parents=True, exist_ok=True)
        # A message still in incoming/ was never answered 250: its client
        # will send it again.  A half-written new envelope there is the
        # old file's: that one is still in place.
        self._finish_interrupted_commits()
        pending = {name for _, names in self._pending.values() for name in names}
        for leftover in (directory / _INCOMING).iterdir():
            if leftover.name not in pending:
                leftover.unlink()
        self._finish_interrupted_deferrals()

    def _finish_interrupted_commits(self) -> None:
        # The results of a commit are staged in incoming/ and moved into
        # active/ after the commit's one rename: a file in incoming/ named
        # in a queued message's RESULTS is committed, the rest are not.
        staged = {p.name for p in (self.directory / _INCOMING).iterdir()
                  if QUEUE_ID.fullmatch(p.name)}
        if not staged:
            return
        for state, path in self._queue_files():
            try:
                with open(path, "rb") as f:
                    envelope = self._read_envelope(f, path)
            except (SpoolError, OSError):
                continue  # reported by the next scan
            names = [name for name in envelope.extra.get(RESULTS, ()) if name in staged]
            if not names:
                continue
            staged.difference_update(names)
            # Held with the message they were made of, as at run time.
            self._pending[path.name] = ("hold" if state == "hold" else "active", names)
            for name in self._queue_pending(path.name)[1]:
                log.info("{queue_id}: queued after a restart (made by processing "
                         "{parent})", queue_id=name, parent=path.name)

    def _finish_interrupted_deferrals(self) -> None:
        # Only a deferral writes a next attempt, and only into deferred/ (or
        # hold/): a file in active/ with one was stopped between its two
        # renames.  Its record already counts the attempt.
        moved = False
        for path in (self.directory / "active").iterdir():
            if not QUEUE_ID.fullmatch(path.name):
                continue
            try:
                with open(path, "rb") as f:
                    envelope = self._read_envelope(f, path)
            except SpoolError:
                continue  # reported by the next scan, left for the administrator
            target = self.directory / "deferred" / path.name
            if envelope.next_attempt and not target.exists():
                try:
                    self._rename(path, target)
                except OSError as e:
                    # Not due before its next attempt wherever it lies:
                    # the queue reads that from the record.
                    log.warn("{queue_id}: cannot finish its deferral ({why})",
                             queue_id=path.name, why=e.strerror or e)
                    continue
                moved = True
                log.info("{queue_id}: deferral finished after a restart (attempts={attempts})",
                         queue_id=path.name, attempts=envelope.attempts)
        if moved:
            _fsync_directory(self.directory / "deferred")
            _fsync_directory(self.directory / "active")

    def new_queue_id(self) -> str:
        return new_queue_id()

    def store(self, envelope: Envelope, content: bytes) -> QueuedMessage:
        # Not under the lock: the slow part (writing, fsync) of many
        # messages goes on at once; the id is new, nothing else touches it.
        incoming = self.directory / _INCOMING / envelope.queue_id
        target = self.directory / "active" / envelope.queue_id
        self._check_free(envelope.queue_id)
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

    def _check_free(self, queue_id: str) -> None:
        if not QUEUE_ID.fullmatch(queue_id) or any(
                (self.directory / state / queue_id).exists() for state in STATES):
            raise SpoolError(f"the queue id {queue_id!r} is not free")

    def _find(self, queue_id: str) -> tuple[str, Path]:
        if not QUEUE_ID.fullmatch(queue_id):
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
        envelope = self._unwritten.get(queue_id, envelope)
        return QueuedMessage(envelope, state, path, len(content)), content

    def head(self, queue_id: str, limit: int) -> tuple[QueuedMessage, bytes]:
        state, path = self._find(queue_id)
        with open(path, "rb") as f:
            envelope = self._read_envelope(f, path)
            size = path.stat().st_size - f.tell()
            content = f.read(limit)
        envelope = self._unwritten.get(queue_id, envelope)
        return QueuedMessage(envelope, state, path, size), content

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
        # The envelope only: a hold or a release renames, and need not read
        # a message of many megabytes.
        with open(path, "rb") as f:
            in_force = self._unwritten.get(queue_id, self._read_envelope(f, path))
            size = os.fstat(f.fileno()).st_size - f.tell()
        if envelope is not None:
            envelope = replace(envelope, queue_id=queue_id)
        elif queue_id in self._unwritten:
            envelope = in_force  # still to be written
        if state == "active" and (envelope or in_force).next_attempt:
            # Due now (the admin's release): only a deferral that a crash
            # stopped half-way leaves a next attempt in active/.
            envelope = replace(envelope or in_force, next_attempt=0.0)
        if envelope is None:
            try:
                self._rename(path, target)
                _fsync_directory(target.parent)
            except OSError as e:
                raise SpoolError(f"cannot move the queue file: {e.strerror or e}") from e
            return QueuedMessage(in_force, state, target, size)
        _, content = self.load(queue_id)
        # A new envelope: write the whole file again and swap it in where
        # the old one is, then move it.  Each step is one rename: a crash
        # leaves exactly one copy, with the old envelope or the new.
        incoming = self.directory / _INCOMING / queue_id
        try:
            _write_file(incoming, "wb", envelope, content)
        except OSError as e:
            # A full disk: no half-written copy stays, the file keeps its
            # old envelope and the new one waits in memory.
            incoming.unlink(missing_ok=True)
            self._unwritten[queue_id] = envelope
            log.warn("{queue_id}: the queue file could not be rewritten ({why}); its new "
                     "envelope is kept in memory until the next change to the message "
                     "(a restart before then tries all its old recipients again)",
                     queue_id=queue_id, why=e.strerror or e)
        else:
            self._unwritten.pop(queue_id, None)
            try:
                self._rename(incoming, path)
            except OSError as e:
                incoming.unlink(missing_ok=True)
                self._unwritten[queue_id] = envelope
                raise SpoolError(f"cannot replace the queue file: {e.strerror or e}") from e
        try:
            if target != path:
                self._rename(path, target)
            _fsync_directory(path.parent)
            _fsync_directory(target.parent)
        except OSError as e:
            raise SpoolError(f"cannot move the queue file: {e.strerror or e}") from e
        return QueuedMessage(envelope, state, target, len(content))

    def commit(self, queue_id: str, results: Sequence[tuple[Envelope, bytes]],
               keep: Envelope | None = None) -> tuple[QueuedMessage | None,
                                                      list[QueuedMessage]]:
        if keep is None and not results:
            self.remove(queue_id)
            return None, []
        followers = list(results) if keep is not None else list(results[1:])
        incoming = self.directory / _INCOMING
        staged: list[Path] = []
        # New names only: written without the lock, as store() writes.
        head = incoming / f"{queue_id}.commit"
        try:
            for envelope, content in followers:
                self._check_free(envelope.queue_id)
                _write_file(incoming / envelope.queue_id, "xb", envelope, content)
                staged.append(incoming / envelope.queue_id)
            if keep is not None:
                head_envelope, head_content = keep, self.load(queue_id)[1]
            else:
                head_envelope, head_content = results[0]
            head_envelope = replace(head_envelope, queue_id=queue_id)
            if followers:
                head_envelope = replace(head_envelope, extra={
                    **head_envelope.extra, RESULTS: [e.queue_id for e, _ in followers]})
                _fsync_directory(incoming)  # the staged names, before the commit
            _write_file(head, "wb", head_envelope, head_content)
            with self._lock:
                state, path = self._find(queue_id)
                # The commit: one rename.
                self._rename(head, path)
                self._unwritten.pop(queue_id, None)
                if followers:
                    self._pending[queue_id] = (
                        "hold" if state == "hold" else "active",
                        [e.queue_id for e, _ in followers])
        except (OSError, SpoolError, KeyError) as e:
            for leftover in (*staged, head):
                leftover.unlink(missing_ok=True)
            if isinstance(e, (SpoolError, KeyError)):
                raise
            raise SpoolError(f"cannot write the results of processing: "
                             f"{e.strerror or e}") from e
        _flush_after_commit(path.parent, queue_id)
        with self._lock:
            state_of_results, queued = self._queue_pending(queue_id)
        return (QueuedMessage(head_envelope, state, path, len(head_content)),
                [QueuedMessage(e, state_of_results, self.directory / state_of_results / e.queue_id,
                               len(c)) for e, c in followers if e.queue_id in queued])

    def _queue_pending(self, queue_id: str) -> tuple[str, list[str]]:
        """
        Move the committed results of C{queue_id} still staged in incoming/
        into their state (C{active}, or C{hold} when the message was held);
        what cannot be moved now stays pending, tried again by the next
        scan and before the message is removed (and by the next start).

        @return: the state, and the queue ids moved into it now.
        """
        state, names = self._pending.pop(queue_id, ("active", []))
        queued: list[str] = []
        left: list[str] = []
        for name in names:
            staged = self.directory / _INCOMING / name
            try:
                try:
                    os.link(staged, self.directory / state / name)
                except FileExistsError:
                    pass  # moved by an earlier try
                os.unlink(staged)
            except OSError as e:
                log.error("{queue_id}: made by processing {parent}, written, not yet queued "
                          "({why}); tried again at the next scan", queue_id=name,
                          parent=queue_id, why=e.strerror or e)
                left.append(name)
                continue
            queued.append(name)
        if left:
            self._pending[queue_id] = (state, left)
        if queued:
            _flush_after_commit(self.directory / state, queue_id)
        return state, queued

    def remove(self, queue_id: str) -> bool:
        with self._lock:
            return self._remove(queue_id)

    def _remove(self, queue_id: str) -> bool:
        if queue_id in self._pending:
            # Its results first: once it is gone, nothing names them.
            self._queue_pending(queue_id)
            if queue_id in self._pending:
                raise SpoolError(f"{queue_id}: its results are not all queued yet")
        self._unwritten.pop(queue_id, None)
        try:
            _, path = self._find(queue_id)
        except KeyError:
            return False
        # No fsync: a removal lost in a crash brings back a message already
        # delivered (delivered twice, as any MTA may), never loses one.
        path.unlink(missing_ok=True)
        return True

    def _queue_files(self) -> Iterator[tuple[str, Path]]:
        for state in STATES:
            for path in (self.directory / state).iterdir():
                if QUEUE_ID.fullmatch(path.name):
                    yield state, path

    def _all(self) -> Iterator[QueuedMessage]:
        with self._lock:
            unwritten = dict(self._unwritten)
        for state, path in self._queue_files():
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
            yield QueuedMessage(unwritten.get(path.name, envelope), state, path, size)

    def messages(self) -> list[QueuedMessage]:
        with self._lock:
            for queue_id in list(self._pending):
                self._queue_pending(queue_id)
        return sorted(self._all(), key=lambda m: (m.envelope.received, m.envelope.queue_id))
