"""
The JSON API through StubTreq: 401 / 403 / 400 behaviour, settings at
every level, logs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import Logger

from cipherd.web.auth import MAX_PENDING_CHECKS
from tests.harness import GOOD_PASSWORD, LOCKOUT_THRESHOLD, AdminHarness

DEFAULT = ("admin", "admin")
CHANGED = ("admin", GOOD_PASSWORD)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[AdminHarness]:
    harness = AdminHarness(tmp_path)
    yield harness
    harness.close()


def call(api: AdminHarness, method: str, path: str, auth: Any = CHANGED,
         body: Any = None, raw: bytes | None = None, **kwargs: Any) -> Any:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    if auth:
        kwargs["auth"] = auth
    kwargs.setdefault("headers", {"Content-Type": "application/json"})
    return api.request(method, "/api/v1" + path, data=data, **kwargs)


def change_default(api: AdminHarness) -> None:
    response = call(api, "POST", "/admin/password", DEFAULT, {"password": GOOD_PASSWORD})
    assert response.code == 200, response.text


def test_401_without_or_with_wrong_credentials(api: AdminHarness) -> None:
    response = call(api, "GET", "/settings/global", auth=None)
    assert response.code == 401
    assert response.header("www-authenticate").startswith('Basic realm="cipherd admin"')
    assert response.json() == {"error": "Authentication required (HTTP Basic, or an API "
                                        "token as Authorization: Bearer)."}
    wrong = call(api, "GET", "/settings/global", auth=("admin", "nope"))
    assert (wrong.code, wrong.json()) == (401, {"error": "Wrong user name or password."})
    garbage = api.request("GET", "/api/v1/settings/global",
                          headers={"Authorization": "Basic !!!"})
    assert garbage.code == 401


def test_403_until_the_default_password_is_changed(api: AdminHarness) -> None:
    for method, path in (("GET", "/settings/global"), ("PATCH", "/settings/global"),
                         ("GET", "/logs/mta"), ("GET", "/settings/users/a@example.com")):
        response = call(api, method, path, DEFAULT, {})
        assert response.code == 403, path
        assert response.json()["error"].startswith(
            "The default admin password must be changed before the API can be used: "
            "POST /api/v1/admin/password"
        )
    change_default(api)
    assert call(api, "GET", "/settings/global", DEFAULT).code == 401
    assert call(api, "GET", "/settings/global").code == 200


def test_password_change_refusals(api: AdminHarness) -> None:
    weak = call(api, "POST", "/admin/password", DEFAULT, {"password": "admin12345"})
    assert weak.code == 400
    assert weak.json()["errors"]["password"].startswith("The password is too easy to guess.")
    wrong_type = call(api, "POST", "/admin/password", DEFAULT, {"password": 5})
    assert wrong_type.json()["errors"] == {"password": "must be a string"}
    not_json = call(api, "POST", "/admin/password", DEFAULT, raw=b"{nope")
    assert not_json.code == 400
    assert not_json.json()["error"].startswith("The request body is not valid JSON")


def test_api_failures_count_toward_lockout(api: AdminHarness) -> None:
    for _ in range(5):
        call(api, "GET", "/settings/global", auth=("admin", "guess"))
    response = call(api, "GET", "/settings/global", DEFAULT)
    assert response.code == 401
    assert "Too many failed logins" in response.json()["error"]


def test_400_names_each_refused_field_and_changes_nothing(api: AdminHarness) -> None:
    change_default(api)
    response = call(api, "PATCH", "/settings/global", body={
        "postmaster": "pm@example.com",
        "notification_sender": "nobody",
        "auto_mailbox_cleanup_interval": "forever",
        "locality": "internal",
        "no_such": 1,
    })
    assert response.code == 400
    assert response.json() == {
        "error": "Some values were refused; nothing was changed.",
        "errors": {
            "notification_sender": "'nobody' is not a valid email address: it has no @",
            "auto_mailbox_cleanup_interval": "'forever' is not a valid interval: use a whole "
            "number followed by h (hours), d (days) or w (weeks), like 8h, 1d or 2w (or m for "
            "minutes, like 30m)",
            "locality": "cannot be set at global level (only: domain, user)",
            "no_such": "no such property",
        },
    }
    body = call(api, "GET", "/settings/global").json()
    assert body["properties"]["postmaster"] == {"value": "", "level": "default", "inherited": True}
    array = call(api, "PATCH", "/settings/global", raw=b"[1, 2]")
    assert array.json()["error"] == "Send a JSON object {name: value}; null means inherit."


def test_settings_at_every_level(api: AdminHarness) -> None:
    change_default(api)
    assert call(api, "PATCH", "/settings/global",
                body={"notification_sender": "g@example.com", "relay_recipient":
                      "webmail@webmail.local"}).code == 200
    assert call(api, "PATCH", "/settings/domains/*.example.com",
                body={"notification_sender": "w@example.com"}).code == 200
    assert call(api, "PATCH", "/settings/domains/mail.example.com",
                body={"encrypt_mode": "mandatory"}).code == 200
    user = call(api, "PATCH", "/settings/users/Alice@Mail.Example.com",
                body={"locality": "internal"}).json()
    assert user["scope"] == "user alice@mail.example.com"
    props = user["properties"]
    assert props["locality"] == {"value": "internal", "level": "user",
                                 "scope": "alice@mail.example.com", "inherited": False}
    assert props["encrypt_mode"] == {"value": "mandatory", "level": "domain",
                                     "scope": "mail.example.com", "inherited": True}
    assert props["notification_sender"] == {"value": "w@example.com", "level": "domain",
                                            "scope": "*.example.com", "inherited": True}
    assert props["relay_recipient"] == {"value": "webmail@webmail.local", "level": "global",
                                        "inherited": True}
    assert props["webmail_enabled"] == {"value": False, "level": "default", "inherited": True}

    # null inherits.
    call(api, "PATCH", "/settings/domains/*.example.com", body={"notification_sender": None})
    props = call(api, "GET", "/settings/users/alice@mail.example.com").json()["properties"]
    assert props["notification_sender"]["value"] == "g@example.com"

    assert call(api, "GET", "/settings/domains").json() == {
        "domains": ["*.example.com", "mail.example.com"]}
    assert call(api, "GET", "/settings/users").json() == {"users": ["alice@mail.example.com"]}
    assert call(api, "DELETE", "/settings/users/alice@mail.example.com").code == 200
    assert call(api, "DELETE", "/settings/users/alice@mail.example.com").code == 404
    bad = call(api, "GET", "/settings/users/not-an-address")
    assert (bad.code, bad.json()["error"]) == (
        400, "'not-an-address' is not a valid email address: it has no @")


def test_oversized_body_is_refused_before_parsing(api: AdminHarness) -> None:
    change_default(api)
    response = call(api, "PATCH", "/settings/global", raw=b" " * 1_000_001)
    assert response.code == 400
    assert response.json()["error"] == "The request body is larger than 1000000 bytes."


def test_logs(api: AdminHarness) -> None:
    change_default(api)
    mta = Logger(namespace="cipherd.mta.queue", observer=api.publisher)
    mpa = Logger(namespace="cipherd.mpa", observer=api.publisher)
    for n in range(5):
        mta.info("3E808D2: to=<webmail@webmail.local>, status=deferred (try {n})", n=n)
    mpa.info("Email is not a relay email; Recipients: [webmail@webmail.local]")
    Logger(namespace="cipherd.admin", observer=api.publisher).info("not a mail log line")
    body = call(api, "GET", "/logs/mta?lines=2").json()
    assert body["log"] == "mta"
    assert [line.split(" ", 1)[1] for line in body["lines"]] == [
        "3E808D2: to=<webmail@webmail.local>, status=deferred (try 3)",
        "3E808D2: to=<webmail@webmail.local>, status=deferred (try 4)",
    ]
    lines = call(api, "GET", "/logs/mpa").json()["lines"]
    assert [line.split(" ", 1)[1] for line in lines] == [
        "INFO Email is not a relay email; Recipients: [webmail@webmail.local]"]
    assert call(api, "GET", "/logs/mta?lines=x").code == 400
    # Digits str.isdigit() takes and int() refuses: a 400, not a 500.
    assert call(api, "GET", "/logs/mta?lines=%C2%B2").code == 400
    assert call(api, "GET", "/logs/other").code == 404
    # The logs page's search: text, and a time range (UTC).
    found = call(api, "GET", "/logs/mta?q=TRY+1").json()["lines"]
    assert [line.split(" ", 1)[1] for line in found] == [
        "3E808D2: to=<webmail@webmail.local>, status=deferred (try 1)"]
    assert call(api, "GET", "/logs/mta?until=2000-01-01T00:00").json()["lines"] == []
    refused = call(api, "GET", "/logs/mta?since=soon")
    assert refused.code == 400
    assert refused.json()["errors"] == {
        "since": "'soon' is not a date and time (YYYY-MM-DD HH:MM)"}


def test_unknown_routes_and_methods_answer_in_json(api: AdminHarness) -> None:
    change_default(api)
    missing = call(api, "GET", "/nope")
    assert (missing.code, missing.json()) == (404, {"error": "There is no such resource."})
    wrong_method = call(api, "PUT", "/settings/global", body={})
    assert (wrong_method.code, wrong_method.json()) == (405, {
        "error": "This resource does not answer PUT; it answers GET, HEAD, PATCH."})
    assert wrong_method.header("allow") == "GET, HEAD, PATCH"


def test_what_a_browser_could_send_from_another_site_is_refused(api: AdminHarness) -> None:
    """
    A browser resends cached Basic credentials: a page elsewhere must not
    be able to drive the API with them.
    """
    change_default(api)
    body = {"notification_sender": "evil@example.net"}
    for headers in ({"Content-Type": "text/plain"},
                    {"Content-Type": "application/x-www-form-urlencoded"},
                    {}):
        form = call(api, "PATCH", "/settings/global", body=body, headers=headers)
        assert (form.code, form.json()) == (415, {
            "error": "Send the body as JSON, with Content-Type: application/json."})
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                    {"Origin": "https://evil.example"}, {"Origin": "null"}):
        cross = call(api, "PATCH", "/settings/global", body=body,
                     headers={"Content-Type": "application/json", **headers})
        assert (cross.code, cross.json()) == (403, {
            "error": "The API does not answer requests made by another site's pages."}), headers
        assert call(api, "GET", "/settings/global", headers=headers).code == 403
    same = call(api, "PATCH", "/settings/global", body=body,
                headers={"Content-Type": "application/json; charset=utf-8",
                         "Sec-Fetch-Site": "same-origin", "Origin": "https://admin.test"})
    assert same.code == 200
    assert same.json()["properties"]["notification_sender"]["value"] == "evil@example.net"


def test_secrets_are_write_only(api: AdminHarness) -> None:
    change_default(api)
    set_ = call(api, "PATCH", "/settings/global", body={"server_secret": "q" * 20})
    assert set_.code == 200
    assert "q" * 20 not in set_.text
    entry = call(api, "GET", "/settings/global").json()["properties"]["server_secret"]
    assert entry == {"value": None, "hidden": True, "level": "global", "inherited": False}
    emptied = call(api, "PATCH", "/settings/global", body={"server_secret": None})
    assert emptied.json()["errors"] == {
        "server_secret": "a secret cannot be emptied or inherited; set a new value instead"}


def test_503_while_every_password_check_is_taken(api: AdminHarness) -> None:
    change_default(api)
    api.authority._pending = MAX_PENDING_CHECKS  # a flood of logins from elsewhere
    for _ in range(LOCKOUT_THRESHOLD + 2):
        busy = call(api, "GET", "/settings/global")
        assert (busy.code, busy.header("retry-after")) == (503, "5")
        assert busy.json() == {
            "error": "The server is busy checking other logins; try again in a moment."}
    api.authority._pending = 0
    assert call(api, "GET", "/settings/global").code == 200  # nothing was counted


def test_smtp_transports_resource(api: AdminHarness) -> None:
    change_default(api)
    added = call(api, "POST", "/mta/transports",
                 body={"domain": "webmail.local", "host": "[192.0.2.5]", "port": 2525})
    assert added.code == 200, added.text
    assert added.json() == {"transports": [
        {"domain": "webmail.local", "host": "[192.0.2.5]", "port": 2525}]}
    call(api, "POST", "/mta/transports", body={"domain": "Example.COM", "host": "mx.example.net"})
    replaced = call(api, "POST", "/mta/transports",
                    body={"domain": "webmail.local", "host": "[192.0.2.6]"})
    assert replaced.json()["transports"] == [
        {"domain": "example.com", "host": "mx.example.net", "port": 25},
        {"domain": "webmail.local", "host": "[192.0.2.6]", "port": 25}]
    bad = call(api, "POST", "/mta/transports",
               body={"domain": "x.example", "host": "[192.0.2.7]", "port": 70000})
    assert bad.code == 400
    assert bad.json()["errors"] == {"transports": "x.example: the port 70000 is not between "
                                                  "1 and 65535"}
    assert call(api, "DELETE", "/mta/transports", body={"domain": "example.com"}).code == 200
    assert call(api, "GET", "/mta/transports").json() == {"transports": [
        {"domain": "webmail.local", "host": "[192.0.2.6]", "port": 25}]}
    missing = call(api, "DELETE", "/mta/transports", body={"domain": "example.com"})
    assert missing.code == 404


def test_relay_domains_one_by_one(api: AdminHarness) -> None:
    """
    Guide §2.3.1, figure 7: *Add domain* and delete, one domain at a time;
    PATCH /mta of the whole list still works.
    """
    change_default(api)
    assert call(api, "GET", "/mta/relay-domains").json() == {"relay_domains": []}
    added = call(api, "POST", "/mta/relay-domains", body={"domain": " Webmail.Local. "})
    assert (added.code, added.json()) == (200, {"relay_domains": ["webmail.local"]})
    call(api, "POST", "/mta/relay-domains", body={"domain": "example.com"})
    again = call(api, "POST", "/mta/relay-domains", body={"domain": "webmail.local"})
    assert again.json() == {"relay_domains": ["webmail.local", "example.com"]}
    refused = call(api, "POST", "/mta/relay-domains", body={"domain": "webmail local"})
    assert (refused.code, refused.json()) == (400, {
        "error": "The domain was refused; nothing was changed.",
        "errors": {"domain": "'webmail local' is not a domain name: it contains spaces."}})
    wrong_type = call(api, "POST", "/mta/relay-domains", body={"name": "example.org"})
    assert wrong_type.code == 400
    assert wrong_type.json()["errors"] == {"domain": "must be a domain name"}
    assert call(api, "GET", "/mta").json()["relay_domains"] == ["webmail.local", "example.com"]

    deleted = call(api, "DELETE", "/mta/relay-domains", body={"domain": "WEBMAIL.local"})
    assert (deleted.code, deleted.json()) == (200, {"relay_domains": ["example.com"]})
    gone = call(api, "DELETE", "/mta/relay-domains", body={"domain": "webmail.local"})
    assert (gone.code, gone.json()) == (404, {"error": "webmail.local is not a relay domain."})
    assert call(api, "PATCH", "/mta", body={"relay_domains": ["a.example"]}).code == 200
    assert call(api, "GET", "/mta/relay-domains").json() == {"relay_domains": ["a.example"]}


def test_relay_hosts_as_host_port_and_mx(api: AdminHarness) -> None:
    """
    Figure 7's relay host fields -- host, port, *mx* -- as a resource of
    their own; GET and PATCH /mta keep Postfix's syntax.
    """
    change_default(api)
    none = {"host": "", "port": 25, "mx": False, "relay_host": ""}
    assert call(api, "GET", "/mta/relay-hosts/internal").json() == none
    internal = call(api, "PUT", "/mta/relay-hosts/internal",
                    body={"host": "192.0.2.5", "port": 2525})
    assert (internal.code, internal.json()) == (200, {
        "host": "192.0.2.5", "port": 2525, "mx": False, "relay_host": "[192.0.2.5]:2525"})
    external = call(api, "PUT", "/mta/relay-hosts/external",
                    body={"host": "mail.example.net", "mx": True}).json()
    assert external == {"host": "mail.example.net", "port": 25, "mx": True,
                        "relay_host": "mail.example.net"}
    mta = call(api, "GET", "/mta").json()
    assert (mta["internal_relay_host"], mta["external_relay_host"]) == (
        "[192.0.2.5]:2525", "mail.example.net")

    # Each refusal at its field, and nothing changes.
    typed = call(api, "PUT", "/mta/relay-hosts/internal",
                 body={"host": 5, "port": "25", "mx": "yes"})
    assert typed.code == 400
    assert typed.json()["errors"] == {
        "host": "must be a host name or an IP address, as a string",
        "port": "must be a number from 1 to 65535", "mx": "must be true or false"}
    wrong = call(api, "PUT", "/mta/relay-hosts/internal",
                 body={"host": "smtp.example.com:26", "port": 0})
    assert wrong.json() == {
        "error": "The relay host was refused; nothing was changed.",
        "errors": {"host": "'smtp.example.com:26' is not a host name or an IP address (the "
                           "port goes in its own field).",
                   "port": "The port is a number from 1 to 65535 (25 for SMTP)."}}
    empty = call(api, "PUT", "/mta/relay-hosts/internal", body={"host": ""})
    assert empty.json()["errors"] == {
        "host": "Enter the relay host: a host name or an IP address."}
    assert call(api, "GET", "/mta/relay-hosts/internal").json()["relay_host"] == (
        "[192.0.2.5]:2525")

    # Postfix's syntax through PATCH /mta reads back as fields.
    call(api, "PATCH", "/mta", body={"internal_relay_host": "[2001:db8::5]:26"})
    assert call(api, "GET", "/mta/relay-hosts/internal").json() == {
        "host": "2001:db8::5", "port": 26, "mx": False, "relay_host": "[2001:db8::5]:26"}
    cleared = call(api, "DELETE", "/mta/relay-hosts/internal")
    assert (cleared.code, cleared.json()) == (200, none)
    assert call(api, "GET", "/mta").json()["internal_relay_host"] == ""
    assert call(api, "GET", "/mta/relay-hosts/sideways").code == 404


def test_network_info(api: AdminHarness) -> None:
    """
    Admin → Network (guide §2.2) read only, with the DNS servers cipherd
    asks, which PATCH /mta sets.
    """
    change_default(api)
    network = call(api, "GET", "/network")
    assert network.code == 200
    body = network.json()
    assert (body["hostname"], body["fqdn"]) == ("webmail", "webmail.example.com")
    eth0 = body["interfaces"][0]
    assert (eth0["name"], eth0["mac"], eth0["up"], eth0["mtu"]) == (
        "eth0", "00:15:5d:b2:2a:1d", True, 1500)
    assert eth0["addresses"][0] == {"family": "IPv4", "address": "192.168.1.109",
                                    "netmask": "255.255.255.0",
                                    "broadcast": "192.168.1.255",
                                    "prefix": "192.168.1.109/24"}
    assert [i["name"] for i in body["interfaces"]] == ["eth0", "lo"]
    assert body["gateways"] == ["192.168.1.1 (eth0)"]
    assert body["resolvers"] == {"nameservers": ["192.168.1.1"], "search": ["example.com"]}
    assert body["dns_servers"] == [] and body["my_hostname"]
    call(api, "PATCH", "/mta", body={"dns_servers": ["192.0.2.53"]})
    assert call(api, "GET", "/network").json()["dns_servers"] == ["192.0.2.53"]
    assert call(api, "PUT", "/network", body={}).code == 405
