"""
The on-disk queue: what is stored survives a restart, states move by
rename, and nothing but an envelope line and the content is in a file.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cipherd.core.envelope import Envelope
from cipherd.smtp.spool import MAGIC, DirectorySpool, SpoolError, new_queue_id
from tests.conftest import fill_disk

CONTENT = b"Subject: hi\r\n\r\n\x00\xff binary is fine\r\n.\r\n"


def envelope(queue_id: str | None = None, received: float = 1.0) -> Envelope:
    return Envelope(queue_id or new_queue_id(), "a@example.org",
                    ("b@example.com", "c@example.com"), received, client="c[192.0.2.1]")


def test_a_stored_message_survives_a_restart_byte_exact(tmp_path: Path) -> None:
    spool = DirectorySpool(tmp_path)
    first = spool.store(envelope(received=2.0), CONTENT)
    second = spool.store(envelope(received=1.0), b"x")
    assert first.path.parent.name == "active"
    again = DirectorySpool(tmp_path)
    assert [m.envelope.queue_id for m in again.messages()] == [
        second.envelope.queue_id, first.envelope.queue_id]  # oldest first
    message, content = again.load(first.envelope.queue_id)
    assert content == CONTENT and message.envelope == first.envelope
    assert message.size == len(CONTENT)
    assert first.path.read_bytes() == MAGIC + first.envelope.to_json() + b"\n" + CONTENT


def test_states_move_by_rename_with_a_new_envelope(tmp_path: Path) -> None:
    spool = DirectorySpool(tmp_path)
    queue_id = spool.store(envelope(), CONTENT).envelope.queue_id
    deferred = Envelope(queue_id, "a@example.org", ("c@example.com",), 1.0, attempts=1,
                        next_attempt=500.0, reason="connect to mx[192.0.2.9]:25: "
                                                   "Connection refused")
    moved = spool.move(queue_id, "deferred", deferred)
    assert moved.state == "deferred" and moved.path.parent.name == "deferred"
    message, content = spool.load(queue_id)
    assert message.envelope == deferred and content == CONTENT
    assert spool.move(queue_id, "hold").state == "hold"
    assert [p.name for p in (tmp_path / "active").iterdir()] == []
    assert [p.name for p in (tmp_path / "deferred").iterdir()] == []
    assert spool.remove(queue_id) and not spool.remove(queue_id)
    assert spool.messages() == []
    with pytest.raises(KeyError):
        spool.load(queue_id)


def test_an_unanswered_message_is_not_resumed(tmp_path: Path) -> None:
    # A file still in incoming/ was never answered 250: the client sends it again.
    spool = DirectorySpool(tmp_path)
    (tmp_path / "incoming" / "ABCDEF012345").write_bytes(MAGIC + b"half")
    DirectorySpool(tmp_path)
    assert list((tmp_path / "incoming").iterdir()) == []
    assert spool.messages() == []


def test_a_taken_queue_id_is_refused_not_overwritten(tmp_path: Path) -> None:
    spool = DirectorySpool(tmp_path)
    stored = spool.store(envelope(), CONTENT)
    with pytest.raises(SpoolError, match="is not free"):
        spool.store(stored.envelope, b"other")
    assert spool.load(stored.envelope.queue_id)[1] == CONTENT
    with pytest.raises(SpoolError, match="is not free"):
        spool.store(envelope("../../etc"), b"x")


def test_a_damaged_file_is_reported(tmp_path: Path) -> None:
    spool = DirectorySpool(tmp_path)
    (tmp_path / "active" / "ABCDEF012345").write_bytes(b"not a queue file")
    with pytest.raises(SpoolError, match="not a cipherd queue file"):
        spool.load("ABCDEF012345")
    (tmp_path / "active" / "ABCDEF012345").write_bytes(MAGIC + b'{"queue_id": 1}\n')
    with pytest.raises(SpoolError, match="damaged envelope"):
        spool.load("ABCDEF012345")


def test_the_queues_own_moves_leave_a_held_message_held(tmp_path: Path) -> None:
    spool = DirectorySpool(tmp_path)
    queue_id = spool.store(envelope(), CONTENT).envelope.queue_id
    spool.move(queue_id, "hold")  # the admin
    later = Envelope(queue_id, "a@example.org", ("c@example.com",), 1.0, attempts=1)
    moved = spool.move(queue_id, "deferred", later, keep_hold=True)  # a delivery settling
    assert moved.state == "hold"
    message, content = spool.load(queue_id)
    assert message.state == "hold" and message.envelope == later and content == CONTENT
    assert spool.move(queue_id, "deferred", keep_hold=True).state == "hold"
    assert spool.move(queue_id, "active").state == "active"  # the admin releases


def test_a_message_gone_or_damaged_while_the_queue_is_read_does_not_stop_the_scan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = DirectorySpool(tmp_path / "spool")
    kept, going = (Envelope(new_queue_id(), "a@example.org", ("b@example.com",), float(i))
                   for i in range(2))
    spool.store(kept, b"x\r\n")
    spool.store(going, b"y\r\n")
    (tmp_path / "spool" / "active" / "ABCDEF012345").write_bytes(b"not a queue file")
    real_stat = Path.stat

    def vanishing(path: Path, *args: Any, **kwargs: Any) -> Any:
        if path.name == going.queue_id:  # delivered between the listing and the read
            raise FileNotFoundError(path)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", vanishing)
    assert [m.envelope.queue_id for m in spool.messages()] == [kept.queue_id]


# 50 KB in lines of 78 octets.
LARGE = CONTENT + (b"x" * 76 + b"\r\n") * 650


def test_an_envelope_that_cannot_be_written_on_a_full_disk_leaves_no_partial_file(
        small_disk: Path) -> None:
    spool = DirectorySpool(small_disk / "spool")
    queue_id = spool.store(envelope(), LARGE).envelope.queue_id
    filler = fill_disk(small_disk, leave=20_000)  # room for part of the new file only
    deferred = Envelope(queue_id, "a@example.org", ("c@example.com",), 1.0, attempts=1,
                        next_attempt=500.0, reason="451 4.3.0 try later")
    moved = spool.move(queue_id, "deferred", deferred)
    assert (moved.state, moved.envelope) == ("deferred", deferred)
    assert list((small_disk / "spool" / "incoming").iterdir()) == []
    # The new envelope is what the spool shows, from memory...
    assert spool.load(queue_id) == (moved, LARGE)
    (listed,) = spool.messages()
    assert (listed.state, listed.envelope) == ("deferred", deferred)
    # ...while the file keeps the old one: a restart now tries all its old
    # recipients again.
    restarted = DirectorySpool(small_disk / "spool")
    again, content = restarted.load(queue_id)
    assert (again.state, again.envelope.recipients, content) == (
        "deferred", ("b@example.com", "c@example.com"), LARGE)
    # The next move that can write it does.
    filler.unlink()
    assert spool.move(queue_id, "hold").envelope == deferred
    assert DirectorySpool(small_disk / "spool").load(queue_id)[0].envelope == deferred
    assert spool.remove(queue_id) and spool.messages() == []


def test_a_message_that_does_not_fit_on_a_full_disk_is_refused_without_a_trace(
        small_disk: Path) -> None:
    spool = DirectorySpool(small_disk / "spool")
    fill_disk(small_disk, leave=20_000)
    with pytest.raises(SpoolError, match="No space left on device"):
        spool.store(envelope(), LARGE)
    assert list((small_disk / "spool" / "incoming").iterdir()) == []
    assert spool.messages() == []


class Killed(BaseException):
    """
    The process was killed (C{kill -9}) at this point.
    """


def test_a_deferral_stopped_between_its_two_renames_is_finished_at_start(
        tmp_path: Path) -> None:
    def rename(source: Path, target: Path) -> None:
        if (source.parent.name, target.parent.name) == ("active", "deferred"):
            raise Killed
        os.rename(source, target)

    spool = DirectorySpool(tmp_path, rename=rename)
    interrupted = spool.store(envelope(), CONTENT).envelope.queue_id
    released = spool.store(envelope(), CONTENT).envelope.queue_id
    deferred = Envelope(interrupted, "a@example.org", ("c@example.com",), 1.0, attempts=1,
                        next_attempt=500.0, reason="451 4.3.0 try later")
    with pytest.raises(Killed):
        spool.move(interrupted, "deferred", deferred)
    assert spool.load(interrupted)[0].state == "active"
    restarted = DirectorySpool(tmp_path)
    message, content = restarted.load(interrupted)
    assert (message.state, message.envelope, content) == ("deferred", deferred, CONTENT)
    assert restarted.load(released)[0].state == "active"  # nothing to finish there


def test_moving_into_active_makes_a_message_due_now(tmp_path: Path) -> None:
    spool = DirectorySpool(tmp_path)
    queue_id = spool.store(envelope(), CONTENT).envelope.queue_id
    spool.move(queue_id, "deferred", replace(envelope(queue_id), attempts=2,
                                             next_attempt=900.0, reason="busy"))
    spool.move(queue_id, "hold")
    released = spool.move(queue_id, "active")  # the admin's release
    assert (released.envelope.next_attempt, released.envelope.attempts) == (0.0, 2)
    again = DirectorySpool(tmp_path).load(queue_id)[0]
    assert (again.state, again.envelope) == ("active", released.envelope)
