"""
The systemd unit in etc/: systemd's own checks pass (C{systemd-analyze
verify}, and C{security} rates its exposure low), and it runs cipherd as a
dedicated user, hardened, restarted on failure.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests.peers import require_tool, run

UNIT = Path(__file__).resolve().parents[1] / "etc" / "cipherd.service"


def installed_copy(tmp_path: Path) -> Path:
    """
    The unit as installed here: its twistd is this checkout's.
    """
    copy = tmp_path / "cipherd.service"
    copy.write_text(UNIT.read_text().replace("/opt/cipherd/.venv/bin/twistd",
                                             str(Path(sys.executable).parent / "twistd")))
    return copy


def directives(text: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z]+)=(.*)$", text, re.M))


def test_systemd_finds_nothing_wrong_with_the_unit(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    done = run([analyze, "verify", str(installed_copy(tmp_path))], check=False)
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()
    assert not done.stderr.strip(), done.stderr.decode()


def test_the_unit_is_hardened(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    # The threshold is in tenths of the exposure level.
    done = run([analyze, "security", "--offline=yes", "--threshold=30",
                str(installed_copy(tmp_path))], check=False)
    output = done.stdout.decode()
    exposure = float(re.search(r"Overall exposure level for cipherd.service: ([0-9.]+)",
                               output).group(1))
    assert done.returncode == 0 and exposure <= 3.0, output[-2000:]
    found = directives(UNIT.read_text())
    assert found["User"] == "cipherd" and found["NoNewPrivileges"] == "yes"
    assert found["ProtectSystem"] == "strict" and found["Restart"] == "on-failure"
    assert "--nodaemon" in found["ExecStart"] and "--logfile=-" in found["ExecStart"]
