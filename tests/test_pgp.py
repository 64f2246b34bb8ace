"""
PGP: keys read and judged as the Thunderbird corpus says, the keyring in
the database, the policy chain (S/MIME, then PGP, then webmail), and what
the gateway sends read back by GnuPG (C{gpg}) and Sequoia (C{sq}).
"""

from __future__ import annotations

import email
import email.policy
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from cipherd.pki import smime
from cipherd.pki.keyring import EncryptionKeys, IKeyring, Keyring
from cipherd.pki.pgp import ENCRYPT, IOpenPGP, PGPError, SequoiaOpenPGP
from cipherd.settings import GLOBAL
from cipherd.store import Store, schema
from cipherd.testing import SynchronousRunner, migrated_store, result_of
from cipherd.testing.pgp import MemoryKeyring
from tests.openpgp_keys import (
    ALICE_PUB,
    ALICE_SECRET,
    ALICE_SECRET_PP,
    BOB_PUB,
    BOB_SECRET,
    CAROL_REVOKED,
    EDDIE_PUB,
    KEYS,
)
from tests.peers import make_pki, require_tool, run
from tests.sink import Sink
from tests.test_gateway import NOW, RECEIVED, World, pki  # noqa: F401 - the fixture
from tests.test_gateway_appliance import Gateway, upload
from tests.test_mta_appliance import api

ALICE_FPR = "eb85bb5fa33a75e15e944e63f231550c4f47e38e"
BOB_FPR = "d1a66e1a23b182c9980f788cfbfcc82a015e7330"

OPENPGP = SequoiaOpenPGP()
# When the corpus keys are judged: after the newest was made (2026-08-19).
JUDGED = 1796083200.0  # 2026-12-01


# Keys ---------------------------------------------------------------------------

# file: (primary key id, emails, encryption problem or None, has secret)
CORPUS_KEYS = {
    "alice@openpgp.example-0xf231550c4f47e38e-pub.asc":
        ("f231550c4f47e38e", ("alice@openpgp.example",), None, False),
    "bob@openpgp.example-0xfbfcc82a015e7330-secret.asc":
        ("fbfcc82a015e7330", ("bob@openpgp.example",), None, True),
    "eddie@openpgp.example-0x15e9357d2c2395c0-pub.asc":
        ("15e9357d2c2395c0", ("eddie@openpgp.example",), "the key expired on 2016-12-31", False),
    "carol@pgp.icu-0xEF2FD01608AFD744-revoked-secret.asc":
        ("ef2fd01608afd744", ("carol@pgp.icu",), "the key is revoked", True),
    "revoked-then-signed.pgp":
        ("be7d831041735bb9", ("revoked-then-signed@example.org",), "the key is revoked", False),
    "expired-enc-subkey.pub.asc":
        ("b92261ce78f6208e", ("expired-enc-subkey@example.org",),
         "every encryption subkey of the key is expired or revoked", False),
    "sign-subkey-only-pub.asc":
        ("5f97dc942d7d765e", ("sign-subkey-only@openpgp.example",),
         "the key has no encryption subkey", False),
    "encryption-subkey-bad.pgp":
        ("54e9563fb183ffc6", ("encryption-subkey@example.org",), None, False),
    "DC1A523730F62AE8-pub-does_not_expire-ends_with_whitespace.pgp":
        ("dc1a523730f62ae8", ("test@example.com",), None, False),
    "key-binary.gpg": ("a2d1b914f722004e", ("test-binary@example.com",), None, False),
    "key-with-utf8-comment.asc": ("852c55e6d2afd7ef", ("test-unicode@example.com",), None, False),
    "pgp-v6-pub.asc": ("cb186c4f0609a697", (), None, False),
}


@pytest.mark.parametrize("name", sorted(CORPUS_KEYS))
def test_corpus_keys_are_read_and_judged_as_thunderbird_does(name: str) -> None:
    key_id, emails, problem, secret = CORPUS_KEYS[name]
    (key,) = OPENPGP.read_keys((KEYS / name).read_bytes())
    assert (key.key_id, key.emails, key.secret is not None) == (key_id, emails, secret)
    found = key.encryption_problem(JUDGED)
    assert (found is None) == (problem is None) and (problem is None or problem in found), found
    if name.startswith("pgp-v6"):
        assert key.version == 6 and len(key.fingerprint) == 64


