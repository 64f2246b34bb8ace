"""
Expiry, recall and tracking of webmail messages, in memory with the clock
injected: the sender's expiry (header, subject tag, default, longest)
carried in the tunnel and removed from what leaves; the mailbox ending a
message at its expiry (the cleanup on a C{task.Clock}, and a reader who
comes first); recall through a signed tunnel from the gateway; the
timeline; the delivery receipt's status and recall links.
"""

from __future__ import annotations

import base64
import email
import email.policy
import re
from typing import Any

import pytest

from cipherd.mpa.options import sender_options
from cipherd.mpa.sealing import TunnelSealer
from cipherd.mpa.tunnel import TunnelFormatError, TunnelMetadata
from cipherd.settings import GLOBAL, REGISTRY, InvalidValue
from cipherd.testing import result_of
from cipherd.webmail import totp
from cipherd.webmail.accounts import LinkRefused
from cipherd.webmail.cleanup import EXPIRY_EVERY, Cleanup
from cipherd.webmail.mailbox import MessageEnded
from cipherd.webmail.pdfreply import new_link
from cipherd.webmail.tracking import (
    DELIVERED,
    EXPIRED,
    NOTIFIED,
    OPENED,
    RECALL,
    RECALLED,
    STATUS,
    read_token,
)
from tests.test_admin_roles import api
from tests.test_gateway import RECEIVED, SENT, WEBMAIL_RECIPIENT, World, pki  # noqa: F401
from tests.test_portal import b32_secret
from tests.test_webmail import SECRET, Both

DAVE, ERIN = "dave@partner.example", "erin@partner.example"
DEFAULTS = {name: p.default for name, p in REGISTRY.items()
            if name.startswith(("message_expiry", "sender_control"))}


@pytest.fixture
def both(pki: dict[str, Any]) -> Both:  # noqa: F811
    made = Both(World(pki))
    made.world.tunnel_certificates()
    return made


def with_fields(content: bytes, *fields: str) -> bytes:
    return "".join(f"{f}\r\n" for f in fields).encode() + content


# What the sender asks ------------------------------------------------------------


def options(content: bytes, **settings: Any) -> Any:
    from cipherd.core.headers import header_fields

    fields = header_fields(content)
    subject = next((v for n, v in fields if n == "subject"), "")
    return sender_options(content, fields, subject, {**DEFAULTS, **settings}, 1000.0)


def test_the_expiry_header_sets_it_and_is_removed() -> None:
    found = options(with_fields(SENT, "X-Cipherd-Expires: 7d"))
    assert found.expires == 1000.0 + 7 * 86400
    assert b"X-Cipherd-Expires" not in found.content and found.content.endswith(SENT[-20:])


def test_the_subject_tag_sets_it_and_is_removed() -> None:
    content = SENT.replace(b"Subject: Quarterly figures [encrypt]",
                           b"Subject: Quarterly [Expires 36H] figures [encrypt]")
    found = options(content)
    assert found.expires == 1000.0 + 36 * 3600
    assert b"Subject: Quarterly figures [encrypt]\r\n" in found.content


def test_seconds_minutes_and_case() -> None:
    assert options(with_fields(SENT, "X-Cipherd-Expires: 45s")).expires == 1045.0
    assert options(with_fields(SENT, "X-Cipherd-Expires: 2M")).expires == 1120.0
    tagged = SENT.replace(b"Subject: Quarterly figures",
                          b"Subject: Quarterly figures [expires 30s]")
    assert options(tagged).expires == 1030.0
    for bad in ("0s", "1.5s", "s"):
        assert options(with_fields(SENT, f"X-Cipherd-Expires: {bad}")).expires == 0.0


