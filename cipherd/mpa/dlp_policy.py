"""
Data loss prevention as processing uses it: the patterns an administrator
keeps (Admin → DLP, in the database, shared by every node), the verdict on
a message (which rules hit, what cannot be searched, and the one action
that follows), the quarantine (messages kept sealed under a key derived
from the key-encryption key, released or deleted by an administrator), and
the mark a released message carries so that it is processed as if no rule
had matched.

Which patterns apply and what becomes of what cannot be searched are the
sender's settings (C{dlp_enabled}, C{dlp_patterns},
C{dlp_unscannable_action}, C{dlp_bomb_action}), with the usual inheritance.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from twisted.internet.interfaces import IReactorTime

from cipherd.core.headers import header_fields, without_fields
from cipherd.mpa.dlp import BUILTIN, Pattern, PatternError, Scanner, ScanResult, check_pattern
from cipherd.pki.keywrap import seal_bytes, unseal_bytes
from cipherd.settings import listed
from cipherd.store import Store
from cipherd.store import dlp as q
from cipherd.threads import IBlockingRunner

# The header a released message carries: the quarantine id and an HMAC of
# the id and the message under a key of this deployment.
RELEASED = "X-Cipherd-DLP-Released"
# The header warn adds, with the rules' names.
WARNING = "X-Cipherd-DLP"
# How stale the patterns may be on a node when another node changed them.
REFRESH = 1.0
# The actions in order of strength: the strongest that applies is taken.
STRENGTH = {"none": 0, "warn": 1, "encrypt": 2, "quarantine": 3, "block": 4}


def _key(kek: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(kek)


@dataclass(frozen=True)
class Hit:
    """
    One reason for a verdict: a rule that hit (C{rule} its name) or a part
    that cannot be searched (C{rule} C{"unscannable"} or C{"zip-bomb"}).
    """

    rule: str
    action: str
    matches: int
    where: tuple[str, ...]
    excerpt: str

    def json(self) -> dict[str, Any]:
        return {"rule": self.rule, "action": self.action, "matches": self.matches,
                "where": list(self.where), "excerpt": self.excerpt}


@dataclass(frozen=True)
class Verdict:
    """
    What DLP says of a message: the action (C{"none"}, C{"warn"},
    C{"encrypt"}, C{"quarantine"}, C{"block"}) and why.
    """

    action: str
    hits: tuple[Hit, ...] = ()
    truncated: bool = False

    def rules(self, action: str | None = None) -> list[str]:
        """
        The names of the rules behind the verdict (those of C{action}).
        """
        return list(dict.fromkeys(h.rule for h in self.hits
                                  if action is None or h.action == action))


NOTHING = Verdict("none")


@dataclass
class _Kept:
    patterns: list[Pattern] = field(default_factory=list)
    read_at: float | None = None
    scanners: dict[tuple[str, ...], Scanner] = field(default_factory=dict)


def pattern_of(row: q.PatternRow) -> Pattern:
    return Pattern(row.name, row.regex, row.threshold, row.validator, row.action, row.words,
                   row.description)


class DataLossPrevention:
    """
    The patterns, the verdicts and the quarantine of a deployment.

    @param kek: the key-encryption key: the quarantine's key and the
        release mark's key are derived from it.
    @param crypto: where the search runs (CPU work).
    """

    def __init__(self, store: Store, crypto: IBlockingRunner, clock: IReactorTime,
                 kek: bytes) -> None:
        self._store = store
        self._crypto = crypto
        self._clock = clock
        self._sealing = _key(kek, b"cipherd dlp quarantine v1")
        self._marking = _key(kek, b"cipherd dlp release v1")
        self._kept = _Kept()

    # Patterns ------------------------------------------------------------------

    async def patterns(self) -> list[Pattern]:
        """
        The patterns in force, by name (kept up to L{REFRESH} seconds).
        """
        now = self._clock.seconds()
        kept = self._kept
        if kept.read_at is None or not kept.read_at <= now < kept.read_at + REFRESH:
            rows = await self._store.read(q.list_patterns)
            if kept is self._kept:  # nothing changed here meanwhile
                fresh = [pattern_of(r) for r in rows]
                if fresh != kept.patterns:
                    self._kept = _Kept(fresh, now)
                else:
                    kept.read_at = now
                return fresh
        return list(self._kept.patterns)

    async def save(self, pattern: Pattern) -> bool:
        """
        Add or replace a pattern.

        @return: whether it is new.
        @raise PatternError: with C{errors} by field; nothing saved.
        """
        errors = check_pattern(pattern)
        if errors:
            error = PatternError("; ".join(f"{k}: {v}" for k, v in errors.items()))
            error.errors = errors  # type: ignore[attr-defined]
            raise error
        row = q.PatternRow(pattern.name, "" if pattern.words else pattern.regex,
                           pattern.words, pattern.threshold, pattern.validator,
                           pattern.action, pattern.description, self._clock.seconds())
        try:
            return bool(await self._store.run(q.put_pattern, row))
        finally:
            self._kept = _Kept()

    async def delete(self, name: str) -> bool:
        try:
            return bool(await self._store.run(q.delete_pattern, name))
        finally:
            self._kept = _Kept()

    async def add_builtin(self, names: Sequence[str]) -> list[str]:
        """
        Add patterns of the built-in library (L{BUILTIN}) that are not there.

        @return: those added.
        """
        there = {p.name for p in await self.patterns()}
        added = []
        for name in names:
            if name not in BUILTIN:
                raise PatternError(f"There is no built-in pattern {name!r}; there are "
                                   f"{', '.join(BUILTIN)}.")
            if name not in there:
                await self.save(BUILTIN[name])
                added.append(name)
        return added

    def _scanner(self, patterns: list[Pattern]) -> Scanner:
        key = tuple(sorted(p.name for p in patterns))
        kept = self._kept
        scanner = kept.scanners.get(key)
        if scanner is None:
            scanner = Scanner(patterns)
            kept.scanners[key] = scanner
        return scanner

    # The verdict ------------------------------------------------------------------

    async def inspect(self, content: bytes, settings: Mapping[str, Any]) -> Verdict:
        """
        The verdict on C{content} under the sender's C{settings}.
        """
        if not settings["dlp_enabled"]:
            return NOTHING
        wanted = set(listed(settings["dlp_patterns"]))
        patterns = [p for p in await self.patterns() if not wanted or p.name in wanted]
        scanner = self._scanner(patterns)
        result: ScanResult = await self._crypto.run(scanner.scan, content)
        hits = [Hit(f.pattern.name, f.pattern.action, f.matches, f.where, f.excerpt)
                for f in result.findings]
        for problem in result.problems:
            action = settings["dlp_bomb_action"] if problem.kind == "zip-bomb" \
                else settings["dlp_unscannable_action"]
            hits.append(Hit(problem.kind, action, 0, (problem.where,), problem.why))
        hits = [h for h in hits if h.action != "none"]
        if not hits:
            return Verdict("none", truncated=result.truncated)
        action = max((h.action for h in hits), key=STRENGTH.__getitem__)
        return Verdict(action, tuple(hits), result.truncated)

    # Quarantine ---------------------------------------------------------------------

    async def quarantine(self, sender: str, recipients: Sequence[str], subject: str,
                         content: bytes, verdict: Verdict) -> str:
        """
        Keep a message in the quarantine.

        @return: its quarantine id.
        """
        quarantine_id = os.urandom(8).hex()
        sealed = await self._crypto.run(seal_bytes, self._sealing, content, quarantine_id)
        await self._store.run(q.put_quarantined, q.QuarantinedRow(
            quarantine_id, self._clock.seconds(), sender, tuple(recipients), subject[:1000],
            len(content), [h.json() for h in verdict.hits], sealed))
        return quarantine_id

    async def quarantined(self, offset: int = 0, limit: int = 100) -> list[q.QuarantinedRow]:
        return await self._store.read(q.list_quarantined, offset, limit)

    async def count_quarantined(self) -> int:
        return int(await self._store.read(q.count_quarantined))

    async def get(self, quarantine_id: str) -> q.QuarantinedRow | None:
        if not _is_id(quarantine_id):
            return None
        row = await self._store.read(q.get_quarantined, quarantine_id)
        return row

    def headers(self, row: q.QuarantinedRow) -> list[tuple[str, str]]:
        """
        The header fields of a quarantined message (decoded), for the admin.
        """
        assert row.content is not None
        return header_fields(unseal_bytes(self._sealing, row.content, row.id))

    async def take(self, quarantine_id: str) -> tuple[q.QuarantinedRow, bytes] | None:
        """
        Take a message out of the quarantine (to release or delete it).

        @return: it with its content, or C{None} (not there, or taken by
            another admin a moment ago).
        """
        if not _is_id(quarantine_id):
            return None
        row = await self._store.run(q.take_quarantined, quarantine_id)
        if row is None or row.content is None:
            return None
        content = await self._crypto.run(unseal_bytes, self._sealing, row.content, row.id)
        return row, content

    # The release mark -----------------------------------------------------------

    def mark_released(self, quarantine_id: str, content: bytes) -> bytes:
        """
        C{content} with the header that lets it through DLP once.
        """
        mac = hmac.new(self._marking, quarantine_id.encode() + b"\0" +
                       hashlib.sha256(content).digest(), "sha256").hexdigest()
        return f"{RELEASED}: {quarantine_id} {mac}\r\n".encode() + content

    def released(self, content: bytes, fields: Sequence[tuple[str, str]] | None = None
                 ) -> tuple[bool, bytes]:
        """
        Whether C{content} is a released message (its mark true), and the
        content without any mark (a forged one is removed too).

        @param fields: C{content}'s header fields, when they were read already.
        """
        if fields is None:
            fields = header_fields(content)
        marks = [value for name, value in fields if name.lower() == RELEASED.lower()]
        if not marks:
            return False, content
        rest = without_fields(content, RELEASED)
        if len(marks) != 1:
            return False, rest
        quarantine_id, _, mac = marks[0].strip().partition(" ")
        expected = hmac.new(self._marking, quarantine_id.encode() + b"\0" +
                            hashlib.sha256(rest).digest(), "sha256").hexdigest()
        return hmac.compare_digest(mac.strip(), expected), rest


def _is_id(value: str) -> bool:
    return len(value) == 16 and all(c in "0123456789abcdef" for c in value)


def findings_json(row: q.QuarantinedRow) -> Any:
    return json.loads(json.dumps(row.findings))
