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


class Options(usage.Options):
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "The bootstrap configuration file (TOML)."],
    ]

    def postOptions(self) -> None:
        try:
            self["parsed"] = load_config(Path(self["config"]))
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as installed

        reactor = installed
    from cipherd.service import make_service

    return make_service(options["parsed"], reactor)