def test_the_default_the_longest_and_a_bad_value() -> None:
    assert options(SENT).expires == 0.0 and options(SENT).content is SENT
    assert options(SENT, message_expiry="2w").expires == 1000.0 + 14 * 86400
    cut = options(with_fields(SENT, "X-Cipherd-Expires: 9w"), message_expiry_max="1w")
    assert cut.expires == 1000.0 + 7 * 86400 and "cut to it" in cut.notes[0]
    bad = options(with_fields(SENT, "X-Cipherd-Expires: tomorrow"), message_expiry="1d")
    assert bad.expires == 1000.0 + 86400 and "ignored" in bad.notes[0]
    assert b"tomorrow" not in bad.content
    # Turned off: the field stays (it is no request then).
    kept = options(with_fields(SENT, "X-Cipherd-Expires: 7d"), message_expiry_header="")
    assert kept.expires == 0.0 and b"X-Cipherd-Expires" in kept.content


def test_settings_refuse_bad_names_tags_and_intervals() -> None:
    for name, value in (("message_expiry_header", "Subject"),
                        ("message_expiry_header", "X Bad"),
                        ("message_expiry_subject_tag", r"\[expires\]"),
                        ("message_expiry_subject_tag", "(unclosed"),
                        ("message_expiry", "7 days")):
        with pytest.raises(InvalidValue):
            REGISTRY[name].type.check(value)
    assert REGISTRY["message_expiry"].type.check("") == ""


def test_the_pdf_reply_link_ends_with_the_message() -> None:
    link = new_link(sender="a@x.example", recipient="b@y.example", message_id="", subject="",
                    now=1000.0, validity_days=30, single_use=False, not_after=5000.0)
    assert link.expires == 5000
    assert new_link(sender="a@x.example", recipient="b@y.example", message_id="",
                    subject="", now=1000.0, validity_days=30,
                    single_use=False).expires == 1000 + 30 * 86400


def test_tunnel_metadata_carries_expiry_receipts_and_recalls() -> None:
    metadata = TunnelMetadata("01234567-89ab-cdef-0123-456789abcdef", 1000.0, "a@x.example",
                              (), expires=2000.5, delivery_receipt=True,
                              recall="fedcba98-7654-3210-fedc-ba9876543210", recall_by="me")
    assert TunnelMetadata.from_json(metadata.to_json()) == metadata
    with pytest.raises(TunnelFormatError, match="recipients"):
        TunnelMetadata.from_json(TunnelMetadata(
            metadata.tunnel_id, 1000.0, "", ()).to_json())
    with pytest.raises(TunnelFormatError, match="recalled tunnel id"):
        TunnelMetadata.from_json(metadata.to_json().replace(b"fedcba98", b"../../.."))
    with pytest.raises(TunnelFormatError, match="expiry"):
        TunnelMetadata.from_json(metadata.to_json().replace(b"2000.5", b"-1"))


# Through the gateway and into the mailboxes ------------------------------------------


def test_an_expiring_message_ends_on_time(both: Both, log_lines: list[str]) -> None:
    world = both.world
    sealed = both.tunnel_with(with_fields(SENT, "X-Cipherd-Expires: 1h"), DAVE)
    metadata, original = both.opened(sealed)
    assert metadata.expires == world.clock.seconds() + 3600
    assert b"X-Cipherd-Expires" not in original
    assert any("Expires: " in line for line in log_lines)
    both.relay_in(sealed)
    (summary,) = result_of(both.mailboxes.listing(DAVE))
    assert summary.expires == metadata.expires
    cleanup = Cleanup(world.certificates._store, world.settings,  # type: ignore[attr-defined]
                      both.mailboxes, both.accounts, world.clock)
    result_of(cleanup.tick())
    world.clock.advance(3600 - 1)
    assert result_of(both.mailboxes.held(DAVE, summary.id, now=world.clock.seconds()))
    world.clock.advance(1)
    # A reader who comes before the cleanup is refused all the same.
    with pytest.raises(MessageEnded) as ended:
        result_of(both.mailboxes.held(DAVE, summary.id, now=world.clock.seconds()))
    assert ended.value.how == EXPIRED
    world.clock.advance(EXPIRY_EVERY)
    result_of(cleanup.tick())
    assert "Message expiry: 1 message(s) expired in the mailbox of dave@partner.example" in \
        log_lines
    assert result_of(both.mailboxes.listing(DAVE)) == []
    (gone,) = result_of(both.mailboxes.listing(DAVE, ended=True))
    assert (gone.ended, gone.size) == (EXPIRED, 0)
    timeline = result_of(both.mailboxes.timeline(metadata.tunnel_id))
    assert [e.kind for e in timeline.recipients[0].events] == [DELIVERED, NOTIFIED, EXPIRED]
    # The same tunnel again: not stored again.
    both.relay_in(sealed)
    assert result_of(both.mailboxes.listing(DAVE)) == []


