"""
The JSON API under ``/api/v1`` of the admin site (DESIGN.md, Contract).

HTTP Basic authentication over TLS with an admin account: 401 without valid
credentials; 403 with an explanation until the default password has been
changed (except ``POST /admin/password``); 400 with a message per field for
invalid values.  Failed logins count toward the same lockout as the pages.
Errors are JSON too: 404, 405 with C{Allow}, and 503 with C{Retry-After}
while the database cannot be used (see L{cipherd.web.common.SiteApp}).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from zope.interface import implementer

from cipherd.core.envelope import QUEUE_ID
from cipherd.mpa.dlp import BUILTIN, Pattern, PatternError
from cipherd.mpa.dlp_policy import DataLossPrevention
from cipherd.pki.ca import (
    REASONS,
    Authority,
    CAError,
    CertificateAuthority,
    proposed_crl_url,
)
from cipherd.pki.certs import describe_name
from cipherd.pki.errors import CertificateImportError
from cipherd.pki.keyring import StoredKey
from cipherd.pki.pgp import PGPError, Subkey
from cipherd.pki.sitetls import ISiteCertificate, SiteCertificateError, SiteCertificateInfo
from cipherd.pki.trust import CTLStatus, Purpose
from cipherd.settings import (
    GLOBAL,
    REGISTRY,
    InvalidValue,
    Level,
    Scope,
    email_problem,
    scope_for,
)
from cipherd.smtp.compose import ComposeError
from cipherd.smtp.config import (
    RelayHost,
    authorized_recipient_problems,
    relay_host_problems,
    relay_host_text,
)
from cipherd.smtp.queue import describe as describe_queued
from cipherd.store.admins import AdminRow, TokenRow
from cipherd.store.ca import IssuedRow, RequestRow
from cipherd.store.certificates import CERTIFICATES, ROOTS
from cipherd.store.dlp import QuarantinedRow
from cipherd.web import queue_view, roles
from cipherd.web.audit import audit_query, changed_values, entry_json
from cipherd.web.auth import AccountRefused, LoginRefused, ServerBusy, WeakPassword
from cipherd.web.backend import (
    FINGERPRINT,
    PGP_MARKS,
    RELAY_RECIPIENT,
    WEBMAIL_CERTIFICATE_AVAILABLE,
    WEBMAIL_SENDER,
    AdminBackend,
    RecallRefused,
    TunnelCertificateRefused,
    TunnelEnd,
    generated_key_problems,
    recall_through_tunnel,
    release_quarantined,
    send_pkcs12,
    send_test_email,
)
from cipherd.web.ca_pages import CRL_TYPE, PKCS12_TYPE, authority_file, issued_status
from cipherd.web.common import (
    UPLOAD_DEADLINE,
    ErrorAnswer,
    IErrorPages,
    SiteApp,
    arg,
    args,
    attachment,
    client_address,
    json_response,
    log_query,
    request_deadline,
    whole_number,
)
from cipherd.web.openapi import DOCUMENT
from cipherd.web.pgp_pages import send_armored_key
from cipherd.web.pki_pages import (
    BUNDLE_FORMATS,
    MAX_DOWNLOAD,
    MAX_SEARCH_LENGTH,
    MAX_UPLOAD,
    TIME_FORMAT,
    certificate_facts,
    send_bundle,
)
from cipherd.webmail.administration import ACTIONS, STATES, AccountView, ActionRefused
from cipherd.webmail.tracking import TUNNEL_ID, Timeline

# Bodies larger than this are refused before parsing.
MAX_JSON_BODY = 1_000_000
DEFAULT_LOG_LINES = 100
# GET /certificates: a page, not the whole store (100,000 certificates took
# seconds to list in one response).  The offset's bound keeps it a number
# every database takes.
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
MAX_LIST_OFFSET = 1_000_000_000
# A certificate's name here: its SHA-256 thumbprint.
_THUMBPRINT = re.compile(r"[0-9a-fA-F]{64}")
# How the API writes a time: ISO 8601, UTC.
ISO_UTC = "%Y-%m-%dT%H:%M:%SZ"
# How query flags (?trusted=) are spelled.
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
# The relay hosts of the MTA config, by the first word of their names.
_RELAY_HOSTS = ("external", "internal")

log = Logger(namespace="cipherd.admin")

Handler = Callable[..., Awaitable[Any]]


class _BadRequest(Exception):
    def __init__(self, message: str, errors: dict[str, str] | None = None,
                 status: int = 400) -> None:
        super().__init__(message)
        self.errors = errors
        self.status = status


# What a cross-site HTML form or a "simple" fetch can send without a CORS
# preflight; a browser holding cached Basic credentials would attach them.
_FORM_CONTENT_TYPES = {"", "application/x-www-form-urlencoded", "multipart/form-data",
                       "text/plain"}


def _media_type(request: IRequest) -> str:
    header = request.getHeader(b"content-type") or b""
    return header.split(b";", 1)[0].strip().lower().decode("latin-1")


def _cross_site(request: IRequest) -> str | None:
    """
    Why a request looks sent by another site's page, or C{None}.

    Browsers resend cached HTTP Basic credentials, so the API refuses what
    a browser marks as coming from elsewhere.
    """
    fetch_site = request.getHeader(b"sec-fetch-site")
    if fetch_site is not None and fetch_site.lower() not in (b"same-origin", b"none"):
        return "The API does not answer requests made by another site's pages."
    origin = request.getHeader(b"origin")
    host = request.getHeader(b"host")
    if origin is not None and (host is None or origin.lower() != b"https://" + host.lower()):
        return "The API does not answer requests made by another site's pages."
    return None


def _busy(request: IRequest, message: str) -> bytes:
    request.setHeader(b"Retry-After", b"5")
    return json_response(request, 503, {"error": message})


def _credentials(request: IRequest) -> tuple[str, str] | None:
    header = request.getHeader(b"authorization")
    if not header or not header[:6].lower() == b"basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, colon, password = decoded.partition(":")
    return (name, password) if colon else None


def _not_queued(queue_id: str) -> _BadRequest:
    return _BadRequest(f"There is no message {queue_id} in the queue.", status=404)


def _bearer(request: IRequest) -> str | None:
    header = request.getHeader(b"authorization")
    if not header or not header[:7].lower() == b"bearer ":
        return None
    return header[7:].strip().decode("ascii", "replace")


def _authenticated(*, allow_default_password: bool = False) -> Callable[[Handler], Handler]:
    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapper(self: AdminAPI, request: IRequest, *a: Any, **kw: Any) -> bytes:
            refusal = _cross_site(request)
            if refusal:
                return json_response(request, 403, {"error": refusal})
            credentials = _credentials(request)
            bearer = _bearer(request)
            if credentials is None and bearer is None:
                return self._unauthorized(request, "Authentication required (HTTP Basic, or "
                                          "an API token as Authorization: Bearer).")
            try:
                if bearer is not None:
                    admin = await self.backend.authority.check_token(bearer)
                else:
                    assert credentials is not None
                    admin = await self.backend.authority.check_password(
                        *credentials, client_address(request)
                    )
                    if admin.has_totp:
                        return self._unauthorized(
                            request, "This account has a second factor: the API takes an "
                            "API token from it (My account → API tokens), not its password.")
            except ServerBusy as e:
                return _busy(request, str(e))
            except LoginRefused as e:
                return self._unauthorized(request, str(e))
            if admin.must_change_password and not allow_default_password:
                return json_response(request, 403, {
                    "error": "The default admin password must be changed before the API can "
                    "be used: POST /api/v1/admin/password with {\"password\": \"...\"}."
                })
            method = request.method.decode("ascii", "replace")
            path = request.path.decode("utf-8", "replace")
            if not roles.allowed(admin.role, method, path):
                return json_response(request, 403, {"error": roles.refusal(admin.role)})
            try:
                return await handler(self, request, admin, *a, **kw)
            except _BadRequest as e:
                body: dict[str, Any] = {"error": str(e)}
                if e.errors:
                    body["errors"] = e.errors
                return json_response(request, e.status, body)

        return wrapper

    return decorate


def _json_body(request: IRequest) -> Any:
    # Requiring the JSON media type also keeps cross-site forms out: a form
    # cannot send it, and a script that does must pass a CORS preflight.
    if _media_type(request) != "application/json":
        raise _BadRequest("Send the body as JSON, with Content-Type: application/json.",
                          status=415)
    data = _raw_body(request, MAX_JSON_BODY)
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise _BadRequest(f"The request body is not valid JSON: {e}") from None


def _recipients(body: Any) -> list[str]:
    """
    The C{recipients} of a recall's body: addresses, at most 1,000.
    """
    if not isinstance(body, dict):
        raise _BadRequest("The body must be a JSON object.")
    recipients = body.get("recipients") or []
    if not isinstance(recipients, list) or len(recipients) > 1000 or not all(
            isinstance(r, str) for r in recipients):
        raise _BadRequest("Some fields were refused.",
                          {"recipients": "must be a list of at most 1,000 addresses"})
    for recipient in recipients:
        if problem := email_problem(recipient.strip()):
            raise _BadRequest("Some fields were refused.", {"recipients": problem})
    return sorted({r.strip().lower() for r in recipients})


def _timeline_json(timeline: Timeline) -> dict[str, Any]:
    return {"tunnel_id": timeline.tunnel_id, "subject": timeline.subject,
            "sender": timeline.sender, "recipients": [{
                "address": r.address, "ended": r.ended or None,
                "expires": _iso(r.expires) if r.expires else None,
                "events": [{"at": _iso(e.at), "event": e.kind, "detail": e.detail}
                           for e in r.events]} for r in timeline.recipients]}


@implementer(IErrorPages)
class AdminAPI:
    """
    The JSON API.
    """

    app = SiteApp()

    def __init__(self, backend: AdminBackend) -> None:
        self.backend = backend

    @property
    def clock(self) -> IReactorTime:
        return self.backend.authority.clock

    def error_page(self, request: IRequest, answer: ErrorAnswer) -> bytes:
        message = answer.message
        if answer.status == 404:
            message = "There is no such resource."
        elif answer.status == 405:
            method = request.method.decode("ascii", "replace")
            allowed = answer.headers.get(b"Allow", b"").decode("ascii")
            message = f"This resource does not answer {method}; it answers {allowed}."
        return json_response(request, answer.status, {"error": message})

    async def _audit(self, request: IRequest, admin: AdminRow, action: str, summary: str, *,
                     target: str = "", details: Mapping[str, Any] | None = None) -> None:
        """
        Record a change made through the API (L{AuditTrail.record}).
        """
        await self.backend.audit.record_request(request, admin.name, "api", action, summary,
                                                target=target, details=details)

    def _unauthorized(self, request: IRequest, message: str) -> bytes:
        request.setHeader(b"WWW-Authenticate", b'Basic realm="cipherd admin", charset="UTF-8"')
        return json_response(request, 401, {"error": message})

    @app.route("/v1/openapi.json", methods=["GET"])
    def openapi(self, request: IRequest) -> bytes:
        """
        The OpenAPI 3.1 description of this API (L{cipherd.web.openapi}).
        """
        return json_response(request, 200, DOCUMENT)

    @app.route("/v1/admin/password", methods=["POST"])
    @_authenticated(allow_default_password=True)
    async def change_password(self, request: IRequest, admin: AdminRow) -> bytes:
        body = _json_body(request)
        password = body.get("password") if isinstance(body, dict) else None
        if not isinstance(password, str):
            raise _BadRequest("Send {\"password\": \"...\"}.",
                              {"password": "must be a string"})
        try:
            await self.backend.authority.change_password(admin.name, password, keep_session=None)
        except WeakPassword as e:
            raise _BadRequest("The password was refused.", {"password": str(e)}) from None
        except ServerBusy as e:
            return _busy(request, str(e))
        await self._audit(request, admin, "admin.password", "changed the password",
                          target=admin.name)
        return json_response(request, 200, {"status": "The password was changed."})

    @_authenticated()
    async def metrics(self, request: IRequest, admin: AdminRow) -> bytes:
        """
        GET /metrics on the admin site (not under /api): Prometheus text,
        for any role, with an API token or HTTP Basic.
        """
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return await self.backend.dashboard.metrics()

    # Admin accounts and API tokens ----------------------------------------

    @app.route("/v1/admin/accounts", methods=["GET"])
    @_authenticated()
    async def list_admin_accounts(self, request: IRequest, admin: AdminRow) -> bytes:
        accounts = await self.backend.authority.accounts()
        return json_response(request, 200, {"accounts": [
            {"name": a.name, "role": a.role, "second_factor": a.has_totp,
             "must_change_password": a.must_change_password} for a in accounts]})

    @app.route("/v1/admin/accounts", methods=["POST"])
    @_authenticated()
    async def create_admin_account(self, request: IRequest, admin: AdminRow) -> bytes:
        """
        C{{"name": ..., "role": "administrator"|"operator"|"auditor"}}: the
        answer holds its first password, which it must change (shown once).
        """
        body = _json_body(request)
        name = body.get("name") if isinstance(body, dict) else None
        role = body.get("role") if isinstance(body, dict) else None
        errors = {}
        if not isinstance(name, str):
            errors["name"] = "must be a string"
        if role not in roles.ROLES:
            errors["role"] = f"must be one of {', '.join(roles.ROLES)}"
        if errors:
            raise _BadRequest("Nothing was created.", errors)
        assert isinstance(name, str) and isinstance(role, str)
        try:
            password = await self.backend.authority.create_account(name, role)
        except AccountRefused as e:
            raise _BadRequest(str(e), {"name": str(e)}) from None
        await self._audit(request, admin, "admin.create",
                          f"created the admin account {name} ({role})", target=name)
        return json_response(request, 201, {"name": name, "role": role, "password": password,
                                            "must_change_password": True})

    @app.route("/v1/admin/accounts/<name>", methods=["PATCH"])
    @_authenticated()
    async def change_admin_account(self, request: IRequest, admin: AdminRow,
                                   name: str) -> bytes:
        body = _json_body(request)
        role = body.get("role") if isinstance(body, dict) else None
        if role not in roles.ROLES:
            raise _BadRequest("Nothing was changed.",
                              {"role": f"must be one of {', '.join(roles.ROLES)}"})
        assert isinstance(role, str)
        try:
            await self.backend.authority.set_role(name, role)
        except AccountRefused as e:
            raise _BadRequest(str(e), status=404 if "no admin" in str(e) else 409) from None
        await self._audit(request, admin, "admin.role", f"made {name} {role}", target=name,
                          details={"role": role})
        return json_response(request, 200, {"name": name, "role": role})

    @app.route("/v1/admin/accounts/<name>/reset-password", methods=["POST"])
    @_authenticated()
    async def reset_admin_password(self, request: IRequest, admin: AdminRow,
                                   name: str) -> bytes:
        try:
            password = await self.backend.authority.reset_account_password(name)
        except AccountRefused as e:
            raise _BadRequest(str(e), status=404) from None
        await self._audit(request, admin, "admin.reset_password",
                          f"reset the password of {name}", target=name)
        return json_response(request, 200, {"name": name, "password": password,
                                            "must_change_password": True})

    @app.route("/v1/admin/accounts/<name>", methods=["DELETE"])
    @_authenticated()
    async def delete_admin_account(self, request: IRequest, admin: AdminRow,
                                   name: str) -> bytes:
        if name == admin.name:
            raise _BadRequest("An account cannot delete itself.", status=409)
        try:
            await self.backend.authority.delete_account(name)
        except AccountRefused as e:
            raise _BadRequest(str(e), status=404 if "no admin" in str(e) else 409) from None
        await self._audit(request, admin, "admin.delete", f"deleted the admin account {name}",
                          target=name)
        request.setResponseCode(204)
        return b""

    @app.route("/v1/admin/me", methods=["GET"])
    @_authenticated()
    async def get_me(self, request: IRequest, admin: AdminRow) -> bytes:
        tokens = await self.backend.authority.tokens(admin.name)
        return json_response(request, 200, {
            "name": admin.name, "role": admin.role, "second_factor": admin.has_totp,
            "tokens": [_token_json(t) for t in tokens]})

    @app.route("/v1/admin/me/tokens", methods=["POST"])
    @_authenticated()
    async def create_my_token(self, request: IRequest, admin: AdminRow) -> bytes:
        """
        C{{"label": ...}}: a new API token for this account, with its role;
        the answer is the only time it is shown.
        """
        body = _json_body(request) if _has_body(request) else {}
        label = body.get("label", "") if isinstance(body, dict) else None
        if not isinstance(label, str):
            raise _BadRequest("Nothing was created.", {"label": "must be a string"})
        made = await self.backend.authority.create_token(admin.name, label)
        await self._audit(request, admin, "admin.token.create",
                          f"created the API token {made.id} ({made.label})", target=made.id)
        return json_response(request, 201, {"id": made.id, "token": made.token,
                                            "label": made.label})

    @app.route("/v1/admin/me/tokens/<token_id>", methods=["DELETE"])
    @_authenticated()
    async def revoke_my_token(self, request: IRequest, admin: AdminRow,
                              token_id: str) -> bytes:
        if not await self.backend.authority.revoke_token(admin.name, token_id):
            raise _BadRequest("There is no such API token of yours.", status=404)
        await self._audit(request, admin, "admin.token.revoke",
                          f"revoked the API token {token_id}", target=token_id)
        request.setResponseCode(204)
        return b""

    # Settings ------------------------------------------------------------

    def _scope(self, level: Level, key: str) -> Scope:
        try:
            return scope_for(level, key)
        except InvalidValue as e:
            raise _BadRequest(str(e)) from None

    async def _settings_body(self, scope: Scope) -> dict[str, Any]:
        properties = {}
        for name, resolved in (await self.backend.settings.effective(scope)).items():
            entry: dict[str, Any] = {"value": resolved.value, "level": resolved.origin}
            if REGISTRY[name].secret:
                # Write-only: a PATCH sets a new one, nothing reads it back.
                entry["value"] = None
                entry["hidden"] = True
            if resolved.source is not None and resolved.source.level is not Level.GLOBAL:
                entry["scope"] = resolved.source.key
            entry["inherited"] = resolved.source != scope
            properties[name] = entry
        return {"scope": scope.describe(), "properties": properties}

    async def _patch(self, request: IRequest, scope: Scope, admin: AdminRow) -> bytes:
        body = _json_body(request)
        if not isinstance(body, dict):
            raise _BadRequest("Send a JSON object {name: value}; null means inherit.")
        before = await self.backend.settings.values(scope)
        errors = await self.backend.settings.update(scope, body)
        if errors:
            raise _BadRequest("Some values were refused; nothing was changed.", errors)
        await self.backend.audit.settings_changed(request, admin.name, "api", scope, before,
                                                  body)
        return json_response(request, 200, await self._settings_body(scope))

    @app.route("/v1/settings/global", methods=["GET"])
    @_authenticated()
    async def get_global(self, request: IRequest, admin: AdminRow) -> bytes:
        return json_response(request, 200, await self._settings_body(GLOBAL))

    @app.route("/v1/settings/global", methods=["PATCH"])
    @_authenticated()
    async def patch_global(self, request: IRequest, admin: AdminRow) -> bytes:
        return await self._patch(request, GLOBAL, admin)

    @app.route("/v1/settings/domains", methods=["GET"])
    @_authenticated()
    async def list_domains(self, request: IRequest, admin: AdminRow) -> bytes:
        domains = await self.backend.settings.list(Level.DOMAIN)
        return json_response(request, 200, {"domains": domains})

    @app.route("/v1/settings/users", methods=["GET"])
    @_authenticated()
    async def list_users(self, request: IRequest, admin: AdminRow) -> bytes:
        users = await self.backend.settings.list(Level.USER)
        return json_response(request, 200, {"users": users})

    @app.route("/v1/settings/domains/<key>", methods=["GET"])
    @_authenticated()
    async def get_domain(self, request: IRequest, admin: AdminRow, key: str) -> bytes:
        return json_response(request, 200,
                             await self._settings_body(self._scope(Level.DOMAIN, key)))

    @app.route("/v1/settings/users/<key>", methods=["GET"])
    @_authenticated()
    async def get_user(self, request: IRequest, admin: AdminRow, key: str) -> bytes:
        return json_response(request, 200,
                             await self._settings_body(self._scope(Level.USER, key)))

    @app.route("/v1/settings/domains/<key>", methods=["PATCH"])
    @_authenticated()
    async def patch_domain(self, request: IRequest, admin: AdminRow, key: str) -> bytes:
        return await self._patch(request, self._scope(Level.DOMAIN, key), admin)

    @app.route("/v1/settings/users/<key>", methods=["PATCH"])
    @_authenticated()
    async def patch_user(self, request: IRequest, admin: AdminRow, key: str) -> bytes:
        return await self._patch(request, self._scope(Level.USER, key), admin)

    @app.route("/v1/settings/domains/<key>", methods=["DELETE"])
    @_authenticated()
    async def delete_domain(self, request: IRequest, admin: AdminRow, key: str) -> bytes:
        return await self._delete(request, self._scope(Level.DOMAIN, key), admin)

    @app.route("/v1/settings/users/<key>", methods=["DELETE"])
    @_authenticated()
    async def delete_user(self, request: IRequest, admin: AdminRow, key: str) -> bytes:
        return await self._delete(request, self._scope(Level.USER, key), admin)

    async def _delete(self, request: IRequest, scope: Scope, admin: AdminRow) -> bytes:
        if not await self.backend.settings.delete(scope):
            return json_response(request, 404, {"error": f"There is no {scope.describe()}."})
        await self._audit(request, admin, "settings.delete", f"deleted {scope.describe()}",
                          target=scope.describe())
        return json_response(request, 200, {"status": f"Deleted {scope.describe()}."})

    # Logs ------------------------------------------------------------------

    # MTA -----------------------------------------------------------------

    @app.route("/v1/mta", methods=["GET"])
    @_authenticated()
    async def get_mta(self, request: IRequest, admin: AdminRow) -> bytes:
        return json_response(request, 200, (await self.backend.mta.refresh()).to_json())

    @app.route("/v1/mta", methods=["PATCH"])
    @_authenticated()
    async def patch_mta(self, request: IRequest, admin: AdminRow) -> bytes:
        body = _json_body(request)
        if not isinstance(body, dict):
            raise _BadRequest("Send a JSON object {name: value}; null restores the default.")
        before = self.backend.mta.current.to_json()
        errors = await self.backend.mta.update(body)
        if errors:
            raise _BadRequest("Some values were refused; nothing was changed.", errors)
        changed = changed_values(before, self.backend.mta.current.to_json(), body)
        if changed:
            await self._audit(request, admin, "mta.change",
                              f"changed the MTA config ({', '.join(changed)})", details=changed)
        return json_response(request, 200, self.backend.mta.current.to_json())

    @app.route("/v1/mta/transports", methods=["GET"])
    @_authenticated()
    async def get_transports(self, request: IRequest, admin: AdminRow) -> bytes:
        config = await self.backend.mta.refresh()
        return json_response(request, 200, {"transports": config.to_json()["transports"]})

    @app.route("/v1/mta/transports", methods=["POST"])
    @_authenticated()
    async def add_transport(self, request: IRequest, admin: AdminRow) -> bytes:
        body = _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("domain"), str):
            raise _BadRequest('Send {"domain": ..., "host": ..., "port": ...}.')
        current = (await self.backend.mta.refresh()).to_json()["transports"]
        domain = body["domain"].strip().lower().rstrip(".")
        others = [t for t in current if t["domain"] != domain]
        return await self._set_transports(request, admin, [*others, body], f"set {domain}")

    @app.route("/v1/mta/transports", methods=["DELETE"])
    @_authenticated()
    async def delete_transport(self, request: IRequest, admin: AdminRow) -> bytes:
        body = _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("domain"), str):
            raise _BadRequest('Send {"domain": ...}.')
        domain = body["domain"].strip().lower().rstrip(".")
        current = (await self.backend.mta.refresh()).to_json()["transports"]
        kept = [t for t in current if t["domain"] != domain]
        if len(kept) == len(current):
            raise _BadRequest(f"There is no transport for {domain}.", status=404)
        return await self._set_transports(request, admin, kept, f"removed {domain}")

    async def _set_transports(self, request: IRequest, admin: AdminRow,
                              transports: list[Any], what: str) -> bytes:
        errors = await self.backend.mta.update({"transports": transports})
        if errors:
            raise _BadRequest("The transport was refused; nothing was changed.", errors)
        await self._audit(request, admin, "mta.transports",
                          f"changed the SMTP transports ({what})",
                          details={"transports": transports})
        return json_response(request, 200,
                             {"transports": self.backend.mta.current.to_json()["transports"]})

    # Guide §2.3.1, figure 7: relay domains one by one (*Add domain*, delete).

    @app.route("/v1/mta/relay-domains", methods=["GET"])
    @_authenticated()
    async def get_relay_domains(self, request: IRequest, admin: AdminRow) -> bytes:
        config = await self.backend.mta.refresh()
        return json_response(request, 200, {"relay_domains": list(config.relay_domains)})

    @app.route("/v1/mta/relay-domains", methods=["POST"])
    @_authenticated()
    async def add_relay_domain(self, request: IRequest, admin: AdminRow) -> bytes:
        typed = _domain_from(_json_body(request))
        try:
            domain = await self.backend.add_relay_domain(typed)
        except ValueError as e:
            raise _BadRequest("The domain was refused; nothing was changed.",
                              {"domain": str(e)}) from None
        await self._audit(request, admin, "mta.relay_domain.add",
                          f"added the relay domain {domain}", target=domain)
        return json_response(request, 200,
                             {"relay_domains": list(self.backend.mta.current.relay_domains)})

    @app.route("/v1/mta/relay-domains", methods=["DELETE"])
    @_authenticated()
    async def delete_relay_domain(self, request: IRequest, admin: AdminRow) -> bytes:
        domain = _domain_from(_json_body(request))
        if not await self.backend.remove_relay_domain(domain):
            raise _BadRequest(f"{domain} is not a relay domain.", status=404)
        await self._audit(request, admin, "mta.relay_domain.delete",
                          f"deleted the relay domain {domain}", target=domain)
        return json_response(request, 200,
                             {"relay_domains": list(self.backend.mta.current.relay_domains)})

    # Figure 7: the relay hosts as host, port and *mx*, as the page has them
    # (PATCH /mta takes and GET /mta gives them in Postfix's syntax too).

    def _relay_host_name(self, which: str) -> str:
        if which not in _RELAY_HOSTS:
            raise _BadRequest("There is no such resource.", status=404)
        return f"{which}_relay_host"

    @app.route("/v1/mta/relay-hosts/<which>", methods=["GET"])
    @_authenticated()
    async def get_relay_host(self, request: IRequest, admin: AdminRow, which: str) -> bytes:
        name = self._relay_host_name(which)
        config = await self.backend.mta.refresh()
        return json_response(request, 200, _relay_host_json(getattr(config, name)))

    @app.route("/v1/mta/relay-hosts/<which>", methods=["PUT"])
    @_authenticated()
    async def put_relay_host(self, request: IRequest, admin: AdminRow, which: str) -> bytes:
        name = self._relay_host_name(which)
        body = _json_body(request)
        if not isinstance(body, dict):
            raise _BadRequest('Send {"host": ..., "port": 25, "mx": false}.')
        host, port, mx = body.get("host"), body.get("port", 25), body.get("mx", False)
        errors = {}
        if not isinstance(host, str):
            errors["host"] = "must be a host name or an IP address, as a string"
        if isinstance(port, bool) or not isinstance(port, int):
            errors["port"] = "must be a number from 1 to 65535"
        if not isinstance(mx, bool):
            errors["mx"] = "must be true or false"
        if not errors and isinstance(host, str):
            errors = relay_host_problems(host, str(port)) or await self.backend.mta.update(
                {name: relay_host_text(host, str(port), mx)})
        if errors:
            raise _BadRequest("The relay host was refused; nothing was changed.", errors)
        return await self._relay_host_set(request, admin, name)

    @app.route("/v1/mta/relay-hosts/<which>", methods=["DELETE"])
    @_authenticated()
    async def delete_relay_host(self, request: IRequest, admin: AdminRow, which: str) -> bytes:
        name = self._relay_host_name(which)
        await self.backend.mta.update({name: ""})
        return await self._relay_host_set(request, admin, name)

    async def _relay_host_set(self, request: IRequest, admin: AdminRow, name: str) -> bytes:
        value = getattr(self.backend.mta.current, name)
        await self._audit(request, admin, "mta.change",
                          f"set the {name.replace('_', ' ')} to {value!r}",
                          details={name: value})
        return json_response(request, 200, _relay_host_json(value))

    # Guide §2.3.14: where webmail recipients may reply to.

    @app.route("/v1/mta/authorized-recipients", methods=["GET"])
    @_authenticated()
    async def get_authorized_recipients(self, request: IRequest, admin: AdminRow) -> bytes:
        config = await self.backend.mta.refresh()
        return json_response(request, 200,
                             {"authorized_recipients": list(config.authorized_recipients)})

    @app.route("/v1/mta/authorized-recipients", methods=["PUT"])
    @_authenticated()
    async def put_authorized_recipients(self, request: IRequest, admin: AdminRow) -> bytes:
        body = _json_body(request)
        if not isinstance(body, list):
            raise _BadRequest('Send the whole list as a JSON array, e.g. ["example.com", '
                              '"*.example.org", "bob@partner.example"]; [] for nobody.')
        problems = authorized_recipient_problems(body)
        errors = problems or await self.backend.mta.update({"authorized_recipients": body})
        if errors:
            raise _BadRequest("Some entries were refused; nothing was changed.", errors)
        entries = list(self.backend.mta.current.authorized_recipients)
        await self._audit(request, admin, "mta.authorized_recipients",
                          f"set the authorized recipients to {entries}",
                          details={"authorized_recipients": entries})
        return json_response(request, 200, {"authorized_recipients": entries})

    # Admin → Network (guide §2.2): read only; cipherd's own DNS servers are
    # the MTA's dns_servers (PATCH /mta).

    @app.route("/v1/network", methods=["GET"])
    @_authenticated()
    async def get_network(self, request: IRequest, admin: AdminRow) -> bytes:
        info = await self.backend.network()
        config = await self.backend.mta.refresh()
        body = asdict(info)
        for interface, found in zip(body["interfaces"], info.interfaces, strict=True):
            for address, of in zip(interface["addresses"], found.addresses, strict=True):
                address["prefix"] = of.prefix
        body["dns_servers"] = list(config.dns_servers)
        body["my_hostname"] = config.my_hostname
        return json_response(request, 200, body)

    # Admin → TLS certificate: the sites' certificate, replaced without a
    # restart.

    def _site_tls(self) -> ISiteCertificate:
        if self.backend.site_tls is None:
            raise _BadRequest("This node has no TLS certificate of its own.", status=404)
        return self.backend.site_tls

    @app.route("/v1/tls-certificate", methods=["GET"])
    @_authenticated()
    async def get_site_certificate(self, request: IRequest, admin: AdminRow) -> bytes:
        site_tls = self._site_tls()
        return json_response(request, 200,
                             _site_certificate_json(site_tls.info(), site_tls.replaceable))

    @app.route("/v1/tls-certificate", methods=["PUT", "POST"])
    @_authenticated()
    @request_deadline(UPLOAD_DEADLINE)
    async def upload_site_certificate(self, request: IRequest, admin: AdminRow) -> bytes:
        """
        The file's bytes as the body: PEM with the certificate, its chain
        and its key, or PKCS#12; the password (of the PKCS#12 file or the
        encrypted key) in C{X-Password} or C{?password=}.
        """
        site_tls = self._site_tls()
        if site_tls.replaceable is not None:
            raise _BadRequest(site_tls.replaceable, status=409)
        data = self._file_body(request)
        password = _password(request)
        try:
            info = await self.backend.replace_site_certificate(
                data, password.encode() if password else None)
        except SiteCertificateError as e:
            raise _BadRequest(str(e)) from None
        await self._audit(request, admin, "tls.replace",
                          f"replaced the sites' TLS certificate: {info.subject} "
                          f"(SHA-256 {info.sha256})", target=info.sha256)
        return json_response(request, 200, _site_certificate_json(info, None))

    @staticmethod
    def _file_body(request: IRequest) -> bytes:
        """
        An uploaded file, sent as the body.
        """
        if _media_type(request) in _FORM_CONTENT_TYPES:
            raise _BadRequest("Send the file as the request body with a Content-Type such as "
                              "application/octet-stream.", status=415)
        return _raw_body(request, MAX_UPLOAD)

    @app.route("/v1/queue", methods=["GET"])
    @_authenticated()
    async def get_queue(self, request: IRequest, admin: AdminRow) -> bytes:
        """
        Every queued message, oldest first; C{?q=} those whose queue id,
        sender, a recipient or subject contains it.
        """
        text = arg(request, "q") or ""
        if len(text) > MAX_SEARCH_LENGTH:
            raise _BadRequest("Some query parameters were refused.",
                              {"q": f"must be at most {MAX_SEARCH_LENGTH} characters"})
        messages = await queue_view.find(self.backend.queue, text)
        return json_response(request, 200, {"messages": [describe_queued(m) for m in messages]})

    @app.route("/v1/queue/actions", methods=["POST"])
    @_authenticated()
    async def queue_actions(self, request: IRequest, admin: AdminRow) -> bytes:
        """
        C{{"action": "hold"|"release"|"deliver"|"delete", "ids": [...]}}.
        """
        body = _json_body(request)
        action = body.get("action") if isinstance(body, dict) else None
        ids = body.get("ids") if isinstance(body, dict) else None
        errors = {}
        if not isinstance(action, str) or action not in queue_view.BULK_ACTIONS:
            errors["action"] = f"must be one of {', '.join(queue_view.BULK_ACTIONS)}"
        if not isinstance(ids, list) or not ids or not all(
                isinstance(i, str) and QUEUE_ID.fullmatch(i) for i in ids):
            errors["ids"] = "must be one queue id (12 hexadecimal digits) or more"
        elif len(ids) > queue_view.MAX_SELECTION:
            errors["ids"] = f"must be at most {queue_view.MAX_SELECTION} queue ids"
        if errors:
            raise _BadRequest("Nothing was done.", errors)
        assert isinstance(action, str) and isinstance(ids, list)
        done = await queue_view.act(self.backend.queue, self.backend.queue_runner, action, ids)
        if done:
            summary, target = queue_view.what_was_done(action, done)
            await self._audit(request, admin, f"queue.{action}", summary, target=target,
                              details={"queue_ids": done})
        return json_response(request, 200, {
            "done": done, "not_done": [i for i in dict.fromkeys(ids) if i not in done]})

    @app.route("/v1/queue/<string(length=12):queue_id>", methods=["GET"])
    @_authenticated()
    async def get_queued(self, request: IRequest, admin: AdminRow, queue_id: str) -> bytes:
        """
        One queued message: its envelope (with the next attempt and the
        reason) and its header fields; not its body.
        """
        if not QUEUE_ID.fullmatch(queue_id):
            raise _not_queued(queue_id)
        try:
            message, head = await self.backend.queue.head(queue_id, queue_view.HEAD_BYTES)
        except KeyError:
            raise _not_queued(queue_id) from None
        return json_response(request, 200, queue_view.message_json(message, head))

    @app.route("/v1/queue/<string(length=12):queue_id>/content", methods=["GET"])
    @_authenticated()
    async def get_queued_content(self, request: IRequest, admin: AdminRow,
                                 queue_id: str) -> bytes:
        """
        The message as queued (message/rfc822), recorded in the audit log.
        """
        if not QUEUE_ID.fullmatch(queue_id):
            raise _not_queued(queue_id)
        try:
            _, content = await self.backend.queue.load(queue_id)
        except KeyError:
            raise _not_queued(queue_id) from None
        await self._audit(request, admin, "queue.content",
                          f"showed the content of {queue_id}", target=queue_id)
        attachment(request, b"message/rfc822", f"{queue_id}.eml")
        return content

    @app.route("/v1/queue/flush", methods=["POST"])
    @_authenticated()
    async def flush_queue(self, request: IRequest, admin: AdminRow) -> bytes:
        if self.backend.queue_runner is None:
            raise _BadRequest("This node does not deliver mail.", status=409)
        # Like postqueue -f: start delivery of everything now, answer at once.
        flush = Deferred.fromCoroutine(self.backend.queue_runner.scan(flush=True))
        flush.addErrback(lambda f: log.failure("Flushing the queue failed", f))
        await self._audit(request, admin, "queue.flush", "flushed the queue")
        return json_response(request, 202, {
            "status": "Delivery of every queued message was started; see /queue and the MTA "
                      "log."})

    @app.route("/v1/send-email", methods=["POST"])
    @_authenticated()
    async def send_email(self, request: IRequest, admin: AdminRow) -> bytes:
        body = _json_body(request)
        if not isinstance(body, dict):
            raise _BadRequest('Send {"from": ..., "to": [...], "subject": ..., "body": ...}.')
        recipients = body.get("to")
        if isinstance(recipients, str):
            recipients = [recipients]
        fields = {"from": body.get("from"), "subject": body.get("subject", ""),
                  "body": body.get("body", "")}
        wrong = {name: "must be a string" for name, value in fields.items()
                 if not isinstance(value, str)}
        if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
            wrong["to"] = "must be an address or a list of addresses"
        if wrong:
            raise _BadRequest("Some values were refused; nothing was sent.", wrong)
        assert isinstance(recipients, list)
        try:
            queued = await send_test_email(self.backend, str(fields["from"]), recipients,
                                           str(fields["subject"]), str(fields["body"]))
        except ComposeError as e:
            raise _BadRequest("Some values were refused; nothing was sent.",
                              {e.field: str(e)}) from None
        except RuntimeError:
            raise _BadRequest("This node does not deliver mail.", status=409) from None
        await self._audit(request, admin, "queue.send_test",
                          f"sent a test email ({queued.envelope.queue_id})",
                          target=queued.envelope.queue_id)
        return json_response(request, 202, {"queue_id": queued.envelope.queue_id,
                                            "status": "Queued for delivery."})

    @app.route("/v1/queue/<string(length=12):queue_id>", methods=["DELETE"])
    @_authenticated()
    async def delete_queued(self, request: IRequest, admin: AdminRow, queue_id: str) -> bytes:
        if not await self.backend.queue.delete(queue_id):
            raise _not_queued(queue_id)
        await self._audit(request, admin, "queue.delete",
                          f"deleted {queue_id} from the queue", target=queue_id)
        return json_response(request, 200, {"status": f"{queue_id} was deleted."})

    @app.route("/v1/audit", methods=["GET"])
    @_authenticated()
    async def get_audit(self, request: IRequest, admin: AdminRow) -> bytes:
        """
        The audit log, newest first: C{?q=&actor=&action=&since=&until=}
        filter it, C{before} (the C{next} of an answer) pages on, C{limit}
        (at most 500) sizes a page.
        """
        query, _, errors = audit_query(request)
        if errors:
            raise _BadRequest("The search was refused.", errors)
        entries = await self.backend.audit.find(query)
        more = len(entries) == query.limit
        return json_response(request, 200, {
            "entries": [entry_json(entry) for entry in entries],
            "next": entries[-1].id if more and entries else None,
        })

    # Webmail accounts (Admin → Webmail accounts) ---------------------------

    @app.route("/v1/webmail/accounts", methods=["GET"])
    @_authenticated()
    async def list_webmail_accounts(self, request: IRequest, admin: AdminRow) -> bytes:
        """
        C{?q=} part of an address, C{?state=invited|active|disabled},
        C{?offset=&limit=} (at most 200).
        """
        text, _, numbers = _list_query(request)
        state = arg(request, "state") or ""
        if state and state not in STATES:
            raise _BadRequest("Some query parameters were refused.",
                              {"state": f"must be one of {', '.join(STATES)}"})
        views, total = await self.backend.webmail_accounts.listing(
            text, state, offset=numbers["offset"], limit=min(numbers["limit"], 200))
        return json_response(request, 200, {"accounts": [_account_json(v) for v in views],
                                            "total": total})

    async def _webmail_account(self, address: str) -> AccountView:
        view = await self.backend.webmail_accounts.get(address)
        if view is None:
            raise _BadRequest(f"There is no webmail account {address}.", status=404)
        return view

    @app.route("/v1/webmail/accounts/<address>", methods=["GET"])
    @_authenticated()
    async def get_webmail_account(self, request: IRequest, admin: AdminRow,
                                  address: str) -> bytes:
        return json_response(request, 200,
                             _account_json(await self._webmail_account(address)))

    @app.route("/v1/webmail/accounts/<address>/messages", methods=["GET"])
    @_authenticated()
    async def webmail_account_messages(self, request: IRequest, admin: AdminRow,
                                       address: str) -> bytes:
        """
        The headers of the account's messages, newest first: never their
        contents.
        """
        view = await self._webmail_account(address)
        _, _, numbers = _list_query(request)
        messages = await self.backend.webmail_accounts.messages(
            view.account.address, offset=numbers["offset"], limit=numbers["limit"])
        return json_response(request, 200, {"messages": [{
            "id": m.id, "received": _iso(m.received), "sender": m.sender,
            "subject": m.subject, "size": m.size, "attachments": m.attachments,
            "read": m.read} for m in messages], "total": view.messages})

    @app.route("/v1/webmail/accounts/<address>/<action>", methods=["POST"])
    @_authenticated()
    async def webmail_account_action(self, request: IRequest, admin: AdminRow, address: str,
                                     action: str) -> bytes:
        """
        C{invite} (the sign-up invitation again), C{disable}, C{enable},
        C{reset-password} (mail a reset link), C{reset-totp}.
        """
        if action not in ACTIONS or action == "delete":
            raise _BadRequest(f"There is no action {action!r}; there are "
                              f"{', '.join(a for a in ACTIONS if a != 'delete')}.", status=404)
        return await self._webmail_action(request, admin, address, action)

    @app.route("/v1/webmail/accounts/<address>", methods=["DELETE"])
    @_authenticated()
    async def delete_webmail_account(self, request: IRequest, admin: AdminRow,
                                     address: str) -> bytes:
        return await self._webmail_action(request, admin, address, "delete")

    async def _webmail_action(self, request: IRequest, admin: AdminRow, address: str,
                              action: str) -> bytes:
        view = await self._webmail_account(address)
        try:
            summary = await self.backend.webmail_accounts.perform(action, view.account.address)
        except ActionRefused as e:
            raise _BadRequest(str(e), status=409) from None
        await self._audit(request, admin, f"webmail.{action}", summary,
                          target=view.account.address)
        after = await self.backend.webmail_accounts.get(view.account.address)
        return json_response(request, 200, {
            "status": summary[0].upper() + summary[1:] + ".",
            "account": None if after is None else _account_json(after)})

    # What became of webmail messages; recalls ------------------------------

    @app.route("/v1/webmail/messages/<tunnel_id>", methods=["GET"])
    @_authenticated()
    async def webmail_message(self, request: IRequest, admin: AdminRow, tunnel_id: str
                              ) -> bytes:
        """
        The timeline of a tunnelled message (its tunnel id as the MPA log
        names it), per recipient.
        """
        return json_response(request, 200, _timeline_json(await self._timeline(tunnel_id)))

    async def _timeline(self, tunnel_id: str) -> Timeline:
        timeline = await self.backend.webmail_accounts.timeline(tunnel_id)
        if timeline is None:
            raise _BadRequest("Nothing is known of this message: it is in no mailbox, and its "
                              "timeline has been forgotten.", status=404)
        return timeline

    @app.route("/v1/webmail/messages/<tunnel_id>/recall", methods=["POST"])
    @_authenticated()
    async def recall_webmail_message(self, request: IRequest, admin: AdminRow,
                                     tunnel_id: str) -> bytes:
        """
        C{{"recipients": [...]}}: recall the message from their mailboxes
        here (from every recipient's when empty or left out).
        """
        recipients = _recipients(_json_body(request))
        await self._timeline(tunnel_id)
        recalled = await self.backend.webmail_accounts.recall(
            tunnel_id, recipients or None, f"by the administrator {admin.name} (API)")
        await self._audit(request, admin, "webmail.recall",
                          f"recalled webmail message {tunnel_id} from "
                          f"{', '.join(recalled) or 'no mailbox'}", target=tunnel_id)
        return json_response(request, 200, {
            "recalled": recalled,
            "message": _timeline_json(await self._timeline(tunnel_id))})

    @app.route("/v1/tunnels/<tunnel_id>/recall", methods=["POST"])
    @_authenticated()
    async def recall_by_tunnel(self, request: IRequest, admin: AdminRow, tunnel_id: str
                               ) -> bytes:
        """
        On the gateway: C{{"recipients": [...]}} (every recipient when
        empty or left out): a recall request for the message this gateway
        sent in tunnel C{tunnel_id}, sent to the webmail messenger signed
        and encrypted like the tunnel (202: queued).
        """
        recipients = _recipients(_json_body(request))
        if not TUNNEL_ID.fullmatch(tunnel_id):
            raise _BadRequest("That is not a tunnel id (the MPA log names each: \"sent to the "
                              "webmail messenger in tunnel message ...\").", status=404)
        try:
            queue_id, tunnel = await recall_through_tunnel(
                self.backend, tunnel_id, recipients, f"the administrator {admin.name}")
        except RecallRefused as e:
            raise _BadRequest(f"The recall cannot be sent: {e}.", status=409) from None
        await self._audit(request, admin, "webmail.recall",
                          f"sent a recall of webmail message {tunnel_id} "
                          f"({', '.join(recipients) or 'every recipient'}) through the tunnel",
                          target=tunnel_id)
        return json_response(request, 202, {"queue_id": queue_id, "recall_tunnel_id": tunnel,
                                            "recipients": recipients})

    @app.route("/v1/logs/<name>", methods=["GET"])
    @_authenticated()
    async def get_log(self, request: IRequest, admin: AdminRow, name: str) -> bytes:
        if name not in self.backend.logs:
            return json_response(request, 404, {"error": f"There is no log {name!r}."})
        text = arg(request, "lines") or str(DEFAULT_LOG_LINES)
        count = whole_number(text)
        if count is None:
            raise _BadRequest("lines must be a whole number.",
                              {"lines": f"{text!r} is not a number"})
        query, _, errors = log_query(request)
        if errors:
            raise _BadRequest("The search could not be made.", errors)
        lines = await self.backend.tail_log(name, count, query)
        return json_response(request, 200, {"log": name, "lines": lines})

    # Certificates and the CTL ------------------------------------------------

    def _store_name(self, request: IRequest) -> str:
        store = arg(request, "store") or CERTIFICATES
        if store not in (CERTIFICATES, ROOTS):
            raise _BadRequest(f"store must be {CERTIFICATES} or {ROOTS}.",
                              {"store": f"{store!r} is not a store"})
        return store

    @app.route("/v1/certificates", methods=["GET"])
    @_authenticated()
    async def list_certificates(self, request: IRequest, admin: AdminRow) -> bytes:
        """
        One page of a store: C{?q=} text in the subject or an address, or a
        thumbprint's start; C{?email=} one address exactly; C{?offset=},
        C{?limit=} (at most L{MAX_LIST_LIMIT}).  C{total} counts every
        certificate the filters match.
        """
        store = self._store_name(request)
        text, email, numbers = _list_query(request)
        certificates = self.backend.certificates
        entries = await certificates.listing(store, text=text, email=email, **numbers)
        total = _page_total(len(entries), numbers)
        if total is None:
            total = await certificates.count(store, text=text, email=email)
        return json_response(request, 200, {
            "certificates": [_certificate_summary(e.row, e.verdict.valid, e.verdict.reason,
                                                  e.ctl_status) for e in entries],
            "total": total, **numbers})

    @app.route("/v1/certificates", methods=["POST"])
    @_authenticated()
    @request_deadline(UPLOAD_DEADLINE)
    async def import_certificates(self, request: IRequest, admin: AdminRow) -> bytes:
        store = self._store_name(request)
        data = self._file_body(request)
        skip = (arg(request, "skip_self_signed") or "true").lower() not in ("false", "0", "no")
        password = _password(request)
        try:
            result = await self.backend.certificates.import_data(
                data, password=password, skip_self_signed=skip, store=store)
        except CertificateImportError as e:
            raise _BadRequest(str(e)) from None
        await self._audit(request, admin, "certificates.import",
                          f"imported {len(result.imported)} certificate(s) into {store}",
                          target=store, details={"imported": result.imported})
        return json_response(request, 200, {
            "format": result.format,
            "imported": result.imported,
            "keys_added": result.keys_added,
            "duplicates": result.duplicates,
            "skipped": [{"thumbprint": t, "reason": r} for t, r in result.skipped],
            "crls": [{"issuer": i, "outcome": o} for i, o in result.crls],
        })

    @app.route("/v1/certificates/download", methods=["GET", "POST"])
    @_authenticated()
    async def download_certificates(self, request: IRequest, admin: AdminRow) -> bytes:
        """
        *download certificates*: several in one file, as the list page's.
        GET C{?thumbprint=...} (repeated) C{&format=pem|p7b}, or -- for more
        than a URL holds -- POST C{{"thumbprints": [...], "format": ...}}.
        """
        store = self._store_name(request)
        if request.method == b"POST":
            body = _json_body(request)
            if not isinstance(body, dict):
                raise _BadRequest('Send {"thumbprints": [...], "format": "pem" or "p7b"}.')
            field, wanted, format = "thumbprints", body.get("thumbprints"), body.get(
                "format", "pem")
        else:
            field, wanted, format = "thumbprint", args(request, "thumbprint"), arg(
                request, "format") or "pem"
        errors = {}
        if not isinstance(wanted, list) or not wanted or not all(
                isinstance(t, str) and _THUMBPRINT.fullmatch(t) for t in wanted):
            errors[field] = "must be one SHA-256 thumbprint (64 hexadecimal digits) or more"
        elif len(wanted) > MAX_DOWNLOAD:
            errors[field] = f"must be at most {MAX_DOWNLOAD} thumbprints"
        if not isinstance(format, str) or format not in BUNDLE_FORMATS:
            errors["format"] = f"must be {' or '.join(BUNDLE_FORMATS)}"
        if errors:
            raise _BadRequest("Nothing was downloaded.", errors)
        assert isinstance(wanted, list)
        rows = {thumbprint: await self.backend.certificates.get(thumbprint, store)
                for thumbprint in dict.fromkeys(t.lower() for t in wanted)}
        missing = [thumbprint for thumbprint, row in rows.items() if row is None]
        if missing:
            return json_response(request, 404, {
                "error": f"There is no such certificate in {store}: {', '.join(missing)}.",
                "missing": missing})
        return send_bundle(request, store, [x509.load_der_x509_certificate(row.der)
                                            for row in rows.values() if row is not None],
                           str(format))

    @app.route("/v1/certificates/<name>", methods=["GET"])
    @_authenticated()
    async def get_certificate(self, request: IRequest, admin: AdminRow, name: str) -> bytes:
        store = self._store_name(request)
        thumbprint, _, suffix = name.lower().partition(".")
        row = await self.backend.certificates.get(thumbprint, store)
        if row is None or suffix not in ("", "pem", "cer"):
            return json_response(request, 404, {"error": "There is no such certificate."})
        cert = x509.load_der_x509_certificate(row.der)
        if suffix:
            attachment(request, b"application/x-pem-file" if suffix == "pem"
                       else b"application/pkix-cert", f"{thumbprint[:16]}.{suffix}")
            return cert.public_bytes(serialization.Encoding.PEM if suffix == "pem"
                                     else serialization.Encoding.DER)
        certificates = self.backend.certificates
        verdicts = {p.value: await certificates.check(cert, p)
                    for p in (Purpose.ENCRYPTION, Purpose.SIGNING)}
        ctl = (await certificates.ctl()).get(row.thumbprint)
        body = _certificate_summary(row, all(v.valid for v in verdicts.values()), "", ctl)
        body.pop("reason")
        body.update(certificate_facts(cert))
        body["purposes"] = {p: {"valid": v.valid, "reason": v.reason}
                            for p, v in verdicts.items()}
        body["pem"] = cert.public_bytes(serialization.Encoding.PEM).decode()
        return json_response(request, 200, body)

    @app.route("/v1/certificates/<thumbprint>", methods=["DELETE"])
    @_authenticated()
    async def delete_certificate(self, request: IRequest, admin: AdminRow,
                                 thumbprint: str) -> bytes:
        store = self._store_name(request)
        if not await self.backend.certificates.delete(thumbprint, store):
            return json_response(request, 404, {"error": "There is no such certificate."})
        await self._audit(request, admin, "certificates.delete",
                          f"deleted {thumbprint.lower()} from {store}", target=thumbprint.lower())
        return json_response(request, 200, {"status": "Deleted."})

    @app.route("/v1/ctl", methods=["GET"])
    @_authenticated()
    async def get_ctl(self, request: IRequest, admin: AdminRow) -> bytes:
        entries = await self.backend.certificates.ctl()
        return json_response(request, 200, {"ctl": [
            {"thumbprint": t, "status": s.value} for t, s in sorted(entries.items())]})

    def _thumbprint_from(self, body: Any) -> str:
        thumbprint = body.get("thumbprint") if isinstance(body, dict) else None
        if not isinstance(thumbprint, str) or not _THUMBPRINT.fullmatch(thumbprint):
            raise _BadRequest("Send {\"thumbprint\": <SHA-256 hex>, ...}.",
                              {"thumbprint": "must be 64 hexadecimal digits"})
        return thumbprint.lower()

    @app.route("/v1/ctl", methods=["POST"])
    @_authenticated()
    async def add_ctl(self, request: IRequest, admin: AdminRow) -> bytes:
        body = _json_body(request)
        thumbprint = self._thumbprint_from(body)
        try:
            status = CTLStatus(body.get("status"))
        except ValueError:
            raise _BadRequest("The status was refused.", {
                "status": "must be whitelisted or blacklisted"}) from None
        await self.backend.certificates.set_ctl(thumbprint, status)
        await self._audit(request, admin, "ctl.set",
                          f"set the CTL status of {thumbprint} to {status.value}",
                          target=thumbprint)
        return json_response(request, 200, {"thumbprint": thumbprint, "status": status.value})

    @app.route("/v1/ctl", methods=["DELETE"])
    @_authenticated()
    async def delete_ctl(self, request: IRequest, admin: AdminRow) -> bytes:
        thumbprint = self._thumbprint_from(_json_body(request))
        if not await self.backend.certificates.remove_ctl(thumbprint):
            return json_response(request, 404, {"error": "The CTL has no such entry."})
        await self._audit(request, admin, "ctl.remove",
                          f"removed {thumbprint} from the CTL", target=thumbprint)
        return json_response(request, 200, {"status": "Removed from the CTL."})

    # OpenPGP keys ------------------------------------------------------------

    def _no_such_key(self, request: IRequest) -> bytes:
        return json_response(request, 404, {"error": "There is no such PGP key."})

    @app.route("/v1/pgp/keys", methods=["GET"])
    @_authenticated()
    async def list_pgp_keys(self, request: IRequest, admin: AdminRow) -> bytes:
        """
        One page of the keyring, newest import first: C{?q=} text in a
        fingerprint, address or user ID; C{?email=} one address exactly;
        C{?offset=}, C{?limit=} as the certificate list.
        """
        text, email, numbers = _list_query(request)
        keyring = self.backend.keyring
        entries = await keyring.listing(text=text, email=email, **numbers)
        total = _page_total(len(entries), numbers)
        if total is None:
            total = await keyring.count(text=text, email=email)
        now = keyring.now()
        return json_response(request, 200, {
            "keys": [_pgp_key_json(e, now) for e in entries], "total": total, **numbers})

    @app.route("/v1/pgp/keys", methods=["POST"])
    @_authenticated()
    @request_deadline(UPLOAD_DEADLINE)
    async def import_pgp_keys(self, request: IRequest, admin: AdminRow) -> bytes:
        """
        The body is the key file (armored or binary, one key or several);
        C{?password=} (or C{X-Password}) the passphrase of protected secret
        keys; C{?trusted=false} imports them untrusted.
        """
        data = self._file_body(request)
        trusted = _query_flag(request, "trusted", default=True)
        if not data.strip():
            raise _BadRequest("The request body is empty: send the key file (armored or "
                              "binary) as the body.")
        try:
            imported = await self.backend.keyring.import_keys(
                data, passphrase=_password(request), trusted=trusted)
        except PGPError as e:
            raise _BadRequest(str(e)) from None
        fingerprints = [k.fingerprint.upper() for k in imported]
        await self._audit(request, admin, "pgp.import",
                          f"imported {len(imported)} PGP key(s) "
                         f"{', '.join(k.fingerprint.upper() for k in imported)} as "
                          f"{'trusted' if trusted else 'untrusted'}",
                          details={"fingerprints": fingerprints})
        return json_response(request, 201, {"imported": [
            {"fingerprint": k.fingerprint.upper(), "user_ids": list(k.user_ids), "new": k.new,
             "secret": k.secret} for k in imported]})

    @app.route("/v1/pgp/keys/generate", methods=["POST"])
    @_authenticated()
    async def generate_pgp_key(self, request: IRequest, admin: AdminRow) -> bytes:
        """
        A new key with its secret for C{{"email": ..., "name": ...}}, stored
        and trusted.
        """
        body = _json_body(request)
        if not isinstance(body, dict):
            raise _BadRequest('Send {"email": ..., "name": ...}.')
        email, name = body.get("email"), body.get("name", "")
        errors = generated_key_problems(email.strip() if isinstance(email, str) else "",
                                        name.strip() if isinstance(name, str) else "")
        if not isinstance(name, str):
            errors["name"] = "must be a string"
        if errors:
            raise _BadRequest("Some values were refused; nothing was created.", errors)
        assert isinstance(email, str) and isinstance(name, str)
        try:
            stored = await self.backend.keyring.generate(email.strip(), name.strip())
        except PGPError as e:
            raise _BadRequest(str(e)) from None
        await self._audit(request, admin, "pgp.generate",
                          f"generated the PGP key {stored.fingerprint.upper()} for "
                          f"{email.strip()}", target=stored.fingerprint.upper())
        return json_response(request, 201, _pgp_key_json(stored, self.backend.keyring.now()))

    @app.route("/v1/pgp/keys/<name>", methods=["GET"])
    @_authenticated()
    async def get_pgp_key(self, request: IRequest, admin: AdminRow, name: str) -> bytes:
        """
        One key; C{<fingerprint>.asc} its certificate (no secrets), armored,
        as a file.
        """
        fingerprint, _, suffix = name.partition(".")
        stored = await self.backend.pgp_key(fingerprint)
        if stored is None or suffix.lower() not in ("", "asc"):
            return self._no_such_key(request)
        if suffix:
            return send_armored_key(request, stored)
        return json_response(request, 200, _pgp_key_json(stored, self.backend.keyring.now()))

    @app.route("/v1/pgp/keys/<fingerprint>", methods=["PATCH"])
    @_authenticated()
    async def patch_pgp_key(self, request: IRequest, admin: AdminRow,
                            fingerprint: str) -> bytes:
        """
        C{{"trusted": true|false}}: whether mail is encrypted to the key;
        C{{"introducer": true|false}}: whether the keys it certifies are
        trusted (either or both).
        """
        if not FINGERPRINT.fullmatch(fingerprint):  # a 404 before the body's 400
            return self._no_such_key(request)
        body = _json_body(request)
        changes = {name: body[name] for name in ("trusted", "introducer")
                   if isinstance(body, dict) and name in body}
        wrong = {name: "must be true or false" for name, value in changes.items()
                 if not isinstance(value, bool)}
        if wrong or not changes or (isinstance(body, dict) and set(body) - set(changes)):
            raise _BadRequest('Send {"trusted": true|false} and/or {"introducer": true|false}.',
                              wrong or {"trusted": "must be true or false"})
        keyring = self.backend.keyring
        for name, value in changes.items():
            if not await self.backend.mark_pgp_key(fingerprint, name, value):
                return self._no_such_key(request)
            await self._audit(request, admin, "pgp.mark",
                              f"marked the PGP key {fingerprint.upper()} "
                              f"{PGP_MARKS[name][value]}", target=fingerprint.upper())
        stored = await keyring.get(fingerprint)
        if stored is None:  # deleted in between
            return self._no_such_key(request)
        return json_response(request, 200, _pgp_key_json(stored, keyring.now()))

    @app.route("/v1/pgp/keys/<fingerprint>", methods=["DELETE"])
    @_authenticated()
    async def delete_pgp_key(self, request: IRequest, admin: AdminRow,
                             fingerprint: str) -> bytes:
        if not await self.backend.delete_pgp_key(fingerprint):
            return self._no_such_key(request)
        await self._audit(request, admin, "pgp.delete",
                          f"deleted the PGP key {fingerprint.upper()}",
                          target=fingerprint.upper())
        request.setResponseCode(204)
        return b""

    # The built-in CA (Admin → CA) ---------------------------------------------

    @property
    def _ca(self) -> CertificateAuthority:
        if self.backend.ca is None:
            raise _BadRequest("This appliance has no CA.", status=404)
        return self.backend.ca

    async def _authority(self, ref: str) -> Authority:
        found = await self._ca.authority(ref)
        if found is None:
            raise _BadRequest("There is no such CA.", status=404)
        return found

    async def _issued(self, thumbprint: str) -> IssuedRow:
        found = await self._ca.issued_certificate(thumbprint)
        if found is None:
            raise _BadRequest("No CA here issued such a certificate.", status=404)
        return found

    @app.route("/v1/ca", methods=["GET"])
    @_authenticated()
    async def list_authorities(self, request: IRequest, admin: AdminRow) -> bytes:
        now = self._ca.now()
        return json_response(request, 200, {"authorities": [
            _authority_json(a, now) for a in await self._ca.authorities()]})

    @app.route("/v1/ca", methods=["POST"])
    @_authenticated()
    async def create_authority(self, request: IRequest, admin: AdminRow) -> bytes:
        """
        C{{"subject", "key_type", "validity_days", "crl_url", "kind"}}: a
        root CA (the default kind), or with C{"kind": "intermediate"} a
        pending intermediate and its request (C{"csr"}) to have signed.
        """
        body = _json_body(request)
        if not isinstance(body, dict):
            raise _BadRequest('Send {"subject", "key_type", "validity_days", "crl_url"}.')
        kind = body.get("kind", "root")
        subject, key_type = body.get("subject"), body.get("key_type", "rsa3072")
        days, crl_url = body.get("validity_days", 3650), body.get("crl_url")
        if crl_url is None:
            crl_url = proposed_crl_url(self.backend.crl_base(),
                                       (a.crl_url for a in await self._ca.authorities()))
        errors = {name: "must be a string" for name, value in (
            ("subject", subject), ("key_type", key_type), ("crl_url", crl_url))
            if not isinstance(value, str)}
        if kind not in ("root", "intermediate"):
            errors["kind"] = "must be root or intermediate"
        if not isinstance(days, int) or isinstance(days, bool):
            errors["validity_days"] = "must be a whole number of days"
        if set(body) - {"subject", "key_type", "validity_days", "crl_url", "kind"}:
            errors.update({name: "is not a field of a CA" for name in set(body) - {
                "subject", "key_type", "validity_days", "crl_url", "kind"}})
        if errors:
            raise _BadRequest("Some values were refused; nothing was created.", errors)
        assert isinstance(subject, str) and isinstance(key_type, str)
        assert isinstance(crl_url, str) and isinstance(days, int)
        try:
            if kind == "intermediate":
                made = await self._ca.create_intermediate(subject, key_type, crl_url)
            else:
                made = await self._ca.create_root(subject, key_type, days, crl_url)
        except CAError as e:
            raise _BadRequest(str(e)) from None
        await self._audit(request, admin, "ca.create", f"created the {made.kind} CA "
                          f"{made.subject}", target=made.id)
        return json_response(request, 201, _authority_json(made, self._ca.now()))

    @app.route("/v1/ca/<name>", methods=["GET"])
    @_authenticated()
    async def get_authority(self, request: IRequest, admin: AdminRow, name: str) -> bytes:
        """
        One CA by id or thumbprint; C{.pem} its certificate, C{.csr} its
        request while pending.
        """
        ref, dot, suffix = name.partition(".")
        found = await self._authority(ref)
        if not dot:
            return json_response(request, 200, _authority_json(found, self._ca.now()))
        wanted = authority_file(found, suffix)
        if wanted is None:
            raise _BadRequest("This CA has no such file.", status=404)
        body, media_type, filename = wanted
        attachment(request, media_type, filename)
        return body

    @app.route("/v1/ca/<ref>", methods=["DELETE"])
    @_authenticated()
    async def delete_authority(self, request: IRequest, admin: AdminRow, ref: str) -> bytes:
        found = await self._authority(ref)
        if not await self._ca.delete_pending(found.id):
            raise _BadRequest("Only a CA waiting for its certificate can be deleted.",
                              status=409)
        await self._audit(request, admin, "ca.delete",
                          f"deleted the pending CA {found.subject}", target=found.id)
        request.setResponseCode(204)
        return b""

    @app.route("/v1/ca/<ref>/certificate", methods=["PUT"])
    @_authenticated()
    @request_deadline(UPLOAD_DEADLINE)
    async def install_authority(self, request: IRequest, admin: AdminRow, ref: str) -> bytes:
        """
        The body is the certificate an outside root signed for a pending
        intermediate (PEM, DER or PKCS#7, with its chain or not).
        """
        found = await self._authority(ref)
        data = self._file_body(request)
        if not data.strip():
            raise _BadRequest("The request body is empty: send the certificate file.")
        try:
            installed = await self._ca.install(found.id, data)
        except CAError as e:
            raise _BadRequest(str(e), status=409 if "already" in str(e) else 400) from None
        await self._audit(request, admin, "ca.install",
                          f"installed the certificate of the CA {installed.subject}",
                          target=installed.id)
        return json_response(request, 200, _authority_json(installed, self._ca.now()))

    @app.route("/v1/ca/<ref>/crl", methods=["GET"])
    @_authenticated()
    async def get_crl(self, request: IRequest, admin: AdminRow, ref: str) -> bytes:
        found = await self._authority(ref)
        crl = await self._ca.crl_of(found.id)
        if crl is None:
            raise _BadRequest("This CA has no CRL yet.", status=404)
        attachment(request, CRL_TYPE, f"ca-{found.id}.crl")
        return crl

    @app.route("/v1/ca/<ref>/crl", methods=["POST"])
    @_authenticated()
    async def sign_crl(self, request: IRequest, admin: AdminRow, ref: str) -> bytes:
        found = await self._authority(ref)
        try:
            await self._ca.sign_crl(found.id)
        except CAError as e:
            raise _BadRequest(str(e), status=409) from None
        await self._audit(request, admin, "ca.crl", f"signed the CRL of the CA {found.subject}",
                          target=found.id)
        return json_response(request, 200, _authority_json(
            await self._authority(found.id), self._ca.now()))

    @app.route("/v1/ca/certificates", methods=["GET"])
    @_authenticated()
    async def list_issued(self, request: IRequest, admin: AdminRow) -> bytes:
        """
        The certificates issued here, newest first: C{?q=} text in an
        address or the start of a serial or thumbprint; C{?ca=} one CA's;
        C{?offset=}, C{?limit=}.
        """
        text, _, numbers = _list_query(request)
        ca = arg(request, "ca") or ""
        if ca:
            ca = (await self._authority(ca)).id
        rows = await self._ca.issued(text=text, ca=ca, **numbers)
        total = _page_total(len(rows), numbers)
        if total is None:
            total = await self._ca.count_issued(text=text, ca=ca)
        now = self._ca.now()
        return json_response(request, 200, {
            "certificates": [_issued_json(r, now) for r in rows], "total": total, **numbers})

    @app.route("/v1/ca/certificates", methods=["POST"])
    @_authenticated()
    async def issue_certificate(self, request: IRequest, admin: AdminRow) -> bytes:
        """
        C{{"email", "validity_days"?, "ca"?}}: issued now (201); or
        C{{"emails": [...], ...}}: queued, issued in the background (202).
        """
        body = _json_body(request)
        allowed = {"email", "emails", "validity_days", "ca"}
        if not isinstance(body, dict) or ("email" in body) == ("emails" in body):
            raise _BadRequest('Send {"email": ...} or {"emails": [...]}, with "validity_days" '
                              'and "ca" if wanted.')
        errors = {name: "is not a field of a request" for name in set(body) - allowed}
        days, ca = body.get("validity_days"), body.get("ca")
        if days is not None and (not isinstance(days, int) or isinstance(days, bool)):
            errors["validity_days"] = "must be a whole number of days"
        if ca is not None and not isinstance(ca, str):
            errors["ca"] = "must be a CA's id or thumbprint"
        emails = body.get("emails")
        if "email" in body and not isinstance(body["email"], str):
            errors["email"] = "must be a string"
        if emails is not None and (not isinstance(emails, list) or not all(
                isinstance(e, str) for e in emails)):
            errors["emails"] = "must be a list of addresses"
        if errors:
            raise _BadRequest("Some values were refused; nothing was issued.", errors)
        try:
            if emails is not None:
                count = await self._ca.request(emails, ca=ca, validity_days=days,
                                               by=admin.name)
            else:
                issued = await self._ca.issue(body["email"], ca=ca, validity_days=days)
        except CAError as e:
            raise _BadRequest(str(e)) from None
        if emails is not None:
            await self._audit(request, admin, "ca.request",
                              f"asked for certificates for {count} address(es)",
                              details={"count": count})
            return json_response(request, 202, {"queued": count})
        await self._audit(request, admin, "ca.issue",
                          f"issued a certificate for {issued.email}", target=issued.thumbprint)
        return json_response(request, 201, _issued_json(issued, self._ca.now()))

    @app.route("/v1/ca/certificates/<thumbprint>", methods=["GET"])
    @_authenticated()
    async def get_issued(self, request: IRequest, admin: AdminRow, thumbprint: str) -> bytes:
        return json_response(request, 200, _issued_json(await self._issued(thumbprint),
                                                         self._ca.now()))

    @app.route("/v1/ca/certificates/<thumbprint>/revoke", methods=["POST"])
    @_authenticated()
    async def revoke_issued(self, request: IRequest, admin: AdminRow, thumbprint: str) -> bytes:
        """
        C{{"reason": ...}}, one of L{cipherd.pki.ca.REASONS}; the CA's CRL
        is signed again at once.
        """
        issued = await self._issued(thumbprint)
        body = _json_body(request)
        reason = body.get("reason", "unspecified") if isinstance(body, dict) else None
        if not isinstance(reason, str) or reason not in REASONS:
            raise _BadRequest("Send {\"reason\": ...}.",
                              {"reason": f"must be one of {', '.join(REASONS)}"})
        try:
            revoked = await self._ca.revoke(issued.thumbprint, reason)
        except CAError as e:
            raise _BadRequest(str(e), status=409) from None
        await self._audit(request, admin, "ca.revoke",
                          f"revoked the certificate of {revoked.email} ({reason})",
                          target=revoked.thumbprint)
        return json_response(request, 200, _issued_json(revoked, self._ca.now()))

    @app.route("/v1/ca/certificates/<thumbprint>/pkcs12", methods=["POST"])
    @_authenticated()
    async def export_pkcs12(self, request: IRequest, admin: AdminRow, thumbprint: str) -> bytes:
        """
        C{{"password": ...}}: the certificate with its key and its CA's
        certificate as a PKCS#12 file under that password.
        """
        issued = await self._issued(thumbprint)
        body = _json_body(request)
        password = body.get("password") if isinstance(body, dict) else None
        if not isinstance(password, str):
            raise _BadRequest('Send {"password": ...}.', {"password": "must be a string"})
        try:
            data = await self._ca.pkcs12(issued.thumbprint, password)
        except CAError as e:
            raise _BadRequest(str(e)) from None
        await self._audit(request, admin, "ca.export",
                          f"downloaded the PKCS#12 file of {issued.email}",
                          target=issued.thumbprint)
        attachment(request, PKCS12_TYPE, f"{issued.email}.p12", private=True)
        return data

    @app.route("/v1/ca/certificates/<thumbprint>/send", methods=["POST"])
    @_authenticated()
    async def send_issued(self, request: IRequest, admin: AdminRow, thumbprint: str) -> bytes:
        """
        Mail the PKCS#12 file to the certificate's owner under a new random
        password, sent by SMS when the owner has a mobile number and an SMS
        gateway is set, else carried by this answer only.
        """
        issued = await self._issued(thumbprint)
        try:
            sent = await send_pkcs12(self.backend, issued)
        except CAError as e:
            raise _BadRequest(str(e), status=409) from None
        await self._audit(request, admin, "ca.send",
                          f"mailed the PKCS#12 file of {issued.email} to its owner"
                          + (f", its password by SMS to {sent.phone}" if sent.phone else ""),
                          target=issued.thumbprint)
        request.setHeader(b"Cache-Control", b"no-store")
        return json_response(request, 200, {"sent_to": sent.sent_to, "password": sent.password,
                                            "password_by_sms": sent.phone})

    @app.route("/v1/ca/requests", methods=["GET"])
    @_authenticated()
    async def list_requests(self, request: IRequest, admin: AdminRow) -> bytes:
        return json_response(request, 200, {"requests": [
            _request_json(r) for r in await self._ca.requests()]})

    @app.route("/v1/ca/requests/<int:request_id>", methods=["DELETE"])
    @_authenticated()
    async def cancel_request(self, request: IRequest, admin: AdminRow,
                             request_id: int) -> bytes:
        if not await self._ca.cancel_request(request_id):
            raise _BadRequest("There is no such request.", status=404)
        await self._audit(request, admin, "ca.cancel",
                          f"cancelled the certificate request {request_id}")
        request.setResponseCode(204)
        return b""

    # Data loss prevention (Admin → DLP) -----------------------------------------

    @property
    def _dlp(self) -> DataLossPrevention:
        if self.backend.dlp is None:
            raise _BadRequest("This appliance has no DLP.", status=404)
        return self.backend.dlp

    @app.route("/v1/dlp/patterns", methods=["GET"])
    @_authenticated()
    async def list_dlp_patterns(self, request: IRequest, admin: AdminRow) -> bytes:
        return json_response(request, 200, {"patterns": [
            _pattern_json(p) for p in await self._dlp.patterns()]})

    @app.route("/v1/dlp/patterns", methods=["POST"])
    @_authenticated()
    async def save_dlp_pattern(self, request: IRequest, admin: AdminRow) -> bytes:
        """
        C{{"name", "regex" or "words", "threshold"?, "validator"?,
        "action"?, "description"?}}: added, or replaced when the name is
        taken.
        """
        body = _json_body(request)
        fields = {"name", "regex", "words", "threshold", "validator", "action", "description"}
        if not isinstance(body, dict):
            raise _BadRequest('Send {"name", "regex", "threshold", "validator", "action"}.')
        errors = {name: "is not a field of a pattern" for name in set(body) - fields}
        kinds = {"name": str, "regex": str, "validator": str, "action": str,
                 "description": str, "threshold": int}
        errors.update({name: f"must be a {kind.__name__}" for name, kind in kinds.items()
                       if name in body and (not isinstance(body[name], kind)
                                            or isinstance(body[name], bool))})
        words = body.get("words", [])
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            errors["words"] = "must be a list of words or phrases"
        if errors:
            raise _BadRequest("Some values were refused; nothing was saved.", errors)
        pattern = Pattern(body.get("name", ""), body.get("regex", ""),
                          body.get("threshold", 1), body.get("validator", "none"),
                          body.get("action", "warn"), tuple(words),
                          body.get("description", ""))
        try:
            new = await self._dlp.save(pattern)
        except PatternError as e:
            raise _BadRequest("The pattern was refused; nothing was saved.",
                              getattr(e, "errors", {"regex": str(e)})) from None
        await self._audit(request, admin, "dlp.pattern",
                          f"{'added' if new else 'changed'} the DLP pattern {pattern.name}",
                          target=pattern.name, details=_pattern_json(pattern))
        return json_response(request, 201 if new else 200, _pattern_json(pattern))

    @app.route("/v1/dlp/patterns/builtin", methods=["GET"])
    @_authenticated()
    async def builtin_dlp_patterns(self, request: IRequest, admin: AdminRow) -> bytes:
        return json_response(request, 200, {"patterns": [
            _pattern_json(p) for p in BUILTIN.values()]})

    @app.route("/v1/dlp/patterns/builtin", methods=["POST"])
    @_authenticated()
    async def add_builtin_dlp_patterns(self, request: IRequest, admin: AdminRow) -> bytes:
        body = _json_body(request)
        names = body.get("names") if isinstance(body, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _BadRequest('Send {"names": [...]}, names of the built-in patterns.',
                              {"names": f"must be a list of {', '.join(BUILTIN)}"})
        try:
            added = await self._dlp.add_builtin(names)
        except PatternError as e:
            raise _BadRequest(str(e), {"names": str(e)}) from None
        if added:
            await self._audit(request, admin, "dlp.pattern",
                              f"added the built-in DLP patterns {', '.join(added)}",
                              details={"added": added})
        return json_response(request, 200, {"added": added})

    @app.route("/v1/dlp/patterns/<name>", methods=["DELETE"])
    @_authenticated()
    async def delete_dlp_pattern(self, request: IRequest, admin: AdminRow, name: str) -> bytes:
        if not await self._dlp.delete(name):
            raise _BadRequest("There is no such DLP pattern.", status=404)
        await self._audit(request, admin, "dlp.delete", f"deleted the DLP pattern {name}",
                          target=name)
        request.setResponseCode(204)
        return b""

    @app.route("/v1/dlp/quarantine", methods=["GET"])
    @_authenticated()
    async def list_quarantine(self, request: IRequest, admin: AdminRow) -> bytes:
        _, _, numbers = _list_query(request)
        rows = await self._dlp.quarantined(numbers["offset"], numbers["limit"])
        total = _page_total(len(rows), numbers)
        if total is None:
            total = await self._dlp.count_quarantined()
        return json_response(request, 200, {
            "messages": [_quarantined_json(r) for r in rows], "total": total, **numbers})

    async def _quarantined(self, quarantine_id: str) -> QuarantinedRow:
        row = await self._dlp.get(quarantine_id)
        if row is None:
            raise _BadRequest("There is no such message in the quarantine.", status=404)
        return row

    @app.route("/v1/dlp/quarantine/<quarantine_id>", methods=["GET"])
    @_authenticated()
    async def get_quarantined(self, request: IRequest, admin: AdminRow,
                              quarantine_id: str) -> bytes:
        """
        One quarantined message: what hit (rules, masked excerpts) and its
        header fields, never its body.
        """
        row = await self._quarantined(quarantine_id)
        return json_response(request, 200, {
            **_quarantined_json(row),
            "headers": [{"name": n, "value": v} for n, v in self._dlp.headers(row)]})

    @app.route("/v1/dlp/quarantine/<quarantine_id>/release", methods=["POST"])
    @_authenticated()
    async def release_from_quarantine(self, request: IRequest, admin: AdminRow,
                                  quarantine_id: str) -> bytes:
        """
        Release: the message is queued for its recipients as if no rule had
        matched (202).
        """
        await self._quarantined(quarantine_id)
        try:
            row = await release_quarantined(self.backend, quarantine_id)
        except RuntimeError as e:
            raise _BadRequest(f"The message cannot be released here: {e}.", status=409) \
                from None
        if row is None:
            raise _BadRequest("There is no such message in the quarantine.", status=404)
        await self._audit(request, admin, "dlp.release",
                          f"released the message {row.id} from {row.sender} to "
                          f"{', '.join(row.recipients)} from the DLP quarantine", target=row.id)
        return json_response(request, 202, _quarantined_json(row))

    @app.route("/v1/dlp/quarantine/<quarantine_id>", methods=["DELETE"])
    @_authenticated()
    async def delete_quarantined(self, request: IRequest, admin: AdminRow,
                                 quarantine_id: str) -> bytes:
        taken = await self._dlp.take(quarantine_id)
        if taken is None:
            raise _BadRequest("There is no such message in the quarantine.", status=404)
        row, _ = taken
        await self._audit(request, admin, "dlp.delete",
                          f"deleted the message {row.id} from {row.sender} from the DLP "
                          "quarantine", target=row.id)
        request.setResponseCode(204)
        return b""

    # The tunnel certificates: guide §3.8 (gateway) and §2.3.11 (webmail) ------

    @app.route("/v1/webmail/sender-certificate", methods=["POST"])
    @_authenticated()
    async def create_sender_certificate(self, request: IRequest, admin: AdminRow) -> bytes:
        return await self._create_tunnel_certificate(request, admin, WEBMAIL_SENDER)

    @app.route("/v1/webmail/relay-certificate", methods=["POST"])
    @_authenticated()
    async def create_relay_certificate(self, request: IRequest, admin: AdminRow) -> bytes:
        return await self._create_tunnel_certificate(request, admin, RELAY_RECIPIENT)

    async def _create_tunnel_certificate(self, request: IRequest, admin: AdminRow,
                                         end: TunnelEnd) -> bytes:
        # The body is optional: an empty POST asks for the defaults.
        body = _json_body(request) if _has_body(request) else {}
        if not isinstance(body, dict):
            raise _BadRequest('Send {"email": ..., "subject": ..., "force": true|false} or '
                              "no body at all.")
        wrong = {name: "must be a string" for name in ("email", "subject")
                 if body.get(name) is not None and not isinstance(body[name], str)}
        if not isinstance(body.get("force", False), bool):
            wrong["force"] = "must be true or false"
        if wrong:
            raise _BadRequest("Some values were refused; nothing was created.", wrong)
        try:
            made = await self.backend.create_tunnel_certificate(
                end, GLOBAL, body.get("email"), body.get("subject"),
                force=body.get("force", False))
        except TunnelCertificateRefused as e:
            raise _BadRequest("Some values were refused; nothing was created.",
                              e.errors) from None
        if not made.created:
            return json_response(request, 200, {
                "thumbprint": made.thumbprint, "email": made.email, "created": False,
                "message": WEBMAIL_CERTIFICATE_AVAILABLE})
        await self._audit(request, admin, "certificates.create",
                          f"created {end.label} certificate {made.thumbprint} for {made.email}",
                          target=made.thumbprint)
        return json_response(request, 201, {
            "thumbprint": made.thumbprint, "email": made.email, "subject": made.subject,
            "created": True})


def _certificate_summary(row: Any, valid: bool, reason: str, ctl: CTLStatus | None
                         ) -> dict[str, Any]:
    return {
        "thumbprint": row.thumbprint,
        "subject": row.subject,
        "issuer": row.issuer,
        "emails": list(row.emails),
        "not_before": row.not_before,
        "not_after": row.not_after,
        "has_private_key": row.has_key,
        "self_signed": row.self_signed,
        "valid": valid,
        "reason": reason,
        "ctl": ctl.value if ctl else None,
    }


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat()


def _account_json(view: AccountView) -> dict[str, Any]:
    account = view.account
    return {
        "address": account.address, "state": account.state,
        "password_set": account.password_set, "created": _iso(account.created),
        "last_login": _iso(account.last_login), "last_activity": _iso(account.last_activity),
        "second_factor": view.second_factor, "messages": view.messages,
        "mailbox_size": view.size, "mailbox_quota": view.quota or None,
        "over_quota": view.over_quota,
    }


def _token_json(token: TokenRow) -> dict[str, Any]:
    return {"id": token.id, "label": token.label, "created": _iso(token.created),
            "last_used": _iso(token.last_used)}


def _list_query(request: IRequest) -> tuple[str, str, dict[str, int]]:
    """
    What a list is asked for: C{?q=} text, C{?email=} an address, and the
    page, C{?offset=} and C{?limit=} (at most L{MAX_LIST_LIMIT}).

    @return: the text, the address and C{{"offset": ..., "limit": ...}}.
    @raise _BadRequest: a parameter is refused, with a message for each.
    """
    text, email = arg(request, "q") or "", arg(request, "email") or ""
    errors = {name: f"must be at most {MAX_SEARCH_LENGTH} characters"
              for name, value in (("q", text), ("email", email))
              if len(value) > MAX_SEARCH_LENGTH}
    numbers = {}
    for name, default, least, most in (("offset", 0, 0, MAX_LIST_OFFSET),
                                       ("limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT)):
        raw = arg(request, name) or str(default)
        number = whole_number(raw)
        if number is None:
            errors[name] = f"{raw!r} is not a whole number"
        elif not least <= number <= most:
            errors[name] = f"must be from {least} to {most}"
        else:
            numbers[name] = number
    if errors:
        raise _BadRequest("Some query parameters were refused.", errors)
    return text, email, numbers


def _page_total(found: int, numbers: dict[str, int]) -> int | None:
    """
    How many entries match in all, when the page of C{found} entries tells
    (the last page: none after it); C{None} when they must be counted.
    """
    if 0 < found < numbers["limit"] or (not found and not numbers["offset"]):
        return numbers["offset"] + found
    return None


def _query_flag(request: IRequest, name: str, *, default: bool) -> bool:
    """
    A true-or-false query parameter (C{true}/C{false}, C{1}/C{0},
    C{yes}/C{no}); a trust decision is not guessed from a misspelling.

    @raise _BadRequest: it is something else.
    """
    raw = arg(request, name)
    if raw is None or not raw.strip():
        return default
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise _BadRequest("Some query parameters were refused.",
                      {name: f"{raw!r} is not true or false"})


def _when(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).strftime(ISO_UTC)


def _subkey_json(key: Subkey) -> dict[str, Any]:
    return {
        "key_id": key.key_id.upper(),
        "fingerprint": key.fingerprint.upper(),
        "algorithm": key.algorithm,
        "created": _when(key.created),
        "expires": _when(key.expires),
        "flags": sorted(key.flags),
        "revoked": key.revoked,
    }


def _authority_json(authority: Authority, now: float) -> dict[str, Any]:
    cert = authority.certificate
    return {
        "id": authority.id, "subject": authority.subject, "kind": authority.kind,
        "key_type": authority.key_type, "pending": authority.pending,
        "thumbprint": authority.thumbprint,
        "issuer": None if cert is None else describe_name(cert.issuer),
        "not_before": None if cert is None else _iso(cert.not_valid_before_utc.timestamp()),
        "not_after": _iso(authority.not_after), "usable": authority.usable(now),
        "crl_url": authority.crl_url, "crl_this_update": _iso(authority.crl_this_update),
        "crl_next_update": _iso(authority.crl_next_update),
        "crl_entries": authority.crl_entries,
        "csr": None if authority.csr is None else authority.csr.decode("ascii"),
        "created": _iso(authority.created),
    }


def _issued_json(row: IssuedRow, now: float) -> dict[str, Any]:
    return {
        "thumbprint": row.thumbprint, "email": row.email, "ca": row.ca_id,
        "serial": row.serial.upper(), "not_before": _iso(row.not_before),
        "not_after": _iso(row.not_after), "issued": _iso(row.issued), "origin": row.origin,
        "status": issued_status(row, now), "revoked": _iso(row.revoked), "reason": row.reason,
        "renewed_by": row.renewed_by,
    }


def _request_json(row: RequestRow) -> dict[str, Any]:
    return {"id": row.id, "email": row.email, "ca": row.ca_id,
            "validity_days": row.validity_days, "requested": _iso(row.requested),
            "requested_by": row.requested_by, "attempts": row.attempts, "error": row.error}


def _pattern_json(pattern: Pattern) -> dict[str, Any]:
    return {"name": pattern.name, "regex": pattern.regex, "words": list(pattern.words),
            "threshold": pattern.threshold, "validator": pattern.validator,
            "action": pattern.action, "description": pattern.description}


def _quarantined_json(row: QuarantinedRow) -> dict[str, Any]:
    return {"id": row.id, "at": _iso(row.at), "sender": row.sender,
            "recipients": list(row.recipients), "subject": row.subject, "size": row.size,
            "findings": row.findings}


def _pgp_key_json(stored: StoredKey, now: float) -> dict[str, Any]:
    """
    A key as the API shows it: C{valid} and C{problem} say whether mail
    can be encrypted to it at C{now} (trust aside: see C{trusted}).
    """
    key = stored.key
    problem = key.encryption_problem(now)
    primary = key.keys[0]
    return {
        "fingerprint": key.fingerprint.upper(),
        "key_id": key.key_id.upper(),
        "user_ids": list(key.user_ids),
        "emails": list(key.emails),
        "created": _when(key.created),
        "expires": _when(key.expires),
        "revoked": key.revoked,
        "trusted": stored.trusted,
        "introducer": stored.introducer,
        "secret": key.secret is not None,
        "source": stored.source,
        "valid": problem is None,
        "problem": problem,
        "algorithm": primary.algorithm,
        "flags": sorted(primary.flags),
        "subkeys": [_subkey_json(k) for k in key.keys[1:]],
    }


def _domain_from(body: Any) -> str:
    domain = body.get("domain") if isinstance(body, dict) else None
    if not isinstance(domain, str):
        raise _BadRequest('Send {"domain": ...}.', {"domain": "must be a domain name"})
    return domain


def _relay_host_json(value: str) -> dict[str, Any]:
    """
    A relay host as host, port and mx (MX lookup); C{host} C{""} when
    there is none (delivery by the recipients' MX records).
    """
    if not value:
        return {"host": "", "port": 25, "mx": False, "relay_host": ""}
    relay = RelayHost.parse(value)
    return {"host": relay.host, "port": relay.port, "mx": relay.mx_lookup, "relay_host": value}


def _site_certificate_json(info: SiteCertificateInfo, replaceable: str | None
                           ) -> dict[str, Any]:
    body: dict[str, Any] = {
        "subject": info.subject,
        "names": list(info.names),
        "issuer": info.issuer,
        "self_signed": info.self_signed,
        "not_before": info.not_before.strftime(TIME_FORMAT),
        "not_after": info.not_after.strftime(TIME_FORMAT),
        "thumbprint": info.sha256,
        "key": info.key,
        "chain": info.chain,
        "origin": info.origin,
        "replaceable": replaceable is None,
    }
    if replaceable is not None:
        body["why_not_replaceable"] = replaceable
    return body


def _password(request: IRequest) -> str | None:
    # The password may come as ?password= (contract) or, kept out of URLs
    # and access logs, in an X-Password header.
    header = request.getHeader(b"x-password")
    return header.decode() if header else arg(request, "password")


def _has_body(request: IRequest) -> bool:
    length = request.getHeader(b"content-length")
    chunked = b"chunked" in (request.getHeader(b"transfer-encoding") or b"").lower()
    return chunked or (length is not None and length.strip() not in (b"", b"0"))


def _raw_body(request: IRequest, limit: int) -> bytes:
    data: bytes = request.content.read(limit + 1)
    if len(data) > limit:
        raise _BadRequest(f"The request body is larger than {limit} bytes.")
    return data
