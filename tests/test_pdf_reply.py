"""
The reply page of PDF-encrypted messages (L{cipherd.webmail.pdfreply}),
through the portal's resource with StubTreq: a reply with attachments goes
to the original sender only, threaded; forged, damaged, expired and used
links are refused with a page that says so; the form has its CSRF token;
each link sends at most a few replies an hour.
"""

from __future__ import annotations

import email
import email.policy
from typing import Any

import pytest

from cipherd.settings import Level, scope_for
from cipherd.web.common import access_log_formatter
from cipherd.webmail.pdfreply import (
    REPLIES_PER_HOUR,
    make_token,
    new_link,
    read_token,
    reply_url,
)
from tests.test_portal import SECRET, PortalSite, Visitor

SENDER = "alice@example.com"
RECIPIENT = "dave@partner.example"


@pytest.fixture
def site() -> PortalSite:
    return PortalSite()


def link_token(site: PortalSite, *, single_use: bool = False, days: int = 30,
               subject: str = "Quarterly figures", secret: str = SECRET) -> str:
    link = new_link(sender=SENDER, recipient=RECIPIENT, message_id="<q3@example.com>",
                    subject=subject, now=site.clock.seconds(), validity_days=days,
                    single_use=single_use)
    return make_token(secret, link)


def send(visitor: Visitor, token: str, text: str = "Thanks, the figures are fine.",
         files: dict[str, tuple[str, str, bytes]] | None = None, **fields: Any) -> Any:
    page = visitor.get(f"/pdf/reply?token={token}")
    assert page.status == 200, page.text
    return visitor.request("POST", f"/pdf/reply?token={token}",
                           {"csrf_token": visitor.csrf(page), "text": text, **fields},
                           files=files or {})


def test_a_reply_goes_to_the_sender_only_threaded_with_its_attachments(
        site: PortalSite) -> None:
    token = link_token(site)
    visitor = site.visitor()
    page = visitor.get(f"/pdf/reply?token={token}")
    assert page.status == 200
    assert "Your reply goes to alice@example.com only" in page.text
    assert "Re: Quarterly figures" in page.text and RECIPIENT in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"][0]
    answer = send(visitor, token, files={"attachment": ("answer.xlsx",
                                                        "application/vnd.ms-excel", b"\0\1\2")})
    assert answer.status == 200 and "Your reply was sent" in answer.text
    ((sender, recipients, content),) = site.submitted
    assert (sender, recipients) == (RECIPIENT, [SENDER])
    parsed = email.message_from_bytes(content, policy=email.policy.default)
    assert (parsed["From"], parsed["To"]) == (RECIPIENT, SENDER)
    assert parsed["Subject"] == "Re: Quarterly figures"
    assert parsed["In-Reply-To"] == parsed["References"] == "<q3@example.com>"
    assert "PDF reply page" in parsed["X-Cipherd-PDF-Reply"]
    body = parsed.get_body(preferencelist=("plain",))
    assert body is not None and "the figures are fine" in body.get_content()
    (attached,) = parsed.iter_attachments()
    assert (attached.get_filename(), attached.get_content()) == ("answer.xlsx", b"\0\1\2")


def test_an_obscured_subject_is_not_in_the_link(site: PortalSite) -> None:
    token = link_token(site, subject="")
    assert send(site.visitor(), token).status == 200
    ((_, _, content),) = site.submitted
    assert b"Subject: Re: your encrypted message" in content


