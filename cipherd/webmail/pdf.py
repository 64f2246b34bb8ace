"""
A message as an encrypted PDF, for the PDF method of the encryption chain
(S/MIME, PGP, PDF, webmail): any PDF reader opens it with its password, no
account or portal needed.

The PDF holds what the portal would show (L{cipherd.webmail.render}): a
header block (From, To, Cc, Date, Subject), the text, the HTML made harmless
by the same sanitizer (remote content removed, the message's own C{cid:}
images inlined), a list of the attachments, and a reply link when one is
given; every attachment is embedded as a PDF file attachment under its name
and type, byte for byte.  It is encrypted with AES-256 (PDF 2.0, revision 6):
the user password opens it, a random owner password guards its permissions.

Laid out and encrypted with fpdf2 (pure Python; AES and SHA-2 from
C{cryptography}), with a fix for the names of embedded files, which fpdf2
2.8.9 leaves unencrypted; the choice is measured in C{bench/README.md},
"PDF libraries".  Two of fpdf2's costs shape this module:

    - its line breaking measures a line again for every character added
      (about 80 ms for 10 KB of text), so plain text is laid out here, a word
      at a time, and written line by line;
    - a TrueType font is parsed when it is added and subset when the PDF is
      written (about 25 ms each), so a PDF whose text is all Latin-1 uses the
      PDF standard fonts (Helvetica, Courier: nothing embedded), and only
      others embed DejaVu (Debian C{fonts-dejavu-core}), adding the styles
      the document uses.  Right-to-left and joined scripts are shaped with
      HarfBuzz (uharfbuzz) and laid out by fpdf2 itself.

HTML is laid out by fpdf2's C{write_html}; what it cannot lay out (markup it
refuses, an image it cannot read) is shown as the HTML's text instead, with
a line saying so: a message is never refused for its HTML.
"""

from __future__ import annotations

import base64
import bisect
import io
import itertools
import logging
import quopri
import re
import secrets
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import nh3
import PIL.Image
from fpdf import FPDF
from fpdf.enums import AccessPermission, EncryptionMethod, ResourceAccessPolicy, XPos, YPos
from fpdf.fonts import TextStyle, TTFFont
from fpdf.output import OutputProducer
from fpdf.syntax import PDFString, create_dictionary_string, create_list_string
from twisted.internet.defer import Deferred

from cipherd.pki.smime import OBSCURED_SUBJECT, Parts
from cipherd.threads import IBlockingRunner
from cipherd.webmail import render

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
_DEJAVU = {"": "DejaVuSans.ttf", "B": "DejaVuSans-Bold.ttf", "I": "DejaVuSans-Oblique.ttf",
           "BI": "DejaVuSans-BoldOblique.ttf"}
_DEJAVU_MONO = "DejaVuSansMono.ttf"

PAGE_SIZES = {"a4": "A4", "letter": "Letter"}
PDF_FILENAME = "encrypted-message.pdf"

# What one PDF holds at most: a message within the MTA's size limit stays
# well inside these, a crafted one cannot make the renderer run for minutes.
MAX_TEXT = 2 * 1024 * 1024        # characters of text laid out
MAX_ATTACHMENTS = 500
_FONT_SIZE = 10.0
_LINE = 1.35                      # line height, as a multiple of the font size
_TAB = 8

# Scripts fpdf2 must shape (HarfBuzz) and order (bidi): Hebrew, Arabic,
# Syriac, Thaana, N'Ko, the Indic scripts and the Arabic presentation forms.
_COMPLEX = re.compile("[\u0590-\u08ff\u0900-\u0dff\ufb1d-\ufdff\ufe70-\ufeff]")
# Right-to-left scripts (Hebrew, Arabic, Syriac, Thaana, N'Ko, ...).
_RIGHT_TO_LEFT = re.compile("[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufeff]")

