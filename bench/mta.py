"""
MTA throughput: Postfix's smtp-source sends to cipherd (pass-through, a
transport to Postfix's smtp-sink), and the same load goes through a real
Postfix relay into another smtp-sink, in the same run.

For 10 KB and 100 KB messages with 20 parallel sessions it prints, for
each MTA, the accepted rate (messages per second until smtp-source is done:
each accepted message is on disk, fsynced, before its 250) and the
delivered rate (messages per second until the sink has them all), and the
ratio cipherd / Postfix of the delivered rates; the target is >= 0.8 for
10 KB.  Needs root (Postfix's master) and the Debian packages the test
command installs (postfix, for smtp-source, smtp-sink and the relay).

    .venv/bin/python bench/mta.py                 # 2,000 messages per case
    .venv/bin/python bench/mta.py --messages 500  # quicker, noisier
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.postfix import Postfix  # noqa: E402

SESSIONS = 20
PASSWORD = "purple-otter-canvas-91"  # noqa: S105 - the throwaway appliance's admin password
SIZES = {"10 KB": 10 * 1024, "100 KB": 100 * 1024}
TARGET = 0.8  # issue 13 (0.5 before)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def insecure_tls() -> ssl.SSLContext:
    """
    TLS to the appliance's own self-signed certificates on 127.0.0.1.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class SmtpSink:
    """
    Postfix's smtp-sink with its running counter (-c) read as it goes.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.delivered = 0
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self._process = subprocess.Popen(
            ["smtp-sink", "-c", *user, f"127.0.0.1:{self.port}", "256"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_for_port(self.port)

    def _read(self) -> None:
        assert isinstance(self._process.stdout, io.BufferedReader)
        buffer = b""
        while chunk := self._process.stdout.read1(4096):
            buffer = (buffer + chunk)[-256:]
            counts = re.findall(rb"mesg=(\d+)", buffer)
            if counts:
                self.delivered = int(counts[-1])

    def wait_for(self, count: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while self.delivered < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sink got {self.delivered} of {count}")
            time.sleep(0.01)
        return time.monotonic()

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(10)


class Cipherd:
    """
    The appliance on its embedded default, in a directory of its own; with
    C{sink_port}, a transport sends mail for example.com to that sink.
    C{launcher} is the command that takes twistd's arguments (twistd
    itself by default); C{environment} is added to this process's.
    """

    def __init__(self, sink_port: int | None = None, *, launcher: Sequence[str] = (),
                 environment: Mapping[str, str] | None = None,
                 workers: int | None = None) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="cipherd-bench-"))
        self.admin_port, self.smtp_port = free_port(), free_port()
        self.portal_port = free_port()
        config = self.directory / "cipherd.toml"
        config.write_text(
            f'data_dir = "var"\n[admin]\nlisten = "tcp:{self.admin_port}:interface=127.0.0.1"\n'
            f'[smtp]\nlisten = "tcp:{self.smtp_port}:interface=127.0.0.1"\n'
            f'[portal]\nlisten = "tcp:{self.portal_port}:interface=127.0.0.1"\n'
            f'[crl]\nlisten = "tcp:{free_port()}:interface=127.0.0.1"\n'
            + ("" if workers is None else f"[processing]\nworkers = {workers}\n"))
        self.workers = 1 if workers is None else workers
        self._process = subprocess.Popen(
            [*(launcher or [str(Path(sys.executable).parent / "twistd")]), "--pidfile=", "-n",
             "--logfile", str(self.directory / "twistd.log"), "cipherd", "--config", str(config)],
            cwd=self.directory, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            env={**os.environ, **(environment or {})})
        self.pid = self._process.pid
        try:
            wait_for_port(self.admin_port)
            wait_for_port(self.smtp_port)
            self.api("POST", "/admin/password", {"password": PASSWORD},
                     password="admin")  # noqa: S106 - the appliance's first password
            if sink_port is not None:
                self.api("PATCH", "/mta", {"transports": [
                    {"domain": "example.com", "host": "[127.0.0.1]", "port": sink_port}]})
        except BaseException:
            self.close()
            raise

    @property
    def data_dir(self) -> Path:
        return self.directory / "var"

    def wait_for_workers(self, timeout: float = 60.0) -> None:
        """
        Until the appliance says its processing workers are ready (before
        that it processes in its main process).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = (self.directory / "twistd.log").read_text()
            if len(
                    re.findall(r"Processing worker \d+ is ready", log)) >= self.workers:
                return
            time.sleep(0.1)
        raise RuntimeError("the processing workers did not start")

    @property
    def portal_url(self) -> str:
        return f"https://127.0.0.1:{self.portal_port}"

    def api(self, method: str, path: str, body: object = None, *, raw: bytes | None = None,
            password: str = PASSWORD) -> Any:
        """
        An admin API call that must succeed: its JSON answer.  C{raw} is sent
        as it is (a certificate upload) instead of C{body} as JSON.
        """
        return json.loads(self.request(method, path, body, raw=raw, password=password))

    def request(self, method: str, path: str, body: object = None, *,
                raw: bytes | None = None, password: str = PASSWORD) -> bytes:
        """
        An admin API call that must succeed: the body of its answer.
        """
        request = urllib.request.Request(
            f"https://127.0.0.1:{self.admin_port}/api/v1{path}", method=method,
            data=raw if raw is not None else (
                None if body is None and method == "GET" else json.dumps(body).encode()),
            headers={
                "Authorization": "Basic " + base64.b64encode(
                    f"admin:{password}".encode()).decode(),
                "Content-Type": "application/octet-stream" if raw is not None
                else "application/json"})
        with urllib.request.urlopen(request, context=insecure_tls()) as response:  # noqa: S310
            return bytes(response.read())

    def _api(self, method: str, path: str, body: object, password: str = PASSWORD) -> Any:
        return self.api(method, path, body, password=password)

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(30)
        shutil.rmtree(self.directory, ignore_errors=True)


