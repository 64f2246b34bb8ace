"""
What became of each message the webmail messenger holds, per recipient: a
timeline of events (table C{webmail_events}) kept beside the mailboxes and
written in the same transactions as what they record:

    - C{delivered}: stored in the recipient's mailbox;
    - C{notified}: the sign-up invitation or new-message notice is queued;
    - C{opened}: first read in the portal;
    - C{downloaded}: an attachment, or the whole message, downloaded;
    - C{replied}: answered from the portal;
    - C{deleted}: deleted by the recipient;
    - C{expired}: its expiry passed, its content is gone;
    - C{recalled}: recalled by its sender or an administrator, its content
      gone.

The sender sees it through a signed I{status link} in the delivery
receipt, and recalls through a signed I{recall link} in the same receipt;
administrators see it on the webmail accounts pages.  Both links are
tokens signed with the *server secret* (HMAC-SHA256 with their own domain
separation and purpose), naming the tunnel and the sender, with an expiry;
nothing is stored when one is made.  Events go after L{EVENT_MEMORY}.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select

from cipherd.store.schema import webmail_events, webmail_messages
from cipherd.webmail.accounts import LinkRefused, signed_payload, signed_token

DELIVERED, NOTIFIED, OPENED, DOWNLOADED, REPLIED, DELETED, EXPIRED, RECALLED = (
    "delivered", "notified", "opened", "downloaded", "replied", "deleted", "expired",
    "recalled")
# How each event reads on the status pages.
WORDS = {DELIVERED: "Delivered to the mailbox", NOTIFIED: "Recipient notified",
         OPENED: "First opened", DOWNLOADED: "Downloaded", REPLIED: "Replied",
         DELETED: "Deleted by the recipient", EXPIRED: "Expired", RECALLED: "Recalled"}
# Events are kept this long (a status link is not valid longer).
EVENT_MEMORY = 90 * 86400.0

STATUS, RECALL = "status", "recall"
# A tunnel id as the gateway makes them (cipherd.mpa.tunnel.tunnel_id).
TUNNEL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,2000}\.[A-Za-z0-9_-]{43}")


def record(conn: Connection, tunnel_id: str, address: str, at: float, kind: str,
           detail: str = "") -> None:
    """
    One event, in the caller's transaction.
    """
    conn.execute(insert(webmail_events).values(tunnel_id=tunnel_id, address=address, at=at,
                                               kind=kind, detail=detail[:500]))


@dataclass(frozen=True)
class Event:
    at: float
    kind: str
    detail: str

    @property
    def words(self) -> str:
        return WORDS.get(self.kind, self.kind)


@dataclass(frozen=True)
class RecipientStatus:
    """
    One recipient of a tunnelled message: its events, oldest first, and
    whether the message is still in the mailbox (C{ended} C{""}), or how
    it ended (C{"expired"}, C{"recalled"}, C{"deleted"}: not there).
    """

    address: str
    events: tuple[Event, ...]
    ended: str
    expires: float


@dataclass(frozen=True)
class Timeline:
    tunnel_id: str
    subject: str
    sender: str
    recipients: tuple[RecipientStatus, ...]

    def recallable(self) -> list[str]:
        return [r.address for r in self.recipients if not r.ended]


def read_timeline(conn: Connection, tunnel_id: str) -> Timeline | None:
    """
    The tunnel's timeline per recipient, or C{None} when nothing of it is
    known (never here, or forgotten).
    """
    events: dict[str, list[Event]] = {}
    for event in conn.execute(select(webmail_events).where(
            (webmail_events.c.tunnel_id == tunnel_id)
            # A recall of everyone that came before the message (see
            # cipherd.webmail.mailbox.EVERYONE) is on each one's own line.
            & (webmail_events.c.address != "*")).order_by(
            webmail_events.c.at, webmail_events.c.id)):
        events.setdefault(event.address, []).append(Event(event.at, event.kind, event.detail))
    rows: dict[str, Any] = {row.address: row for row in conn.execute(
        select(webmail_messages.c.address, webmail_messages.c.sender,
               webmail_messages.c.subject, webmail_messages.c.ended,
               webmail_messages.c.expires).where(webmail_messages.c.tunnel_id == tunnel_id))}
    if not events and not rows:
        return None
    recipients = []
    for address in sorted(set(events) | set(rows)):
        row: Any = rows.get(address)
        recipients.append(RecipientStatus(address, tuple(events.get(address, ())),
                                          row.ended if row is not None else DELETED,
                                          row.expires if row is not None else 0.0))
    first = next(iter(rows.values()), None)
    return Timeline(tunnel_id, first.subject if first else "", first.sender if first else "",
                    tuple(recipients))


# Status and recall links ---------------------------------------------------------


@dataclass(frozen=True)
class TrackingLink:
    """
    What a status or recall link says: the tunnel, its original sender
    (who the link was sent to) and when the link expires.
    """

    purpose: str
    tunnel_id: str
    sender: str
    expires: int


_DOMAIN = b"cipherd tracking link"
_NOT_VALID = "This link is not valid. Copy the whole link from the message."


def make_token(secret: str, link: TrackingLink) -> str:
    payload = json.dumps({"p": link.purpose, "t": link.tunnel_id, "s": link.sender,
                          "e": link.expires}, separators=(",", ":"),
                         ensure_ascii=False).encode()
    return signed_token(secret, _DOMAIN, payload)


def read_token(secret: str, token: str, purpose: str, now: float) -> TrackingLink:
    """
    The link of an authentic, unexpired token made for C{purpose}.

    @raise LinkRefused: damaged, forged (or made under another secret),
        for another purpose, or expired; the reason is fit to show.
    """
    claims: Any = json.loads(signed_payload(secret, _DOMAIN, token, _TOKEN, _NOT_VALID))
    if claims.get("p") != purpose:
        raise LinkRefused(_NOT_VALID)
    link = TrackingLink(purpose, str(claims["t"]), str(claims["s"]), int(claims["e"]))
    if now > link.expires:
        raise LinkRefused("This link has expired.")
    return link


def links(secret: str, base: str, tunnel_id: str, sender: str, expires: float
          ) -> tuple[str, str]:
    """
    The status and the recall link of a tunnel, for its sender's delivery
    receipt (tokens as C{?token=}, which the access log scrubs).
    """
    base = base.rstrip("/")
    made = [f"{base}/{purpose}?token=" + make_token(
        secret, TrackingLink(purpose, tunnel_id, sender, int(expires)))
        for purpose in (STATUS, RECALL)]
    return made[0], made[1]


def addresses(values: Sequence[str]) -> list[str]:
    return sorted({v.strip().lower() for v in values if v.strip()})
