"""
The admin pages through StubTreq: login, forced password change, CSRF,
lockout, session expiry on the clock, settings forms, domains and users.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from treq.testing import StubTreq

from cipherd.settings import GLOBAL, Level, Scope
from cipherd.testing import result_of
from cipherd.web.admin import SESSION_COOKIE
from cipherd.web.auth import MAX_PENDING_CHECKS
from tests.harness import (
    GOOD_PASSWORD,
    IDLE,
    LOCKOUT_DURATION,
    LOCKOUT_THRESHOLD,
    MAX_AGE,
    AdminHarness,
)
from tests.test_refused_forms import Form

PREFERENCES = "/settings/global/preferences"
ADVANCED = PREFERENCES + "?advanced=1"


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[AdminHarness]:
    harness = AdminHarness(tmp_path)
    yield harness
    harness.close()


def effective(admin: AdminHarness, scope: Scope, name: str) -> object:
    return result_of(admin.settings.effective(scope))[name].value


def test_pages_need_a_session(admin: AdminHarness) -> None:
    for path in ("/", "/settings/global/preferences", "/logs", "/admin/password"):
        response = admin.get(path)
        assert (response.code, response.header("location")) == (303, "/login"), path


def test_every_response_carries_the_security_headers(admin: AdminHarness) -> None:
    response = admin.get("/login")
    csp = response.header("content-security-policy") or ""
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert response.header("strict-transport-security") == "max-age=31536000"
    assert response.header("x-content-type-options") == "nosniff"


def test_session_cookie_is_secure_httponly_samesite_strict(admin: AdminHarness) -> None:
    response = admin.login()
    cookie = next(c for c in response.set_cookies() if c.startswith(SESSION_COOKIE))
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"secure", "httponly", "samesite=strict", "path=/"} <= attributes


def test_default_password_must_be_changed_first(admin: AdminHarness) -> None:
    response = admin.login()
    assert (response.code, response.header("location")) == (303, "/admin/password")
    for path in ("/", "/settings/global/preferences", "/logs", "/settings/domains"):
        assert admin.get(path).header("location") == "/admin/password", path
    page = admin.get("/admin/password")
    assert "You are using the default password" in page.text

    weak = admin.post_form("/admin/password", {"password": "password123", "confirm": "password123"})
    assert weak.code == 400
    assert "The password is too easy to guess." in weak.text
    mismatch = admin.post_form("/admin/password", {"password": GOOD_PASSWORD, "confirm": "other"})
    assert "The two passwords are not the same." in mismatch.text

    done = admin.post_form("/admin/password", {"password": GOOD_PASSWORD, "confirm": GOOD_PASSWORD})
    assert done.header("location") == "/admin/password?changed=1"
    home = admin.get("/")
    assert home.code == 200 and "<h1>Dashboard</h1>" in home.text
    assert admin.get("/settings/global/preferences").code == 200


def test_forms_without_the_csrf_token_are_refused(admin: AdminHarness) -> None:
    admin.login_with_new_password()
    for csrf in (None, "forged-token"):
        response = admin.post_form(
            "/settings/global/preferences",
            [("fields", "postmaster"), ("value.postmaster", "evil@example.com")],
            csrf=csrf,
        )
        assert response.code == 403
        assert "This form was not sent from this site" in response.text
    assert effective(admin, GLOBAL, "postmaster") == ""
    # Logout is a form too.
    assert admin.post_form("/logout", {}, csrf=None).code == 403


def test_login_form_needs_its_double_submit_token(admin: AdminHarness) -> None:
    response = admin.post_form("/login", {"username": "admin", "password": "admin"}, csrf=None)
    assert response.code == 403
    assert SESSION_COOKIE not in admin.cookies


def test_lockout_after_repeated_failures(admin: AdminHarness) -> None:
    for _ in range(4):
        response = admin.login("wrong")
        assert response.code == 401
        assert "Wrong user name or password." in response.text
    locked = admin.login("wrong")
    assert "Too many failed logins. Login is locked for 15 more minute(s)." in locked.text
    # The right password is refused while locked...
    assert "Too many failed logins" in admin.login("admin").text
    assert SESSION_COOKIE not in admin.cookies
    # ... and accepted once the lock has run out.
    admin.clock.advance(LOCKOUT_DURATION + 1)
    assert admin.login("admin").header("location") == "/admin/password"


def test_unknown_user_gets_the_same_answer(admin: AdminHarness) -> None:
    response = admin.post_form("/login", {"username": "root", "password": "admin"})
    assert response.code == 401
    assert "Wrong user name or password." in response.text


def test_idle_session_expires(admin: AdminHarness) -> None:
    admin.login_with_new_password()
    admin.clock.advance(IDLE - 10)
    assert admin.get("/logs").code == 200  # activity extends the session
    admin.clock.advance(IDLE - 10)
    assert admin.get("/logs").code == 200
    admin.clock.advance(IDLE + 1)
    assert admin.get("/logs").header("location") == "/login"


def test_session_has_an_absolute_lifetime(admin: AdminHarness) -> None:
    admin.login_with_new_password()
    for _ in range(MAX_AGE // (IDLE - 60)):
        admin.clock.advance(IDLE - 60)
        assert admin.get("/logs").code == 200
    admin.clock.advance(IDLE - 60)
    assert admin.get("/logs").header("location") == "/login"


def test_logout_ends_the_session(admin: AdminHarness) -> None:
    admin.login_with_new_password()
    token = admin.cookies[SESSION_COOKIE]
    assert admin.post_form("/logout", {}, csrf=admin.csrf_from(admin.get("/logs"))).code == 303
    assert admin.get("/logs", cookies={SESSION_COOKIE: token}).header("location") == "/login"


def test_global_preferences_inherit_and_set(admin: AdminHarness) -> None:
    admin.login_with_new_password()
    page = admin.get("/settings/global/preferences")
    assert "Notification sender" in page.text
    assert "Server secret" not in page.text  # advanced
    assert "Server secret" in admin.get("/settings/global/preferences?advanced=1").text

    saved = admin.post_form(
        "/settings/global/preferences",
        [("fields", "notification_sender"), ("value.notification_sender", "n@example.com"),
         ("fields", "comment"), ("inherit.comment", "on"), ("value.comment", "ignored")],
    )
    assert saved.header("location") == "/settings/global/preferences?saved=1"
    assert effective(admin, GLOBAL, "notification_sender") == "n@example.com"
    assert effective(admin, GLOBAL, "comment") == ""
    assert "The settings were applied." in admin.get("/settings/global/preferences?saved=1").text

    # Ticking inherit again removes the value.
    admin.post_form(
        "/settings/global/preferences",
        [("fields", "notification_sender"), ("inherit.notification_sender", "on")],
    )
    assert effective(admin, GLOBAL, "notification_sender") == ""


def test_invalid_values_are_explained_and_nothing_is_saved(admin: AdminHarness) -> None:
    admin.login_with_new_password()
    response = admin.post_form(
        "/settings/global/preferences",
        [("fields", "notification_sender"), ("value.notification_sender", "n@example.com"),
         ("fields", "portal_base_url"), ("value.portal_base_url", "webmail.example.com")],
    )
    assert response.code == 400
    assert ("&#39;webmail.example.com&#39; is not a valid URL: it must start with https:// "
            "or http://") in response.text
    assert 'value="webmail.example.com"' in response.text  # what was typed is kept
    assert effective(admin, GLOBAL, "notification_sender") == ""


def test_fields_not_on_the_form_are_left_alone(admin: AdminHarness) -> None:
    admin.login_with_new_password()
    result_of(admin.settings.update(GLOBAL, {"server_secret": "s" * 20}))
    admin.post_form("/settings/global/preferences",
                    [("fields", "comment"), ("value.comment", "hello")])
    assert effective(admin, GLOBAL, "server_secret") == "s" * 20
    assert effective(admin, GLOBAL, "comment") == "hello"


def test_secrets_are_never_shown_and_cannot_be_emptied(admin: AdminHarness) -> None:
    admin.login_with_new_password()
    result_of(admin.settings.update(GLOBAL, {"server_secret": "s" * 20}))
    page = admin.get("/settings/global/preferences?advanced=1")
    assert "s" * 20 not in page.text
    assert 'id="inherit.server_secret"' not in page.text
    assert 'placeholder="hidden; type a new value to replace it"' in page.text
    # Left blank, it stays; a forged inherit is refused; a new value is set.
    admin.post_form("/settings/global/preferences?advanced=1",
                    [("fields", "server_secret"), ("value.server_secret", "")])
    assert effective(admin, GLOBAL, "server_secret") == "s" * 20
    forged = admin.post_form("/settings/global/preferences?advanced=1",
                             [("fields", "server_secret"), ("inherit.server_secret", "on")])
    assert forged.code == 400
    assert "a secret cannot be emptied or inherited; set a new value instead" in forged.text
    assert effective(admin, GLOBAL, "server_secret") == "s" * 20
    admin.post_form("/settings/global/preferences?advanced=1",
                    [("fields", "server_secret"), ("value.server_secret", "t" * 24)])
    assert effective(admin, GLOBAL, "server_secret") == "t" * 24


def test_domains_and_users(admin: AdminHarness) -> None:
    admin.login_with_new_password()
    added = admin.post_form("/settings/domains", {"name": "*.Example.com"})
    assert added.header("location") == "/settings/domains/*.example.com/preferences"
    assert admin.post_form("/settings/domains", {"name": "*.example.com"}).code == 400
    bad = admin.post_form("/settings/domains", {"name": "not a domain"})
    assert "is not a valid domain." in bad.text

    admin.post_form("/settings/domains/*.example.com/preferences",
                    [("fields", "notification_sender"),
                     ("value.notification_sender", "w@example.com")])
    admin.post_form("/settings/users", {"name": "Alice@Mail.Example.com"})
    page = admin.get("/settings/users/alice@mail.example.com/preferences")
    assert "from domain *.example.com" in page.text
    assert 'value="w@example.com"' in page.text
    assert "Relay recipient" not in page.text  # a global-only property
    user = Scope(Level.USER, "alice@mail.example.com")
    assert effective(admin, user, "notification_sender") == "w@example.com"

    deleted = admin.post_form("/settings/domains/*.example.com/delete", {},
                              csrf=admin.csrf_from(admin.get("/settings/domains")))
    assert deleted.header("location") == "/settings/domains"
    assert effective(admin, user, "notification_sender") == ""
    assert admin.get("/settings/domains/*.example.com/preferences").code == 404


def test_logs_page_shows_the_mpa_log(admin: AdminHarness) -> None:
    from twisted.logger import Logger

    admin.login_with_new_password()
    Logger(namespace="cipherd.mpa.test", observer=admin.publisher).warn(
        "The tunneled message should have been signed <script>"
    )
    page = admin.get("/logs?log=mpa&lines=10")
    assert "WARN The tunneled message should have been signed &lt;script&gt;" in page.text
    assert "The MTA log is empty." in admin.get("/logs?log=mta").text


def test_the_logs_page_searches_by_text_and_time_downloads_and_follows(
        admin: AdminHarness) -> None:
    from twisted.logger import LogLevel

    admin.login_with_new_password()
    for when, text in [(1_800_000_000, "3F309D81C68D: to=<bob@example.com>, status=sent"),
                       (1_800_000_600, "4A1B2C3D4E5F: to=<carol@example.com>, status=deferred"),
                       (1_800_001_200, "5B6C7D8E9F00: to=<Bob@Example.com>, status=bounced")]:
        admin.publisher({"log_namespace": "cipherd.mta.test", "log_level": LogLevel.info,
                         "log_format": text, "log_time": when})
    # 1_800_000_000 is 2027-01-15T08:00:00Z.
    everything = admin.get("/logs?log=mta")
    assert everything.text.count("status=") == 3
    assert "The last 3 lines, oldest first." in everything.text
    by_address = admin.get("/logs?log=mta&q=bob@example.com")
    assert by_address.text.count("status=") == 2 and "carol" not in by_address.text
    assert "The last 2 lines that match, oldest first." in by_address.text
    by_id = admin.get("/logs?log=mta&q=4a1b2c3d4e5f")
    assert by_id.text.count("status=") == 1 and "status=deferred" in by_id.text
    in_range = admin.get("/logs?log=mta&since=2027-01-15T08:05&until=2027-01-15T08:10")
    assert in_range.text.count("status=") == 1 and "status=deferred" in in_range.text
    assert "No line of the MTA log matches the search." in admin.get(
        "/logs?log=mta&q=nobody@example.com").text
    # A time that is not one, or a range that ends before it starts: said at the field.
    refused = admin.get("/logs?log=mta&since=yesterday&until=2027-01-15T08:10")
    assert refused.code == 400
    assert 'id="error.since">&#39;yesterday&#39; is not a date and time' in refused.text
    assert 'value="yesterday"' in refused.text
    backwards = admin.get("/logs?log=mta&since=2027-01-15T09:00&until=2027-01-15T08:00")
    assert 'id="error.until">must not be before the start<' in backwards.text
    # The same search, downloaded.
    download = admin.get("/logs/download?log=mta&q=bob%40example.com")
    assert download.code == 200
    assert download.header("content-disposition") == 'attachment; filename="mta.log"'
    assert download.text.count("\n") == 2 and "status=bounced\n" in download.text
    assert '<a href="/logs/download?log=mta&amp;lines=200&amp;q=bob%40example.com' in \
        by_address.text
    # Following: the page reloads itself with the same search.
    following = admin.get("/logs?log=mta&q=bob&follow=1")
    assert ('<meta http-equiv="refresh" content="5;url=/logs?log=mta&amp;lines=200&amp;q=bob'
            '&amp;since=&amp;until=&amp;follow=1#end">') in following.text
    assert "http-equiv" not in by_address.text


def tabs(page: str) -> list[str]:
    nav = page.split('<nav class="tabs"', 1)[1].split("</nav>", 1)[0]
    return re.findall(r">([^<]+)</a>", nav)


def test_the_appliance_role_narrows_the_settings_menus(admin: AdminHarness) -> None:
    admin.login_with_new_password()
    every = ["General", "Templates", "DKIM", "Webmail", "Encryption policy", "PDF", "Quota",
             "Auto cleanup", "Branding", "Certificate authority", "DLP", "Scheduled backup"]
    assert tabs(admin.get("/settings/global/preferences").text) == every
    for role, shown in [
        ("webmail", ["General", "Templates", "DKIM", "Quota", "Auto cleanup", "Branding",
                     "Scheduled backup"]),
        ("gateway", ["General", "Webmail", "Encryption policy", "PDF", "Certificate authority",
                     "DLP", "Scheduled backup"]),
        ("both", every),
    ]:
        assert admin.post_form("/settings/global/preferences", [
            ("fields", "appliance_role"), ("value.appliance_role", role)]).code == 303
        assert tabs(admin.get("/settings/global/preferences").text) == shown, role
    assert effective(admin, GLOBAL, "appliance_role") == "both"
    admin.post_form("/settings/global/preferences", [
        ("fields", "appliance_role"), ("value.appliance_role", "webmail")])
    # A domain's pages too; a page of the other role stays reachable by its
    # address, and says where it is.
    admin.post_form("/settings/domains", {"name": "example.com"})
    assert "Encryption policy" not in tabs(
        admin.get("/settings/domains/example.com/preferences").text)
    other = admin.get("/settings/global/encryption")
    assert other.code == 200 and "Encryption policy" in tabs(other.text)


def test_the_users_and_domains_lists_say_what_each_overrides(admin: AdminHarness) -> None:
    admin.login_with_new_password()
    for kind, name in (("users", "alice@example.com"), ("users", "bob@example.com"),
                       ("domains", "example.com")):
        assert admin.post_form(f"/settings/{kind}", {"name": name}).code == 303
    admin.post_form("/settings/users/alice@example.com/encryption", [
        ("fields", "encrypt_mode"), ("value.encrypt_mode", "mandatory"),
        ("fields", "smime_sign"), ("value.smime_sign", "false")])
    admin.post_form("/settings/domains/example.com/preferences", [
        ("fields", "comment"), ("value.comment", "ours")])
    users = admin.get("/settings/users").text
    cells = dict(re.findall(r'>([\w.@]+)</a></td>\s*<td class="overrides">([^<]*)</td>', users))
    assert cells == {"alice@example.com": "Encrypt mode, S/MIME sign",
                     "bob@example.com": "nothing: it inherits every setting"}
    assert '<td class="overrides">Comment</td>' in admin.get("/settings/domains").text


# What a gateway and a webmail appliance show of Settings → General.
BOTH_ROLES_GENERAL = {"comment", "appliance_role", "audit_retention_days",
                      "system_mail_secret", "custom_1", "custom_2", "custom_3"}
WEBMAIL_GENERAL = {
    "min_password_strength", "relay_recipient", "trusted_gateway_senders", "portal_base_url",
    "notification_sender", "postmaster", "initial_login_allowed", "server_secret",
    "signup_link_validity", "password_reset_link_validity", "signup_url",
    "password_reset_url", "webmail_login_url", "password_reset_enabled"}
GATEWAY_GENERAL = {"header_external"}
# Set as on a webmail appliance, before its role is narrowed.
PORTAL_VALUES = {
    "relay_recipient": "webmail@webmail.local",
    "portal_base_url": "https://webmail.example.com",
    "notification_sender": "notification@example.com",
    "postmaster": "postmaster@example.com",
    "password_reset_enabled": False,
    "initial_login_allowed": False,
    "signup_url": "https://webmail.example.com/join",
    "signup_link_validity": 600,
    "min_password_strength": 40,
}


def properties_shown(page: str) -> set[str]:
    return set(re.findall(r'data-property="(\w+)"', page))


def as_a_browser_submits(page: str) -> list[tuple[str, str]]:
    """
    The fields a browser sends of the settings form on C{page}, unchanged.
    """
    form = Form(page)
    fields = [("fields", name) for name in re.findall(r'name="fields" value="(\w+)"', page)]
    return [*fields, *((name, value) for name, value in form.values.items() if name),
            *((name, "on") for name in form.ticked)]


def set_role(admin: AdminHarness, role: str) -> None:
    assert admin.post_form(PREFERENCES, [
        ("fields", "appliance_role"), ("value.appliance_role", role)]).code == 303


def test_a_gateway_is_not_shown_the_webmail_messengers_general_fields_and_keeps_them(
        admin: AdminHarness) -> None:
    admin.login_with_new_password()
    assert not result_of(admin.settings.update(GLOBAL, PORTAL_VALUES))
    every = properties_shown(admin.get(ADVANCED).text)
    assert every == BOTH_ROLES_GENERAL | WEBMAIL_GENERAL | GATEWAY_GENERAL

    set_role(admin, "gateway")
    page = admin.get(ADVANCED).text
    assert properties_shown(page) == BOTH_ROLES_GENERAL | GATEWAY_GENERAL
    note = html.unescape(page.split('class="help role-note">', 1)[1].split("</p>", 1)[0])
    assert note.startswith("Not shown, as this appliance's role is Gateway (<em>Appliance "
                           "role</em>), and kept as they are: Min. password strength, Relay "
                           "recipient, Trusted gateway senders, Portal base URL")
    # The relay recipient's certificate is the webmail appliance's (guide §2.3.11).
    assert "/settings/global/preferences/certificate" not in page
    assert properties_shown(admin.get(PREFERENCES).text) == {"comment", "appliance_role"}

    # The form saved as shown, with one change: what it did not show is as it was.
    sent = [(k, "a gateway" if k == "value.comment" else v)
            for k, v in as_a_browser_submits(page) if k != "inherit.comment"]
    assert admin.post_form(ADVANCED, sent).code == 303
    assert effective(admin, GLOBAL, "comment") == "a gateway"
    stored = result_of(admin.settings.values(GLOBAL)).by_scope[GLOBAL]
    assert {name: stored[name] for name in PORTAL_VALUES} == PORTAL_VALUES

    # A form shown before the role changed still names its fields: refused,
    # it shows them again as they were typed; nothing is stored.
    stale = admin.post_form(ADVANCED, [("fields", "portal_base_url"),
                                       ("value.portal_base_url", "not a url")])
    assert stale.code == 400 and "portal_base_url" in properties_shown(stale.text)
    assert 'value="not a url"' in stale.text
    assert effective(admin, GLOBAL, "portal_base_url") == "https://webmail.example.com"

    # A domain's General page too; the others stay reachable by address.
    admin.post_form("/settings/domains", {"name": "example.com"})
    domain = properties_shown(admin.get("/settings/domains/example.com/preferences"
                                        "?advanced=1").text)
    assert not domain & WEBMAIL_GENERAL and "header_external" in domain
    assert admin.get("/settings/global/templates").code == 200


def test_a_webmail_appliance_is_not_shown_the_gateways_general_fields(
        admin: AdminHarness) -> None:
    admin.login_with_new_password()
    assert not result_of(admin.settings.update(GLOBAL, {"header_external": "X-Via: gw"}))
    set_role(admin, "webmail")
    page = admin.get(ADVANCED).text
    assert properties_shown(page) == BOTH_ROLES_GENERAL | WEBMAIL_GENERAL
    assert "is Webmail messenger (<em>Appliance role</em>), and kept as they are: Header " \
           "external." in html.unescape(page)
    assert "/settings/global/preferences/certificate" in page
    assert admin.post_form(ADVANCED, as_a_browser_submits(page)).code == 303
    assert effective(admin, GLOBAL, "header_external") == "X-Via: gw"
    set_role(admin, "both")
    assert "role-note" not in admin.get(ADVANCED).text


def test_a_gateway_has_no_authorized_recipients_in_its_mta_menu(admin: AdminHarness) -> None:
    """
    Authorized recipients are where webmail recipients may reply to: the
    webmail appliance's (guide §2.3.14).
    """
    admin.login_with_new_password()
    mta = ["Config", "Transports", "Authorized recipients"]
    for role, shown in (("both", mta), ("gateway", mta[:2]), ("webmail", mta)):
        set_role(admin, role)
        for path in ("/mta/config", "/mta/transports"):
            assert tabs(admin.get(path).text) == shown, (role, path)
    set_role(admin, "gateway")
    reached = admin.get("/mta/authorized-recipients")
    assert reached.code == 200 and tabs(reached.text) == mta
    refused = admin.post_form("/mta/authorized-recipients", {"entry": "not valid@@"})
    assert refused.code == 400 and tabs(refused.text) == mta


def test_unknown_pages_and_internal_errors_get_a_page(admin: AdminHarness) -> None:
    missing = admin.get("/no/such/page")
    assert missing.code == 404
    assert "There is no such page." in missing.text

    def broken(_: object) -> None:
        raise RuntimeError("secret detail")

    admin.login_with_new_password()
    admin.site.backend.settings.values = broken  # type: ignore[method-assign,assignment]
    response = admin.get("/settings/global/preferences")
    assert response.code == 500
    assert "The cause is in the cipherd log." in response.text
    assert "secret detail" not in response.text


def test_a_busy_server_says_so_and_counts_nothing(admin: AdminHarness) -> None:
    """
    With every place for password work taken (a flood of logins from
    elsewhere), a login or password change gets 503 and a clear message,
    and is not counted towards a lockout.
    """
    admin.authority._pending = MAX_PENDING_CHECKS  # every place taken
    for _ in range(LOCKOUT_THRESHOLD + 2):
        refused = admin.login()
        assert (refused.code, refused.header("retry-after")) == (503, "5")
        assert "The server is busy checking other logins" in refused.text
    admin.authority._pending = 0
    assert admin.login().code == 303  # not locked out
    admin.authority._pending = MAX_PENDING_CHECKS
    busy = admin.post_form("/admin/password", {"password": GOOD_PASSWORD,
                                               "confirm": GOOD_PASSWORD})
    assert (busy.code, busy.header("retry-after")) == (503, "5")
    assert "The server is busy checking other logins" in busy.text


def test_a_login_while_the_database_takes_no_writes_says_why_and_the_api_still_works(
        admin: AdminHarness) -> None:
    """
    A session lives in the database: with the database refusing writes
    (a file system gone read-only, a full disk) the login form says so
    instead of failing with a 500, and points to the API, which needs none.
    """
    admin.login_with_new_password()
    # Another browser, without that session.
    admin.cookies.clear()
    admin.treq = StubTreq(admin.site.resource())
    with admin.store.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA query_only = ON")  # the one shared connection
    refused = admin.login(GOOD_PASSWORD)
    assert (refused.code, refused.header("retry-after")) == (503, "5")
    assert ("You cannot log in to these pages just now: The database cannot be written: it "
            "is read-only.") in refused.text
    assert SESSION_COOKIE not in admin.cookies
    queue = admin.request("GET", "/api/v1/queue", auth=("admin", GOOD_PASSWORD))
    assert (queue.code, queue.json()) == (200, {"messages": []})
