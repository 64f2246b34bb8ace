"""
Showing a stored message safely: its headers, its text, its HTML made
harmless, its attachments as downloads.

HTML mail is hostile until proven otherwise, so three independent walls
stand between it and the reader; any one of them alone stops script:

1. **Sanitizing** (L{sanitize}, nh3/ammonia): only a list of formatting
   tags and attributes survives; C{<script>}, C{<style>}, event handlers
   (C{onerror}, ...), forms, frames, C{<base>}, C{<meta>}, C{srcset} and
   the C{background} attribute go; URLs keep only the schemes
   C{http}, C{https}, C{mailto} (C{javascript:} and C{data:} links go);
   C{style} attributes keep only properties that cannot load anything
   (no C{background}, C{content}, C{cursor}, C{list-style-image},
   C{border-image}, C{position}).  Images: C{cid:} references to the
   message's own image parts are inlined as C{data:} URIs (raster types
   only, never SVG), so nothing is fetched for them; remote images
   (C{http:}/C{https:}) are removed and counted unless the reader chose
   *show remote content* for this message.
2. **Its own document** (the portal's C{/message/<id>/body}), shown in an
   C{<iframe sandbox>} *without* C{allow-scripts} and without
   C{allow-same-origin}: even markup the sanitizer missed can run no
   script, submit no form and reach neither the portal's cookies nor its
   pages (an opaque origin).
3. **Its own Content-Security-Policy**: C{default-src 'none'; img-src data:
   [https: http: only when remote content was allowed]; style-src
   'unsafe-inline'; sandbox allow-popups ...} — no script source at all,
   no connections, no fonts, no frames, no form targets, and sandboxed
   even when the frame's URL is opened on its own.  Remote images are
   therefore not fetched, whatever the HTML says, until the reader asks.

Links open in a new tab (C{target=_blank}, C{rel=noopener noreferrer})
and, with the page's C{Referrer-Policy: no-referrer}, tell the linked site
nothing of the portal.
"""

from __future__ import annotations

import base64
import email
import email.policy
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from email.utils import getaddresses
from html import escape as html_escape
from html import unescape as html_unescape
from typing import Any
from urllib.parse import quote

import nh3

_TAGS = {
    "a", "abbr", "address", "b", "bdi", "bdo", "blockquote", "br", "caption", "center",
    "cite", "code", "col", "colgroup", "dd", "del", "dfn", "div", "dl", "dt", "em",
    "figcaption", "figure", "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img",
    "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "samp", "small", "span",
    "strike", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead",
    "time", "tr", "tt", "u", "ul", "var", "wbr",
}
_CELL = {"align", "valign", "width", "height", "colspan", "rowspan", "bgcolor", "nowrap"}
_ATTRIBUTES = {
    "*": {"style", "title", "dir", "lang", "align"},
    "a": {"href"},
    "img": {"src", "alt", "width", "height", "border"},
    "font": {"color", "face", "size"},
    "table": {"width", "border", "cellpadding", "cellspacing", "bgcolor", "summary"},
    "td": _CELL, "th": _CELL, "tr": {"valign", "bgcolor"},
    "col": {"width", "span"}, "colgroup": {"width", "span"},
    "ol": {"start", "type"}, "ul": {"type"}, "li": {"value"},
}
# Properties that change how text looks and cannot load anything.
_STYLE_PROPERTIES = {
    "color", "background-color", "font", "font-family", "font-size", "font-style",
    "font-weight", "font-variant", "text-align", "text-decoration", "text-indent",
    "text-transform", "letter-spacing", "word-spacing", "line-height", "white-space",
    "vertical-align", "direction", "margin", "margin-top", "margin-right", "margin-bottom",
    "margin-left", "padding", "padding-top", "padding-right", "padding-bottom",
    "padding-left", "border", "border-top", "border-right", "border-bottom", "border-left",
    "border-color", "border-style", "border-width", "border-collapse", "border-spacing",
    "border-radius", "width", "height", "max-width", "min-width", "max-height",
    "min-height", "display", "list-style-type", "table-layout", "word-break",
    "overflow-wrap",
}
_URL_SCHEMES = {"http", "https", "mailto", "cid"}
# Raster images only: an SVG is a document that may carry script.
_INLINE_IMAGE_TYPES = {"image/png", "image/gif", "image/jpeg", "image/webp", "image/bmp"}
# Never handed to a browser under their own type, even as a download.
_ACTIVE_TYPES = {
    "text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml",
    "text/javascript", "application/javascript", "application/ecmascript",
    "text/ecmascript", "application/x-shockwave-flash", "text/xsl", "multipart/x-mixed-replace",
}
# Served under their own type (as downloads, in a sandbox): the rest as
# application/octet-stream.
_PASSIVE_TYPES = {
    "text/plain", "text/csv", "text/calendar", "text/vcard", "application/pdf",
    "application/zip", "application/gzip", "application/msword", "application/rtf",
    "application/vnd.ms-excel", "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.oasis.opendocument.text", "application/vnd.oasis.opendocument.spreadsheet",
    "application/pkcs7-signature", "application/pgp-signature", "message/rfc822",
}
_PASSIVE_MAJOR = {"audio", "image", "video"}
_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}")
MAX_FILENAME = 150
# The most inline (cid:) image data one message page carries, references
# counted each time.
MAX_INLINE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Part:
    """
    An attachment (or inline part) of a message.

    @ivar index: its place among the message's leaf parts, for its URL.
    """

    index: int
    filename: str
    content_type: str
    size: int