def test_a_message_expired_before_it_arrived_is_not_stored(both: Both) -> None:
    sealed = both.tunnel_with(with_fields(SENT, "X-Cipherd-Expires: 1h"), DAVE)
    both.world.clock.advance(3601)
    outcome = both.relay_in(sealed)
    assert outcome.status == "sent" and "expired before it arrived" in outcome.reason
    assert result_of(both.mailboxes.listing(DAVE, ended=True)) == []
    assert both.sent_to(DAVE) == []


def test_a_recall_through_the_tunnel(both: Both, log_lines: list[str]) -> None:
    world = both.world
    sealed = both.tunnel(DAVE, ERIN)
    metadata, _ = both.opened(sealed)
    both.relay_in(sealed)
    sealer = TunnelSealer(world.certificates, world.engine, world.clock)
    settings = result_of(world.settings.by_address([""]))[""]
    made, recall_tunnel = result_of(sealer.recall(metadata.tunnel_id, [ERIN], "Olivia",
                                                  settings, world.config))
    assert made.recipients == (WEBMAIL_RECIPIENT,) and recall_tunnel != metadata.tunnel_id
    outcome = both.relay_in(made.content)
    assert outcome.status == "sent" and "recalled from 1 mailbox" in outcome.reason
    assert [s.tunnel_id for s in result_of(both.mailboxes.listing(DAVE))] == \
        [metadata.tunnel_id]
    assert result_of(both.mailboxes.listing(ERIN)) == []
    timeline = result_of(both.mailboxes.timeline(metadata.tunnel_id))
    erin = next(r for r in timeline.recipients if r.address == ERIN)
    assert erin.ended == RECALLED and erin.events[-1].kind == RECALLED
    assert "by Olivia (through the gateway" in erin.events[-1].detail
    # Everyone, then again: nothing left the second time.
    made, _ = result_of(sealer.recall(metadata.tunnel_id, [], "Olivia", settings,
                                      world.config))
    assert "recalled from 1 mailbox" in both.relay_in(made.content).reason
    made, _ = result_of(sealer.recall(metadata.tunnel_id, [], "Olivia", settings,
                                      world.config))
    assert "recalled from 0 mailbox" in both.relay_in(made.content).reason
    assert any("recalled from dave@partner.example" in line for line in log_lines)


def test_a_recall_that_overtakes_its_message(both: Both, log_lines: list[str]) -> None:
    """
    The recall tunnel arrives first (the message's waited in a queue): the
    message, when it comes, is kept as recalled, and no one is told.
    """
    world = both.world
    sealed = both.tunnel(DAVE, ERIN)
    metadata, _ = both.opened(sealed)
    sealer = TunnelSealer(world.certificates, world.engine, world.clock)
    settings = result_of(world.settings.by_address([""]))[""]
    for recipients in ([ERIN], []):
        made, _ = result_of(sealer.recall(metadata.tunnel_id, recipients, "Olivia", settings,
                                          world.config))
        assert "recalled from 0 mailbox" in both.relay_in(made.content).reason
    outcome = both.relay_in(sealed)
    assert "recalled before it arrived for dave@partner.example, erin" in outcome.reason
    assert result_of(both.mailboxes.listing(DAVE)) == []
    assert result_of(both.mailboxes.listing(ERIN)) == []
    assert both.sent_to(DAVE) == [] and both.sent_to(ERIN) == []
    timeline = result_of(both.mailboxes.timeline(metadata.tunnel_id))
    assert {r.address: r.ended for r in timeline.recipients} == {DAVE: RECALLED,
                                                                 ERIN: RECALLED}
    dave = next(r for r in timeline.recipients if r.address == DAVE)
    assert [(e.kind, e.detail) for e in dave.events] == [(RECALLED, "before it arrived")]
    assert any("was recalled before it arrived" in line for line in log_lines)


