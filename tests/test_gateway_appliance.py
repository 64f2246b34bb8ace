"""
The gateway in a running appliance, mail sent with swaks and captured at a
sink on real sockets, the S/MIME checked by independent peers:

    - what it S/MIME-signs and encrypts for an external recipient,
      C{openssl cms} and C{gpgsm} decrypt and verify;
    - what C{openssl} and C{gpgsm} encrypt and sign for an internal user,
      it decrypts, and says so in the security fields;
    - its tunnel message C{openssl cms} decrypts with the webmail key and
      verifies with the gateway tunnel certificate, the original inside
      byte for byte as sent;
    - each gateway-side symptom of the guide's Troubleshooting, made by the
      misconfiguration it names, with the quoted log line and bounce.
"""

from __future__ import annotations

import base64
import email
import os
import re
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from cipherd.mpa.tunnel import read_tunnel
from cipherd.pki.certs import create_tunnel_certificate, thumbprint
from tests.conftest import Appliance
from tests.dns_server import DNSServer
from tests.peers import (
    GpgSM,
    OpenSSL,
    TestPKI,
    gpgsm_session,
    make_pki,
    multipart_signed_parts,
    pkcs7_mime_der,
    require_tool,
    run,
)
from tests.processes import children, state
from tests.sink import Captured, Sink
from tests.test_mta_appliance import NEW_PASSWORD, api, queue_id_of

pytestmark = pytest.mark.e2e

# From an internal user (alice, locality internal) to external recipients.
SENT = (b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: Figures for Q3\r\n"
        b"Message-ID: <q3@example.org>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
        b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        b"\r\n.leading dot\r\nGr\xc3\xbc\xc3\x9fe\r\n" + b"z" * 1500 + b"\r\n"
        b"--b1\r\nContent-Type: application/octet-stream; name=data.bin\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(bytes(range(256)) * 4).replace(b"\n", b"\r\n") +
        b"--b1--\r\n")
WEBMAIL_SENDER = "webmail-sender@example.org"
WEBMAIL_RECIPIENT = "webmail@webmail.local"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_pki(tmp_path_factory.mktemp("gateway-pki"), datetime.now(UTC))


@pytest.fixture(scope="module")
def gpgsm(tmp_path_factory: pytest.TempPathFactory, pki: TestPKI) -> Iterator[GpgSM]:
    yield from gpgsm_session(tmp_path_factory.mktemp("gateway-gnupg"), pki)


@pytest.fixture
def openssl(tmp_path: Path, pki: TestPKI) -> OpenSSL:
    work = tmp_path / "openssl"
    work.mkdir()
    return OpenSSL(work, pki)


def upload(appliance: Appliance, path: str, data: bytes) -> Any:
    return api(appliance, "POST", path, raw=data)


