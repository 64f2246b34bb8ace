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

import io
import os
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from getpass import getpass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, Engine, func, select
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from cipherd.config import Config
from cipherd.core.counters import BACKUP_FAILURE, BACKUP_MADE, ICounters
from cipherd.cron import ScheduleError, parse_quartz
from cipherd.datadir import DataDir, _write_secret_file, prepare_data_dir
from cipherd.settings import IAddressSettings
from cipherd.store import Store, create_engine_for_url, read_transaction, schema
from cipherd.store.backup import (
    BackupError,
    BackupInfo,
    IBackups,
    IncompatibleBackup,
    ScheduledBackup,
    check_passphrase,
    restore_backup,
    write_backup,
)
from cipherd.store.jobs import claim
from cipherd.store.migrations import migrate
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


def _write_new(path: Path, write: Callable[[IO[bytes]], Any]) -> Any:
    """
    Write a file of mode 0600 through C{write}, fsynced, then renamed into
    place: C{path} is whole or absent.  C{write}'s result.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            result = write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return result


def _describe(info: BackupInfo) -> str:
    rows = info.rows
    when = datetime.fromtimestamp(info.created, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (f"made by node {info.node} at {when}: {sum(rows.values())} rows, with "
            f"{rows.get('certificates', 0)} certificates, {rows.get('pgp_keys', 0)} PGP "
            f"keys, {rows.get('webmail_accounts', 0)} webmail accounts, "
            f"{rows.get('webmail_messages', 0)} webmail messages, "
            f"{rows.get('admins', 0)} admin accounts")


def backup_name(node: str, now: float) -> str:
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"cipherd-{node}-{stamp}{SUFFIX}"


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

    info: BackupInfo = _write_new(path, write)
    return info


def _install_key(data: DataDir, kek: bytes, now: float) -> str:
    """
    Put C{kek} in place as the data dir's key-encryption key, keeping a
    different one it replaces beside it.  What was done, for the operator.
    """
    old = data.kek.read_bytes() if data.kek.exists() else None
    if old == kek:
        return "The key-encryption key is the one this data dir has."
    kept = ""
    if old is not None:
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
        previous = data.kek.with_name(f"kek.replaced-{stamp}")
        _write_secret_file(previous, old)
        kept = f" (the one it replaces is kept as {previous})"
    _write_secret_file(data.kek, kek)
    return (f"The key-encryption key is the backup's{kept}: every node sharing this "
            f"database needs a copy of {data.kek}.")


def restore_command(config: Config, source: Path, passphrase: str, *, replace: bool,
                    now: float) -> str:
    """
    C{twistd cipherd restore}: the backup at C{source} into the database and
    data dir of C{config}, with cipherd stopped.

    @param replace: replace a database that has mail, keys or accounts of its
        own; otherwise such a database is refused.
    @return: what was restored, for the operator.
    @raise BackupError: why nothing was restored.
    """
    data = prepare_data_dir(config.data_dir, tls_hostname=config.tls_hostname,
                            now=datetime.fromtimestamp(now, UTC))
    engine = create_engine_for_url(config.effective_database_url)
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
        try:
            with source.open("rb") as stream, engine.begin() as conn:
                restored = restore_backup(conn, stream, passphrase)
        except OSError as e:
            raise BackupError(f"cannot read {source}: {e.strerror}") from None
    finally:
        engine.dispose()
    done = [f"Restored the backup {_describe(restored.info)}.",
            _install_key(data, restored.kek, now)]
    for name, content in sorted(restored.files.items()):
        if name in FILES:
            _write_secret_file(data.root / name, content)
            if name.endswith("cert.pem"):
                (data.root / name).chmod(0o644)
    if restored.files:
        done.append("The TLS certificate of the sites is the backup's.")
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
    print(done)
    return 0


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

    def make(self, passphrase: str) -> Deferred[Path]:
        now = self._clock.seconds()
        self._data.scratch.mkdir(mode=0o700, exist_ok=True)
        path = self._data.scratch / backup_name(self._node, now)
        return self.make_into(path, passphrase).addCallback(lambda _: path)

    def make_into(self, path: Path, passphrase: str) -> Deferred[BackupInfo]:
        """
        A backup written to C{path}.
        """
        return self._files.run(lambda: make_backup(
            self._store.engine, path, passphrase=passphrase, kek=self._kek,
            files=data_files(self._data), node=self._node, now=self._clock.seconds()))

    def restore(self, backup: bytes, passphrase: str) -> Deferred[BackupInfo]:
        def restore(conn: Connection) -> BackupInfo:
            restored = restore_backup(conn, io.BytesIO(backup), passphrase,
                                      expect_kek=self._kek)
            return restored.info

        return self._store.run(restore)

    def scheduled(self, directory: str) -> Deferred[list[ScheduledBackup]]:
        return self._files.run(scheduled_in, directory)


def scheduled_in(directory: str) -> list[ScheduledBackup]:
    """
    The backups in C{directory}, newest first (none if it cannot be read).
    """
    if not directory:
        return []
    found = []
    try:
        for entry in os.scandir(directory):
            if entry.name.startswith("cipherd-") and entry.name.endswith(SUFFIX):
                stat = entry.stat()
                found.append(ScheduledBackup(entry.name, stat.st_size, stat.st_mtime))
    except OSError:
        return []
    return sorted(found, key=lambda b: (b.modified, b.name), reverse=True)


def prune(directory: Path, keep: int) -> list[str]:
    """
    Delete the oldest backups in C{directory} beyond the newest C{keep}.

    @return: the names deleted.
    """
    gone = []
    for old in scheduled_in(str(directory))[keep:]:
        (directory / old.name).unlink(missing_ok=True)
        gone.append(old.name)
    return gone


class ScheduledBackups:
    """
    Makes a backup when the schedule says, on one node of several, and keeps
    the newest few.  What it did goes to the service log and the dashboard.
    """

    def __init__(self, store: Store, backups: Backups, settings: IAddressSettings,
                 counters: ICounters, files: IBlockingRunner, clock: IReactorTime,
                 node: str) -> None:
        self._store = store
        self._backups = backups
        self._settings = settings
        self._counters = counters
        self._files = files
        self._clock = clock
        self._node = node

    async def tick(self) -> None:
        values = (await self._settings.by_address([""]))[""]
        if not values["backup_enabled"]:
            return
        try:
            schedule = parse_quartz(values["backup_schedule"])
        except ScheduleError as e:
            self._failed(f"the backup schedule is not valid: {e}")
            return

        def due(last: float) -> float:
            return schedule.next_after(datetime.fromtimestamp(last, UTC)).timestamp()

        now = self._clock.seconds()
        if not await claim(self._store, "backup", due, now, run_first=False):
            return
        directory, passphrase = values["backup_directory"], values["backup_passphrase"]
        if not directory or not passphrase:
            self._failed("no backup directory or passphrase is set (Settings → Scheduled "
                         "backup)")
            return
        path = Path(directory) / backup_name(self._node, now)
        try:
            info = await self._backups.make_into(path, passphrase)
            gone = await self._files.run(prune, Path(directory), values["backup_keep"])
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