def test_a_forged_recall_is_refused(both: Both) -> None:
    """
    A recall carries the tunnel's signature rules: one not signed by a
    gateway goes to the postmaster, and recalls nothing.
    """
    sealed = both.tunnel(DAVE)
    metadata, _ = both.opened(sealed)
    both.relay_in(sealed)
    world = both.world
    # Signed by a sender that is no gateway (alice's own certificate).
    settings = dict(result_of(world.settings.by_address([""]))[""])
    settings["webmail_sender"] = "alice@example.com"
    made, _ = result_of(TunnelSealer(world.certificates, world.engine, world.clock).recall(
        metadata.tunnel_id, [], "Mallory", settings, world.config))
    outcome = both.relay_in(made.content)
    assert "forwarded to the postmaster" in outcome.reason and "not properly signed" in \
        outcome.reason
    assert len(result_of(both.mailboxes.listing(DAVE))) == 1


def test_the_delivery_receipt_and_its_links(both: Both) -> None:
    world = both.world
    world.set(GLOBAL, webmail_delivery_receipt=True)
    sealed = both.tunnel_with(with_fields(SENT, "X-Cipherd-Expires: 2d"), DAVE, ERIN)
    metadata, _ = both.opened(sealed)
    assert metadata.delivery_receipt
    both.relay_in(sealed)
    (receipt,) = both.sent_to("alice@example.com")
    parsed = email.message_from_bytes(receipt, policy=email.policy.default)
    assert parsed["Subject"] == "Delivered: Quarterly figures [encrypt]"
    text = parsed.get_content()
    assert DAVE in text and ERIN in text and "It expires on" in text
    status, recall = [w for w in text.split() if w.startswith("https://webmail.example/")]
    assert status.startswith("https://webmail.example/status?token=")
    assert recall.startswith("https://webmail.example/recall?token=")
    now = world.clock.seconds()
    link = read_token(SECRET, status.split("token=")[1], STATUS, now)
    assert (link.tunnel_id, link.sender) == (metadata.tunnel_id, "alice@example.com")
    # One link is not the other; both expire; a changed secret refuses them.
    with pytest.raises(LinkRefused, match="not valid"):
        read_token(SECRET, status.split("token=")[1], RECALL, now)
    assert read_token(SECRET, recall.split("token=")[1], RECALL, now)
    with pytest.raises(LinkRefused, match="expired"):
        read_token(SECRET, recall.split("token=")[1], RECALL, now + 31 * 86400)
    with pytest.raises(LinkRefused, match="not valid"):
        read_token("another secret of length", recall.split("token=")[1], RECALL, now)
    # Asked again (a gateway that crashed): no second receipt.
    both.relay_in(sealed)
    assert len(both.sent_to("alice@example.com")) == 1


