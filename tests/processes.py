"""
What C{/proc} says about the processes the tests and benchmarks start.
"""

from __future__ import annotations

from pathlib import Path


def state(pid: int) -> str | None:
    """
    The state letter of C{pid} (C{"Z"} for a zombie), L{None} if it is gone.
    """
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return None


def children(pid: int) -> list[int]:
    """
    The live (not zombie) children of C{pid}, in pid order.
    """
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return sorted(found)
