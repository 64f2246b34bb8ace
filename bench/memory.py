"""
Memory of a running appliance, measured from outside as an administrator
sees it: the resident set (RSS) of the cipherd process and its processing
worker (summed) in /proc/<pid>/status, set up as bench/gateway.py sets up the gateway (the
S/MIME and webmail tunnel paths, everything delivered to Postfix's
smtp-sink).

(a) and (b): one 25 MB message (smtp-source's text, 25 MiB) through the
whole S/MIME path (received, spooled, signed and encrypted, spooled
again, delivered) and through the whole webmail tunnel path (wrapped,
signed and encrypted for the webmail appliance, delivered), each on a
fresh appliance after 20 small messages on the same path have warmed it
up.  Just before the message is sent each process's peak RSS (VmHWM) is
reset to its current RSS (writing 5 to /proc/<pid>/clear_refs); once the
sink has the message, the sum of the peaks minus the RSS before is the
growth (a message over 1 MB is processed in the main process), printed
as a multiple of the message size.  Target: under 4x.  RSS counts what
Python, OpenSSL and the allocator hold, including memory glibc keeps after
Python freed it; what stays after the message is shown too.

(c): RSS across 10,000 messages of 10 KB (--messages) on a fresh
appliance, half S/MIME, half webmail tunnel, sent in rounds of 1,000
(--sample-every) with 20 sessions; RSS is sampled after each round, once
the sink has all of it.  The first round is the warm-up; every later
sample must be within 10% of the RSS after it.  Target: flat within
+-10%.

When a case misses its target it is run again on an appliance started
under tracemalloc (this script as twistd's launcher, with --traced), and
the allocations that tracemalloc sees are printed: at the peak for (a) and
(b), what grew between the first and last round for (c).  tracemalloc sees
only Python's allocations (not OpenSSL's or the allocator's), so its peak
is printed beside the RSS figure.

Prints the figures and PASS/FAIL against both targets, and exits 0 either
way.  Needs the Debian postfix package and root (smtp-sink runs as nobody).

    .venv/bin/python bench/memory.py                  # about 5 minutes
    .venv/bin/python bench/memory.py --messages 3000  # (c) shorter
"""

from __future__ import annotations

import argparse
import linecache
import os
import signal
import sys
import threading
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway import PATHS, SENDER, configure  # noqa: E402
from mta import Cipherd, SmtpSink, measure, send  # noqa: E402

from tests.processes import children  # noqa: E402

MB = 1024 * 1024
LARGE = 25 * MB
SMALL = 10 * 1024
PEAK_TARGET = 4.0
FLATNESS = 0.10
# glibc's malloc raises its mmap threshold to the size of large blocks
# freed, then keeps such blocks in the heap; fixing it tells what the
# allocator keeps from what the code holds (mallopt(3)).
MMAP_AT_ONCE = {"MALLOC_MMAP_THRESHOLD_": "131072"}
LARGE_PATHS = {"S/MIME": PATHS["S/MIME"], "webmail tunnel": PATHS["webmail tunnel"]}
# What the traced appliance writes its findings to, in its directory.
TRACE_REPORT = "tracemalloc.txt"
STARTED, END = "STARTED\n", "END\n"
# Frames kept per allocation: enough to get from the buffer to our code.
FRAMES = 25


