"""
Admin → Webmail accounts: the webmail messenger's accounts, searched and
filtered by state, a page at a time; one account with its message headers
(never their contents); and the support actions, each audited: send the
invitation again, disable or enable, mail a password reset link, remove
the second factor, delete with the mailbox (after a confirmation page).
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from twisted.web.iweb import IRequest

from cipherd.web.auth import AdminSession
from cipherd.web.common import SiteApp, arg, redirect, whole_number
from cipherd.web.pages import AdminPages, authenticated
from cipherd.webmail.administration import ACTIONS, STATES, ActionRefused

PAGE_SIZE = 50
MESSAGES_SHOWN = 100


def _page_number(request: IRequest) -> int:
    return max(whole_number((arg(request, "page") or "").strip()) or 1, 1)


class AccountPages(AdminPages):
    """
    Mounted at C{/webmail/}.
    """

    app = SiteApp()

    @app.route("/accounts", methods=["GET"])
    @authenticated
    async def listing(self, request: IRequest, session: AdminSession) -> bytes:
        text = (arg(request, "q") or "").strip()[:320]
        state = arg(request, "state") or ""
        if state not in STATES:
            state = ""
        page = _page_number(request)
        admin = self.backend.webmail_accounts
        views, total = await admin.listing(text, state, offset=(page - 1) * PAGE_SIZE,
                                           limit=PAGE_SIZE)
        pages = max(1, -(-total // PAGE_SIZE))
        return self.render(request, "webmail_accounts.html", session, section="admin",
                           subsection="accounts", views=views, total=total, q=text,
                           state=state, states=STATES, page=min(page, pages), pages=pages,
                           done=arg(request, "done"), who=arg(request, "who"))

    @app.route("/accounts/<address>", methods=["GET"])
    @authenticated
    async def account(self, request: IRequest, session: AdminSession, address: str) -> bytes:
        return await self._account_page(request, session, address)

    async def _account_page(self, request: IRequest, session: AdminSession, address: str,
                            *, error: str | None = None, status: int = 200) -> bytes:
        view = await self.backend.webmail_accounts.get(address)
        if view is None:
            return self.not_found(request, session, f"There is no webmail account {address}.")
        messages = await self.backend.webmail_accounts.messages(view.account.address,
                                                                limit=MESSAGES_SHOWN)
        return self.render(request, "webmail_account.html", session, status=status,
                           section="admin", subsection="accounts", view=view,
                           messages=messages, shown=MESSAGES_SHOWN, actions=ACTIONS,
                           done=arg(request, "done"), error=error)

    @app.route("/messages/<tunnel_id>", methods=["GET"])
    @authenticated
    async def message(self, request: IRequest, session: AdminSession, tunnel_id: str) -> bytes:
        timeline = await self.backend.webmail_accounts.timeline(tunnel_id)
        if timeline is None:
            return self.not_found(request, session, "Nothing is known of this message: it is "
                                                    "in no mailbox, and its timeline has been "
                                                    "forgotten.")
        return self.render(request, "webmail_message.html", session, section="admin",
                           subsection="accounts", timeline=timeline, done=arg(request, "done"),
                           recalled=arg(request, "recalled") or "")

    @app.route("/messages/<tunnel_id>/recall", methods=["POST"])
    @authenticated
    async def recall(self, request: IRequest, session: AdminSession, tunnel_id: str) -> bytes:
        """
        C{address}: recall from that recipient's mailbox; none: from every
        recipient's.
        """
        admin = self.backend.webmail_accounts
        if await admin.timeline(tunnel_id) is None:
            return self.not_found(request, session, "Nothing is known of this message.")
        address = (arg(request, "address") or "").strip().lower()
        recalled = await admin.recall(tunnel_id, [address] if address else None,
                                      f"by the administrator {session.admin_name}")
        await self.audit(request, session, "webmail.recall",
                         f"recalled webmail message {tunnel_id} from "
                         f"{', '.join(recalled) or 'no mailbox'}", target=tunnel_id)
        return redirect(request, f"/webmail/messages/{tunnel_id}?"
                                 + urlencode({"done": "recall", "recalled": ", ".join(recalled)}))

    @app.route("/accounts/<address>/<action>", methods=["POST"])
    @authenticated
    async def act(self, request: IRequest, session: AdminSession, address: str,
                  action: str) -> bytes:
        admin = self.backend.webmail_accounts
        view = await admin.get(address)
        if view is None or action not in ACTIONS:
            return self.not_found(request, session, f"There is no webmail account {address}.")
        address = view.account.address
        if action == "delete" and arg(request, "confirmed") != "1":
            return self.render(request, "webmail_delete.html", session, section="admin",
                               subsection="accounts", view=view)
        try:
            summary = await admin.perform(action, address)
        except ActionRefused as e:
            return await self._account_page(request, session, address, error=str(e),
                                            status=409)
        await self.audit(request, session, f"webmail.{action}", summary, target=address)
        if action == "delete":
            return redirect(request, f"/webmail/accounts?done=deleted&who={quote(address)}")
        return redirect(request, f"/webmail/accounts/{quote(address)}?done={action}")
