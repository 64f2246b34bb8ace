"""
The Thunderbird corpus's OpenPGP test keys the PGP tests use (see
../shared/corpus/README.md, "openpgp/thunderbird"): files, passphrase and
fingerprints.
"""

from pathlib import Path

KEYS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "openpgp" / "thunderbird" \
    / "keys"
BOB_FILE = "bob@openpgp.example-0xfbfcc82a015e7330-pub.asc"
ALICE_SECRET_FILE = "alice@openpgp.example-0xf231550c4f47e38e-secret-with-pp.asc"
ALICE_PASSPHRASE = "alice-passphrase"
EDDIE_FILE = "eddie@openpgp.example-0x15e9357d2c2395c0-pub.asc"  # expired
CAROL_FILE = "carol@pgp.icu-0xEF2FD01608AFD744-revoked-secret.asc"  # revoked

BOB = "D1A66E1A23B182C9980F788CFBFCC82A015E7330"
ALICE = "EB85BB5FA33A75E15E944E63F231550C4F47E38E"
EDDIE = "4CC3798FDDF4D0BB147CDC2E15E9357D2C2395C0"
CAROL = "AD2FA42B12943598D9EFBE2FEF2FD01608AFD744"

ALICE_PUB = KEYS / "alice@openpgp.example-0xf231550c4f47e38e-pub.asc"
ALICE_SECRET = KEYS / "alice@openpgp.example-0xf231550c4f47e38e-secret.asc"
ALICE_SECRET_PP = KEYS / ALICE_SECRET_FILE
BOB_PUB = KEYS / BOB_FILE
BOB_SECRET = KEYS / "bob@openpgp.example-0xfbfcc82a015e7330-secret.asc"
EDDIE_PUB = KEYS / EDDIE_FILE
CAROL_REVOKED = KEYS / CAROL_FILE
