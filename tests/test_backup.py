"""
The backup file (cipherd.store.backup): a database's contents through a
backup into another database of each kind, and every way a backup can be
wrong refused with its own error before anything changes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, func, select

from cipherd.store import create_engine_for_url, schema
from cipherd.store.backup import (
    MAGIC,
    BackupError,
    DamagedBackup,
    NotABackup,
    WrongPassphrase,
    backed_up,
    restore_backup,
    write_backup,
)
from cipherd.store.migrations import migrate

PASSPHRASE = "a long backup passphrase"
# The cheapest Argon2id: the same code, fast tests.
FAST = {"name": "argon2id", "time_cost": 1, "memory_cost": 64, "parallelism": 1}
KEK = bytes(range(32))
FILES = {"tls/cert.pem": b"-----BEGIN CERTIFICATE-----\n", "tls/key.pem": b"key"}


def database(url: str) -> Engine:
    engine = create_engine_for_url(url)
    with engine.begin() as conn:
        migrate(conn)
    return engine


def fill(conn: Connection, who: str, *, big: bytes = b"") -> None:
    """
    Rows in tables of every kind of column: text, JSON, floats, booleans,
    binary, autoincrement ids; and a session, which a backup leaves out.
    """
    conn.execute(schema.property_values.insert(), [
        {"level": "global", "scope": "", "name": "comment", "value": json.dumps(who)},
        {"level": "domain", "scope": "example.org", "name": "encrypt_mode",
         "value": '"mandatory"'}])
    conn.execute(schema.admins.insert().values(
        name=who, password_hash="$argon2id$...", password_changed=1.5,
        must_change_password=False, role="administrator", totp_secret=b"\x00sealed\xff"))
    conn.execute(schema.admin_sessions.insert().values(
        token_hash=f"session-{who}", admin_name=who, csrf_token="t", created=1.0,
        last_seen=1.0))
    conn.execute(schema.webmail_accounts.insert().values(
        address=f"{who}@partner.example", created=2.0, state="active",
        password_hash="h", link_nonce="n", last_activity=2.0, last_login=2.5))
    conn.execute(schema.webmail_messages.insert(), [
        {"address": f"{who}@partner.example", "tunnel_id": f"t{i}", "received": 3.25 + i,
         "sender": "alice@example.org", "subject": "Contract ü", "size": 10,
         "attachments": 0, "read": i % 2 == 0, "receipt_to": "", "notified": True,
         "content": os.urandom(50) + (big if i == 0 else b"")} for i in range(3)])
    conn.execute(schema.audit_log.insert().values(
        at=4.0, actor=who, via="web", client="127.0.0.1", action="settings.change",
        target="global", summary="changed", details="{}"))


def contents(conn: Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {t.name: [tuple(r) for r in conn.execute(
        select(t).order_by(*t.primary_key.columns))] for t in backed_up()}


def backup_of(engine: Engine, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    with engine.begin() as conn:
        info = write_backup(conn, out, passphrase=kwargs.pop("passphrase", PASSPHRASE),
                            kek=KEK, files=FILES, node="node-a", now=1234.5,
                            kdf=kwargs.pop("kdf", FAST), **kwargs)
    assert info.rows["webmail_messages"] == 3 and info.files == tuple(sorted(FILES))
    return out.getvalue()


@pytest.fixture
def source(tmp_path: Any) -> Engine:
    engine = database(f"sqlite:///{tmp_path / 'source.db'}")
    with engine.begin() as conn:
        # A message larger than the SMTP limit, that does not compress: it
        # spans chunks.
        fill(conn, "alice", big=os.urandom(12 * 1024 * 1024))
    return engine


def test_a_restore_gives_the_backed_up_contents(source: Engine, database_url: str) -> None:
    data = backup_of(source)
    assert data.startswith(MAGIC)
    # Encrypted: neither the subject nor the KEK nor a file is readable.
    for secret in (b"Contract", KEK, b"BEGIN CERTIFICATE", b"alice@partner"):
        assert secret not in data
    target = database(database_url)
    with target.begin() as conn:
        fill(conn, "bob")
        before = conn.execute(select(schema.trust_generation.c.generation)).scalar() or 0
    with target.begin() as conn:
        restored = restore_backup(conn, io.BytesIO(data), PASSPHRASE)
    assert restored.kek == KEK and dict(restored.files) == FILES
    assert restored.info.node == "node-a" and restored.info.created == 1234.5
    assert restored.info.rows["webmail_messages"] == 3
    with source.connect() as a, target.connect() as b:
        assert contents(b) == contents(a)
        # Nobody stays signed in; every node reloads its certificates.
        assert b.execute(select(func.count()).select_from(schema.admin_sessions)).scalar() == 0
        assert b.execute(select(schema.trust_generation.c.generation)).scalar() > before
    # New rows get new ids (on PostgreSQL, the sequences moved past the
    # restored ones).
    with target.begin() as conn:
        conn.execute(schema.audit_log.insert().values(
            at=5.0, actor="carol", via="api", client="::1", action="restore",
            target="", summary="", details="{}"))
        ids = conn.execute(select(schema.audit_log.c.id)).scalars().all()
    assert len(ids) == len(set(ids)) == 2


def unchanged(engine: Engine, data: bytes, passphrase: str, error: type[BackupError]) -> str:
    """
    Restore C{data} into C{engine}: refused with C{error}, and the database
    as it was.  The error's message.
    """
    with engine.connect() as conn:
        before = contents(conn)
    with pytest.raises(error) as refused, engine.begin() as conn:
        restore_backup(conn, io.BytesIO(data), passphrase)
    with engine.connect() as conn:
        assert contents(conn) == before
    return str(refused.value)


@pytest.fixture
def target(tmp_path: Any) -> Engine:
    engine = database(f"sqlite:///{tmp_path / 'target.db'}")
    with engine.begin() as conn:
        fill(conn, "bob")
    return engine


def test_a_wrong_passphrase_is_refused(source: Engine, target: Engine) -> None:
    message = unchanged(target, backup_of(source), "not the passphrase", WrongPassphrase)
    assert message == "wrong passphrase: the backup cannot be opened with it"


@pytest.mark.parametrize("where", ["magic", "header", "key", "first part", "middle",
                                   "last part", "checksum"])
def test_one_flipped_byte_is_refused(source: Engine, target: Engine, where: str) -> None:
    data = bytearray(backup_of(source))
    header_end = len(MAGIC) + 2 + struct.unpack("!H", data[len(MAGIC):len(MAGIC) + 2])[0]
    position = {"magic": 3, "header": header_end - 5, "key": header_end + 40,
                "first part": header_end + 92 + 10, "middle": len(data) // 2,
                "last part": len(data) - 40, "checksum": len(data) - 1}[where]
    data[position] ^= 0x01
    error = NotABackup if where == "magic" else DamagedBackup
    message = unchanged(target, bytes(data), PASSPHRASE, error)
    assert ("not a cipherd backup" if where == "magic" else "the backup is damaged") in message


def with_checksum(data: bytes) -> bytes:
    return data[:-32] + hashlib.sha256(data[:-32]).digest()


def test_an_altered_backup_with_a_good_checksum_is_refused(source: Engine,
                                                           target: Engine) -> None:
    # Someone who changes the contents and writes a matching checksum:
    # the authenticated encryption refuses it all the same.
    data = bytearray(backup_of(source))
    data[len(data) // 2] ^= 0x80
    message = unchanged(target, with_checksum(bytes(data)), PASSPHRASE, DamagedBackup)
    assert "does not authenticate" in message
    # A header changed (a later date, another node) no longer opens the key.
    size = struct.unpack("!H", data[len(MAGIC):len(MAGIC) + 2])[0]
    header = bytes(data[len(MAGIC) + 2:len(MAGIC) + 2 + size])
    forged = bytes(data).replace(header, header.replace(b"node-a", b"node-b"))
    unchanged(target, with_checksum(forged), PASSPHRASE, WrongPassphrase)


def test_a_truncated_backup_is_refused(source: Engine, target: Engine) -> None:
    data = backup_of(source)
    for size in (20, len(data) // 2, len(data) - 1):
        unchanged(target, data[:size], PASSPHRASE, DamagedBackup)
    # Cut after a whole part, checksum rewritten: the last part is missing.
    first_part = len(MAGIC) + 2 + struct.unpack("!H", data[len(MAGIC):len(MAGIC) + 2])[0] + 92
    (size,) = struct.unpack("!I", data[first_part:first_part + 4])
    cut = data[:first_part + 4 + size] + b"\0" * 32
    message = unchanged(target, with_checksum(cut), PASSPHRASE, DamagedBackup)
    assert "ends before its last part" in message


def test_key_derivation_beyond_what_cipherd_writes_is_refused(source: Engine,
                                                              target: Engine) -> None:
    # The header is read before anything is authenticated: parameters that
    # would make the passphrase's hashing run for hours are refused.
    data = backup_of(source)
    size = struct.unpack("!H", data[len(MAGIC):len(MAGIC) + 2])[0]
    header = data[len(MAGIC) + 2:len(MAGIC) + 2 + size]
    slow = header.replace(b'"time_cost": 1', b'"time_cost": 9999999')
    forged = (MAGIC + struct.pack("!H", len(slow)) + slow
              + data[len(MAGIC) + 2 + size:])
    message = unchanged(target, with_checksum(forged), PASSPHRASE, DamagedBackup)
    assert "key derivation parameters" in message


def test_not_a_backup_and_a_short_passphrase(source: Engine, target: Engine) -> None:
    assert "not a cipherd backup" in unchanged(target, b"PK\x03\x04" + b"\0" * 200,
                                               PASSPHRASE, NotABackup)
    with pytest.raises(BackupError, match="at least 12 characters"):
        backup_of(source, passphrase="short")


def test_more_after_the_last_part_is_refused(source: Engine, target: Engine) -> None:
    data = backup_of(source)
    message = unchanged(target, with_checksum(data[:-32] + b"\0" * 20 + b"\0" * 32),
                        PASSPHRASE, DamagedBackup)
    assert "ends inside a chunk" in message or "more after its last part" in message


def test_a_restore_of_the_same_appliance_keeps_the_audit_log_made_since(
        source: Engine) -> None:
    data = backup_of(source)
    with source.begin() as conn:
        conn.execute(schema.audit_log.insert().values(
            at=2000.0, actor="alice", via="web", client="::1", action="queue.delete",
            target="ABCDEF012345", summary="deleted it", details="{}"))
    recorded = []

    def record(conn: Connection, info: Any) -> None:
        recorded.append(info.rows["audit_log"])
        conn.execute(schema.audit_log.insert().values(
            at=2001.0, actor="alice", via="web", client="::1", action="backup.restore",
            target="", summary="restored", details="{}"))

    with source.begin() as conn:
        restore_backup(conn, io.BytesIO(data), PASSPHRASE, keep_newer_audit=True,
                       then=record)
    with source.connect() as conn:
        actions = conn.execute(select(schema.audit_log.c.action).order_by(
            schema.audit_log.c.id)).scalars().all()
    assert actions == ["settings.change", "queue.delete", "backup.restore"]
    assert recorded == [1]
