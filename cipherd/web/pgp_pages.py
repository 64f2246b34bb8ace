"""
Admin → PGP keys: the OpenPGP keyring, built as the certificate pages are
(L{cipherd.web.pki_pages}): a list (keys that cannot be encrypted to now
greyed with why, trust and secret keys marked), import of files or pasted
armored keys with a passphrase and *trusted*, details with *download*,
*trust* / *untrust* and *delete*, and *generate key*.

User IDs are whatever the key's owner wrote: the templates show them
auto-escaped, never marked safe.
"""

from __future__ import annotations

import pysequoia
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from cipherd.pki.keyring import ImportedKey, StoredKey
from cipherd.pki.pgp import PGPError
from cipherd.web.auth import AdminSession
from cipherd.web.backend import FINGERPRINT, PGP_MARKS, generated_key_problems
from cipherd.web.common import (
    UPLOAD_DEADLINE,
    SiteApp,
    arg,
    attachment,
    redirect,
    request_deadline,
)
from cipherd.web.pages import AdminPages, authenticated
from cipherd.web.pki_pages import (
    MAX_SEARCH_LENGTH,
    PAGE_SIZE,
    TOO_LARGE,
    page_of,
    too_large,
    upload,
)

# RFC 3156 §7: the media type of OpenPGP keys.
PGP_KEYS_TYPE = b"application/pgp-keys"
# How a fingerprint is written for people: groups of four hex digits.
_GROUP = 4

log = Logger(namespace="cipherd.admin")

# Where a key came from, as the pages say it.
SOURCES = {"admin": "imported", "generated": "generated here",
           "wkd": "found in a Web Key Directory", "autocrypt": "collected from Autocrypt"}


def grouped(fingerprint: str) -> str:
    """
    C{fingerprint} in upper case, in groups of four digits, as OpenPGP
    programs print it (and people compare it, read out on the phone).
    """
    digits = fingerprint.upper()
    return " ".join(digits[i:i + _GROUP] for i in range(0, len(digits), _GROUP))


def send_armored_key(request: IRequest, stored: StoredKey) -> bytes:
    """
    C{stored}'s certificate (no secrets), armored, as a file to download:
    C{<FINGERPRINT>.asc}, C{application/pgp-keys}.
    """
    attachment(request, PGP_KEYS_TYPE, f"{stored.fingerprint.upper()}.asc")
    armored: str = pysequoia.armor(stored.key.public, pysequoia.ArmorKind.PublicKey)
    return armored.encode()


