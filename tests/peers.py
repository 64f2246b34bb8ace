"""
Independent S/MIME peers for the interoperability tests: C{openssl cms},
C{openssl smime} and C{gpgsm}, driven through subprocess with timeouts, and
the test identities (a CA, RSA users, an EC signer) they and cipherd share,
made at test time.

Every failure of a peer is an AssertionError naming the command and quoting
the peer's stderr.  A missing peer skips, except under CI (C{CI=true}), where
it fails: the peers are part of the test environment (C{scripts/setup --test}).
"""

from __future__ import annotations

import base64
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x448, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Seconds any one peer command may take; they take milliseconds.
PEER_TIMEOUT = 60
# The passphrase of the PKCS#12 files and of the keys inside gpgsm's agent.
PASSPHRASE = "interop-secret"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def require_tool(name: str) -> str:
    """
    The path of the program C{name}; skip the test if it is not installed,
    or fail it under CI, where the peers must be there.
    """
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (scripts/setup --test installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def run(
    args: Sequence[str | Path],
    *,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """
    Run a peer command and return what it did.

    @param check: fail the test (with the peer's stderr) on a non-zero exit.
    """
    command = " ".join(str(a) for a in args)
    try:
        proc = subprocess.run(
            [str(a) for a in args],
            input=stdin if stdin is not None else b"",
            capture_output=True,
            env=env,
            timeout=PEER_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"`{command}` did not finish within {PEER_TIMEOUT} s; stderr:\n"
            + (e.stderr or b"").decode(errors="replace")
        ) from None
    if check and proc.returncode != 0:
        raise AssertionError(
            f"`{command}` exited with {proc.returncode}; stderr:\n"
            + proc.stderr.decode(errors="replace")
        )
    return proc


# Identities -------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """
    A certificate and its private key, also written to files for the peers.

    @ivar cert_pem: the certificate (PEM).
    @ivar key_pem: the private key (PKCS#8 PEM, not encrypted).
    @ivar p12: the key and certificate with the CA, legacy PBE (what gpgsm
        imports), protected with L{PASSPHRASE}; C{None} for the CA.
    """

    email: str
    cert: x509.Certificate
    key: PrivateKey
    cert_pem: Path
    key_pem: Path
    p12: Path | None

    @property
    def sha1_fingerprint(self) -> str:
        """
        The fingerprint as gpgsm's trustlist.txt wants it (colon-separated).
        """
        return self.cert.fingerprint(hashes.SHA1()).hex(":").upper()  # noqa: S303

    @property
    def pair(self) -> tuple[x509.Certificate, PrivateKey]:
        return (self.cert, self.key)


@dataclass(frozen=True)
class TestPKI:
    """
    A CA and the users the interop tests use.

    @ivar alice: RSA-2048, the usual signer and recipient.
    @ivar bob: RSA-2048, a second recipient.
    @ivar carol: EC P-256: a signer, and a recipient by ECDH key agreement.
    """

    __test__ = False  # not a pytest test class

    ca: Identity
    alice: Identity
    bob: Identity
    carol: Identity

    @property
    def users(self) -> tuple[Identity, ...]:
        return (self.alice, self.bob, self.carol)


def _name(common_name: str, email: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if email:
        attributes.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    return x509.Name(attributes)


def _key_usage(**flags: bool) -> x509.KeyUsage:
    names = ("digital_signature", "content_commitment", "key_encipherment",
             "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
             "encipher_only", "decipher_only")
    return x509.KeyUsage(**{name: flags.get(name, False) for name in names})


def _write_identity(
    directory: Path, stem: str, email: str, cert: x509.Certificate, key: PrivateKey,
    ca_pem: Path | None,
) -> Identity:
    cert_pem = directory / f"{stem}.pem"
    key_pem = directory / f"{stem}.key"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    key_pem.chmod(0o600)
    p12 = None
    if ca_pem is not None:
        p12 = directory / f"{stem}.p12"
        write_p12(p12, email, cert_pem, key_pem, ca_pem)
    return Identity(email, cert, key, cert_pem, key_pem, p12)


def write_p12(out: Path, email: str, cert_pem: Path, key_pem: Path, ca_pem: Path) -> None:
    """
    Write a key, its certificate and the CA as PKCS#12 under L{PASSPHRASE},
    with fresh random salts each call.

    gpgsm 2.2 reads only the legacy PBEs (FIELD-NOTES, "Independent peers").
    """
    run([require_tool("openssl"), "pkcs12", "-export", "-in", cert_pem, "-inkey", key_pem,
         "-certfile", ca_pem, "-name", email, "-passout", f"pass:{PASSPHRASE}",
         "-keypbe", "PBE-SHA1-3DES", "-certpbe", "PBE-SHA1-3DES", "-macalg", "sha1",
         "-out", out])


def make_ca(key: PrivateKey, not_before: datetime, not_after: datetime) -> x509.Certificate:
    """
    A self-signed CA certificate for C{key}.
    """
    return (
        x509.CertificateBuilder()
        .subject_name(_name("cipherd Interop Test CA"))
        .issuer_name(_name("cipherd Interop Test CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )


def make_user_certificate(
    email: str, key: PrivateKey, ca_cert: x509.Certificate, ca_key: PrivateKey,
    not_before: datetime, not_after: datetime,
) -> x509.Certificate:
    """
    An S/MIME certificate as RFC 8550 wants it: an rfc822Name SAN,
    keyUsage (digitalSignature, and keyEncipherment for RSA keys or
    keyAgreement for EC keys; keyAgreement alone for X25519 and X448),
    extendedKeyUsage emailProtection, and a subject key identifier (so that
    C{-keyid} messages can name it).
    """
    agreement_only = isinstance(key, x25519.X25519PrivateKey | x448.X448PrivateKey)
    usage = _key_usage(digital_signature=not agreement_only,
                       key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                       key_agreement=agreement_only or isinstance(key,
                                                                  ec.EllipticCurvePrivateKey))
    return (
        x509.CertificateBuilder()
        .subject_name(_name(email.split("@")[0].title(), email))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def make_pki(directory: Path, now: datetime | None = None) -> TestPKI:
    """
    Make a CA and users (see L{TestPKI}), valid from a day before C{now}
    for a year, and write their files into C{directory}.
    """
    now = now or datetime.now(UTC)
    not_before, not_after = now - timedelta(days=1), now + timedelta(days=365)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = _write_identity(directory, "ca", "", make_ca(ca_key, not_before, not_after), ca_key,
                         None)

    def user(stem: str, key: PrivateKey) -> Identity:
        email = f"{stem}@example.org"
        cert = make_user_certificate(email, key, ca.cert, ca_key, not_before, not_after)
        return _write_identity(directory, stem, email, cert, key, ca.cert_pem)

    return TestPKI(
        ca=ca,
        alice=user("alice", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        bob=user("bob", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        carol=user("carol", ec.generate_private_key(ec.SECP256R1())),
    )


# Whole messages, taken apart without cipherd ------------------------------------------


def _header(message: bytes) -> tuple[bytes, bytes]:
    match = re.search(rb"\r?\n\r?\n", message)
    assert match is not None, "the message has no header/body separator"
    return message[: match.start()], message[match.end():]


def content_type(message: bytes) -> tuple[str, dict[str, str]]:
    """
    The Content-Type of a message and its parameters (lower-cased names).
    """
    head, _ = _header(message)
    headers = BytesHeaderParser(policy=compat32).parsebytes(head + b"\r\n\r\n")
    params = {k.lower(): v for k, v in headers.get_params(header="content-type")[1:]}
    return headers.get_content_type(), params


def pkcs7_mime_der(message: bytes) -> bytes:
    """
    The DER inside an C{application/pkcs7-mime} message (its base64 body).
    """
    kind, _ = content_type(message)
    assert kind in ("application/pkcs7-mime", "application/x-pkcs7-mime"), kind
    _, body = _header(message)
    return base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", body), validate=True)


def multipart_signed_parts(message: bytes) -> tuple[bytes, bytes]:
    """
    The first part of a C{multipart/signed} message, exactly as it is on
    the wire, and the DER of its signature part (RFC 1847 §2.1).
    """
    kind, params = content_type(message)
    assert kind == "multipart/signed", kind
    _, body = _header(message)
    delimiter = re.escape(b"--" + params["boundary"].encode())
    lines = list(re.finditer(rb"(?:^|\r?\n)" + delimiter + rb"(--)?[ \t]*(?=\r?\n|$)", body))
    assert len(lines) == 3 and lines[2].group(1), "expected two parts and a close delimiter"
    first = body[lines[0].end():lines[1].start()]
    first = first[2:] if first.startswith(b"\r\n") else first[1:]
    signature_part = body[lines[1].end():lines[2].start()].lstrip(b"\r\n")
    return first, pkcs7_mime_der_body(signature_part)


def pkcs7_mime_der_body(part: bytes) -> bytes:
    _, body = _header(part)
    return base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", body), validate=True)


# openssl ------------------------------------------------------------------------


class OpenSSL:
    """
    C{openssl cms} and C{openssl smime} (OpenSSL 3) working in C{directory}.

    Signatures are verified against the test CA with purpose smimesign, so
    the peer also checks our certificates as S/MIME certificates.
    """

    # cipherd's names for content ciphers -> openssl's options.
    CIPHERS = {
        "aes128_cbc": "-aes128", "aes192_cbc": "-aes192", "aes256_cbc": "-aes256",
        "tripledes_3key": "-des3", "aes128_gcm": "-aes-128-gcm", "aes192_gcm": "-aes-192-gcm",
        "aes256_gcm": "-aes-256-gcm",
    }

    def __init__(self, directory: Path, pki: TestPKI) -> None:
        self.binary = require_tool("openssl")
        self.directory = directory
        self.pki = pki
        self._names = itertools.count()

    def _file(self, data: bytes, suffix: str = ".bin") -> Path:
        path = self.directory / f"{next(self._names):04d}{suffix}"
        path.write_bytes(data)
        return path

    def _out(self) -> Path:
        return self.directory / f"{next(self._names):04d}.out"

    def _run(self, *args: str | Path) -> subprocess.CompletedProcess[bytes]:
        return run([self.binary, *args])

    # Producing.

    def cms_sign(
        self, content: bytes, signer: Identity, *, detached: bool = True, md: str = "sha256",
        pss: bool = False, keyid: bool = False, signed_attributes: bool = True,
    ) -> bytes:
        """
        C{openssl cms -sign -binary} over C{content}: DER.
        """
        out = self._out()
        args: list[str | Path] = ["cms", "-sign", "-binary", "-in", self._file(content),
                                  "-outform", "DER", "-out", out, "-md", md,
                                  "-signer", signer.cert_pem, "-inkey", signer.key_pem]
        if pss:
            args += ["-keyopt", "rsa_padding_mode:pss"]
        if not detached:
            args.append("-nodetach")
        if keyid:
            args.append("-keyid")
        if not signed_attributes:
            args.append("-noattr")
        self._run(*args)
        return out.read_bytes()

    def cms_encrypt(
        self, content: bytes, recipients: Sequence[Identity], *, cipher: str = "aes256_cbc",
        oaep: bool = False, keyid: bool = False, keyopts: Sequence[str] = (),
    ) -> bytes:
        """
        C{openssl cms -encrypt -binary} of C{content}: DER.

        @param keyopts: more C{-keyopt}s for each recipient (after C{-recip}).
        """
        out = self._out()
        args: list[str | Path] = ["cms", "-encrypt", "-binary", "-in", self._file(content),
                                  "-outform", "DER", "-out", out, self.CIPHERS[cipher]]
        if keyid:
            args.append("-keyid")
        for recipient in recipients:
            args += ["-recip", recipient.cert_pem]
            if oaep:
                args += ["-keyopt", "rsa_padding_mode:oaep"]
            for option in keyopts:
                args += ["-keyopt", option]
        self._run(*args)
        return out.read_bytes()

    def smime_sign(self, entity: bytes, signer: Identity, *, detached: bool = True,
                   subject: str = "Signed by openssl") -> bytes:
        """
        C{openssl smime -sign} of a MIME entity: a whole message with
        From/To/Subject (in text mode: openssl canonicalises to CRLF).
        """
        out = self._out()
        args: list[str | Path] = [
            "smime", "-sign", "-in", self._file(entity, ".eml"), "-out", out,
            "-signer", signer.cert_pem, "-inkey", signer.key_pem, "-md", "sha256",
            "-from", signer.email, "-to", "someone@example.net", "-subject", subject]
        if not detached:
            args.append("-nodetach")
        self._run(*args)
        return out.read_bytes()

    def smime_encrypt(self, entity: bytes, recipients: Sequence[Identity], *,
                      cipher: str = "aes256_cbc", subject: str = "Encrypted by openssl") -> bytes:
        """
        A whole encrypted message: C{openssl smime -encrypt}, or for GCM
        (AuthEnvelopedData, which C{openssl smime} lacks) C{openssl cms
        -encrypt} with S/MIME output.
        """
        out = self._out()
        command = "cms" if cipher.endswith("gcm") else "smime"
        self._run(command, "-encrypt", "-in", self._file(entity, ".eml"), "-out", out,
                  self.CIPHERS[cipher], "-from", "someone@example.net",
                  "-to", recipients[0].email, "-subject", subject,
                  *(str(r.cert_pem) for r in recipients))
        return out.read_bytes()

    # Consuming.

    def cms_verify(self, signature: bytes, content: bytes | None = None) -> bytes:
        """
        C{openssl cms -verify -binary} (against the test CA): the content.
        """
        out = self._out()
        args: list[str | Path] = ["cms", "-verify", "-binary", "-inform", "DER",
                                  "-in", self._file(signature), "-out", out,
                                  "-CAfile", self.pki.ca.cert_pem, "-purpose", "smimesign"]
        if content is not None:
            args += ["-content", self._file(content)]
        self._run(*args)
        return out.read_bytes()

    def cms_decrypt(self, data: bytes, recipient: Identity) -> bytes:
        """
        C{openssl cms -decrypt -binary} of DER: the content.
        """
        out = self._out()
        self._run("cms", "-decrypt", "-binary", "-inform", "DER", "-in", self._file(data),
                  "-out", out, "-recip", recipient.cert_pem, "-inkey", recipient.key_pem)
        return out.read_bytes()

    def smime_verify(self, message: bytes) -> bytes:
        """
        C{openssl smime -verify} of a whole signed message (against the test
        CA): the signed entity.
        """
        out = self._out()
        self._run("smime", "-verify", "-in", self._file(message, ".eml"), "-out", out,
                  "-CAfile", self.pki.ca.cert_pem, "-purpose", "smimesign")
        return out.read_bytes()

    def cms_smime_verify(self, message: bytes) -> bytes:
        """
        C{openssl cms -verify} of a whole signed message (S/MIME input,
        against the test CA): the signed entity.  Unlike L{smime_verify},
        it knows RSASSA-PSS.
        """
        out = self._out()
        self._run("cms", "-verify", "-in", self._file(message, ".eml"), "-out", out,
                  "-CAfile", self.pki.ca.cert_pem, "-purpose", "smimesign")
        return out.read_bytes()

    def smime_decrypt(self, message: bytes, recipient: Identity, *, oaep: bool = False) -> bytes:
        """
        Decrypt a whole message: C{openssl smime -decrypt}, or C{openssl cms
        -decrypt} for what the PKCS#7 code behind C{openssl smime} lacks:
        authEnveloped-data (GCM) and RSAES-OAEP.
        """
        out = self._out()
        _, params = content_type(message)
        gcm = params.get("smime-type", "").lower() == "authenveloped-data"
        command = "cms" if gcm or oaep else "smime"
        self._run(command, "-decrypt", "-in", self._file(message, ".eml"), "-out", out,
                  "-recip", recipient.cert_pem, "-inkey", recipient.key_pem)
        return out.read_bytes()


# gpgsm --------------------------------------------------------------------------


class GpgSM:
    """
    C{gpgsm} (GnuPG 2.2) with a throwaway home: the test CA trusted
    ("relax": no CRLs), the users' keys imported from legacy PKCS#12.

    It reads and writes DER (BER with indefinite lengths, in its output),
    never whole MIME messages, and has neither AES-GCM nor RSA-OAEP.  It
    signs and decrypts with RSA keys only (see L{__init__}).

    Call L{close} to stop the gpg-agent it starts.
    """

    # cipherd's names -> gpgsm's --cipher-algo.
    CIPHERS = {"aes128_cbc": "AES", "aes192_cbc": "AES192", "aes256_cbc": "AES256",
               "tripledes_3key": "3DES"}

    def __init__(self, home: Path, pki: TestPKI) -> None:
        self.binary = require_tool("gpgsm")
        self._gpgconf = require_tool("gpgconf")
        require_tool("gpg-agent")
        self.home = home
        self.pki = pki
        self._names = itertools.count()
        home.mkdir(mode=0o700, exist_ok=True)
        home.chmod(0o700)
        self.env = {**os.environ, "GNUPGHOME": str(home), "LC_ALL": "C"}
        (home / "gpgsm.conf").write_text("disable-crl-checks\ndisable-dirmngr\n")
        (home / "gpg-agent.conf").write_text("allow-loopback-pinentry\n")
        (home / "trustlist.txt").write_text(f"{pki.ca.sha1_fingerprint} S relax\n")
        self._started = True
        self._gpgsm("--import", pki.ca.cert_pem)
        for user in pki.users:
            assert user.p12 is not None
            # gpgsm 2.2 crashes (SIGSEGV) importing an EC private key from
            # PKCS#12: it gets EC users' certificates only, to verify.
            if isinstance(user.key, rsa.RSAPrivateKey):
                self._import_p12(user)
            else:
                self._gpgsm("--import", user.cert_pem)

    def _import_p12(self, user: Identity, attempts: int = 8) -> None:
        """
        Import a user's key and certificate from PKCS#12.

        gpgsm 2.2 fails to decrypt about one PKCS#12 file in 30 that
        openssl writes and reads back ("decryption failed ... possibly bad
        passphrase given"): it depends only on the random salts (the same
        key and certificates exported again fail at the same rate), which
        points at its PKCS#12 key derivation.  A file it cannot read is
        exported again with new salts; eight failures in a row mean a real
        problem and fail the test with gpgsm's words.
        """
        assert user.p12 is not None
        source = user.p12
        for attempt in range(attempts):
            done = self._gpgsm("--import", source, check=attempt == attempts - 1)
            if done.returncode == 0:
                return
            source = self.home / f"{user.p12.stem}-{attempt}.p12"
            write_p12(source, user.email, user.cert_pem, user.key_pem, self.pki.ca.cert_pem)

    def close(self) -> None:
        """
        Stop the agent of this home (and only of this home).
        """
        if self._started:
            self._started = False
            run([self._gpgconf, "--kill", "all"], env=self.env, check=False)

    def _gpgsm(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return run([self.binary, "--batch", "--pinentry-mode", "loopback", "--passphrase-fd", "0",
                    "--status-fd", "2", *args],
                   stdin=PASSPHRASE.encode() + b"\n", env=self.env, check=check)

    def _file(self, data: bytes) -> Path:
        path = self.home / f"data-{next(self._names):04d}.bin"
        path.write_bytes(data)
        return path

    def _out(self) -> Path:
        return self.home / f"out-{next(self._names):04d}.bin"

    # Producing.

    def encrypt(self, content: bytes, recipients: Sequence[Identity], *,
                cipher: str = "aes256_cbc") -> bytes:
        out = self._out()
        args: list[str | Path] = ["--cipher-algo", self.CIPHERS[cipher], "--output", out]
        for recipient in recipients:
            args += ["--recipient", recipient.email]
        self._gpgsm(*args, "--encrypt", self._file(content))
        return out.read_bytes()

    def sign(self, content: bytes, signer: Identity, *, detached: bool = True) -> bytes:
        out = self._out()
        self._gpgsm("--local-user", signer.email, "--output", out,
                    "--detach-sign" if detached else "--sign", self._file(content))
        return out.read_bytes()

    # Consuming.

    def verify(self, signature: bytes, content: bytes | None = None) -> bytes:
        """
        Check a signature (detached if C{content} is given): the content.
        Fails unless gpgsm reports exactly one good, valid signature.
        """
        if content is not None:
            proc = self._gpgsm("--verify", self._file(signature), self._file(content))
            verified = content
        else:
            out = self._out()
            proc = self._gpgsm("--output", out, "--verify", self._file(signature))
            verified = out.read_bytes()
        status = proc.stderr.decode(errors="replace")
        assert status.count("[GNUPG:] GOODSIG") == 1 and "[GNUPG:] VALIDSIG" in status, status
        return verified

    def decrypt(self, data: bytes) -> bytes:
        out = self._out()
        proc = self._gpgsm("--output", out, "--decrypt", self._file(data))
        status = proc.stderr.decode(errors="replace")
        assert "[GNUPG:] DECRYPTION_OKAY" in status, status
        return out.read_bytes()


def gpgsm_session(home: Path, pki: TestPKI) -> Iterator[GpgSM]:
    """
    A L{GpgSM} for a fixture to yield; its agent is stopped afterwards, even
    if setting it up failed half-way.
    """
    env = {**os.environ, "GNUPGHOME": str(home)}
    peer = None
    try:
        peer = GpgSM(home, pki)
        yield peer
    finally:
        if peer is not None:
            peer.close()
        elif shutil.which("gpgconf") and home.exists():
            run(["gpgconf", "--kill", "all"], env=env, check=False)