def test_opening_downloading_replying_and_deleting_are_tracked(both: Both) -> None:
    world = both.world
    sealed = both.tunnel(DAVE)
    metadata, _ = both.opened(sealed)
    both.relay_in(sealed)
    (summary,) = result_of(both.mailboxes.listing(DAVE))
    now = world.clock.seconds()
    assert result_of(both.mailboxes.mark_read(DAVE, summary.id, now)) is None
    assert result_of(both.mailboxes.mark_read(DAVE, summary.id, now + 5)) is None  # once
    result_of(both.mailboxes.track(DAVE, summary.id, now + 10, "downloaded", "figures.pdf"))
    assert result_of(both.mailboxes.delete(DAVE, [summary.id], now + 20)) == 1
    timeline = result_of(both.mailboxes.timeline(metadata.tunnel_id))
    (dave,) = timeline.recipients
    assert [(e.kind, e.detail) for e in dave.events] == [
        (DELIVERED, ""), (NOTIFIED, ""), (OPENED, ""), ("downloaded", "figures.pdf"),
        ("deleted", "")]
    assert dave.ended == "deleted" and timeline.recallable() == []


# The portal ----------------------------------------------------------------------


TUNNEL = "01234567-89ab-cdef-0123-456789abcdef"
MESSAGE = (b"From: alice@example.com\r\nTo: dave@partner.example\r\nSubject: Figures\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
           b"Content-Type: text/plain\r\n\r\nSee attached.\r\n--b\r\nContent-Type: text/csv\r\n"
           b"Content-Disposition: attachment; filename=figures.csv\r\n\r\n1,2\r\n--b--\r\n")


@pytest.fixture
def portal() -> Any:
    from tests.test_portal import PortalSite

    site = PortalSite()
    site.account()
    done = result_of(site.mailboxes.deliver_tunnel(
        [DAVE, ERIN], TUNNEL, site.clock.seconds(), MESSAGE, "", {}, site.clock.seconds(),
        site.clock.seconds() + 3600)).done
    assert done == {DAVE: "stored", ERIN: "stored"}
    return site


def message_id(site: Any, address: str = DAVE) -> int:
    (summary,) = result_of(site.mailboxes.listing(address, ended=True))
    return int(summary.id)


def test_an_open_session_sees_a_recall_on_its_next_request(portal: Any) -> None:
    reader = portal.visitor()
    assert reader.log_in().status == 303
    number = message_id(portal)
    assert reader.get(f"/message/{number}").status == 200
    assert reader.get(f"/message/{number}/part/1").status == 200
    assert result_of(portal.messenger.recall(TUNNEL, [DAVE], "by a test")) == [DAVE]
    for path in (f"/message/{number}", f"/message/{number}/part/1", f"/message/{number}/eml",
                 f"/message/{number}/reply", f"/message/{number}/body"):
        page = reader.get(path)
        assert page.status == 410, path
        assert "Its sender took it back: it is no longer available." in page.text
    assert "Figures" not in reader.get("/inbox").text
    timeline = result_of(portal.mailboxes.timeline(TUNNEL))
    dave = next(r for r in timeline.recipients if r.address == DAVE)
    assert [e.kind for e in dave.events] == [DELIVERED, OPENED, "downloaded", RECALLED]
    assert dave.events[2].detail == "figures.csv"
    # Erin's copy stays.
    assert next(r for r in timeline.recipients if r.address == ERIN).ended == ""


def test_an_expired_message_reads_expired(portal: Any) -> None:
    number = message_id(portal)
    portal.clock.advance(3599)
    reader = portal.visitor()
    reader.log_in()
    assert "Figures" in reader.get("/inbox").text
    portal.clock.advance(1)
    # Gone from the inbox at its expiry, before the cleanup comes by.
    assert "Figures" not in reader.get("/inbox").text
    page = reader.get(f"/message/{number}")
    assert page.status == 410 and "This message has expired" in page.text
    assert "Its sender let it be read until 2027-01-15 09:00 UTC" in page.text
    dutch = portal.visitor("nl")
    dutch.log_in()
    assert "Dit bericht is verlopen" in dutch.get(f"/message/{number}").text


def links_for(site: Any) -> tuple[str, str]:
    from cipherd.webmail.tracking import links

    status, recall = links(SECRET, "https://portal.example", TUNNEL, "alice@example.com",
                           site.clock.seconds() + 86400)
    return status.removeprefix("https://portal.example"), \
        recall.removeprefix("https://portal.example")