@pytest.mark.parametrize(("name", "why"), [
    ("alice-v5-pub.asc", "unknown version"),  # LibrePGP v5: Thunderbird refuses it too
    ("apple-pub.asc", "Malformed"),  # broken armor
    ("invalid-pubkey-nosigs.pgp", "No binding signature"),
    ("alice@openpgp.example-0xf231550c4f47e38e-rev.asc", "No OpenPGP key"),
])
def test_keys_that_cannot_be_used_are_refused_with_a_reason(name: str, why: str) -> None:
    with pytest.raises(PGPError, match=why) as caught:
        OPENPGP.read_keys((KEYS / name).read_bytes())
    assert "\n" not in str(caught.value)  # one line, never the library's backtrace


def test_encryption_goes_only_to_live_subkeys() -> None:
    """
    The library itself would encrypt to the expired subkey of a key with no
    live one; we refuse that key, and the encryption of a valid key's
    message names only its live encryption subkey.
    """
    assert verifyObject(IOpenPGP, OPENPGP)
    (expired,) = OPENPGP.read_keys((KEYS / "expired-enc-subkey.pub.asc").read_bytes())
    with pytest.raises(PGPError, match="expired or revoked"):
        OPENPGP.encrypt(b"x", [expired], now=NOW.timestamp())
    (bad,) = OPENPGP.read_keys((KEYS / "encryption-subkey-bad.pgp").read_bytes())
    assert [k.key_id for k in bad.usable_keys(ENCRYPT, NOW.timestamp())] == ["bc63472a109d5859"]


def test_a_wrong_passphrase_is_said_so() -> None:
    (key,) = OPENPGP.read_keys(ALICE_SECRET_PP.read_bytes())
    assert key.secret_protected
    with pytest.raises(PGPError, match=r"passphrase .* is wrong or missing"):
        OPENPGP.check_passphrase(key, "wrong")
    OPENPGP.check_passphrase(key, "alice-passphrase")


# The keyring --------------------------------------------------------------------

def _stores() -> Iterator[str | None]:
    yield None  # SQLite in memory
    if os.environ.get("CIPHERD_TEST_POSTGRES_URL"):
        yield os.environ["CIPHERD_TEST_POSTGRES_URL"]


@pytest.fixture(params=list(_stores()), ids=lambda url: "postgresql" if url else "sqlite")
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    store = migrated_store(request.param)
    # A PostgreSQL database is shared by the whole run: each test starts
    # with an empty keyring.
    with store.engine.begin() as conn:
        for table in (schema.pgp_key_emails, schema.pgp_key_ids, schema.pgp_keys):
            conn.execute(table.delete())
    yield store
    store.close()


def _keyrings(store: Store, clock: Clock) -> list[IKeyring]:
    return [Keyring(store, clock, os.urandom(32), SynchronousRunner(), OPENPGP),
            MemoryKeyring(clock)]


