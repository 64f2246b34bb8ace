"""
Admin → PKI: the certificate store, trusted roots and CRLs (guide §2.3.12,
§3.2, §3.3, §4.1, §4.2): list (invalid certificates greyed, whitelisted
marked), import with *skip self-signed*, details with *download
certificate* and *Add to CTL*.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from cipherd.core.clock import utc_from_seconds
from cipherd.pki.certs import email_addresses
from cipherd.pki.errors import CertificateImportError
from cipherd.pki.trust import CTLStatus, Purpose, usage_problem
from cipherd.store.certificates import CERTIFICATES, ROOTS
from cipherd.web.auth import AdminSession
from cipherd.web.common import (
    MAX_UPLOAD,
    UPLOAD_DEADLINE,
    SiteApp,
    arg,
    args,
    attachment,
    redirect,
    request_deadline,
    whole_number,
)
from cipherd.web.pages import AdminPages, authenticated

PAGE_SIZE = 50
# The most certificates one download takes (every one on a page, and more).
MAX_DOWNLOAD = 1000
# The longest search a list takes (an address is at most 320 characters).
MAX_SEARCH_LENGTH = 320
# How certificate details (and the API) write a moment.
TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"

def moment(seconds: float | None) -> str | None:
    """
    A moment as the details pages write it (L{TIME_FORMAT}); C{None} stays.
    """
    return None if seconds is None else utc_from_seconds(seconds).strftime(TIME_FORMAT)


_STORE_TITLES = {CERTIFICATES: "Intermediate and user certificates", ROOTS: "Trusted roots"}

log = Logger(namespace="cipherd.admin")


def page_of(request: IRequest, total: int) -> tuple[int, int]:
    """
    The page of a list of C{total} entries that C{?page=} asks for (the
    first for nonsense, the last past the end), and how many there are.
    """
    pages = max(1, -(-total // PAGE_SIZE))
    return min(max(whole_number(arg(request, "page") or "") or 1, 1), pages), pages


def upload(request: IRequest, field: str) -> bytes | None:
    """
    The bytes of an uploaded file field (multipart/form-data).
    """
    values = request.args.get(field.encode())
    return values[0] if values else None


# What an upload over MAX_UPLOAD is answered.
TOO_LARGE = f"The file is larger than {MAX_UPLOAD // 1_000_000} MB."


def too_large(request: IRequest) -> bool:
    length = request.getHeader(b"content-length")
    return length is not None and length.isdigit() and int(length) > MAX_UPLOAD


def certificate_facts(cert: x509.Certificate) -> dict[str, Any]:
    """
    What the details page (and the API) show of a certificate.
    """
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        key_usage = [name for name in (
            "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
            "key_agreement", "key_cert_sign", "crl_sign") if getattr(usage, name)]
    except x509.ExtensionNotFound:
        key_usage = []
    try:
        eku = [oid._name for oid in cert.extensions.get_extension_for_class(
            x509.ExtendedKeyUsage).value]
    except x509.ExtensionNotFound:
        eku = []
    return {
        "emails": email_addresses(cert),
        "serial": format(cert.serial_number, "X"),
        "not_before": cert.not_valid_before_utc.strftime(TIME_FORMAT),
        "not_after": cert.not_valid_after_utc.strftime(TIME_FORMAT),
        "key_usage": key_usage,
        "extended_key_usage": eku,
        "public_key": type(cert.public_key()).__name__.removeprefix("_").replace(
            "PublicKey", "") + f" {getattr(cert.public_key(), 'key_size', '')}".rstrip(),
        "sha1": cert.fingerprint(hashes.SHA1()).hex(),  # noqa: S303 -- a name, not security
    }


# *download certificates*: the formats of one file with several certificates,
# by name, with their media types.
BUNDLE_FORMATS = {"pem": b"application/x-pem-file",
                  "p7b": b"application/x-pkcs7-certificates"}


def send_bundle(request: IRequest, store: str, certs: list[x509.Certificate],
                format: str) -> bytes:
    """
    C{certs} of C{store} as one file to download, in one of
    L{BUNDLE_FORMATS}: PEM (one after the other) or PKCS#7 (C{p7b}, DER,
    certificates only).
    """
    if format == "p7b":
        body = pkcs7.serialize_certificates(certs, serialization.Encoding.DER)
    else:
        body = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    attachment(request, BUNDLE_FORMATS[format], f"{store}-{len(certs)}.{format}")
    return body


class PkiPages(AdminPages):
    """
    Mounted at C{/pki/} of the admin site.
    """

    app = SiteApp()

    def _store(self, name: str) -> str | None:
        return name if name in _STORE_TITLES else None

    # CRLs ----------------------------------------------------------------------

    async def _crls_page(self, request: IRequest, session: AdminSession,
                         error: str | None = None, status: int = 200,
                         outcome: list[tuple[str, str]] | None = None) -> bytes:
        return self.render(request, "crls.html", session, status=status, section="crls",
                           crls=await self.backend.certificates.crls(), error=error,
                           outcome=outcome)

    @app.route("/crls", methods=["GET"])
    @authenticated
    async def crls(self, request: IRequest, session: AdminSession) -> bytes:
        return await self._crls_page(request, session)

    @app.route("/crls/import", methods=["POST"])
    @authenticated
    @request_deadline(UPLOAD_DEADLINE)
    async def import_crl(self, request: IRequest, session: AdminSession) -> bytes:
        data = upload(request, "file")
        error = None
        if too_large(request):
            error = "The file is too large."
        elif not data:
            error = "Choose a CRL file to import."
        else:
            try:
                result = await self.backend.certificates.import_data(data)
            except CertificateImportError as e:
                error = str(e)
            else:
                if not result.crls:
                    error = "The file contains no CRL."
        if error:
            return await self._crls_page(request, session, error=error, status=400)
        await self.audit(request, session, "crls.import", f"imported {len(result.crls)} CRL(s)")
        return await self._crls_page(request, session, outcome=result.crls)

    @app.route("/crls/<issuer_hash>/delete", methods=["POST"])
    @authenticated
    async def delete_crl(self, request: IRequest, session: AdminSession,
                         issuer_hash: str) -> bytes:
        if not await self.backend.certificates.delete_crl(issuer_hash):
            return self.not_found(request, session, "There is no such CRL.")
        await self.audit(request, session, "crls.delete", f"deleted the CRL {issuer_hash}",
                         target=issuer_hash)
        return redirect(request, "/pki/crls")

    # Lists ---------------------------------------------------------------------

    @app.route("/<store>", methods=["GET"])
    @authenticated
    async def listing(self, request: IRequest, session: AdminSession, store: str) -> bytes:
        """
        One page of a store, searched by C{?q=} (text in the subject or an
        address, or the start of a thumbprint) -- a store may hold 100,000.
        """
        if self._store(store) is None:
            return self.not_found(request, session)
        text = (arg(request, "q") or "").strip()[:MAX_SEARCH_LENGTH]
        certificates = self.backend.certificates
        total = await certificates.count(store, text=text)
        page, pages = page_of(request, total)
        entries = await certificates.listing(store, text=text, offset=(page - 1) * PAGE_SIZE,
                                             limit=PAGE_SIZE)
        return self.render(
            request, "certificates.html", session, section=store, store=store,
            title=_STORE_TITLES[store], entries=entries, page=page, pages=pages, total=total,
            first=(page - 1) * PAGE_SIZE + 1, q=text, imported=arg(request, "imported"),
        )

    # Import --------------------------------------------------------------------

    @app.route("/<store>/import", methods=["GET"])
    @authenticated
    async def import_form(self, request: IRequest, session: AdminSession, store: str) -> bytes:
        if self._store(store) is None:
            return self.not_found(request, session)
        return self.render(request, "import.html", session, section=store, store=store,
                           title=_STORE_TITLES[store])

    @app.route("/<store>/import", methods=["POST"])
    @authenticated
    @request_deadline(UPLOAD_DEADLINE)
    async def import_file(self, request: IRequest, session: AdminSession, store: str) -> bytes:
        if self._store(store) is None:
            return self.not_found(request, session)

        def again(error: str, status: int = 400) -> bytes:
            return self.render(request, "import.html", session, status=status, section=store,
                               store=store, title=_STORE_TITLES[store], error=error)

        if too_large(request):
            return again(TOO_LARGE, 413)
        data = upload(request, "file")
        if not data:
            return again("Choose a file to import.")
        password = arg(request, "password") or None
        try:
            result = await self.backend.certificates.import_data(
                data, password=password, store=store,
                skip_self_signed=arg(request, "skip_self_signed") is not None,
            )
        except CertificateImportError as e:
            return again(str(e))
        await self.audit(request, session, "certificates.import",
                         f"imported {len(result.imported)} certificate(s) into {store}",
                         target=store, details={"imported": result.imported})
        return self.render(request, "imported.html", session, section=store, store=store,
                           title=_STORE_TITLES[store], result=result)

    # Details -------------------------------------------------------------------

    @app.route("/<store>/download", methods=["GET"])
    @authenticated
    async def download_selected(self, request: IRequest, session: AdminSession,
                                store: str) -> bytes:
        """
        The certificates ticked in the list, in one file: PEM (one after
        the other) or PKCS#7 (C{.p7b}, certificates only).
        """
        if self._store(store) is None:
            return self.not_found(request, session)
        wanted = list(dict.fromkeys(t.strip().lower() for t in args(request, "thumbprint")))
        rows = [row for t in wanted[:MAX_DOWNLOAD]
                if (row := await self._row(store, t)) is not None]
        if not rows:
            return self.render(request, "error.html", session, status=400, section=store,
                               title="Nothing to download",
                               message="Tick one certificate or more in the list to "
                                       "download them.")
        certs = [x509.load_der_x509_certificate(row.der) for row in rows]
        return send_bundle(request, store, certs,
                           "p7b" if arg(request, "format") == "p7b" else "pem")

    async def _row(self, store: str, thumbprint: str) -> Any:
        if self._store(store) is None or len(thumbprint) != 64:
            return None
        return await self.backend.certificates.get(thumbprint, store)

    @app.route("/<store>/<thumbprint>", methods=["GET"])
    @authenticated
    async def details(self, request: IRequest, session: AdminSession, store: str,
                      thumbprint: str) -> bytes:
        for suffix, encoding, mime in ((".pem", serialization.Encoding.PEM,
                                        b"application/x-pem-file"),
                                       (".cer", serialization.Encoding.DER,
                                        b"application/pkix-cert")):
            if thumbprint.endswith(suffix):
                row = await self._row(store, thumbprint.removesuffix(suffix))
                if row is None:
                    return self.not_found(request, session, "There is no such certificate.")
                cert = x509.load_der_x509_certificate(row.der)
                attachment(request, mime, f"{row.thumbprint[:16]}{suffix}")
                return cert.public_bytes(encoding)
        row = await self._row(store, thumbprint)
        if row is None:
            return self.not_found(request, session, "There is no such certificate.")
        certificates = self.backend.certificates
        cert = x509.load_der_x509_certificate(row.der)
        verdicts = {purpose.value: await certificates.check(cert, purpose)
                    for purpose in (Purpose.ENCRYPTION, Purpose.SIGNING)}
        ctl = (await certificates.ctl()).get(row.thumbprint)
        return self.render(
            request, "certificate.html", session, section=store, store=store,
            title=_STORE_TITLES[store], row=row, facts=certificate_facts(cert),
            verdicts=verdicts, ctl=ctl, statuses=list(CTLStatus),
            usage_problem=usage_problem, changed=arg(request, "changed"),
        )

    @app.route("/<store>/<thumbprint>/ctl", methods=["GET"])
    @authenticated
    async def ctl_form(self, request: IRequest, session: AdminSession, store: str,
                       thumbprint: str) -> bytes:
        """
        Guide §3.3 and §4.2: the "Add new Certificate Trust List entry" page.
        """
        row = await self._row(store, thumbprint)
        if row is None:
            return self.not_found(request, session, "There is no such certificate.")
        ctl = (await self.backend.certificates.ctl()).get(row.thumbprint)
        return self.render(
            request, "ctl_entry.html", session, section=store, store=store, row=row, ctl=ctl,
            statuses=list(CTLStatus), heading="Change Certificate Trust List entry" if ctl
            else "Add new Certificate Trust List entry")

    @app.route("/<store>/<thumbprint>/ctl", methods=["POST"])
    @authenticated
    async def add_to_ctl(self, request: IRequest, session: AdminSession, store: str,
                         thumbprint: str) -> bytes:
        row = await self._row(store, thumbprint)
        if row is None:
            return self.not_found(request, session, "There is no such certificate.")
        status = arg(request, "status")
        certificates = self.backend.certificates
        if status == "remove":
            await certificates.remove_ctl(row.thumbprint)
        else:
            try:
                await certificates.set_ctl(row.thumbprint, CTLStatus(status))
            except ValueError:
                return self.not_found(request, session, "There is no such CTL status.")
        await self.audit(request, session, "ctl.set",
                         f"set the CTL status of {row.thumbprint} to {status}",
                         target=row.thumbprint)
        return redirect(request, f"/pki/{store}/{row.thumbprint}?changed=ctl")

    @app.route("/<store>/<thumbprint>/delete", methods=["POST"])
    @authenticated
    async def delete(self, request: IRequest, session: AdminSession, store: str,
                     thumbprint: str) -> bytes:
        row = await self._row(store, thumbprint)
        if row is None or not await self.backend.certificates.delete(row.thumbprint, store):
            return self.not_found(request, session, "There is no such certificate.")
        await self.audit(request, session, "certificates.delete",
                         f"deleted {row.thumbprint} from {store}", target=row.thumbprint)
        return redirect(request, f"/pki/{store}")
