"""
The MTA config: Postfix's relay host syntax, every field checked, all
problems reported together, defaults restored with null.
"""

from __future__ import annotations

import ipaddress

import pytest

from cipherd.smtp.config import MTAConfig, MTAConfigSource, RelayHost, apply_changes
from cipherd.store.schema import mta_config
from cipherd.testing import migrated_store, result_of


@pytest.mark.parametrize("text, host, port, mx", [
    ("mail.example.com", "mail.example.com", 25, True),
    ("mail.example.com:587", "mail.example.com", 587, True),
    ("[127.0.0.1]:26", "127.0.0.1", 26, False),
    ("[mx.example.com]", "mx.example.com", 25, False),
    ("[::1]:2526", "::1", 2526, False),
])
def test_relay_host_syntax(text: str, host: str, port: int, mx: bool) -> None:
    parsed = RelayHost.parse(text)
    assert (parsed.host, parsed.port, parsed.mx_lookup) == (host, port, mx)
    assert str(parsed) == text


@pytest.mark.parametrize("text", ["", "host:0", "[1.2.3.4]:70000", "a b", "bad_name.example"])
def test_bad_relay_hosts(text: str) -> None:
    with pytest.raises(ValueError):
        RelayHost.parse(text)


def test_changes_are_checked_together_and_null_restores_the_default() -> None:
    config = MTAConfig()
    changed, errors = apply_changes(config, {
        "relay_domains": ["Example.COM.", "example.com", "webmail.local"],
        "my_networks": ["192.0.2.7/24", "[2001:db8::]/32"],
        "internal_relay_host": " [127.0.0.1]:26 ", "match_subdomains": True})
    assert errors == {}
    assert changed.relay_domains == ("example.com", "webmail.local")
    assert changed.my_networks == ("192.0.2.0/24", "2001:db8::/32")
    assert changed.internal_relay_host == "[127.0.0.1]:26"
    policy = changed.receive_policy()
    assert policy.relay_domain("a@mx.webmail.local") and policy.in_my_networks("192.0.2.200")
    assert policy.my_networks[1] == ipaddress.ip_network("2001:db8::/32")

    same, errors = apply_changes(changed, {
        "relay_domains": "example.com", "my_networks": ["nonsense"], "match_subdomains": 1,
        "before_filter_message_size_limit": 10, "reject_unverified_code": 451, "x": 1})
    assert same is changed
    assert sorted(errors) == ["before_filter_message_size_limit", "match_subdomains",
                              "my_networks", "reject_unverified_code", "relay_domains", "x"]
    unchanged, errors = apply_changes(changed, {"after_filter_message_size_limit": 5000})
    assert unchanged is changed
    assert errors == {"after_filter_message_size_limit":
                      "must not be smaller than before_filter_message_size_limit"}
    restored, errors = apply_changes(changed, {"relay_domains": None})
    assert restored.relay_domains == () and not errors


def test_stored_config_is_shared_and_a_bad_stored_value_falls_back() -> None:
    store = migrated_store()
    here, there = MTAConfigSource(store), MTAConfigSource(store)
    assert result_of(here.update({"relay_domains": ["example.com"],
                                  "my_hostname": "MX.example.com"})) == {}
    assert here.current.my_hostname == "mx.example.com"
    assert result_of(there.refresh()).relay_domains == ("example.com",)
    with store.engine.begin() as conn:
        conn.execute(mta_config.update().where(mta_config.c.name == "my_hostname").values(
            value='"not a host name"'))
    refreshed = result_of(there.refresh())
    assert refreshed.my_hostname == "localhost" and refreshed.relay_domains == ("example.com",)


@pytest.mark.parametrize("subject", ["a\r\nBcc: x@example.net", "a\x0bb", "a\u2028b"])
def test_a_composed_subject_cannot_carry_a_line_break(subject: str) -> None:
    from cipherd.smtp.compose import ComposeError, compose

    with pytest.raises(ComposeError) as refused:
        compose(sender="a@example.org", recipients=["b@example.com"], subject=subject,
                body="x", now=0.0, my_hostname="gw.example.org")
    assert refused.value.field == "subject"


def test_dns_servers_are_ip_addresses() -> None:
    changed, errors = apply_changes(MTAConfig(), {"dns_servers": [" 192.0.2.53", "2001:db8::53"]})
    assert not errors and changed.dns_servers == ("192.0.2.53", "2001:db8::53")
    _, errors = apply_changes(MTAConfig(), {"dns_servers": ["ns.example.com"]})
    assert errors == {"dns_servers": "'ns.example.com' is not an IP address"}