class Gateway:
    """
    The appliance as a gateway: example.org's mail goes to the sink (the
    "internet" and the internal mail server alike), alice is internal.
    """

    def __init__(self, appliance: Appliance, pki: TestPKI, sink: Sink) -> None:
        self.appliance = appliance
        self.sink = sink
        api(appliance, "POST", "/admin/password", {"password": NEW_PASSWORD},
            password="admin")
        api(appliance, "PATCH", "/mta", {"transports": [
            {"domain": domain, "host": "[127.0.0.1]", "port": sink.port}
            for domain in ("example.org", "partner.example", "webmail.local")]})
        upload(appliance, "/certificates?store=roots", pki.ca.cert_pem.read_bytes())
        for user in (pki.alice, pki.bob):
            assert user.p12 is not None
            upload(appliance, "/certificates?password=interop-secret", user.p12.read_bytes())
        self.settings("users/alice@example.org", locality="internal")

    def settings(self, where: str, **values: Any) -> None:
        api(self.appliance, "PATCH", f"/settings/{where}", values)

    def send(self, *recipients: str, data: bytes = SENT, sender: str = "alice@example.org"
             ) -> str:
        args = [require_tool("swaks"), "--server", f"127.0.0.1:{self.appliance.smtp_port}",
                "--from", sender, "--helo", "client.example.org", "--data", "-",
                "--to", ",".join(recipients)]
        done = run(args, stdin=data.removesuffix(b"\r\n"))
        return queue_id_of(done.stdout.decode(errors="replace"))

    def log(self, name: str, text: str, timeout: float = 15.0) -> str:
        return self.appliance.wait_for_log(name, text, timeout)

    def tunnel_identity(self, email_address: str, subject: str, *, with_key: bool,
                        trusted: bool = True) -> tuple[Any, Any]:
        """
        A tunnel certificate made as the other appliance makes it, imported
        (with its key, or not) and, if C{trusted}, whitelisted.
        """
        cert, key = create_tunnel_certificate(email_address, subject, datetime.now(UTC))
        if with_key:
            data = pkcs12.serialize_key_and_certificates(
                b"tunnel", key, cert, None, serialization.BestAvailableEncryption(b"pw"))
            upload(self.appliance, "/certificates?password=pw&skip_self_signed=false", data)
        else:
            upload(self.appliance, "/certificates?skip_self_signed=false",
                   cert.public_bytes(serialization.Encoding.PEM))
        if trusted:
            api(self.appliance, "POST", "/ctl", {"thumbprint": thumbprint(cert),
                                                 "status": "whitelisted"})
        return cert, key

    def webmail(self) -> tuple[Any, Any]:
        """
        The guide's sections 3.2-3.8: the webmail certificate imported and
        trusted, webmail enabled, recipient and sender set, the gateway
        tunnel certificate made; the webmail side's key is returned.
        """
        self.settings("global", webmail_enabled=True, webmail_recipient=WEBMAIL_RECIPIENT,
                      webmail_sender=WEBMAIL_SENDER)
        self.tunnel_identity(WEBMAIL_SENDER, "Webmail sender tunnel certificate",
                             with_key=True)
        return self.tunnel_identity(WEBMAIL_RECIPIENT, "Webmail relay recipient certificate",
                                    with_key=False)


@pytest.fixture
def gateway(appliance: Appliance, pki: TestPKI) -> Iterator[Gateway]:
    sink = Sink()
    try:
        yield Gateway(appliance, pki, sink)
    finally:
        sink.close()


def body_of(message: bytes) -> bytes:
    return message[message.index(b"\r\n\r\n") + 4:]


def test_smime_for_an_external_recipient_opens_with_openssl_and_gpgsm(
        gateway: Gateway, pki: TestPKI, openssl: OpenSSL, gpgsm: GpgSM) -> None:
    gateway.settings("global", encrypt_mode="mandatory")
    queue_id = gateway.send("bob@example.org")
    (captured,) = gateway.sink.wait_for(1)
    assert captured.recipients == ["bob@example.org"]
    gateway.log("mpa", f"{queue_id}: S/MIME signed and encrypted; Recipients: bob@example.org")
    message = captured.content
    assert b"Subject: Figures for Q3\r\n" in message  # outer headers stay
    assert b"smime-type=enveloped-data" in message and b"Gr\xc3\xbc" not in message
    # openssl: decrypt with bob's key, verify alice's signature against the CA.
    signed = openssl.smime_decrypt(message, pki.bob)
    entity = openssl.smime_verify(signed)
    # gpgsm: the same CMS structures, taken out of their MIME wrapping.
    decrypted = gpgsm.decrypt(pkcs7_mime_der(message))
    signed_part, signature = multipart_signed_parts(decrypted)
    gpgsm.verify(signature, signed_part)
    for opened in (entity, signed_part):
        parsed = email.message_from_bytes(opened)
        # RFC 9788: the header fields inside, as the peers read them.
        assert parsed["Subject"] == "Figures for Q3"
        assert parsed.get_param("hp") == "cipher"
        text, attachment = parsed.get_payload()
        assert text.get_payload(decode=True).startswith(b".leading dot\r\nGr\xc3\xbc\xc3\x9fe")
        assert b"z" * 1500 in text.get_payload(decode=True)
        assert attachment.get_payload(decode=True) == bytes(range(256)) * 4


