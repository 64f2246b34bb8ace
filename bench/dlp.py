"""
DLP's search, in-process: how long a pathological pattern holds a message
(RE2, linear; Python's re shown beside it on far shorter texts, because it
is exponential), and what searching a message costs with every built-in
pattern: 10 KB of text alone, and with a 100 KB PDF attachment.

    .venv/bin/python bench/dlp.py
"""

from __future__ import annotations

import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway import dlp_message, pdf_size

from cipherd.mpa.dlp import BUILTIN, Pattern, Piece, Scanner


def best(fn: Any, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    evil = Scanner([Pattern("evil", r"(a+)+$")])
    print("A pathological pattern, (a+)+$, against 100 KB:")
    for label, text in (("100 KB of a (matches)", "a" * 100_000),
                        ("100 KB of a, then b (no match)", "a" * 100_000 + "b")):
        elapsed = best(lambda text=text: evil.scan_text([Piece("body", text)]))
        print(f"  RE2, {label:32} {elapsed * 1000:9.3f} ms")
    whole = ("Subject: x\r\n\r\n" + "a" * 100_000 + "b\r\n").encode()
    print(f"  RE2, the whole message searched      {best(lambda: evil.scan(whole)) * 1000:9.3f} ms")
    python = re.compile(r"(a+)+$")
    for n in (18, 20, 22, 24):
        text = "a" * n + "b"
        elapsed = best(lambda text=text: python.search(text), runs=1)
        print(f"  Python re, {n} a then b              {elapsed * 1000:9.1f} ms "
              "(doubles with each a more)")

    scanner = Scanner(list(BUILTIN.values()))
    print(f"\nEvery built-in pattern ({', '.join(BUILTIN)}):")
    report = dlp_message().replace(b"\n", b"\r\n")
    dense = dlp_message(dense=True).replace(b"\n", b"\r\n")
    text_only = report[:report.index(b"Content-Type: application/pdf")]
    for label, content in (
            ("10 KB of text", text_only),
            (f"+ {pdf_size(report) // 1024} KB PDF, 2 pages and a chart", report),
            (f"+ {pdf_size(dense) // 1024} KB PDF of text alone", dense)):
        times = [best(lambda content=content: scanner.scan(content), runs=1)
                 for _ in range(10)]
        print(f"  {label:36} median {statistics.median(times) * 1000:7.1f} ms per message")


if __name__ == "__main__":
    main()