# fpdf2 writes what its own loggers say about a document (a glyph a font
# lacks, a tag it ignores) as warnings: about a message, not about us.
logging.getLogger("fpdf").setLevel(logging.ERROR)
logging.getLogger("fontTools").setLevel(logging.ERROR)


class PDFRenderError(Exception):
    """
    The message could not be made into a PDF; the text says why.
    """


@dataclass(frozen=True)
class Attachment:
    """
    A part of the message embedded in the PDF.
    """

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class PDFOptions:
    """
    @ivar page_size: C{"a4"} or C{"letter"}.
    @ivar reply_url: a link to reply to the sender, or empty for none.
    @ivar created: when the PDF was made (seconds since the epoch).
    """

    user_password: str = field(repr=False)
    page_size: str = "a4"
    reply_url: str = ""
    created: float = 0.0
    title: str = "Encrypted message"


def render_pdf(message: bytes, options: PDFOptions) -> bytes:
    """
    C{message} (RFC 5322 bytes) as an encrypted PDF.

    @raise PDFRenderError: the message cannot be made into a PDF (a
        structure nested too deeply to read, a layout fpdf2 refused).
    """
    if not options.user_password:
        raise PDFRenderError("a PDF needs a password")
    try:
        parsed = render.parse(message)
        shown = render.read_parsed(parsed)
        attachments = list(_attachments(parsed, shown))
        return _Document(shown, attachments, options).build()
    except RecursionError:
        raise PDFRenderError("the message is nested too deeply to be made into a PDF"
                             ) from None
    except PDFRenderError:
        raise
    except Exception as e:
        # fpdf2 raises its own FPDFException, and ValueError or KeyError
        # from the fonts and images it reads: all say the PDF could not be
        # made, none should stop the queue.  The reason goes to the log and
        # the sender: never with the password (fpdf2 names one it refuses).
        why = f"{type(e).__name__}: {e}".replace(options.user_password, "[the password]")
        raise PDFRenderError(f"the PDF could not be made: {why}") from None


def _attachments(message: EmailMessage, shown: render.Shown) -> Iterator[Attachment]:
    """
    The parts the portal would offer as downloads, with their bytes, under
    names unique in the PDF (a second C{a.txt} is C{a (2).txt}).
    """
    leaves = render.leaves(message)
    seen: set[str] = set()
    for part in shown.attachments[:MAX_ATTACHMENTS]:
        leaf = leaves[part.index]
        name = part.filename
        stem, dot, extension = name.rpartition(".")
        if not dot:
            stem, extension = name, ""
        n = 1
        while name.lower() in seen:
            n += 1
            name = f"{stem} ({n}).{extension}" if dot else f"{stem} ({n})"
        seen.add(name.lower())
        yield Attachment(name, part.content_type, render.payload(leaf))


def human_size(n: int) -> str:
    """
    C{1536} → C{"1.5 KB"}.
    """
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / 1024 / 1024:.1f} MB"


# The HTML fpdf2 lays out: the portal's sanitized HTML reduced to the tags
# and attributes write_html understands (the others it would ignore or, for
# a size that is not a number, fail on).
_PDF_TAGS = {"a", "b", "blockquote", "br", "center", "code", "dd", "del", "dl", "dt", "em",
             "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "li", "ol", "p",
             "pre", "s", "strike", "strong", "sub", "sup", "table", "td", "th", "thead",
             "tbody", "tr", "tt", "u", "ul", "ins", "kbd", "samp", "var", "cite", "q"}
_PDF_ATTRIBUTES = {"a": {"href"}, "img": {"src", "width", "height"},
                   "font": {"color", "size"}, "td": {"colspan", "align", "width"},
                   "th": {"colspan", "align", "width"}, "table": {"width", "border"},
                   "p": {"align"}, "ol": {"start", "type"}, "ul": {"type"}}
_NUMBER = re.compile(r"\d{1,4}")
_COLOUR = re.compile(r"#[0-9a-fA-F]{6}|#[0-9a-fA-F]{3}|[a-zA-Z]{3,20}")


