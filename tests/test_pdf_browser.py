"""
The PDF method as people see it, in headless Chromium on a running
appliance (a capturing sink as the internet): the administrator turns PDF
encryption on in Settings → PDF; a message to a recipient with no
certificate or key goes out as an encrypted PDF; the recipient follows the
PDF's reply link, writes a reply with an attachment, and it reaches the
original sender at the sink, threaded; the same single-use link, a forged
one and an expired one are refused with a page that says why.

Screenshots: C{artifacts/admin-settings-pdf.png} and
C{artifacts/portal-pdf-reply-*.png}.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import sqlite3
import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from cipherd.webmail.pdfreply import make_token, new_link, reply_url
from tests.pdf_peers import PDFReaders, pdf_of, text_of
from tests.test_browser_admin import DESKTOP, PHONE, browser, log_in  # noqa: F401
from tests.test_gateway_appliance import Gateway, gateway, pki  # noqa: F401
from tests.test_mta_appliance import NEW_PASSWORD, api
from tests.test_webmail_appliance import FIRST, Pair, pair  # noqa: F401

PORTAL_PASSWORD = "purple-otter-canvas-91"

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def shoot(page: Page, artifacts: Path, name: str) -> None:
    for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        page.screenshot(path=artifacts / f"{name}-{width}.png", full_page=True)
    page.set_viewport_size(DESKTOP)


def server_secret(gateway: Gateway) -> str:  # noqa: F811
    with sqlite3.connect(gateway.appliance.data_dir / "cipherd.db") as db:
        (secret,) = db.execute("SELECT value FROM property_values WHERE level = 'global' "
                               "AND name = 'server_secret'").fetchone()
    return str(json.loads(secret))


def test_a_pdf_recipient_replies_through_the_link(
        browser: Browser, gateway: Gateway, tmp_path: Path, artifacts: Path,  # noqa: F811
) -> None:
    portal = gateway.appliance.portal_url
    admin = browser.new_context(base_url=gateway.appliance.admin_url, ignore_https_errors=True,
                                viewport=DESKTOP)
    try:
        page = admin.new_page()
        log_in(page, NEW_PASSWORD)
        # Settings → PDF, in the menu of a gateway.
        page.goto("/settings/global/encryption")
        page.get_by_role("link", name="PDF", exact=True).click()
        expect(page).to_have_url(re.compile(r"/settings/global/pdf$"))
        page.locator('[id="inherit.pdf_enabled"]').uncheck()
        page.locator('[id="value.pdf_enabled"]').select_option("true")
        page.locator('[id="inherit.pdf_reply_url"]').uncheck()
        page.locator('[id="value.pdf_reply_url"]').fill(portal)
        with page.expect_response(lambda r: r.request.method == "POST") as posted:
            page.get_by_role("button", name="Apply").click()
        assert posted.value.status < 400
        expect(page.locator('[id="value.pdf_reply_url"]')).to_have_value(portal)
        shoot(page, artifacts, "admin-settings-pdf")
    finally:
        admin.close()
    gateway.settings("global", encrypt_mode="mandatory", pdf_reply_single_use=True)
    # Replies written on the portal go only to authorized recipients.
    api(gateway.appliance, "PUT", "/mta/authorized-recipients", ["example.org"])

    gateway.send("dave@partner.example")
    captured = {tuple(c.recipients): c for c in gateway.sink.wait_for(2)}
    mail = captured[("dave@partner.example",)].content
    found = re.search(r"https://\S+/pdf/reply\?token=\S+", text_of(mail))
    assert found is not None and found.group(0).startswith(portal)
    link = found.group(0)
    password = re.search(r"The password to open it is:\s+(\S+)",
                         text_of(captured[("alice@example.org",)].content))
    assert password is not None
    in_pdf = PDFReaders(tmp_path).text(pdf_of(mail), password.group(1))
    assert "Reply securely:" in in_pdf

    context = browser.new_context(ignore_https_errors=True, viewport=DESKTOP, locale="en-GB")
    try:
        page = context.new_page()
        page.goto(link)
        expect(page.get_by_role("heading", level=1)).to_have_text("Reply securely")
        expect(page.locator("main")).to_contain_text(
            "Your reply goes to alice@example.org only")
        expect(page.locator("main")).to_contain_text("Re: Figures for Q3")
        page.get_by_label("Message").fill("Thank you, the figures look right.\nDave")
        upload = tmp_path / "signed-off.txt"
        upload.write_bytes(b"Q3 signed off by Dave\n")
        page.get_by_label("Attachments (optional)").set_input_files(upload)
        shoot(page, artifacts, "portal-pdf-reply-form")
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Your reply was sent")
        shoot(page, artifacts, "portal-pdf-reply-sent")
        (reply,) = gateway.sink.wait_for(3)[2:]
        assert (reply.sender, reply.recipients) == ("dave@partner.example",
                                                    ["alice@example.org"])
        parsed = email.message_from_bytes(reply.content, policy=email.policy.default)
        assert parsed["In-Reply-To"] == "<q3@example.org>"
        assert parsed["Subject"] == "Re: Figures for Q3"
        (attached,) = parsed.iter_attachments()
        assert attached.get_content() == "Q3 signed off by Dave\n"

        # Single use: the same link again.
        page.goto(link)
        page.get_by_label("Message").fill("And one more thing")
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_role("heading", level=1)).to_have_text(
            "This reply link cannot be used")
        expect(page.get_by_role("alert")).to_contain_text("it works once")
        shoot(page, artifacts, "portal-pdf-reply-used")

        # Forged: the link's claims changed (to send elsewhere).
        token = link.partition("token=")[2]
        payload, _, mac = token.partition(".")
        claims = json.loads(base64url_decode(payload))
        claims["s"] = "mallory@evil.example"
        forged = f"{portal}/pdf/reply?token={base64url_encode(json.dumps(claims))}.{mac}"
        response = page.goto(forged)
        assert response is not None and response.status == 403
        expect(page.get_by_role("alert")).to_contain_text("This link is not valid")
        shoot(page, artifacts, "portal-pdf-reply-forged")

        # Expired: authentic, made with the appliance's own secret, a day old.
        old = new_link(sender="alice@example.org", recipient="dave@partner.example",
                       message_id="<q3@example.org>", subject="Figures for Q3",
                       now=time.time() - 2 * 86400, validity_days=1, single_use=False)
        page.goto(reply_url(portal, make_token(server_secret(gateway), old)))
        expect(page.get_by_role("alert")).to_contain_text("This reply link has expired")
        shoot(page, artifacts, "portal-pdf-reply-expired")
    finally:
        context.close()
    assert len(gateway.sink.state.messages) == 3  # nothing more went out


def base64url_decode(text: str) -> bytes:
    import base64
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def base64url_encode(text: str) -> str:
    import base64
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def test_the_pdf_password_in_the_portal(browser: Browser, pair: Pair,  # noqa: F811
                                        tmp_path: Path, artifacts: Path) -> None:
    """
    Password mode portal across the guide's two appliances: the PDF goes
    to the recipient by mail, its password through the tunnel into the
    recipient's mailbox on the webmail appliance; the recipient signs up
    from the invitation, reads the password in the portal and opens the
    PDF with it.
    """
    pair.trust_the_gateway()
    api(pair.gateway, "PATCH", "/settings/global", {"pdf_enabled": True})
    api(pair.gateway, "PATCH", "/settings/domains/partner.example",
        {"pdf_password_mode": "portal"})
    pair.send(FIRST)
    pair.mpa_log("stored in the mailbox of dave@partner.example")
    arrived = {m.sender: m for m in pair.arrived("dave@partner.example", 2)}
    mail, invitation = arrived["alice@example.org"], arrived["notify@webmail.example"]
    assert "The password is waiting for you in the secure webmail portal" in text_of(
        mail.content)
    signup = re.search(r"https://\S+/signup\?token=\S+", text_of(invitation.content))
    assert signup is not None

    context = browser.new_context(base_url=pair.webmail.portal_url, ignore_https_errors=True,
                                  viewport=DESKTOP, locale="en-GB")
    try:
        page = context.new_page()
        page.goto(signup.group(0))
        page.get_by_label("New password", exact=True).fill(PORTAL_PASSWORD)
        page.get_by_label("New password again").fill(PORTAL_PASSWORD)
        page.get_by_role("button", name="Set password").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Your password is set")
        page.goto("/login")
        page.get_by_label("Email address").fill("dave@partner.example")
        page.get_by_label("Password", exact=True).fill(PORTAL_PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.get_by_role("link", name=re.compile("Password for the encrypted PDF")).click()
        expect(page.get_by_role("heading", level=1)).to_have_text(
            'Password for the encrypted PDF "Contract draft"')
        body = page.locator("pre.text")
        expect(body).to_contain_text("The password to open it is:")
        shoot(page, artifacts, "portal-pdf-password")
        found = re.search(r"The password to open it is:\s+(\S+)", body.inner_text())
        assert found is not None
    finally:
        context.close()
    readers = PDFReaders(tmp_path)
    assert "the draft." in readers.text(pdf_of(mail.content), found.group(1))
    assert found.group(1) not in (pair.gateway.data_dir / "logs" / "mpa.log").read_text()
