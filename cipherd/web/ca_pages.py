"""
Admin → CA: the built-in certificate authority (L{cipherd.pki.ca}) — its
CAs (create a root or an intermediate, the intermediate's request and
certificate, the CRL signed now), issuing (one address, or a list of them
from a CSV file, issued in the background), the requests waiting, the
certificates issued with search, revocation with a reason, and the
certificate with its key as a PKCS#12 file, downloaded or mailed to its
owner with the password shown here only.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from cipherd.core.clock import utc_from_seconds
from cipherd.pki.ca import (
    KEY_TYPES,
    MAX_REQUESTS,
    REASON_TITLES,
    Authority,
    CAError,
    CertificateAuthority,
    proposed_crl_url,
)
from cipherd.pki.certs import describe_name
from cipherd.store.ca import IssuedRow
from cipherd.web.auth import AdminSession
from cipherd.web.backend import PKCS12Sent, send_pkcs12
from cipherd.web.common import (
    UPLOAD_DEADLINE,
    SiteApp,
    arg,
    attachment,
    redirect,
    request_deadline,
    whole_number,
)
from cipherd.web.pages import AdminPages, authenticated
from cipherd.web.pki_pages import (
    MAX_SEARCH_LENGTH,
    PAGE_SIZE,
    TOO_LARGE,
    moment,
    page_of,
    too_large,
    upload,
)

log = Logger(namespace="cipherd.admin")

PKCS12_TYPE = b"application/x-pkcs12"
CRL_TYPE = b"application/pkix-crl"
# A CSV cell that is an address.
_ADDRESS = re.compile(r"[^@\s,;<>\"]+@[^@\s,;<>\"]+")


def _day(seconds: float) -> str:
    return utc_from_seconds(seconds).strftime("%Y-%m-%d")


def issued_status(row: IssuedRow, now: float) -> str:
    """
    What became of a certificate issued here: C{valid}, C{renewed},
    C{expired} or C{revoked}.
    """
    if row.revoked is not None:
        return "revoked"
    if row.not_after <= now:
        return "expired"
    if row.renewed_by is not None:
        return "renewed"
    return "valid"


def addresses_in(data: bytes) -> list[str]:
    """
    The addresses of a CSV file (or a plain list, one per line): in each
    row, the first cell that is an address; a header row and anything else
    is passed over.

    @raise CAError: the file is not text.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CAError("The file is not a UTF-8 text (CSV) file.") from None
    try:
        dialect: Any = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    found = []
    for row in csv.reader(io.StringIO(text), dialect):
        cell = next((c.strip() for c in row if _ADDRESS.fullmatch(c.strip())), None)
        if cell:
            found.append(cell)
    return found


def authority_file(authority: Authority, suffix: str) -> tuple[bytes, bytes, str] | None:
    """
    A CA's file to download by its suffix: C{pem} its certificate, C{csr}
    its request (pending), C{crl} its CRL (the caller reads it).
    """
    if suffix == "pem" and authority.certificate is not None:
        return (authority.certificate.public_bytes(serialization.Encoding.PEM),
                b"application/x-pem-file", f"ca-{authority.id}.pem")
    if suffix == "csr" and authority.csr is not None:
        return authority.csr, b"application/pkcs10", f"ca-{authority.id}.csr"
    return None