def pdf_html(html: str) -> str:
    """
    Sanitized HTML (L{render.sanitize}) reduced to what fpdf2 lays out:
    images only as the C{data:} URIs the sanitizer made of the message's
    own images (never a path or a URL, which fpdf2 would read), sizes only
    as plain numbers.
    """
    def attribute(tag: str, name: str, value: str) -> str | None:
        if tag == "img" and name == "src":
            return value if value.startswith("data:image/") and _small_image(value) else None
        if name in ("width", "height", "size", "border", "colspan", "start"):
            return value if _NUMBER.fullmatch(value.strip()) else None
        if name == "color":
            return value if _COLOUR.fullmatch(value.strip()) else None
        if name == "align":
            return value if value.strip().lower() in ("left", "right", "center",
                                                       "justify") else None
        if name == "type":
            return value if value.strip() in ("1", "a", "A", "i", "I", "disc", "circle",
                                              "square") else None
        return value

    cleaned = nh3.clean(html, tags=_PDF_TAGS, attributes=_PDF_ATTRIBUTES,
                        attribute_filter=attribute, url_schemes={"http", "https", "mailto",
                                                                 "data"},
                        link_rel=None, strip_comments=True)
    # An image without its source is nothing to lay out.
    return re.sub(r"<img(?![^>]*\ssrc=)[^>]*>", "", cleaned)


# Controls (C0, DEL, C1) other than the line feed: removed from text.
_CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")
# What is not shown as itself: removed (format characters such as
# direction overrides and zero-width spaces, line and paragraph separators,
# private use, surrogates, unassigned) or, for a space of another width
# (no-break, em, ideographic), made a space.
_REMOVED = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


# Pixels of one inline image at most: its bytes are bounded already, but a
# small PNG can unpack to gigabytes.
MAX_IMAGE_PIXELS = 25_000_000
# HTML fpdf2 is given at most (its layout takes time growing with the
# square of the paragraphs: 5,000 paragraphs take 14 s): beyond it the
# HTML's text is shown.
MAX_HTML = 100_000
MAX_HTML_BLOCKS = 1000
_BLOCK = re.compile(r"(?i)<(p|div|li|tr|br|hr|h\d|blockquote|dd|dt)\b")


def _small_image(uri: str) -> bool:
    """
    Whether a C{data:} image is one fpdf2 may decode: readable, and of at
    most L{MAX_IMAGE_PIXELS} (only its header is read here).
    """
    try:
        data = base64.b64decode(uri.partition(",")[2])
        with PIL.Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception:  # not an image Pillow reads: fpdf2 could not either
        return False
    return width * height <= MAX_IMAGE_PIXELS