def status(pid: int, field: str) -> int:
    """
    A VmRSS/VmHWM-like field of /proc/<pid>/status, in bytes.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def family(pid: int) -> list[int]:
    """
    C{pid} and its children (the appliance and its processing workers).
    """
    return [pid, *children(pid)]


def total(pids: list[int], field: str) -> int:
    """
    A /proc status field summed over C{pids}.
    """
    return sum(status(pid, field) for pid in pids)


def reset_peak(pid: int) -> None:
    # proc(5): writing 5 to clear_refs resets the peak RSS to the current RSS.
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def appliance(sink: SmtpSink, *, traced: bool = False,
              environment: dict[str, str] | None = None) -> Cipherd:
    """
    An appliance set up as the gateway benchmark's, taking messages of up
    to 30 MB (their S/MIME and tunnel forms are larger: 4x after filters).
    """
    launcher = [sys.executable, str(Path(__file__).resolve()), "--traced"] if traced else []
    cipherd = Cipherd(launcher=launcher, environment=environment)
    configure(cipherd, sink.port)
    cipherd.wait_for_workers()
    cipherd.api("PATCH", "/mta", {"before_filter_message_size_limit": 30 * MB,
                                  "after_filter_message_size_limit": 120 * MB})
    return cipherd


@dataclass
class Peak:
    before: int
    peak: int
    after: int

    @property
    def ratio(self) -> float:
        return (self.peak - self.before) / LARGE


def large_message(recipient: str, *, traced: bool = False,
                  environment: dict[str, str] | None = None) -> tuple[Peak, str]:
    """
    The peak RSS of a fresh appliance around one 25 MB message to
    C{recipient}; with C{traced}, also tracemalloc's report of the peak.
    """
    sink = SmtpSink()
    try:
        cipherd = appliance(sink, traced=traced, environment=environment)
    except BaseException:
        sink.close()
        raise
    try:
        measure(cipherd.smtp_port, sink, 20, SMALL, sender=SENDER, recipient=recipient)
        time.sleep(2)  # the queue's and the web pages' work settled
        if traced:
            os.kill(cipherd.pid, signal.SIGUSR1)  # start following the peak
            _wait_for_report(cipherd, STARTED)
        pids = family(cipherd.pid)
        for pid in pids:
            reset_peak(pid)
        before = total(pids, "VmRSS")
        delivered = sink.delivered
        send(cipherd.smtp_port, 1, LARGE, sender=SENDER, recipient=recipient, sessions=1)
        sink.wait_for(delivered + 1, timeout=600)
        # Each process's own peak: together they are at most this.
        result = Peak(before, total(pids, "VmHWM"), total(pids, "VmRSS"))
        report = ""
        if traced:
            os.kill(cipherd.pid, signal.SIGUSR1)  # stop and report
            report = _wait_for_report(cipherd)
        return result, report
    finally:
        cipherd.close()
        sink.close()


def many_messages(count: int, every: int, *, traced: bool = False) -> tuple[list[int], str]:
    """
    RSS of a fresh appliance after each round of C{every} small messages,
    half S/MIME and half tunnel; with C{traced}, also tracemalloc's report
    of what grew from the first round to the last.
    """
    sink = SmtpSink()
    try:
        cipherd = appliance(sink, traced=traced)
    except BaseException:
        sink.close()
        raise
    samples: list[int] = []
    try:
        for done in range(every, count + 1, every):
            halves = [(PATHS["S/MIME"], every // 2), (PATHS["webmail tunnel"], every - every // 2)]
            delivered = sink.delivered
            senders = [threading.Thread(target=send, args=(cipherd.smtp_port, n, SMALL),
                                        kwargs={"sender": SENDER, "recipient": recipient,
                                                "sessions": 10})
                       for recipient, n in halves]
            for thread in senders:
                thread.start()
            for thread in senders:
                thread.join()
            sink.wait_for(delivered + every, timeout=1800)
            samples.append(total(family(cipherd.pid), "VmRSS"))
            if traced and done in (every, count - count % every):
                os.kill(cipherd.pid, signal.SIGUSR2)  # a snapshot; the second compared
            print(f"  {done:6d} messages: RSS {samples[-1] / MB:7.1f} MB", flush=True)
        report = _wait_for_report(cipherd) if traced else ""
        return samples, report
    finally:
        cipherd.close()
        sink.close()


def _wait_for_report(cipherd: Cipherd, end: str = END, timeout: float = 300.0) -> str:
    """
    The traced appliance's report, once it ends with C{end}.
    """
    path = cipherd.directory / TRACE_REPORT
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().endswith(end):
        if time.monotonic() > deadline:
            return "(the traced appliance wrote no report)"
        time.sleep(0.1)
    return path.read_text().removesuffix(end)


# The traced appliance ---------------------------------------------------


class _PeakFollower:
    """
    In the traced appliance: SIGUSR1 starts tracemalloc and follows the
    peak of Python's allocations (a snapshot each time the traced size
    reaches a new high), and the next SIGUSR1 writes the allocations of the
    highest one.  SIGUSR2 starts tracemalloc and takes a snapshot; the
    second writes what grew since the first.  Tracing starts only then: with
    it from the start, the appliance took 90 s to start on 2 cores.
    """

    def __init__(self, report: Path) -> None:
        self._report = report
        self._following = threading.Event()
        self._snapshots: list[tracemalloc.Snapshot] = []
        signal.signal(signal.SIGUSR1, self._toggle)
        signal.signal(signal.SIGUSR2, self._snapshot)

    def _toggle(self, signum: int, frame: object) -> None:
        if self._following.is_set():
            self._following.clear()
        else:
            tracemalloc.start(FRAMES)
            self._following.set()
            self._report.write_text(STARTED)
            threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        highest, snapshot = 0, tracemalloc.take_snapshot()
        while self._following.is_set():
            current, _ = tracemalloc.get_traced_memory()
            if current > highest + MB:
                highest, snapshot = current, tracemalloc.take_snapshot()
            time.sleep(0.01)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        stats = snapshot.filter_traces(_OWN).statistics("traceback")
        self._write(f"Python's allocations: peak {peak / MB:.1f} MB; at the highest "
                    f"snapshot {highest / MB:.1f} MB, of which:", stats)

    def _snapshot(self, signum: int, frame: object) -> None:
        tracemalloc.start(FRAMES)
        self._snapshots.append(tracemalloc.take_snapshot().filter_traces(_OWN))
        if len(self._snapshots) == 2:
            first, last = self._snapshots
            tracemalloc.stop()
            growth = last.compare_to(first, "traceback")
            total = sum(stat.size_diff for stat in growth)
            self._write(f"Python's allocations grew by {total / MB:.1f} MB from the first "
                        f"round to the last; most:", growth)

    def _write(self, title: str, stats: list[tracemalloc.Statistic] |
               list[tracemalloc.StatisticDiff]) -> None:
        lines = [title]
        for stat in stats[:8]:
            size = getattr(stat, "size_diff", stat.size)
            if abs(size) < MB / 10:
                break
            lines.append(f"  {size / MB:+8.1f} MB in {stat.count} blocks, allocated at "
                         "(cipherd's frames and the last):")
            frames = list(stat.traceback)  # oldest first
            lines.extend(_where(frame) for frame in frames
                         if "/cipherd/" in frame.filename or frame is frames[-1])
        self._report.write_text("\n".join(lines) + "\n" + END)


_OWN = [tracemalloc.Filter(False, tracemalloc.__file__)]


def _where(frame: tracemalloc.Frame) -> str:
    name = frame.filename
    if "/cipherd/" in name:
        name = "cipherd/" + name.rpartition("/cipherd/")[2]
    return f"      {name}:{frame.lineno}  {linecache.getline(frame.filename, frame.lineno).strip()}"


def traced_twistd(arguments: list[str]) -> None:
    """
    Run twistd with C{arguments}, ready to trace and report as
    L{_PeakFollower} describes, to TRACE_REPORT in the working directory.
    """
    from twisted.scripts.twistd import run

    _PeakFollower(Path(TRACE_REPORT).resolve())
    sys.argv = ["twistd", *arguments]
    run()


# ------------------------------------------------------------------------


def main() -> None:
    if sys.argv[1:2] == ["--traced"]:
        traced_twistd(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--sample-every", type=int, default=1000)
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/memory.py runs Postfix's smtp-sink as nobody: run it as root")
    if options.messages < 2 * options.sample_every:
        sys.exit("--messages must be at least two rounds of --sample-every")

    peaks: dict[str, Peak] = {}
    for label, recipient in LARGE_PATHS.items():
        print(f"one 25 MB message, {label} ...", flush=True)
        peaks[label], _ = large_message(recipient)
    print(f"{options.messages} messages of 10 KB, RSS every {options.sample_every} ...",
          flush=True)
    samples, _ = many_messages(options.messages, options.sample_every)

    print(f"\n(a), (b): one {LARGE // MB} MB message through a running appliance "
          "(peak RSS, VmHWM, reset just before)")
    print(f"{'path':15} {'RSS before':>11} {'peak':>9} {'growth':>9} {'x message':>10} "
          f"{'RSS after':>10}")
    print("-" * 69)
    for label, peak in peaks.items():
        print(f"{label:15} {peak.before / MB:8.1f} MB {peak.peak / MB:6.1f} MB "
              f"{(peak.peak - peak.before) / MB:6.1f} MB {peak.ratio:9.2f}x "
              f"{peak.after / MB:7.1f} MB")
    for label, peak in peaks.items():
        print(f"{label} peak growth {peak.ratio:.2f}x the message (target < {PEAK_TARGET:g}x): "
              f"{'PASS' if peak.ratio < PEAK_TARGET else 'FAIL'}")

    base = samples[0]
    print(f"\n(c): RSS across {options.messages} messages of 10 KB (half S/MIME, half tunnel), "
          f"after each {options.sample_every}; the first round is the warm-up")
    print(f"{'messages':>8} {'RSS':>9} {'vs warm-up':>11}")
    for n, sample in enumerate(samples, start=1):
        change = f"{(sample - base) / base:+10.1%}" if n > 1 else "  (warm-up)"
        print(f"{n * options.sample_every:8d} {sample / MB:6.1f} MB {change}")
    spread = max(abs(sample - base) / base for sample in samples)
    flat = spread <= FLATNESS
    print(f"largest change after the warm-up {spread:.1%} (target within "
          f"{FLATNESS:.0%}): {'PASS' if flat else 'FAIL'}")

    for label, peak in peaks.items():
        if peak.ratio >= PEAK_TARGET:
            print(f"\nWhere the memory goes, {label} (again under tracemalloc):")
            untrimmed, _ = large_message(LARGE_PATHS[label], environment=MMAP_AT_ONCE)
            print(f"With glibc's mmap threshold fixed at 128 KiB (each large buffer mapped "
                  f"and unmapped at once, none kept in the heap): growth {untrimmed.ratio:.2f}x")
            traced, report = large_message(LARGE_PATHS[label], traced=True)
            print(f"Under tracemalloc: RSS growth {(traced.peak - traced.before) / MB:.1f} MB; "
                  "what tracemalloc does not see is OpenSSL's and cryptography's (Rust) "
                  "buffers and the allocator's")
            print(report)
    if not flat:
        print("\nWhere the memory goes, (c) (again under tracemalloc):")
        _, report = many_messages(options.messages, options.sample_every, traced=True)
        print(report)


if __name__ == "__main__":
    main()
