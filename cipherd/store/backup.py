"""
Backups of the database: one file that holds the contents of every table an
appliance cannot rebuild (settings, certificates and keys -- still sealed --,
keyrings, admin and webmail accounts, mailboxes, the audit log), a few files
of the data dir and the key-encryption key, encrypted under a passphrase.

The file, version 1::

    CIPHERD-BACKUP\\n                 magic
    uint16 n, n bytes                 the header, JSON (format, when, where,
                                      schema version, KDF and its parameters)
    12 + 64 + 16 bytes                AES-256-GCM under the passphrase key
                                      (Argon2id of the passphrase): the
                                      content key (32) and the KEK (32); the
                                      magic and header are its associated data
    uint32 n, n bytes, ...            the content, zlib-compressed JSON lines,
                                      in chunks of AES-256-GCM under the
                                      content key: nonce = chunk number (8) +
                                      0 (3) + last-chunk flag (1), associated
                                      data the SHA-256 of magic and header, so
                                      chunks cannot be reordered, dropped or
                                      cut off after the last one
    32 bytes                          SHA-256 of everything before it

The authenticated encryption is what protects the file.  The plain checksum
at the end only lets a restore tell a damaged file ("the backup is damaged")
from a wrong passphrase, which the first authentication failure alone
cannot.

The content, one JSON value per line: C{{"table": name, "columns": [...]}}
before the rows of a table, each row as a list (bytes as base64), C{{"file":
name, "data": base64}} for a data-dir file, and C{{"end": {table: rows}}}
last.

Left out are what belongs to one running node or is rebuilt: sessions,
login failures, scheduled-job runs, the dashboard's counters, the trust
cache's generation (a restore moves it forward, so every node reloads).
The mail queue is files in the spool, not in the database: it is not in a
backup.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from argon2.exceptions import HashingError
from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, LargeBinary, Table, func, select, text, update
from twisted.internet.defer import Deferred
from zope.interface import Interface

from cipherd.store import schema
from cipherd.store.migrations import MIGRATIONS, current_version, latest_version

MAGIC = b"CIPHERD-BACKUP\n"
FORMAT = 1
# Plain text compressed into about this much before it is sealed as one chunk.
CHUNK = 1 << 20
# The largest chunk a reader accepts: CHUNK and the tag.
_MAX_CHUNK = CHUNK + 16
_MAX_HEADER = 4096
_KEY_BLOCK = 12 + 64 + 16
_CHECKSUM = 32
# Rows inserted in one statement: at most this many, and about this many
# bytes (a mailbox row may be megabytes).
_ROWS_PER_INSERT = 500
_BYTES_PER_INSERT = 8 << 20
# Rows fetched at a time while writing a backup.
_ROWS_PER_FETCH = 64

# Argon2id (RFC 9106's second recommended option: 64 MiB, 3 passes).  A
# reader refuses parameters far beyond these, since the header is read
# before anything is authenticated and must not make it work for hours.
KDF = {"name": "argon2id", "time_cost": 3, "memory_cost": 64 * 1024, "parallelism": 2}
_KDF_LIMITS = {"time_cost": 10, "memory_cost": 256 * 1024, "parallelism": 8}
_SALT_BYTES = 16

MIN_PASSPHRASE = 12

# Tables a backup leaves out; see the module's docstring.
LEFT_OUT = frozenset({
    schema.schema_version, schema.admin_sessions, schema.login_failures,
    schema.webmail_sessions, schema.webmail_login_failures, schema.job_runs,
    schema.counters, schema.node_marks, schema.recent_errors, schema.trust_generation,
})
# What a restore empties besides the tables it fills: nobody stays signed in
# to accounts the restore may have replaced.
_EMPTIED = frozenset({schema.admin_sessions, schema.webmail_sessions,
                      schema.login_failures, schema.webmail_login_failures})


def backed_up() -> list[Table]:
    """
    The tables in a backup, each after the tables it refers to.
    """
    return [t for t in schema.metadata.sorted_tables if t not in LEFT_OUT]


class BackupError(Exception):
    """
    A backup cannot be made or restored; the message says why, in words an
    administrator can act on.  Nothing was changed.
    """


class NotABackup(BackupError):
    pass


class DamagedBackup(BackupError):
    pass


class WrongPassphrase(BackupError):
    pass


class IncompatibleBackup(BackupError):
    pass


@dataclass(frozen=True)
class BackupInfo:
    """
    What a backup holds.

    @ivar created: when it was made, seconds since the epoch.
    @ivar node: the node that made it.
    @ivar schema: the database schema version of its tables.
    @ivar rows: the number of rows per table.
    @ivar files: the data-dir files in it.
    """

    created: float
    node: str
    schema: int
    rows: Mapping[str, int] = field(default_factory=dict)
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Restored:
    """
    What a restore put back: the database rows (already committed by the
    caller's transaction), and what the caller writes to the data dir.
    """

    info: BackupInfo
    kek: bytes
    files: Mapping[str, bytes]


@dataclass(frozen=True)
class ScheduledBackup:
    """
    A backup file in the backup directory.

    @ivar modified: when it was written, seconds since the epoch.
    """

    name: str
    size: int
    modified: float


class IBackups(Interface):
    """
    Backups of the running appliance, for the admin pages.
    """

    def make(passphrase: str) -> Deferred[Path]:
        """
        A new backup in a file of the data dir's scratch directory, which
        the caller deletes once it has sent it.

        @raise BackupError: (in the Deferred) the passphrase is too short.
        """

    def restore(backup: bytes, passphrase: str, *,
                then: Callable[[Connection, BackupInfo], None] | None = None
                ) -> Deferred[BackupInfo]:
        """
        Replace the database's contents with those of C{backup} (an upload),
        made under this appliance's key-encryption key; all or nothing.  The
        audit log's entries made since the backup are kept.

        @param then: called in the restore's transaction once the rows are
            back (L{restore_backup}).

        @raise BackupError: (in the Deferred) why nothing was restored: not
            a backup, damaged, a wrong passphrase, another schema version,
            or another key-encryption key.
        """

    def scheduled(directory: str) -> Deferred[list[ScheduledBackup]]:
        """
        The backups in C{directory}, newest first.
        """


def check_passphrase(passphrase: str) -> None:
    """
    @raise BackupError: too short to protect the key-encryption key.
    """
    if len(passphrase) < MIN_PASSPHRASE:
        raise BackupError(f"the backup passphrase must have at least {MIN_PASSPHRASE} "
                          "characters: it protects every key of the appliance")


def _passphrase_key(passphrase: str, kdf: Mapping[str, Any]) -> bytes:
    """
    @raise BackupError: Argon2 refused the parameters.
    """
    try:
        return _argon2(passphrase, kdf)
    except HashingError as e:
        raise DamagedBackup(f"the backup is damaged: {e}") from None


def _argon2(passphrase: str, kdf: Mapping[str, Any]) -> bytes:
    return hash_secret_raw(passphrase.encode(), base64.b64decode(kdf["salt"]),
                           time_cost=kdf["time_cost"], memory_cost=kdf["memory_cost"],
                           parallelism=kdf["parallelism"], hash_len=32, type=Type.ID)


def _nonce(index: int, last: bool) -> bytes:
    return struct.pack("!QxxxB", index, last)


class _HashingWriter:
    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.hash.update(data)
        self._out.write(data)


class _ChunkWriter:
    """
    Compresses what it is given and seals it chunk by chunk.
    """

    def __init__(self, out: _HashingWriter, key: bytes, associated: bytes) -> None:
        self._out = out
        self._aead = AESGCM(key)
        self._associated = associated
        self._compress = zlib.compressobj(6)
        self._pending: list[bytes] = []
        self._size = 0
        self._index = 0

    def _seal(self, plain: bytes, last: bool) -> None:
        sealed = self._aead.encrypt(_nonce(self._index, last), plain, self._associated)
        self._out.write(struct.pack("!I", len(sealed)) + sealed)
        self._index += 1

    def line(self, value: Any) -> None:
        data = self._compress.compress(json.dumps(value, separators=(",", ":")).encode()
                                       + b"\n")
        if data:
            self._pending.append(data)
            self._size += len(data)
        if self._size >= CHUNK:
            # A large row (a message of megabytes that does not compress)
            # spans chunks: none is ever larger than CHUNK.
            pending = b"".join(self._pending)
            whole = len(pending) - len(pending) % CHUNK
            for start in range(0, whole, CHUNK):
                self._seal(pending[start:start + CHUNK], False)
            rest = pending[whole:]
            self._pending, self._size = ([rest] if rest else []), len(rest)

    def close(self) -> None:
        pending = b"".join([*self._pending, self._compress.flush()])
        while len(pending) > CHUNK:
            self._seal(pending[:CHUNK], False)
            pending = pending[CHUNK:]
        self._seal(pending, True)


def _encoders(table: Table) -> list[Any]:
    return [(lambda v: None if v is None else base64.b64encode(v).decode())
            if isinstance(c.type, LargeBinary) else None for c in table.columns]


def write_backup(conn: Connection, out: IO[bytes], *, passphrase: str, kek: bytes,
                 files: Mapping[str, bytes], node: str, now: float,
                 kdf: Mapping[str, Any] = KDF) -> BackupInfo:
    """
    Write a backup of the database C{conn} reads to C{out}.  Call it in a
    transaction: on PostgreSQL it asks for a snapshot (repeatable read), so
    the tables agree with each other; SQLite's read transactions are one.

    @param kek: the key-encryption key, wrapped into the backup.
    @param files: data-dir files to include, by their path in the data dir.
    @param kdf: the passphrase's Argon2id parameters (a keyword for tests).
    @raise BackupError: the passphrase is too short, or the database is not
        at this program's schema version.
    """
    check_passphrase(passphrase)
    if conn.dialect.name == "postgresql":
        conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
    version = current_version(conn)
    if version != latest_version(MIGRATIONS):
        raise BackupError(f"the database has schema version {version}, this cipherd "
                          f"{latest_version(MIGRATIONS)}: start cipherd once to migrate "
                          "it first")
    kdf = {**kdf, "salt": base64.b64encode(os.urandom(16)).decode()}
    header = json.dumps({"format": FORMAT, "created": now, "node": node, "schema": version,
                         "kdf": kdf, "cipher": "AES-256-GCM"}, sort_keys=True).encode()
    writer = _HashingWriter(out)
    writer.write(MAGIC + struct.pack("!H", len(header)) + header)
    content_key = AESGCM.generate_key(256)
    nonce = os.urandom(12)
    writer.write(nonce + AESGCM(_passphrase_key(passphrase, kdf)).encrypt(
        nonce, content_key + kek, MAGIC + header))
    chunks = _ChunkWriter(writer, content_key, hashlib.sha256(MAGIC + header).digest())
    rows: dict[str, int] = {}
    for table in backed_up():
        chunks.line({"table": table.name, "columns": [c.name for c in table.columns]})
        encoders = _encoders(table)
        count = 0
        result = conn.execution_options(
            stream_results=True, max_row_buffer=_ROWS_PER_FETCH).execute(
                select(table).order_by(*table.primary_key.columns))
        for row in result:
            chunks.line([v if encode is None else encode(v)
                         for v, encode in zip(row, encoders, strict=True)])
            count += 1
        rows[table.name] = count
    for name, data in sorted(files.items()):
        chunks.line({"file": name, "data": base64.b64encode(data).decode()})
    chunks.line({"end": rows})
    chunks.close()
    out.write(writer.hash.digest())
    return BackupInfo(now, node, version, rows, tuple(sorted(files)))


def _read_exactly(stream: _Bounded, size: int, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise DamagedBackup(f"the backup is damaged: it ends inside {what} (a truncated "
                            "file?)")
    return data


class _Bounded:
    """
    A file read up to C{end}: the contents of a backup without its checksum.
    """

    def __init__(self, stream: IO[bytes], end: int) -> None:
        self._stream = stream
        self._end = end

    def read(self, size: int) -> bytes:
        return self._stream.read(max(0, min(size, self._end - self._stream.tell())))


def _checked(stream: IO[bytes]) -> _Bounded:
    """
    C{stream} (a seekable file) once its magic is there and its checksum
    matches, at its start, without its checksum.
    """
    if stream.read(len(MAGIC)) != MAGIC:
        raise NotABackup("this is not a cipherd backup: it does not begin with "
                         "CIPHERD-BACKUP")
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    if size < len(MAGIC) + 2 + _KEY_BLOCK + _CHECKSUM:
        raise DamagedBackup("the backup is damaged: it is too short (a truncated file?)")
    stream.seek(0)
    digest = hashlib.sha256()
    left = size - _CHECKSUM
    while left:
        data = stream.read(min(left, CHUNK))
        if not data:
            raise DamagedBackup("the backup is damaged: it changed while being read")
        digest.update(data)
        left -= len(data)
    if digest.digest() != stream.read(_CHECKSUM):
        raise DamagedBackup("the backup is damaged: its checksum does not match its "
                            "contents (changed or truncated after it was made)")
    stream.seek(len(MAGIC))
    return _Bounded(stream, size - _CHECKSUM)


def _read_header(stream: _Bounded) -> tuple[bytes, dict[str, Any]]:
    (size,) = struct.unpack("!H", _read_exactly(stream, 2, "its header"))
    raw = _read_exactly(stream, size, "its header")
    try:
        header = json.loads(raw)
        fmt = header["format"]
    except (ValueError, KeyError, TypeError):
        raise DamagedBackup("the backup is damaged: its header cannot be read") from None
    if fmt != FORMAT:
        raise IncompatibleBackup(f"the backup has format {fmt}; this cipherd reads "
                                 f"format {FORMAT}: restore it with the cipherd that made "
                                 "it or a newer one")
    if size > _MAX_HEADER:
        raise DamagedBackup("the backup is damaged: its header is too long")
    return raw, header


def _checked_kdf(header: Mapping[str, Any]) -> dict[str, Any]:
    try:
        kdf = dict(header["kdf"])
        if kdf["name"] != "argon2id" or not isinstance(kdf["salt"], str):
            raise ValueError
        if len(base64.b64decode(kdf["salt"], validate=True)) != _SALT_BYTES:
            raise ValueError
        for name, limit in _KDF_LIMITS.items():
            if isinstance(kdf[name], bool) or not isinstance(kdf[name], int) or not (
                    1 <= kdf[name] <= limit):
                raise ValueError
        if kdf["memory_cost"] < 8 * kdf["parallelism"]:
            raise ValueError
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise DamagedBackup("the backup is damaged: its key derivation parameters are "
                            "not ones cipherd writes") from None
    return kdf


def _chunks(stream: _Bounded, key: bytes, associated: bytes) -> Iterator[bytes]:
    """
    The plain text of the chunks, each only once it is authenticated.
    """
    aead = AESGCM(key)
    decompress = zlib.decompressobj()
    index = 0
    while True:
        prefix = stream.read(4)
        if not prefix:
            raise DamagedBackup("the backup is damaged: it ends before its last part (a "
                                "truncated file?)")
        (size,) = struct.unpack("!I", prefix + _read_exactly(stream, 4 - len(prefix),
                                                              "a chunk"))
        if size > _MAX_CHUNK:
            raise DamagedBackup("the backup is damaged: a chunk is larger than cipherd "
                                "writes them")
        sealed = _read_exactly(stream, size, "a chunk")
        for last in (False, True):
            try:
                compressed = aead.decrypt(_nonce(index, last), sealed, associated)
                break
            except InvalidTag:
                continue
        else:
            raise DamagedBackup(f"the backup is damaged or was altered: part {index + 1} "
                                "does not authenticate")
        try:
            yield decompress.decompress(compressed)
            if last:
                yield decompress.flush()
        except zlib.error as e:
            raise DamagedBackup(f"the backup is damaged: {e}") from None
        index += 1
        if last:
            if stream.read(1):
                raise DamagedBackup("the backup is damaged: there is more after its last "
                                    "part")
            return


def _lines(chunks: Iterator[bytes]) -> Iterator[Any]:
    """
    The JSON values of the lines in C{chunks}; a line may span many chunks
    (a large message), and is joined once.
    """
    parts: list[bytes] = []
    for data in chunks:
        *complete, rest = data.split(b"\n")
        for piece in complete:
            try:
                yield json.loads(b"".join([*parts, piece]))
            except ValueError:
                raise DamagedBackup("the backup is damaged: a line of its contents is not "
                                    "JSON") from None
            parts.clear()
        if rest:
            parts.append(rest)
    if parts:
        raise DamagedBackup("the backup is damaged: its contents end mid-line")


def open_backup(stream: IO[bytes], passphrase: str) -> tuple[BackupInfo, bytes,
                                                             Iterator[Any]]:
    """
    Check C{stream} (a seekable file) whole and open it.

    @return: its header as L{BackupInfo} (without row counts), the KEK, and
        the lines of its contents, each yielded only once authenticated.
    @raise BackupError: not a backup, damaged, of another format, or the
        passphrase is wrong.
    """
    contents = _checked(stream)
    raw, header = _read_header(contents)
    kdf = _checked_kdf(header)
    block = _read_exactly(contents, _KEY_BLOCK, "its key")
    try:
        keys = AESGCM(_passphrase_key(passphrase, kdf)).decrypt(block[:12], block[12:],
                                                                 MAGIC + raw)
    except InvalidTag:
        raise WrongPassphrase("wrong passphrase: the backup cannot be opened with it") from None
    info = BackupInfo(float(header["created"]), str(header["node"]), int(header["schema"]))
    lines = _lines(_chunks(contents, keys[:32], hashlib.sha256(MAGIC + raw).digest()))
    return info, keys[32:], lines


def check_kek(kek: bytes, expected: bytes) -> None:
    """
    @raise IncompatibleBackup: the backup's key-encryption key C{kek} is not
        the running appliance's C{expected}.
    """
    if kek != expected:
        raise IncompatibleBackup(
            "the backup was made under another key-encryption key (another appliance): "
            "restore it with twistd cipherd restore, with cipherd stopped")


def _decoders(table: Table, columns: list[str]) -> list[Any]:
    known = {c.name: c for c in table.columns}
    missing = [c for c in known if c not in columns]
    if missing or set(columns) - set(known):
        raise IncompatibleBackup(f"the backup's table {table.name} has other columns than "
                                 "this cipherd's")
    return [(lambda v: None if v is None else base64.b64decode(v))
            if isinstance(known[c].type, LargeBinary) else None for c in columns]


def restore_backup(conn: Connection, stream: IO[bytes], passphrase: str, *,
                   expect_kek: bytes | None = None, keep_newer_audit: bool = False,
                   then: Callable[[Connection, BackupInfo], None] | None = None) -> Restored:
    """
    Replace the contents of the database C{conn} writes to with those of a
    backup.  Call it in a transaction and commit only when it returns: any
    error leaves the database as it was once the transaction rolls back.

    @param stream: the backup, a seekable file.
    @param expect_kek: the key-encryption key the backup must have been made
        under (a running appliance's), if any.
    @param keep_newer_audit: keep the audit log's entries made after the
        backup (a restore of the same appliance must not erase what was
        done since).
    @param then: called in the same transaction once the rows are back
        (to record the restore in the audit log, all or nothing with it).
    @raise BackupError: not a backup, damaged, made by a cipherd of another
        schema version, the passphrase is wrong, or the key is not the one
        expected.
    """
    info, kek, lines = open_backup(stream, passphrase)
    if expect_kek is not None:
        check_kek(kek, expect_kek)
    version = current_version(conn)
    if info.schema != version:
        raise IncompatibleBackup(
            f"the backup has schema version {info.schema}, this database "
            f"{version}: restore it with the cipherd version that made it (then upgrade), "
            "or make the backup again with this one")
    tables = {t.name: t for t in backed_up()}
    if conn.dialect.name == "postgresql":
        # Other nodes' writes wait until the restore is committed.
        names = ", ".join(f'"{t.name}"' for t in schema.metadata.sorted_tables
                          if t.name in tables or t in _EMPTIED)
        conn.execute(text(f"LOCK TABLE {names} IN EXCLUSIVE MODE"))
    for emptied in reversed(schema.metadata.sorted_tables):
        if emptied is schema.audit_log and keep_newer_audit:
            conn.execute(emptied.delete().where(emptied.c.at <= info.created))
        elif emptied in _EMPTIED or emptied.name in tables:
            conn.execute(emptied.delete())
    kept_audit = (set(conn.execute(select(schema.audit_log.c.id)).scalars())
                  if keep_newer_audit else set())
    files: dict[str, bytes] = {}
    rows: dict[str, int] = {}
    table: Table | None = None
    batch: list[dict[str, Any]] = []
    batch_bytes = 0
    columns: list[str] = []
    decoders: list[Any] = []

    def flush() -> None:
        nonlocal batch_bytes
        if table is not None and batch:
            conn.execute(table.insert(), batch)
        batch.clear()
        batch_bytes = 0

    end = None
    for line in lines:
        if isinstance(line, list) and table is not None:
            row = {c: v if decode is None else decode(v)
                   for c, v, decode in zip(columns, line, decoders, strict=True)}
            rows[table.name] += 1
            if table is schema.audit_log and row["id"] in kept_audit:
                continue  # the same entry, kept
            batch.append(row)
            batch_bytes += sum(len(v) for v in row.values() if isinstance(v, bytes | str))
            if len(batch) >= _ROWS_PER_INSERT or batch_bytes >= _BYTES_PER_INSERT:
                flush()
            continue
        flush()
        if not isinstance(line, dict):
            raise DamagedBackup("the backup is damaged: a row outside any table")
        if "table" in line:
            if line["table"] not in tables:
                raise IncompatibleBackup(f"the backup has a table this cipherd does not "
                                         f"know: {line['table']}")
            table, columns = tables[line["table"]], line["columns"]
            decoders = _decoders(table, columns)
            rows[table.name] = 0
        elif "file" in line:
            table = None
            files[line["file"]] = base64.b64decode(line["data"])
        elif "end" in line:
            end = line["end"]
            table = None
    if end != rows or set(rows) != set(tables):
        raise DamagedBackup("the backup is damaged: its tables or row counts do not match "
                            "its rows")
    _after_restore(conn)
    restored = BackupInfo(info.created, info.node, info.schema, rows, tuple(sorted(files)))
    if then is not None:
        then(conn, restored)
    return Restored(restored, kek, files)


def _after_restore(conn: Connection) -> None:
    """
    Move the trust cache's generation forward, so every node reloads its
    certificates; on PostgreSQL, set each id sequence past the restored
    ids, or the next insert would reuse one.
    """
    generation = schema.trust_generation
    if conn.execute(update(generation).values(
            generation=generation.c.generation + 1)).rowcount == 0:
        conn.execute(generation.insert().values(id=1, generation=1))
    if conn.dialect.name != "postgresql":
        return
    for table in backed_up():
        for column in table.primary_key.columns:
            if column.autoincrement is True:
                sequence = conn.execute(text("SELECT pg_get_serial_sequence(:t, :c)"),
                                        {"t": table.name, "c": column.name}).scalar()
                current = conn.execute(text(
                    "SELECT last_value FROM pg_sequences "
                    "WHERE schemaname || '.' || sequencename = :s"), {"s": sequence}).scalar()
                highest = conn.execute(select(func.max(column))).scalar()
                # Never backwards: setval is not undone if the restore is.
                value = max(highest or 0, current or 0)
                conn.execute(text("SELECT setval(:s, :v, :called)"),
                             {"s": sequence, "v": value or 1, "called": value > 0})
