"""
The audit log: every change an admin makes, through the pages or the API,
stored in the database (who, when, from where, how, what), listed on the
Audit page and by the API, and kept for the global setting *audit log
retention* (days).

An entry is written after the change it records has been made.  When the
database cannot take it, the change stands and the entry goes to the
service log with a warning (the change's own line is there in any case).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from cipherd.settings import REGISTRY, IAddressSettings, Scope, Values, validate_changes
from cipherd.store import DatabaseUnavailable, Store
from cipherd.store.audit import (
    MAX_PAGE,
    AuditEntry,
    AuditQuery,
    actors,
    add_entry,
    delete_before,
    find_entries,
)
from cipherd.web.common import arg, client_address, whole_number

log = Logger(namespace="cipherd.admin")

# What a secret's new value is recorded as.
CHANGED = "changed"
DAY = 86400.0


def setting_changes(before: Values, scope: Scope, changes: Mapping[str, Any]
                    ) -> dict[str, Any]:
    """
    What C{changes} (as L{validate_changes} takes them) change at C{scope},
    given the values C{before}: C{{name: {"from": old, "to": new}}}, with
    C{None} for "inherited", and L{CHANGED} for a secret; names whose value
    stays the same are left out.
    """
    clean, _ = validate_changes(scope, changes)
    own = before.by_scope.get(scope, {})
    found: dict[str, Any] = {}
    for name, new in clean.items():
        old = own.get(name)
        if old == new:
            continue
        found[name] = CHANGED if REGISTRY[name].secret else {"from": old, "to": new}
    return found


def changed_values(before: Mapping[str, Any], after: Mapping[str, Any], names: Iterable[str]
                   ) -> dict[str, Any]:
    """
    C{{name: {"from": old, "to": new}}} for those of C{names} whose value
    differs between C{before} and C{after} (a config without secrets).
    """
    return {name: {"from": before.get(name), "to": after.get(name)}
            for name in sorted(names) if before.get(name) != after.get(name)}


# The action groups, for the page's filter.
ACTION_GROUPS = {
    "settings": "Settings", "mta": "MTA", "queue": "Queue", "certificates": "Certificates",
    "ctl": "Certificate trust list", "crls": "CRLs", "pgp": "PGP keys", "tls": "TLS certificate",
    "network": "Network", "webmail": "Webmail accounts", "admin": "Admin accounts",
    "session": "Logins", "backup": "Backup and restore",
}
PAGE_SIZE = 100


def _time_bound(text: str, end: bool) -> float:
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    # A minute as typed in the form covers its whole minute.
    return when.timestamp() + (60.0 if end and when.second == 0 else 0.0)


def audit_query(request: IRequest) -> tuple[AuditQuery, dict[str, str], dict[str, str]]:
    """
    The audit log search of a request (the page and the API): (the query,
    what was typed, errors by field).  C{q} text, C{actor}, C{action}
    (name or group), C{since} and C{until} (ISO 8601, UTC unless a zone
    is given), C{before} (an entry id: the next page), C{limit}.
    """
    names = ("q", "actor", "action", "since", "until", "before", "limit")
    typed = {name: (arg(request, name) or "").strip() for name in names}
    errors: dict[str, str] = {}
    bounds: dict[str, float] = {}
    for name in ("since", "until"):
        if typed[name]:
            try:
                bounds[name] = _time_bound(typed[name], name == "until")
            except ValueError:
                errors[name] = f"{typed[name]!r} is not a date and time (YYYY-MM-DD HH:MM)"
    if "since" in bounds and "until" in bounds and bounds["since"] >= bounds["until"]:
        errors["until"] = "must be after the start"
    numbers: dict[str, int] = {}
    for name, top in (("before", 2**62), ("limit", MAX_PAGE)):
        if typed[name]:
            number = whole_number(typed[name])
            if number is None or not 1 <= number <= top:
                errors[name] = f"must be a whole number from 1 to {top}"
            else:
                numbers[name] = number
    query = AuditQuery(actor=typed["actor"], action=typed["action"], text=typed["q"],
                       since=bounds.get("since"), until=bounds.get("until"),
                       before_id=numbers.get("before"), limit=numbers.get("limit", PAGE_SIZE))
    return query, typed, errors


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id, "at": datetime.fromtimestamp(entry.at, UTC).isoformat(),
        "actor": entry.actor, "via": entry.via, "client": entry.client,
        "action": entry.action, "target": entry.target, "summary": entry.summary,
        "details": entry.details,
    }


class AuditTrail:
    """
    Records and lists the audit log.
    """

    def __init__(self, store: Store, settings: IAddressSettings, clock: IReactorTime) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock

    async def record(self, actor: str, via: str, client: str, action: str, summary: str,
                     *, target: str = "", details: Mapping[str, Any] | None = None) -> None:
        """
        Log and store one change.

        @param actor: the admin account that made it.
        @param via: C{"web"}, C{"api"} or C{"cli"}.
        @param client: the address the request came from.
        @param action: its short name, C{group.verb} (C{"settings.change"}).
        @param summary: what was done, as a sentence after the actor's name
            ("changed encrypt_mode at domain example.com"); never a secret.
        @param details: what changed (L{setting_changes}); never a secret.
        """
        entry = self.entry(actor, via, client, action, summary, target=target,
                           details=details)
        try:
            await self._store.run(add_entry, entry)
        except DatabaseUnavailable as e:
            log.warn("The audit log could not record that admin {actor!r} {summary}: {reason}",
                     actor=actor, summary=summary, reason=e.reason)

    def entry(self, actor: str, via: str, client: str, action: str, summary: str,
              *, target: str = "", details: Mapping[str, Any] | None = None) -> AuditEntry:
        """
        The entry L{record} stores, logged, for a caller that stores it in a
        transaction of its own (L{cipherd.store.audit.add_entry}).
        """
        log.info("Admin {actor!r} {summary} ({via}, from {client})", actor=actor,
                 summary=summary, via=via, client=client)
        return AuditEntry(self._clock.seconds(), actor, via, client, action, target, summary,
                          dict(details or {}))

    async def record_request(self, request: IRequest, actor: str, via: str, action: str,
                             summary: str, *, target: str = "",
                             details: Mapping[str, Any] | None = None) -> None:
        """
        L{record} for a change made by C{request}.
        """
        await self.record(actor, via, client_address(request), action, summary,
                          target=target, details=details)

    async def settings_changed(self, request: IRequest, actor: str, via: str, scope: Scope,
                               before: Values, changes: Mapping[str, Any]) -> None:
        """
        Record the settings C{changes} made at C{scope}, which had the values
        C{before} (L{setting_changes}); nothing when no value changed.
        """
        found = setting_changes(before, scope, changes)
        if found:
            await self.record_request(
                request, actor, via, "settings.change",
                f"changed {', '.join(sorted(found))} at {scope.describe()}",
                target=scope.describe(), details=found)

    async def find(self, query: AuditQuery) -> list[AuditEntry]:
        return await self._store.read(find_entries, query)

    async def actors(self) -> list[str]:
        return await self._store.read(actors)

    async def expire(self) -> int:
        """
        Delete entries older than the retention setting.
        """
        values = (await self._settings.by_address([""]))[""]
        days = values["audit_retention_days"]
        deleted: int = await self._store.run(delete_before, self._clock.seconds() - days * DAY)
        if deleted:
            log.info("Deleted {count} audit log entries older than {days} days",
                     count=deleted, days=days)
        return deleted