class PGPPages(AdminPages):
    """
    Mounted at C{/pgp/} of the admin site.
    """

    app = SiteApp()

    def _no_such_key(self, request: IRequest, session: AdminSession) -> bytes:
        return self.not_found(request, session, "There is no such PGP key.")

    # List ------------------------------------------------------------------

    async def _listing_page(self, request: IRequest, session: AdminSession,
                            imported: list[ImportedKey] | None = None) -> bytes:
        text = (arg(request, "q") or "").strip()[:MAX_SEARCH_LENGTH]
        keyring = self.backend.keyring
        total = await keyring.count(text=text)
        page, pages = page_of(request, total)
        entries = await keyring.listing(text=text, offset=(page - 1) * PAGE_SIZE,
                                        limit=PAGE_SIZE)
        now = keyring.now()
        deleted = arg(request, "deleted") or ""
        return self.render(
            request, "pgp_keys.html", session, section="pgp", title="PGP keys",
            entries=[(e, e.key.encryption_problem(now)) for e in entries], page=page,
            pages=pages, total=total, first=(page - 1) * PAGE_SIZE + 1, q=text,
            imported=imported, grouped=grouped, sources=SOURCES,
            # Only a fingerprint is said back: the query is anyone's to write.
            deleted=deleted if FINGERPRINT.fullmatch(deleted) else None,
        )

    @app.route("/keys", methods=["GET"])
    @authenticated
    async def listing(self, request: IRequest, session: AdminSession) -> bytes:
        """
        One page of the keyring, newest import first, searched by C{?q=}
        (text in a fingerprint, an address or a user ID).
        """
        return await self._listing_page(request, session)

    # Import ----------------------------------------------------------------

    def _import_form(self, request: IRequest, session: AdminSession, error: str | None = None,
                     status: int = 200, text: str = "", trusted: bool = True) -> bytes:
        return self.render(request, "pgp_import.html", session, status=status, section="pgp",
                           title="Import PGP keys", error=error, text=text, trusted=trusted)

    @app.route("/keys/import", methods=["GET"])
    @authenticated
    async def import_form(self, request: IRequest, session: AdminSession) -> bytes:
        return self._import_form(request, session)

    @app.route("/keys/import", methods=["POST"])
    @authenticated
    @request_deadline(UPLOAD_DEADLINE)
    async def import_keys(self, request: IRequest, session: AdminSession) -> bytes:
        """
        The keys of an uploaded file or of the text pasted (armored), with
        the passphrase of protected secret keys; all or nothing.
        """
        if too_large(request):
            return self._import_form(request, session, TOO_LARGE, 413)
        data = upload(request, "file") or b""
        text = arg(request, "text") or ""
        trusted = arg(request, "trusted") is not None

        def again(error: str) -> bytes:
            # What was pasted comes back with the error; the passphrase not.
            return self._import_form(request, session, error, 400, text=text, trusted=trusted)

        if data.strip() and text.strip():
            return again("Choose a file or paste keys, not both.")
        data = data if data.strip() else text.encode()
        if not data.strip():
            return again("Choose a key file or paste armored keys to import.")
        try:
            imported = await self.backend.keyring.import_keys(
                data, passphrase=arg(request, "passphrase") or None, trusted=trusted)
        except PGPError as e:
            return again(str(e))
        await self.audit(request, session, "pgp.import",
                         f"imported {len(imported)} PGP key(s) "
                         f"{', '.join(k.fingerprint.upper() for k in imported)} as "
                         f"{'trusted' if trusted else 'untrusted'}",
                         details={"fingerprints": [k.fingerprint.upper() for k in imported]})
        return await self._listing_page(request, session, imported=imported)

    # Generate --------------------------------------------------------------

    def _generate_form(self, request: IRequest, session: AdminSession,
                       values: dict[str, str] | None = None,
                       errors: dict[str, str] | None = None, error: str | None = None) -> bytes:
        return self.render(request, "pgp_generate.html", session,
                           status=400 if errors or error else 200, section="pgp",
                           title="Generate PGP key", values=values or {"email": "", "name": ""},
                           errors=errors or {}, error=error)

    @app.route("/keys/generate", methods=["GET"])
    @authenticated
    async def generate_form(self, request: IRequest, session: AdminSession) -> bytes:
        return self._generate_form(request, session)

    @app.route("/keys/generate", methods=["POST"])
    @authenticated
    async def generate(self, request: IRequest, session: AdminSession) -> bytes:
        values = {name: (arg(request, name) or "").strip() for name in ("email", "name")}
        errors = generated_key_problems(values["email"], values["name"])
        if errors:
            return self._generate_form(request, session, values, errors)
        try:
            stored = await self.backend.keyring.generate(values["email"], values["name"])
        except PGPError as e:
            return self._generate_form(request, session, values, error=str(e))
        await self.audit(request, session, "pgp.generate",
                         f"generated the PGP key {stored.fingerprint.upper()} for "
                         f"{values['email']}", target=stored.fingerprint.upper())
        return redirect(request, f"/pgp/keys/{stored.fingerprint.upper()}?changed=generated")

    # Details ---------------------------------------------------------------

    @app.route("/keys/<name>", methods=["GET"])
    @authenticated
    async def details(self, request: IRequest, session: AdminSession, name: str) -> bytes:
        """
        One key; C{<fingerprint>.asc} its certificate (no secrets), armored,
        as a file.
        """
        fingerprint, dot, suffix = name.partition(".")
        stored = await self.backend.pgp_key(fingerprint)
        if stored is None or (dot and suffix.lower() != "asc"):
            return self._no_such_key(request, session)
        if dot:
            return send_armored_key(request, stored)
        changed = arg(request, "changed")
        now = self.backend.keyring.now()
        return self.render(
            request, "pgp_key.html", session, section="pgp", title="PGP key", stored=stored,
            key=stored.key, problem=stored.key.encryption_problem(now),
            key_problem=stored.key.problem(now), now=now,
            fingerprint=stored.fingerprint.upper(), grouped=grouped, sources=SOURCES,
            changed=changed if changed in ("trust", "introducer", "generated") else None,
        )

    @app.route("/keys/<fingerprint>/trust", methods=["POST"])
    @authenticated
    async def set_trust(self, request: IRequest, session: AdminSession,
                        fingerprint: str) -> bytes:
        """
        C{trusted=yes} or C{no}: whether mail is encrypted to the key.
        """
        return await self._mark(request, session, fingerprint, "trusted", "trust")

    @app.route("/keys/<fingerprint>/introducer", methods=["POST"])
    @authenticated
    async def set_introducer(self, request: IRequest, session: AdminSession,
                             fingerprint: str) -> bytes:
        """
        C{introducer=yes} or C{no}: whether the keys it certifies are trusted.
        """
        return await self._mark(request, session, fingerprint, "introducer", "introducer")

    async def _mark(self, request: IRequest, session: AdminSession, fingerprint: str,
                    mark: str, changed: str) -> bytes:
        choice = arg(request, mark)
        if choice not in ("yes", "no"):
            return self._no_such_key(request, session)
        value = choice == "yes"
        if not await self.backend.mark_pgp_key(fingerprint, mark, value):
            return self._no_such_key(request, session)
        await self.audit(request, session, "pgp.mark",
                         f"marked the PGP key {fingerprint.upper()} {PGP_MARKS[mark][value]}",
                         target=fingerprint.upper())
        return redirect(request, f"/pgp/keys/{fingerprint.upper()}?changed={changed}")

    @app.route("/keys/<fingerprint>/delete", methods=["POST"])
    @authenticated
    async def delete(self, request: IRequest, session: AdminSession,
                     fingerprint: str) -> bytes:
        if not await self.backend.delete_pgp_key(fingerprint):
            return self._no_such_key(request, session)
        await self.audit(request, session, "pgp.delete",
                         f"deleted the PGP key {fingerprint.upper()}", target=fingerprint.upper())
        return redirect(request, f"/pgp/keys?deleted={fingerprint.upper()}")
