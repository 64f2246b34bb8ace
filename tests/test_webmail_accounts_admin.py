"""
Admin → Webmail accounts and /api/v1/webmail/accounts through StubTreq:
the list (search, state, last login, mailbox against the quota), one
account's message headers (never their contents), and each action --
invitation again, disable and enable, reset link, second factor removed,
deletion after a confirmation -- with what it refuses and its audit entry.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

import pytest

from cipherd.settings import GLOBAL, Level, scope_for
from cipherd.testing import result_of
from cipherd.webmail.accounts import ACTIVE, DISABLED, INVITED
from tests.harness import GOOD_PASSWORD, AdminHarness

CHANGED = ("admin", GOOD_PASSWORD)
SECRET_BODY = b"the secret contents of the message"


def message(sender: str, subject: str) -> bytes:
    return (f"From: {sender}\r\nTo: x@partner.example\r\nSubject: {subject}\r\n"
            "Date: Fri, 04 Dec 2026 10:00:00 +0000\r\n\r\n").encode() + SECRET_BODY + b"\r\n"


@pytest.fixture
def admin(admin_in: AdminHarness) -> AdminHarness:
    """
    Three accounts: invited (with two messages), active (with a second
    factor, logged in), disabled.
    """
    h = admin_in
    assert not result_of(h.settings.update(GLOBAL, {
        "portal_base_url": "https://webmail.example.com",
        "notification_sender": "webmail@example.com", "server_secret": "s" * 32}))
    invited, _ = result_of(h.accounts.invite("new@partner.example"))
    for n, subject in enumerate(("First", "Quarterly report")):
        h.clock.advance(60)
        assert result_of(h.mailboxes.deliver(invited.address, f"t{n}", h.clock.seconds(),
                                             message("alice@example.com", subject)))
    active, _ = result_of(h.accounts.invite("bob@partner.example"))
    assert result_of(h.accounts.set_password(active, "a-long-enough-password-1"))
    assert result_of(h.accounts.verify_password("bob@partner.example",
                                                "a-long-enough-password-1"))
    assert result_of(h.accounts.set_totp_secret("bob@partner.example", b"sealed"))
    result_of(h.accounts.invite("gone@partner.example"))
    assert result_of(h.accounts.set_state("gone@partner.example", DISABLED))
    return h


def api(admin: AdminHarness, method: str, path: str) -> Any:
    return admin.request(method, "/api/v1" + path, auth=CHANGED,
                         headers={"Content-Type": "application/json"})


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def audit_summaries(admin: AdminHarness) -> list[str]:
    answer = api(admin, "GET", "/audit?action=webmail")
    return [e["summary"] for e in answer.json()["entries"]]


def test_the_list_searches_filters_and_shows_each_accounts_mailbox(
        admin: AdminHarness) -> None:
    page = admin.get("/webmail/accounts")
    assert page.code == 200
    text = text_of(page.text)
    assert "3 accounts." in text
    assert re.search(r"bob@partner.example 2FA active \d{4}-\d\d-\d\d \d\d:\d\d UTC", text)
    assert "new@partner.example invited never 2 messages" in text
    assert "gone@partner.example disabled never 0 messages" in text
    assert "of 512.0 MiB" in text
    only_invited = text_of(admin.get("/webmail/accounts?state=invited").text)
    assert "1 account found." in only_invited and "bob@" not in only_invited
    assert "bob@" in text_of(admin.get("/webmail/accounts?q=BOB").text)
    assert "No account matches." in admin.get("/webmail/accounts?q=nobody").text
    # Over quota: a user-level limit below what the mailbox holds.
    assert not result_of(admin.settings.update(scope_for(Level.USER, "new@partner.example"),
                                               {"mailbox_size_limit": 10}))
    assert "over quota" in admin.get("/webmail/accounts?q=new@").text
    listed = api(admin, "GET", "/webmail/accounts?state=invited").json()
    assert listed["total"] == 1
    (account,) = listed["accounts"]
    assert (account["address"], account["state"], account["messages"], account["over_quota"],
            account["mailbox_quota"], account["last_login"]) == (
        "new@partner.example", INVITED, 2, True, 10, None)
    assert api(admin, "GET", "/webmail/accounts?state=odd").code == 400


def test_an_accounts_messages_are_listed_by_their_headers_only(admin: AdminHarness) -> None:
    page = admin.get("/webmail/accounts/new%40partner.example")
    assert page.code == 200
    assert "Quarterly report" in page.text and "alice@example.com" in page.text
    assert SECRET_BODY.decode() not in page.text
    answer = api(admin, "GET", "/webmail/accounts/new@partner.example/messages").json()
    assert [m["subject"] for m in answer["messages"]] == ["Quarterly report", "First"]
    assert SECRET_BODY.decode() not in json.dumps(answer)
    assert api(admin, "GET", "/webmail/accounts/nobody@x.example").code == 404


def test_the_invitation_goes_again_with_a_new_link_naming_the_newest_message(
        admin: AdminHarness) -> None:
    done = admin.post_form("/webmail/accounts/new@partner.example/invite", {},
                           csrf=admin.csrf_from(admin.get("/webmail/accounts/new@partner.example")))
    assert done.code == 303
    assert done.header("location") == "/webmail/accounts/new%40partner.example?done=invite"
    (sender, recipients, content), = admin.submission.submitted
    assert recipients == ["new@partner.example"] and sender == "webmail@example.com"
    assert b"https://webmail.example.com/signup?token=" in content
    assert b"Quarterly report" in content
    assert "sent the sign-up invitation again to new@partner.example (queued as" in \
        audit_summaries(admin)[0]
    # Not for an account that has signed up.
    refused = api(admin, "POST", "/webmail/accounts/bob@partner.example/invite")
    assert refused.code == 409
    assert "has signed up already" in refused.json()["error"]


def test_disable_ends_the_account_and_enable_brings_it_back(admin: AdminHarness) -> None:
    disabled = api(admin, "POST", "/webmail/accounts/bob@partner.example/disable")
    assert disabled.code == 200 and disabled.json()["account"]["state"] == DISABLED
    assert result_of(admin.accounts.verify_password("bob@partner.example",
                                                    "a-long-enough-password-1")) is None
    assert api(admin, "POST", "/webmail/accounts/bob@partner.example/disable").code == 409
    enabled = api(admin, "POST", "/webmail/accounts/bob@partner.example/enable").json()
    assert enabled["account"]["state"] == ACTIVE
    # An account without a password goes back to invited.
    assert api(admin, "POST", "/webmail/accounts/gone@partner.example/enable").json()[
        "account"]["state"] == INVITED
    assert audit_summaries(admin)[:3] == [
        "enabled the webmail account gone@partner.example",
        "enabled the webmail account bob@partner.example",
        "disabled the webmail account bob@partner.example"]


def test_a_reset_link_is_mailed_to_an_active_account_only(admin: AdminHarness) -> None:
    sent = api(admin, "POST", "/webmail/accounts/bob@partner.example/reset-password")
    assert sent.code == 200
    (_, recipients, content), = admin.submission.submitted
    assert recipients == ["bob@partner.example"]
    assert b"https://webmail.example.com/reset?token=" in content
    refused = api(admin, "POST", "/webmail/accounts/new@partner.example/reset-password")
    assert refused.code == 409 and "is invited" in refused.json()["error"]
    assert not result_of(admin.settings.update(GLOBAL, {"password_reset_enabled": False}))
    off = api(admin, "POST", "/webmail/accounts/bob@partner.example/reset-password")
    assert off.code == 409 and "Password reset is turned off" in off.json()["error"]


def test_the_second_factor_is_removed(admin: AdminHarness) -> None:
    page = admin.get("/webmail/accounts/bob@partner.example")
    assert "Remove the second factor" in page.text
    done = admin.post_form("/webmail/accounts/bob@partner.example/reset-totp", {},
                           csrf=admin.csrf_from(page))
    assert done.code == 303
    assert result_of(admin.accounts.totp_secret("bob@partner.example")) is None
    again = admin.get("/webmail/accounts/bob@partner.example?done=reset-totp")
    assert "The second factor was removed." in again.text
    assert "Remove the second factor" not in again.text
    assert api(admin, "POST", "/webmail/accounts/bob@partner.example/reset-totp").code == 409


def test_delete_asks_first_then_removes_the_account_and_its_mailbox(
        admin: AdminHarness) -> None:
    page = admin.get("/webmail/accounts/new@partner.example")
    csrf = admin.csrf_from(page)
    asked = admin.post_form("/webmail/accounts/new@partner.example/delete", {}, csrf=csrf)
    assert asked.code == 200 and "Delete new@partner.example?" in asked.text
    assert "mailbox of 2 messages" in text_of(asked.text)
    assert result_of(admin.accounts.get("new@partner.example")) is not None
    done = admin.post_form("/webmail/accounts/new@partner.example/delete",
                           {"confirmed": "1"}, csrf=csrf)
    assert done.header("location") == (
        f"/webmail/accounts?done=deleted&who={quote('new@partner.example')}")
    assert result_of(admin.accounts.get("new@partner.example")) is None
    assert result_of(admin.mailboxes.count("new@partner.example")) == 0
    assert audit_summaries(admin)[0] == (
        "deleted the webmail account new@partner.example and its 2 message(s)")
    assert api(admin, "DELETE", "/webmail/accounts/bob@partner.example").code == 200
    assert api(admin, "DELETE", "/webmail/accounts/bob@partner.example").code == 404


def test_forms_without_the_token_are_refused(admin: AdminHarness) -> None:
    refused = admin.post_form("/webmail/accounts/bob@partner.example/disable", {}, csrf=None)
    assert refused.code == 403
    assert result_of(admin.accounts.get("bob@partner.example")).state == ACTIVE
    assert admin.post_form("/webmail/accounts/bob@partner.example/odd", {},
                           csrf=admin.csrf_from(admin.get("/webmail/accounts"))).code == 404


def test_an_account_is_found_by_its_whole_address_among_many_alike(
        admin: AdminHarness) -> None:
    for n in range(60):
        result_of(admin.accounts.invite(f"a{n:02d}bob@partner.example"))
    view = result_of(admin.site.backend.webmail_accounts.get("BOB@partner.example"))
    assert view is not None and view.account.address == "bob@partner.example"
    assert admin.get("/webmail/accounts/bob@partner.example").code == 200
