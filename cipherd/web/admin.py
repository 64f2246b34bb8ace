"""
The admin site: HTML pages under the guide's names, and the JSON API under
``/api/v1`` (see ``cipherd.web.api``).

Every page but the login page needs an admin session; every POST carries the
session's CSRF token (the login form a double-submit token).  Until the
default password is changed every page leads to the password form.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from sqlalchemy import Connection
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from cipherd.core.clock import utc_from_seconds
from cipherd.logs import MAX_TAIL_LINES, LogQuery
from cipherd.pki.sitetls import SiteCertificateError
from cipherd.settings import (
    GLOBAL,
    PAGES,
    REGISTRY,
    ROLE_TITLES,
    Boolean,
    InvalidValue,
    Level,
    MailTemplate,
    Property,
    Scope,
    Values,
    properties_on,
    scope_for,
)
from cipherd.smtp.config import dns_server_problem
from cipherd.store import DatabaseUnavailable
from cipherd.store.admins import AdminRow
from cipherd.store.audit import add_entry
from cipherd.store.backup import MIN_PASSPHRASE, BackupError, BackupInfo
from cipherd.web.account_pages import AccountPages
from cipherd.web.api import AdminAPI
from cipherd.web.audit import ACTION_GROUPS, audit_query
from cipherd.web.auth import (
    PENDING_LOGIN,
    AccountRefused,
    AdminSession,
    LoginRefused,
    ServerBusy,
    WeakPassword,
    csrf_matches,
)
from cipherd.web.backend import (
    RELAY_RECIPIENT,
    WEBMAIL_SENDER,
    AdminBackend,
    TunnelCertificateRefused,
    TunnelEnd,
)
from cipherd.web.ca_pages import CAPages
from cipherd.web.common import (
    MAX_UPLOAD,
    RETRY_AFTER_SECONDS,
    UPLOAD_DEADLINE,
    ErrorAnswer,
    SecureHeaders,
    SiteApp,
    arg,
    args,
    attachment,
    clear_cookie,
    client_address,
    cookie,
    database_problem,
    favicon,
    log_query,
    redirect,
    request_deadline,
    robots_txt,
    send_file,
    set_cookie,
    static_files,
    template_environment,
    whole_number,
)
from cipherd.web.dashboard import MARK_TITLES, WARN_DAYS, charts
from cipherd.web.dlp_pages import DLPPages
from cipherd.web.mta_pages import MTAPages
from cipherd.web.pages import CSRF_FIELD, SESSION_COOKIE, AdminPages, authenticated
from cipherd.web.pgp_pages import PGPPages
from cipherd.web.pki_pages import TIME_FORMAT, TOO_LARGE, PkiPages, too_large, upload
from cipherd.web.roles import ADMIN_ROLES
from cipherd.webmail import totp

LOGIN_CSRF_COOKIE = "__Host-cipherd-login"
# Says that the password was right and the second factor's code is due.
PENDING_COOKIE = "__Host-cipherd-admin-code"
DEFAULT_LOG_LINES = 200
# How often the logs page reloads itself while following a log.
FOLLOW_SECONDS = 5
# The admin site's icon: the colour of the product's links and buttons.
ADMIN_COLOUR = "#1f5fbf"

# Admin → Network: DNS fields shown at least, and read at most.
DNS_FIELDS = 3
MAX_DNS_FIELDS = 16

log = Logger(namespace="cipherd.admin")

_PAGE_TITLES = {page.name: page.title for page in PAGES}
_LEVELS_BY_KIND = {"domains": Level.DOMAIN, "users": Level.USER}

@dataclass(frozen=True)
class _ScopeView:
    """
    How the pages name and link a settings scope.
    """

    scope: Scope

    @property
    def base(self) -> str:
        if self.scope.level is Level.GLOBAL:
            return "/settings/global"
        kind = "domains" if self.scope.level is Level.DOMAIN else "users"
        return f"/settings/{kind}/{quote(self.scope.key, safe='@*')}"

    @property
    def subsection(self) -> str:
        return {Level.GLOBAL: "global", Level.DOMAIN: "domains", Level.USER: "users"}[
            self.scope.level
        ]

    @property
    def title(self) -> str:
        if self.scope.level is Level.GLOBAL:
            return "Global preferences"
        return f"{self.scope.level.value.capitalize()} {self.scope.key}"

    @property
    def phrase(self) -> str:
        """
        The title inside a sentence: "... for global preferences".
        """
        return self.title[0].lower() + self.title[1:]


@dataclass(frozen=True)
class _CertificatePage:
    """
    A "create certificate" page for one end of the webmail tunnel, linked
    from the settings page where that end's address is set.

    @ivar heading: its title; C{{scope}} stands for the scope's phrase.
    @ivar link: the link's words on the settings page.
    @ivar replacing: what another certificate means for the other
        appliance, said before one is made while a valid one exists.
    """

    end: TunnelEnd
    heading: str
    intro: str
    email_help: str
    link: str
    replacing: str

    @property
    def setting(self) -> Property:
        return REGISTRY[self.end.setting]

    def applies(self, scope: Scope) -> bool:
        """
        Whether C{scope} has the address, and so this page.
        """
        return scope.level in self.setting.levels


# By the settings page that links each one.
_CERTIFICATE_PAGES = {page.setting.page: page for page in (
    # Gateway side, guide §3.8, figures 14 and 15: global and domains.
    _CertificatePage(WEBMAIL_SENDER, "Create webmail tunnel certificate for {scope}",
                     "For sending to the secure webmail gateway, a valid sender certificate "
                     "is required.", "email address of webmail sender",
                     "create webmail certificate",
                     "A new certificate is used at once: from the next message on, this gateway "
                     "signs tunnel messages with it. The webmail appliance accepts them only "
                     "once the new certificate is imported there and whitelisted in its "
                     "certificate trust list (guide §4.1 and §4.2); until then it forwards "
                     "every tunnel message to its postmaster and recipients get nothing."),
    # Webmail side, guide §2.3.11, figures 9 and 10: global only.  The guide's
    # figure repeats the sender page's help; this field is the relay recipient.
    _CertificatePage(RELAY_RECIPIENT, "Create webmail relay recipient certificate",
                     "For receiving email from the gateway, a valid recipient certificate "
                     "is required.", "email address of relay recipient",
                     "webmail certificate",
                     "The gateway encrypts tunnel messages to the relay recipient certificate it "
                     "holds: to use the new one, download it and import it on the gateway, and "
                     "whitelist it in the gateway's certificate trust list (guide §3.2 and "
                     "§3.3). Messages encrypted to the current certificate are still opened "
                     "here as long as its key is kept."),
)}


def _display(prop: Property, value: Any) -> str:
    """
    A value as the "overrides ..." note shows it.
    """
    if prop.secret:
        return "hidden" if value else "not set"
    if isinstance(value, bool):
        return "Yes" if value else "No"
    if value == "":
        return "the built-in text" if isinstance(prop.type, MailTemplate) else "not set"
    if prop.type.widget == "textarea":
        # A whole template would not fit in a sentence: its first line.
        first, _, rest = str(value).partition("\n")
        return f"{first} …" if rest.strip() else first
    return str(value)


def _size_hint(prop: Property, value: Any) -> str | None:
    """
    Byte counts in binary units, so 536870912 reads as 512 MiB.
    """
    if getattr(prop.type, "unit", None) != "bytes" or not isinstance(value, int):
        return None
    size = float(value)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:g} {unit}"
        size /= 1024
    return None


class AdminSite(AdminPages):
    """
    The admin web application.
    """

    app = SiteApp()

    def __init__(self, backend: AdminBackend) -> None:
        super().__init__(backend, template_environment())
        self.api = AdminAPI(backend)
        self.pki = PkiPages(backend, self.templates)
        self.pgp = PGPPages(backend, self.templates)
        self.ca = CAPages(backend, self.templates)
        self.dlp = DLPPages(backend, self.templates)
        self.mta = MTAPages(backend, self.templates)
        self.accounts = AccountPages(backend, self.templates)

    def resource(self) -> Resource:
        return SecureHeaders(self.app.resource(), self)

    def error_page(self, request: IRequest, answer: ErrorAnswer) -> bytes:
        # Before the routing (a malformed path) the API still answers JSON.
        if request.path.startswith(b"/api/"):
            return self.api.error_page(request, answer)
        return super().error_page(request, answer)

    # Static files, icons and the API -----------------------------------------

    @app.route("/static/", branch=True)
    def static(self, request: IRequest) -> Resource:
        return static_files()

    @app.route("/favicon.ico", methods=["GET"])
    def favicon_ico(self, request: IRequest) -> bytes:
        return favicon(request, ADMIN_COLOUR, "ico")

    @app.route("/favicon.svg", methods=["GET"])
    def favicon_svg(self, request: IRequest) -> bytes:
        return favicon(request, ADMIN_COLOUR, "svg")

    @app.route("/robots.txt", methods=["GET"])
    def robots(self, request: IRequest) -> bytes:
        return robots_txt(request)

    @app.route("/metrics", methods=["GET"])
    async def metrics(self, request: IRequest) -> bytes:
        return await self.api.metrics(request)

    @app.route("/api/", branch=True)
    def api_branch(self, request: IRequest) -> Resource:
        return self.api.app.resource()

    @app.route("/pki/", branch=True)
    def pki_branch(self, request: IRequest) -> Resource:
        return self.pki.app.resource()

    @app.route("/ca/", branch=True)
    def ca_branch(self, request: IRequest) -> Resource:
        return self.ca.app.resource()

    @app.route("/dlp/", branch=True)
    def dlp_branch(self, request: IRequest) -> Resource:
        return self.dlp.app.resource()

    @app.route("/pgp/", branch=True)
    def pgp_branch(self, request: IRequest) -> Resource:
        return self.pgp.app.resource()

    @app.route("/mta/", branch=True)
    def mta_branch(self, request: IRequest) -> Resource:
        return self.mta.app.resource()

    @app.route("/webmail/", branch=True)
    def webmail_branch(self, request: IRequest) -> Resource:
        return self.accounts.app.resource()

    # Login, logout, password ---------------------------------------------

    @app.route("/login", methods=["GET"])
    async def login_form(self, request: IRequest, error: str | None = None,
                         status: int = 200) -> bytes:
        if error is None and await self.current_session(request):
            return redirect(request, "/")
        token = secrets.token_urlsafe(24)
        set_cookie(request, LOGIN_CSRF_COOKIE, token)
        return self.render(request, "login.html", status=status, login_csrf=token, error=error)

    @app.route("/login", methods=["POST"])
    async def login(self, request: IRequest) -> bytes:
        expected = cookie(request, LOGIN_CSRF_COOKIE)
        if not expected or not csrf_matches(expected, arg(request, CSRF_FIELD)):
            return self.forbidden_form(request, None)
        name = arg(request, "username") or ""
        try:
            admin = await self.backend.authority.check_password(
                name, arg(request, "password") or "", client_address(request)
            )
        except ServerBusy as e:
            request.setHeader(b"Retry-After", b"5")
            return await self.login_form(request, error=str(e), status=503)
        except LoginRefused as e:
            return await self.login_form(request, error=str(e), status=401)
        if admin.has_totp:
            set_cookie(request, PENDING_COOKIE, self.backend.authority.pending_login(admin.name),
                       max_age=PENDING_LOGIN)
            clear_cookie(request, LOGIN_CSRF_COOKIE)
            return redirect(request, "/login/code")
        return await self._logged_in(request, admin)

    async def _logged_in(self, request: IRequest, admin: AdminRow) -> bytes:
        try:
            token = await self.backend.authority.open_session(admin.name)
        except DatabaseUnavailable as e:
            # The password was right, but a session lives in the database.
            request.setHeader(b"Retry-After", str(RETRY_AFTER_SECONDS).encode())
            return await self.login_form(request, status=503, error=(
                f"You cannot log in to these pages just now: {database_problem(e.reason)} "
                "The API answers without a session: GET /api/v1/queue lists the queue and "
                "POST /api/v1/queue/flush delivers it (HTTP Basic, as on these pages)."))
        set_cookie(request, SESSION_COOKIE, token)
        clear_cookie(request, LOGIN_CSRF_COOKIE)
        await self.backend.audit.record_request(request, admin.name, "web", "session.login",
                                                "logged in")
        return redirect(request, "/admin/password" if admin.must_change_password else "/")

    def _pending(self, request: IRequest) -> str | None:
        return self.backend.authority.pending_name(cookie(request, PENDING_COOKIE) or "")

    @app.route("/login/code", methods=["GET"])
    async def code_form(self, request: IRequest, error: str | None = None,
                        status: int = 200) -> bytes:
        name = self._pending(request)
        if name is None:
            return redirect(request, "/login")
        token = secrets.token_urlsafe(24)
        set_cookie(request, LOGIN_CSRF_COOKIE, token)
        return self.render(request, "login_code.html", status=status, login_csrf=token,
                           error=error, name=name)

    @app.route("/login/code", methods=["POST"])
    async def login_code(self, request: IRequest) -> bytes:
        expected = cookie(request, LOGIN_CSRF_COOKIE)
        if not expected or not csrf_matches(expected, arg(request, CSRF_FIELD)):
            return self.forbidden_form(request, None)
        name = self._pending(request)
        if name is None:
            return redirect(request, "/login")
        try:
            admin = await self.backend.authority.check_code(
                name, (arg(request, "code") or "").strip(), client_address(request))
        except LoginRefused as e:
            return await self.code_form(request, error=str(e), status=401)
        clear_cookie(request, PENDING_COOKIE)
        return await self._logged_in(request, admin)

    @app.route("/logout", methods=["POST"])
    @authenticated
    async def logout(self, request: IRequest, session: AdminSession) -> bytes:
        await self.backend.authority.close_session(session.token_hash)
        clear_cookie(request, SESSION_COOKIE)
        return redirect(request, "/login")

    @app.route("/admin/password", methods=["GET"])
    @authenticated
    async def password_form(self, request: IRequest, session: AdminSession) -> bytes:
        return self.render(request, "password.html", session, section="admin",
                            changed=arg(request, "changed") is not None)

    @app.route("/admin/password", methods=["POST"])
    @authenticated
    async def change_password(self, request: IRequest, session: AdminSession) -> bytes:
        password = arg(request, "password") or ""
        if password != (arg(request, "confirm") or ""):
            error = "The two passwords are not the same."
        else:
            try:
                await self.backend.authority.change_password(session.admin_name, password,
                                                             session.token_hash)
                await self.audit(request, session, "admin.password", "changed the password",
                                 target=session.admin_name)
                return redirect(request, "/admin/password?changed=1")
            except WeakPassword as e:
                error = str(e)
            except ServerBusy as e:
                request.setHeader(b"Retry-After", b"5")
                return self.render(request, "password.html", session, status=503,
                                   section="admin", error=str(e))
        return self.render(request, "password.html", session, status=400, section="admin",
                            error=error)

    # Admin → Admin accounts and My account ------------------------------------

    @app.route("/admin/accounts", methods=["GET"])
    @authenticated
    async def admin_accounts(self, request: IRequest, session: AdminSession) -> bytes:
        return await self._accounts_page(request, session)

    async def _accounts_page(self, request: IRequest, session: AdminSession, *,
                             error: str | None = None, status: int = 200,
                             typed: dict[str, str] | None = None) -> bytes:
        return self.render(request, "admin_accounts.html", session, status=status,
                           section="admin", subsection="admins",
                           accounts=await self.backend.authority.accounts(),
                           roles=ADMIN_ROLES, error=error, typed=typed or {},
                           done=arg(request, "done"), who=arg(request, "who"))

    @app.route("/admin/accounts", methods=["POST"])
    @authenticated
    async def add_admin_account(self, request: IRequest, session: AdminSession) -> bytes:
        name = (arg(request, "name") or "").strip()
        role = arg(request, "role") or ""
        if role not in ADMIN_ROLES:
            return await self._accounts_page(request, session, error="Choose a role.",
                                             status=400, typed={"name": name})
        try:
            password = await self.backend.authority.create_account(name, role)
        except AccountRefused as e:
            return await self._accounts_page(request, session, error=str(e), status=400,
                                             typed={"name": name, "role": role})
        await self.audit(request, session, "admin.create",
                         f"created the admin account {name} ({role})", target=name)
        return self.render(request, "admin_secret.html", session, section="admin",
                           subsection="admins", title=f"{name} was created",
                           what="first password", secret=password,
                           note="Give it to its owner, who must change it at the first "
                                "login. It is shown only this once.")

    @app.route("/admin/accounts/<name>/<action>", methods=["POST"])
    @authenticated
    async def admin_account_action(self, request: IRequest, session: AdminSession,
                                   name: str, action: str) -> bytes:
        authority = self.backend.authority
        try:
            if action == "role":
                role = arg(request, "role") or ""
                if role not in ADMIN_ROLES:
                    return self.not_found(request, session, "There is no such role.")
                await authority.set_role(name, role)
                await self.audit(request, session, "admin.role", f"made {name} {role}",
                                 target=name, details={"role": role})
            elif action == "reset-password":
                password = await authority.reset_account_password(name)
                await self.audit(request, session, "admin.reset_password",
                                 f"reset the password of {name}", target=name)
                return self.render(request, "admin_secret.html", session, section="admin",
                                   subsection="admins",
                                   title=f"A new password for {name}", what="new password",
                                   secret=password,
                                   note="Its sessions have ended; it must change this "
                                        "password at the next login. It is shown only "
                                        "this once.")
            elif action == "reset-totp":
                await authority.set_totp(name, None)
                await self.audit(request, session, "admin.totp",
                                 f"removed the second factor of {name}", target=name)
            elif action == "delete":
                if name == session.admin_name:
                    raise AccountRefused("You cannot delete your own account.")
                await authority.delete_account(name)
                await self.audit(request, session, "admin.delete",
                                 f"deleted the admin account {name}", target=name)
            else:
                return self.not_found(request, session)
        except AccountRefused as e:
            return await self._accounts_page(request, session, error=str(e), status=409)
        return redirect(request, f"/admin/accounts?done={action}&who={quote(name)}")

    @app.route("/admin/me", methods=["GET"])
    @authenticated
    async def my_account(self, request: IRequest, session: AdminSession) -> bytes:
        account = await self.backend.authority.account(session.admin_name)
        return self.render(request, "admin_me.html", session, section="admin",
                           subsection="me", role=ADMIN_ROLES.get(session.role, session.role),
                           second_factor=account is not None and account.has_totp,
                           tokens=await self.backend.authority.tokens(session.admin_name),
                           done=arg(request, "done"))

    @app.route("/admin/me/totp", methods=["GET"])
    @authenticated
    async def totp_form(self, request: IRequest, session: AdminSession) -> bytes:
        return self._totp_page(request, session, totp.new_secret())

    def _totp_page(self, request: IRequest, session: AdminSession, secret: bytes, *,
                   error: str | None = None, status: int = 200) -> bytes:
        # The secret waits in the form, sealed to this account, until a code
        # from the app proves it was copied.
        pending = base64.urlsafe_b64encode(
            self.backend.authority.seal_totp(session.admin_name, secret)).decode("ascii")
        return self.render(request, "admin_totp.html", session, status=status,
                           section="admin", subsection="me", pending=pending,
                           uri=totp.otpauth_uri(secret, session.admin_name, "cipherd admin"),
                           secret=totp.secret_text(secret), error=error)

    @app.route("/admin/me/totp", methods=["POST"])
    @authenticated
    async def totp_setup(self, request: IRequest, session: AdminSession) -> bytes:
        authority = self.backend.authority
        try:
            secret = authority.unseal_totp(session.admin_name, base64.urlsafe_b64decode(
                (arg(request, "pending") or "").encode("ascii")))
        except (totp.SealedSecretError, binascii.Error, ValueError):
            return self.forbidden_form(request, session)
        step = totp.matching_step(secret, (arg(request, "code") or "").strip(),
                                  self.clock.seconds())
        if step is None:
            return self._totp_page(request, session, secret, status=400, error=(
                "That code is not right. Check that the time on your phone is correct and "
                "enter the code your app shows now."))
        await authority.set_totp(session.admin_name, secret, used_step=step)
        await self.audit(request, session, "admin.totp", "set up a second factor",
                         target=session.admin_name)
        return redirect(request, "/admin/me?done=totp")

    @app.route("/admin/me/totp/remove", methods=["POST"])
    @authenticated
    async def totp_remove(self, request: IRequest, session: AdminSession) -> bytes:
        await self.backend.authority.set_totp(session.admin_name, None)
        await self.audit(request, session, "admin.totp", "removed the second factor",
                         target=session.admin_name)
        return redirect(request, "/admin/me?done=totp-removed")

    @app.route("/admin/me/tokens", methods=["POST"])
    @authenticated
    async def create_token(self, request: IRequest, session: AdminSession) -> bytes:
        made = await self.backend.authority.create_token(session.admin_name,
                                                         arg(request, "label") or "")
        await self.audit(request, session, "admin.token.create",
                         f"created the API token {made.id} ({made.label})", target=made.id)
        return self.render(request, "admin_secret.html", session, section="admin",
                           subsection="me", title=f"API token “{made.label}”",
                           what="API token", secret=made.token,
                           note="Send it as 'Authorization: Bearer <token>'; it acts with "
                                f"your role ({session.role}). Copy it now: it is shown only "
                                "this once.")

    @app.route("/admin/me/tokens/<token_id>/revoke", methods=["POST"])
    @authenticated
    async def revoke_token(self, request: IRequest, session: AdminSession,
                           token_id: str) -> bytes:
        if not await self.backend.authority.revoke_token(session.admin_name, token_id):
            return self.not_found(request, session, "There is no such API token of yours.")
        await self.audit(request, session, "admin.token.revoke",
                         f"revoked the API token {token_id}", target=token_id)
        return redirect(request, "/admin/me?done=revoked")

    # Admin → Network (guide §2.2) -------------------------------------------

    async def _network_page(self, request: IRequest, session: AdminSession, *,
                            typed: list[str] | None = None,
                            errors: dict[str, str] | None = None, status: int = 200) -> bytes:
        info = await self.backend.network()
        config = self.backend.mta.current
        if typed is None:
            typed = list(config.dns_servers)
        # The guide's DNS 1, DNS 2, DNS 3 (figure 6), and more when set.
        typed = typed + [""] * max(0, DNS_FIELDS - len(typed))
        return self.render(request, "network.html", session, status=status, section="admin",
                           subsection="network", info=info, my_hostname=config.my_hostname,
                           dns_servers=config.dns_servers, typed=typed, errors=errors or {},
                           saved=arg(request, "saved") == "1")

    @app.route("/admin/network", methods=["GET"])
    @authenticated
    async def network(self, request: IRequest, session: AdminSession) -> bytes:
        await self.backend.mta.refresh()
        return await self._network_page(request, session)

    @app.route("/admin/network", methods=["POST"])
    @authenticated
    async def save_network(self, request: IRequest, session: AdminSession) -> bytes:
        await self.backend.mta.refresh()
        typed: list[str] = []
        for number in range(1, MAX_DNS_FIELDS + 1):
            value = arg(request, f"dns{number}")
            if value is None:
                break
            typed.append(value.strip())
        errors = {f"dns{number}": problem for number, value in enumerate(typed, 1)
                  if value and (problem := dns_server_problem(value)) is not None}
        if not errors:
            refused = await self.backend.mta.update({"dns_servers": [v for v in typed if v]})
            if refused:
                errors = {"dns1": "; ".join(refused.values())}
        if errors:
            return await self._network_page(request, session, typed=typed, errors=errors,
                                            status=400)
        servers = ", ".join(self.backend.mta.current.dns_servers) or "the system's"
        await self.audit(request, session, "network.dns", f"set the DNS servers to {servers}",
                         details={"dns_servers": list(self.backend.mta.current.dns_servers)})
        return redirect(request, "/admin/network?saved=1")

    # Admin → TLS certificate ----------------------------------------------

    def _tls_page(self, request: IRequest, session: AdminSession, *, error: str | None = None,
                  status: int = 200) -> bytes:
        site_tls = self.backend.site_tls
        if site_tls is None:
            return self.not_found(request, session)
        return self.render(request, "site_tls.html", session, status=status,
                           section="admin", subsection="tls", info=site_tls.info(),
                           replaceable=site_tls.replaceable, error=error,
                           now=self.backend.certificates.now(),
                           saved=arg(request, "saved") == "1")

    @app.route("/admin/tls", methods=["GET"])
    @authenticated
    async def site_certificate(self, request: IRequest, session: AdminSession) -> bytes:
        return self._tls_page(request, session)

    @app.route("/admin/tls", methods=["POST"])
    @authenticated
    @request_deadline(UPLOAD_DEADLINE)
    async def upload_site_certificate(self, request: IRequest, session: AdminSession) -> bytes:
        if self.backend.site_tls is None:
            return self.not_found(request, session)
        if too_large(request):
            return self._tls_page(request, session, status=413, error=TOO_LARGE)
        data = upload(request, "file")
        if not data:
            return self._tls_page(request, session, status=400,
                                  error="Choose a certificate file to upload.")
        password = arg(request, "password")
        try:
            info = await self.backend.replace_site_certificate(
                data, password.encode() if password else None)
        except SiteCertificateError as e:
            return self._tls_page(request, session, status=400, error=str(e))
        await self.audit(request, session, "tls.replace",
                         f"replaced the sites' TLS certificate: {info.subject} "
                         f"(SHA-256 {info.sha256})", target=info.sha256)
        return redirect(request, "/admin/tls?saved=1")

    # Admin → Backup --------------------------------------------------------

    async def _backup_page(self, request: IRequest, session: AdminSession, *,
                           error: str | None = None, restore_error: str | None = None,
                           status: int = 200) -> bytes:
        backups = self.backend.backups
        if backups is None:
            return self.not_found(request, session)
        values = (await self.backend.settings.by_address([""]))[""]
        directory = values["backup_directory"]
        return self.render(request, "backup.html", session, status=status, section="admin",
                           subsection="backup", error=error, restore_error=restore_error,
                           values=values, scheduled=(await backups.scheduled(directory))[:20],
                           min_passphrase=MIN_PASSPHRASE,
                           max_upload_mb=MAX_UPLOAD // 1_000_000)

    @app.route("/admin/backup", methods=["GET"])
    @authenticated
    async def backup(self, request: IRequest, session: AdminSession) -> bytes:
        return await self._backup_page(request, session)

    @app.route("/admin/backup", methods=["POST"])
    @authenticated
    @request_deadline(None)  # a backup of a large mailbox takes minutes to make and send
    async def download_backup(self, request: IRequest, session: AdminSession) -> bytes:
        """
        A backup made now, sent as a download (and deleted after).
        """
        backups = self.backend.backups
        if backups is None:
            return self.not_found(request, session)
        passphrase = arg(request, "passphrase") or ""
        if passphrase != (arg(request, "confirm") or ""):
            return await self._backup_page(request, session, status=400,
                                           error="The two passphrases differ.")
        try:
            path = await backups.make(passphrase)
        except BackupError as e:
            return await self._backup_page(request, session, status=400, error=f"{e}.")
        try:
            size = path.stat().st_size
            await self.audit(request, session, "backup.download",
                             f"downloaded a backup ({size} bytes)", target=path.name)
            attachment(request, b"application/octet-stream", path.name)
            request.setHeader(b"Content-Length", str(size).encode())
            with path.open("rb") as f:
                await send_file(request, f)
        finally:
            path.unlink(missing_ok=True)
        return b""

    @app.route("/admin/backup/restore", methods=["POST"])
    @authenticated
    @request_deadline(UPLOAD_DEADLINE)
    async def restore_backup(self, request: IRequest, session: AdminSession) -> bytes:
        backups = self.backend.backups
        if backups is None:
            return self.not_found(request, session)
        if too_large(request):
            return await self._backup_page(
                request, session, status=413,
                restore_error=f"{TOO_LARGE} Restore a larger backup with twistd cipherd "
                              "restore.")
        data = upload(request, "file")
        if not data:
            return await self._backup_page(request, session, status=400,
                                           restore_error="Choose a backup file.")
        if arg(request, "replace") != "yes":
            return await self._backup_page(
                request, session, status=400,
                restore_error="Tick the box to say everything may be replaced.")
        client = client_address(request)

        def record(conn: Connection, info: BackupInfo) -> None:
            # In the restore's transaction: the restore and its record, or
            # neither, whatever happens to this request meanwhile.
            add_entry(conn, self.backend.audit.entry(
                session.admin_name, "web", client, "backup.restore",
                f"restored the backup made by node {info.node} at "
                f"{utc_from_seconds(info.created).strftime(TIME_FORMAT)} "
                f"({sum(info.rows.values())} rows)", details={"rows": dict(info.rows)}))

        try:
            info = await backups.restore(data, arg(request, "passphrase") or "", then=record)
        except BackupError as e:
            return await self._backup_page(request, session, status=400,
                                           restore_error=f"Nothing was restored: {e}.")
        # The settings as restored, not as this process last read them.
        self.backend.settings.forget()
        rows = sum(info.rows.values())
        # Every session ended with the restore, this one too.
        return self.render(request, "backup_restored.html", None, info=info, rows=rows,
                           created=utc_from_seconds(info.created).strftime(TIME_FORMAT))

    # Settings ----------------------------------------------------------------

    @app.route("/", methods=["GET"])
    @authenticated
    async def home(self, request: IRequest, session: AdminSession) -> bytes:
        """
        The dashboard: mail flow over 48 hours, the queue, the methods, the
        last errors, what expires, the tunnel, the disk and the database.
        """
        view = await self.backend.dashboard.view()
        return self.render(request, "dashboard.html", session, section="dashboard", view=view,
                           charts=charts(view), mark_titles=MARK_TITLES,
                           warn_days=WARN_DAYS)

    @app.route("/settings/global/<page>", methods=["GET", "POST"])
    @authenticated
    async def global_settings(self, request: IRequest, session: AdminSession, page: str) -> bytes:
        return await self._settings_page(request, session, GLOBAL, page)

    @app.route("/settings/<kind>/<key>/<page>", methods=["GET", "POST"])
    @authenticated
    async def scoped_settings(self, request: IRequest, session: AdminSession, kind: str,
                              key: str, page: str) -> bytes:
        scope = await self._existing_scope(kind, key)
        if scope is None:
            return self.not_found(request, session)
        return await self._settings_page(request, session, scope, page)

    def _scope(self, kind: str, key: str) -> Scope | None:
        level = _LEVELS_BY_KIND.get(kind)
        try:
            return None if level is None else scope_for(level, key)
        except InvalidValue:
            return None

    async def _existing_scope(self, kind: str, key: str) -> Scope | None:
        scope = self._scope(kind, key)
        if scope is None or not await self.backend.settings.exists(scope):
            return None
        return scope

    async def _settings_page(
        self, request: IRequest, session: AdminSession, scope: Scope, page: str
    ) -> bytes:
        if page not in _PAGE_TITLES or not properties_on(page, scope.level):
            return self.not_found(request, session)
        advanced = arg(request, "advanced") == "1"
        on_page = [p for p in properties_on(page, scope.level) if advanced or not p.advanced]
        view = _ScopeView(scope)
        errors: dict[str, str] = {}
        submitted: dict[str, str | None] = {}
        if request.method == b"POST":
            # The fields the form showed, whatever the role is by now.
            changes, errors, submitted = self._read_settings_form(request, on_page)
            if not errors:
                before = await self.backend.settings.values(scope)
                errors = await self.backend.settings.update(scope, changes)
                if not errors:
                    await self.backend.audit.settings_changed(
                        request, session.admin_name, "web", scope, before, changes)
                    suffix = "?saved=1" + ("&advanced=1" if advanced else "")
                    return redirect(request, f"{view.base}/{page}{suffix}")
        values = await self.backend.settings.values(scope)
        role = values.resolve(GLOBAL, REGISTRY["appliance_role"]).value
        # An appliance of one role is not shown the other role's fields; a
        # refused form shows again what it had.
        props = [p for p in on_page if p.shown_for(role) or p.name in submitted]
        left_out = [p.label for p in on_page if p not in props]
        has_advanced = any(p.advanced and p.shown_for(role)
                           for p in properties_on(page, scope.level))
        rows: list[dict[str, Any]] = []
        for prop in props:
            own = values.by_scope.get(scope, {})
            inherited = values.inherited(scope, prop)
            effective = values.resolve(scope, prop)
            typed = submitted.get(prop.name, "")
            shown = (typed if typed is not None else prop.type.to_form(inherited.value)
                     ) if prop.name in submitted else prop.type.to_form(effective.value)
            rows.append(
                {
                    "prop": prop,
                    # What an empty template stands for, so the admin sees
                    # what a text of their own would replace.
                    "builtin": await self.backend.builtin_template(prop.name)
                    if isinstance(prop.type, MailTemplate) else None,
                    # Whether a secret has a value here or above: says so
                    # without showing it.
                    "stored": bool(effective.value),
                    "inherit": prop.name not in own if prop.name not in submitted
                    else submitted[prop.name] is None,
                    # A secret is never sent back to the browser.  A refused
                    # form shows what was typed; a field set to inherit there,
                    # what it would inherit.
                    "value": "" if prop.secret else shown,
                    "checked": prop.type.from_form(shown) if isinstance(prop.type, Boolean)
                    else bool(effective.value),
                    "inherited_from": "factory default" if inherited.source is None
                    else inherited.source.describe(),
                    "inherited_display": _display(prop, inherited.value),
                    "size_hint": _size_hint(prop, effective.value),
                    "error": errors.get(prop.name),
                }
            )
        shown_names = {p.name for p in props}
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            key = ("Advanced: " if row["prop"].advanced else "") + row["prop"].group
            groups.setdefault(key, []).append(row)
        return self.render(
            request, "settings.html", session, status=400 if errors else 200,
            section="settings", subsection=view.subsection, view=view, page=page,
            page_title=_PAGE_TITLES[page],
            pages=[p for p in PAGES if properties_on(p.name, scope.level)
                   and (p.name == page or p.shown_for(role))],
            groups=groups, advanced=advanced, has_advanced=has_advanced,
            saved=arg(request, "saved") is not None, errors=errors,
            left_out=left_out, role_title=ROLE_TITLES[role],
            certificate_link=self._certificate_link(view, page, shown_names),
            dkim=await self._dkim_status(scope, values) if page == "dkim" else None,
            warnings=await self._tunnel_warnings(scope, shown_names, values),
        )

    async def _tunnel_warnings(self, scope: Scope, names: set[str], values: Values
                               ) -> list[str]:
        """
        The tunnel addresses among the fields C{names} a page shows that are
        set but have no certificate to do their part: accepted (the guide
        sets the address first and makes the certificate after), and said
        until fixed.
        """
        def effective(name: str) -> str:
            value: str = values.resolve(scope, REGISTRY[name]).value
            return value

        warnings = []
        for end in (WEBMAIL_SENDER, RELAY_RECIPIENT):
            address = effective(end.setting) if end.setting in names else ""
            if address and await self.backend.tunnel_certificate(end, address) is None:
                warnings.append(
                    f"There is no valid {end.purpose.value} certificate with private key for "
                    f"the {end.label} {address}. {end.missing}")
        if "webmail_recipient" in names and (address := effective("webmail_recipient")) and \
                not await self.backend.certificates.encryption_certificates(address):
            warnings.append(
                f"There are no valid S/MIME certificates for the webmail recipient {address}: "
                "messages for the secure webmail bounce. Import the webmail appliance's relay "
                "recipient certificate with “skip self-signed” unticked and whitelist it in "
                "the certificate trust list (guide §3.2 and §3.3).")
        return warnings

    async def _dkim_status(self, scope: Scope, values: Values) -> dict[str, Any]:
        """
        Settings → DKIM: the DNS record the admin must publish for the
        effective key, and whether signing is on.
        """
        return {
            "record": await self.backend.dkim_record(scope),
            "enabled": bool(values.resolve(scope, REGISTRY["dkim_enabled"]).value),
            "key_stored": bool(values.resolve(scope, REGISTRY["dkim_private_key"]).value),
        }

    @staticmethod
    def _certificate_link(view: _ScopeView, page: str, shown: set[str]
                          ) -> tuple[str, str] | None:
        """
        The (address, words) of the page's "create certificate" link, if
        any: beside its address's field, when the page shows that.
        """
        form = _CERTIFICATE_PAGES.get(page)
        if form is None or not form.applies(view.scope) or form.end.setting not in shown:
            return None
        return f"{view.base}/{page}/certificate", form.link

    @staticmethod
    def _read_settings_form(
        request: IRequest, props: list[Property]
    ) -> tuple[dict[str, Any], dict[str, str], dict[str, str | None]]:
        """
        @return: (changes with C{None} for inherit, errors, what was typed
            -- C{None} for inherit -- to show the form again).
        """
        shown = set(args(request, "fields"))
        changes: dict[str, Any] = {}
        errors: dict[str, str] = {}
        submitted: dict[str, str | None] = {}
        for prop in props:
            if prop.name not in shown:
                continue
            if arg(request, f"inherit.{prop.name}") is not None:
                changes[prop.name] = None
                submitted[prop.name] = None
                continue
            text = arg(request, f"value.{prop.name}") or ""
            if prop.secret and not text:
                continue  # left blank: the secret stays as it is
            submitted[prop.name] = text
            try:
                changes[prop.name] = prop.type.from_form(text)
            except InvalidValue as e:
                errors[prop.name] = str(e)
        return changes, errors, submitted

    # The tunnel certificates: Settings → webmail → create webmail
    # certificate (guide §3.8, §3.9), Settings → General → webmail
    # certificate (guide §2.3.11, §2.3.12) ----------------------------------

    @app.route("/settings/global/<page>/certificate", methods=["GET", "POST"])
    @authenticated
    async def global_certificate(self, request: IRequest, session: AdminSession,
                                 page: str) -> bytes:
        return await self._certificate_page(request, session, GLOBAL, page)

    @app.route("/settings/<kind>/<key>/<page>/certificate", methods=["GET", "POST"])
    @authenticated
    async def scoped_certificate(self, request: IRequest, session: AdminSession,
                                 kind: str, key: str, page: str) -> bytes:
        scope = await self._existing_scope(kind, key)
        if scope is None:
            return self.not_found(request, session)
        return await self._certificate_page(request, session, scope, page)

    async def _certificate_page(self, request: IRequest, session: AdminSession,
                                scope: Scope, page: str) -> bytes:
        """
        Figures 10, 15 and 16: the form, "A valid webmail certificate is
        available" with a link to it, and "A certificate was created."
        """
        form = _CERTIFICATE_PAGES.get(page)
        if form is None or not form.applies(scope):
            return self.not_found(request, session)
        end = form.end
        view = _ScopeView(scope)
        address = await self.backend.tunnel_address(end, scope)
        errors: dict[str, str] = {}
        confirm = False
        if request.method == b"POST":
            email = (arg(request, "email") or "").strip()
            subject = arg(request, "subject") or ""
            try:
                # Another one while a valid one exists only once the admin
                # has read what that means and confirmed.
                made = await self.backend.create_tunnel_certificate(
                    end, scope, email, subject, force=arg(request, "confirm") == "yes")
            except TunnelCertificateRefused as e:
                errors = e.errors
            else:
                confirm = not made.created
            if not (errors or confirm):
                await self.audit(request, session, "certificates.create",
                                 f"created {end.label} certificate {made.thumbprint} for "
                                 f"{made.email}", target=made.thumbprint)
                return redirect(request, f"{view.base}/{page}/certificate?created=1"
                                f"&email={quote(made.email, safe='@')}")
        else:
            email = (arg(request, "email") or address).strip()
            subject = end.subject
        available = (await self.backend.tunnel_certificate(end, email)
                     if email and "email" not in errors else None)
        return self.render(
            request, "webmail_certificate.html", session, status=400 if errors else 200,
            section="settings", subsection=view.subsection, view=view, page=page,
            page_title=_PAGE_TITLES[page], form=form,
            heading=form.heading.format(scope=view.phrase), address=address,
            values={"email": email, "subject": subject}, errors=errors, available=available,
            confirm=confirm, created=not errors and arg(request, "created") is not None,
        )

    # Domains and users ---------------------------------------------------

    @app.route("/settings/<kind>", methods=["GET", "POST"])
    @authenticated
    async def scope_list(self, request: IRequest, session: AdminSession, kind: str) -> bytes:
        level = _LEVELS_BY_KIND.get(kind)
        if level is None:
            return self.not_found(request, session)
        error = None
        if request.method == b"POST":
            entered = arg(request, "name") or ""
            scope = self._scope(kind, entered)
            if scope is None:
                noun = "domain" if level is Level.DOMAIN else "email address"
                error = f"{entered!r} is not a valid {noun}."
            elif not await self.backend.settings.add(scope):
                error = f"{scope.key} exists already."
            else:
                await self.audit(request, session, "settings.add", f"added {scope.describe()}",
                                 target=scope.describe())
                return redirect(request, f"{_ScopeView(scope).base}/preferences")
        names = await self.backend.settings.list(level)
        overridden = await self.backend.settings.overridden(level)
        return self.render(
            request, "scopes.html", session, status=400 if error else 200, section="settings",
            subsection=kind, kind=kind, level=level, error=error,
            entries=[_ScopeView(Scope(level, n)) for n in names],
            overrides={n: [REGISTRY[name].label for name in overridden.get(n, [])
                           if name in REGISTRY] for n in names},
        )

    @app.route("/settings/<kind>/<key>/delete", methods=["POST"])
    @authenticated
    async def scope_delete(self, request: IRequest, session: AdminSession, kind: str,
                           key: str) -> bytes:
        scope = self._scope(kind, key)
        if scope is None or not await self.backend.settings.delete(scope):
            return self.not_found(request, session)
        await self.audit(request, session, "settings.delete", f"deleted {scope.describe()}",
                         target=scope.describe())
        return redirect(request, f"/settings/{kind}")

    # Logs ------------------------------------------------------------------

    @app.route("/logs", methods=["GET"])
    @authenticated
    async def logs_page(self, request: IRequest, session: AdminSession) -> bytes:
        """
        Admin → Logs: the last lines of a log, those that contain the search
        text (a queue id, an address, words) within a time range, wrapped;
        with *follow*, the page reloads itself every few seconds.
        """
        name = arg(request, "log") or "mta"
        if name not in self.backend.logs:
            return self.not_found(request, session)
        count = whole_number((arg(request, "lines") or "").strip()) or DEFAULT_LOG_LINES
        query, typed, errors = log_query(request)
        lines = [] if errors else await self.backend.tail_log(name, count, query)
        follow = arg(request, "follow") == "1" and not errors
        return self.render(
            request, "logs.html", session, status=400 if errors else 200, section="logs",
            log_name=name, lines=lines, count=count, typed=typed, errors=errors,
            follow=follow, filtered=query != LogQuery(), refresh=FOLLOW_SECONDS,
            query_string=urlencode({"log": name, "lines": count, **typed}),
        )

    @app.route("/audit", methods=["GET"])
    @authenticated
    async def audit_page(self, request: IRequest, session: AdminSession) -> bytes:
        """
        Logs → Audit log: the changes admins made, newest first, a page at
        a time, found by text, admin, kind of change and time.
        """
        query, typed, errors = audit_query(request)
        entries = [] if errors else await self.backend.audit.find(query)
        older = None
        if len(entries) == query.limit and entries[-1].id is not None:
            older = urlencode({**{k: v for k, v in typed.items() if v and k != "before"},
                               "before": entries[-1].id})
        return self.render(
            request, "audit.html", session, status=400 if errors else 200, section="logs",
            entries=entries, typed=typed, errors=errors, actors=await self.backend.audit.actors(),
            groups=ACTION_GROUPS, older=older,
            filtered=any(v for k, v in typed.items() if k not in ("before", "limit")),
            first_page=not typed["before"],
        )

    @app.route("/logs/download", methods=["GET"])
    @authenticated
    async def logs_download(self, request: IRequest, session: AdminSession) -> bytes:
        """
        The lines the logs page shows with the same search, up to the most a
        log is read for, as a text file.
        """
        name = arg(request, "log") or "mta"
        query, _, errors = log_query(request)
        if name not in self.backend.logs or errors:
            return self.not_found(request, session)
        lines = await self.backend.tail_log(name, MAX_TAIL_LINES, query)
        attachment(request, b"text/plain; charset=utf-8", f"{name}.log")
        return "".join(f"{line}\n" for line in lines).encode()