def _openssl_message(openssl: OpenSSL, pki: TestPKI) -> bytes:
    signed = openssl.smime_sign(SENT[SENT.index(b"MIME-Version"):], pki.bob,
                                subject="From bob")
    return openssl.smime_encrypt(signed, [pki.alice], subject="Encrypted by openssl")


def _gpgsm_message(gpgsm: GpgSM, pki: TestPKI) -> bytes:
    entity = SENT[SENT.index(b"MIME-Version"):]
    signed = gpgsm.sign(entity, pki.bob, detached=False)
    encrypted = gpgsm.encrypt(
        b"Content-Type: application/pkcs7-mime; smime-type=signed-data; name=smime.p7m\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(signed).replace(b"\n", b"\r\n"), [pki.alice])
    return (b"From: bob@example.org\r\nTo: alice@example.org\r\nSubject: Encrypted by gpgsm\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; "
            b"smime-type=enveloped-data; name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\n"
            b"\r\n" + base64.encodebytes(encrypted).replace(b"\n", b"\r\n"))


@pytest.mark.parametrize("peer", ["openssl", "gpgsm"])
def test_incoming_smime_from_openssl_and_gpgsm_is_opened_for_an_internal_user(
        gateway: Gateway, pki: TestPKI, openssl: OpenSSL, gpgsm: GpgSM, peer: str) -> None:
    message = _openssl_message(openssl, pki) if peer == "openssl" else _gpgsm_message(gpgsm,
                                                                                       pki)
    forged = b"X-Cipherd-Info-Signer-Trusted-0: True\r\n" + message
    gateway.send("alice@example.org", data=forged, sender="bob@example.org")
    (captured,) = gateway.sink.wait_for(1)
    delivered = captured.content
    header = delivered[:delivered.index(b"\r\n\r\n")].decode()
    assert "X-Cipherd-Info-Encrypted: True\r\n" in header
    assert "X-Cipherd-Info-Encryption-Algorithm: AES256_CBC, key transport rsaes_pkcs1v15" \
        in header
    assert "X-Cipherd-Info-Decrypted-With: " in header and "alice@example.org" in header
    assert "X-Cipherd-Info-Signer-Verified-0: True\r\n" in header
    assert "X-Cipherd-Info-Signer-Trusted-0: True\r\n" in header
    assert header.count("X-Cipherd-Info-Signer-Trusted-0") == 1  # the forged one went
    assert "X-Cipherd-Info-Signer-Email-0: bob@example.org" in header
    assert b"smime-type=enveloped-data" not in delivered  # delivered decrypted


def test_the_tunnel_message_opens_with_openssl_and_carries_the_original_as_sent(
        gateway: Gateway, openssl: OpenSSL, tmp_path: Path) -> None:
    webmail_cert, webmail_key = gateway.webmail()
    gateway.settings("global", encrypt_mode="mandatory")
    queue_id = gateway.send("dave@partner.example", "erin@partner.example")
    (captured,) = gateway.sink.wait_for(1)
    assert (captured.sender, captured.recipients) == (WEBMAIL_SENDER, [WEBMAIL_RECIPIENT])
    assert b"Subject: Secure Webmail message\r\n" in captured.content
    log = gateway.log("mta", f"{queue_id}: to=<erin@partner.example>, relay=webmail")
    assert "status=sent (queued as" in log
    key_pem, cert_pem = tmp_path / "webmail-key.pem", tmp_path / "webmail-cert.pem"
    key_pem.write_bytes(webmail_key.private_bytes(serialization.Encoding.PEM,
                                                  serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    cert_pem.write_bytes(webmail_cert.public_bytes(serialization.Encoding.PEM))
    message, decrypted, verified = (tmp_path / "tunnel.eml", tmp_path / "signed.eml",
                                    tmp_path / "entity.eml")
    message.write_bytes(captured.content)
    binary = require_tool("openssl")
    run([binary, "cms", "-decrypt", "-in", message, "-out", decrypted, "-recip", cert_pem,
         "-inkey", key_pem])
    # The signer is the gateway tunnel certificate, self-signed: it is its own CA.
    sender_pem = tmp_path / "sender.pem"
    run([binary, "cms", "-verify", "-in", decrypted, "-out", verified, "-binary",
         "-certsout", sender_pem, "-noverify"])
    signer = sender_pem.read_bytes()
    run([binary, "cms", "-verify", "-in", decrypted, "-out", verified, "-binary",
         "-CAfile", sender_pem, "-purpose", "smimesign"])
    assert WEBMAIL_SENDER.encode() in run([binary, "x509", "-noout", "-subject"],
                                          stdin=signer).stdout
    metadata, original = read_tunnel(verified.read_bytes())
    assert original == SENT  # byte for byte as swaks sent it
    assert (metadata.sender, metadata.recipients) == (
        "alice@example.org", ("dave@partner.example", "erin@partner.example"))


def _notice(gateway: Gateway, reason: str) -> Captured:
    (notice,) = gateway.sink.wait_for(1)
    assert (notice.sender, notice.recipients) == ("", ["alice@example.org"])
    text = notice.content.decode(errors="replace")
    assert ("The message with Subject\r\n\r\nFigures for Q3\r\n\r\nhas not been sent to the "
            "following recipients because the message could not be encrypted.\r\n\r\n"
            f"dave@partner.example\r\n\r\n{reason}") in text, text
    assert "Gr\xfc" not in text and "zzzz" not in text  # never the content in the clear
    return notice


@pytest.mark.parametrize("where, line", [
    ("global", "INFO Webmail is disabled for the sender"),
    ("domains/partner.example", "INFO Webmail is disabled for the recipient"),
])
def test_webmail_disabled(gateway: Gateway, where: str, line: str) -> None:
    gateway.webmail()
    gateway.settings("global", encrypt_mode="mandatory")
    gateway.settings(where, webmail_enabled=False)
    gateway.send("dave@partner.example")
    log = gateway.log("mpa", line)
    assert f"{line}; Recipient: dave@partner.example; Sender: alice@example.org" in log
    _notice(gateway, "Encryption is mandatory (by policy) but no method could encrypt the "
                     f"message: there is no valid S/MIME certificate for the recipient; "
                     f"there is no PGP key for the recipient; PDF is disabled; "
                     f"{line.removeprefix('INFO ')}.")


def test_no_gateway_tunnel_certificate(gateway: Gateway) -> None:
    gateway.settings("global", encrypt_mode="mandatory", webmail_enabled=True,
                     webmail_recipient=WEBMAIL_RECIPIENT, webmail_sender=WEBMAIL_SENDER)
    gateway.tunnel_identity(WEBMAIL_RECIPIENT, "Webmail relay recipient certificate",
                            with_key=False)
    gateway.send("dave@partner.example")
    gateway.log("mpa", "WARN The tunneled message should have been signed")
    _notice(gateway, "The tunneled message should have been signed.")


@pytest.mark.parametrize("imported", [False, True])
def test_webmail_certificate_missing_or_untrusted(gateway: Gateway, imported: bool) -> None:
    gateway.settings("global", encrypt_mode="mandatory", webmail_enabled=True,
                     webmail_recipient=WEBMAIL_RECIPIENT, webmail_sender=WEBMAIL_SENDER)
    gateway.tunnel_identity(WEBMAIL_SENDER, "Webmail sender tunnel certificate", with_key=True)
    if imported:  # imported (section 3.2) but not trusted (3.3 skipped)
        gateway.tunnel_identity(WEBMAIL_RECIPIENT, "Webmail relay recipient certificate",
                                with_key=False, trusted=False)
    gateway.send("dave@partner.example")
    gateway.log("mpa", "WARN There are no valid S/MIME certificates for the webmail recipient")
    _notice(gateway, "There are no valid S/MIME certificates for the webmail recipient.")


def test_no_smtp_transport_for_webmail_local(gateway: Gateway) -> None:
    gateway.webmail()
    gateway.settings("global", encrypt_mode="mandatory")
    dns_server = DNSServer("127.83.0.54")
    try:
        api(gateway.appliance, "PATCH", "/mta", {
            "dns_servers": [dns_server.address], "transports": [
                {"domain": "example.org", "host": "[127.0.0.1]", "port": gateway.sink.port}]})
        gateway.send("dave@partner.example")
        log = gateway.log("mta", "to=<webmail@webmail.local>, relay=none", timeout=45)
        assert ("dsn=5.4.4, status=bounced (Host or domain name not found. Name service error "
                "for name=webmail.local type=AAAA: Host not found)") in log, log
        try:
            (bounce,) = gateway.sink.wait_for(1, timeout=45)
        except AssertionError:
            raise AssertionError((gateway.appliance.data_dir / "logs" / "mta.log").read_text()
                                 + (gateway.appliance.data_dir / "logs" / "mpa.log").read_text()
                                 ) from None
        assert (bounce.sender, bounce.recipients) == ("", [WEBMAIL_SENDER])
        assert (b"<webmail@webmail.local>: Host or domain name not found. Name service error "
                b"for name=webmail.local type=AAAA: Host not found") in bounce.content
    finally:
        dns_server.close()


def _ready_worker(appliance: Appliance, but: int = 0, timeout: float = 30.0) -> int:
    """
    The pid of a processing worker the appliance says is ready (not C{but}).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in map(int, re.findall(r"Processing worker (\d+) is ready",
                                       appliance.logs[-1].read_text())):
            if pid != but:
                return pid
        time.sleep(0.1)
    raise AssertionError("no processing worker became ready:\n"
                         + appliance.logs[-1].read_text())


def test_processing_runs_in_a_worker_process_whose_kill_loses_nothing(
        gateway: Gateway, appliance: Appliance) -> None:
    assert appliance.process is not None
    worker = _ready_worker(appliance)
    assert worker in children(appliance.process.pid)
    assert b"cipherd.workers" in Path(f"/proc/{worker}/cmdline").read_bytes()
    # The worker reads and keeps the settings of the sender and recipient...
    gateway.send("bob@example.org")
    (plain,) = gateway.sink.wait_for(1)
    assert b"Gr\xc3\xbc" in plain.content
    # ...and a setting changed through the main process applies to its very
    # next message, within its one-second cache (mandatory: signed and
    # encrypted, not sent as it is).
    gateway.settings("global", encrypt_mode="mandatory")
    first = gateway.send("bob@example.org")
    assert b"smime-type=enveloped-data" in gateway.sink.wait_for(2)[1].content
    # The worker's MPA line is in the main process's MPA log.
    gateway.log("mpa", f"{first}: S/MIME signed and encrypted; Recipients: bob@example.org")
    os.kill(worker, signal.SIGKILL)
    second = gateway.send("bob@example.org")
    assert b"smime-type=enveloped-data" in gateway.sink.wait_for(3)[2].content
    gateway.log("mpa", f"{second}: S/MIME signed and encrypted; Recipients: bob@example.org")
    assert f"Processing worker {worker} ended" in appliance.logs[-1].read_text()
    again = _ready_worker(appliance, but=worker)
    third = gateway.send("bob@example.org")
    gateway.sink.wait_for(4)
    gateway.log("mpa", f"{third}: S/MIME signed and encrypted; Recipients: bob@example.org")
    # The main process killed: its worker does not stay behind.
    appliance.kill()
    deadline = time.monotonic() + 10
    while state(again) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state(again) in (None, "Z")
