"""
The property registry: every validator's refusal, and inheritance
resolution at every level, wildcard domains and "inherit" resets included.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from cipherd.settings import (
    GLOBAL,
    PROPERTIES,
    REGISTRY,
    IAddressSettings,
    InvalidValue,
    Level,
    Scope,
    Values,
    lookup_chain,
    normalise_domain,
    normalise_email,
    scope_for,
    validate_changes,
)
from cipherd.store.settings import SettingsRepository
from cipherd.testing import MemorySettings, migrated_store, result_of

# The guide's labels (figures 9, 12, 14) in snake_case, as DESIGN.md names them.
GUIDE_PROPERTIES = {
    "comment", "min_password_strength", "relay_recipient", "portal_base_url",
    "notification_sender", "postmaster", "initial_login_allowed", "server_secret",
    "signup_link_validity", "password_reset_link_validity", "signup_url",
    "password_reset_url", "webmail_login_url", "password_reset_enabled", "header_external",
    "system_mail_secret", "custom_1", "custom_2", "custom_3", "webmail_enabled",
    "webmail_read_receipt", "webmail_only_if_mandatory", "webmail_recipient", "webmail_sender",
    "auto_mailbox_cleanup_enabled", "auto_mailbox_cleanup_interval",
    "auto_account_cleanup_enabled", "auto_account_cleanup_last_activity",
    "auto_account_cleanup_schedule", "mailbox_size_limit", "locality", "encrypt_mode",
    "subject_trigger_enabled", "subject_trigger", "subject_trigger_remove_pattern",
    "header_trigger_enabled", "header_trigger", "smime_enabled",
}


def test_the_guide_properties_are_declared() -> None:
    assert GUIDE_PROPERTIES <= set(REGISTRY)


@pytest.mark.parametrize("prop", PROPERTIES, ids=lambda p: p.name)
def test_every_default_is_valid(prop: Any) -> None:
    if prop.secret:
        # No default: first start generates a random value (tests/test_store.py).
        assert prop.default == ""
    else:
        assert prop.validate(prop.default) == prop.default
    assert prop.help and prop.label and prop.levels


REFUSALS = [
    ("notification_sender", "bad", "'bad' is not a valid email address: it has no @"),
    ("notification_sender", "a@b@c.com",
     "'a@b@c.com' is not a valid email address: it must contain exactly one @"),
    ("notification_sender", "@example.com",
     "'@example.com' is not a valid email address: the part before @ is empty"),
    ("notification_sender", "a b@example.com",
     "'a b@example.com' is not a valid email address: 'a b' is not a valid part before @"),
    ("postmaster", "pm@localhost",
     "'pm@localhost' is not a valid email address: the domain 'localhost' has no dot"),
    ("postmaster", "pm@exa_mple.com",
     "'pm@exa_mple.com' is not a valid email address: 'exa_mple' is not a valid part of a "
     "domain name"),
    ("portal_base_url", "webmail.example.com",
     "'webmail.example.com' is not a valid URL: it must start with https:// or http://"),
    ("portal_base_url", "https://", "'https://' is not a valid URL: it names no host"),
    ("portal_base_url", "https://a b.com",
     "'https://a b.com' is not a valid URL: it contains spaces"),
    ("portal_base_url", "https://x.com:99999",
     "'https://x.com:99999' is not a valid URL: Port out of range 0-65535"),
    ("auto_mailbox_cleanup_interval", "3x",
     "'3x' is not a valid interval: use a whole number followed by h (hours), d (days) or "
     "w (weeks), like 8h, 1d or 2w (or m for minutes, like 30m)"),
    ("auto_account_cleanup_schedule", "0 0 2 * *",
     "'0 0 2 * *' is not a valid cron expression: it has 5 fields; Quartz needs 6 or 7 "
     "(seconds minutes hours day-of-month month day-of-week [year]), like 0 0 2 * * ?"),
    ("subject_trigger", "[encrypt",
     "'[encrypt' is not a valid regular expression: unterminated character set at position 0"),
    ("header_trigger", "X-Encrypt yes",
     "'X-Encrypt yes' is not a header trigger: write a header name, a colon and a regular "
     "expression for its value, like X-Encrypt: ^yes$"),
    ("header_trigger", "X-Encrypt: (yes",
     "'X-Encrypt: (yes': the value pattern is not a valid regular expression: missing ), "
     "unterminated subpattern at position 0"),
    ("header_external", "no colon here",
     "'no colon here' is not a header field: write a name, a colon and a value, like "
     "X-Sent-Via: Example gateway"),
    ("header_external", "X-Sent-Via:  ",
     "'X-Sent-Via:' is not a header field: write a name, a colon and a value, like "
     "X-Sent-Via: Example gateway"),
    ("header_external", "X Sent: a",
     "'X Sent: a' is not a header field: write a name, a colon and a value, like "
     "X-Sent-Via: Example gateway"),
    ("header_external", "Subject: hi",
     "Subject is a field of the message itself and cannot be added; use a name of your "
     "own, like X-Sent-Via"),
    ("header_external", "Content-Type: text/html",
     "Content-Type is a field of the message itself and cannot be added; use a name of "
     "your own, like X-Sent-Via"),
    ("header_external", "X-A: b\r\nBcc: x@example.org",
     "must not contain control characters or line breaks"),
    ("template_new_message", "Subject: hi\n\nFrom {{ sender }}: {{ unknown_variable }}",
     "uses {{ unknown_variable }}, which this template does not have; its variables are "
     "sender, subject, link"),
    ("template_signup", "Subject: {{ recipient }}\n\n{{ link }} {{ organization }}",
     "uses {{ organization }}, {{ recipient }}, which this template does not have; its "
     "variables are sender, subject, link, expires, organisation"),
    ("dkim_private_key", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQ",
     "is not a private key in PEM format: paste the whole key, from -----BEGIN PRIVATE "
     "KEY----- (or -----BEGIN RSA PRIVATE KEY-----) to its END line"),
    ("dkim_private_key", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIF\n"
     "-----END ENCRYPTED PRIVATE KEY-----",
     "is protected by a passphrase: paste it unencrypted (openssl pkey -in key.pem -out "
     "plain.pem asks for the passphrase once)"),
    ("dkim_private_key", "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEF\n"
     "-----END PRIVATE KEY-----",
     "could not be read: the key is damaged or incomplete (a line missing or changed "
     "between its BEGIN and END lines)"),
    ("encrypt_mode", "always", "'always' is not one of: no_encryption, allow, mandatory"),
    ("webmail_enabled", "yes", "must be true or false, not a string"),
    ("signup_link_validity", 0, "must be between 1 and 525600"),
    ("signup_link_validity", "10", "must be a whole number, not a string"),
    ("signup_link_validity", True, "must be a whole number, not a boolean"),
    ("comment", "two\nlines", "must not contain control characters or line breaks"),
    ("comment", "x" * 1001, "is 1001 characters long; the limit is 1000"),
    ("comment", 5, "must be a string, not a number"),
    ("server_secret", "short", "must be at least 16 characters long"),
]


@pytest.mark.parametrize(("name", "value", "message"), REFUSALS)
def test_validators_say_why(name: str, value: Any, message: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        REGISTRY[name].validate(value)
    assert str(caught.value) == message


def test_form_input_is_parsed_per_type() -> None:
    assert REGISTRY["signup_link_validity"].type.from_form(" 60 ") == 60
    with pytest.raises(InvalidValue, match="'sixty' is not a whole number"):
        REGISTRY["signup_link_validity"].type.from_form("sixty")
    assert REGISTRY["webmail_enabled"].type.from_form("on") is True
    assert REGISTRY["webmail_enabled"].type.from_form("") is False
    assert REGISTRY["header_trigger"].validate("X-Encrypt:yes") == "X-Encrypt: yes"
    assert REGISTRY["header_external"].validate(" X-Sent-Via:Example  gw ") == \
        "X-Sent-Via: Example  gw"
    assert REGISTRY["auto_account_cleanup_schedule"].validate(" 0  0 2 * * ? ") == "0 0 2 * * ?"


def test_changes_are_checked_against_levels_and_names() -> None:
    clean, errors = validate_changes(
        Scope(Level.USER, "a@example.com"),
        {"relay_recipient": "w@webmail.local", "nope": 1, "comment": None,
         "notification_sender": "n@example.com"},
    )
    assert errors == {
        "relay_recipient": "cannot be set at user level (only: global)",
        "nope": "no such property",
    }
    assert clean == {"comment": None, "notification_sender": "n@example.com"}


def test_lookup_chain_for_a_user() -> None:
    assert lookup_chain(Scope(Level.USER, "alice@mail.example.com")) == [
        Scope(Level.USER, "alice@mail.example.com"),
        Scope(Level.DOMAIN, "mail.example.com"),
        Scope(Level.DOMAIN, "*.mail.example.com"),
        Scope(Level.DOMAIN, "*.example.com"),
        Scope(Level.DOMAIN, "*.com"),
        GLOBAL,
    ]


def test_lookup_chain_for_domains() -> None:
    assert lookup_chain(Scope(Level.DOMAIN, "example.com")) == [
        Scope(Level.DOMAIN, "example.com"),
        Scope(Level.DOMAIN, "*.example.com"),
        Scope(Level.DOMAIN, "*.com"),
        GLOBAL,
    ]
    assert lookup_chain(Scope(Level.DOMAIN, "*.example.com")) == [
        Scope(Level.DOMAIN, "*.example.com"),
        Scope(Level.DOMAIN, "*.com"),
        GLOBAL,
    ]
    assert lookup_chain(GLOBAL) == [GLOBAL]


def test_names_are_normalised() -> None:
    assert normalise_email(" Alice@Example.COM ") == "alice@example.com"
    assert normalise_domain("*.Example.com.") == "*.example.com"
    with pytest.raises(InvalidValue, match="is not a valid domain"):
        normalise_domain("exa mple.com")


SENDER = REGISTRY["notification_sender"]
USER = Scope(Level.USER, "alice@mail.example.com")


@pytest.mark.parametrize(
    ("set_at", "expected_source"),
    [
        ([], None),
        ([GLOBAL], GLOBAL),
        ([GLOBAL, Scope(Level.DOMAIN, "*.com")], Scope(Level.DOMAIN, "*.com")),
        ([GLOBAL, Scope(Level.DOMAIN, "*.com"), Scope(Level.DOMAIN, "*.example.com")],
         Scope(Level.DOMAIN, "*.example.com")),
        ([Scope(Level.DOMAIN, "*.example.com"), Scope(Level.DOMAIN, "mail.example.com")],
         Scope(Level.DOMAIN, "mail.example.com")),
        ([Scope(Level.DOMAIN, "mail.example.com"), USER], USER),
        # Domains that are not on the chain do not count.
        ([Scope(Level.DOMAIN, "example.com"), Scope(Level.DOMAIN, "*.other.com")], None),
    ],
)
def test_most_specific_level_wins(set_at: list[Scope], expected_source: Scope | None) -> None:
    values = Values({scope: {SENDER.name: f"n@{scope.key or 'global'}.example"}
                     for scope in set_at})
    resolved = values.resolve(USER, SENDER)
    assert resolved.source == expected_source
    if expected_source is None:
        assert resolved.value == SENDER.default
        assert resolved.origin == "default"
    else:
        assert resolved.value == f"n@{expected_source.key or 'global'}.example"
        assert resolved.origin == expected_source.level.value


def test_a_value_at_a_level_the_property_does_not_allow_is_ignored() -> None:
    relay = REGISTRY["relay_recipient"]
    values = Values({Scope(Level.DOMAIN, "mail.example.com"): {relay.name: "x@y.com"},
                     GLOBAL: {relay.name: "w@webmail.local"}})
    assert values.resolve(USER, relay).value == "w@webmail.local"


class RepositoryTests(SynchronousTestCase):
    """
    Inheritance through the store, with "inherit" resets (in-memory SQLite;
    ``test_store.py`` runs the same repository on SQLite and PostgreSQL files).
    """

    def setUp(self) -> None:
        self.repo = SettingsRepository(migrated_store(), Clock())

    def update(self, scope: Scope, changes: dict[str, Any]) -> dict[str, str]:
        return self.successResultOf(self.repo.update(scope, changes))

    def effective(self, scope: Scope, name: str) -> tuple[Any, str]:
        resolved = self.successResultOf(self.repo.effective(scope))[name]
        return resolved.value, resolved.origin

    def test_many_scopes_at_once_resolve_as_one_at_a_time(self) -> None:
        other = Scope(Level.USER, "bob@other.example")
        assert self.update(GLOBAL, {"encrypt_mode": "allow"}) == {}
        assert self.update(Scope(Level.DOMAIN, "*.example.com"),
                           {"encrypt_mode": "mandatory"}) == {}
        assert self.update(other, {"webmail_enabled": True}) == {}
        many = self.successResultOf(self.repo.effective_many([USER, other, GLOBAL, USER]))
        assert set(many) == {USER, other, GLOBAL}
        for scope, values in many.items():
            one = self.successResultOf(self.repo.effective(scope))
            assert values == {name: resolved.value for name, resolved in one.items()}
        assert (many[USER]["encrypt_mode"], many[other]["encrypt_mode"]) == ("mandatory",
                                                                            "allow")

    def test_inherit_resets_fall_back_one_level_at_a_time(self) -> None:
        wildcard = Scope(Level.DOMAIN, "*.example.com")
        domain = Scope(Level.DOMAIN, "mail.example.com")
        assert self.update(GLOBAL, {"notification_sender": "g@example.com"}) == {}
        assert self.update(wildcard, {"notification_sender": "w@example.com"}) == {}
        assert self.update(domain, {"notification_sender": "d@example.com"}) == {}
        assert self.update(USER, {"notification_sender": "u@example.com"}) == {}
        assert self.effective(USER, "notification_sender") == ("u@example.com", "user")
        for scope, expected in [
            (USER, ("d@example.com", "domain")),
            (domain, ("w@example.com", "domain")),
            (wildcard, ("g@example.com", "global")),
            (GLOBAL, ("", "default")),
        ]:
            assert self.update(scope, {"notification_sender": None}) == {}
            assert self.effective(USER, "notification_sender") == expected

    def test_refused_changes_change_nothing(self) -> None:
        assert self.update(GLOBAL, {"postmaster": "pm@example.com"}) == {}
        errors = self.update(GLOBAL, {"postmaster": "pm2@example.com", "webmail_enabled": "x"})
        assert errors == {"webmail_enabled": "must be true or false, not a string"}
        assert self.effective(GLOBAL, "postmaster") == ("pm@example.com", "global")

    def test_setting_a_value_on_a_domain_adds_it_and_delete_removes_values(self) -> None:
        domain = Scope(Level.DOMAIN, "example.org")
        assert self.update(domain, {"encrypt_mode": "mandatory"}) == {}
        assert self.successResultOf(self.repo.list(Level.DOMAIN)) == ["example.org"]
        assert self.successResultOf(self.repo.delete(domain)) is True
        assert self.effective(domain, "encrypt_mode") == ("no_encryption", "default")
        assert self.successResultOf(self.repo.delete(domain)) is False


def test_mail_processing_reads_settings_through_a_short_cache() -> None:
    clock = Clock()
    store = migrated_store()
    repo = SettingsRepository(store, clock)
    other = SettingsRepository(store, clock)  # another node
    scope = Scope(Level.USER, "alice@example.com")
    assert result_of(repo.effective_many([scope]))[scope]["encrypt_mode"] == \
        "no_encryption"
    # A change on this node applies at once...
    assert result_of(repo.update(scope, {"encrypt_mode": "allow"})) == {}
    assert result_of(repo.effective_many([scope]))[scope]["encrypt_mode"] == "allow"
    # ...one on another node within CACHE_SECONDS.
    assert result_of(other.update(scope, {"encrypt_mode": "mandatory"})) == {}
    assert result_of(repo.effective_many([scope]))[scope]["encrypt_mode"] == "allow"
    clock.advance(SettingsRepository.CACHE_SECONDS)
    assert result_of(repo.effective_many([scope]))[scope]["encrypt_mode"] == "mandatory"
    values = result_of(repo.by_address(["bob@other.example"]))["bob@other.example"]
    assert len(values) == len(REGISTRY) and dict(values)["encrypt_mode"] == "no_encryption"


@pytest.mark.parametrize("kind", ["store", "memory"])
def test_settings_by_address_resolve_alike_in_the_store_and_the_memory_fake(
        kind: str) -> None:
    if kind == "store":
        settings: Any = SettingsRepository(migrated_store(), Clock())

        def put(scope: Scope, **values: Any) -> None:
            assert result_of(settings.update(scope, values)) == {}
    else:
        settings = MemorySettings()
        put = settings.set
    assert verifyObject(IAddressSettings, settings)
    put(GLOBAL, encrypt_mode="allow", postmaster="pm@example.com")
    put(scope_for(Level.DOMAIN, "example.com"), encrypt_mode="mandatory")
    put(scope_for(Level.USER, "bob@example.com"), encrypt_mode="no_encryption")

    async def read() -> Any:
        return await settings.by_address(["", "alice@Example.COM.", "bob@example.com",
                                          "carol@other.example"])

    found = result_of(read())
    assert [found[a]["encrypt_mode"] for a in ("", "alice@Example.COM.", "bob@example.com",
                                                "carol@other.example")] == [
        "allow", "mandatory", "no_encryption", "allow"]
    assert found["bob@example.com"]["postmaster"] == "pm@example.com"


def test_password_templates_must_give_the_password() -> None:
    prop = REGISTRY["template_pdf_sms"]
    assert prop.type.check("PDF from {{ sender }}: {{ password }}")
    with pytest.raises(InvalidValue, match=r"must use \{\{ password \}\}"):
        prop.type.check("Ask {{ sender }} for the password.")
