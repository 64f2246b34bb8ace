"""
Webmail accounts as an administrator sees them (Admin → Webmail accounts
and the API): a searchable list with state, last login, mailbox size
against the quota and message count; one account's message headers (never
their contents); and the actions support needs: send the sign-up
invitation again, disable and enable, mail a password reset link, remove
the second factor, delete the account with its mailbox.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Connection, and_, delete, func, select
from twisted.internet.interfaces import IReactorTime

from cipherd.settings import IAddressSettings
from cipherd.smtp.config import MTAConfig
from cipherd.store import Store
from cipherd.store.schema import (
    webmail_accounts,
    webmail_messages,
)
from cipherd.webmail.accounts import (
    ACTIVE,
    DISABLED,
    INVITED,
    Account,
    Accounts,
    _account,
    remove_belongings,
)
from cipherd.webmail.invitations import NoInvitation, password_reset_notice, signup_invitation
from cipherd.webmail.mailbox import Mailboxes, Summary
from cipherd.webmail.notify import Notifier
from cipherd.webmail.tracking import TUNNEL_ID, Timeline

STATES = (INVITED, ACTIVE, DISABLED)
MAX_PAGE = 200

# action: (its button, what was done, as the audit log says it)
ACTIONS = {
    "invite": ("Send the invitation again", "sent the sign-up invitation again to"),
    "disable": ("Disable", "disabled the webmail account"),
    "enable": ("Enable", "enabled the webmail account"),
    "reset-password": ("Send a password reset link", "sent a password reset link to"),
    "reset-totp": ("Remove the second factor", "removed the second factor of"),
    "delete": ("Delete with the mailbox", "deleted the webmail account"),
}


class ActionRefused(Exception):
    """
    The action cannot be done for this account; the message says why.
    """


@dataclass(frozen=True)
class AccountView:
    """
    One account in the list.

    @ivar quota: the mailbox size limit that applies to it, in bytes
        (0: none).
    """

    account: Account
    messages: int
    size: int
    second_factor: bool
    quota: int = 0

    @property
    def over_quota(self) -> bool:
        return bool(self.quota) and self.size > self.quota


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _condition(text: str, state: str, exact: bool = False) -> ColumnElement[bool]:
    conditions: list[ColumnElement[bool]] = [webmail_accounts.c.address.is_not(None)]
    if exact:
        conditions.append(webmail_accounts.c.address == text)
    elif text:
        conditions.append(webmail_accounts.c.address.like(_like(text.lower()), escape="\\"))
    if state:
        conditions.append(webmail_accounts.c.state == state)
    return and_(*conditions)


def list_accounts(conn: Connection, text: str, state: str, offset: int, limit: int,
                  exact: bool = False) -> tuple[list[tuple[Account, int, int, bool]], int]:
    """
    The accounts whose address contains C{text} (is C{text}, with
    C{exact}; in state C{state}, if given), by address, with their message
    count, mailbox size and whether they have a second factor; and how
    many there are in all.
    """
    condition = _condition(text, state, exact)
    total = conn.execute(select(func.count()).select_from(webmail_accounts)
                         .where(condition)).scalar_one()
    usage = (select(webmail_messages.c.address, func.count().label("messages"),
                    func.sum(webmail_messages.c.size).label("size"))
             .group_by(webmail_messages.c.address).subquery())
    rows = conn.execute(
        select(webmail_accounts, usage.c.messages, usage.c.size)
        .outerjoin(usage, usage.c.address == webmail_accounts.c.address)
        .where(condition).order_by(webmail_accounts.c.address).offset(offset).limit(limit))
    return [(_account(row), int(row.messages or 0), int(row.size or 0),
             row.totp_secret is not None) for row in rows], int(total)


def delete_account(conn: Connection, address: str) -> int | None:
    """
    Remove the account and all it has (L{remove_belongings}).

    @return: how many messages it had, or C{None}: there is no account.
    """
    gone = conn.execute(delete(webmail_accounts).where(webmail_accounts.c.address == address))
    if not gone.rowcount:
        return None
    return remove_belongings(conn, address)


class AccountAdministration:
    """
    @param notifier: sends the invitations and reset links at once.
    @param mta: the MTA config in force (the organisation's host name).
    """

    def __init__(self, store: Store, accounts: Accounts, mailboxes: Mailboxes,
                 notifier: Notifier, settings: IAddressSettings,
                 mta: Callable[[], MTAConfig], clock: IReactorTime) -> None:
        self._store = store
        self._accounts = accounts
        self._mailboxes = mailboxes
        self._notifier = notifier
        self._settings = settings
        self._mta = mta
        self._clock = clock

    async def listing(self, text: str = "", state: str = "", *, offset: int = 0,
                      limit: int = 50, exact: bool = False) -> tuple[list[AccountView], int]:
        """
        A page of the accounts found, and how many were found in all.
        """
        rows, total = await self._store.read(list_accounts, text.strip(), state, max(offset, 0),
                                             max(1, min(limit, MAX_PAGE)), exact)
        quotas = await self._settings.by_address([row[0].address for row in rows])
        return [AccountView(account, messages, size, totp,
                            int(quotas[account.address]["mailbox_size_limit"]))
                for account, messages, size, totp in rows], total

    async def get(self, address: str) -> AccountView | None:
        views, _ = await self.listing(address.strip().lower(), exact=True, limit=1)
        return views[0] if views else None

    async def messages(self, address: str, *, offset: int = 0, limit: int = 50
                       ) -> list[Summary]:
        """
        The headers of C{address}'s messages (sender, subject, date, size),
        newest first, those that expired or were recalled too; never their
        contents.
        """
        return await self._mailboxes.listing(address, offset=offset, limit=limit, ended=True)

    async def timeline(self, tunnel_id: str) -> Timeline | None:
        """
        What became of a tunnelled message, per recipient.
        """
        if not TUNNEL_ID.fullmatch(tunnel_id):
            return None
        return await self._mailboxes.timeline(tunnel_id)

    async def recall(self, tunnel_id: str, addresses: Sequence[str] | None, by: str
                     ) -> list[str]:
        """
        Recall a tunnelled message from C{addresses}' mailboxes (C{None}:
        everyone's): gone from them at once.

        @return: whose mailboxes it was taken from.
        """
        return await self._mailboxes.recall(tunnel_id, addresses, self._clock.seconds(), by)

    async def _view(self, address: str) -> AccountView:
        view = await self.get(address)
        if view is None:
            raise ActionRefused(f"There is no webmail account {address}.")
        return view

    async def resend_invitation(self, address: str) -> str:
        """
        Mail the sign-up invitation again, with a new link, naming the
        newest message's sender and subject.

        @return: the invitation's queue id.
        @raise ActionRefused: the account has signed up already, or no
            invitation can be made (the reason).
        """
        view = await self._view(address)
        account = view.account
        if account.state != INVITED or account.password_set:
            raise ActionRefused(f"{account.address} has signed up already: send a password "
                                "reset link instead.")
        newest = await self._mailboxes.listing(account.address, limit=1)
        settings = (await self._settings.by_address([account.address]))[account.address]
        try:
            notice = signup_invitation(
                self._accounts, self._notifier, account,
                newest[0].sender if newest else "", newest[0].subject if newest else "",
                settings, self._mta().my_hostname, self._clock.seconds())
        except NoInvitation as e:
            raise ActionRefused(f"No invitation can be sent: {e}.") from None
        return await self._notifier.send(account.address, notice, settings,
                                         self._mta().my_hostname)

    async def set_enabled(self, address: str, enabled: bool) -> Account:
        """
        Disable an account (its sessions end, it cannot log in) or enable
        it again: active if it has a password, invited if not.
        """
        account = (await self._view(address)).account
        state = (ACTIVE if account.password_set else INVITED) if enabled else DISABLED
        if state == account.state:
            raise ActionRefused(f"{account.address} is {state} already.")
        await self._accounts.set_state(account.address, state)
        return account

    async def send_password_reset(self, address: str) -> str:
        """
        Mail a password reset link to an active account.

        @return: its queue id.
        @raise ActionRefused: the account is not active, or resets are
            turned off for it (the link would be refused).
        """
        account = (await self._view(address)).account
        if account.state != ACTIVE:
            raise ActionRefused(f"{account.address} is {account.state}: only an active "
                                "account can reset its password.")
        settings = (await self._settings.by_address([account.address]))[account.address]
        if not settings["password_reset_enabled"]:
            raise ActionRefused("Password reset is turned off (Settings → General → Password "
                                "reset enabled): the link would be refused.")
        if not (settings["portal_base_url"] or settings["password_reset_url"]):
            raise ActionRefused("The portal base URL is not set (Settings → General): the "
                                "link would lead nowhere.")
        notice = password_reset_notice(self._accounts, self._notifier, account, settings, "",
                                       self._clock.seconds())
        return await self._notifier.send(account.address, notice, settings,
                                         self._mta().my_hostname)

    async def reset_second_factor(self, address: str) -> None:
        """
        Remove the account's TOTP second factor (a lost phone): it logs in
        with its password and sets up a new one if it must.
        """
        view = await self._view(address)
        if not view.second_factor:
            raise ActionRefused(f"{view.account.address} has no second factor.")
        await self._accounts.set_totp_secret(view.account.address, None)

    async def delete(self, address: str) -> int:
        """
        Delete the account with its mailbox.

        @return: how many messages were deleted with it.
        """
        deleted: int | None = await self._store.run(delete_account,
                                                    address.strip().lower())
        if deleted is None:
            raise ActionRefused(f"There is no webmail account {address}.")
        return deleted

    async def perform(self, action: str, address: str) -> str:
        """
        Do one of L{ACTIONS} for C{address}.

        @return: what was done, as a sentence for the audit log.
        @raise ActionRefused: why it was not done.
        """
        if action == "invite":
            done = f" (queued as {await self.resend_invitation(address)})"
        elif action in ("disable", "enable"):
            await self.set_enabled(address, action == "enable")
            done = ""
        elif action == "reset-password":
            done = f" (queued as {await self.send_password_reset(address)})"
        elif action == "reset-totp":
            await self.reset_second_factor(address)
            done = ""
        elif action == "delete":
            done = f" and its {await self.delete(address)} message(s)"
        else:
            raise ActionRefused(f"There is no action {action!r}.")
        return f"{ACTIONS[action][1]} {address.strip().lower()}{done}"
