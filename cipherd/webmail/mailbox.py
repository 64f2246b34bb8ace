"""
The webmail mailboxes: the original messages the gateway tunnelled, one
mailbox per recipient address, sealed at rest.

Each message is sealed with AES-256-GCM under a key derived (HKDF) from the
data dir's key-encryption key, bound to its mailbox and tunnel id, so a
row copied to another mailbox does not open.  A tunnel message is stored
once per recipient however often it arrives (a gateway that crashed after
handing it over sends it again).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Connection, delete, func, insert, select, update

from cipherd.core.headers import header_fields
from cipherd.logs import mail_logger
from cipherd.store import Store
from cipherd.store.schema import (
    webmail_accounts,
    webmail_events,
    webmail_messages,
    webmail_tunnels,
)
from cipherd.webmail.accounts import Account, account_in, invite_in
from cipherd.webmail.controls import joined, split
from cipherd.webmail.tracking import (
    DELETED,
    DELIVERED,
    EXPIRED,
    NOTIFIED,
    OPENED,
    RECALLED,
    Timeline,
    read_timeline,
    record,
)

log = mail_logger("cipherd.mpa.webmail")

_VERSION = b"\x01"


def message_key(kek: bytes) -> bytes:
    """
    The key the mailboxes are sealed with, derived from the data dir's
    key-encryption key (never the KEK itself: one key, one purpose).
    """
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"cipherd webmail messages v1").derive(kek)


def _aad(address: str, tunnel_id: str) -> bytes:
    return f"{address}\0{tunnel_id}".encode()


def seal(key: bytes, address: str, tunnel_id: str, content: bytes) -> bytes:
    nonce = os.urandom(12)
    return _VERSION + nonce + AESGCM(key).encrypt(nonce, content, _aad(address, tunnel_id))


class SealedMessageError(Exception):
    """
    A stored message does not open with this node's key.
    """


def unseal(key: bytes, address: str, tunnel_id: str, sealed: bytes) -> bytes:
    if sealed[:1] != _VERSION:
        raise SealedMessageError("unknown format")
    try:
        return AESGCM(key).decrypt(sealed[1:13], sealed[13:], _aad(address, tunnel_id))
    except InvalidTag:
        raise SealedMessageError("the message does not open with this data dir's key "
                                 "(var/kek)") from None


@dataclass(frozen=True)
class Summary:
    """
    A message as the inbox lists it.
    """

    id: int
    address: str
    tunnel_id: str
    received: float
    sender: str
    subject: str
    size: int
    attachments: int
    read: bool
    receipt_to: str
    notified: bool
    expires: float = 0.0
    ended: str = ""
    controls: str = ""

    @property
    def controlled(self) -> frozenset[str]:
        return split(self.controls)


@dataclass(frozen=True)
class Held:
    """
    A message of a mailbox and its sender's controls.
    """

    content: bytes
    controls: frozenset[str] = frozenset()


class MessageEnded(Exception):
    """
    The message is no longer there to read: it expired or was recalled.

    @ivar how: L{EXPIRED} or L{RECALLED}.
    @ivar expires: when it expired (or was to).
    """

    def __init__(self, how: str, expires: float) -> None:
        super().__init__(how)
        self.how = how
        self.expires = expires


def describe(content: bytes) -> tuple[str, str, int]:
    """
    The From, the subject and the number of attachments of a message, for
    the inbox list.
    """
    fields = dict(reversed(header_fields(content)))
    attachments = content.lower().count(b"content-disposition: attachment")
    return fields.get("from", ""), fields.get("subject", ""), attachments


STORED, REPEATED, FULL = "stored", "repeated", "full"
# A recall that came before its message (the recall tunnel overtook it in
# a queue): the message is kept as recalled, never shown nor notified.
RECALLED_BEFORE = "recalled before"
# The address a recall of every recipient is recorded under, when it finds
# no message of its tunnel yet.
EVERYONE = "*"


# Messages still in their mailbox (not expired nor recalled).
_LIVE = webmail_messages.c.ended == ""


def _live(now: float | None) -> Any:
    """
    L{_LIVE}, and not expired by C{now} (when given).
    """
    if now is None:
        return _LIVE
    return _LIVE & ((webmail_messages.c.expires == 0) | (webmail_messages.c.expires > now))
_SUMMARY = [c for c in webmail_messages.c if c.name != "content"]


def _usage(conn: Connection, address: str) -> int:
    return int(conn.execute(select(func.coalesce(func.sum(webmail_messages.c.size), 0))
                            .where(webmail_messages.c.address == address)).scalar_one())


def _ended(conn: Connection, condition: Any, how: str, at: float, detail: str
           ) -> list[tuple[str, str]]:
    """
    The live messages C{condition} selects ended (C{how}: L{EXPIRED} or
    L{RECALLED}): their content gone, the event recorded.

    @return: their addresses and tunnel ids.
    """
    rows = [(row.address, row.tunnel_id) for row in conn.execute(
        select(webmail_messages.c.address, webmail_messages.c.tunnel_id)
        .where(condition & _LIVE))]
    if rows:
        conn.execute(update(webmail_messages).where(condition & _LIVE).values(
            ended=how, content=b"", size=0))
        for address, tunnel in rows:
            record(conn, tunnel, address, at, how, detail)
    return rows


def _find(conn: Connection, address: str, tunnel_id: str) -> int | None:
    found = conn.execute(select(webmail_messages.c.id).where(
        (webmail_messages.c.address == address)
        & (webmail_messages.c.tunnel_id == tunnel_id))).scalar()
    return None if found is None else int(found)


class Mailboxes:
    """
    @param key: from L{message_key}.
    """

    def __init__(self, store: Store, key: bytes) -> None:
        self._store = store
        self._key = key

    async def deliver(self, address: str, tunnel_id: str, received: float,
                      content: bytes, receipt_to: str = "") -> bool:
        """
        Put a message in C{address}'s mailbox.

        @param receipt_to: where a read receipt goes when it is first read.

        @return: C{False} when it was there already.
        """
        return await self.deliver_within(address, tunnel_id, received, content,
                                         receipt_to) == STORED

    async def deliver_within(self, address: str, tunnel_id: str, received: float,
                             content: bytes, receipt_to: str = "", limit: int = 0) -> str:
        """
        Put a message in C{address}'s mailbox unless that takes it over
        C{limit} bytes (C{0}: no limit).  The account's row is locked while
        the mailbox is measured, so two nodes delivering at once cannot both
        squeeze in (the account must exist: L{Accounts.invite}).

        @return: L{STORED}, L{REPEATED} (it was there already) or L{FULL}.
        """
        write = self._delivery(address, tunnel_id, received, content, receipt_to, limit)
        done: str = await self._store.run(write)
        return done

    async def deliver_tunnel(self, addresses: Sequence[str], tunnel_id: str, received: float,
                             content: bytes, receipt_to: str, limits: Mapping[str, int],
                             created: float, expires: float = 0.0,
                             controls: tuple[str, ...] = ()) -> TunnelDelivery:
        """
        The webmail relay's whole write for one tunnel, in one transaction:
        unless the tunnel id was handled before, each of C{addresses}
        invited (L{Accounts.invite}) and given the message (as
        L{deliver_within}, with its C{limits}), and the tunnel id recorded
        as handled; in either case, who has the message stored but was not
        yet told of it, with their accounts.  Each delivery is recorded on
        the tunnel's timeline.

        @param expires: when the message expires (0: never).
        @param controls: the sender's controls (L{cipherd.webmail.controls}).
        """
        deliveries = {address: self._delivery(address, tunnel_id, received, content,
                                              receipt_to, limits.get(address, 0), expires,
                                              controls, tracked=True)
                      for address in addresses}

        def write(conn: Connection) -> TunnelDelivery:
            done: dict[str, str] = {}
            accounts: dict[str, Account] = {}
            seen = _tunnel_seen(conn, tunnel_id)
            if not seen:
                for address, deliver in deliveries.items():
                    accounts[address], _ = invite_in(conn, address, received)
                    done[address] = deliver(conn)
                _record_tunnel(conn, tunnel_id, created, received)
            told = _not_notified(conn, tunnel_id, addresses)
            for address in told:
                if address not in accounts:
                    account = account_in(conn, address)
                    if account is not None:
                        accounts[address] = account
            return TunnelDelivery(seen, done, [a for a in told if a in accounts], accounts)

        delivered: TunnelDelivery = await self._store.run(write)
        return delivered

    def _delivery(self, address: str, tunnel_id: str, received: float, content: bytes,
                  receipt_to: str, limit: int, expires: float = 0.0,
                  controls: tuple[str, ...] = (), *, tracked: bool = False
                  ) -> Callable[[Connection], str]:
        sender, subject, attachments = describe(content)
        sealed = seal(self._key, address, tunnel_id, content)

        def write(conn: Connection) -> str:
            # Looked up first; a concurrent twin makes the insert fail, and
            # the store runs this again, which then finds it.
            conn.execute(select(webmail_accounts.c.address).where(
                webmail_accounts.c.address == address).with_for_update())
            if _find(conn, address, tunnel_id) is not None:
                return REPEATED
            if tracked and _recalled_before(conn, tunnel_id, address):
                conn.execute(insert(webmail_messages).values(
                    address=address, tunnel_id=tunnel_id, received=received,
                    sender=sender[:998], subject=subject[:998], size=0,
                    attachments=attachments, read=False, receipt_to="", notified=False,
                    content=b"", expires=expires, ended=RECALLED, controls=""))
                record(conn, tunnel_id, address, received, RECALLED, "before it arrived")
                return RECALLED_BEFORE
            if limit and _usage(conn, address) + len(content) > limit:
                return FULL
            conn.execute(insert(webmail_messages).values(
                address=address, tunnel_id=tunnel_id, received=received,
                sender=sender[:998], subject=subject[:998], size=len(content),
                attachments=attachments, read=False, receipt_to=receipt_to, notified=False,
                content=sealed, expires=expires, ended="", controls=joined(controls)))
            if tracked:
                record(conn, tunnel_id, address, received, DELIVERED)
            return STORED

        return write

    async def usage(self, address: str) -> int:
        """
        The bytes in C{address}'s mailbox.
        """
        used: int = await self._store.run(_usage, address)
        return used

    async def count(self, address: str) -> int:
        def read(conn: Connection) -> int:
            return int(conn.execute(select(func.count()).select_from(webmail_messages).where(
                (webmail_messages.c.address == address) & _LIVE)).scalar_one())

        counted: int = await self._store.run(read)
        return counted

    async def listing(self, address: str, *, offset: int = 0, limit: int = 50,
                      ended: bool = False, now: float | None = None) -> list[Summary]:
        """
        The newest first; with those that ended (expired, recalled) when
        C{ended} is true.

        @param now: leave out those whose expiry has passed by then, too
            (the cleanup may not have come by yet).
        """
        condition = webmail_messages.c.address == address
        if not ended:
            condition &= _live(now)

        def read(conn: Connection) -> list[Summary]:
            rows = conn.execute(select(*_SUMMARY).where(condition)
                                .order_by(webmail_messages.c.received.desc(),
                                          webmail_messages.c.id.desc())
                                .offset(offset).limit(limit))
            return [Summary(**row._mapping) for row in rows]

        found: list[Summary] = await self._store.run(read)
        return found

    async def find(self, address: str, query: str = "", *, offset: int = 0, limit: int = 50,
                   now: float | None = None) -> tuple[list[Summary], int]:
        """
        A page of C{address}'s messages whose sender or subject contains
        C{query} (all when empty; case-insensitive), the newest first, and
        how many match in all.
        """
        condition = (webmail_messages.c.address == address) & _live(now)
        if query:
            pattern = "%" + re.sub(r"([\\%_])", r"\\\1", query.lower()) + "%"
            condition &= (func.lower(webmail_messages.c.sender).like(pattern, escape="\\")
                          | func.lower(webmail_messages.c.subject).like(pattern, escape="\\"))

        def read(conn: Connection) -> tuple[list[Summary], int]:
            total = int(conn.execute(select(func.count()).select_from(webmail_messages)
                                     .where(condition)).scalar_one())
            rows = conn.execute(select(*_SUMMARY).where(condition)
                                .order_by(webmail_messages.c.received.desc(),
                                          webmail_messages.c.id.desc())
                                .offset(offset).limit(limit))
            return [Summary(**row._mapping) for row in rows], total

        found: tuple[list[Summary], int] = await self._store.run(read)
        return found

    def key_for(self, purpose: str) -> bytes:
        """
        A key for another purpose (the TOTP secrets), derived from the
        mailbox key: one key, one purpose.
        """
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=f"cipherd webmail {purpose} v1".encode()).derive(self._key)

    async def held(self, address: str, message_id: int, *, now: float) -> Held | None:
        """
        One message of C{address}'s mailbox with its sender's controls, or
        C{None}.

        @raise MessageEnded: it expired (by C{now}, even before the
            cleanup came by) or was recalled.
        """
        def read(conn: Connection) -> Any:
            return conn.execute(select(webmail_messages.c.tunnel_id, webmail_messages.c.content,
                                       webmail_messages.c.expires, webmail_messages.c.ended,
                                       webmail_messages.c.controls)
                                .where((webmail_messages.c.address == address)
                                       & (webmail_messages.c.id == message_id))).first()

        row = await self._store.run(read)
        if row is None:
            return None
        if row.ended or (row.expires and row.expires <= now):
            raise MessageEnded(row.ended or EXPIRED, row.expires)
        return Held(unseal(self._key, address, row.tunnel_id, row.content),
                    split(row.controls))

    async def track(self, address: str, message_id: int, at: float, kind: str,
                    detail: str = "") -> None:
        """
        An event (a download, a reply) of one message on its timeline.
        """
        def write(conn: Connection) -> None:
            tunnel = conn.execute(select(webmail_messages.c.tunnel_id).where(
                (webmail_messages.c.address == address)
                & (webmail_messages.c.id == message_id))).scalar()
            if tunnel is not None:
                record(conn, tunnel, address, at, kind, detail)

        await self._store.run(write)

    async def recall(self, tunnel_id: str, addresses: Sequence[str] | None, at: float,
                     by: str) -> list[str]:
        """
        Recall a tunnelled message from C{addresses}' mailboxes (C{None}:
        from every recipient's): its content gone at once.

        @param by: who recalled it, for its timeline.
        @return: the addresses it was recalled from (not those that had it
            no longer).
        """
        condition = webmail_messages.c.tunnel_id == tunnel_id
        if addresses is not None:
            condition &= webmail_messages.c.address.in_(list(addresses))

        def write(conn: Connection) -> list[str]:
            recalled = sorted(a for a, _ in _ended(conn, condition, RECALLED, at, by))
            if not recalled and conn.execute(select(webmail_messages.c.id).where(
                    webmail_messages.c.tunnel_id == tunnel_id)).first() is None:
                # Nothing of it here yet: the recall waits for it.
                for address in addresses if addresses is not None else [EVERYONE]:
                    record(conn, tunnel_id, address, at, RECALLED, by)
            return recalled

        recalled: list[str] = await self._store.run(write)
        log.info("Webmail message {tunnel} recalled from {rcpts} {by}", tunnel=tunnel_id,
                 rcpts=", ".join(recalled) or "no mailbox (not there, or ended already)",
                 by=by)
        return recalled

    async def expire(self, now: float) -> dict[str, int]:
        """
        End every message whose expiry has passed.

        @return: how many, per mailbox.
        """
        due = (webmail_messages.c.expires > 0) & (webmail_messages.c.expires <= now)

        def write(conn: Connection) -> dict[str, int]:
            counts: dict[str, int] = {}
            for address, _ in _ended(conn, due, EXPIRED, now, ""):
                counts[address] = counts.get(address, 0) + 1
            return counts

        expired: dict[str, int] = await self._store.run(write)
        return expired

    async def mark_read(self, address: str, message_id: int, at: float) -> str | None:
        """
        Mark a message read; the first time, that is on its timeline.

        @return: where its read receipt goes, the first time it is read
            and one was asked for; else C{None}.
        """
        def write(conn: Connection) -> str | None:
            mine = ((webmail_messages.c.address == address)
                    & (webmail_messages.c.id == message_id))
            row = conn.execute(select(webmail_messages.c.read, webmail_messages.c.receipt_to,
                                      webmail_messages.c.tunnel_id)
                               .where(mine)).first()
            if row is None or row.read:
                return None
            changed = conn.execute(update(webmail_messages).where(
                mine & ~webmail_messages.c.read).values(read=True)).rowcount
            # Read by two requests at once: one receipt, one event.
            if not changed:
                return None
            record(conn, row.tunnel_id, address, at, OPENED)
            return row.receipt_to or None

        receipt: str | None = await self._store.run(write)
        return receipt

    async def delete(self, address: str, ids: Sequence[int], at: float = 0.0) -> int:
        """
        The recipient deletes messages (each on its timeline when C{at} is
        given).
        """
        mine = (webmail_messages.c.address == address) & webmail_messages.c.id.in_(list(ids))

        def write(conn: Connection) -> int:
            if at:
                for tunnel in conn.execute(select(webmail_messages.c.tunnel_id).where(
                        mine & _LIVE)).scalars():
                    record(conn, tunnel, address, at, DELETED)
            return int(conn.execute(delete(webmail_messages).where(mine)).rowcount)

        deleted: int = await self._store.run(write)
        return deleted

    async def delete_older_than(self, cutoff: float) -> dict[str, int]:
        """
        Remove every message received before C{cutoff}.

        @return: how many went, per mailbox.
        """
        def write(conn: Connection) -> dict[str, int]:
            old = webmail_messages.c.received < cutoff
            counts = {row.address: int(row.n) for row in conn.execute(
                select(webmail_messages.c.address, func.count().label("n"))
                .where(old).group_by(webmail_messages.c.address))}
            conn.execute(delete(webmail_messages).where(old))
            return counts

        removed: dict[str, int] = await self._store.run(write)
        return removed

    async def handled(self, tunnel_id: str, notified: Sequence[str], created: float,
                      received: float) -> None:
        """
        In one transaction: the tunnel's message is marked as told for
        C{notified}, and the tunnel id recorded as handled (a copy that
        comes again is not handled again: see L{tunnel_seen}).
        """
        def write(conn: Connection) -> None:
            if notified:
                conn.execute(update(webmail_messages).where(
                    (webmail_messages.c.tunnel_id == tunnel_id)
                    & webmail_messages.c.address.in_(list(notified))).values(notified=True))
                for address in notified:
                    record(conn, tunnel_id, address, received, NOTIFIED)
            _record_tunnel(conn, tunnel_id, created, received)

        await self._store.run(write)

    async def timeline(self, tunnel_id: str) -> Timeline | None:
        """
        What became of a tunnelled message, per recipient (see
        L{cipherd.webmail.tracking}).
        """
        found: Timeline | None = await self._store.run(read_timeline, tunnel_id)
        return found

    async def forget_events(self, before: float) -> int:
        """
        Forget the timelines' events older than C{before}.
        """
        def write(conn: Connection) -> int:
            return int(conn.execute(delete(webmail_events).where(
                webmail_events.c.at < before)).rowcount)

        forgotten: int = await self._store.run(write)
        return forgotten

    # Tunnel ids --------------------------------------------------------------

    async def forget_tunnels(self, before: float) -> int:
        """
        Forget the tunnel ids received before C{before} (older tunnels are
        refused by their age).
        """
        def write(conn: Connection) -> int:
            return int(conn.execute(delete(webmail_tunnels).where(
                webmail_tunnels.c.received < before)).rowcount)

        forgotten: int = await self._store.run(write)
        return forgotten


@dataclass(frozen=True)
class TunnelDelivery:
    """
    What L{Mailboxes.deliver_tunnel} did.

    @ivar seen: the tunnel id was handled before: nothing was stored.
    @ivar done: per address, L{STORED}, L{REPEATED} or L{FULL}.
    @ivar not_notified: who has the message stored but was not yet told
        (and has an account).
    @ivar accounts: their accounts, and those of everyone given it.
    """

    seen: bool
    done: dict[str, str]
    not_notified: list[str]
    accounts: dict[str, Account]


def _tunnel_seen(conn: Connection, tunnel_id: str) -> bool:
    return conn.execute(select(webmail_tunnels.c.tunnel_id).where(
        webmail_tunnels.c.tunnel_id == tunnel_id)).first() is not None


def _recalled_before(conn: Connection, tunnel_id: str, address: str) -> bool:
    return conn.execute(select(webmail_events.c.id).where(
        (webmail_events.c.tunnel_id == tunnel_id) & (webmail_events.c.kind == RECALLED)
        & webmail_events.c.address.in_([address, EVERYONE]))).first() is not None


def _not_notified(conn: Connection, tunnel_id: str, addresses: Sequence[str]) -> list[str]:
    return sorted(conn.execute(select(webmail_messages.c.address).where(
        (webmail_messages.c.tunnel_id == tunnel_id)
        & webmail_messages.c.address.in_(list(addresses))
        & ~webmail_messages.c.notified & _LIVE)).scalars())


def _record_tunnel(conn: Connection, tunnel_id: str, created: float, received: float) -> None:
    if not _tunnel_seen(conn, tunnel_id):
        conn.execute(insert(webmail_tunnels).values(
            tunnel_id=tunnel_id, created=created, received=received))
