"""
The layers of cipherd (README, "Layout"): each part imports only parts of
the layers below it (and itself), never one above, so that a lower layer
can be read, tested and changed without the higher ones.  The check reads
the imports of every module, wherever in the module they are.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cipherd"

# Lowest first.  The last layer assembles the others and may import any.
LAYERS: list[tuple[str, ...]] = [
    ("core",),
    ("logs", "threads", "cron", "netinfo"),
    ("settings",),
    ("store",),
    ("pki",),
    ("smtp",),
    ("webmail",),
    ("mpa",),
    ("web",),
    ("datadir", "config", "service", "workers", "tap", "testing", "backups"),
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def part_of(module: str) -> str:
    """
    C{cipherd.smtp.queue} → C{smtp}; C{cipherd.settings} → C{settings}.
    """
    return module.split(".")[1]


def imports() -> list[tuple[str, int, str]]:
    """
    C{(file, line, imported module)} for every import of cipherd in cipherd.
    """
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = str(path.relative_to(PACKAGE.parent))
        for node in ast.walk(ast.parse(path.read_text(), name)):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            found += [(name, node.lineno, m) for m in modules
                      if m.startswith("cipherd.")]
    return found


def test_every_part_of_cipherd_has_a_layer() -> None:
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}
    assert parts == set(RANK), "add the new part to LAYERS (and the README)"


def upwards(found: list[tuple[str, int, str]]) -> list[str]:
    """
    The imports of C{found} that run from a layer to the same or a higher
    one (within a part, and from the assembling layer, anything goes).
    """
    wrong = []
    for path, line, module in found:
        importer = part_of(path.removesuffix(".py").replace("/", "."))
        imported = part_of(module)
        if importer == imported or RANK[importer] == len(LAYERS) - 1:
            continue
        if RANK[imported] >= RANK[importer]:
            wrong.append(f"{path}:{line}: {importer} (layer {RANK[importer]}) imports "
                         f"{module} (layer {RANK[imported]})")
    return wrong


def test_no_part_imports_a_part_of_a_higher_layer() -> None:
    assert upwards(imports()) == []


def test_the_check_refuses_imports_upwards_and_sideways() -> None:
    assert upwards([("cipherd/webmail/mailbox.py", 12, "cipherd.mpa.message")]) == [
        "cipherd/webmail/mailbox.py:12: webmail (layer 6) imports cipherd.mpa.message "
        "(layer 7)"]
    assert upwards([("cipherd/pki/certstore.py", 3, "cipherd.datadir")]) != []
    assert upwards([("cipherd/core/clock.py", 1, "cipherd.logs")]) != []
    assert upwards([("cipherd/logs.py", 1, "cipherd.threads")]) != []
    assert upwards([("cipherd/mpa/relay.py", 1, "cipherd.webmail.notify"),
                    ("cipherd/mpa/relay.py", 2, "cipherd.mpa.tunnel"),
                    ("cipherd/service.py", 1, "cipherd.web.admin")]) == []