@pytest.mark.parametrize("which", ["database", "memory"])
def test_the_keyring_finds_trusts_and_forgets(store: Store, which: str) -> None:
    clock = Clock()
    clock.advance(time.time())  # keys generated here are made now
    keyring = _keyrings(store, clock)[0 if which == "database" else 1]
    assert verifyObject(IKeyring, keyring)
    for path in (BOB_PUB, EDDIE_PUB, CAROL_REVOKED):
        result_of(keyring.import_keys(path.read_bytes()))
    (imported,) = result_of(keyring.import_keys(ALICE_PUB.read_bytes(), trusted=False))
    assert imported.new and not imported.secret
    # By any spelling of the address, and by key id of a subkey.
    found = result_of(keyring.encryption_keys("Bob@OpenPGP.Example"))
    assert [k.fingerprint for k in found.keys] == [BOB_FPR]
    assert [s.fingerprint for s in result_of(keyring.by_key_id("7C2FAA4DF93C37B2"))] == [BOB_FPR]
    # Untrusted, expired, revoked: not encrypted to, and why.
    assert result_of(keyring.encryption_keys("alice@openpgp.example")) == EncryptionKeys(
        (), (f"PGP key {ALICE_FPR.upper()}: the key is not trusted",))
    assert "expired on 2016-12-31" in result_of(
        keyring.encryption_keys("eddie@openpgp.example")).reason()
    assert "revoked" in result_of(keyring.encryption_keys("carol@pgp.icu")).reason()
    assert result_of(keyring.encryption_keys("nobody@example.org")).reason() == (
        "there is no PGP key for the recipient")
    # The administrator trusts Alice's key: used at once.
    assert result_of(keyring.set_trusted(ALICE_FPR.upper(), True))
    assert result_of(keyring.encryption_keys("alice@openpgp.example")).keys
    # Importing it again keeps the decision unless one is given.
    result_of(keyring.import_keys(ALICE_PUB.read_bytes(), trusted=None))
    assert result_of(keyring.get(ALICE_FPR)).trusted  # type: ignore[union-attr]
    assert result_of(keyring.count()) == 4
    assert [k.fingerprint for k in result_of(keyring.listing(text="babbage"))] == [BOB_FPR]
    assert result_of(keyring.count(text="%")) == result_of(keyring.count(text="_")) == 0
    assert [k.fingerprint for k in result_of(keyring.listing(email="BOB@openpgp.example"))] == [
        BOB_FPR]
    assert result_of(keyring.delete(BOB_FPR))
    assert not result_of(keyring.encryption_keys("bob@openpgp.example")).keys
    assert not result_of(keyring.delete(BOB_FPR))
    generated = result_of(keyring.generate("dora@example.org", "Dora"))
    assert generated.trusted and generated.key.secret is not None
    assert result_of(keyring.signer("dora@example.org")) is not None


