"""
PGP key discovery (issue 16): the Web Key Directory for recipients the
keyring has no key for, and Autocrypt headers on mail from external
senders -- through the gateway with a directory in memory, and over a
running appliance with a real HTTPS directory found through the MTA's DNS
servers.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pysequoia
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.defer import Deferred
from twisted.names import dns

from cipherd.mpa.discovery import FAILURE_KEPT, NOT_FOUND_KEPT, WKD_TIMEOUT, wkd_locations
from cipherd.pki.pgp import SequoiaOpenPGP
from cipherd.pki.smime import canonicalize
from cipherd.settings import GLOBAL
from cipherd.smtp.config import apply_changes
from cipherd.testing import result_of
from tests.conftest import Appliance
from tests.dns_server import DNSServer
from tests.openpgp_keys import KEYS
from tests.peers import make_pki, require_tool, run
from tests.pki_factory import Identity, make_ca, new_rsa_key
from tests.sink import Sink
from tests.test_gateway import RECEIVED, World, pki  # noqa: F401
from tests.test_gateway_appliance import Gateway
from tests.test_mta_appliance import api
from tests.test_pgp import _encrypted_part

OPENPGP = SequoiaOpenPGP()
DAVE = "dave@wkd.example"


def test_wkd_names_a_key_as_the_draft_does() -> None:
    # The draft's example: Joe.Doe@Example.ORG.
    advanced, direct = wkd_locations("Joe.Doe@Example.ORG")
    assert advanced.url == ("https://openpgpkey.example.org/.well-known/openpgpkey/example.org/"
                            "hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe")
    assert direct.url == ("https://example.org/.well-known/openpgpkey/hu/"
                          "iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe")


@pytest.fixture
def world(pki: dict[str, Any]) -> World:  # noqa: F811
    world = World(pki)
    # Keys generated now are valid from now on.
    world.clock.advance(max(0.0, time.time() + 60 - world.clock.seconds()))
    world.set(GLOBAL, encrypt_mode="mandatory", webmail_enabled=True, pgp_wkd=True,
              pgp_sign=False)
    world.tunnel_certificates()
    return world


@pytest.fixture(scope="module")
def dave() -> Any:
    return OPENPGP.generate(f"Dave <{DAVE}>")


def test_a_key_found_in_the_directory_is_stored_and_used(
        world: World, dave: Any, log_lines: list[str]) -> None:
    world.set(GLOBAL, pgp_discovered_trust=True)
    stranger = OPENPGP.generate("Someone <someone@else.example>")
    world.directory.keys[DAVE] = dave.public + stranger.public
    parts = world.process(DAVE)
    _encrypted_part(parts[(DAVE,)].content)
    stored = result_of(world.keyring.get(dave.fingerprint))
    assert stored is not None and stored.trusted and stored.source == "wkd"
    # Only the key with a user ID for the address is taken.
    assert result_of(world.keyring.get(stranger.fingerprint)) is None
    assert any(line.startswith(f"WKD: key {dave.fingerprint.upper()} for {DAVE} from "
                               "https://openpgpkey.wkd.example/") and "stored trusted" in line
               for line in log_lines), log_lines
    # The next message finds it in the keyring: the directory is not asked.
    world.process(DAVE)
    assert world.directory.asked == [DAVE]


def test_a_discovered_key_waits_for_the_administrator_unless_trusted_by_setting(
        world: World, dave: Any, log_lines: list[str]) -> None:
    world.directory.keys[DAVE] = dave.public
    parts = world.process(DAVE)
    assert parts[(DAVE,)].relay == "webmail"
    stored = result_of(world.keyring.get(dave.fingerprint))
    assert stored is not None and not stored.trusted
    assert any("stored untrusted: an administrator decides (PGP keys)" in line
               for line in log_lines), log_lines
    assert any("PGP not used: PGP key " + dave.fingerprint.upper() + ": the key is not "
               "trusted" in line for line in log_lines)
    result_of(world.keyring.set_trusted(dave.fingerprint, True))
    _encrypted_part(world.process(DAVE)[(DAVE,)].content)


def test_no_key_and_a_broken_directory_are_remembered_and_the_chain_goes_on(
        world: World, log_lines: list[str]) -> None:
    world.directory.broken["erin@wkd.example"] = "openpgpkey.wkd.example answered HTTP 500"
    parts = world.process(DAVE, "erin@wkd.example")
    assert parts[(DAVE, "erin@wkd.example")].relay == "webmail"
    assert any(line.startswith(f"WKD: no key for {DAVE} at https://openpgpkey.wkd.example/")
               for line in log_lines), log_lines
    assert any("WKD: the key of erin@wkd.example could not be looked up: openpgpkey."
               "wkd.example answered HTTP 500" in line for line in log_lines), log_lines
    world.process(DAVE, "erin@wkd.example")
    assert world.directory.asked == [DAVE, "erin@wkd.example"]
    world.clock.advance(FAILURE_KEPT)
    world.process(DAVE, "erin@wkd.example")
    assert world.directory.asked == [DAVE, "erin@wkd.example", "erin@wkd.example"]
    world.clock.advance(NOT_FOUND_KEPT)
    world.process(DAVE)
    assert world.directory.asked[-1] == DAVE


def test_only_mail_that_must_be_encrypted_looks_keys_up(world: World) -> None:
    world.set(GLOBAL, encrypt_mode="allow")
    world.process(DAVE)
    world.set(GLOBAL, encrypt_mode="mandatory", pgp_wkd=False)
    world.process(DAVE)
    assert world.directory.asked == []


def test_a_dead_directory_costs_the_bound_and_no_more(
        world: World, log_lines: list[str]) -> None:
    """
    A directory that never answers: the lookup gives up after
    L{WKD_TIMEOUT}, and the message goes to the next method.
    """
    world.directory.slow.add(DAVE)
    discovery = world.gateway._discovery
    looking: Deferred[bool] = Deferred.fromCoroutine(discovery.look_up(DAVE, trusted=True))
    # A second message for the same address waits for the same lookup.
    second: Deferred[bool] = Deferred.fromCoroutine(discovery.look_up(DAVE, trusted=True))
    assert not looking.called
    world.clock.advance(WKD_TIMEOUT - 0.1)
    assert not looking.called
    world.clock.advance(0.1)
    answers: list[bool] = []
    looking.addCallback(answers.append)
    second.addCallback(answers.append)
    assert answers == [False, False]
    assert world.directory.asked == [DAVE]
    assert any(f"WKD: no answer for {DAVE} within {WKD_TIMEOUT:g} s: the next method" in line
               for line in log_lines), log_lines
    assert world.process(DAVE)[(DAVE,)].relay == "webmail"
    assert world.directory.asked == [DAVE]


# Autocrypt -------------------------------------------------------------------------

AUTOCRYPT_MAIL = KEYS.parent / "eml" / "unsigned-unencrypted-0x3099ff1238852b9f-autocrypt.eml"
CAROL = "b8f2f6f4bd3ad3f82dc446833099ff1238852b9f"


def _received(path: Path) -> bytes:
    return canonicalize(path.read_bytes())


@pytest.fixture
def outside(world: World) -> World:
    """
    The world with Carol's domain (example.com, the corpus's) not ours.
    """
    world.config, errors = apply_changes(world.config, {"relay_domains": ["ours.example"]})
    assert not errors
    world.set(GLOBAL, pgp_autocrypt=True)
    return world


def test_autocrypt_keys_of_external_senders_are_collected_untrusted(
        outside: World, log_lines: list[str]) -> None:
    outside.process("bob@ours.example", content=RECEIVED + _received(AUTOCRYPT_MAIL),
                    sender="carol@example.com")
    stored = result_of(outside.keyring.get(CAROL))
    assert stored is not None and stored.source == "autocrypt" and not stored.trusted
    assert "carol@example.com" in stored.key.emails
    assert any(f"Autocrypt: key {CAROL.upper()} for carol@example.com collected, stored "
               "untrusted" in line for line in log_lines), log_lines
    # The administrator's decision is not undone by the next message.
    result_of(outside.keyring.set_trusted(CAROL, True))
    outside.process("bob@ours.example", content=RECEIVED + _received(AUTOCRYPT_MAIL),
                    sender="carol@example.com")
    assert result_of(outside.keyring.get(CAROL)).trusted  # type: ignore[union-attr]


def test_autocrypt_trust_is_the_header_addresss_domains(outside: World) -> None:
    # Trust discovered keys for the sender's domain: Carol's key is trusted.
    outside.domain("example.com", pgp_discovered_trust=True)
    outside.process("bob@ours.example", content=RECEIVED + _received(AUTOCRYPT_MAIL),
                    sender="carol@example.com")
    assert result_of(outside.keyring.get(CAROL)).trusted  # type: ignore[union-attr]


def test_autocrypt_trust_of_another_domain_does_not_count(outside: World) -> None:
    outside.domain("trusting.example", pgp_discovered_trust=True)
    outside.process("bob@ours.example", content=RECEIVED + _received(AUTOCRYPT_MAIL),
                    sender="mallory@trusting.example")
    # The header's address is not in the envelope sender's domain.
    assert result_of(outside.keyring.get(CAROL)) is None


@pytest.mark.parametrize("change", [
    # The header's address is not the From address.
    (b"From: Carol <carol@example.com>", b"From: Mallory <mallory@example.com>"),
    # Two Autocrypt headers.
    (b"Autocrypt: ", b"Autocrypt: addr=carol@example.com; keydata=AAAA\r\nAutocrypt: "),
    # An unknown critical attribute.
    (b"Autocrypt: ", b"Autocrypt: future=1; "),
])
def test_autocrypt_headers_that_do_not_hold_are_ignored(
        outside: World, change: tuple[bytes, bytes]) -> None:
    content = _received(AUTOCRYPT_MAIL).replace(*change, 1)
    assert content != _received(AUTOCRYPT_MAIL)
    outside.process("bob@ours.example", content=RECEIVED + content, sender="carol@example.com")
    assert result_of(outside.keyring.get(CAROL)) is None


def test_autocrypt_from_our_own_domains_or_when_off_is_not_collected(
        world: World, outside: World) -> None:
    # example.com is ours in the plain world: its addresses' keys are ours
    # to issue, not a header's to claim.
    world.config, _ = apply_changes(world.config, {"relay_domains": ["example.com"]})
    world.process("bob@partner.example", content=RECEIVED + _received(AUTOCRYPT_MAIL),
                  sender="carol@example.com")
    assert result_of(world.keyring.get(CAROL)) is None
    world.config, _ = apply_changes(world.config, {"relay_domains": ["ours.example"]})
    world.set(GLOBAL, pgp_autocrypt=False)
    world.process("bob@ours.example", content=RECEIVED + _received(AUTOCRYPT_MAIL),
                  sender="carol@example.com")
    assert result_of(world.keyring.get(CAROL)) is None


def test_only_the_user_id_looked_up_is_kept_of_a_discovered_key(world: World) -> None:
    world.set(GLOBAL, pgp_discovered_trust=True)
    two = OPENPGP.read_keys(bytes(pysequoia.Tsk.generate(
        user_ids=[f"Dave <{DAVE}>", "Boss <boss@ours.example>"])))[0]
    world.directory.keys[DAVE] = two.public
    _encrypted_part(world.process(DAVE)[(DAVE,)].content)
    stored = result_of(world.keyring.get(two.fingerprint))
    assert stored is not None and stored.key.emails == (DAVE,)
    assert not result_of(world.keyring.keys_for("boss@ours.example"))


# Over a running appliance ------------------------------------------------------------

class Directory:
    """
    A Web Key Directory over HTTPS on port 443 of a loopback address of its
    own (root, as the DNS server), with a certificate from a test CA; or,
    with C{dead}, a server that takes connections and never answers.
    """

    def __init__(self, address: str, tls: tuple[Path, Path] | None, keys: dict[str, bytes]
                 ) -> None:
        self.address = address
        self.asked: list[str] = []
        if tls is None:
            self._dead = socket.socket()
            self._dead.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._dead.bind((address, 443))
            self._dead.listen(8)
            self._server = None
            return
        directory = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                directory.asked.append(self.path)
                found = next((data for path, data in keys.items()
                              if self.path.startswith(path)), None)
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(found or b"")))
                self.end_headers()
                self.wfile.write(found or b"")

            def log_message(self, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        self._server = ThreadingHTTPServer((address, 443), Handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self._server is None:
            self._dead.close()
        else:
            self._server.shutdown()
            self._server.server_close()


def _directory_tls(directory: Path, host: str) -> tuple[Path, Path, Path]:
    """
    A test CA and, from it, a server certificate for C{host}: the CA's
    file (for C{SSL_CERT_FILE}), the certificate's and the key's.
    """
    ca = make_ca("WKD test CA", key=new_rsa_key())
    key = new_rsa_key()
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca.key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.pem())
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(Identity(cert, key).key_pem())
    return paths


@pytest.mark.e2e
def test_a_running_appliance_finds_a_key_in_a_web_key_directory(
        appliance: Appliance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The issue's test: a directory on 127.0.0.0/8 over HTTPS, its name
    (openpgpkey.wkd.example) resolved by the DNS server the MTA is set to
    use, supplies Dave's key, which the message is then encrypted to (gpg
    decrypts it); a directory that takes the connection and never answers
    costs the bound, and the message goes on to the webmail messenger.
    """
    # Dave's key made by GnuPG, as an external recipient's would be.
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = dict(os.environ, GNUPGHOME=str(home))
    gpg = require_tool("gpg")
    run([gpg, "--batch", "--passphrase", "", "--quick-gen-key", f"Dave <{DAVE}>",
         "default", "default", "never"], env=env)
    dave = OPENPGP.read_keys(run([gpg, "--batch", "--export", DAVE], env=env).stdout)[0]
    ca_file, cert, key = _directory_tls(tmp_path, "openpgpkey.wkd.example")
    # The directory's CA as the system's trust store (OpenSSL's variable).
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    appliance.restart()
    dns = DNSServer("127.83.0.64")
    advanced, _ = wkd_locations(DAVE)
    live = Directory("127.83.0.80", (cert, key), {advanced.path: dave.public})
    dead = Directory("127.83.0.81", None, {})
    dns.zone["openpgpkey.wkd.example"] = [dns_record("127.83.0.80")]
    dns.zone["openpgpkey.dead.example"] = [dns_record("127.83.0.81")]
    sink = Sink()
    try:
        (tmp_path / "pki").mkdir()
        gateway = Gateway(appliance, make_pki(tmp_path / "pki", datetime.now(UTC)), sink)
        gateway.webmail()
        api(appliance, "PATCH", "/mta", {"dns_servers": [dns.address], "transports": [
            {"domain": domain, "host": "[127.0.0.1]", "port": sink.port}
            for domain in ("example.org", "webmail.local", "wkd.example", "dead.example")]})
        gateway.settings("global", encrypt_mode="mandatory", pgp_wkd=True,
                         pgp_discovered_trust=True, pgp_sign=False)
        gateway.send(DAVE)
        (captured,) = sink.wait_for(1, timeout=30)
        gateway.log("mpa", f"WKD: key {dave.fingerprint.upper()} for {DAVE} from "
                    f"{advanced.url}")
        assert live.asked == [advanced.path]
        done = run([gpg, "--batch", "--status-fd", "2", "--decrypt"],
                   stdin=_encrypted_part(captured.content), env=env)
        assert b"DECRYPTION_OKAY" in done.stderr

        started = time.monotonic()
        gateway.send("frank@dead.example")
        gateway.log("mpa", "WKD: no answer for frank@dead.example within "
                    f"{WKD_TIMEOUT:g} s: the next method", timeout=WKD_TIMEOUT + 10)
        gateway.log("mpa", "sent to the webmail messenger", timeout=10)
        elapsed = time.monotonic() - started
        assert elapsed < WKD_TIMEOUT + 5, elapsed
    finally:
        sink.close()
        live.close()
        dead.close()
        dns.close()


def dns_record(address: str) -> Any:
    return dns.Record_A(address)
