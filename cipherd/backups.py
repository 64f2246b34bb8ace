"""
Backups of an appliance (the file: L{cipherd.store.backup}): made and
restored on the command line (C{twistd cipherd backup}, C{twistd cipherd
restore}), from the admin pages (L{Backups}), and on a schedule
(L{ScheduledBackups}).

A restore from the command line is the one that moves an appliance to a
new machine: it replaces the database's contents, the key-encryption key
and the TLS certificate, with cipherd stopped.  The admin pages restore
only backups made under the running appliance's key-encryption key (an
earlier state of this appliance or of its cluster): the running services
hold that key, and a new one takes a restart on every node.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from getpass import getpass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy.exc import DBAPIError
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from cipherd.config import Config
from cipherd.core.counters import BACKUP_FAILURE, BACKUP_MADE, ICounters
from cipherd.cron import ScheduleError, parse_quartz
from cipherd.datadir import DataDir, prepare_data_dir, write_secret, write_secret_file
from cipherd.pki.keywrap import KeyUnsealError, seal_bytes, unseal_bytes
from cipherd.settings import GLOBAL
from cipherd.store import Store, create_engine_for_url, read_transaction, schema
from cipherd.store.backup import (
    BackupError,
    BackupInfo,
    IBackups,
    IncompatibleBackup,
    ScheduledBackup,
    check_kek,
    check_passphrase,
    open_backup,
    restore_backup,
    write_backup,
)
from cipherd.store.jobs import claim
from cipherd.store.migrations import MigrationError, migrate
from cipherd.store.settings import SettingsRepository
from cipherd.threads import IBlockingRunner

log = Logger(namespace="cipherd.backup")

# The data-dir files in a backup.
FILES = ("tls/cert.pem", "tls/key.pem")
SUFFIX = ".cdbk"
# How often the schedule is looked at.
TICK = 60.0


def data_files(data: DataDir) -> dict[str, bytes]:
    return {name: (data.root / name).read_bytes() for name in FILES
            if (data.root / name).exists()}


def _describe(info: BackupInfo) -> str:
    rows = info.rows
    when = datetime.fromtimestamp(info.created, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (f"made by node {info.node} at {when}: {sum(rows.values())} rows, with "
            f"{rows.get('certificates', 0)} certificates, {rows.get('pgp_keys', 0)} PGP "
            f"keys, {rows.get('webmail_accounts', 0)} webmail accounts, "
            f"{rows.get('webmail_messages', 0)} webmail messages, "
            f"{rows.get('admins', 0)} admin accounts")


def _stamp(now: float) -> str:
    """
    C{now} as file names carry it: 20261206T230000Z.
    """
    return datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")


def backup_name(node: str, now: float) -> str:
    return f"cipherd-{node}-{_stamp(now)}{SUFFIX}"


def make_backup(engine: Engine, path: Path, *, passphrase: str, kek: bytes,
                files: Mapping[str, bytes], node: str, now: float) -> BackupInfo:
    """
    Write a backup of the database of C{engine} to C{path}, atomically.

    @raise BackupError: see L{write_backup}.
    """
    def write(out: IO[bytes]) -> BackupInfo:
        with read_transaction(engine) as conn:
            return write_backup(conn, out, passphrase=passphrase, kek=kek, files=files,
                                node=node, now=now)

    return write_secret(path, write)


@dataclass
class _InstalledKey:
    """
    A key-encryption key put in place, and how to put the old one back.
    """

    data: DataDir
    old: bytes | None
    message: str

    def undo(self) -> None:
        if self.old is not None:
            write_secret_file(self.data.kek, self.old)


def _install_key(data: DataDir, kek: bytes, now: float) -> _InstalledKey:
    """
    Put C{kek} in place as the data dir's key-encryption key, keeping a
    different one it replaces beside it.
    """
    old = data.kek.read_bytes() if data.kek.exists() else None
    if old == kek:
        return _InstalledKey(data, None, "The key-encryption key is the one this data dir "
                                         "has.")
    kept = ""
    if old is not None:
        previous = data.kek.with_name(f"kek.replaced-{_stamp(now)}")
        write_secret_file(previous, old)
        kept = f" (the one it replaces is kept as {previous})"
    write_secret_file(data.kek, kek)
    return _InstalledKey(data, old, f"The key-encryption key is the backup's{kept}: every "
                                    f"node sharing this database needs a copy of {data.kek}.")


def _answering(endpoint: str) -> str | None:
    """
    The address of a TCP server endpoint description (C{tcp:8443:interface=
    127.0.0.1}) if something accepts connections there now.
    """
    parts = endpoint.split(":")
    if parts[0] not in ("tcp", "tcp6", "ssl") or len(parts) < 2 or not parts[1].isdigit():
        return None
    options = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
    host = options.get("interface", "127.0.0.1")
    # Listening on every address: ask on the loopback one.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
    try:
        with socket.create_connection((host, int(parts[1])), timeout=1):
            return f"{host}:{parts[1]}"
    except OSError:
        return None


def _schedule_off(conn: Connection, info: BackupInfo) -> None:
    """
    Scheduled backups off in what was restored: the backup's schedule and
    directory are another machine's, whose backups this one must not prune.
    """
    conn.execute(update(schema.property_values).where(
        (schema.property_values.c.level == "global")
        & (schema.property_values.c.name == "backup_enabled")).values(value="false"))


def restore_command(config: Config, source: Path, passphrase: str, *, replace: bool,
                    now: float) -> str:
    """
    C{twistd cipherd restore}: the backup at C{source} into the database and
    data dir of C{config}, with cipherd stopped.  The backup is checked
    whole (its checksum and passphrase) before anything is touched; its
    rows, the key-encryption key and the TLS certificate are put in place
    together: the new key just before the rows are committed, the old one
    back if the commit fails.

    @param replace: replace a database that has mail, keys or accounts of its
        own; otherwise such a database is refused.
    @return: what was restored, for the operator.
    @raise BackupError: why nothing was restored.
    """
    for what, endpoint in (("admin site", config.admin_listen),
                           ("SMTP server", config.smtp_listen)):
        address = _answering(endpoint)
        if address is not None:
            raise BackupError(f"something answers at {address}, where this configuration's "
                              f"{what} listens: stop cipherd before a restore")
    try:
        with source.open("rb") as stream:
            open_backup(stream, passphrase)
    except OSError as e:
        raise BackupError(f"cannot read {source}: {e.strerror}") from None
    data = prepare_data_dir(config.data_dir, tls_hostname=config.tls_hostname,
                            now=datetime.fromtimestamp(now, UTC))
    engine = create_engine_for_url(config.effective_database_url)
    installed: _InstalledKey | None = None
    try:
        with engine.begin() as conn:
            migrate(conn)
        if not replace:
            with engine.connect() as conn:
                held = {t.name: conn.execute(select(func.count()).select_from(t)).scalar()
                        for t in (schema.webmail_messages, schema.webmail_accounts,
                                  schema.certificates, schema.pgp_keys)}
            if any(held.values()):
                counts = ", ".join(f"{n} {name.replace('_', ' ')}"
                                   for name, n in held.items() if n)
                raise BackupError(f"the database already holds {counts}: restore with "
                                  "--replace to replace all of it with the backup")
        with source.open("rb") as stream, engine.begin() as conn:
            restored = restore_backup(conn, stream, passphrase, then=_schedule_off)
            installed = _install_key(data, restored.kek, now)
    except OSError as e:
        if installed is not None:
            installed.undo()
        raise BackupError(f"nothing was restored: {e.strerror} ({e.filename})") from None
    except BaseException:
        if installed is not None:
            installed.undo()
        raise
    finally:
        engine.dispose()
    done = [f"Restored the backup {_describe(restored.info)}.", installed.message]
    for name, content in sorted(restored.files.items()):
        if name in FILES:
            write_secret_file(data.root / name, content)
            if name.endswith("cert.pem"):
                (data.root / name).chmod(0o644)
    if restored.files:
        done.append("The TLS certificate of the sites is the backup's.")
    done.append("Scheduled backups are off (Settings → Scheduled backup): the backup's "
                "directory is another machine's.")
    done.append("Start cipherd now; everyone signs in again.")
    return "\n".join(done)


def backup_command(config: Config, target: Path, passphrase: str, *, now: float) -> str:
    """
    C{twistd cipherd backup}: a backup of the appliance of C{config} (running
    or not) to C{target}.

    @return: what was written, for the operator.
    @raise BackupError: why no backup was written.
    """
    data = DataDir(config.data_dir)
    if not data.kek.exists():
        raise BackupError(f"{data.kek} does not exist: is {config.data_dir} the data dir of "
                          "a cipherd that has started once?")
    engine = create_engine_for_url(config.effective_database_url)
    try:
        info = make_backup(engine, target, passphrase=passphrase, kek=data.kek.read_bytes(),
                           files=data_files(data), node=config.effective_node_name, now=now)
    except OSError as e:
        raise BackupError(f"cannot write {target}: {e.strerror}") from None
    finally:
        engine.dispose()
    return f"Wrote {target}, {target.stat().st_size} bytes: the backup {_describe(info)}."


def read_passphrase(path: str, *, confirm: bool) -> str:
    """
    The passphrase: the first line of the file at C{path}, or typed at the
    terminal (twice when C{confirm}).

    @raise BackupError: none can be read.
    """
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                return f.readline().rstrip("\r\n")
        except OSError as e:
            raise BackupError(f"cannot read the passphrase file {path}: {e.strerror}") from None
    if not sys.stdin.isatty():
        raise BackupError("no terminal to type the passphrase at: use --passphrase-file")
    passphrase = getpass("Backup passphrase: ")
    if confirm:
        check_passphrase(passphrase)
        if getpass("The same again: ") != passphrase:
            raise BackupError("the two passphrases differ")
    return passphrase


def run_command(name: str, options: Mapping[str, Any], config: Config) -> int:
    """
    C{twistd cipherd backup} or C{restore}: what was done on standard
    output, why not on standard error.

    @return: the exit status.
    """
    try:
        if name == "backup":
            passphrase = read_passphrase(options["passphrase-file"], confirm=True)
            done = backup_command(config, Path(options["to"]), passphrase, now=time.time())
        else:
            passphrase = read_passphrase(options["passphrase-file"], confirm=False)
            done = restore_command(config, Path(options["from"]), passphrase,
                                   replace=bool(options["replace"]), now=time.time())
    except BackupError as e:
        print(f"cipherd {name}: {e}", file=sys.stderr)
        return 1
    except (DBAPIError, MigrationError) as e:
        why = e.orig if isinstance(e, DBAPIError) else e
        print(f"cipherd {name}: the database cannot be used: {why}; nothing was done",
              file=sys.stderr)
        return 1
    print(done)
    return 0


# Scheduled backups: cipherd-scheduled-<appliance>-<when>-<node>.cdbk, the
# appliance named by a digest of its key-encryption key, so that a directory
# shared with other appliances loses none of theirs to this one's pruning.
_SCHEDULED = re.compile(r"cipherd-scheduled-([0-9a-f]{8})-(\d{8}T\d{6}Z)-[A-Za-z0-9._-]+"
                        + re.escape(SUFFIX))
# Scratch files (downloads under way) older than this are left-overs.
_SCRATCH_AGE = 3600.0
# A sealed backup passphrase in the settings.
_SEALED = "sealed:"
_PASSPHRASE_BINDING = "cipherd backup passphrase"  # noqa: S105 -- what it is bound to


def appliance_id(kek: bytes) -> str:
    return hashlib.sha256(b"cipherd backup names\0" + kek).hexdigest()[:8]


def scheduled_name(appliance: str, node: str, now: float) -> str:
    return f"cipherd-scheduled-{appliance}-{_stamp(now)}-{node}{SUFFIX}"


def scheduled_in(directory: str, appliance: str) -> list[ScheduledBackup]:
    """
    This appliance's scheduled backups in C{directory}, newest first by the
    time in their names (none if it cannot be read).
    """
    if not directory:
        return []
    found = []
    try:
        for entry in os.scandir(directory):
            match = _SCHEDULED.fullmatch(entry.name)
            if match and match.group(1) == appliance and entry.is_file():
                stat = entry.stat()
                found.append((match.group(2), ScheduledBackup(entry.name, stat.st_size,
                                                              stat.st_mtime)))
    except OSError:
        return []
    return [backup for _, backup in sorted(found, key=lambda f: (f[0], f[1].name),
                                           reverse=True)]


def prune(directory: Path, appliance: str, keep: int, written: str) -> list[str]:
    """
    Delete this appliance's oldest scheduled backups in C{directory} beyond
    the newest C{keep}; never C{written}, the one just made.

    @return: the names deleted.
    """
    gone = []
    for old in scheduled_in(str(directory), appliance)[keep:]:
        if old.name != written:
            (directory / old.name).unlink(missing_ok=True)
            gone.append(old.name)
    return gone


@implementer(IBackups)
class Backups:
    """
    Backups for the admin pages and the schedule, made and restored in the
    store's threads.

    @param kek: the running appliance's key-encryption key.
    @param files: a blocking runner for writing and listing backup files.
    """

    def __init__(self, store: Store, data: DataDir, kek: bytes, node: str,
                 clock: IReactorTime, files: IBlockingRunner) -> None:
        self._store = store
        self._data = data
        self._kek = kek
        self._node = node
        self._clock = clock
        self._files = files
        self.appliance = appliance_id(kek)

    def _write(self, path: Path, passphrase: str, now: float) -> BackupInfo:
        """
        In a thread: a backup made at C{now} written to C{path}.
        """
        return make_backup(self._store.engine, path, passphrase=passphrase, kek=self._kek,
                           files=data_files(self._data), node=self._node, now=now)

    def make(self, passphrase: str) -> Deferred[Path]:
        now = self._clock.seconds()
        scratch = self._data.scratch
        path = scratch / backup_name(self._node, now)

        def make() -> Path:
            scratch.mkdir(mode=0o700, exist_ok=True)
            # What downloads cut off while the backup was made left behind.
            for old in scratch.iterdir():
                if old.stat().st_mtime < now - _SCRATCH_AGE:
                    old.unlink(missing_ok=True)
            self._write(path, passphrase, now)
            return path

        return self._files.run(make)

    def make_into(self, path: Path, passphrase: str) -> Deferred[BackupInfo]:
        """
        A backup written to C{path}.
        """
        return self._files.run(self._write, path, passphrase, self._clock.seconds())

    async def _restore(self, backup: bytes, passphrase: str,
                       then: Callable[[Connection, BackupInfo], None] | None) -> BackupInfo:
        def check() -> None:
            # The slow checks (checksum, Argon2) and the refusals of a wrong
            # passphrase or another appliance's backup, before the write
            # transaction that holds up every other write.
            _, kek, _ = open_backup(io.BytesIO(backup), passphrase)
            check_kek(kek, self._kek)

        await self._files.run(check)

        def restore(conn: Connection) -> BackupInfo:
            return restore_backup(conn, io.BytesIO(backup), passphrase, expect_kek=self._kek,
                                  keep_newer_audit=True, then=then).info

        info: BackupInfo = await self._store.run(restore)
        return info

    def restore(self, backup: bytes, passphrase: str, *,
                then: Callable[[Connection, BackupInfo], None] | None = None
                ) -> Deferred[BackupInfo]:
        return Deferred.fromCoroutine(self._restore(backup, passphrase, then))

    def scheduled(self, directory: str) -> Deferred[list[ScheduledBackup]]:
        return self._files.run(scheduled_in, directory, self.appliance)

    def seal_passphrase(self, passphrase: str) -> str:
        """
        The scheduled backups' passphrase as the settings keep it: sealed
        under the key-encryption key, so a copy of the database alone does
        not open the backups.
        """
        sealed = seal_bytes(self._kek, passphrase.encode(), _PASSPHRASE_BINDING)
        return _SEALED + base64.b64encode(sealed).decode()

    def unseal_passphrase(self, value: str) -> str | None:
        """
        The passphrase of L{seal_passphrase}'s C{value}; C{None} if it is
        not sealed (as typed, not yet sealed); raises if it is sealed under
        another key.
        """
        if not value.startswith(_SEALED):
            return None
        return unseal_bytes(self._kek, base64.b64decode(value[len(_SEALED):]),
                            _PASSPHRASE_BINDING).decode()


class ScheduledBackups:
    """
    Makes a backup when the schedule says, on one node of several, and keeps
    the newest few.  What it did goes to the service log and the dashboard.
    A passphrase typed into the settings is sealed at the next tick.
    """

    def __init__(self, store: Store, backups: Backups, settings: SettingsRepository,
                 counters: ICounters, files: IBlockingRunner, clock: IReactorTime,
                 node: str) -> None:
        self._store = store
        self._backups = backups
        self._settings = settings
        self._counters = counters
        self._files = files
        self._clock = clock
        self._node = node

    async def _passphrase(self, value: str) -> str:
        """
        The passphrase of the settings' C{value}, sealed there first if it
        is as typed.
        """
        try:
            passphrase = self._backups.unseal_passphrase(value)
        except (KeyUnsealError, ValueError, binascii.Error):
            self._failed("the backup passphrase in the settings cannot be read with this "
                         "appliance's key-encryption key: set it again (Settings → "
                         "Scheduled backup)")
            return ""
        if passphrase is None and value:
            await self._settings.update(GLOBAL, {
                "backup_passphrase": self._backups.seal_passphrase(value)})
            passphrase = value
        return passphrase or ""

    async def tick(self) -> None:
        values = (await self._settings.by_address([""]))[""]
        passphrase = await self._passphrase(values["backup_passphrase"])
        if not values["backup_enabled"]:
            return
        try:
            schedule = parse_quartz(values["backup_schedule"])
        except ScheduleError as e:
            self._failed(f"the backup schedule is not valid: {e}")
            return
        now = self._clock.seconds()
        if not await claim(self._store, "backup", schedule.next_after_seconds, now,
                           run_first=False):
            return
        directory = values["backup_directory"]
        if not directory or not passphrase:
            self._failed("no backup directory or passphrase is set (Settings → Scheduled "
                         "backup)")
            return
        name = scheduled_name(self._backups.appliance, self._node, now)
        path = Path(directory) / name
        try:
            info = await self._backups.make_into(path, passphrase)
            gone = await self._files.run(prune, Path(directory), self._backups.appliance,
                                         values["backup_keep"], name)
        except (BackupError, OSError) as e:
            self._failed(str(e) if isinstance(e, BackupError) else
                         f"cannot write {path}: {e.strerror}")
            return
        log.info("Scheduled backup written to {path}: {rows} rows; deleted the older "
                 "{gone}", path=path, rows=sum(info.rows.values()),
                 gone=", ".join(gone) or "none")
        self._counters.mark(BACKUP_MADE, path.name)

    def _failed(self, why: str) -> None:
        log.error("Scheduled backup failed: {why}", why=why)
        self._counters.mark(BACKUP_FAILURE, why)


__all__ = ["BackupError", "Backups", "IncompatibleBackup", "ScheduledBackups",
           "backup_command", "read_passphrase", "restore_command"]