def _printable(text: str) -> str:
    """
    C{text} as laid out: line breaks as line feeds, tabs expanded, no
    control or format characters (direction overrides, zero-width spaces:
    no name can hide what it is), other spaces made plain spaces.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\t" in text:
        text = "\n".join(line.expandtabs(_TAB) for line in text.split("\n"))
    if text.isascii():
        return _CONTROLS.sub("", text)
    text = unicodedata.normalize("NFC", text)
    kept = []
    for c in text:
        if c == "\n" or c.isprintable():
            kept.append(c)
        else:
            category = unicodedata.category(c)
            if category == "Zs":
                kept.append(" ")
            elif category not in _REMOVED:
                kept.append(c)
    return "".join(kept)


class _Document:
    """
    One PDF being laid out.
    """

    def __init__(self, shown: render.Shown, attachments: list[Attachment],
                 options: PDFOptions) -> None:
        self._shown = shown
        self._attachments = attachments
        self._options = options
        html = pdf_html(shown.html) if shown.html is not None else None
        self._html = html
        text = shown.text[:MAX_TEXT]
        self._text = _printable(text)
        self._truncated = len(shown.text) > MAX_TEXT
        everything = "".join([shown.subject, shown.sender, *shown.to, *shown.cc, shown.date,
                              self._text, render.html_text(html) if html else "",
                              *(a.filename for a in attachments), options.reply_url])
        # PDF standard fonts (WinAnsi, which fpdf2 writes as Latin-1) when
        # they can show every character: nothing embedded, nothing subset.
        self._core = max(everything, default=" ") < "\u0100"
        self._complex = bool(_COMPLEX.search(everything))
        pdf = FPDF(format=PAGE_SIZES.get(options.page_size, "A4"))
        pdf.set_auto_page_break(True, margin=15)
        pdf.set_margins(18, 18, 18)
        pdf.set_producer("cipherd")
        pdf.set_creation_date(datetime.fromtimestamp(options.created, UTC))
        pdf.set_title(options.title)
        # Nothing read from disk or the network, whatever the HTML says
        # (images are only the data: URIs pdf_html leaves).
        pdf.resource_access_policy = ResourceAccessPolicy(0)
        self._pdf = pdf
        self._fonts_added: set[str] = set()
        if self._core:
            self._family, self._mono = "helvetica", "courier"
        else:
            self._family, self._mono = "dejavu", "dejavumono"
            if self._complex:
                self._font("")
                pdf.set_text_shaping(True)

    # Fonts ---------------------------------------------------------------

    def _font(self, style: str = "", *, mono: bool = False, size: float = _FONT_SIZE) -> None:
        family = self._mono if mono else self._family
        if not self._core:
            key = family + style
            if key not in self._fonts_added:
                name = _DEJAVU_MONO if mono else _DEJAVU[style]
                self._pdf.add_font(family, style, str(FONT_DIR / name))
                self._fonts_added.add(key)
        self._pdf.set_font(family, style if not mono else "", size)

    # Layout --------------------------------------------------------------

    def build(self) -> bytes:
        pdf = self._pdf
        pdf.add_page()
        self._header_block()
        if self._html is not None:
            self._html_body()
        else:
            self._text_body(self._text)
        if self._truncated:
            self._note(f"The text was cut off after {MAX_TEXT} characters.")
        self._attachment_list()
        if self._options.reply_url:
            self._reply()
        for attachment in self._attachments:
            if not attachment.data:
                continue  # fpdf2 embeds no empty file: listed as empty
            spec = pdf.embed_file(bytes=attachment.data, basename=attachment.filename,
                                  mime_type=attachment.content_type,
                                  compress=_compressible(attachment)).file_spec()
            spec.f = spec.u_f = PDFString(attachment.filename, encrypt=True)
        _encrypt(pdf, self._options.user_password)
        return bytes(pdf.output(output_producer_class=_EncryptedNames))

    def _header_block(self) -> None:
        shown = self._shown
        rows = [("From", shown.sender), ("To", ", ".join(shown.to)),
                ("Cc", ", ".join(shown.cc)), ("Date", shown.date),
                ("Subject", shown.subject)]
        pdf = self._pdf
        label_width = 22.0
        for label, value in rows:
            if not value and label == "Cc":
                continue
            self._font("B")
            y = pdf.get_y()
            pdf.set_xy(pdf.l_margin, y)
            pdf.cell(label_width, _FONT_SIZE * _LINE / pdf.k, label + ":")
            self._font()
            self._lines(_printable(value), x=pdf.l_margin + label_width,
                        width=pdf.epw - label_width)
        y = pdf.get_y() + 2
        pdf.set_draw_color(150, 150, 150)
        pdf.line(pdf.l_margin, y, pdf.w - pdf.r_margin, y)
        pdf.set_y(y + 4)

    def _text_body(self, text: str, *, mono: bool = False) -> None:
        self._font(mono=mono)
        self._lines(text, x=self._pdf.l_margin, width=self._pdf.epw)

    def _lines(self, text: str, *, x: float, width: float) -> None:
        """
        C{text} laid out from the current line at C{x}, in lines of at most
        C{width}; the position ends below it.
        """
        pdf = self._pdf
        if self._complex and _COMPLEX.search(text):
            # fpdf2 orders and shapes these scripts itself (slower).
            pdf.set_x(x)
            pdf.multi_cell(width, _FONT_SIZE * _LINE / pdf.k, text, align="L",
                           new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            return
        height = pdf.font_size * _LINE
        measure = _Measure(pdf)
        y = pdf.get_y()
        for line in measure.wrap(text, width):
            if y + height > pdf.page_break_trigger:
                pdf.add_page()
                y = pdf.get_y()
            if line:
                # text() puts the baseline at y: the line's top is above it.
                pdf.text(x, y + pdf.font_size * 1.02, line)
            y += height
        pdf.set_xy(pdf.l_margin, y)

    def _html_body(self) -> None:
        pdf = self._pdf
        assert self._html is not None
        if not self._core:
            for style in _DEJAVU:
                self._font(style)
            self._font(mono=True)
        self._font()
        if len(self._html) > MAX_HTML or len(_BLOCK.findall(self._html)) > MAX_HTML_BLOCKS:
            self._note("This message's formatting is too large to lay out here; its text "
                       "follows.")
            self._text_body(_printable(render.html_text(self._html)))
            return
        text = render.html_text(self._html)
        if _RIGHT_TO_LEFT.search(text):
            # fpdf2 2.8.9's write_html draws right-to-left words in a
            # left-to-right paragraph letter by letter backwards (multi_cell,
            # which the text goes through, orders them right).
            self._note("This message is shown as text: its right-to-left writing is laid "
                       "out in the right order only without the formatting.")
            self._text_body(_printable(text))
            return
        start_page, start_y = pdf.page, pdf.get_y()
        try:
            pdf.write_html(self._html, font_family=self._family,
                           tag_styles={tag: TextStyle(font_family=self._mono)
                                       for tag in ("pre", "code")},
                           warn_on_tags_not_matching=False)
        except Exception:
            # What fpdf2 could not lay out is shown as text, from a fresh
            # page so nothing half drawn stays in the way.
            if pdf.page != start_page or pdf.get_y() != start_y:
                pdf.add_page()
            self._note("The formatting of this message could not be shown; its text "
                       "follows.")
            self._text_body(_printable(render.html_text(self._html)))
        pdf.set_x(pdf.l_margin)

    def _note(self, text: str) -> None:
        pdf = self._pdf
        pdf.ln(2)
        self._font("I", size=_FONT_SIZE - 1)
        self._lines(text, x=pdf.l_margin, width=pdf.epw)
        self._font()

    def _attachment_list(self) -> None:
        if not self._attachments:
            return
        pdf = self._pdf
        pdf.ln(4)
        self._font("B")
        self._lines(f"Attachments ({len(self._attachments)}), embedded in this PDF: open the "
                    "attachments panel of your PDF reader", x=pdf.l_margin, width=pdf.epw)
        self._font()
        for attachment in self._attachments:
            size = (human_size(len(attachment.data)) if attachment.data
                    else "empty, not embedded")
            self._lines(f"- {_printable(attachment.filename)} ({attachment.content_type}, "
                        f"{size})", x=pdf.l_margin + 4, width=pdf.epw - 4)

    def _reply(self) -> None:
        pdf = self._pdf
        url = self._options.reply_url
        pdf.ln(4)
        self._font("B")
        self._lines("Reply securely:", x=pdf.l_margin, width=pdf.epw)
        self._font()
        pdf.set_text_color(31, 95, 191)
        y = pdf.get_y()
        self._lines(url, x=pdf.l_margin, width=pdf.epw)
        pdf.link(pdf.l_margin, y, pdf.epw, pdf.get_y() - y, url)
        pdf.set_text_color(0, 0, 0)


class _EncryptedNames(OutputProducer):
    """
    fpdf2's writer, with the keys of the C{/EmbeddedFiles} name tree
    encrypted: fpdf2 2.8.9 writes them in the clear into an encrypted
    document (its C{/Dests} keys, written a few lines later, are
    encrypted), so readers decrypt the attachments' names to garbage.
    L{_Document.build} marks the file specifications' C{/F} and C{/UF}
    for encryption, the other half of the same bug.
    """

    def _finalize_catalog(self, catalog_obj: Any, *args: Any, **kwargs: Any) -> None:
        super()._finalize_catalog(catalog_obj, *args, **kwargs)
        fpdf = self.fpdf
        handler = fpdf._security_handler
        if not fpdf.embedded_files or handler is None:
            return

        def tree(encrypt: bool) -> str:
            return create_dictionary_string({"/Names": create_list_string([
                PDFString(f.basename(), encrypt=encrypt).serialize(
                    _security_handler=handler, _obj_id=catalog_obj.id) + " " + f.file_spec().ref
                for f in fpdf.embedded_files])})

        # The name tree as fpdf2 wrote it, replaced; the rest of /Names
        # (/Dests) kept.
        clear = tree(encrypt=False)
        if clear not in catalog_obj.names:
            raise PDFRenderError("fpdf2 wrote the embedded files' names in a way this "
                                 "version of cipherd does not know")
        catalog_obj.names = catalog_obj.names.replace(clear, tree(encrypt=True))


def _encrypt(pdf: FPDF, user_password: str) -> None:
    """
    C{pdf} to be written encrypted with AES-256, revision 6 (fpdf2's own
    encryption, with OpenSSL's AES and SHA-2 through C{cryptography}: the
    revision 6 key derivation, four times 64 or more rounds of AES and
    SHA-2, costs about 5 ms against qpdf's 11 ms, and nothing is parsed
    again).

    The owner password is random and never kept: the permissions (print,
    copy text; no changes) stay as set.
    """
    pdf.set_encryption(owner_password=secrets.token_urlsafe(24), user_password=user_password,
                       encryption_method=EncryptionMethod.AES_256,
                       permissions=(AccessPermission.PRINT_LOW_RES
                                    | AccessPermission.PRINT_HIGH_RES | AccessPermission.COPY
                                    | AccessPermission.COPY_FOR_ACCESSIBILITY),
                       encrypt_metadata=True)


# Attachments that are compressed already gain nothing from Flate, which
# costs about 30 ms per MB.
_COMPRESSED_TYPES = re.compile(
    r"(image|audio|video)/|application/(zip|gzip|x-gzip|x-7z|x-rar|x-bzip2|x-xz|pdf|"
    r"vnd\.openxmlformats|vnd\.oasis|octet-stream|pgp|pkcs7)")


def _compressible(attachment: Attachment) -> bool:
    return not _COMPRESSED_TYPES.match(attachment.content_type.lower())


class _Measure:
    """
    Widths of text in the current font, from the font's own table of
    character widths (fpdf2's C{get_string_width} copies its graphics
    state on each call: a hundred times slower).
    """

    def __init__(self, pdf: FPDF) -> None:
        font = pdf.current_font
        assert font is not None  # _font() set it
        self._scale = pdf.font_size / 1000
        widths: Any = font.cw
        # Each character's width in font units (the core fonts' table is
        # keyed by character and has all of Latin-1; a TrueType font's by
        # code point, with a default for the rest).
        self._char: Callable[[str], float]
        if isinstance(font, TTFFont):
            self._char = lambda c: widths[ord(c)]
        else:
            self._char = lambda c: widths.get(c, 600)
            if len(widths) >= 256:
                self._char = widths.__getitem__

    def width(self, word: str) -> float:
        return float(sum(map(self._char, word))) * self._scale

    def wrap(self, text: str, width: float) -> Iterator[str]:
        """
        C{text}'s lines broken at spaces into lines of at most C{width};
        a word longer than a line is broken where it must.
        """
        measure = self.width
        space = measure(" ")
        for paragraph in text.split("\n"):
            if measure(paragraph) <= width:
                yield paragraph
                continue
            line: list[str] = []
            used = 0.0
            for word in paragraph.split(" "):
                w = measure(word)
                if w > width:
                    if line:
                        yield " ".join(line)
                    *pieces, last = self._break(word, width)
                    yield from pieces
                    line, used = [last], measure(last)
                    continue
                if line and used + space + w > width:
                    yield " ".join(line)
                    line, used = [word], w
                else:
                    used += (space if line else 0.0) + w
                    line.append(word)
            yield " ".join(line)

    def _break(self, word: str, width: float) -> list[str]:
        """
        A word too long for a line, in pieces that fit (at least a
        character each).
        """
        limit = width / self._scale
        ends = list(itertools.accumulate(map(self._char, word)))
        pieces = []
        start, offset = 0, 0.0
        while start < len(word):
            end = bisect.bisect_right(ends, offset + limit, lo=start)
            end = max(end, start + 1)
            pieces.append(word[start:end])
            offset = ends[end - 1]
            start = end
        return pieces


# The mail that carries the PDF -------------------------------------------------


def random_password(length: int, alphabet: str) -> str:
    """
    A password of C{length} characters drawn from C{alphabet} by the
    system's cryptographic random source.
    """
    return "".join(secrets.choice(alphabet) for _ in range(length))


def pdf_mail(message: bytes, pdf: bytes, text: str, *, obscure_subject: bool,
             filename: str = PDF_FILENAME) -> bytes:
    """
    The mail that goes out instead of C{message}: its own header fields
    (From, To, Cc, Date, Message-ID, ...; the Subject C{[...]} with
    C{obscure_subject}), a text part (C{text}, from the template) and the
    PDF as an attachment.
    """
    outer = Parts.split(message).outer_fields()
    if obscure_subject:
        outer = [b"Subject: " + OBSCURED_SUBJECT if Parts._name(field) == b"subject" else field
                 for field in outer]
    boundary = b"=_pdf_" + secrets.token_hex(16).encode()
    body = quopri.encodestring(text.replace("\r\n", "\n").encode("utf-8")).replace(
        b"\n", b"\r\n")
    encoded = base64.encodebytes(pdf).replace(b"\n", b"\r\n")
    return b"".join([
        b"\r\n".join([*outer, b"MIME-Version: 1.0",
                       b'Content-Type: multipart/mixed; boundary="' + boundary + b'"']),
        b"\r\n\r\n--", boundary, b"\r\n",
        b'Content-Type: text/plain; charset="utf-8"\r\n'
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
        body.rstrip(b"\r\n"), b"\r\n--", boundary, b"\r\n",
        b'Content-Type: application/pdf; name="', filename.encode("ascii"), b'"\r\n',
        b'Content-Disposition: attachment; filename="', filename.encode("ascii"), b'"\r\n',
        b"Content-Transfer-Encoding: base64\r\n\r\n", encoded,
        b"--", boundary, b"--\r\n"])


class PDFMaker:
    """
    Messages made into encrypted PDF mail, on the crypto pool (laying out
    and encrypting a PDF is CPU work of 10-20 ms, more with large
    attachments).
    """

    def __init__(self, crypto: IBlockingRunner) -> None:
        self._crypto = crypto

    def protect(self, message: bytes, options: PDFOptions, text: str, *,
                obscure_subject: bool) -> Deferred[bytes]:
        """
        C{message} as the mail to send: C{text} and the PDF of C{message}
        encrypted with C{options.user_password}.

        @raise PDFRenderError: (failing the Deferred) the PDF could not be
            made.
        """
        return self._crypto.run(self._protect, message, options, text, obscure_subject)

    def _protect(self, message: bytes, options: PDFOptions, text: str,
                 obscure_subject: bool) -> bytes:
        return pdf_mail(message, render_pdf(message, options), text,
                        obscure_subject=obscure_subject)

