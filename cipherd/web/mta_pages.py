"""
Admin → MTA: the MTA config page (guide figures 7 and 8, with *show
advanced settings*) and its SMTP transports; Admin → MTA → authorized
recipients (guide §2.3.14); Queues (list, flush, hold/release, delete);
Admin → send email, the test tool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import quote, urlencode

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from cipherd.settings import WEBMAIL, shown_for_role
from cipherd.smtp.compose import ComposeError
from cipherd.smtp.config import (
    MTAConfig,
    RelayHost,
    authorized_recipient,
    relay_host_problems,
    relay_host_text,
    transport_problems,
)
from cipherd.smtp.queue import describe
from cipherd.web import queue_view
from cipherd.web.audit import changed_values
from cipherd.web.auth import AdminSession
from cipherd.web.backend import send_test_email
from cipherd.web.common import SiteApp, arg, args, redirect, whole_number
from cipherd.web.pages import AdminPages, authenticated

log = Logger(namespace="cipherd.admin")

# The fields of the form, in the guide's order, with its labels and help.
# What each queue action did, for the audit log.
_DONE = {"delete": "deleted", "hold": "held", "release": "released"}

_LIST_FIELDS = {
    "my_networks": ("My networks", 'The "trusted" SMTP clients, allowed to relay mail '
                    "through the MTA. One network per line (CIDR, e.g. 192.0.2.0/24)."),
}
_TEXT_FIELDS = {
    "my_hostname": ("My hostname", "The internet hostname of this mail system. By default "
                    "this machine's name, as Postfix's myhostname."),
}
# The next hops: host, port and MX lookup in fields of their own (figure 7).
_RELAY_HOSTS = {
    "external_relay_host": ("External relay host", "The default next hop for remote "
                            "delivery. Leave empty for direct delivery using MX records."),
    "internal_relay_host": ("Internal relay host", "The next hop for mail to one of the relay "
                            "domains (typically the internal company mail server)."),
}
_ADVANCED_NUMBERS = {
    # name: (label, help, unit, smallest value)
    "before_filter_message_size_limit": ("Before filter message size limit", "The largest "
                                         "message, in bytes, the SMTP server accepts.",
                                         "bytes", 1024),
    "after_filter_message_size_limit": ("After filter message size limit", "The largest "
                                        "message, in bytes, after encryption or decryption. "
                                        "Not smaller than the limit before the filter.",
                                        "bytes", 1024),
    "smtpd_process_limit": ("SMTP sessions limit", "The most SMTP sessions at once, from all "
                            "clients together; more are answered 421.", "sessions", 1),
    "smtpd_client_connection_count_limit": (
        "Sessions per client", "The most SMTP sessions one client may hold at once (0: no "
        "limit). Clients in my networks are exempt.", "sessions", 0),
    "smtpd_client_connection_rate_limit": (
        "Connections per client per minute", "How often one client may connect in a minute "
        "(0: no limit). Clients in my networks are exempt.", "per minute", 0),
    "smtpd_timeout": ("SMTP timeout", "The time a client has to send each command, and the "
                      "longest it may stay silent while sending a message. Partial input "
                      "does not restart it.", "seconds", 10),
    "smtpd_session_time_limit": ("SMTP session time limit", "The longest one SMTP session may "
                                 "last, however busy the client keeps it.", "seconds", 60),
    "smtpd_min_data_rate": ("Minimum data rate", "While sending a message, a client slower "
                            "than this is cut off (0: only the timeout applies).",
                            "bytes/second", 0),
    "queue_minfree": ("Queue minimum free space", "Mail is refused (452 4.3.1) when the "
                      "queue's disk has less free space than this, and a message announced "
                      "larger than the space above it. 0: 1.5 times the before filter "
                      "message size limit.", "bytes", 0),
}


def _lines(value: str | None) -> list[str]:
    return [line.strip() for line in (value or "").splitlines() if line.strip()]


def _entry_kind(entry: str) -> str:
    """
    What an authorized recipients entry covers, in words.
    """
    if "@" in entry:
        return "this address"
    if entry.startswith("*."):
        return f"{entry[2:]} and every domain below it"
    return "this domain, not the domains below it"


def _list_notices(request: IRequest, entries: Sequence[str]
                  ) -> tuple[str | None, str | None]:
    """
    The entries C{?added=} and C{?removed=} name, each only when the list
    bears it out, so a link cannot make a page claim a change nobody made.
    """
    added, removed = arg(request, "added"), arg(request, "removed")
    return (added if added in entries else None,
            removed if removed and removed not in entries else None)


def _host_and_port(relay: str) -> dict[str, Any]:
    """
    A stored transport's relay host as the API writes it.
    """
    parsed = RelayHost.parse(relay)
    return {"host": str(replace(parsed, port=25)), "port": parsed.port}


class MTAPages(AdminPages):
    app = SiteApp()

    # Config ----------------------------------------------------------------

    async def _render_mta(self, request: IRequest, session: AdminSession, template: str,
                          status: int = 200, **context: Any) -> bytes:
        """
        A page of Admin → MTA, with the tabs of this appliance's role:
        authorized recipients are the webmail messenger's (guide §2.3.14).
        """
        role = await self.backend.appliance_role()
        return self.render(request, template, session, status=status, section="admin",
                           subsection="mta", authorized_tab=shown_for_role(WEBMAIL, role),
                           **context)

    async def _config_page(self, request: IRequest, session: AdminSession, config: MTAConfig,
                           form: dict[str, Any] | None = None,
                           errors: dict[str, str] | None = None, saved: bool = False,
                           status: int = 200, domain: str = "") -> bytes:
        values = form or self._form_values(config)
        added, removed = _list_notices(request, config.relay_domains)
        return await self._render_mta(
            request, session, "mta_config.html", status=status, values=values,
            errors=errors or {}, saved=saved,
            relay_domains=config.relay_domains, domain=domain,
            added=added, removed=removed,
            advanced=arg(request, "advanced") is not None, list_fields=_LIST_FIELDS,
            text_fields=_TEXT_FIELDS, relay_hosts=_RELAY_HOSTS,
            advanced_numbers=_ADVANCED_NUMBERS)

    @staticmethod
    def _form_values(config: MTAConfig) -> dict[str, Any]:
        values: dict[str, Any] = config.to_json()
        for name in _LIST_FIELDS:
            values[name] = "\n".join(values[name])
        for name in _RELAY_HOSTS:
            relay = RelayHost.parse(values[name]) if values[name] else None
            values[f"{name}.host"] = relay.host if relay else ""
            values[f"{name}.port"] = str(relay.port) if relay else "25"
            values[f"{name}.mx"] = bool(relay and relay.mx_lookup)
        return values

    @app.route("/config", methods=["GET"])
    @authenticated
    async def config(self, request: IRequest, session: AdminSession) -> bytes:
        config = await self.backend.mta.refresh()
        return await self._config_page(request, session, config,
                                       saved=arg(request, "saved") == "1")

    @app.route("/config", methods=["POST"])
    @authenticated
    async def save_config(self, request: IRequest, session: AdminSession) -> bytes:
        changes: dict[str, Any] = {name: _lines(arg(request, name)) for name in _LIST_FIELDS}
        for name in _TEXT_FIELDS:
            changes[name] = (arg(request, name) or "").strip()
        changes["match_subdomains"] = arg(request, "match_subdomains") == "on"
        errors: dict[str, str] = {}
        # What the admin typed, shown again if anything is refused.
        typed: dict[str, Any] = {k: arg(request, k) or "" for k in (
            *_LIST_FIELDS, *_TEXT_FIELDS)}
        typed["match_subdomains"] = changes["match_subdomains"]
        for name in _RELAY_HOSTS:
            host, port = ((arg(request, f"{name}.{part}") or "").strip()
                          for part in ("host", "port"))
            mx = arg(request, f"{name}.mx") == "on"
            typed.update({f"{name}.host": host, f"{name}.port": port or "25",
                          f"{name}.mx": mx})
            problems = relay_host_problems(host, port or "25", required=False)
            errors.update({name if part == "host" else f"{name}.port": problem
                           for part, problem in problems.items()})
            if not problems:
                changes[name] = relay_host_text(host, port or "25", mx)
        if arg(request, "advanced") is not None:
            for name in _ADVANCED_NUMBERS:
                typed[name] = arg(request, name) or ""
                number = whole_number(typed[name].strip())
                if number is not None:
                    changes[name] = number
                else:
                    errors[name] = f"must be a whole number of {_ADVANCED_NUMBERS[name][2]}"
            typed["smtp_helo_name"] = arg(request, "smtp_helo_name") or ""
            changes["smtp_helo_name"] = typed["smtp_helo_name"].strip()
            changes["reject_unverified_recipient"] = typed["reject_unverified_recipient"] = (
                arg(request, "reject_unverified_recipient") == "on")
            code = (arg(request, "reject_unverified_code") or "").strip()
            number = whole_number(code)
            changes["reject_unverified_code"] = typed["reject_unverified_code"] = (
                code if number is None else number)
        before = self.backend.mta.current.to_json()
        if not errors:
            errors = await self.backend.mta.update(changes)
        if errors:
            form = {**self._form_values(self.backend.mta.current), **typed}
            return await self._config_page(request, session, self.backend.mta.current,
                                           form=form, errors=errors, status=400)
        changed = changed_values(before, self.backend.mta.current.to_json(), changes)
        if changed:
            await self.audit(request, session, "mta.change",
                             f"changed the MTA config ({', '.join(changed)})", details=changed)
        advanced = "&advanced=1" if arg(request, "advanced") is not None else ""
        return redirect(request, f"/mta/config?saved=1{advanced}")

    # Relay domains (guide §2.3.1, figure 7: "Add domain") --------------------

    @app.route("/relay-domains", methods=["POST"])
    @authenticated
    async def add_relay_domain(self, request: IRequest, session: AdminSession) -> bytes:
        typed = (arg(request, "domain") or "").strip()
        try:
            domain = await self.backend.add_relay_domain(typed)
        except ValueError as e:
            return await self._config_page(request, session, await self.backend.mta.refresh(),
                                           domain=typed, errors={"domain": str(e)}, status=400)
        await self.audit(request, session, "mta.relay_domain.add",
                         f"added the relay domain {domain}", target=domain)
        return redirect(request, f"/mta/config?added={quote(domain)}")

    @app.route("/relay-domains/delete", methods=["POST"])
    @authenticated
    async def delete_relay_domain(self, request: IRequest, session: AdminSession) -> bytes:
        domain = arg(request, "domain") or ""
        if not await self.backend.remove_relay_domain(domain):
            return self.not_found(request, session, f"{domain} is not a relay domain.")
        await self.audit(request, session, "mta.relay_domain.delete",
                         f"deleted the relay domain {domain}", target=domain)
        return redirect(request, f"/mta/config?removed={quote(domain)}")

    # SMTP transports (guide §3.10, figure 17) ------------------------------

    async def _transports_page(self, request: IRequest, session: AdminSession,
                               config: MTAConfig, *, typed: dict[str, str] | None = None,
                               errors: dict[str, str] | None = None, status: int = 200
                               ) -> bytes:
        rows = [(domain, RelayHost.parse(relay)) for domain, relay in config.transports]
        added, removed = _list_notices(request, config.transport_domains())
        return await self._render_mta(
            request, session, "transports.html", status=status, rows=rows, errors=errors or {},
            typed=typed or {"domain": "", "host": "", "port": "25", "mx": ""},
            added=added, removed=removed)

    @app.route("/transports", methods=["GET"])
    @authenticated
    async def transports(self, request: IRequest, session: AdminSession) -> bytes:
        return await self._transports_page(request, session, await self.backend.mta.refresh())

    @app.route("/transports", methods=["POST"])
    @authenticated
    async def add_transport(self, request: IRequest, session: AdminSession) -> bytes:
        """
        *add transport*: mail for the recipients domain goes to the relay
        host (a transport for the domain already there is replaced).
        """
        typed = {name: (arg(request, name) or "").strip() for name in ("domain", "host", "port")}
        typed["mx"] = "on" if arg(request, "mx") == "on" else ""
        config = await self.backend.mta.refresh()
        errors = transport_problems(typed["domain"], typed["host"], typed["port"])
        if not errors:
            domain = typed["domain"].lower().rstrip(".")
            host = typed["host"].strip("[]")
            entry = {"domain": domain, "host": host if typed["mx"] else f"[{host}]",
                     "port": int(typed["port"])}
            kept = [{"domain": d, **_host_and_port(r)} for d, r in config.transports
                    if d != domain]
            refused = await self.backend.mta.update({"transports": [*kept, entry]})
            if refused:  # checked above already; what the store still refuses
                errors = {"host": "; ".join(refused.values())}
        if errors:
            return await self._transports_page(request, session, config, typed=typed,
                                               errors=errors, status=400)
        await self.audit(request, session, "mta.transports",
                         f"added the SMTP transport {typed['domain']}", target=typed["domain"])
        return redirect(request, f"/mta/transports?added={quote(domain)}")

    @app.route("/transports/delete", methods=["POST"])
    @authenticated
    async def delete_transport(self, request: IRequest, session: AdminSession) -> bytes:
        domain = arg(request, "domain") or ""
        config = await self.backend.mta.refresh()
        if domain not in config.transport_domains():
            return self.not_found(request, session, f"There is no transport for {domain}.")
        await self.backend.mta.update({"transports": [
            {"domain": d, **_host_and_port(r)} for d, r in config.transports if d != domain]})
        await self.audit(request, session, "mta.transports",
                         f"deleted the SMTP transport {domain}", target=domain)
        return redirect(request, f"/mta/transports?removed={quote(domain)}")

    # Authorized recipients (guide §2.3.14) -----------------------------------

    async def _authorized_page(self, request: IRequest, session: AdminSession,
                               config: MTAConfig, *, entry: str = "",
                               error: str | None = None, status: int = 200) -> bytes:
        entries = config.authorized_recipients
        added, removed = _list_notices(request, entries)
        return await self._render_mta(
            request, session, "authorized_recipients.html", status=status,
            entries=[(e, _entry_kind(e)) for e in entries], entry=entry,
            error=error, added=added, removed=removed)

    @app.route("/authorized-recipients", methods=["GET"])
    @authenticated
    async def authorized_recipients(self, request: IRequest, session: AdminSession) -> bytes:
        return await self._authorized_page(request, session, await self.backend.mta.refresh())

    @app.route("/authorized-recipients", methods=["POST"])
    @authenticated
    async def add_authorized_recipient(self, request: IRequest,
                                       session: AdminSession) -> bytes:
        entered = arg(request, "entry") or ""
        config = await self.backend.mta.refresh()
        try:
            entry = authorized_recipient(entered)
        except ValueError as e:
            return await self._authorized_page(request, session, config, entry=entered,
                                               error=f"Not added: {e}.", status=400)
        return await self._set_authorized(request, session,
                                          [*config.authorized_recipients, entry],
                                          f"added={quote(entry, safe='@*')}")

    @app.route("/authorized-recipients/remove", methods=["POST"])
    @authenticated
    async def remove_authorized_recipient(self, request: IRequest,
                                          session: AdminSession) -> bytes:
        entry = arg(request, "entry") or ""
        current = (await self.backend.mta.refresh()).authorized_recipients
        if entry not in current:
            return self.not_found(request, session, f"{entry} is not in the list of "
                                                    "authorized recipients.")
        return await self._set_authorized(request, session,
                                          [e for e in current if e != entry],
                                          f"removed={quote(entry, safe='@*')}")

    async def _set_authorized(self, request: IRequest, session: AdminSession,
                              entries: list[str], done: str) -> bytes:
        errors = await self.backend.mta.update({"authorized_recipients": entries})
        if errors:
            return await self._authorized_page(request, session, self.backend.mta.current,
                                               error=errors["authorized_recipients"],
                                               status=400)
        await self.audit(request, session, "mta.authorized_recipients",
                         f"set the authorized recipients to {entries}",
                         details={"authorized_recipients": list(entries)})
        return redirect(request, f"/mta/authorized-recipients?{done}")

    # Queue -----------------------------------------------------------------

    @app.route("/queue", methods=["GET"])
    @authenticated
    async def queue(self, request: IRequest, session: AdminSession) -> bytes:
        text = (arg(request, "q") or "").strip()[:320]
        messages = [describe(m) for m in await queue_view.find(self.backend.queue, text)]
        return self.render(request, "queue.html", session, section="queues",
                           messages=messages, done=arg(request, "done"), q=text,
                           count=whole_number(arg(request, "count") or ""),
                           bulk=queue_view.BULK_ACTIONS)

    @app.route("/queue/bulk", methods=["POST"])
    @authenticated
    async def bulk(self, request: IRequest, session: AdminSession) -> bytes:
        """
        Hold, release, deliver now or delete the messages ticked in the list.
        """
        action = arg(request, "action") or ""
        if action not in queue_view.BULK_ACTIONS:
            return self.not_found(request, session, "There is no such queue action.")
        ids = queue_view.selection(args(request, "id"))
        done = await queue_view.act(self.backend.queue, self.backend.queue_runner, action, ids)
        if done:
            summary, target = queue_view.what_was_done(action, done)
            await self.audit(request, session, f"queue.{action}", summary, target=target,
                             details={"queue_ids": done})
        page = arg(request, "back") or ""
        if action != "delete" and page in ids:
            return redirect(request, f"/mta/queue/{page}?done={action if done else 'nothing'}")
        back = urlencode({"done": f"bulk-{action}", "count": len(done),
                          "q": arg(request, "q") or ""})
        return redirect(request, f"/mta/queue?{back}")

    @app.route("/queue/<string(length=12):queue_id>", methods=["GET"])
    @authenticated
    async def message(self, request: IRequest, session: AdminSession, queue_id: str) -> bytes:
        return await self._message_page(request, session, queue_id)

    async def _message_page(self, request: IRequest, session: AdminSession, queue_id: str,
                            content: bytes | None = None) -> bytes:
        try:
            message, head = await self.backend.queue.head(queue_id, queue_view.HEAD_BYTES)
        except KeyError:
            return self.not_found(request, session,
                                  f"There is no message {queue_id} in the queue.")
        return self.render(
            request, "queue_message.html", session, section="queues",
            m=describe(message), envelope=message.envelope,
            headers=queue_view.header_fields(head),
            content=None if content is None else content.decode("utf-8", "replace"),
            content_cut=content is not None and message.size > len(content),
            shown=queue_view.CONTENT_SHOWN, done=arg(request, "done"))

    @app.route("/queue/<queue_id>/content", methods=["POST"])
    @authenticated
    async def content(self, request: IRequest, session: AdminSession, queue_id: str) -> bytes:
        """
        The message's content (its first megabyte), shown once and audited.
        """
        try:
            _, content = await self.backend.queue.head(queue_id, queue_view.CONTENT_SHOWN)
        except KeyError:
            return self.not_found(request, session,
                                  f"There is no message {queue_id} in the queue.")
        await self.audit(request, session, "queue.content",
                         f"showed the content of {queue_id}", target=queue_id)
        return await self._message_page(request, session, queue_id, content)

    @app.route("/queue/flush", methods=["POST"])
    @authenticated
    async def flush(self, request: IRequest, session: AdminSession) -> bytes:
        runner = self.backend.queue_runner
        if runner is not None:
            d = Deferred.fromCoroutine(runner.scan(flush=True))
            d.addErrback(lambda f: log.failure("Flushing the queue failed", f))
            await self.audit(request, session, "queue.flush", "flushed the queue")
        return redirect(request, "/mta/queue?done=flushed")

    @app.route("/queue/<queue_id>/<action>", methods=["POST"])
    @authenticated
    async def act(self, request: IRequest, session: AdminSession, queue_id: str,
                  action: str) -> bytes:
        queue = self.backend.queue
        handlers = {"delete": queue.delete, "hold": queue.hold, "release": queue.release}
        if action not in handlers:
            return self.not_found(request, session)
        if not await handlers[action](queue_id):
            return self.not_found(request, session, f"There is no message {queue_id} in the "
                                                    "queue.")
        await self.audit(request, session, f"queue.{action}",
                         f"{_DONE[action]} {queue_id}", target=queue_id)
        if action == "release" and self.backend.queue_runner is not None:
            self.backend.queue_runner.kick()
        return redirect(request, f"/mta/queue?done={action}")

    # Send email ------------------------------------------------------------

    def _send_page(self, request: IRequest, session: AdminSession, *,
                   values: dict[str, str] | None = None, errors: dict[str, str] | None = None,
                   queued: str | None = None, status: int = 200) -> bytes:
        return self.render(request, "send_email.html", session, status=status,
                           section="admin", subsection="send", values=values or {},
                           errors=errors or {}, queued=queued)

    @app.route("/send-email", methods=["GET"])
    @authenticated
    async def send_form(self, request: IRequest, session: AdminSession) -> bytes:
        return self._send_page(request, session, queued=arg(request, "queued"))

    @app.route("/send-email", methods=["POST"])
    @authenticated
    async def send(self, request: IRequest, session: AdminSession) -> bytes:
        values = {name: arg(request, name) or "" for name in ("from", "to", "subject", "body")}
        recipients = [r.strip() for r in values["to"].replace(";", ",").split(",") if r.strip()]
        try:
            queued = await send_test_email(self.backend, values["from"].strip(), recipients,
                                           values["subject"], values["body"])
        except ComposeError as e:
            return self._send_page(request, session, values=values, errors={e.field: str(e)},
                                   status=400)
        except RuntimeError as e:
            return self._send_page(request, session, values=values,
                                   errors={"to": f"Not sent: {e}."}, status=409)
        await self.audit(request, session, "queue.send_test",
                         f"sent a test email ({queued.envelope.queue_id})",
                         target=queued.envelope.queue_id)
        return redirect(request, f"/mta/send-email?queued={queued.envelope.queue_id}")