def test_the_status_page(portal: Any) -> None:
    status, recall = links_for(portal)
    page = portal.visitor().get(status)
    assert page.status == 200
    assert "What became of your message" in page.text and "Figures" in page.text
    assert DAVE in page.text and "Delivered to the mailbox" in page.text
    assert "Expires on" in page.text and "<form" not in page.text
    # The status link does not recall; forged and expired ones are refused.
    assert portal.visitor().get(recall.replace("/recall", "/status")).status == 403
    assert portal.visitor().get(status[:-3] + "AAA").status == 403
    portal.clock.advance(86401)
    refused = portal.visitor().get(status)
    assert refused.status == 403 and "This link has expired." in refused.text


def test_the_recall_page_recalls_what_the_sender_chooses(portal: Any) -> None:
    _, recall = links_for(portal)
    sender = portal.visitor()
    page = sender.get(recall)
    assert page.status == 200 and 'value="dave@partner.example" checked' in page.text
    # Without the form's token: refused, nothing recalled.
    assert sender.request("POST", recall, {"address": DAVE}).status == 403
    nothing = sender.request("POST", recall, {"csrf_token": sender.csrf(page)})
    assert nothing.status == 400 and "Choose at least one recipient" in nothing.text
    done = sender.request("POST", recall, {"csrf_token": sender.csrf(page), "address": ERIN})
    assert done.status == 200 and "Recalled from: erin@partner.example" in done.text
    assert result_of(portal.mailboxes.listing(ERIN)) == []
    assert len(result_of(portal.mailboxes.listing(DAVE))) == 1
    # An address that never had it is no choice.
    other = sender.request("POST", recall, {"csrf_token": sender.csrf(page),
                                            "address": "eve@elsewhere.example"})
    assert other.status == 400 and len(result_of(portal.mailboxes.listing(DAVE))) == 1
    (event,) = [e for r in result_of(portal.mailboxes.timeline(TUNNEL)).recipients
                for e in r.events if e.kind == RECALLED]
    assert event.detail == "by the sender alice@example.com (recall link)"


# The administrator -------------------------------------------------------------------


@pytest.fixture
def admin(admin_in: Any) -> Any:
    for address in (DAVE, ERIN):
        result_of(admin_in.accounts.invite(address))
    result_of(admin_in.mailboxes.deliver_tunnel(
        [DAVE, ERIN], TUNNEL, admin_in.clock.seconds(), MESSAGE, "", {},
        admin_in.clock.seconds(), 0.0))
    return admin_in


def test_the_admin_sees_the_timeline_and_recalls(admin: Any) -> None:
    account = admin.get(f"/webmail/accounts/{DAVE}")
    assert f'href="/webmail/messages/{TUNNEL}">Figures</a>' in account.text
    assert "in the mailbox" in account.text
    page = admin.get(f"/webmail/messages/{TUNNEL}")
    assert page.code == 200 and "Delivered to the mailbox" in page.text
    assert "Recall from every recipient" in page.text
    done = admin.post_form(f"/webmail/messages/{TUNNEL}/recall", {"address": DAVE},
                           csrf=admin.csrf_from(page))
    assert done.code == 303
    after = admin.get(done.headers.getRawHeaders("location")[0])
    assert "Recalled from dave@partner.example." in after.text
    assert "by the administrator admin" in after.text
    assert "recalled" in admin.get(f"/webmail/accounts/{DAVE}").text
    assert result_of(admin.mailboxes.listing(DAVE)) == []
    assert len(result_of(admin.mailboxes.listing(ERIN))) == 1
    # Without the form's token: refused.
    assert admin.post_form(f"/webmail/messages/{TUNNEL}/recall", {}, csrf=None).code == 403
    assert len(result_of(admin.mailboxes.listing(ERIN))) == 1
    assert admin.get("/webmail/messages/not-a-tunnel").code == 404
    entries = api(admin, "GET", "/audit?action=webmail.recall").json()["entries"]
    assert entries[0]["summary"] == f"recalled webmail message {TUNNEL} from {DAVE}"


