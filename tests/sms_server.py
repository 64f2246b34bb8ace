"""
An SMS gateway for tests: HTTPS on 127.0.0.1 with a certificate from a CA
of its own (for 127.0.0.1 and localhost), recording every request and
answering with the status it is told -- or, with C{hang}, not at all.
"""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.pki_factory import Identity, make_ca, new_rsa_key


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up waiting (the timeout tests)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class SMSServer:
    """
    @ivar ca_pem: the CA certificate the server's chains to (PEM text).
    @ivar url: its address, C{https://127.0.0.1:<port>}.
    @ivar status: the HTTP status every answer has.
    @ivar hang: seconds to wait before answering.
    """

    def __init__(self, directory: Path) -> None:
        self.requests: list[Request] = []
        self.status = 200
        self.hang = 0.0
        now = datetime.now(UTC)
        ca = make_ca("SMS gateway test CA", key=new_rsa_key(),
                     not_before=now - timedelta(days=1), not_after=now + timedelta(days=30))
        key = new_rsa_key()
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
                .issuer_name(ca.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(days=1))
                .not_valid_after(now + timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([
                    x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]),
                    critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .sign(ca.key, hashes.SHA256()))
        self.ca_pem = ca.pem().decode()
        cert_file, key_file = directory / "sms-server.pem", directory / "sms-server.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(Identity(cert, key).key_pem())
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                server.requests.append(Request(self.command, self.path,
                                               {k.lower(): v for k, v in self.headers.items()},
                                               body))
                if server.hang:
                    time.sleep(server.hang)
                answer = b'{"status": "queued"}'
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        self._server = _Quiet(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Request]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} SMS request(s) did not come; "
                                     f"{len(self.requests)} did")
            time.sleep(0.05)
        return list(self.requests)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
