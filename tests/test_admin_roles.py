"""
Admin accounts and roles through StubTreq: an administrator makes an
operator and an auditor (each with a first password it must change); each
role is refused (403, no menu entry, no form) everything outside it, on the
pages and in the API, with a password or an API token; the last
administrator stays; tokens are shown once, work as Bearer and stop when
revoked.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from treq.testing import StubTreq

from cipherd.core.envelope import Envelope
from cipherd.smtp.spool import new_queue_id
from cipherd.testing import result_of
from cipherd.web.roles import allowed
from cipherd.webmail import totp
from tests.harness import GOOD_PASSWORD, AdminHarness

ADMIN = ("admin", GOOD_PASSWORD)
NEW = "violet-compass-meadow-48"


def api(admin: AdminHarness, method: str, path: str, body: Any = None,
        auth: Any = ADMIN, token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    kwargs: dict[str, Any] = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    else:
        kwargs["auth"] = auth
    return admin.request(method, "/api/v1" + path, headers=headers,
                         data=None if body is None else json.dumps(body).encode(), **kwargs)


def make(admin: AdminHarness, name: str, role: str) -> None:
    """
    The administrator makes C{name}; its owner logs in with the first
    password and changes it to L{NEW}.
    """
    made = api(admin, "POST", "/admin/accounts", {"name": name, "role": role})
    assert made.code == 201, made.text
    first = made.json()["password"]
    assert api(admin, "POST", "/admin/password", {"password": NEW},
               auth=(name, first)).code == 200


def log_in_as(admin: AdminHarness, name: str, password: str = NEW) -> None:
    admin.cookies = {}
    admin.treq = StubTreq(admin.site.resource())  # a new browser: no cookie of the admin's
    done = admin.post_form("/login", {"username": name, "password": password})
    assert done.code == 303, done.text


@pytest.fixture
def admin(admin_in: AdminHarness) -> AdminHarness:
    make(admin_in, "olivia", "operator")
    make(admin_in, "audrey", "auditor")
    return admin_in


def queued(admin: AdminHarness) -> str:
    envelope = Envelope(new_queue_id(), "a@example.org", ("b@example.com",),
                        admin.clock.seconds())
    return result_of(admin.queue.store(envelope, b"Subject: s\r\n\r\nsecret body\r\n")
                     ).envelope.queue_id


def admin_menu(admin: AdminHarness) -> str:
    """
    The Admin pages' menu as the administrator sees it.
    """
    saved = admin.treq, admin.cookies
    admin.treq = StubTreq(admin.site.resource())
    admin.cookies = {}
    admin.post_form("/login", {"username": "admin", "password": GOOD_PASSWORD})
    page = admin.get("/mta/config").text
    admin.treq, admin.cookies = saved
    return page


def menu(page: str) -> list[str]:
    return re.findall(r'<a href="([^"]+)"', page.split("<main>")[0])


def test_the_operator_runs_queues_and_webmail_accounts_and_reads_the_rest(
        admin: AdminHarness) -> None:
    queue_id = queued(admin)
    olivia = ("olivia", NEW)
    # The API: reads, queue actions, but no settings change.
    assert api(admin, "GET", "/settings/global", auth=olivia).code == 200
    refused = api(admin, "PATCH", "/settings/global", {"comment": "x"}, auth=olivia)
    assert refused.code == 403 and "Your role (operator) does not allow this" in \
        refused.json()["error"]
    assert api(admin, "POST", "/queue/actions", {"action": "hold", "ids": [queue_id]},
               auth=olivia).json()["done"] == [queue_id]
    assert api(admin, "GET", f"/queue/{queue_id}/content", auth=olivia).code == 200
    assert api(admin, "POST", "/admin/accounts", {"name": "x", "role": "auditor"},
               auth=olivia).code == 403
    assert api(admin, "POST", "/certificates", auth=olivia).code == 403
    # The pages: settings read, without forms; the queue with its forms.
    log_in_as(admin, "olivia")
    settings = admin.get("/settings/global/preferences")
    assert settings.code == 200 and '<body class="read-only">' in settings.text
    assert admin.post_form("/settings/global/preferences", {"fields": "comment"},
                           csrf=admin.csrf_from(admin.get("/mta/queue"))).code == 403
    queue = admin.get("/mta/queue")
    assert 'class="read-only"' not in queue.text and "/mta/queue/bulk" in queue.text
    links = menu(admin.get("/mta/config").text)
    assert "/mta/send-email" not in links and "/webmail/accounts" in links
    assert "/mta/send-email" in menu(admin_menu(admin))
    assert admin.get("/mta/send-email").code == 200  # a page to read: its form is hidden
    assert admin.post_form("/mta/send-email", {"to": "x@example.com"},
                           csrf=admin.csrf_from(queue)).code == 403
    released = admin.post_form("/mta/queue/bulk", [("action", "release"), ("id", queue_id)],
                               csrf=admin.csrf_from(queue))
    assert released.code == 303


def test_the_auditor_reads_and_changes_nothing(admin: AdminHarness) -> None:
    queue_id = queued(admin)
    audrey = ("audrey", NEW)
    assert api(admin, "GET", "/audit", auth=audrey).code == 200
    assert api(admin, "GET", "/queue", auth=audrey).code == 200
    assert api(admin, "GET", f"/queue/{queue_id}", auth=audrey).code == 200
    # Not the content of mail, nor any change.
    assert api(admin, "GET", f"/queue/{queue_id}/content", auth=audrey).code == 403
    for method, path, body in (("POST", "/queue/actions", {"action": "hold", "ids": [queue_id]}),
                               ("DELETE", f"/queue/{queue_id}", None),
                               ("PATCH", "/mta", {"my_hostname": "x.example"}),
                               ("POST", "/webmail/accounts/x@y.example/disable", None),
                               ("POST", "/queue/flush", None)):
        assert api(admin, method, path, body, auth=audrey).code == 403, (method, path)
    log_in_as(admin, "audrey")
    page = admin.get("/mta/queue")
    assert page.code == 200 and '<body class="read-only">' in page.text
    csrf = admin.csrf_from(admin.get("/admin/me"))
    for path, form in ((f"/mta/queue/{queue_id}/content", {}),
                       ("/mta/queue/bulk", {"action": "delete", "id": queue_id}),
                       ("/admin/accounts", {"name": "x", "role": "administrator"})):
        assert admin.post_form(path, form, csrf=csrf).code == 403, path
    assert [m.envelope.queue_id for m in result_of(admin.queue.messages())] == [queue_id]
    # Its own account: a token, used as Bearer, with its role.
    made = admin.post_form("/admin/me/tokens", {"label": "monitoring"}, csrf=csrf)
    assert made.code == 200
    token = re.search(r'value="(cdt_[0-9a-f]{16}_[A-Za-z0-9_-]{43})"', made.text).group(1)
    assert api(admin, "GET", "/queue", token=token).code == 200
    assert api(admin, "PATCH", "/mta", {"my_hostname": "x.example"}, token=token).code == 403
    mine = api(admin, "GET", "/admin/me", token=token).json()
    assert mine["name"] == "audrey" and mine["tokens"][0]["label"] == "monitoring"
    assert mine["tokens"][0]["last_used"] is not None
    assert token not in json.dumps(mine)  # shown once, never again


def test_tokens_are_revoked_and_forged_ones_refused(admin: AdminHarness) -> None:
    made = api(admin, "POST", "/admin/me/tokens", {"label": "backup script"})
    assert made.code == 201
    token, token_id = made.json()["token"], made.json()["id"]
    assert api(admin, "PATCH", "/settings/global", {"comment": "by token"},
               token=token).code == 200
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert api(admin, "GET", "/queue", token=forged).code == 401
    assert api(admin, "GET", "/queue", token="not-a-token").code == 401
    assert api(admin, "DELETE", f"/admin/me/tokens/{token_id}").code == 204
    assert api(admin, "GET", "/queue", token=token).code == 401
    summaries = [e["summary"] for e in api(admin, "GET", "/audit?action=admin").json()[
        "entries"]]
    assert f"revoked the API token {token_id}" in summaries
    assert f"created the API token {token_id} (backup script)" in summaries
    assert not [s for s in summaries if token in s]


def test_the_last_administrator_stays(admin: AdminHarness) -> None:
    assert api(admin, "PATCH", "/admin/accounts/admin", {"role": "operator"}).code == 409
    assert api(admin, "DELETE", "/admin/accounts/admin").code == 409
    assert api(admin, "PATCH", "/admin/accounts/olivia", {"role": "administrator"}).code == 200
    # Another administrator now: this one may become an operator.
    assert api(admin, "PATCH", "/admin/accounts/admin", {"role": "operator"}).code == 200
    assert api(admin, "PATCH", "/settings/global", {"comment": "x"}).code == 403
    assert api(admin, "PATCH", "/admin/accounts/admin", {"role": "administrator"},
               auth=("olivia", NEW)).code == 200
    assert api(admin, "DELETE", "/admin/accounts/nobody").code == 404
    assert api(admin, "POST", "/admin/accounts", {"name": "olivia", "role": "auditor"}
               ).code == 400
    assert api(admin, "POST", "/admin/accounts", {"name": "bad name!", "role": "auditor"}
               ).code == 400


def test_an_administrator_manages_accounts_on_the_page(admin: AdminHarness) -> None:
    page = admin.get("/admin/accounts")
    assert page.code == 200
    assert "audrey" in page.text and "olivia" in page.text
    csrf = admin.csrf_from(page)
    made = admin.post_form("/admin/accounts", {"name": "carl", "role": "operator"}, csrf=csrf)
    assert made.code == 200 and "carl was created" in made.text
    first = re.search(r'id="secret" class="secret" type="text" value="([^"]+)"',
                      made.text).group(1)
    assert api(admin, "GET", "/queue", auth=("carl", first)).code == 403  # must change first
    assert admin.post_form("/admin/accounts/carl/role", {"role": "auditor"},
                           csrf=csrf).code == 303
    fresh = admin.post_form("/admin/accounts/carl/reset-password", {}, csrf=csrf)
    assert "A new password for carl" in fresh.text
    assert api(admin, "GET", "/queue", auth=("carl", first)).code == 401
    assert admin.post_form("/admin/accounts/admin/delete", {}, csrf=csrf).code == 409
    assert admin.post_form("/admin/accounts/carl/delete", {}, csrf=csrf).code == 303
    accounts = [a["name"] for a in api(admin, "GET", "/admin/accounts").json()["accounts"]]
    assert accounts == ["admin", "audrey", "olivia"]
    actions = [e["action"] for e in api(admin, "GET", "/audit?action=admin").json()["entries"]]
    assert actions[:4] == ["admin.delete", "admin.reset_password", "admin.role", "admin.create"]


def test_a_second_factor_is_asked_at_login_and_the_api_takes_only_tokens(
        admin: AdminHarness) -> None:
    log_in_as(admin, "olivia")
    form = admin.get("/admin/me/totp")
    key = re.search(r'<code id="secret">([^<]+)</code>', form.text).group(1).replace(" ", "")
    secret = totp.base64.b32decode(key + "=" * (-len(key) % 8))
    pending = re.search(r'name="pending" value="([^"]+)"', form.text).group(1)
    csrf = admin.csrf_from(form)
    wrong = admin.post_form("/admin/me/totp", {"pending": pending, "code": "000000"},
                            csrf=csrf)
    assert wrong.code == 400 and "That code is not right" in wrong.text
    now = admin.clock.seconds()
    done = admin.post_form("/admin/me/totp", {"pending": pending,
                                              "code": totp.totp(secret, now)}, csrf=csrf)
    assert done.header("location") == "/admin/me?done=totp"
    # The password alone no longer opens the API: a token does.
    refused = api(admin, "GET", "/queue", auth=("olivia", NEW))
    assert refused.code == 401 and "second factor" in refused.json()["error"]
    # The next login asks for a code; the set-up code is spent.
    admin.treq = StubTreq(admin.site.resource())
    admin.cookies = {}
    first = admin.post_form("/login", {"username": "olivia", "password": NEW})
    assert first.header("location") == "/login/code"
    assert admin.get("/").header("location") == "/login"  # no session yet
    page = admin.get("/login/code")
    assert "Enter your code" in page.text
    spent = admin.post_form("/login/code", {"code": totp.totp(secret, now)})
    assert spent.code == 401 and "used already" in spent.text
    admin.clock.advance(totp.STEP)
    entered = admin.post_form("/login/code", {"code": totp.totp(secret, admin.clock.seconds())})
    assert entered.header("location") == "/"
    assert admin.get("/").code == 200
    # Without the password first, the code page sends to the login.
    admin.treq = StubTreq(admin.site.resource())
    admin.cookies = {}
    assert admin.get("/login/code").header("location") == "/login"
    # An administrator removes it (a lost phone).
    assert api(admin, "GET", "/admin/accounts").json()["accounts"][2]["second_factor"]
    log_in_as(admin, "admin", GOOD_PASSWORD)
    csrf = admin.csrf_from(admin.get("/admin/accounts"))
    assert admin.post_form("/admin/accounts/olivia/reset-totp", {}, csrf=csrf).code == 303
    assert api(admin, "GET", "/queue", auth=("olivia", NEW)).code == 200


def test_forged_or_expired_pending_logins_are_refused(admin_in: AdminHarness) -> None:
    authority = admin_in.authority
    token = authority.pending_login("olivia")
    assert authority.pending_name(token) == "olivia"
    assert authority.pending_name(token.replace("olivia", "admin")) is None
    assert authority.pending_name("garbage") is None
    admin_in.clock.advance(301)
    assert authority.pending_name(token) is None


def test_the_role_rules_by_path() -> None:
    for path in ("/api/v1/queue/0123456789AB/content", "/api/v1/queue/0123456789ab/content",
                 "/mta/queue/0123456789AB/content"):
        assert not allowed("auditor", "GET", path) and not allowed("auditor", "POST", path)
        assert allowed("operator", "GET", path) and allowed("administrator", "GET", path)
    assert allowed("auditor", "POST", "/admin/me/tokens")
    assert allowed("auditor", "DELETE", "/api/v1/admin/me/tokens/0123456789abcdef")
    assert not allowed("auditor", "POST", "/api/v1/admin/mean")
    assert not allowed("operator", "POST", "/mta/queued")
    assert not allowed("operator", "PATCH", "/api/v1/settings/global")
    assert not allowed("nobody", "GET", "/")
