"""
Expiry, recall and tracking on the guide's two appliances, in Chromium:
Alice sends a message with an expiry to Dave and Erin through the gateway;
she gets a delivery receipt; Dave signs up, opens the message and
downloads it; Alice's status link shows that; she recalls it from Dave
with her recall link, and Dave's open portal session sees it gone on its
next request; the gateway's administrator recalls it from Erin through
the tunnel.  A second message, "[expires 30s]" in its subject, expires on
the appliance's real clock: Dave's inbox and portal let it go once its
time is up (the cleanup that follows is tested on a task.Clock).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.test_browser_admin import DESKTOP, browser, shoot  # noqa: F401
from tests.test_mta_appliance import api
from tests.test_portal_browser import link_in
from tests.test_webmail_accounts_browser import DAVE, DAVE_PASSWORD, ERIN, dave_logs_in, send_to
from tests.test_webmail_appliance import FIRST, Pair, pair, sign_up, text_of  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

ALICE = "alice@example.org"
EXPIRING = FIRST.replace(b"Subject: Contract draft", b"X-Cipherd-Expires: 2d\r\n"
                         b"Subject: Contract draft")
QUICK = FIRST.replace(b"Subject: Contract draft", b"Subject: Quick note [expires 30s]")


def test_status_recall_and_expiry_across_the_two_appliances(
        browser: Browser, pair: Pair, artifacts: Path) -> None:  # noqa: F811
    pair.trust_the_gateway()
    api(pair.gateway, "PATCH", "/settings/global", {"webmail_delivery_receipt": True})
    send_to(pair, f"{DAVE},{ERIN}", EXPIRING)
    logged = pair.gateway.wait_for_log("mpa", "sent to the webmail messenger in tunnel message")
    tunnel = re.search(r"tunnel message ([0-9a-f-]{36})", logged)
    assert tunnel is not None and "; Expires: " in logged
    (receipt,) = pair.arrived(ALICE)  # the quick note's comes later
    receipt_text = text_of(receipt)
    assert "Delivered: Contract draft" in receipt.content.decode(errors="replace")
    assert DAVE in receipt_text and ERIN in receipt_text and "It expires on" in receipt_text
    status = link_in(receipt_text, "/status")
    recall = link_in(receipt_text, "/recall")
    # The field asking for the expiry did not travel on.
    (invitation,) = pair.arrived(DAVE)
    sign_up(link_in(text_of(invitation), "/signup"), DAVE_PASSWORD)
    send_to(pair, DAVE, QUICK)
    quick_sent = time.monotonic()
    pair.arrived(DAVE, 2)  # the new-message notice

    reader = browser.new_context(base_url=pair.webmail.portal_url, ignore_https_errors=True,
                                 viewport=DESKTOP)
    sender = browser.new_context(ignore_https_errors=True, viewport=DESKTOP)
    try:
        dave = reader.new_page()
        dave_logs_in(dave)
        # The tag is gone from the subject, and the message readable for now.
        dave.get_by_role("link", name="Quick note", exact=True).click()
        expect(dave.get_by_role("heading", level=1)).to_have_text("Quick note")
        quick_url = dave.url
        dave.goto("/inbox")
        dave.get_by_role("link", name="Contract draft").click()
        expect(dave.get_by_role("heading", level=1)).to_have_text("Contract draft")
        with dave.expect_download() as downloading:
            dave.get_by_role("link", name="Download (.eml)").click()
        saved = downloading.value.path()
        assert saved is not None and b"X-Cipherd-Expires" not in Path(saved).read_bytes()
        message_url = dave.url

        alice = sender.new_page()
        alice.goto(status)
        expect(alice.get_by_role("heading", level=1)).to_have_text(
            "What became of your message")
        dave_section = alice.get_by_role("region", name=DAVE)
        expect(dave_section).to_contain_text("First opened")
        expect(dave_section).to_contain_text("Downloaded")
        expect(dave_section).to_contain_text("Expires on")
        expect(alice.get_by_role("region", name=ERIN)).to_contain_text("Recipient notified")
        shoot(alice, artifacts, "portal-message-status")

        alice.goto(recall)
        alice.get_by_role("checkbox", name=ERIN).uncheck()
        alice.once("dialog", lambda dialog: dialog.accept())
        alice.get_by_role("button", name="Recall").click()
        expect(alice.get_by_role("status")).to_contain_text("Recalled from: " + DAVE)
        shoot(alice, artifacts, "portal-message-recalled")

        # Dave's open session, on its next request.
        dave.goto(message_url)
        expect(dave.get_by_role("heading", level=1)).to_have_text("This message was recalled")
        dave.goto("/inbox")
        expect(dave.get_by_role("link", name="Contract draft")).to_have_count(0)
        shoot(dave, artifacts, "portal-recalled-inbox")

        # The quick note, once its time is up (the appliance's own clock).
        time.sleep(max(0.0, quick_sent + 31 - time.monotonic()))
        dave.goto(quick_url)
        expect(dave.get_by_role("heading", level=1)).to_have_text("This message has expired")
        shoot(dave, artifacts, "portal-message-expired")
        dave.goto("/inbox")  # gone from the list at once, before the cleanup comes by
        expect(dave.get_by_role("link", name="Quick note", exact=True)).to_have_count(0)
    finally:
        reader.close()
        sender.close()

    # Erin's copy, recalled by the gateway's administrator through the tunnel.
    sent = api(pair.gateway, "POST", f"/tunnels/{tunnel.group(1)}/recall",
               {"recipients": [ERIN]})
    assert sent["recipients"] == [ERIN]
    pair.mpa_log(f"recalled from {ERIN} by the administrator admin (through the gateway")
    timeline = api(pair.webmail, "GET", f"/webmail/messages/{tunnel.group(1)}")
    ended = {r["address"]: r["ended"] for r in timeline["recipients"]}
    assert ended == {DAVE: "recalled", ERIN: "recalled"}
