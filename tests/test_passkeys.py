"""
Passkeys in the portal with a WebAuthn authenticator in memory
(L{cipherd.testing.webauthn}): added on the account page, then a sign-in
without a password, or the second factor after it; every answer checked
for its origin, relying party, challenge (this server's, for this purpose
and address, fresh, once) and signature.
"""

from __future__ import annotations

import html
import json
import re

import pytest

from cipherd.testing import result_of
from cipherd.testing.webauthn import SoftAuthenticator
from tests.test_portal import ADDRESS, PASSWORD, PortalSite, Visitor

ORIGIN = "https://portal.example"


@pytest.fixture
def site() -> PortalSite:
    made = PortalSite()
    made.account()
    return made


def logged_in(site: PortalSite, address: str = ADDRESS) -> Visitor:
    visitor = site.visitor()
    assert visitor.log_in(address=address).header("location") in ("/inbox", "/login/code")
    return visitor


def options_in(page: str, attribute: str) -> str:
    found = re.search(rf'{attribute}="([^"]+)"', page)
    assert found, page
    return html.unescape(found.group(1))


def add_passkey(site: PortalSite, reader: Visitor, authenticator: SoftAuthenticator,
                name: str = "Laptop") -> str:
    page = reader.get("/account")
    answer = reader.request("POST", "/account/passkeys", {
        "csrf_token": reader.csrf(page), "name": name,
        "credential": authenticator.create(options_in(page.text, "data-passkey-create"))})
    return answer.text


def sign_in(site: PortalSite, authenticator: SoftAuthenticator) -> tuple[Visitor, object]:
    visitor = site.visitor()
    page = visitor.get("/login")
    assert 'data-passkey-get-url="/login/passkey/options"' in page.text
    options = visitor.get("/login/passkey/options")
    assert options.header("content-type").startswith("application/json")
    credential = authenticator.get(options.text)
    answer = visitor.request("POST", "/login/passkey", {"csrf_token": visitor.csrf(page),
                                                        "credential": credential})
    return visitor, answer


def test_a_passkey_added_then_signing_in_without_a_password(site: PortalSite) -> None:
    authenticator = SoftAuthenticator(ORIGIN)
    reader = logged_in(site)
    done = add_passkey(site, reader, authenticator)
    assert "The passkey was added" in done and "<strong>Laptop</strong>" in done
    options = json.loads(options_in(reader.get("/account").text, "data-passkey-create"))
    assert options["rp"]["id"] == "portal.example"
    assert [c["id"] for c in options["excludeCredentials"]] == [
        result_of(site.messenger.passkeys.listing(ADDRESS))[0].credential_id]
    visitor, answer = sign_in(site, authenticator)
    assert answer.header("location") == "/inbox"  # type: ignore[attr-defined]
    assert visitor.get("/inbox").status == 200  # no second factor asked: the key verified
    assert "last used" in visitor.get("/account").text


def test_answers_that_are_refused(site: PortalSite) -> None:
    authenticator = SoftAuthenticator(ORIGIN)
    add_passkey(site, logged_in(site), authenticator)
    # Replayed: the same answer twice.
    visitor = site.visitor()
    page = visitor.get("/login")
    credential = authenticator.get(visitor.get("/login/passkey/options").text)
    first = visitor.request("POST", "/login/passkey", {"csrf_token": visitor.csrf(page),
                                                       "credential": credential})
    assert first.header("location") == "/inbox"
    again = site.visitor()
    page = again.get("/login")
    replay = again.request("POST", "/login/passkey", {"csrf_token": again.csrf(page),
                                                      "credential": credential})
    assert replay.status == 403 and "used already" in replay.text
    # Another origin (a look-alike site relaying the question).
    authenticator.origin = "https://portal.example.evil.test"
    _, elsewhere = sign_in(site, authenticator)
    assert elsewhere.status == 403 and "not accepted" in elsewhere.text  # type: ignore[attr-defined]
    # A passkey this portal never registered.
    stranger = SoftAuthenticator(ORIGIN)
    stranger.create(json.dumps({"rp": {"id": "portal.example"}, "user": {"id": "eA"},
                                "challenge": "AA"}))
    _, stranger = sign_in(site, stranger)
    assert stranger.status == 403 and "not registered here" in stranger.text  # type: ignore[attr-defined]
    # The question expired.
    authenticator.origin = ORIGIN
    visitor = site.visitor()
    page = visitor.get("/login")
    late = authenticator.get(visitor.get("/login/passkey/options").text)
    site.clock.advance(301)
    answer = visitor.request("POST", "/login/passkey", {"csrf_token": visitor.csrf(page),
                                                        "credential": late})
    assert answer.status == 403 and "open too long" in answer.text
    # Without the form's token.
    assert site.visitor().request("POST", "/login/passkey", {"credential": late}).status == 403