def test_the_api_timeline_and_recall(admin: Any) -> None:
    found = api(admin, "GET", f"/webmail/messages/{TUNNEL}")
    assert found.code == 200
    body = found.json()
    assert body["subject"] == "Figures" and [r["address"] for r in body["recipients"]] == [
        DAVE, ERIN]
    assert body["recipients"][0]["events"][0]["event"] == DELIVERED
    refused = api(admin, "POST", f"/webmail/messages/{TUNNEL}/recall",
                  {"recipients": ["not an address"]})
    assert refused.code == 400 and "recipients" in refused.json()["errors"]
    everyone = api(admin, "POST", f"/webmail/messages/{TUNNEL}/recall", {})
    assert everyone.code == 200 and everyone.json()["recalled"] == [DAVE, ERIN]
    assert {r["ended"] for r in everyone.json()["message"]["recipients"]} == {RECALLED}
    assert api(admin, "GET", "/webmail/messages/0000").code == 404
    # This harness delivers no mail: a recall through the tunnel is refused, and says why.
    through = api(admin, "POST", f"/tunnels/{TUNNEL}/recall", {"recipients": [DAVE]})
    assert through.code == 409 and "does not deliver mail" in through.json()["error"]
    assert api(admin, "POST", "/tunnels/nonsense/recall", {}).code == 404


def test_an_operator_may_recall_an_auditor_may_not(admin: Any) -> None:
    from tests.test_admin_roles import NEW, make

    make(admin, "opal", "operator")
    make(admin, "audrey", "auditor")
    assert api(admin, "POST", f"/webmail/messages/{TUNNEL}/recall", {"recipients": [ERIN]},
               auth=("audrey", NEW)).code == 403
    assert api(admin, "GET", f"/webmail/messages/{TUNNEL}", auth=("audrey", NEW)).code == 200
    assert api(admin, "POST", f"/webmail/messages/{TUNNEL}/recall", {"recipients": [ERIN]},
               auth=("opal", NEW)).json()["recalled"] == [ERIN]


# Sender controls ---------------------------------------------------------------------


def test_controls_by_header_and_subject_tags_as_the_settings_allow() -> None:
    asked = options(with_fields(SENT, "X-Cipherd-Controls: no-reply, Require_TOTP, bogus")
                    .replace(b"Subject: Quarterly figures [encrypt]",
                             b"Subject: [NoDownload] Quarterly figures [encrypt]"))
    assert asked.controls == ("no_reply", "no_download", "require_totp")
    assert b"X-Cipherd-Controls" not in asked.content
    assert b"Subject: Quarterly figures [encrypt]\r\n" in asked.content
    assert asked.notes == ("the control 'bogus' is not one (no_reply, no_download, "
                           "require_totp): ignored",)
    limited = options(with_fields(SENT, "X-Cipherd-Controls: no-reply no-download"),
                      sender_control_no_download=False)
    assert limited.controls == ("no_reply",)
    assert limited.notes == ("the control no_download is not allowed for this sender: "
                             "ignored",)
    assert options(SENT).controls == () and options(SENT).content is SENT


def test_the_tunnel_carries_controls_and_refuses_unknown_ones() -> None:
    metadata = TunnelMetadata(TUNNEL, 1000.0, "a@x.example", (DAVE,),
                              controls=("no_reply", "require_totp"))
    assert TunnelMetadata.from_json(metadata.to_json()) == metadata
    with pytest.raises(TunnelFormatError, match="controls this version does not know"):
        TunnelMetadata.from_json(metadata.to_json().replace(b"no_reply", b"no_print"))


