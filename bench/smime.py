"""
Throughput and peak memory of cipherd's S/MIME layer (``cipherd.pki.smime``).

Run from the repository root::

    .venv/bin/python bench/smime.py               # about 35 s on a 2-core machine
    .venv/bin/python bench/smime.py --seconds 1   # quicker and noisier

What it measures
----------------

One RSA-2048 self-signed certificate and key are made at start; every
message is signed with it (SHA-256, detached ``multipart/signed``) and
encrypted to it (AES-256-CBC, PKCS#1 v1.5 key transport), the defaults of
``smime.sign_message`` / ``smime.encrypt_message``.  The messages are
realistic: RFC 5322 headers over a ``multipart/mixed`` body with a short
text part and a base64 attachment (random bytes, 76-character lines, CRLF
line ends as on the SMTP wire) that makes up the size.

1. Rates in messages per second, one thread, for 10 KB and 1 MB messages:

   * sign+encrypt    ``encrypt_message(sign_message(m), [cert])``
   * decrypt+verify  ``verify_message(decrypt_message(e, [(cert, key)]).message)``

   and the full cycle (all four) for 10 KB.  Each case runs for at least
   ``--seconds`` (3 by default) after one warm-up call, split into 3
   rounds; the rate shown is the median round, and the slowest and fastest
   rounds are shown beside it: on a shared machine a wide spread means the
   figures are noise-bound, so run again.

2. The 10 KB full cycle against this machine's RSA-2048 speed, measured in
   the same run with ``openssl speed -seconds 3 rsa2048`` ("sign/s").  A
   cycle needs two RSA private-key operations (the signature and the
   unwrapping of the content key) and two cheap public-key ones, so
   ``sign/s / 2`` is the ceiling set by the RSA maths alone; the issue's
   target is ``cycle rate / (sign/s / 2) >= 0.80``, i.e. at most 20% of the
   time goes to everything else (ASN.1, MIME, base64, AES, SHA-256, copies).
   The RSA-2048 sign rate of the ``cryptography`` package itself (which
   ships its own OpenSSL, the one cipherd really uses) is printed as well,
   to show whether the two libraries differ on this machine.

3. Peak memory for a 25 MB message through sign+encrypt and through
   decrypt+verify, each in a fresh subprocess.  The measure is resident set
   size: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after the operation
   minus the same figure just before it (after imports, after loading the
   key and certificate, and after reading the input message from a file the
   parent wrote).  RSS rather than tracemalloc because RSS is what an admin
   sees and what the OOM killer acts on: it includes buffers allocated by
   OpenSSL and Rust inside ``cryptography`` (invisible to tracemalloc) and
   allocator overhead, and tracemalloc would slow the run several-fold.
   ru_maxrss is a high-water mark, so two precautions keep the baseline at
   the resting size: the input is read from a file the parent wrote, not
   built in the child (building it leaves a transient peak), and both
   children are started first thing, while the parent is still small,
   because Linux carries a parent's peak RSS over into a child's ru_maxrss
   across fork and exec (a note is printed if the baseline still looks
   inflated).  The output message is kept alive until after the
   measurement, so it is counted.  RSS also counts memory that glibc's
   malloc keeps after Python freed it, so it can exceed what tracemalloc
   reports.  The
   result is printed as a multiple of the 25 MB message size (the
   plaintext message; the decrypt+verify input is the larger encrypted
   message, whose size is shown too); the target is under 4x.

PASS/FAIL lines are informational: the script always exits 0 when it
completes (it is a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Measure this checkout's cipherd, whatever else is installed.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asn1crypto  # noqa: E402
import cryptography  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.backends.openssl import backend as openssl_backend  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from cipherd.pki import smime  # noqa: E402

KB = 1024
MB = 1024 * 1024
SIGNING_TIME = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
TARGET_RATIO = 0.80
TARGET_MEMORY = 4.0
MEMORY_SIZE = 25 * MB


# Fixtures ---------------------------------------------------------------------


def make_identity() -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "Bench User"),
        x509.NameAttribute(NameOID.EMAIL_ADDRESS, "bench@example.com"),
    ])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name("bench@example.com")]),
                       critical=False)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=True,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


_TEXT = (
    "Hello Bob,\n\nplease find attached the quarterly figures we discussed on "
    "Tuesday. The summary is on the first page; the details by region follow, "
    "with the assumptions behind each forecast in the appendix. Let me know if "
    "anything is unclear or if you need the spreadsheet as well.\n\n"
    "Best regards,\nAlice\n\n-- \nAlice Example, Finance\nExample Corp, 1 Main "
    "Street, Springfield\n"
)


def build_message(size: int) -> bytes:
    """
    A CRLF message of about C{size} bytes: headers, a text part and a
    base64 attachment of random bytes filling the rest.
    """
    text = "\r\n".join(
        line for para in _TEXT.split("\n") for line in (textwrap.wrap(para, 72) or [""])
    ).encode("ascii")
    boundary = b"----=_Part_0_" + os.urandom(8).hex().encode()
    head = (
        b"From: Alice Example <alice@example.com>\r\n"
        b"To: Bob Example <bob@example.org>\r\n"
        b"Subject: Quarterly figures\r\n"
        b"Date: Mon, 01 Jun 2026 12:00:00 +0000\r\n"
        b"Message-ID: <bench." + os.urandom(8).hex().encode() + b"@example.com>\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n'
        b"\r\n"
        b"This is a multi-part message in MIME format.\r\n"
        b"--" + boundary + b"\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n"
        b"Content-Transfer-Encoding: 7bit\r\n\r\n" + text + b"\r\n"
        b"--" + boundary + b"\r\n"
        b'Content-Type: application/pdf; name="figures.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="figures.pdf"\r\n\r\n'
    )
    tail = b"\r\n--" + boundary + b"--\r\n"
    room = max(size - len(head) - len(tail), 78)
    # 57 raw bytes make one 76-character line plus CRLF: 78 bytes.
    raw = os.urandom(room * 57 // 78)
    encoded = base64_lines(raw)
    return head + encoded + tail


def base64_lines(raw: bytes) -> bytes:
    import base64

    return b"".join(
        base64.b64encode(raw[i : i + 57]) + b"\r\n" for i in range(0, len(raw), 57)
    ).removesuffix(b"\r\n")


# The operations ----------------------------------------------------------------


def sign_encrypt(message: bytes, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> bytes:
    signed = smime.sign_message(message, cert, key, signing_time=SIGNING_TIME)
    return smime.encrypt_message(signed, [cert])


def decrypt_verify(message: bytes, cert: x509.Certificate,
                   key: rsa.RSAPrivateKey) -> smime.VerifiedMessage:
    # Only the decrypted message goes on, as in a mail pipeline.
    decrypted = smime.decrypt_message(message, [(cert, key)]).message
    verified = smime.verify_message(decrypted)
    if not verified.result.all_valid:
        raise RuntimeError("the signature did not verify")
    return verified


def check_round_trip(message: bytes, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> bytes:
    encrypted = sign_encrypt(message, cert, key)
    verified = decrypt_verify(encrypted, cert, key)
    if verified.entity != smime.Parts.split(message).entity():
        raise RuntimeError("the round trip changed the message")
    return encrypted


# Timing -------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """
    Calls per second: the median of C{ROUNDS} timed rounds, and the slowest
    and fastest round (a wide spread means something else used the CPU).
    """

    median: float
    low: float
    high: float
    calls: int


ROUNDS = 3


def measure(fn: Callable[[], object], seconds: float, min_calls: int = 3) -> Rate:
    """
    Time C{fn} for at least C{seconds} in all, in L{ROUNDS} rounds, after
    one warm-up call.
    """
    fn()
    rates, total = [], 0
    for _ in range(ROUNDS):
        calls = 0
        start = time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / ROUNDS and calls >= min_calls:
                break
        rates.append(calls / elapsed)
        total += calls
    return Rate(statistics.median(rates), min(rates), max(rates), total)


def openssl_rsa2048_sign_rate() -> tuple[float, str]:
    """
    RSA-2048 private-key operations per second from C{openssl speed}.
    """
    out = subprocess.run(
        ["openssl", "speed", "-seconds", "3", "rsa2048"],
        capture_output=True, text=True, check=True,
    ).stdout
    version = subprocess.run(["openssl", "version"], capture_output=True, text=True,
                             check=True).stdout.split()
    header: list[str] | None = None
    for line in out.splitlines():
        tokens = line.split()
        if "sign/s" in tokens:
            header = tokens
        elif header and re.match(r"rsa\s+2048\s+bits", line.strip()):
            # The figures line up with the header from the right.
            values = tokens[-len(header):]
            return float(values[header.index("sign/s")]), " ".join(version[:2])
    raise RuntimeError(f"could not find the RSA-2048 sign/s figure in:\n{out}")


def cryptography_rsa2048_sign_rate(key: rsa.RSAPrivateKey, seconds: float) -> Rate:
    data = b"x" * 200
    return measure(lambda: key.sign(data, padding.PKCS1v15(), hashes.SHA256()), seconds)


def cryptography_rsa_cycle_rate(key: rsa.RSAPrivateKey, seconds: float) -> Rate:
    """
    The four RSA operations of one full cycle and nothing else: a sign, a
    PKCS#1 v1.5 encryption, its decryption and a verification.  No S/MIME
    code can run faster than this with cryptography's RSA.
    """
    public, digest = key.public_key(), b"d" * 32

    def cycle() -> None:
        signature = key.sign(digest, padding.PKCS1v15(), hashes.SHA256())
        key.decrypt(public.encrypt(digest, padding.PKCS1v15()), padding.PKCS1v15())
        public.verify(signature, digest, padding.PKCS1v15(), hashes.SHA256())

    return measure(cycle, seconds)


# Memory (in a fresh process) -------------------------------------------------------


def _maxrss() -> int:
    """
    Peak resident set size so far, in bytes (Linux reports KiB).
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _current_rss() -> int | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


