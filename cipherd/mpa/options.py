"""
What a sender asks of a message by its header or subject: its expiry
(C{X-Cipherd-Expires: 7d}, or a subject tag like C{[expires 7d]}), and the
controls of L{cipherd.webmail.controls} (C{X-Cipherd-Controls: no-reply,
require-totp}, or tags like C{[no-reply]}) as far as the sender's settings
allow each (C{sender_control_*}).

The sender's settings name the field and the tag, give the expiry when
the sender sets none (C{message_expiry}) and the longest one a sender may
set (C{message_expiry_max}).  The field and the tag are removed before the
message leaves, whichever path it takes; the expiry goes with the message
into the webmail tunnel (the messenger ends it there) and bounds the PDF
reply link.  S/MIME and PGP mail cannot be taken back from a mailbox that
is not ours: for them the request is only removed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cipherd.core.headers import field_name, replace_subject, split_header
from cipherd.core.headers import subject as subject_of
from cipherd.cron import ScheduleError, parse_interval
from cipherd.webmail.controls import CONTROLS, control_of


@dataclass(frozen=True)
class SenderOptions:
    """
    @ivar expires: when the message expires (0: never).
    @ivar content: the message without the sender's requests.
    @ivar controls: the controls asked for and allowed.
    @ivar notes: what was asked and what came of it, for the MPA log.
    """

    expires: float
    content: bytes
    notes: tuple[str, ...] = ()
    controls: tuple[str, ...] = ()


def _without_field(content: bytes, name: str) -> bytes:
    fields, rest = split_header(content)
    kept = [raw for raw in fields if field_name(raw) != name]
    return content if len(kept) == len(fields) else b"".join(kept) + rest


# A sender may ask for seconds too (a message read at once, then gone).
_SECONDS = re.compile(r"([1-9][0-9]{0,5})s")


def _seconds(text: str) -> float | None:
    if found := _SECONDS.fullmatch(text):
        return float(found.group(1))
    try:
        return parse_interval(text).total_seconds()
    except ScheduleError:
        return None


def sender_options(content: bytes, fields: Sequence[tuple[str, str]], subject: str,
                   settings: Mapping[str, Any], now: float) -> SenderOptions:
    """
    The sender's requests of C{content}, whose decoded header fields are
    C{fields} and subject C{subject}, as the sender's C{settings} allow.
    """
    notes: list[str] = []
    asked: float | None = None
    name = str(settings["message_expiry_header"]).lower()
    if name and any(n == name for n, _ in fields):
        value = next(v for n, v in fields if n == name).strip()
        asked = _seconds(value.lower())
        if asked is None:
            notes.append(f"the expiry {value[:40]!r} in {settings['message_expiry_header']} "
                         "is not one (like 90s, 30m, 8h, 7d or 2w): ignored")
        content = _without_field(content, name)
    tag = str(settings["message_expiry_subject_tag"])
    if tag and (found := re.search(tag, subject)):
        in_subject = _seconds((found.group(1) or "").lower())
        if in_subject is None:
            notes.append(f"the expiry {found.group(0)[:40]!r} in the subject is not one: "
                         "ignored")
        asked = asked if asked is not None else in_subject
        cleaned = " ".join((subject[:found.start()] + subject[found.end():]).split())
        content = replace_subject(content, cleaned)
    lifetime = asked if asked is not None else _seconds(str(settings["message_expiry"]))
    longest = _seconds(str(settings["message_expiry_max"]))
    if lifetime is not None and longest is not None and lifetime > longest:
        notes.append(f"the expiry asked for is longer than the longest allowed "
                     f"({settings['message_expiry_max']}): cut to it")
        lifetime = longest
    content, controls = _controls(content, fields, settings, notes)
    return SenderOptions(now + lifetime if lifetime else 0.0, content, tuple(notes), controls)


def _controls(content: bytes, fields: Sequence[tuple[str, str]], settings: Mapping[str, Any],
              notes: list[str]) -> tuple[bytes, tuple[str, ...]]:
    """
    The controls the sender asks for by field and subject tags (each
    removed), those the settings do not allow left out with a note.
    """
    words: list[str] = []
    name = str(settings["sender_controls_header"]).lower()
    if name and any(n == name for n, _ in fields):
        words += [w for n, v in fields if n == name for w in re.split(r"[\s,;]+", v) if w]
        content = _without_field(content, name)
    tag = str(settings["sender_controls_subject_tag"])
    if tag:
        subject = subject_of(content)
        found = list(re.finditer(tag, subject))
        if found:
            words += [m.group(1) or "" for m in found]
            content = replace_subject(content, " ".join(re.sub(tag, " ", subject).split()))
    asked: set[str] = set()
    for word in words:
        control = control_of(word)
        if control is None:
            notes.append(f"the control {word[:40]!r} is not one ({', '.join(CONTROLS)}): "
                         "ignored")
        elif not settings[f"sender_control_{control}"]:
            notes.append(f"the control {control} is not allowed for this sender: ignored")
        else:
            asked.add(control)
    return content, tuple(c for c in CONTROLS if c in asked)