def test_controls_go_through_the_gateway_into_the_mailbox(both: Both,
                                                         log_lines: list[str]) -> None:
    sealed = both.tunnel_with(with_fields(SENT, "X-Cipherd-Controls: no-reply"), DAVE)
    metadata, original = both.opened(sealed)
    assert metadata.controls == ("no_reply",) and b"X-Cipherd-Controls" not in original
    assert any("; Controls: no_reply" in line for line in log_lines)
    both.relay_in(sealed)
    (summary,) = result_of(both.mailboxes.listing(DAVE))
    assert summary.controlled == {"no_reply"}


PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
PICTURED = MESSAGE.replace(b"--b--\r\n", b"--b\r\nContent-Type: image/png\r\n"
                           b"Content-Disposition: attachment; filename=chart.png\r\n"
                           b"Content-Transfer-Encoding: base64\r\n\r\n"
                           + base64.b64encode(PNG) + b"\r\n--b--\r\n")


def controlled(*controls: str) -> tuple[Any, Any, int]:
    from tests.test_portal import PortalSite

    site = PortalSite()
    site.account()
    result_of(site.mailboxes.deliver_tunnel(
        [DAVE], TUNNEL, site.clock.seconds(), PICTURED, "", {}, site.clock.seconds(), 0.0,
        controls))
    reader = site.visitor()
    assert reader.log_in().status == 303
    return site, reader, message_id(site)


def test_no_reply(log_lines: list[str]) -> None:
    site, reader, number = controlled("no_reply")
    page = reader.get(f"/message/{number}")
    assert page.status == 200 and "The sender does not allow replies" in page.text
    assert f'href="/message/{number}/reply"' not in page.text
    refused = reader.get(f"/message/{number}/reply")
    assert refused.status == 403 and "Not allowed for this message" in refused.text
    result = result_of(site.messenger.reply(DAVE, number, "Thanks"))
    assert result.problem == "The sender does not allow replies to this message."
    assert site.submitted == []
    # Downloads stay allowed.
    assert reader.get(f"/message/{number}/eml").status == 200


def test_no_download_shows_images_only() -> None:
    site, reader, number = controlled("no_download")
    page = reader.get(f"/message/{number}")
    assert "/eml" not in page.text and "download>" not in page.text
    assert "not available: the sender does not allow downloads" in page.text  # the CSV
    assert f'href="/message/{number}/part/2" target="_blank"' in page.text  # the PNG
    assert reader.get(f"/message/{number}/eml").status == 403
    assert reader.get(f"/message/{number}/part/1").status == 403
    shown = reader.get(f"/message/{number}/part/2")
    assert shown.status == 200 and shown.body == PNG
    assert shown.header("content-disposition").startswith("inline; ")
    assert "sandbox" in shown.header("content-security-policy")
    timeline = result_of(site.mailboxes.timeline(TUNNEL))
    assert [e.detail for e in timeline.recipients[0].events if e.kind == "downloaded"] == [
        "chart.png (viewed)"]


def test_require_totp_until_the_account_has_a_second_factor() -> None:
    site, reader, number = controlled("require_totp")
    for path in (f"/message/{number}", f"/message/{number}/body", f"/message/{number}/eml"):
        refused = reader.get(path)
        assert refused.status == 403, path
        assert "The sender requires a second factor" in refused.text
        assert 'href="/account/totp"' in refused.text
    assert result_of(site.mailboxes.listing(DAVE))[0].read is False  # not read by that
    page = reader.get("/account/totp")
    secret = b32_secret(page.text)
    pending = re.search(r'name="pending" value="([^"]+)"', page.text)
    assert pending is not None
    reader.request("POST", "/account/totp", {
        "csrf_token": reader.csrf(page), "pending": pending.group(1),
        "code": totp.totp(secret, site.clock.seconds())})
    opened = reader.get(f"/message/{number}")
    assert opened.status == 200 and "The sender requires a second factor" in opened.text