def test_a_verifying_key_is_needed_to_sign_in_without_a_password(site: PortalSite) -> None:
    presence_only = SoftAuthenticator(ORIGIN, verifies_user=False)
    refused = add_passkey(site, logged_in(site), presence_only)
    assert "not accepted" in refused and "verif" in refused.lower()


def test_a_question_for_one_account_is_not_answered_for_another(site: PortalSite) -> None:
    site.account("erin@partner.example")
    authenticator = SoftAuthenticator(ORIGIN)
    dave = logged_in(site)
    erin = logged_in(site, "erin@partner.example")
    daves_question = options_in(dave.get("/account").text, "data-passkey-create")
    page = erin.get("/account")
    answer = erin.request("POST", "/account/passkeys", {
        "csrf_token": erin.csrf(page), "name": "x",
        "credential": authenticator.create(daves_question)})
    assert answer.status == 400 and "answered another page" in answer.text
    assert result_of(site.messenger.passkeys.listing("erin@partner.example")) == []


def test_a_passkey_as_the_second_factor(site: PortalSite) -> None:
    authenticator = SoftAuthenticator(ORIGIN)
    add_passkey(site, logged_in(site), authenticator)
    visitor = site.visitor()
    assert visitor.log_in().header("location") == "/login/code"
    assert visitor.get("/inbox").header("location") == "/login/code"
    page = visitor.get("/login/code")
    assert "authenticator app" not in page.text  # no TOTP: the passkey only
    answer = visitor.request("POST", "/login/code/passkey", {
        "csrf_token": visitor.csrf(page),
        "credential": authenticator.get(options_in(page.text, "data-passkey-get"))})
    assert answer.header("location") == "/inbox"
    assert visitor.get("/inbox").status == 200


def test_removing_a_passkey_and_a_disabled_account(site: PortalSite) -> None:
    authenticator = SoftAuthenticator(ORIGIN)
    reader = logged_in(site)
    add_passkey(site, reader, authenticator)
    result_of(site.accounts.set_state(ADDRESS, "disabled"))
    _, refused = sign_in(site, authenticator)
    assert refused.status == 403 and "disabled" in refused.text  # type: ignore[attr-defined]
    result_of(site.accounts.set_state(ADDRESS, "active"))
    reader = logged_in(site)
    code_page = reader.get("/login/code")
    reader.request("POST", "/login/code/passkey", {
        "csrf_token": reader.csrf(code_page),
        "credential": authenticator.get(options_in(code_page.text, "data-passkey-get"))})
    page = reader.get("/account")
    (passkey,) = result_of(site.messenger.passkeys.listing(ADDRESS))
    removed = reader.request("POST", "/account/passkeys/remove", {
        "csrf_token": reader.csrf(page), "id": passkey.credential_id})
    assert "The passkey was removed." in removed.text
    _, unknown = sign_in(site, authenticator)
    assert unknown.status == 403  # type: ignore[attr-defined]
    # And a password login needs no second factor any more.
    assert site.visitor().log_in(PASSWORD).header("location") == "/inbox"
