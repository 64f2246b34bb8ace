"""
The data dir: what cipherd creates on first start and reuses afterwards.

    <data_dir>/            mode 0700
      cipherd.db           the SQLite store (unless database.url is set)
      kek                  key-encryption key for secrets at rest, mode 0600
      tls/cert.pem         self-signed certificate for the sites and STARTTLS
      tls/key.pem          its private key, mode 0600
      logs/                mta.log, mpa.log
      spool/               the mail queue (cipherd.smtp.spool)
      tmp/                 backups on their way to a download, emptied at start

Server secrets that administrators may edit (server secret, system mail
secret) are settings and live in the database; see ``cipherd.bootstrap``.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cipherd.pki.certs import self_signed_builder
from cipherd.pki.sitetls import GENERATED_ORGANISATION

T = TypeVar("T")

KEK_BYTES = 32
TLS_VALIDITY = timedelta(days=3650)


@dataclass(frozen=True)
class DataDir:
    """
    The paths inside a data dir.
    """

    root: Path

    @property
    def kek(self) -> Path:
        return self.root / "kek"

    @property
    def tls_certificate(self) -> Path:
        return self.root / "tls" / "cert.pem"

    @property
    def tls_key(self) -> Path:
        return self.root / "tls" / "key.pem"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def scratch(self) -> Path:
        return self.root / "tmp"


def write_secret(path: Path, write: Callable[[IO[bytes]], T]) -> T:
    """
    Create C{path} with mode 0600 (never readable by others, not even for an
    instant) through C{write}, fsync it, then rename it into place: C{path}
    is whole or as it was.

    @return: C{write}'s result.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            result = write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return result


def write_secret_file(path: Path, data: bytes) -> None:
    """
    L{write_secret} of C{data}.
    """
    write_secret(path, lambda out: out.write(data))


def make_self_signed_tls(hostname: str, now: datetime) -> tuple[bytes, bytes]:
    """
    A self-signed server certificate for C{hostname}, 127.0.0.1 and ::1.

    @return: (certificate PEM, private key PEM)
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, hostname),
            # How Admin → TLS certificate tells it from an uploaded one.
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, GENERATED_ORGANISATION),
        ]
    )
    cert = (
        self_signed_builder(name, key.public_key(), now, TLS_VALIDITY)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(hostname),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def prepare_data_dir(root: Path, *, tls_hostname: str, now: datetime) -> DataDir:
    """
    Create whatever is missing in the data dir; keep whatever exists.

    @param root: the data dir.
    @param tls_hostname: the name for a newly created TLS certificate.
    @param now: the current time, for the certificate's validity.
    @return: the data dir's paths.
    """
    data = DataDir(root)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    (root / "tls").mkdir(mode=0o700, exist_ok=True)
    data.logs.mkdir(mode=0o700, exist_ok=True)
    # What a download left behind when the process stopped mid-way.
    for left in data.scratch.glob("*") if data.scratch.is_dir() else ():
        left.unlink(missing_ok=True)
    if not data.kek.exists():
        write_secret_file(data.kek, secrets.token_bytes(KEK_BYTES))
    if not (data.tls_certificate.exists() and data.tls_key.exists()):
        cert_pem, key_pem = make_self_signed_tls(tls_hostname, now)
        write_secret_file(data.tls_key, key_pem)
        write_secret_file(data.tls_certificate, cert_pem)
        data.tls_certificate.chmod(0o644)
    return data


def read_kek(data: DataDir) -> bytes:
    """
    The key-encryption key.

    @raise ValueError: the file is not a key of the expected size.
    """
    kek = data.kek.read_bytes()
    if len(kek) != KEK_BYTES:
        raise ValueError(f"{data.kek}: expected {KEK_BYTES} bytes, found {len(kek)}")
    return kek