class CAPages(AdminPages):
    """
    Mounted at C{/ca/} of the admin site.
    """

    app = SiteApp()

    @property
    def ca(self) -> CertificateAuthority:
        assert self.backend.ca is not None
        return self.backend.ca

    def _not_found(self, request: IRequest, session: AdminSession, what: str) -> bytes:
        return self.not_found(request, session, what)

    # CAs -------------------------------------------------------------------

    async def _authorities_page(self, request: IRequest, session: AdminSession, *,
                                values: dict[str, str] | None = None, error: str | None = None,
                                status: int = 200) -> bytes:
        authorities = await self.ca.authorities()
        proposed = proposed_crl_url(self.backend.crl_base(), (a.crl_url for a in authorities))
        return self.render(
            request, "ca.html", session, status=status, section="ca", subsection="cas",
            title="Certificate authorities", authorities=authorities, now=self.ca.now(),
            key_types=KEY_TYPES, error=error, when=moment, day=_day,
            values=values or {"kind": "root", "subject": "", "key_type": "rsa3072",
                              "validity_days": "3650", "crl_url": proposed},
            changed=arg(request, "changed"))

    @app.route("/", methods=["GET"])
    @authenticated
    async def authorities(self, request: IRequest, session: AdminSession) -> bytes:
        return await self._authorities_page(request, session)

    @app.route("/create", methods=["POST"])
    @authenticated
    async def create(self, request: IRequest, session: AdminSession) -> bytes:
        values = {name: (arg(request, name) or "").strip()
                  for name in ("kind", "subject", "key_type", "validity_days", "crl_url")}
        try:
            if values["kind"] == "intermediate":
                made = await self.ca.create_intermediate(values["subject"], values["key_type"],
                                                         values["crl_url"])
            else:
                days = whole_number(values["validity_days"])
                if days is None:
                    raise CAError("The validity must be a number of days.")
                made = await self.ca.create_root(values["subject"], values["key_type"], days,
                                                 values["crl_url"])
        except CAError as e:
            return await self._authorities_page(request, session, values=values, error=str(e),
                                                status=400)
        await self.audit(request, session, "ca.create",
                         f"created the {made.kind} CA {made.subject}", target=made.id)
        return redirect(request, f"/ca/authorities/{made.id}?changed=created")

    @app.route("/authorities/<name>", methods=["GET"])
    @authenticated
    async def authority(self, request: IRequest, session: AdminSession, name: str) -> bytes:
        """
        One CA; C{<id>.pem} its certificate, C{<id>.csr} its request,
        C{<id>.crl} its current CRL, as files.
        """
        ref, dot, suffix = name.partition(".")
        found = await self.ca.authority(ref)
        if found is None:
            return self._not_found(request, session, "There is no such CA.")
        if dot:
            if suffix == "crl":
                row = await self.ca.crl_of(found.id)
                if row is not None:
                    attachment(request, CRL_TYPE, f"ca-{found.id}.crl")
                    return row
            else:
                wanted = authority_file(found, suffix)
                if wanted is not None:
                    body, media_type, filename = wanted
                    attachment(request, media_type, filename)
                    return body
            return self._not_found(request, session, "This CA has no such file.")
        return self._authority_page(request, session, found)

    def _authority_page(self, request: IRequest, session: AdminSession, found: Authority,
                        error: str | None = None, status: int = 200) -> bytes:
        changed = arg(request, "changed")
        return self.render(
            request, "ca_authority.html", session, status=status, section="ca",
            subsection="cas", title=f"CA {found.subject}", authority=found, now=self.ca.now(),
            key_types=KEY_TYPES, when=moment, error=error, describe=describe_name,
            changed=changed if changed in ("created", "installed", "crl") else None)

    @app.route("/authorities/<ref>/certificate", methods=["POST"])
    @authenticated
    @request_deadline(UPLOAD_DEADLINE)
    async def install(self, request: IRequest, session: AdminSession, ref: str) -> bytes:
        found = await self.ca.authority(ref)
        if found is None:
            return self._not_found(request, session, "There is no such CA.")
        if too_large(request):
            return self._authority_page(request, session, found, TOO_LARGE, 413)
        data = upload(request, "file") or b""
        if not data.strip():
            return self._authority_page(request, session, found,
                                        "Choose the certificate file the root signed.", 400)
        try:
            installed = await self.ca.install(found.id, data)
        except CAError as e:
            return self._authority_page(request, session, found, str(e), 400)
        await self.audit(request, session, "ca.install",
                         f"installed the certificate of the CA {installed.subject}",
                         target=installed.id)
        return redirect(request, f"/ca/authorities/{installed.id}?changed=installed")

    @app.route("/authorities/<ref>/crl", methods=["POST"])
    @authenticated
    async def sign_crl(self, request: IRequest, session: AdminSession, ref: str) -> bytes:
        found = await self.ca.authority(ref)
        if found is None:
            return self._not_found(request, session, "There is no such CA.")
        try:
            await self.ca.sign_crl(found.id)
        except CAError as e:
            return self._authority_page(request, session, found, str(e), 400)
        await self.audit(request, session, "ca.crl", f"signed the CRL of the CA {found.subject}",
                         target=found.id)
        return redirect(request, f"/ca/authorities/{found.id}?changed=crl")

    @app.route("/authorities/<ref>/delete", methods=["POST"])
    @authenticated
    async def delete(self, request: IRequest, session: AdminSession, ref: str) -> bytes:
        found = await self.ca.authority(ref)
        if found is None or not await self.ca.delete_pending(found.id):
            return self._not_found(request, session, "There is no such pending CA.")
        await self.audit(request, session, "ca.delete",
                         f"deleted the pending CA {found.subject}", target=found.id)
        return redirect(request, "/ca/?changed=deleted")

    # Issuing ---------------------------------------------------------------

    async def _issue_form(self, request: IRequest, session: AdminSession, *,
                          values: dict[str, str] | None = None, error: str | None = None,
                          status: int = 200) -> bytes:
        return self.render(
            request, "ca_issue.html", session, status=status, section="ca",
            subsection="issue", title="Request certificate",
            authorities=[a for a in await self.ca.authorities() if a.usable(self.ca.now())],
            values=values or {"email": "", "ca": "", "validity_days": "", "emails": ""},
            error=error, max_requests=MAX_REQUESTS)

    @app.route("/issue", methods=["GET"])
    @authenticated
    async def issue_form(self, request: IRequest, session: AdminSession) -> bytes:
        return await self._issue_form(request, session)

    @app.route("/issue", methods=["POST"])
    @authenticated
    @request_deadline(UPLOAD_DEADLINE)
    async def issue(self, request: IRequest, session: AdminSession) -> bytes:
        """
        One address (issued now), or a list (a CSV file or addresses typed
        one per line: issued in the background, see the pending requests).
        """
        values = {name: (arg(request, name) or "").strip()
                  for name in ("email", "ca", "validity_days", "emails")}
        if too_large(request):
            return await self._issue_form(request, session, values=values, error=TOO_LARGE,
                                          status=413)
        days = None
        if values["validity_days"]:
            days = whole_number(values["validity_days"])
            if days is None:
                return await self._issue_form(request, session, values=values, status=400,
                                              error="The validity must be a number of days.")
        data = upload(request, "file") or b""
        try:
            listed = addresses_in(data) if data.strip() else []
            listed += [line.strip() for line in values["emails"].splitlines() if line.strip()]
            if listed:
                if values["email"]:
                    raise CAError("Give one address, or a list of them, not both.")
                count = await self.ca.request(listed, ca=values["ca"] or None,
                                              validity_days=days, by=session.admin_name)
            elif values["email"]:
                issued = await self.ca.issue(values["email"], ca=values["ca"] or None,
                                             validity_days=days)
            else:
                raise CAError("Enter an address, or choose a CSV file of addresses.")
        except CAError as e:
            return await self._issue_form(request, session, values=values, error=str(e),
                                          status=400)
        if listed:
            await self.audit(request, session, "ca.request",
                             f"asked for certificates for {count} address(es)",
                             details={"count": count})
            return redirect(request, f"/ca/pending?queued={count}")
        await self.audit(request, session, "ca.issue",
                         f"issued a certificate for {issued.email}", target=issued.thumbprint)
        return redirect(request, f"/ca/issued/{issued.thumbprint}?changed=issued")

    # Pending requests --------------------------------------------------------

    @app.route("/pending", methods=["GET"])
    @authenticated
    async def pending(self, request: IRequest, session: AdminSession) -> bytes:
        queued = whole_number(arg(request, "queued") or "")
        return self.render(
            request, "ca_pending.html", session, section="ca", subsection="pending",
            title="Pending certificate requests", requests=await self.ca.requests(),
            authorities=[a for a in await self.ca.authorities() if a.pending], when=moment,
            queued=queued)

    @app.route("/pending/<int:request_id>/cancel", methods=["POST"])
    @authenticated
    async def cancel(self, request: IRequest, session: AdminSession, request_id: int) -> bytes:
        if not await self.ca.cancel_request(request_id):
            return self._not_found(request, session, "There is no such request.")
        await self.audit(request, session, "ca.cancel",
                         f"cancelled the certificate request {request_id}")
        return redirect(request, "/ca/pending")

    # Issued ------------------------------------------------------------------

    @app.route("/issued", methods=["GET"])
    @authenticated
    async def issued(self, request: IRequest, session: AdminSession) -> bytes:
        text = (arg(request, "q") or "").strip()[:MAX_SEARCH_LENGTH]
        total = await self.ca.count_issued(text=text)
        page, pages = page_of(request, total)
        rows = await self.ca.issued(text=text, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
        now = self.ca.now()
        return self.render(
            request, "ca_issued.html", session, section="ca", subsection="issued",
            title="Issued certificates", rows=[(r, issued_status(r, now)) for r in rows],
            total=total, page=page, pages=pages, first=(page - 1) * PAGE_SIZE + 1, q=text,
            when=moment, day=_day, names={a.id: a.name for a in await self.ca.authorities()})

    async def _issued_page(self, request: IRequest, session: AdminSession, row: IssuedRow, *,
                           error: str | None = None, status: int = 200,
                           sent: PKCS12Sent | None = None) -> bytes:
        now = self.ca.now()
        authority = await self.ca.authority(row.ca_id)
        changed = arg(request, "changed")
        return self.render(
            request, "ca_certificate.html", session, status=status, section="ca",
            subsection="issued", title=f"Certificate of {row.email}", row=row,
            certificate=x509.load_der_x509_certificate(row.der), state=issued_status(row, now),
            authority=authority, reasons=REASON_TITLES, error=error, sent=sent,
            when=moment,
            changed=changed if changed in ("issued", "revoked") else None)

    async def _issued_row(self, thumbprint: str) -> IssuedRow | None:
        return await self.ca.issued_certificate(thumbprint)

    @app.route("/issued/<thumbprint>", methods=["GET"])
    @authenticated
    async def certificate(self, request: IRequest, session: AdminSession,
                          thumbprint: str) -> bytes:
        row = await self._issued_row(thumbprint)
        if row is None:
            return self._not_found(request, session, "No CA here issued such a certificate.")
        return await self._issued_page(request, session, row)

    @app.route("/issued/<thumbprint>/revoke", methods=["POST"])
    @authenticated
    async def revoke(self, request: IRequest, session: AdminSession, thumbprint: str) -> bytes:
        row = await self._issued_row(thumbprint)
        if row is None:
            return self._not_found(request, session, "No CA here issued such a certificate.")
        reason = arg(request, "reason") or ""
        try:
            revoked = await self.ca.revoke(row.thumbprint, reason)
        except CAError as e:
            return await self._issued_page(request, session, row, error=str(e), status=400)
        await self.audit(request, session, "ca.revoke",
                         f"revoked the certificate of {revoked.email} ({reason})",
                         target=revoked.thumbprint)
        return redirect(request, f"/ca/issued/{revoked.thumbprint}?changed=revoked")

    @app.route("/issued/<thumbprint>/pkcs12", methods=["POST"])
    @authenticated
    async def pkcs12(self, request: IRequest, session: AdminSession, thumbprint: str) -> bytes:
        row = await self._issued_row(thumbprint)
        if row is None:
            return self._not_found(request, session, "No CA here issued such a certificate.")
        try:
            data = await self.ca.pkcs12(row.thumbprint, arg(request, "password") or "")
        except CAError as e:
            return await self._issued_page(request, session, row, error=str(e), status=400)
        await self.audit(request, session, "ca.export",
                         f"downloaded the PKCS#12 file of {row.email}", target=row.thumbprint)
        attachment(request, PKCS12_TYPE, f"{row.email}.p12", private=True)
        return data

    @app.route("/issued/<thumbprint>/send", methods=["POST"])
    @authenticated
    async def send(self, request: IRequest, session: AdminSession, thumbprint: str) -> bytes:
        """
        Mail the certificate with its key (PKCS#12) to its owner, under a
        new random password shown on the page that answers, once, to pass
        on by another channel.
        """
        row = await self._issued_row(thumbprint)
        if row is None:
            return self._not_found(request, session, "No CA here issued such a certificate.")
        try:
            sent = await send_pkcs12(self.backend, row)
        except CAError as e:
            return await self._issued_page(request, session, row, error=str(e), status=400)
        await self.audit(request, session, "ca.send",
                         f"mailed the PKCS#12 file of {row.email} to its owner"
                         + (f", its password by SMS to {sent.phone}" if sent.phone else ""),
                         target=row.thumbprint)
        request.setHeader(b"Cache-Control", b"no-store")
        return await self._issued_page(request, session, row, sent=sent)