def memory_child(operation: str) -> None:
    """
    Wait for a directory name on stdin, run one operation on the message
    there and print, as JSON, the input size and the peak RSS before and
    after it.
    """
    line = sys.stdin.readline().strip()
    if not line:
        return
    directory = Path(line)
    cert = x509.load_pem_x509_certificate((directory / "cert.pem").read_bytes())
    key = serialization.load_pem_private_key((directory / "key.pem").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    message = (directory / f"{operation}.eml").read_bytes()
    gc.collect()
    baseline = _maxrss()
    resting = _current_rss()
    start = time.perf_counter()
    if operation == "sign-encrypt":
        result: object = sign_encrypt(message, cert, key)
    else:
        result = decrypt_verify(message, cert, key)
    elapsed = time.perf_counter() - start
    peak = _maxrss()
    print(json.dumps({"input": len(message), "baseline": baseline, "resting": resting,
                      "peak": peak, "seconds": elapsed, "kept": result is not None}))


MEMORY_OPERATIONS = ("sign-encrypt", "decrypt-verify")


def start_memory_children() -> dict[str, subprocess.Popen[str]]:
    """
    Start the measuring processes now, while this process is small: a
    child inherits its parent's peak RSS (Linux keeps ru_maxrss across
    fork and exec), which would otherwise hide the child's own peak.
    """
    return {
        operation: subprocess.Popen(
            [sys.executable, __file__, "--memory-child", operation],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for operation in MEMORY_OPERATIONS
    }


def measure_memory(children: dict[str, subprocess.Popen[str]], cert: x509.Certificate,
                   key: rsa.RSAPrivateKey, size: int
                   ) -> tuple[int, dict[str, dict[str, float]]]:
    message = build_message(size)
    encrypted = check_round_trip(message, cert, key)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="cipherd-bench-") as tmp:
        directory = Path(tmp)
        (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / "key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        (directory / "sign-encrypt.eml").write_bytes(message)
        (directory / "decrypt-verify.eml").write_bytes(encrypted)
        del encrypted
        for operation in MEMORY_OPERATIONS:  # one at a time
            out, _ = children[operation].communicate(tmp + "\n")
            if children[operation].returncode:
                raise RuntimeError(f"the {operation} memory child failed")
            results[operation] = json.loads(out.strip().splitlines()[-1])
    return len(message), results


# Report ---------------------------------------------------------------------------


def human(size: float) -> str:
    if size >= MB:
        return f"{size / MB:.0f} MB" if size % MB == 0 else f"{size / MB:.1f} MB"
    return f"{size / KB:.0f} KB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="minimum time per throughput case (default 3)")
    parser.add_argument("--memory-child", choices=MEMORY_OPERATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return

    children = start_memory_children()
    cert, key = make_identity()
    print("cipherd S/MIME benchmark: RSA-2048 signer and recipient, SHA-256, detached "
          "multipart/signed,")
    print("AES-256-CBC with PKCS#1 v1.5 key transport; CRLF multipart/mixed messages "
          "with a base64 attachment")
    print(f"Python {platform.python_version()}, cryptography {cryptography.__version__} "
          f"({openssl_backend.openssl_version_text()}), asn1crypto {asn1crypto.__version__}, "
          f"{os.cpu_count()} CPUs")
    print()

    try:
        openssl: tuple[float, str] | None = openssl_rsa2048_sign_rate()
    except (OSError, subprocess.CalledProcessError, RuntimeError) as e:
        openssl = None
        print(f"(openssl speed did not run: {e})")
    lib_rate = cryptography_rsa2048_sign_rate(key, args.seconds)
    rsa_cycle = cryptography_rsa_cycle_rate(key, args.seconds)

    rows: list[tuple[str, int, Rate]] = []
    for size in (10 * KB, 1 * MB):
        message = build_message(size)
        encrypted = check_round_trip(message, cert, key)
        cases: list[tuple[str, Callable[[], object]]] = [
            ("sign+encrypt", lambda m=message: sign_encrypt(m, cert, key)),
            ("decrypt+verify", lambda e=encrypted: decrypt_verify(e, cert, key)),
        ]
        if size == 10 * KB:
            cases.append(("full cycle", lambda m=message: decrypt_verify(
                sign_encrypt(m, cert, key), cert, key)))
        rows.extend((name, len(message), measure(fn, args.seconds)) for name, fn in cases)

    print(f"{'case':<16} {'message':>9} {'msgs/s':>9} {'ms/msg':>8} {'MB/s':>7} "
          f"{'rounds (slowest-fastest)':>25} {'calls':>6}")
    print("-" * 86)
    for name, size, rate in rows:
        print(f"{name:<16} {human(size):>9} {rate.median:>9.1f} {1000 / rate.median:>8.2f} "
              f"{rate.median * size / MB:>7.1f} {f'{rate.low:.1f}-{rate.high:.1f}':>25} "
              f"{rate.calls:>6}")
    print("(msgs/s is the median of 3 rounds; the full cycle is sign+encrypt+decrypt+verify)")
    print()

    cycle = next(rate for name, _, rate in rows if name == "full cycle")
    print(f"RSA-2048 PKCS#1 v1.5 signatures in cryptography {cryptography.__version__} itself: "
          f"{lib_rate.median:.1f}/s ({lib_rate.low:.1f}-{lib_rate.high:.1f})")
    if openssl is not None:
        sign_rate, openssl_version = openssl
        ceiling = sign_rate / 2
        ratio = cycle.median / ceiling
        verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
        print(f"RSA-2048 private-key ops, `openssl speed -seconds 3 rsa2048` "
              f"({openssl_version}): {sign_rate:.1f} sign/s")
        print(f"Ceiling at 2 private-key ops per message: {ceiling:.1f} msgs/s "
              f"({2000 / sign_rate:.2f} ms/msg)")
        print(f"10 KB full cycle: {cycle.median:.1f} msgs/s = {ratio:.2f} of the ceiling "
              f"(target >= {TARGET_RATIO:.2f}): {verdict}")
        print(f"For scale: the cycle's four RSA operations alone in cryptography run at "
              f"{rsa_cycle.median:.1f}/s = {rsa_cycle.median / ceiling:.2f} of the ceiling; "
              f"cipherd's cycle is {cycle.median / rsa_cycle.median:.2f} of that")
    print()

    size, memory = measure_memory(children, cert, key, MEMORY_SIZE)
    print(f"Peak memory for a {human(size)} message (fresh process; ru_maxrss after "
          "minus before the operation)")
    print(f"{'case':<16} {'input':>9} {'peak over baseline':>19} {'x message':>10} "
          f"{'seconds':>8}  target < {TARGET_MEMORY:.0f}x")
    print("-" * 80)
    for operation, label in (("sign-encrypt", "sign+encrypt"),
                             ("decrypt-verify", "decrypt+verify")):
        result = memory[operation]
        extra = result["peak"] - result["baseline"]
        multiple = extra / size
        verdict = "PASS" if multiple < TARGET_MEMORY else "FAIL"
        print(f"{label:<16} {human(result['input']):>9} {human(extra):>19} "
              f"{multiple:>9.2f}x {result['seconds']:>8.2f}  {verdict}")
        resting = result["resting"]
        if resting and result["baseline"] > resting * 1.05 + 4 * MB:
            print(f"  (unreliable: the baseline peak, {human(result['baseline'])}, is above "
                  f"the resting RSS, {human(resting)})")


if __name__ == "__main__":
    main()