@pytest.mark.parametrize("tamper, reason", [
    (lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"), "not valid"),
    (lambda t: "x" + t, "not valid"),
    (lambda t: t.replace(".", "!"), "damaged"),
    (lambda t: "", "damaged"),
])
def test_a_forged_or_damaged_link_is_refused(site: PortalSite, tamper: Any,
                                             reason: str) -> None:
    page = site.visitor().get(f"/pdf/reply?token={tamper(link_token(site))}")
    assert page.status == 403 and reason in page.text
    assert "This reply link cannot be used" in page.text
    assert site.submitted == []


def test_a_link_signed_with_another_secret_is_refused(site: PortalSite) -> None:
    token = link_token(site, secret="another server's secret, 32 chars")
    assert site.visitor().get(f"/pdf/reply?token={token}").status == 403


def test_a_sign_up_token_is_no_reply_link(site: PortalSite) -> None:
    from cipherd.webmail.accounts import make_link_token
    token = make_link_token(SECRET, "signup", RECIPIENT, "nonce", 2_000_000_000)
    assert site.visitor().get(f"/pdf/reply?token={token}").status == 403


def test_an_expired_link_is_refused_even_with_the_form_open(site: PortalSite) -> None:
    token = link_token(site, days=1)
    visitor = site.visitor()
    page = visitor.get(f"/pdf/reply?token={token}")
    site.clock.advance(86400 + 1)
    answer = visitor.request("POST", f"/pdf/reply?token={token}",
                             {"csrf_token": visitor.csrf(page), "text": "late"}, files={})
    assert answer.status == 403 and "expired" in answer.text
    assert site.submitted == []


def test_a_single_use_link_sends_one_reply(site: PortalSite) -> None:
    token = link_token(site, single_use=True)
    assert send(site.visitor(), token).status == 200
    again = send(site.visitor(), token, text="second")
    assert again.status == 403 and "works once" in again.text
    assert len(site.submitted) == 1


def test_replies_per_link_are_rate_limited(site: PortalSite) -> None:
    token = link_token(site)
    for n in range(REPLIES_PER_HOUR):
        assert send(site.visitor(), token, text=f"reply {n}").status == 200
    refused = send(site.visitor(), token, text="one too many")
    assert refused.status == 403 and f"{REPLIES_PER_HOUR} replies within an hour" in refused.text
    site.clock.advance(3601)
    assert send(site.visitor(), token, text="an hour later").status == 200
    assert len(site.submitted) == REPLIES_PER_HOUR + 1


def test_the_form_needs_its_csrf_token(site: PortalSite) -> None:
    token = link_token(site)
    visitor = site.visitor()
    visitor.get(f"/pdf/reply?token={token}")
    answer = visitor.request("POST", f"/pdf/reply?token={token}", {"text": "hi"}, files={})
    assert answer.status == 403
    assert site.submitted == []


def test_an_empty_reply_is_refused_and_the_text_kept(site: PortalSite) -> None:
    answer = send(site.visitor(), link_token(site), text="   ")
    assert answer.status == 400 and "The reply is empty" in answer.text
    assert site.submitted == []


def test_replies_turned_off_for_the_sender_refuse_the_link(site: PortalSite) -> None:
    token = link_token(site)
    site.set(scope_for(Level.USER, SENDER), pdf_reply_enabled=False)
    page = site.visitor().get(f"/pdf/reply?token={token}")
    assert page.status == 403 and "turned off for this sender" in page.text


def test_the_token_is_kept_out_of_the_access_log(site: PortalSite) -> None:
    token = link_token(site)
    url = reply_url("https://gw.example", token)
    assert url == f"https://gw.example/pdf/reply?token={token}"

    class Request:
        uri = f"/pdf/reply?token={token}".encode()

        def __getattr__(self, name: str) -> Any:
            raise AttributeError(name)

    from cipherd.web.common import _ScrubbedRequest
    assert _ScrubbedRequest(Request()).uri == b"/pdf/reply?token=***"
    assert access_log_formatter  # the formatter the sites use scrubs through it


def test_the_token_round_trips_unicode_subjects(site: PortalSite) -> None:
    token = link_token(site, subject="Grüße — 報告")
    assert read_token(SECRET, token, site.clock.seconds()).subject == "Grüße — 報告"


def test_no_reply_to_a_sender_outside_our_domains_and_authorized_recipients(
        site: PortalSite) -> None:
    link = new_link(sender="someone@elsewhere.test", recipient=RECIPIENT, message_id="",
                    subject="x", now=site.clock.seconds(), validity_days=1, single_use=False)
    answer = send(site.visitor(), make_token(SECRET, link))
    assert answer.status == 403 and "cannot go to this sender" in answer.text
    assert site.submitted == []