@dataclass
class Shown:
    """
    A message as the portal shows it.

    @ivar html: sanitized HTML, or C{None} for a message without HTML.
    @ivar remote_blocked: remote resources removed from C{html}.
    """

    subject: str = ""
    sender: str = ""
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    date: str = ""
    message_id: str = ""
    text: str = ""
    html: str | None = None
    remote_blocked: int = 0
    attachments: list[Part] = field(default_factory=list)


def parse(content: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def header(message: Message, name: str) -> str:
    try:
        value = str(message.get(name, "") or "")
    except Exception:  # a header the parser cannot make sense of
        return ""
    return plain_text(value)


def leaves(message: EmailMessage) -> list[EmailMessage]:
    return [part for part in message.walk() if not part.is_multipart()]


def payload(part: Message) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:  # a transfer encoding that does not decode
        return b""
    return data if isinstance(data, bytes) else b""


def _text(part: EmailMessage | None) -> str:
    if part is None:
        return ""
    try:
        content = part.get_content()
    except Exception:  # an unknown charset or a broken encoding
        content = payload(part).decode("utf-8", "replace")
    return content if isinstance(content, str) else ""


def _content_id(part: Message) -> str:
    return header(part, "Content-ID").strip("<>")


def _body(message: EmailMessage, kind: str) -> EmailMessage | None:
    try:
        found = message.get_body(preferencelist=(kind,))
    except Exception:  # a structure get_body cannot walk
        return None
    return found if isinstance(found, EmailMessage) else None


def read(content: bytes, *, allow_remote: bool = False) -> Shown:
    """
    What to show of a stored message.
    """
    try:
        return _read(content, allow_remote=allow_remote)
    except RecursionError:
        # A structure nested thousands deep: nothing of it is shown but
        # the way to look at it elsewhere.
        return Shown(text="This message is built too deeply to be shown here. You can "
                          "download it (.eml) and open it with a mail program.")


def _read(content: bytes, *, allow_remote: bool) -> Shown:
    return read_parsed(parse(content), allow_remote=allow_remote)


def read_parsed(message: EmailMessage, *, allow_remote: bool = False) -> Shown:
    """
    L{read} for a message parsed already (L{parse}).

    @raise RecursionError: a structure nested too deeply to walk.
    """
    html_part, text_part = _body(message, "html"), _body(message, "plain")
    parts = leaves(message)
    images = {_content_id(p): p for p in parts
              if _content_id(p) and p.get_content_type() in _INLINE_IMAGE_TYPES}
    shown = Shown(
        subject=header(message, "Subject"), sender=header(message, "From"),
        to=[a for _, a in getaddresses([header(message, "To")]) if a],
        cc=[a for _, a in getaddresses([header(message, "Cc")]) if a],
        date=header(message, "Date"), message_id=header(message, "Message-ID"),
        text=_text(text_part))
    used: set[str] = set()
    if html_part is not None:
        shown.html, shown.remote_blocked = sanitize(_text(html_part), images,
                                                    allow_remote=allow_remote, used=used)
        if not shown.text:
            shown.text = html_text(shown.html)
    for index, part in enumerate(parts):
        if part is html_part or part is text_part or _content_id(part) in used:
            continue
        shown.attachments.append(Part(index, safe_filename(part.get_filename(), index),
                                      part.get_content_type(), len(payload(part))))
    return shown


_BREAKS = re.compile(r"(?i)<br\s*/?>|</(p|div|tr|h[1-6]|li|blockquote|pre|table)>")


def html_text(html: str) -> str:
    """
    The text of sanitized HTML, its paragraphs and rows on lines of their
    own (for printing and for messages without a text part).
    """
    text = nh3.clean(_BREAKS.sub("\n", html).replace("</td>", "\t</td>"), tags=set())
    lines = [" ".join(line.split()) for line in html_unescape(text).splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def sanitize(html: str, images: Mapping[str, Message], *, allow_remote: bool,
             used: set[str] | None = None) -> tuple[str, int]:
    """
    HTML that can run nothing and, unless C{allow_remote}, load nothing
    from elsewhere.

    @param images: the message's raster image parts by Content-ID.
    @param used: receives the Content-IDs inlined.
    @return: the HTML and how many remote resources were removed.
    """
    blocked = 0
    used = set() if used is None else used
    inlined: dict[str, str] = {}
    budget = [MAX_INLINE_BYTES]

    def attribute(tag: str, name: str, value: str) -> str | None:
        nonlocal blocked
        if tag == "img" and name == "src":
            if value.lower().startswith("cid:"):
                cid = value[4:].strip("<>")
                part = images.get(cid)
                if part is None:
                    return None
                used.add(cid)
                if cid not in inlined:
                    data = base64.b64encode(payload(part)).decode("ascii")
                    inlined[cid] = f"data:{part.get_content_type()};base64,{data}"
                # Each reference repeats the image in the page: a small
                # message naming one image a thousand times must not make a
                # page of gigabytes.
                if len(inlined[cid]) > budget[0]:
                    return None
                budget[0] -= len(inlined[cid])
                return inlined[cid]
            if not value.lower().startswith(("http://", "https://")):
                return None  # relative or unknown: nothing of the message's own
            if not allow_remote:
                blocked += 1
                return None
        elif name == "href" and not value.strip().lower().startswith(
                ("http://", "https://", "mailto:")):
            # cid:, and relative links (to /logout, ?remote=1, ...: the
            # portal's own pages, which a message has no business naming).
            return None
        return value

    cleaned = nh3.clean(
        html, tags=_TAGS, clean_content_tags={"script", "style", "title", "head", "noscript",
                                              "template", "iframe", "object", "svg", "math"},
        attributes=_ATTRIBUTES, attribute_filter=attribute, url_schemes=_URL_SCHEMES,
        filter_style_properties=_STYLE_PROPERTIES, set_tag_attribute_values={
            "a": {"target": "_blank"}})
    return cleaned, blocked


def sanitize_message(content: bytes, *, allow_remote: bool) -> tuple[str, int]:
    """
    The sanitized HTML of a message (its text, escaped, when it has no
    HTML) and the number of remote resources removed.
    """
    shown = read(content, allow_remote=allow_remote)
    if shown.html is None:
        return f"<pre>{html_escape(shown.text)}</pre>", 0
    return shown.html, shown.remote_blocked


def frame_policy(allow_remote: bool) -> str:
    """
    The Content-Security-Policy of the message's own document.
    """
    images = "data: https: http:" if allow_remote else "data:"
    return (f"default-src 'none'; img-src {images}; style-src 'unsafe-inline'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'self'; "
            "sandbox allow-popups allow-popups-to-escape-sandbox")


FRAME_STYLE = (
    "body{margin:0;padding:12px;font:16px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif;"
    "color:#1b2333;background:#fff;overflow-wrap:anywhere}"
    "img{max-width:100%;height:auto}table{max-width:100%}"
    "blockquote{margin:0 0 0 .5em;padding-left:.75em;border-left:3px solid #c9d0de}"
)


def frame_document(html: str) -> str:
    return ("<!doctype html><html><head><meta charset=\"utf-8\">"
            "<meta name=\"referrer\" content=\"no-referrer\">"
            f"<style>{FRAME_STYLE}</style></head><body>{html}</body></html>")


# Downloads ---------------------------------------------------------------------


def safe_filename(name: str | None, index: int, default_ext: str = "") -> str:
    """
    A file name fit for a download: no directories, no control or quoting
    characters, no leading dots, not too long.
    """
    text = plain_text(name or "")
    text = re.sub(r"[\x00-\x1f\x7f/\\:*?\"<>|;%]", "_", text)
    text = text.strip(" ._")[-MAX_FILENAME:]
    return text or f"attachment-{index}{default_ext}"


def plain_text(text: str) -> str:
    """
    C{text} without format characters (Unicode category Cf: direction
    overrides and isolates, zero-width spaces and joiners) and with every
    run of white space one space: what a name, a sender or a subject shows
    is what it is (no C{invoice\u202efdp.exe} that reads as C{invoiceexe.pdf}).
    """
    text = unicodedata.normalize("NFC", text)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    return " ".join(text.split())


def download_type(content_type: str) -> str:
    """
    The Content-Type a download is served with: its own when it is one of
    a short list of passive types, else C{application/octet-stream} (a
    list of what to refuse would miss the next name for JavaScript or CSS,
    which the portal's own C{script-src 'self'} would then run).
    """
    content_type = content_type.lower()
    if _MIME_TYPE.fullmatch(content_type) and content_type not in _ACTIVE_TYPES and (
            content_type in _PASSIVE_TYPES or content_type.split("/")[0] in _PASSIVE_MAJOR):
        return content_type
    return "application/octet-stream"


def content_disposition(filename: str) -> str:
    """
    RFC 6266 §4.3: C{attachment}, an ASCII C{filename} and the exact name
    as C{filename*}.
    """
    ascii_name = filename.encode("ascii", "replace").decode("ascii").replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"


def part(content: bytes, index: int) -> tuple[str, str, bytes] | None:
    """
    One leaf part of a message for download: its safe name, its serving
    type and its bytes; C{None} when there is no such part.
    """
    try:
        found_parts = leaves(parse(content))
    except RecursionError:  # see read()
        return None
    if not 0 <= index < len(found_parts):
        return None
    found: Any = found_parts[index]
    return (safe_filename(found.get_filename(), index), download_type(found.get_content_type()),
            payload(found))
