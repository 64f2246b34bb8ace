"""
The OpenPGP library comparison behind cipherd.pki.pgp: Sequoia-PGP
(pysequoia), PGPy, and GnuPG driven as a subprocess, on the Thunderbird
corpus (keys read; armored messages decrypted with Alice's secret key) and
on speed (10 KB signed with Alice's Ed25519 key and encrypted to Bob's
RSA-3072 key, per second, one thread).

PGPy is not a dependency of cipherd: install it into another virtualenv
(``python3 -m venv /tmp/pgpy && /tmp/pgpy/bin/pip install pgpy``) and run
this script with that interpreter and ``PYTHONPATH`` unset to measure it;
the others are measured when pysequoia and gpg are present.

    .venv/bin/python bench/pgp_libraries.py
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

warnings.filterwarnings("ignore")

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "openpgp" / "thunderbird"
KEYS = CORPUS / "keys"
ALICE_SECRET = KEYS / "alice@openpgp.example-0xf231550c4f47e38e-secret.asc"
BOB_PUB = KEYS / "bob@openpgp.example-0xfbfcc82a015e7330-pub.asc"
DATA = os.urandom(7500).hex()[:10240].encode()
SECONDS = 3.0


def _blocks() -> list[bytes]:
    found = []
    for path in sorted((CORPUS / "eml").iterdir()):
        m = re.search(rb"-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----",
                      path.read_bytes(), re.S)
        if m:
            found.append(m.group(0).replace(b"\r\n", b"\n"))
    return found


def _rate(step: Callable[[], object]) -> float:
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < SECONDS:
        step()
        n += 1
    return n / (time.perf_counter() - started)


def _count(items: list, works: Callable[[object], object]) -> str:
    ok = 0
    for item in items:
        try:
            works(item)
            ok += 1
        except Exception:  # noqa: S112 - counting what each library refuses
            continue
    return f"{ok}/{len(items)}"


def sequoia() -> tuple[str, str, float] | None:
    try:
        import pysequoia as ps
    except ImportError:
        return None
    keys = _count(sorted(KEYS.iterdir()), lambda p: ps.Cert.split_bytes(p.read_bytes()))
    alice = ps.Tsk.from_bytes(ALICE_SECRET.read_bytes())
    decryptor = alice.decryptor()
    opened = _count(_blocks(), lambda b: ps.decrypt(b, decryptor=decryptor))
    bob, signer = ps.Cert.from_bytes(BOB_PUB.read_bytes()), alice.signer()
    return keys, opened, _rate(lambda: ps.encrypt(DATA, recipients=[bob], signer=signer))


def pgpy() -> tuple[str, str, float] | None:
    try:
        import pgpy as p  # type: ignore[import-not-found]
    except ImportError:
        return None
    keys = _count(sorted(KEYS.iterdir()), lambda path: p.PGPKey.from_blob(path.read_bytes()))
    alice, _ = p.PGPKey.from_file(str(ALICE_SECRET))
    bob, _ = p.PGPKey.from_file(str(BOB_PUB))
    opened = _count(_blocks(), lambda b: alice.decrypt(p.PGPMessage.from_blob(b)))

    def step() -> None:
        message = p.PGPMessage.new(DATA.decode())
        message |= alice.sign(message)
        bob.encrypt(message)

    return keys, opened, _rate(step)


def gnupg() -> tuple[str, str, float] | None:
    gpg = shutil.which("gpg")
    if gpg is None:
        return None
    home = tempfile.mkdtemp()
    env = dict(os.environ, GNUPGHOME=home)
    subprocess.run([gpg, "--batch", "--import", ALICE_SECRET, BOB_PUB], env=env,
                   capture_output=True, check=True)

    def imports(path: object) -> None:
        probe = tempfile.mkdtemp()
        proc = subprocess.run([gpg, "--batch", "--import", str(path)], capture_output=True,
                              env=dict(os.environ, GNUPGHOME=probe), check=False)
        shutil.rmtree(probe, ignore_errors=True)
        if proc.returncode != 0:
            raise ValueError(proc.stderr)

    def decrypts(block: object) -> None:
        proc = subprocess.run([gpg, "--batch", "--status-fd", "1", "-d"], input=block,
                              env=env, capture_output=True, check=False)
        if b"DECRYPTION_OKAY" not in proc.stdout:
            raise ValueError("not decrypted")

    keys = _count(sorted(KEYS.iterdir()), imports)
    opened = _count(_blocks(), decrypts)
    rate = _rate(lambda: subprocess.run(
        [gpg, "--batch", "--trust-model", "always", "-a", "-s", "-e", "-u",
         "alice@openpgp.example", "-r", "bob@openpgp.example"], input=DATA, env=env,
        capture_output=True, check=True))
    shutil.rmtree(home, ignore_errors=True)
    return keys, opened, rate


def main() -> None:
    print(f"{'library':22} {'keys read':>10} {'decrypted':>10} {'sign+encrypt 10 KB/s':>21}")
    print("-" * 66)
    for name, measure in (("Sequoia (pysequoia)", sequoia), ("PGPy", pgpy),
                          ("gpg (subprocess)", gnupg)):
        found = measure()
        if found is None:
            print(f"{name:22} {'not installed':>10}")
            continue
        keys, opened, rate = found
        print(f"{name:22} {keys:>10} {opened:>10} {rate:21.0f}")


if __name__ == "__main__":
    main()
