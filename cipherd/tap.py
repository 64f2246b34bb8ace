"""
``twistd cipherd``: command-line options and the service maker.  Only
assembles; see L{cipherd.service}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from cipherd.config import ConfigError, load_config

DEFAULT_CONFIG = "etc/cipherd.toml"


class BackupOptions(usage.Options):
    synopsis = "[--passphrase-file FILE] --to FILE"
    optParameters = [
        ["to", "t", None, "Where to write the backup."],
        ["passphrase-file", "p", "",
         "A file whose first line is the passphrase (default: typed, twice)."],
    ]

    def postOptions(self) -> None:
        if not self["to"]:
            raise usage.UsageError("say where the backup goes: --to FILE")


class RestoreOptions(usage.Options):
    synopsis = "[--passphrase-file FILE] [--replace] --from FILE"
    optFlags = [
        ["replace", None, "Replace a database that has mail, keys or accounts of its own."],
    ]
    optParameters = [
        ["from", "f", None, "The backup to restore."],
        ["passphrase-file", "p", "",
         "A file whose first line is the passphrase (default: typed)."],
    ]

    def postOptions(self) -> None:
        if not self["from"]:
            raise usage.UsageError("say which backup to restore: --from FILE")


class Options(usage.Options):
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "The bootstrap configuration file (TOML)."],
    ]
    subCommands = [
        ["backup", None, BackupOptions,
         "Write a backup of the database, key-encryption key and TLS certificate, "
         "encrypted under a passphrase (cipherd may be running)."],
        ["restore", None, RestoreOptions,
         "Restore a backup into the database and data dir (stop cipherd first)."],
    ]

    def postOptions(self) -> None:
        try:
            self["parsed"] = load_config(Path(self["config"]))
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        if self.subCommand is not None:
            # A command, not a service: done before twistd looks for a
            # running instance's pid file or starts a reactor.
            from cipherd.backups import run_command

            raise SystemExit(run_command(self.subCommand, self.subOptions, self["parsed"]))


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as installed

        reactor = installed
    from cipherd.service import make_service

    return make_service(options["parsed"], reactor)
