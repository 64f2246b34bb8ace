"""
The mail with a link that sets a password: the sign-up invitation, made
when a tunnel brings the first message to an address (L{cipherd.mpa.relay})
and when an administrator sends it again (Admin → Webmail accounts); the
password reset link, asked for on the portal or sent by an administrator.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cipherd.core.clock import minute_utc
from cipherd.webmail.accounts import RESET, SIGNUP, Account, Accounts
from cipherd.webmail.notify import Notice, Notices


class NoInvitation(Exception):
    """
    No invitation can be made; the message says why (fit for an
    administrator).

    @ivar misconfigured: a setting is missing (a warning), rather than
        sign-up being turned off on purpose.
    """

    def __init__(self, reason: str, *, misconfigured: bool) -> None:
        super().__init__(reason)
        self.misconfigured = misconfigured


def signup_invitation(accounts: Accounts, notices: Notices, account: Account, sender: str,
                      subject: str, settings: Mapping[str, Any], organisation: str,
                      now: float) -> Notice:
    """
    The sign-up invitation for C{account}, with a link valid for the
    setting's minutes.

    @param settings: the effective settings of the account's address.
    @raise NoInvitation: initial login is not allowed, or the portal base
        URL or the server secret is not set.
    """
    if not settings["initial_login_allowed"]:
        raise NoInvitation("initial login is not allowed", misconfigured=False)
    base = settings["portal_base_url"].rstrip("/")
    page = settings["signup_url"] or (f"{base}/signup" if base else "")
    if not page or not settings["server_secret"]:
        missing = "portal base URL" if not page else "server secret"
        raise NoInvitation(f"the {missing} is not set (Settings → General)",
                           misconfigured=True)
    minutes = settings["signup_link_validity"]
    token = accounts.link(settings["server_secret"], SIGNUP, account, minutes)
    return notices.render("signup", {
        "sender": sender or "Someone", "subject": subject,
        "link": f"{page}?token={token}", "organisation": organisation,
        "expires": minute_utc(now + minutes * 60)}, settings)



def password_reset_notice(accounts: Accounts, notices: Notices, account: Account,
                          settings: Mapping[str, Any], portal_url: str, now: float) -> Notice:
    """
    The password reset mail for C{account}, with a link valid for the
    setting's minutes, on the reset page of the *portal base URL* (or of
    C{portal_url} when that is not set).
    """
    base = (settings["portal_base_url"] or portal_url).rstrip("/")
    page = settings["password_reset_url"] or f"{base}/reset"
    minutes = settings["password_reset_link_validity"]
    token = accounts.link(settings["server_secret"], RESET, account, minutes)
    return notices.render("password_reset", {
        "address": account.address, "link": f"{page}?token={token}",
        "expires": minute_utc(now + minutes * 60)}, settings)
