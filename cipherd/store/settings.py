"""
Queries for property values, domains and users.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, and_, delete, insert, or_, select, update
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from cipherd.settings import (
    REGISTRY,
    EffectiveValues,
    IAddressSettings,
    Level,
    Resolved,
    Scope,
    Values,
    lookup_chain,
    scope_of_address,
    validate_changes,
)
from cipherd.store import Store
from cipherd.store.schema import domains, property_values, users


def load_values(conn: Connection, scopes: Iterable[Scope]) -> Values:
    """
    The values set at each of C{scopes}.
    """
    scopes = list(scopes)
    result = Values({scope: {} for scope in scopes})
    if not scopes:
        return result
    condition = or_(
        *(
            and_(property_values.c.level == s.level.value, property_values.c.scope == s.key)
            for s in scopes
        )
    )
    for row in conn.execute(select(property_values).where(condition)):
        scope = Scope(Level(row.level), row.scope)
        result.by_scope[scope][row.name] = json.loads(row.value)
    return result


def apply_changes(conn: Connection, scope: Scope, changes: Mapping[str, Any]) -> None:
    """
    Set (value) or clear (C{None}) properties at C{scope}.  Changes must
    have been validated.
    """
    where = (property_values.c.level == scope.level.value) & (property_values.c.scope == scope.key)
    for name, value in changes.items():
        row = where & (property_values.c.name == name)
        if value is None:
            conn.execute(delete(property_values).where(row))
            continue
        encoded = json.dumps(value)
        if conn.execute(update(property_values).where(row).values(value=encoded)).rowcount == 0:
            conn.execute(
                insert(property_values).values(
                    level=scope.level.value, scope=scope.key, name=name, value=encoded
                )
            )


def _table_for(level: Level) -> tuple[Any, Any]:
    if level is Level.DOMAIN:
        return domains, domains.c.name
    return users, users.c.email


def list_scopes(conn: Connection, level: Level) -> list[str]:
    """
    The domains or users that exist, sorted.
    """
    _, key = _table_for(level)
    return list(conn.execute(select(key).order_by(key)).scalars())


def overridden_in(conn: Connection, level: Level) -> dict[str, Sequence[str]]:
    """
    The names of the settings each domain or user of C{level} sets itself,
    sorted, by domain or user (those that set none are left out).
    """
    found: dict[str, list[str]] = {}
    for row in conn.execute(select(property_values.c.scope, property_values.c.name)
                            .where(property_values.c.level == level.value)
                            .order_by(property_values.c.scope, property_values.c.name)):
        found.setdefault(row.scope, []).append(row.name)
    return dict(found)


def scope_exists(conn: Connection, scope: Scope) -> bool:
    if scope.level is Level.GLOBAL:
        return True
    _, key = _table_for(scope.level)
    return conn.execute(select(key).where(key == scope.key)).first() is not None


def add_scope(conn: Connection, scope: Scope, now: float) -> bool:
    """
    Add a domain or user.

    @return: C{False} if it existed already.
    """
    if scope_exists(conn, scope):
        return False
    table, key = _table_for(scope.level)
    conn.execute(insert(table).values({key.name: scope.key, "created": now}))
    return True


def delete_scope(conn: Connection, scope: Scope) -> bool:
    """
    Delete a domain or user and every value set on it.

    @return: C{False} if it did not exist.
    """
    table, key = _table_for(scope.level)
    conn.execute(
        delete(property_values).where(
            (property_values.c.level == scope.level.value) & (property_values.c.scope == scope.key)
        )
    )
    return conn.execute(delete(table).where(key == scope.key)).rowcount > 0


@implementer(IAddressSettings)
class SettingsRepository:
    """
    Settings as the rest of cipherd sees them: effective values with their
    origin, validated updates, and the domains and users they are set on.
    """

    # How long mail processing may use values it read: a change made on this
    # node applies at once, one made on another node within this time.
    CACHE_SECONDS = 1.0
    _CACHE_LIMIT = 10_000

    def __init__(self, store: Store, clock: IReactorTime) -> None:
        self._store = store
        self._clock = clock
        self._cache: dict[Scope, tuple[float, Values]] = {}
        # Changes made through this repository: a processing worker (another
        # process, see L{cipherd.workers}) forgets what it read when this moves.
        self.changes = 0

    def forget(self) -> None:
        """
        Read every value again next time (a change was made elsewhere).
        """
        self._cache.clear()

    def _changed(self) -> None:
        self._cache.clear()
        self.changes += 1

    async def values(self, scope: Scope) -> Values:
        """
        The values set along C{scope}'s lookup chain.
        """
        return await self._store.read(load_values, lookup_chain(scope))

    async def effective(self, scope: Scope) -> dict[str, Resolved]:
        return (await self.values(scope)).resolve_all(scope)

    async def effective_many(self, scopes: Iterable[Scope]
                             ) -> dict[Scope, Mapping[str, Any]]:
        """
        The effective values (without their origin) at each of C{scopes},
        read in one query, or from what was read less than
        L{CACHE_SECONDS} ago: what mail processing needs for a message's
        sender and recipients.
        """
        scopes = list(dict.fromkeys(scopes))
        now = self._clock.seconds()
        missing = [s for s in scopes if (cached := self._cache.get(s)) is None
                   or cached[0] <= now]
        if missing:
            chains = list(dict.fromkeys(s for scope in missing for s in lookup_chain(scope)))
            values = await self._store.read(load_values, chains)
            if len(self._cache) > self._CACHE_LIMIT:
                self._cache.clear()
            for scope in missing:
                self._cache[scope] = (now + self.CACHE_SECONDS, values)
        return {scope: EffectiveValues(self._cache[scope][1], scope) for scope in scopes}

    async def by_address(self, addresses: Iterable[str]) -> dict[str, Mapping[str, Any]]:
        """
        The effective values for mail of each of C{addresses} (see
        L{scope_of_address}; C{""} gives the global ones), in one query.
        """
        scopes = {address: scope_of_address(address) for address in addresses}
        values = await self.effective_many(scopes.values())
        return {address: values[scope] for address, scope in scopes.items()}

    async def get(self, scope: Scope, name: str) -> Any:
        """
        The effective value of property C{name} at C{scope}.
        """
        return (await self.values(scope)).resolve(scope, REGISTRY[name]).value

    async def update(self, scope: Scope, changes: Mapping[str, Any]) -> dict[str, str]:
        """
        Validate and apply C{changes} (C{None} = inherit) in one transaction,
        adding the domain or user if it does not exist yet.

        @return: C{{name: message}} for refused values; when not empty,
            nothing was changed.
        """
        clean, errors = validate_changes(scope, changes)
        if errors:
            return errors
        now = self._clock.seconds()

        def write(conn: Connection) -> None:
            if scope.level is not Level.GLOBAL:
                add_scope(conn, scope, now)
            apply_changes(conn, scope, clean)

        await self._store.run(write)
        self._changed()
        return {}

    async def list(self, level: Level) -> list[str]:
        return await self._store.read(list_scopes, level)

    async def overridden(self, level: Level) -> dict[str, Sequence[str]]:
        """
        What each domain or user of C{level} sets itself: L{overridden_in}.
        """
        found: dict[str, Sequence[str]] = await self._store.read(overridden_in, level)
        return found

    async def exists(self, scope: Scope) -> bool:
        return await self._store.read(scope_exists, scope)

    async def add(self, scope: Scope) -> bool:
        added: bool = await self._store.run(add_scope, scope, self._clock.seconds())
        self._changed()
        return added

    async def delete(self, scope: Scope) -> bool:
        deleted: bool = await self._store.run(delete_scope, scope)
        self._changed()
        return deleted