@pytest.fixture(scope="module")
def certified(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """
    GnuPG's keys: two introducers (RSA and ECDSA P-256), Tom's key
    (Ed25519/Cv25519) with two user IDs, of which the RSA introducer
    certified one and the ECDSA introducer both, and Uma's, certified by
    nobody.
    """
    home = tmp_path_factory.mktemp("introducers") / "gnupg"
    home.mkdir(mode=0o700)
    env = dict(os.environ, GNUPGHOME=str(home))
    gpg = require_tool("gpg")
    for user_id, algorithm in (("Ivy <ivy@ca.example>", "rsa2048"),
                               ("Ian <ian@ca.example>", "nistp256"),
                               ("Tom <tom@example.net>", "future-default"),
                               ("Uma <uma@example.net>", "future-default")):
        run([gpg, "--batch", "--passphrase", "", "--quick-gen-key", user_id, algorithm,
             "default", "never"], env=env)
    tom = run([gpg, "--batch", "--with-colons", "--list-keys", "tom@example.net"],
              env=env).stdout.decode()
    fingerprint = next(line.split(":")[9] for line in tom.splitlines()
                       if line.startswith("fpr:"))
    run([gpg, "--batch", "--quick-add-uid", fingerprint, "Tom <tom@work.example>"], env=env)
    run([gpg, "--batch", "--yes", "--default-key", "ivy@ca.example", "--quick-sign-key",
         fingerprint, "Tom <tom@example.net>"], env=env)
    run([gpg, "--batch", "--yes", "--default-key", "ian@ca.example", "--quick-sign-key",
         fingerprint], env=env)
    return {name: run([gpg, "--batch", "--export", f"{name}@"], env=env).stdout
            for name in ("ivy", "ian", "tom", "uma")}


@pytest.mark.parametrize("which", ["database", "memory"])
def test_keys_certified_by_a_trusted_introducer_are_trusted(
        store: Store, which: str, certified: dict[str, bytes]) -> None:
    clock = Clock()
    clock.advance(time.time() + 60)
    keyring = _keyrings(store, clock)[0 if which == "database" else 1]
    for name in ("ivy", "ian"):
        result_of(keyring.import_keys(certified[name]))
    for name in ("tom", "uma"):
        result_of(keyring.import_keys(certified[name], trusted=False))
    (ivy,) = result_of(keyring.listing(email="ivy@ca.example"))
    (ian,) = result_of(keyring.listing(email="ian@ca.example"))
    (tom,) = result_of(keyring.listing(email="tom@example.net"))
    assert "the key is not trusted" in result_of(
        keyring.encryption_keys("tom@example.net")).reason()
    # Ivy (RSA) certified tom@example.net only; Tom's other address and
    # Uma (certified by nobody) stay untrusted.
    assert result_of(keyring.set_introducer(ivy.fingerprint, True))
    assert [k.fingerprint for k in result_of(keyring.encryption_keys("tom@example.net")).keys
            ] == [tom.fingerprint]
    assert result_of(keyring.keys_for("tom@example.net"))[0].introduced_by == ivy.fingerprint
    assert not result_of(keyring.encryption_keys("tom@work.example")).keys
    assert not result_of(keyring.encryption_keys("uma@example.net")).keys
    # Ian (ECDSA P-256) certified both of Tom's.
    assert result_of(keyring.set_introducer(ian.fingerprint, True))
    assert result_of(keyring.encryption_keys("tom@work.example")).keys
    # An introducer no longer trusted introduces nobody.
    for introducer in (ivy, ian):
        result_of(keyring.set_trusted(introducer.fingerprint, False))
    assert not result_of(keyring.encryption_keys("tom@example.net")).keys
    assert not result_of(keyring.get(tom.fingerprint)).trusted  # type: ignore[union-attr]
    assert result_of(keyring.get(ivy.fingerprint)).introducer  # type: ignore[union-attr]


def test_secret_keys_are_sealed_with_their_passphrase(store: Store) -> None:
    clock = Clock()
    clock.advance(NOW.timestamp())
    kek = os.urandom(32)
    keyring = Keyring(store, clock, kek, SynchronousRunner(), OPENPGP)
    with pytest.raises(PGPError, match="wrong or missing"):
        result_of(keyring.import_keys(ALICE_SECRET_PP.read_bytes(), passphrase="wrong"))
    assert result_of(keyring.count()) == 0  # nothing stored
    result_of(keyring.import_keys(ALICE_SECRET_PP.read_bytes(), passphrase="alice-passphrase"))
    async def stored() -> bytes:
        return await store.read(lambda conn: conn.exec_driver_sql(
            "SELECT secret FROM pgp_keys").scalar())

    row = result_of(stored())
    assert row and b"alice-passphrase" not in row and b"PRIVATE KEY" not in row
    # Another node with the same data dir key signs with it.
    other = Keyring(store, clock, kek, SynchronousRunner(), OPENPGP)
    key, signer = result_of(other.signer("alice@openpgp.example"))  # type: ignore[misc]
    assert key.fingerprint == ALICE_FPR and signer is not None
    # One with another key cannot open it, and says there is no signer.
    stranger = Keyring(store, clock, os.urandom(32), SynchronousRunner(), OPENPGP)
    assert result_of(stranger.signer("alice@openpgp.example")) is None


def test_another_nodes_change_is_seen_within_a_second(store: Store) -> None:
    clock = Clock()
    clock.advance(NOW.timestamp())
    here = Keyring(store, clock, os.urandom(32), SynchronousRunner(), OPENPGP)
    there = Keyring(store, clock, os.urandom(32), SynchronousRunner(), OPENPGP)
    assert not result_of(here.encryption_keys("bob@openpgp.example")).keys  # kept: none
    result_of(there.import_keys(BOB_PUB.read_bytes()))
    assert not result_of(here.encryption_keys("bob@openpgp.example")).keys  # still kept
    clock.advance(1.0)
    assert result_of(here.encryption_keys("bob@openpgp.example")).keys


# The chain and the gateway ----------------------------------------------------------

TEXT = (b"From: Alice Lovelace <alice@openpgp.example>\r\nTo: bob@openpgp.example\r\n"
        b"Subject: Gr\xc3\xbc\xc3\x9fe\r\nMessage-ID: <pgp-1@openpgp.example>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\nSundays are nothing without callaloo.\r\n"
        b"Gr\xc3\xbc\xc3\x9fe, " + b"x" * 1500 + b"\r\n")
ATTACHED = (b"From: alice@openpgp.example\r\nTo: bob@openpgp.example\r\nSubject: figures\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
            b"--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>see attached</p>\r\n"
            b"--b1\r\nContent-Type: application/octet-stream; name=data.bin\r\n"
            b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; "
            b"filename=data.bin\r\n\r\nAAECA//+/fz7\r\n--b1--\r\n")


class Peers:
    """
    GnuPG and Sequoia with Bob's and Alice's secret keys.
    """

    def __init__(self, home: Path) -> None:
        self.gpg = require_tool("gpg")
        self.sq = require_tool("sq")
        self.home = home
        home.mkdir(mode=0o700, exist_ok=True)
        self.env = dict(os.environ, GNUPGHOME=str(home))
        run([self.gpg, "--batch", "--import", BOB_SECRET, ALICE_SECRET], env=self.env)

    def gpg_decrypt(self, armored: bytes) -> tuple[bytes, str]:
        proc = run([self.gpg, "--batch", "--status-fd", "2", "--decrypt"], stdin=armored,
                   env=self.env)
        return proc.stdout, proc.stderr.decode(errors="replace")

    def sq_decrypt(self, armored: bytes, secret: Path, signer: Path | None = None
                   ) -> bytes:
        """
        Decrypted by Sequoia's C{sq}; with C{signer}, its signature must be
        good (C{sq} exits non-zero otherwise).
        """
        args: list[Any] = [self.sq, "decrypt", "--recipient-key", secret]
        if signer is not None:
            args += ["--signer-cert", signer]
        return run(args, stdin=armored).stdout


@pytest.fixture
def peers(tmp_path: Path) -> Peers:
    return Peers(tmp_path / "gnupg")


def _encrypted_part(message: bytes) -> bytes:
    parsed = email.message_from_bytes(message, policy=email.policy.compat32)
    assert parsed.get_content_type() == "multipart/encrypted"
    assert parsed.get_param("protocol") == "application/pgp-encrypted"
    version, encrypted = parsed.get_payload()
    assert version.get_content_type() == "application/pgp-encrypted"
    assert version.get_payload().strip() == "Version: 1"
    assert encrypted.get_content_type() == "application/octet-stream"
    return encrypted.get_payload().encode()


def _pgp_world(pki: dict[str, Any]) -> World:  # noqa: F811
    world = World(pki)
    world.set(GLOBAL, encrypt_mode="mandatory", webmail_enabled=True)
    world.tunnel_certificates()
    return world


def test_a_recipient_with_only_a_pgp_key_gets_pgp_mime_that_gpg_and_sq_read(
        pki: dict[str, Any], peers: Peers, log_lines: list[str]) -> None:  # noqa: F811
    world = _pgp_world(pki)
    result_of(world.keyring.import_keys(BOB_PUB.read_bytes()))
    result_of(world.keyring.import_keys(ALICE_SECRET.read_bytes()))  # the sender's own key
    parts = world.process("bob@openpgp.example", content=RECEIVED + TEXT,
                          sender="alice@openpgp.example")
    sent = parts[("bob@openpgp.example",)].content
    assert b"callaloo" not in sent and b"Subject: Gr\xc3\xbc\xc3\x9fe" in sent
    armored = _encrypted_part(sent)
    inner, status = peers.gpg_decrypt(armored)
    assert "DECRYPTION_OKAY" in status and "GOODSIG F231550C4F47E38E" in status, status
    # The whole MIME entity, its header fields protected inside, 8-bit text intact.
    assert b'protected-headers="v1"' in inner and b"\r\nSubject: Gr\xc3\xbc\xc3\x9fe\r\n" in inner
    assert inner.endswith(b"Gr\xc3\xbc\xc3\x9fe, " + b"x" * 1500 + b"\r\n")
    assert peers.sq_decrypt(armored, BOB_SECRET, ALICE_PUB) == inner
    assert any("PGP signed and encrypted (PGP/MIME); Recipients: bob@openpgp.example; Keys: "
               + BOB_FPR.upper() in line for line in log_lines), log_lines


def test_several_recipients_rsa_and_curve25519_lf_input_and_attachments(
        pki: dict[str, Any], peers: Peers) -> None:  # noqa: F811
    world = _pgp_world(pki)
    world.set(GLOBAL, pgp_sign=False)
    for path in (BOB_PUB, ALICE_PUB):
        result_of(world.keyring.import_keys(path.read_bytes()))
    lf_only = (RECEIVED + ATTACHED).replace(b"\r\n", b"\n")
    parts = world.process("bob@openpgp.example", "alice@openpgp.example", content=lf_only,
                          sender="someone@example.com")
    sent = parts[("bob@openpgp.example", "alice@openpgp.example")].content
    armored = _encrypted_part(sent)
    inner, status = peers.gpg_decrypt(armored)
    assert "DECRYPTION_OKAY" in status and "GOODSIG" not in status
    assert peers.sq_decrypt(armored, ALICE_SECRET) == inner  # Alice (Cv25519) too
    opened = email.message_from_bytes(inner)
    assert opened.get_content_type() == "multipart/mixed"
    attachment = opened.get_payload()[1]
    assert attachment.get_payload(decode=True) == bytes.fromhex("00010203fffefdfcfb")


def test_inline_pgp_for_text_and_pgp_mime_for_anything_else(
        pki: dict[str, Any], peers: Peers) -> None:  # noqa: F811
    world = _pgp_world(pki)
    world.set(GLOBAL, pgp_encoding="inline", pgp_sign=False)
    result_of(world.keyring.import_keys(BOB_PUB.read_bytes()))
    text = world.process("bob@openpgp.example", content=RECEIVED + TEXT)
    sent = text[("bob@openpgp.example",)].content
    head, _, body = sent.partition(b"\r\n\r\n")
    assert b"Content-Type: text/plain; charset=us-ascii" in head
    assert body.startswith(b"-----BEGIN PGP MESSAGE-----")
    plain, status = peers.gpg_decrypt(body)
    assert "DECRYPTION_OKAY" in status
    assert plain == ("Sundays are nothing without callaloo.\r\nGrüße, " + "x" * 1500
                     + "\r\n").encode()
    mixed = world.process("bob@openpgp.example", content=RECEIVED + ATTACHED)
    _encrypted_part(mixed[("bob@openpgp.example",)].content)


def test_the_chain_smime_first_then_pgp_then_webmail(
        pki: dict[str, Any], log_lines: list[str]) -> None:  # noqa: F811
    world = _pgp_world(pki)
    # bob@partner.example has an S/MIME certificate; a PGP key too.
    result_of(world.keyring.generate("bob@partner.example"))
    result_of(world.keyring.import_keys(EDDIE_PUB.read_bytes()))
    result_of(world.keyring.import_keys(CAROL_REVOKED.read_bytes()))
    result_of(world.keyring.import_keys(BOB_PUB.read_bytes(), trusted=False))
    parts = world.process("bob@partner.example", "eddie@openpgp.example", "carol@pgp.icu",
                          "bob@openpgp.example")
    assert smime.classify(parts[("bob@partner.example",)].content).kind == "enveloped-data"
    tunnel = parts[("eddie@openpgp.example", "carol@pgp.icu", "bob@openpgp.example")]
    assert tunnel.relay == "webmail"
    for recipient, why in (("eddie@openpgp.example", "the key expired on 2016-12-31"),
                           ("carol@pgp.icu", "the key is revoked"),
                           ("bob@openpgp.example", "the key is not trusted")):
        assert any(line.startswith("PGP not used: PGP key ") and why in line
                   and f"Recipient: {recipient}" in line for line in log_lines), (recipient,
                                                                                 log_lines)
    # Trusted now: PGP, not webmail.
    result_of(world.keyring.set_trusted(BOB_FPR, True))
    again = world.process("bob@openpgp.example")
    _encrypted_part(again[("bob@openpgp.example",)].content)
    # PGP disabled for the recipient: the next method.
    world.set(GLOBAL, pgp_enabled=False)
    assert world.process("bob@openpgp.example")[("bob@openpgp.example",)].relay == "webmail"


# In a running appliance ------------------------------------------------------------

@pytest.mark.e2e
def test_a_running_appliance_sends_pgp_that_gpg_reads_and_restarts_with_the_keyring(
        appliance: Any, gateway_pki: Any, peers: Peers) -> None:
    """
    Keys imported through the API (the sender's secret with its passphrase,
    the recipient's certificate), mail sent with swaks: the sink gets
    PGP/MIME that gpg decrypts and whose signature it verifies; after a
    restart (the keys sealed in the database), the same again.
    """
    sink = Sink()
    try:
        gateway = Gateway(appliance, gateway_pki, sink)
        gateway.settings("global", encrypt_mode="mandatory")
        gateway.settings("domains/openpgp.example", locality="external")
        api(appliance, "PATCH", "/mta", {"transports": [
            {"domain": domain, "host": "[127.0.0.1]", "port": sink.port}
            for domain in ("example.org", "openpgp.example")]})
        upload(appliance, "/pgp/keys", BOB_PUB.read_bytes())
        upload(appliance, "/pgp/keys?password=alice-passphrase", ALICE_SECRET_PP.read_bytes())
        for round_ in range(2):
            queue_id = gateway.send("bob@openpgp.example", data=TEXT,
                                    sender="alice@openpgp.example")
            (captured,) = sink.wait_for(round_ + 1)[round_:]
            gateway.log("mpa", f"{queue_id}: PGP signed and encrypted (PGP/MIME)")
            inner, status = peers.gpg_decrypt(_encrypted_part(captured.content))
            assert "DECRYPTION_OKAY" in status and "GOODSIG F231550C4F47E38E" in status
            assert b"Sundays are nothing without callaloo." in inner
            if round_ == 0:
                appliance.restart()
    finally:
        sink.close()


@pytest.fixture(scope="module")
def gateway_pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_pki(tmp_path_factory.mktemp("pgp-pki"), datetime.now(UTC))


def test_a_certification_revoked_or_expired_introduces_no_more(
        certified: dict[str, bytes], tmp_path: Path) -> None:
    """
    GnuPG revokes Ivy's certification of Tom: Tom is no longer introduced
    by her; a certification made to expire introduces only until then.
    """
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = dict(os.environ, GNUPGHOME=str(home))
    gpg = require_tool("gpg")
    clock = Clock()
    clock.advance(time.time() + 60)
    keyring = MemoryKeyring(clock)
    for name in ("ivy", "tom"):
        result_of(keyring.import_keys(certified[name], trusted=name == "ivy"))
    (ivy,) = result_of(keyring.listing(email="ivy@ca.example"))
    result_of(keyring.set_introducer(ivy.fingerprint, True))
    (tom,) = result_of(keyring.keys_for("tom@example.net"))
    assert tom.introduced_by == ivy.fingerprint and tom.introduced_until is None
    # The same certification, then revoked: the secret of Ivy is not at hand
    # here, so the revocation is made by a key of our own certifying Tom.
    signer = OPENPGP.generate("Rex <rex@ca.example>")
    run([gpg, "--batch", "--import"], stdin=signer.secret, env=env)
    run([gpg, "--batch", "--import"], stdin=certified["tom"], env=env)
    tom_fpr = tom.fingerprint.upper()
    run([gpg, "--batch", "--yes", "--default-key", "rex@ca.example", "--default-cert-expire",
         "1d", "--quick-sign-key", tom_fpr, "Tom <tom@example.net>"], env=env)
    expiring = run([gpg, "--batch", "--export", tom_fpr], env=env).stdout
    result_of(keyring.import_keys(signer.public))
    result_of(keyring.set_introducer(signer.fingerprint, True))
    result_of(keyring.set_introducer(ivy.fingerprint, False))
    result_of(keyring.import_keys(expiring, trusted=False))
    (tom,) = result_of(keyring.keys_for("tom@example.net"))
    assert tom.introduced_by == signer.fingerprint
    assert tom.introduced_until is not None
    assert result_of(keyring.encryption_keys("tom@example.net")).keys
    clock.advance(2 * 24 * 3600)
    assert not result_of(keyring.encryption_keys("tom@example.net")).keys
    run([gpg, "--batch", "--yes", "--default-key", "rex@ca.example", "--quick-revoke-sig",
         tom_fpr, "rex@ca.example"], env=env)
    revoked = run([gpg, "--batch", "--export", tom_fpr], env=env).stdout
    clock.advance(-2 * 24 * 3600 + 60)
    result_of(keyring.import_keys(revoked, trusted=False))
    assert not result_of(keyring.keys_for("tom@example.net"))[0].introduced_by
