"""
A throwaway Postfix instance for tests and benchmarks: its own config,
queue and log under one directory, an smtpd on 127.0.0.1:<port>, and every
message relayed to one next hop.  Postfix's master runs as root and drops
to the postfix user, so this needs root (as the test command runs in CI).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.peers import require_tool

_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    """
    Postfix on 127.0.0.1:C{port}, relaying everything to C{relay_port}.
    """

    def __init__(self, port: int, relay_port: int, hostname: str = "postfix.test") -> None:
        require_tool("postfix")
        # Its own directory under /tmp: the postfix user must reach it, and
        # pytest's temporary directories are private to root.
        directory = Path(tempfile.mkdtemp(prefix="cipherd-postfix-"))
        self.directory = directory
        self.port = port
        self.config = directory / "etc"
        self.maillog = directory / "maillog"
        for sub in ("etc", "queue", "data"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)
        shutil.chown(directory / "data", "postfix")
        (self.config / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {directory}/queue
data_directory = {directory}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
setgid_group = postdrop
myhostname = {hostname}
mydomain = test
myorigin = {hostname}
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{relay_port}
smtp_host_lookup = native
disable_dns_lookups = yes
maillog_file_prefixes = {directory}
maillog_file = {self.maillog}
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
local_recipient_maps =
smtputf8_enable = no
default_process_limit = 100
""")
        (self.config / "master.cf").write_text(_MASTER_CF.format(port=port))

    def _postfix(self, command: str) -> None:
        # postfix reports to syslog, or to a terminal: give it one to see why.
        done = subprocess.run(["script", "-qc", f"postfix -c {self.config} {command}",
                               "/dev/null"], capture_output=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"postfix {command} failed:\n" + done.stdout.decode(
                errors="replace") + (self.maillog.read_text() if self.maillog.exists()
                                     else ""))

    def start(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("a Postfix instance needs root (its master drops privileges)")
        self._postfix("start")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("Postfix did not listen within 20 s")

    def stop(self) -> None:
        """
        Stop it and remove its directory (its log is read before).
        """
        try:
            self._postfix("stop")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def log(self) -> str:
        return self.maillog.read_text() if self.maillog.exists() else ""
