"""
Sign-in by a code mailed to the recipient (Settings → webmail → Portal,
*Sign in by email code*), in memory with the clock injected: the code in
the mail signs in once, within ten minutes; wrong codes lock out as wrong
passwords do and void the code after five; one mail a minute per address;
nothing said about addresses that cannot sign in this way.
"""

from __future__ import annotations

import email
import email.policy
import re
from typing import Any

import pytest
from twisted.logger import formatEvent

from cipherd.settings import GLOBAL, Level, scope_for
from cipherd.testing import result_of
from cipherd.webmail.logincodes import MAX_ATTEMPTS, LoginCodes
from tests.test_gateway import World, pki  # noqa: F401
from tests.test_portal import ADDRESS, PortalSite, Visitor
from tests.test_webmail import Both


@pytest.fixture
def site() -> PortalSite:
    made = PortalSite()
    made.set(webmail_email_code_login=True)
    return made


def mailed_code(site: PortalSite, count: int = 1) -> str:
    mails = [content for _, to, content in site.submitted if to == [ADDRESS]]
    assert len(mails) == count, mails
    parsed = email.message_from_bytes(mails[-1], policy=email.policy.default)
    assert parsed["Subject"] == "Your secure webmail sign-in code"
    found = re.search(r"^    (\d{8})\r?$", parsed.get_content(), re.MULTILINE)
    assert found, parsed.get_content()
    return found.group(1)


def ask(visitor: Visitor, address: str = ADDRESS) -> str:
    answer = visitor.submit("/login/email", "/login/email", {"email": address})
    assert answer.status == 200
    assert f"If {address} may sign in this way, a code is on its way" in answer.text
    return answer.text


def enter(visitor: Visitor, code: str, address: str = ADDRESS) -> object:
    return visitor.submit("/login/email", "/login/email/code",
                          {"email": address, "code": code})


def test_a_mailed_code_signs_in_once(site: PortalSite, log_lines: list[str],
                                     log_events: list[dict[str, Any]]) -> None:
    site.account()
    visitor = site.visitor()
    assert 'href="/login/email">Email me a sign-in code instead' in visitor.get("/login").text
    ask(visitor)
    code = mailed_code(site)
    assert not any(code in line for line in log_lines)
    answer = enter(visitor, code[:4] + " " + code[4:])  # as a person may type it
    assert answer.header("location") == "/inbox"  # type: ignore[attr-defined]
    assert visitor.get("/inbox").status == 200
    assert any("logged in with a mailed code" in formatEvent(e) for e in log_events)
    again = enter(site.visitor(), code)
    assert again.status == 403 and "That code is not right" in again.text  # type: ignore[attr-defined]


def test_an_invited_recipient_without_a_password_signs_in_by_code(site: PortalSite) -> None:
    result_of(site.accounts.invite(ADDRESS))
    visitor = site.visitor()
    ask(visitor)
    assert enter(visitor, mailed_code(site)).header("location") == "/inbox"  # type: ignore[attr-defined]


def test_a_code_expires_and_one_mail_a_minute(site: PortalSite) -> None:
    site.account()
    visitor = site.visitor()
    ask(visitor)
    ask(visitor)  # again at once: no second mail
    code = mailed_code(site, 1)
    site.clock.advance(601)
    assert enter(visitor, code).status == 403  # type: ignore[attr-defined]
    ask(visitor)
    fresh = mailed_code(site, 2)
    assert enter(visitor, fresh).header("location") == "/inbox"  # type: ignore[attr-defined]


def test_wrong_codes_lock_out_like_passwords(site: PortalSite) -> None:
    site.account()
    visitor = site.visitor()
    ask(visitor)
    code = mailed_code(site)
    for _ in range(4):
        assert "That code is not right" in enter(visitor, "00000000").text  # type: ignore[attr-defined]
    fifth = enter(visitor, "00000000")
    assert "locked for 15 more minute(s)" in fifth.text  # type: ignore[attr-defined]
    # Locked: the right code is not even checked; and the code is void
    # after five wrong tries (from other clients too).
    assert "locked" in enter(visitor, code).text  # type: ignore[attr-defined]
    site.clock.advance(15 * 60 + 1)
    assert "That code is not right" in enter(visitor, code).text  # type: ignore[attr-defined]


def test_the_code_store_voids_a_code_after_five_wrong_tries(site: PortalSite) -> None:
    codes = LoginCodes(site.store, site.clock, b"k" * 32)
    code = result_of(codes.issue(ADDRESS))
    assert code is not None and result_of(codes.issue(ADDRESS)) is None
    for _ in range(MAX_ATTEMPTS):
        assert not result_of(codes.use(ADDRESS, "12345678"))
    assert not result_of(codes.use(ADDRESS, code))
    site.clock.advance(61)
    again = result_of(codes.issue(ADDRESS))
    assert again is not None and result_of(codes.use(ADDRESS, again))


def test_no_code_for_whom_it_is_off_disabled_or_unknown(site: PortalSite,
                                                       log_lines: list[str]) -> None:
    site.account()
    site.account("erin@other.example")
    site.set(scope_for(Level.DOMAIN, "other.example"), webmail_email_code_login=False)
    result_of(site.accounts.set_state(ADDRESS, "disabled"))
    visitor = site.visitor()
    for address in (ADDRESS, "erin@other.example", "nobody@partner.example"):
        ask(visitor, address)  # the same answer for each
    assert site.submitted == []
    assert sum("nothing sent" in line for line in log_lines) == 3
    site.set(webmail_email_code_login=False)
    assert "/login/email" not in site.visitor().get("/login").text


def test_the_new_message_notice_leads_to_the_code_page(pki: dict[str, Any]) -> None:  # noqa: F811
    both = Both(World(pki))
    both.world.tunnel_certificates()
    both.world.set(GLOBAL, webmail_email_code_login=True)
    account, _ = result_of(both.accounts.invite(ADDRESS))
    assert result_of(both.accounts.set_password(account, "correct horse battery staple"))
    both.relay_in(both.tunnel(ADDRESS))
    (notice,) = both.sent_to(ADDRESS)
    text = email.message_from_bytes(notice, policy=email.policy.default).get_content()
    assert "https://webmail.example/login/email?address=dave%40partner.example" in text
