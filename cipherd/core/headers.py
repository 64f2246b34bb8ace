"""
A message's header block, read and changed on its raw bytes: the body and
every field not touched stay byte for byte as they came (signatures and
the webmail original depend on it).
"""

from __future__ import annotations

import re
from email.header import Header, decode_header, make_header

_FIELD_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")


def split_header(content: bytes) -> tuple[list[bytes], bytes]:
    """
    The header's fields (each with its folded lines and line ends) and the
    rest (the empty line and the body).
    """
    end = content.find(b"\r\n\r\n")
    if end < 0:
        head, rest = content, b""
    else:
        head, rest = content[:end + 2], content[end + 2:]
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields, rest


def field_name(raw: bytes) -> str:
    match = _FIELD_NAME.match(raw)
    return match.group(1).decode("ascii").lower() if match else ""


def _value(raw: bytes) -> str:
    value = raw.split(b":", 1)[1] if b":" in raw else b""
    text = value.decode("utf-8", "replace")
    text = re.sub(r"\r?\n(?=[ \t])", "", text).strip()
    try:
        return str(make_header(decode_header(text)))
    except Exception:  # a broken encoded word: the text as it stands
        return text


def header_fields(content: bytes) -> list[tuple[str, str]]:
    """
    The header's fields as C{(name, decoded value)}, in order.
    """
    fields, _ = split_header(content)
    return [(name, _value(raw)) for raw in fields if (name := field_name(raw))]


def subject(content: bytes) -> str:
    return next((value for name, value in header_fields(content) if name == "subject"), "")


def _encode(name: str, value: str) -> bytes:
    value = " ".join(value.split())  # no line break can get in
    if value.isascii():
        return f"{name}: {value}\r\n".encode("ascii")
    encoded = Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded}\r\n".encode("ascii")


def replace_subject(content: bytes, value: str) -> bytes:
    """
    C{content} with its (first) Subject field set to C{value}.
    """
    fields, rest = split_header(content)
    for i, raw in enumerate(fields):
        if field_name(raw) == "subject":
            fields[i] = _encode("Subject", value)
            break
    return b"".join(fields) + rest


def without_fields(content: bytes, prefix: str) -> bytes:
    """
    C{content} without the header fields whose name starts with C{prefix}
    (case-insensitive).
    """
    prefix = prefix.lower()
    fields, rest = split_header(content)
    kept = [raw for raw in fields if not field_name(raw).startswith(prefix)]
    if len(kept) == len(fields):
        return content
    return b"".join(kept) + rest


def with_fields(content: bytes, added: list[tuple[str, str]]) -> bytes:
    """
    C{content} with C{added} fields on top of its header.
    """
    return b"".join(_encode(name, value) for name, value in added) + content