def send(port: int, count: int, size: int, *, sender: str = "bench@example.org",
         recipient: str = "sink@example.com", sessions: int = SESSIONS) -> float:
    """
    smtp-source: C{count} messages of C{size} bytes over C{sessions}
    sessions, a connection per message.

    @return: when it finished (every message answered 250).
    """
    subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(count), "-l", str(size),
                    "-f", sender, "-t", recipient, f"127.0.0.1:{port}"],
                   check=True, timeout=1800)
    return time.monotonic()


def send_to_pool(port: int, count: int, size: int, *, sender: str,
                 recipients: Sequence[str]) -> float:
    """
    C{count} messages of C{size} bytes spread evenly over C{recipients}
    (one recipient each), C{SESSIONS} at a time: an smtp-source with one
    session per recipient, SESSIONS of them running at once, so each
    recipient's messages come one after the other and the recipients'
    in parallel, as a stream of mail to many people does.

    @return: when the last one finished.
    """
    shares = queue.SimpleQueue[tuple[str, int]]()
    for n, recipient in enumerate(recipients):
        share = count // len(recipients) + (n < count % len(recipients))
        if share:
            shares.put((recipient, share))
    failures: list[BaseException] = []

    def worker() -> None:
        while True:
            try:
                recipient, share = shares.get_nowait()
            except queue.Empty:
                return
            try:
                send(port, share, size, sender=sender, recipient=recipient, sessions=1)
            except (OSError, subprocess.SubprocessError) as e:
                failures.append(e)

    workers = [threading.Thread(target=worker) for _ in range(SESSIONS)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    if failures:
        raise RuntimeError(f"smtp-source failed: {failures[0]}")
    return time.monotonic()


class Profile:
    """
    py-spy recording processes, one per appliance, until L{stop}.
    """

    RATE = 100

    def __init__(self, directory: Path, pids: dict[str, int]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.outputs = {name: directory / f"{name}.txt" for name in pids}
        self._started = time.monotonic()
        self._recorders = [subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
             "--format", "raw", "--threads", "--nolineno", "--nonblocking",
             "--rate", str(self.RATE), "--output", str(self.outputs[name])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name, pid in pids.items()]

    def stop(self) -> str:
        seconds = time.monotonic() - self._started
        for recorder in self._recorders:
            recorder.send_signal(signal.SIGINT)
        for recorder in self._recorders:
            recorder.wait(60)
        return "\n".join(summarise(name, path, seconds * self.RATE)
                         for name, path in self.outputs.items())


# Leaf frames of a thread that waits; without pausing the process py-spy
# cannot always tell them from running ones.
WAITING = ("Condition.wait ", "Event.wait ", "Condition._acquire_restore ", "Queue.get ")


def summarise(name: str, path: Path, possible: float, top: int = 15) -> str:
    """
    A py-spy raw file read: each thread's busy share of C{possible}
    samples, and the cipherd functions most busy samples were in.
    """
    threads: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        samples = int(count)
        if frames[-1].startswith(WAITING):
            continue  # woken, waiting for its lock or the GIL: not work
        total += samples
        # "thread (tid): name"; a pool's threads counted together.
        threads[re.sub(r"[-_]?\d+$", "", frames[0].partition(": ")[2])] += samples
        for frame in set(frames[1:]):
            if "cipherd/" in frame:
                functions[frame] += samples
    lines = [f"{name}: busy samples per thread (share of the run's {possible:.0f} possible)"]
    lines += [f"  {thread:40} {n / possible:6.1%}" for thread, n in threads.most_common()]
    lines.append(f"{name}: cipherd functions by share of its {total} busy samples "
                 "(callees included)")
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in functions.most_common(top)]
    return "\n".join(lines)


def measure(port: int, sink: SmtpSink, count: int, size: int, *,
            sender: str = "bench@example.org", recipient: str = "sink@example.com",
            recipients: Sequence[str] = ()) -> tuple[float, float]:
    """
    Send C{count} messages (to C{recipient}, or spread over C{recipients})
    and wait until the sink has counted as many more.

    @return: messages per second accepted (until the last 250) and
        delivered (until the sink had them all), both from the first sent.
    """
    before = sink.delivered
    started = time.monotonic()
    if recipients:
        done = send_to_pool(port, count, size, sender=sender, recipients=recipients)
    else:
        done = send(port, count, size, sender=sender, recipient=recipient)
    delivered = sink.wait_for(before + count, timeout=1800)
    return count / (done - started), count / (delivered - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/mta.py needs root: Postfix's master drops privileges itself")

    cipherd_sink, postfix_sink = SmtpSink(), SmtpSink()
    cipherd = Cipherd(cipherd_sink.port)
    postfix = Postfix(free_port(), postfix_sink.port, hostname="bench.postfix.test")
    postfix.start()
    results = {}
    try:
        cipherd.wait_for_workers()
        for label, size in SIZES.items():
            # A short warm-up of each, then the measured run.
            measure(cipherd.smtp_port, cipherd_sink, 50, size)
            measure(postfix.port, postfix_sink, 50, size)
            results[label] = {
                "cipherd": measure(cipherd.smtp_port, cipherd_sink, options.messages, size),
                "Postfix": measure(postfix.port, postfix_sink, options.messages, size),
            }
    finally:
        postfix.stop()
        cipherd.close()
        cipherd_sink.close()
        postfix_sink.close()

    print(f"\n{options.messages} messages per case, {SESSIONS} sessions, smtp-source → MTA → "
          "smtp-sink (cipherd: pass-through, fsync before 250)")
    print(f"{'message':8} {'MTA':8} {'accepted/s':>11} {'delivered/s':>12}")
    print("-" * 43)
    for label, by_mta in results.items():
        for mta, (accepted, delivered) in by_mta.items():
            print(f"{label:8} {mta:8} {accepted:11.1f} {delivered:12.1f}")
    for label, by_mta in results.items():
        ratio = by_mta["cipherd"][1] / by_mta["Postfix"][1]
        verdict = (f" (target >= {TARGET}): {'PASS' if ratio >= TARGET else 'FAIL'}"
                   if label == "10 KB" else "")
        print(f"{label} delivered, cipherd / Postfix: {ratio:.2f}{verdict}")


if __name__ == "__main__":
    main()
