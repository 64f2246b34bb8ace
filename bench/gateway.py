"""
Gateway throughput: Postfix's smtp-source sends 10 KB messages to a running
cipherd, which passes them through (encryption not required), S/MIME-signs
and encrypts them (mandatory, the recipient has a certificate, the sender a
signing key), PGP-signs and encrypts them as PGP/MIME (mandatory, the
recipient has a trusted PGP key and no certificate, the sender a PGP key
with its secret; Curve25519), makes them AES-256 encrypted PDFs (mandatory,
no certificate or key, PDF enabled, a static password for the recipient's
domain: one mail per message, no password notice), or wraps them in a
signed and encrypted webmail tunnel message (mandatory, no certificate or
key, webmail enabled); Postfix's smtp-sink counts what arrives.  All five in
the same run, on the same appliance.  Then one message with a 10 MB
attachment goes the PDF path, and the peak RSS growth of the appliance's
processes (VmHWM, reset just before) is printed as a multiple of the
attachment's size.

Last, data loss prevention: 10 KB of text with a 100 KB PDF attachment
(a report with tables of figures, no card number), sent as it is by a
sender without DLP and by one with DLP on and every built-in pattern, so
that each is searched (the text, the PDF's text) and delivered: the DLP
rate is printed as a share of the same message's pass-through.

It prints, per path, the accepted rate (until smtp-source is done: each
message on disk before its 250) and the delivered rate (until the sink has
them all), in messages per second, and each encrypting path's delivered
rate as a share of pass-through.  Needs the Debian postfix package (for
smtp-source and smtp-sink), which the test command installs.

    .venv/bin/python bench/gateway.py                 # 1,000 messages per path
    .venv/bin/python bench/gateway.py --messages 300  # quicker, noisier
    .venv/bin/python bench/gateway.py --certificates 100000

With C{--certificates N} the store first gets N more certificates (other
addresses, issued by one more root CA; they share one P-256 key and are
written straight into the appliance's database through the certificate
store's bulk import, which takes about a minute for 100,000), and the run
also prints how long a look-up by address takes: C{GET
/api/v1/certificates?email=...} on the running appliance, and
C{encryption_certificates} of a certificate store of its own on the same
database, the first time for an address (database, parse, trust check) and
again (kept in memory).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import smtplib
import ssl
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pysequoia
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.task import Clock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mta import (  # noqa: E402
    PASSWORD,
    SESSIONS,
    Cipherd,
    Profile,
    SmtpSink,
    insecure_tls,
    measure,
)

from cipherd.pki.certs import create_tunnel_certificate, thumbprint  # noqa: E402
from cipherd.pki.certstore import CertificateStore  # noqa: E402
from cipherd.store import Store, create_engine_for_url  # noqa: E402
from cipherd.testing import SynchronousRunner, result_of  # noqa: E402
from cipherd.testing.certificates import ec_ca, many_certificates, root_ca  # noqa: E402
from tests.processes import children  # noqa: E402

SIZE = 10 * 1024
SENDER = "bench@example.org"
PATHS = {"pass-through": "sink@plain.example", "S/MIME": "sink@smime.example",
         "PGP": "sink@pgp.example", "PDF": "sink@pdf.example",
         "webmail tunnel": "sink@webmail.example"}
ATTACHMENT = 10 * 1024 * 1024


def _name(common_name: str, email: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if email:
        attributes.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    return x509.Name(attributes)


def make_pki() -> tuple[bytes, bytes, bytes]:
    """
    A CA (PEM), the sender's signing identity (PKCS#12, password "pw") and
    the S/MIME recipient's certificate (PEM).
    """
    now = datetime.now(UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = root_ca("Bench CA", ca_key, now - timedelta(days=1), now + timedelta(days=30))

    def user(email: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = (x509.CertificateBuilder().subject_name(_name(email.split("@")[0], email))
                .issuer_name(ca.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(days=1))
                .not_valid_after(now + timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]),
                               critical=False)
                .add_extension(x509.KeyUsage(True, True, True, False, False, False, False,
                                             False, False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        return cert, key

    sender, sender_key = user(SENDER)
    recipient, _ = user(PATHS["S/MIME"])
    return (ca.public_bytes(serialization.Encoding.PEM),
            pkcs12.serialize_key_and_certificates(
                b"sender", sender_key, sender, [ca],
                serialization.BestAvailableEncryption(b"pw")),
            recipient.public_bytes(serialization.Encoding.PEM))


def upload(cipherd: Cipherd, path: str, data: bytes) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(
        f"https://127.0.0.1:{cipherd.admin_port}/api/v1{path}", method="POST", data=data,
        headers={"Authorization": "Basic " + base64.b64encode(
            f"admin:{PASSWORD}".encode()).decode(),
                 "Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, context=context):  # noqa: S310 - https
        pass


def configure(cipherd: Cipherd, sink_port: int) -> None:
    """
    The guide's gateway set-up, through the API.
    """
    cipherd._api("PATCH", "/mta", {"transports": [
        {"domain": domain, "host": "[127.0.0.1]", "port": sink_port}
        for domain in ("plain.example", "smime.example", "pgp.example", "pdf.example",
                       "webmail.example", "webmail.local", "dlp.example")]})
    ca, sender_p12, recipient = make_pki()
    upload(cipherd, "/certificates?store=roots", ca)
    upload(cipherd, "/certificates?password=pw", sender_p12)
    upload(cipherd, "/certificates", recipient)
    now = datetime.now(UTC)
    for email, with_key in (("webmail-sender@example.org", True),
                            ("webmail@webmail.local", False)):
        cert, key = create_tunnel_certificate(email, "Webmail tunnel certificate", now)
        if with_key:
            upload(cipherd, "/certificates?password=pw&skip_self_signed=false",
                   pkcs12.serialize_key_and_certificates(
                       b"tunnel", key, cert, None, serialization.BestAvailableEncryption(b"pw")))
        else:
            upload(cipherd, "/certificates?skip_self_signed=false",
                   cert.public_bytes(serialization.Encoding.PEM))
        cipherd._api("POST", "/ctl", {"thumbprint": thumbprint(cert), "status": "whitelisted"})
    cipherd._api("PATCH", "/settings/global", {
        "webmail_recipient": "webmail@webmail.local",
        "webmail_sender": "webmail-sender@example.org"})
    cipherd._api("PATCH", "/settings/domains/smime.example", {"encrypt_mode": "mandatory"})
    # PGP: the sender's key with its secret (to sign) and the recipient's
    # certificate, Curve25519 as cipherd and Thunderbird make them.
    sender_key = pysequoia.Tsk.generate(f"Bench <{SENDER}>")
    recipient_key = pysequoia.Tsk.generate(f"Sink <{PATHS['PGP']}>")
    upload(cipherd, "/pgp/keys", bytes(sender_key))
    upload(cipherd, "/pgp/keys", bytes(recipient_key.extract_certificate()))
    cipherd._api("PATCH", "/settings/domains/pgp.example", {"encrypt_mode": "mandatory"})
    # PDF: enabled for the sender and pdf.example only (webmail.example's
    # mail must go on to the tunnel), a static password for the domain.
    cipherd._api("PATCH", "/settings/domains/pdf.example", {
        "encrypt_mode": "mandatory", "pdf_enabled": True, "pdf_password_mode": "static",
        "pdf_password": "bench-pdf-password"})
    cipherd._api("PATCH", "/settings/domains/webmail.example", {
        "encrypt_mode": "mandatory", "webmail_enabled": True})
    cipherd._api("PATCH", "/settings/users/bench@example.org", {"webmail_enabled": True,
                                                                "pdf_enabled": True})


DLP_SENDER = "dlp@example.org"


def dlp_message(*, dense: bool = False) -> bytes:
    """
    10 KB of text and a PDF of about 100 KB: two pages of a report (a
    table of figures, about 6,000 characters of text) with a chart image,
    as a report by mail looks; nothing in it any built-in pattern matches.

    @param dense: instead, a PDF that is 100 KB of text alone (about
        18 pages, 180,000 characters of figures): the worst case for the
        search, which reads every character.
    """
    from email.message import EmailMessage
    from email.policy import SMTP

    from fpdf import FPDF
    from PIL import Image

    rng = random.Random(20261207)  # noqa: S311 -- figures in a report, not secrets
    pages = 1
    while True:
        document = FPDF()
        document.set_font("helvetica", size=9)
        for _ in range(2 if not dense else pages):
            document.add_page()
            for _ in range(30 if not dense else 60):
                document.cell(0, 4, "  ".join(f"{rng.randint(0, 999_999):>7}"
                                              for _ in range(10)),
                              new_x="LMARGIN", new_y="NEXT")
        if not dense:
            # The chart: noise compresses to nothing smaller than itself.
            chart = Image.frombytes("RGB", (180, 180), rng.randbytes(180 * 180 * 3))
            document.image(chart, x=10, y=140, w=120)
        data = bytes(document.output())
        if not dense or len(data) >= 100 * 1024:
            break
        pages += 1
    mail = EmailMessage(policy=SMTP)
    mail["From"], mail["To"], mail["Subject"] = SENDER, "sink@dlp.example", "Monthly report"
    mail.set_content(("The figures for the month are attached. " * 26 + "\n") * 10)
    mail.add_attachment(data, maintype="application", subtype="pdf", filename="report.pdf")
    return mail.as_bytes().replace(b"\r\n", b"\n")  # smtp-source -F adds the CRs


def pdf_size(message: bytes) -> int:
    from email import message_from_bytes

    part = next(p for p in message_from_bytes(message).walk()
                if p.get_content_type() == "application/pdf")
    return len(part.get_payload(decode=True))


def measure_file(port: int, sink: SmtpSink, count: int, path: Path, *, sender: str,
                 recipient: str) -> tuple[float, float]:
    """
    L{measure}, sending the message in C{path} (smtp-source -F).
    """
    before = sink.delivered
    started = time.monotonic()
    subprocess.run(["smtp-source", "-s", str(SESSIONS), "-m", str(count), "-F", str(path),
                    "-f", sender, "-t", recipient, f"127.0.0.1:{port}"],
                   check=True, timeout=1800)
    done = time.monotonic()
    delivered = sink.wait_for(before + count, timeout=1800)
    return count / (done - started), count / (delivered - started)


def dlp_rates(cipherd: Cipherd, sink: SmtpSink, count: int) -> dict[str, tuple[float, float]]:
    """
    The same report without and with DLP (every built-in pattern).
    """
    from cipherd.mpa.dlp import BUILTIN

    cipherd._api("POST", "/dlp/patterns/builtin", {"names": list(BUILTIN)})
    cipherd._api("PATCH", f"/settings/users/{DLP_SENDER}", {"dlp_enabled": True})
    message = Path(cipherd.directory) / "report.eml"
    message.write_bytes(dlp_message())
    rates = {}
    for label, sender in (("110 KB as is", SENDER), ("110 KB + DLP", DLP_SENDER)):
        measure_file(cipherd.smtp_port, sink, 20, message, sender=sender,
                     recipient="sink@dlp.example")  # warm-up
        rates[label] = measure_file(cipherd.smtp_port, sink, count, message, sender=sender,
                                    recipient="sink@dlp.example")
    return rates


def pdf_attachment_peak(cipherd: Cipherd, sink: SmtpSink) -> str:
    """
    One message with a 10 MB attachment through the PDF path: the peak RSS
    growth of the appliance's processes (VmHWM, reset just before), as a
    multiple of the attachment's size, and how long it took.
    """
    cipherd._api("PATCH", "/mta", {"before_filter_message_size_limit": 30 * 1024 * 1024,
                                   "after_filter_message_size_limit": 120 * 1024 * 1024})
    data = os.urandom(ATTACHMENT)
    message = (f"From: {SENDER}\r\nTo: {PATHS['PDF']}\r\nSubject: A large attachment\r\n"
               "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
               "--b\r\nContent-Type: text/plain\r\n\r\nThe file is attached.\r\n--b\r\n"
               "Content-Type: application/octet-stream\r\n"
               "Content-Disposition: attachment; filename=large.bin\r\n"
               "Content-Transfer-Encoding: base64\r\n\r\n").encode() + base64.encodebytes(
                   data).replace(b"\n", b"\r\n") + b"--b--\r\n"
    time.sleep(2)
    pids = [cipherd.pid, *children(cipherd.pid)]
    for pid in pids:
        # proc(5): writing 5 to clear_refs resets the peak RSS to the current RSS.
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = sum(_status(pid, "VmRSS") for pid in pids)
    delivered = sink.delivered
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", cipherd.smtp_port) as client:
        client.sendmail(SENDER, [PATHS["PDF"]], message)
    sink.wait_for(delivered + 1, timeout=600)
    took = time.monotonic() - started
    peak = sum(_status(pid, "VmHWM") for pid in pids)
    return (f"PDF path, one message with a 10 MB attachment ({len(message) / 1e6:.1f} MB as "
            f"sent): delivered in {took:.2f} s; peak RSS growth {(peak - before) / 1e6:.1f} MB "
            f"= {(peak - before) / ATTACHMENT:.2f}x the attachment")


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


CROWD = "crowd.example"
# Certificates written per transaction: the appliance's own writes wait
# for the lock at most this long (a few seconds), never for all of them.
BULK = 10_000


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def add_certificates(cipherd: Cipherd, count: int) -> CertificateStore:
    """
    C{count} certificates for C{user<n>@crowd.example} from one more root
    CA, in the appliance's database.

    @return: a certificate store of this process on that database.
    """
    started = time.monotonic()
    now = datetime.now(UTC)
    ca, ca_key = ec_ca("Bench Crowd CA", now - timedelta(days=1), now + timedelta(days=30))
    upload(cipherd, "/certificates?store=roots", ca.public_bytes(serialization.Encoding.PEM))
    clock = Clock()
    clock.advance(time.time())
    engine = create_engine_for_url(f"sqlite:///{cipherd.data_dir / 'cipherd.db'}")
    # No private keys are added or read: a key-encryption key of its own.
    store = CertificateStore(Store(engine, SynchronousRunner()), clock, os.urandom(32),
                             SynchronousRunner())
    for start in range(0, count, BULK):
        made = many_certificates(ca, ca_key, min(BULK, count - start), now - timedelta(days=1),
                                 now + timedelta(days=30), domain=CROWD, first=start)
        result_of(store.add_certificates((cert, None) for cert in made))
        _progress(f"{start + len(made):,} certificates added "
                  f"({time.monotonic() - started:.0f} s)")
    return store


class KeptConnection:
    """
    Admin API calls over one kept-alive HTTPS connection: what is timed is
    the request, not a TLS handshake per call.
    """

    def __init__(self, cipherd: Cipherd) -> None:
        self._connection = http.client.HTTPSConnection("127.0.0.1", cipherd.admin_port,
                                                       context=insecure_tls())
        self._authorization = "Basic " + base64.b64encode(
            f"admin:{PASSWORD}".encode()).decode()

    def get(self, path: str) -> tuple[float, dict]:
        started = time.perf_counter()
        self._connection.request("GET", f"/api/v1{path}",
                                 headers={"Authorization": self._authorization})
        response = self._connection.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        assert response.status == 200, body
        return elapsed, json.loads(body)

    def close(self) -> None:
        self._connection.close()


def look_ups(cipherd: Cipherd, store: CertificateStore, count: int) -> list[str]:
    """
    How long look-ups by address take with C{count} extra certificates.
    """
    chosen = random.sample(range(count), min(count, 50))
    addresses = [f"user{n}@{CROWD}" for n in chosen]
    api = KeptConnection(cipherd)
    try:
        api.get("/ctl")  # the password check, made once and then remembered
        baseline = [api.get("/ctl")[0] for _ in addresses]
        by_address = []
        for address in addresses:
            elapsed, answer = api.get(f"/certificates?email={address}")
            assert [c["emails"] for c in answer["certificates"]] == [[address]], answer
            assert answer["certificates"][0]["valid"], answer
            by_address.append(elapsed)
        page, listed = api.get("/certificates")
        search, searched = api.get("/certificates?q=user4242")
    finally:
        api.close()
    first, again = [], []
    for address in addresses:
        for times in (first, again):
            started = time.perf_counter()
            found = result_of(store.encryption_certificates(address))
            times.append(time.perf_counter() - started)
            assert len(found) == 1

    def ms(times: list[float]) -> str:
        return (f"median {statistics.median(times) * 1000:7.2f} ms, "
                f"max {max(times) * 1000:7.2f} ms")

    return [
        f"look-ups by address among {listed['total']:,} certificates ({len(addresses)} "
        "addresses):",
        f"  GET /api/v1/ctl (a request, no look-up)  {ms(baseline)}",
        f"  GET /api/v1/certificates?email=...       {ms(by_address)}",
        f"  encryption_certificates, first time      {ms(first)}",
        f"  encryption_certificates, again (kept)    {ms(again)}",
        f"  GET /api/v1/certificates (first page)    {page * 1000:7.2f} ms",
        f"  GET /api/v1/certificates?q=user4242      {search * 1000:7.2f} ms "
        f"({searched['total']} found)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--certificates", type=int, default=0,
                        help="add this many certificates (other addresses) first")
    parser.add_argument("--workers", type=int, default=None,
                        help="processing worker processes (default: the appliance's, 1; "
                             "0: processing in the main process)")
    parser.add_argument("--profile", type=Path,
                        help="py-spy the appliance and its workers during each measured path "
                             "into DIR (pip install py-spy)")
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/gateway.py runs Postfix's smtp-sink as nobody: run it as root")
    sink = SmtpSink()
    cipherd = Cipherd(sink.port, workers=options.workers)
    results = {}
    timings: list[str] = []
    profiles: list[str] = []
    try:
        configure(cipherd, sink.port)
        cipherd.wait_for_workers()
        if options.certificates:
            store = add_certificates(cipherd, options.certificates)
        for recipient in PATHS.values():  # warm-up
            measure(cipherd.smtp_port, sink, 50, SIZE, sender=SENDER, recipient=recipient)
        for label, recipient in PATHS.items():
            profile = options.profile and Profile(options.profile / label.replace(" ", "-"), {
                "cipherd" if n == 0 else f"worker {n}": pid
                for n, pid in enumerate([cipherd.pid, *children(cipherd.pid)])})
            results[label] = measure(cipherd.smtp_port, sink, options.messages, SIZE,
                                     sender=SENDER, recipient=recipient)
            if profile:
                profiles.append(f"{label}:\n{profile.stop()}")
        if options.certificates:
            timings = look_ups(cipherd, store, options.certificates)
        timings.append(pdf_attachment_peak(cipherd, sink))
        dlp = dlp_rates(cipherd, sink, max(100, options.messages // 5))
    finally:
        cipherd.close()
        sink.close()
    extra = (f", {options.certificates:,} more certificates in the store"
             if options.certificates else "")
    print(f"\n{options.messages} messages of 10 KB per path, smtp-source → cipherd → smtp-sink "
          f"(S/MIME RSA-2048, SHA-256, AES-256-CBC; PGP Curve25519; PDF AES-256 R6){extra}; "
          "processing in "
          + (f"{cipherd.workers} worker process(es)" if cipherd.workers else "the main process")
          + f"; {os.cpu_count()} cores")
    print(f"{'path':15} {'accepted/s':>11} {'delivered/s':>12} {'vs pass-through':>16}")
    print("-" * 57)
    base = results["pass-through"][1]
    for label, (accepted, delivered) in results.items():
        print(f"{label:15} {accepted:11.1f} {delivered:12.1f} {delivered / base:16.2f}")
    plain_report = dlp["110 KB as is"][1]
    print(f"\nDLP: {max(100, options.messages // 5)} messages of 10 KB text + a "
          f"{pdf_size(dlp_message()) // 1024} KB PDF attachment (2 pages of figures and a "
          "chart), every built-in pattern")
    for label, (accepted, delivered) in dlp.items():
        print(f"{label:15} {accepted:11.1f} {delivered:12.1f} {delivered / plain_report:16.2f}")
    if timings:
        print()
        print("\n".join(timings))
    if profiles:
        print(f"\npy-spy during each measured path (raw stacks in {options.profile}):")
        print("\n\n".join(profiles))


if __name__ == "__main__":
    main()
