"""
The webmail portal in headless Chromium, on the guide's two running
appliances (gateway and webmail messenger, configured through the API; a
capturing sink as the internet), in one walk as a recipient makes it:

    the sign-up link from the captured invitation → a weak password
    refused with its reason (and the live meter saying so) → a good one →
    login → a hostile HTML message (script, onerror, javascript:, CSS,
    remote images): nothing runs, nothing is fetched until "show remote
    content" → an attachment downloaded → a reply reaches the original
    sender at the sink threaded, an unauthorized address refused by name →
    the account page and a TOTP second factor, used at the next login →
    a password reset through the emailed link → an expired link's page →
    Dutch → lockout after repeated wrong passwords.

Every page is kept as a screenshot at desktop and phone width in
C{artifacts/portal-*.png}.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Dialog, Page, expect

from cipherd.webmail import totp
from cipherd.webmail.accounts import RESET, make_link_token
from tests.test_browser_admin import DESKTOP, PHONE, browser  # noqa: F401
from tests.test_webmail_appliance import Pair, pair, text_of  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

ADDRESS = "dave@partner.example"
WEAK = "password1234"
GOOD = "purple-otter-canvas-91"
NEWER = "velvet-harbour-lantern-57"
# A tiny PNG for the inline cid: image.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0005000201a5f6b1a90000000049454e44ae426082")


class Pixel:
    """
    A "remote" web server on 127.0.0.1 standing for a tracker: it counts
    what the browser asks of it.
    """

    def __init__(self) -> None:
        hits = self.hits = []  # type: list[str]

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(PNG)))
                self.end_headers()
                self.wfile.write(PNG)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pixel() -> Iterator[Pixel]:
    server = Pixel()
    yield server
    server.close()


def hostile(pixel: Pixel) -> bytes:
    import base64

    html = (
        "<html><head><style>body{background:url(" + pixel.url("/style-tag.png") + ")}</style>"
        "<script>alert('script')</script></head><body>"
        "<h2 style=\"color:#8a1c1c;background-image:url(" + pixel.url("/style-attr.png") + ")\">"
        "Quarterly figures</h2>"
        "<p>Dear Dave, the figures are attached.</p>"
        "<img src=x onerror=\"alert('onerror')\">"
        "<p><a href=\"javascript:alert('javascript')\">Open the report</a></p>"
        "<p><img src=\"cid:logo@example.org\" alt=\"Example logo\" width=\"40\"></p>"
        "<p><img src=\"" + pixel.url("/pixel.png") + "\" alt=\"tracking pixel\"></p>"
        "<svg onload=\"alert('svg')\"></svg>"
        "<table border=\"1\" cellpadding=\"4\"><tr><th>Quarter</th><th>Revenue</th></tr>"
        "<tr><td>Q3</td><td>42</td></tr></table></body></html>")
    return (
        b"From: Alice <alice@example.org>\r\nTo: dave@partner.example\r\n"
        b"Subject: Quarterly figures\r\nMessage-ID: <figures-1@example.org>\r\n"
        b"Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n"
        b"--outer\r\nContent-Type: multipart/related; boundary=\"rel\"\r\n\r\n"
        b"--rel\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html.encode() + b"\r\n"
        b"--rel\r\nContent-Type: image/png\r\nContent-ID: <logo@example.org>\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(PNG) + b"\r\n"
        b"--rel--\r\n"
        b"--outer\r\nContent-Type: text/csv; name=\"figures.csv\"\r\n"
        b"Content-Disposition: attachment; filename=\"figures.csv\"\r\n\r\n"
        b"quarter,revenue\r\nQ3,42\r\n"
        b"--outer--\r\n")


def shoot(page: Page, artifacts: Path, name: str) -> None:
    """
    Keep C{artifacts/portal-<name>-desktop.png} and C{...-phone.png}.
    """
    for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        page.screenshot(path=artifacts / f"portal-{name}-{width}.png", full_page=True)
    page.set_viewport_size(DESKTOP)


def link_in(text: str, path: str) -> str:
    found = re.search(rf"https://\S+{re.escape(path)}\?token=\S+", text)
    assert found, text
    return found.group(0)


def log_in(page: Page, password: str) -> None:
    page.goto("/login")
    page.get_by_label("Email address").fill(ADDRESS)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()


def expired_reset_link(pair: Pair) -> str:  # noqa: F811
    """
    A reset link, authentic but expired a minute ago: made with the
    appliance's own server secret and the account's link nonce, read from
    its database (the appliance's clock cannot be moved).
    """
    with sqlite3.connect(pair.webmail.data_dir / "cipherd.db") as db:
        (secret,) = db.execute("SELECT value FROM property_values WHERE level = 'global' "
                               "AND name = 'server_secret'").fetchone()
        (nonce,) = db.execute("SELECT link_nonce FROM webmail_accounts WHERE address = ?",
                              (ADDRESS,)).fetchone()
    token = make_link_token(json.loads(secret), RESET, ADDRESS, nonce, int(time.time()) - 60)
    return f"{pair.webmail.portal_url}/reset?token={token}"


def test_a_recipient_walks_the_portal(browser: Browser, pair: Pair,  # noqa: F811
                                      pixel: Pixel, artifacts: Path) -> None:
    pair.trust_the_gateway()
    pair.send(hostile(pixel))
    (invitation,) = pair.arrived(ADDRESS)
    signup = link_in(text_of(invitation), "/signup")
    assert signup.startswith(pair.webmail.portal_url)

    context: BrowserContext = browser.new_context(
        base_url=pair.webmail.portal_url, ignore_https_errors=True, viewport=DESKTOP,
        accept_downloads=True, locale="en-GB")
    dialogs: list[str] = []
    requested: list[str] = []
    context.on("request", lambda request: requested.append(request.url))

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    try:
        page = context.new_page()
        page.on("dialog", on_dialog)

        # Sign-up: who it is from; a weak password refused with its reason.
        page.goto(signup)
        expect(page.get_by_role("heading", level=1)).to_have_text("Choose your password")
        expect(page.locator("main")).to_contain_text(
            f"Secure messages for {ADDRESS} are waiting.")
        expect(page.locator("main")).to_contain_text("Alice <alice@example.org>")
        page.get_by_label("New password", exact=True).fill(WEAK)
        expect(page.locator("#strength-text")).to_contain_text("too easy to guess")
        page.get_by_label("New password again").fill(WEAK)
        shoot(page, artifacts, "signup-meter")
        page.get_by_role("button", name="Set password").click()
        expect(page.get_by_role("alert")).to_contain_text("The password is too easy to guess")
        shoot(page, artifacts, "signup-weak")
        page.get_by_label("New password", exact=True).fill(GOOD)
        expect(page.locator("#strength-text")).to_have_text("Strong enough.")
        page.get_by_label("New password again").fill(GOOD)
        page.get_by_role("button", name="Set password").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Your password is set")
        shoot(page, artifacts, "signup-done")

        # Login, the inbox.
        page.get_by_role("link", name="Log in").click()
        shoot(page, artifacts, "login")
        log_in(page, GOOD)
        expect(page).to_have_url(f"{pair.webmail.portal_url}/inbox")
        row = page.locator("tr.unread")
        expect(row).to_contain_text("Quarterly figures")
        expect(row).to_contain_text("alice@example.org")
        shoot(page, artifacts, "inbox")

        # The hostile message: nothing runs, nothing remote is fetched.
        page.get_by_role("link", name="Quarterly figures").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Quarterly figures")
        frame = page.frame_locator("iframe.body")
        expect(frame.get_by_role("heading", name="Quarterly figures")).to_be_visible()
        expect(frame.get_by_role("img", name="Example logo")).to_be_visible()
        expect(page.locator("p.remote")).to_contain_text("1 remote image was blocked")
        page.wait_for_timeout(500)
        shoot(page, artifacts, "message")
        assert pixel.hits == [] and not any(f":{pixel.port}/" in u for u in requested)
        assert dialogs == []
        # The javascript: link lost its URL; clicking it does nothing.
        frame.get_by_text("Open the report").click()
        page.wait_for_timeout(300)
        assert dialogs == [] and len(context.pages) == 1

        page.get_by_role("link", name="Show remote content").click()
        expect(frame.get_by_role("img", name="tracking pixel")).to_be_visible()
        assert pixel.hits == ["/pixel.png"], pixel.hits  # the image, never the CSS
        shoot(page, artifacts, "message-remote")
        assert dialogs == []

        # The attachment and the whole message as downloads.
        with page.expect_download() as download:
            page.get_by_role("link", name="figures.csv").click()
        assert download.value.suggested_filename == "figures.csv"
        assert Path(download.value.path()).read_bytes() == b"quarter,revenue\r\nQ3,42"
        with page.expect_download() as download:
            page.get_by_role("link", name="Download (.eml)").click()
        assert download.value.suggested_filename == "Quarterly figures.eml"

        # A reply: to the sender (authorized), not to an outsider.
        page.get_by_role("link", name="Reply", exact=True).click()
        expect(page.locator("main")).to_contain_text("To: alice@example.org")
        page.get_by_label("Also send to (optional)").fill("outsider@elsewhere.test")
        page.get_by_label("Message").fill("Thanks Alice, figures received.")
        page.get_by_label("Attachments (optional)").set_input_files(files=[{
            "name": "notes.txt", "mimeType": "text/plain", "buffer": b"my notes"}])
        page.get_by_label("Send me a copy").check()
        shoot(page, artifacts, "reply")
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Your message was sent")
        expect(page.get_by_role("status")).to_have_text("Sent to: alice@example.org")
        expect(page.get_by_role("alert")).to_contain_text(
            "outsider@elsewhere.test: not an authorized recipient")
        shoot(page, artifacts, "reply-sent")
        (reply,) = pair.arrived("alice@example.org")
        parsed = email.message_from_bytes(reply.content, policy=email.policy.default)
        assert parsed["In-Reply-To"] == "<figures-1@example.org>"
        assert parsed["References"] == "<figures-1@example.org>"
        assert parsed["Subject"] == "Re: Quarterly figures"
        (attached,) = parsed.iter_attachments()
        assert attached.get_filename() == "notes.txt"
        assert not [m for m in pair.sink.state.messages
                    if "outsider@elsewhere.test" in m.recipients]

        # The account page and a second factor, used at the next login.
        page.get_by_role("link", name="Account").click()
        shoot(page, artifacts, "account")
        page.get_by_role("link", name="Set up a second factor").click()
        key = page.locator("#secret").inner_text().replace(" ", "")
        secret = totp.base64.b32decode(key + "=" * (-len(key) % 8))
        shoot(page, artifacts, "totp-setup")
        set_up_at = time.time()
        page.get_by_label("Code").fill(totp.totp(secret, set_up_at))
        page.get_by_role("button", name="Turn on the second factor").click()
        expect(page.get_by_role("status")).to_contain_text("The second factor is set up")
        page.get_by_role("button", name="Log out").click()
        expect(page.get_by_role("status")).to_contain_text("You have logged out.")
        shoot(page, artifacts, "logged-out")
        log_in(page, GOOD)
        expect(page).to_have_url(f"{pair.webmail.portal_url}/login/code")
        shoot(page, artifacts, "code")
        # The set-up code is spent: the app's next code (one step either
        # side is accepted).
        page.get_by_label("Code").fill(totp.totp(secret, set_up_at + totp.STEP))
        page.get_by_role("button", name="Continue").click()
        expect(page).to_have_url(f"{pair.webmail.portal_url}/inbox")
        page.get_by_role("button", name="Log out").click()

        # A password reset through the emailed link.
        page.goto("/login")
        page.get_by_role("link", name="Forgot your password?").click()
        page.get_by_label("Email address").fill(ADDRESS)
        shoot(page, artifacts, "reset-request")
        page.get_by_role("button", name="Send the link").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Check your mail")
        mail = pair.arrived(ADDRESS, 2)[-1]
        reset = link_in(text_of(mail), "/reset")
        page.goto(reset)
        expect(page.get_by_role("heading", level=1)).to_have_text("Choose a new password")
        page.get_by_label("New password", exact=True).fill(NEWER)
        page.get_by_label("New password again").fill(NEWER)
        shoot(page, artifacts, "reset")
        page.get_by_role("button", name="Set password").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Your password is set")
        page.goto(reset)  # used: a clear page
        expect(page.get_by_role("alert")).to_have_text(
            "This link has been used already. Ask for a new one.")
        page.goto(expired_reset_link(pair))
        expect(page.get_by_role("heading", level=1)).to_have_text("This link cannot be used")
        expect(page.get_by_role("alert")).to_have_text("This link has expired. Ask for a new one.")
        expect(page.get_by_role("link", name="Ask for a new password reset link")).to_be_visible()
        shoot(page, artifacts, "link-expired")

        # Dutch.
        page.goto("/login")
        page.get_by_role("link", name="Nederlands").click()
        expect(page.get_by_role("heading", level=1)).to_have_text(
            "Log in om uw beveiligde berichten te lezen")
        shoot(page, artifacts, "login-nl")
        page.get_by_role("link", name="English").click()

        # Lockout after repeated wrong passwords, with a clear message.
        for attempt in range(5):
            log_in(page, f"wrong-{attempt}")
        expect(page.get_by_role("alert")).to_contain_text(
            "Too many failed attempts. For your safety, logging in is locked for 15 more")
        shoot(page, artifacts, "locked")
        log_in(page, NEWER)  # the right password, not even checked now
        expect(page.get_by_role("alert")).to_contain_text("locked")
        assert dialogs == []
    finally:
        context.close()
