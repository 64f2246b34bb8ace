"""
The PDF library comparison behind the "PDF encryption" method: a message
rendered as a PDF (a From/To/Cc/Date/Subject block, the text body, the
sanitized HTML body with its inline image, Unicode text in the DejaVu fonts
of /usr/share/fonts/truetype/dejavu/, every attachment embedded as a PDF
file attachment), encrypted with AES-256, revision 6 (PDF 2.0), a user
password and a random owner password.

Run from the repository root::

    .venv/bin/python bench/pdf_libraries.py            # about 40 s on a 2-core machine
    .venv/bin/python bench/pdf_libraries.py --latest   # + the latest releases pip sees

The options:

1. ``fpdf2``: fpdf2 alone (``write_html`` for the HTML part, ``embed_file``,
   ``set_encryption(..., encryption_method=EncryptionMethod.AES_256)``), text
   shaping on (``set_text_shaping(True)``, through uharfbuzz). fpdf2 2.8.9
   writes the embedded files' names (the Filespec's /F and /UF and the
   /EmbeddedFiles name tree's key) unencrypted into the encrypted document,
   so readers decrypt them to garbage; ``fpdf2, names fixed`` is the same
   with the Filespec's two strings marked for encryption
   (``PDFString(name, encrypt=True)``) and the name tree's keys encrypted
   by cipherd's output producer (``cipherd.webmail.pdf._EncryptedNames``):
   what cipherd uses.
2. ``reportlab+pikepdf``: reportlab's platypus renders (reportlab has no HTML
   renderer: a small converter here turns the HTML part's paragraphs, table,
   list and image into flowables, as the real renderer would have to);
   pikepdf (qpdf) adds the attachments and encrypts
   (``pikepdf.Encryption(owner=, user=, R=6)``).
3. ``fpdf2+pikepdf``: option 1's rendering, without attachments or
   encryption; pikepdf adds and encrypts as in option 2.
4. ``weasyprint+pikepdf``: WeasyPrint renders one HTML document (the header
   block as a table, the text body pre-wrapped, the HTML part as it is, the
   inline image through a URL fetcher that serves ``cid:`` URLs and refuses
   everything else); pikepdf adds and encrypts. Skipped when WeasyPrint is
   not installed or cannot load Pango.

What it measures
----------------

(a) Milliseconds per message for a realistic message of about 10 KB as MIME
    (six paragraphs of text and a line in Greek, Cyrillic and Arabic; an
    HTML part with a table, a list and an inline 0.7 KB PNG; one 2 KB
    attachment), one thread: ``--rounds`` rounds (5) of ``--calls`` messages
    (3) after a warm-up message; the median round, with the fastest and
    slowest. Each message gets a new random owner password. Parsing and
    sanitizing the MIME message are left out: they are the same for every
    option. For fpdf2 it also prints what parsing the four DejaVu faces
    (``add_font``, done for every document) and text shaping cost of that.

(b) Peak memory for the same message with a 10 MB random attachment, in a
    fresh process per option (started first thing, while this process is
    small, since Linux carries a parent's peak RSS over into a child's
    ``ru_maxrss``): ``ru_maxrss`` after the message minus before it (after
    the imports, a warm-up message and reading the attachment from a file),
    as a multiple of the attachment size, the output PDF kept alive until
    measured. RSS counts what glibc keeps after Python freed it, and
    buffers of qpdf and Pango that tracemalloc does not see.

(c) Checks with Debian's tools on each option's output: ``qpdf
    --show-encryption`` with the user password reports R = 6 and AESv3 for
    streams, strings and files; ``pdftotext -upw`` gives the header block,
    the text and the Unicode line (Greek and Cyrillic words) as they are
    (not only after NFKC: ligature glyphs mapped to U+FB01 and the like
    fail); the HTML part's table cells and list items are in the text and
    ``pdfimages -list`` finds its image; ``pdfdetach -saveall`` extracts the attachment
    byte-identical (the 2 KB one, and the 10 MB one from (b)); a wrong and an
    empty password are refused by both ``qpdf --check`` and ``pdftotext``.

(d) Arabic: ``pdftotext`` text, NFKC-normalized (reportlab's shaped glyphs
    map to presentation forms), holds the two Arabic words in logical order
    only when they were laid out right to left; unshaped text comes out with
    each word's letters reversed, and shaped words in left-to-right order
    come out with the words swapped. Letter joining is not visible in text;
    look at a page (``pdftoppm``) for that.

(e) The installed versions of the libraries each option needs and whether
    each ships native code; ``--latest`` asks pip (``pip index versions``)
    for the latest release of each.

PASS/FAIL lines are informational: the script always exits 0 when it
completes (it is a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import base64
import gc
import html
import importlib.metadata
import io
import json
import os
import re
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import unicodedata
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path

warnings.filterwarnings("ignore")

FONTS = Path("/usr/share/fonts/truetype/dejavu")
DEJAVU = {"": "DejaVuSans.ttf", "B": "DejaVuSans-Bold.ttf",
          "I": "DejaVuSans-Oblique.ttf", "BI": "DejaVuSans-BoldOblique.ttf"}
PASSWORD = "correct horse battery"  # noqa: S105 - the user password of every test PDF
WRONG_PASSWORDS = ("correct horse", "")
MB = 1024 * 1024
BIG_ATTACHMENT = 10 * MB

GREEK, CYRILLIC, ARABIC = "Καλημέρα κόσμε", "Здравствуй мир", "مرحبا بالعالم"
UNICODE_LINE = f"Greek: {GREEK}. Cyrillic: {CYRILLIC}. Arabic: {ARABIC}."

PARAGRAPH = (
    "Dear team, as promised in our call on {day}, here are the figures for the {n} "
    "accounts we reviewed this quarter. Revenue in the northern region rose by {p} percent, "
    "mostly from renewals; the southern region stayed flat, and the two new resellers have "
    "not yet reported. Please check the numbers against your own records before Friday and "
    "tell me if anything looks wrong, in particular the currency conversions, which I did "
    "by hand this time. The attached file is the export from the ledger, unchanged; the "
    "table in the HTML version of this message is a summary of it."
)
HTML_PART = """<h2>Quarterly summary</h2>
<p>Hello all, the <b>summary</b> of the quarter is below; the <i>details</i> are in the
attached ledger export.</p>
<table border="1">
<tr><th>Region</th><th>Accounts</th><th>Change</th></tr>
<tr><td>North</td><td>412</td><td>+7.5%</td></tr>
<tr><td>South</td><td>388</td><td>+0.2%</td></tr>
<tr><td>East</td><td>215</td><td>-1.1%</td></tr>
<tr><td>West</td><td>297</td><td>+3.0%</td></tr>
<tr><td>Resellers</td><td>12</td><td>n/a</td></tr>
</table>
<p>Next steps:</p>
<ul>
<li>Reconcile the currency conversions</li>
<li>Chase the two new resellers</li>
<li>Prepare the board slides</li>
<li>Archive the ledger export</li>
</ul>
<p><img src="cid:logo@example.org" alt="logo"></p>
<p>Regards,<br>Alice</p>
"""
HTML_WORDS = ("Resellers", "388", "+7.5%", "Chase the two new resellers")


# The message ----------------------------------------------------------------------


@dataclass
class Message:
    headers: list[tuple[str, str]]
    text: str
    html: str  # the sanitized HTML part, as a fragment
    images: dict[str, tuple[bytes, str]]  # "cid:..." -> (data, MIME type)
    attachments: list[tuple[str, bytes, str]] = field(default_factory=list)


def _png() -> bytes:
    from PIL import Image

    image = Image.new("RGB", (96, 32))
    image.putdata([((x * 7) % 256, (x * y) % 256, (y * 9) % 256)
                   for y in range(32) for x in range(96)])
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def build_message(attachment: bytes) -> Message:
    paragraphs = [PARAGRAPH.format(day=day, n=40 + 7 * i, p=3 + i)
                  for i, day in enumerate(("Monday", "Tuesday", "Wednesday", "Thursday",
                                           "Friday", "Saturday"))]
    text = "\n\n".join([*paragraphs[:3], UNICODE_LINE, *paragraphs[3:], "Regards,\nAlice"])
    return Message(
        headers=[("From", "Alice Example <alice@example.org>"),
                 ("To", "Bob Example <bob@example.net>, Carol <carol@example.net>"),
                 ("Cc", "Dave <dave@example.com>"),
                 ("Date", "Sat, 05 Dec 2026 10:15:00 +0100"),
                 ("Subject", f"Quarterly figures / {GREEK} / {CYRILLIC} / {ARABIC}")],
        text=text, html=HTML_PART, images={"cid:logo@example.org": (_png(), "image/png")},
        attachments=[("ledger-export.bin", attachment, "application/octet-stream")])


def mime_size(msg: Message) -> int:
    mime = EmailMessage()
    for name, value in msg.headers:
        mime[name] = value
    mime.set_content(msg.text)
    mime.add_alternative(f"<html><body>{msg.html}</body></html>", subtype="html")
    data, mime_type = msg.images["cid:logo@example.org"]
    mime.get_payload()[1].add_related(data, *mime_type.split("/"), cid="<logo@example.org>")
    for name, content, mime_type in msg.attachments:
        mime.add_attachment(content, *mime_type.split("/"), filename=name)
    return len(mime.as_bytes())


# The options ----------------------------------------------------------------------


def _fpdf2_document(msg: Message):  # -> fpdf.FPDF
    from fpdf import FPDF
    from fpdf.enums import ResourceAccessPolicy

    pdf = FPDF(format="A4")
    # The default policy (LOCAL_FILES | REMOTE_PUBLIC) lets <img src> read local files and
    # fetch http(s) URLs; a message's HTML gets neither.
    pdf.resource_access_policy = ResourceAccessPolicy.NONE
    for style, name in DEJAVU.items():
        pdf.add_font("DejaVu", style, FONTS / name)
    pdf.set_text_shaping(True)
    pdf.add_page()
    for name, value in msg.headers:
        pdf.set_font("DejaVu", "B", 10)
        pdf.cell(18, 5, f"{name}:")
        pdf.set_font("DejaVu", "", 10)
        pdf.multi_cell(0, 5, value, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.line(pdf.l_margin, pdf.get_y(), pdf.w - pdf.r_margin, pdf.get_y())
    pdf.ln(3)
    pdf.multi_cell(0, 5, msg.text, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    images = {cid: f"data:{mime};base64,{base64.b64encode(data).decode()}"
              for cid, (data, mime) in msg.images.items()}
    pdf.write_html(msg.html, image_map=lambda src: images.get(src, "data:,"),
                   font_family="DejaVu")
    return pdf


def fpdf2_alone(msg: Message, owner: str, fix_names: bool = False) -> bytes:
    from fpdf.enums import EncryptionMethod
    from fpdf.syntax import PDFString

    pdf = _fpdf2_document(msg)
    for name, data, mime_type in msg.attachments:
        embedded = pdf.embed_file(bytes=data, basename=name, mime_type=mime_type)
        if fix_names:
            spec = embedded.file_spec()
            spec.f = spec.u_f = PDFString(name, encrypt=True)
    pdf.set_encryption(owner_password=owner, user_password=PASSWORD,
                       encryption_method=EncryptionMethod.AES_256)
    if fix_names:
        # cipherd's fix for the name tree's keys (cipherd.webmail.pdf).
        from cipherd.webmail.pdf import _EncryptedNames
        return bytes(pdf.output(output_producer_class=_EncryptedNames))
    return pdf.output()


def fpdf2_names_fixed(msg: Message, owner: str) -> bytes:
    return fpdf2_alone(msg, owner, fix_names=True)


def _pikepdf_finish(rendered: bytes, msg: Message, owner: str) -> bytes:
    import pikepdf

    out = io.BytesIO()
    with pikepdf.open(io.BytesIO(rendered)) as pdf:
        for name, data, mime_type in msg.attachments:
            pdf.attachments[name] = pikepdf.AttachedFileSpec(pdf, data, filename=name,
                                                             mime_type=mime_type)
        pdf.save(out, encryption=pikepdf.Encryption(owner=owner, user=PASSWORD, R=6))
    return out.getvalue()


def fpdf2_pikepdf(msg: Message, owner: str) -> bytes:
    return _pikepdf_finish(_fpdf2_document(msg).output(), msg, owner)


_REPORTLAB_FONTS: list[str] = []


def _reportlab_fonts() -> None:
    if _REPORTLAB_FONTS:
        return
    from reportlab.lib.fonts import addMapping
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    for style, name in DEJAVU.items():
        face = f"DejaVu{style}"
        pdfmetrics.registerFont(TTFont(face, FONTS / name))
        addMapping("DejaVu", "B" in style, "I" in style, face)
        _REPORTLAB_FONTS.append(face)


class _Flowables(HTMLParser):
    """The HTML part's paragraphs, table, list and images as platypus flowables."""

    def __init__(self, msg: Message, style, bold_style) -> None:
        super().__init__()
        self.msg, self.style, self.bold_style = msg, style, bold_style
        self.story: list = []
        self.text: list[str] = []
        self.rows: list[list] | None = None
        self.items: list | None = None

    def _paragraph(self, style=None):
        from reportlab.platypus import Paragraph

        markup, self.text = "".join(self.text).strip(), []
        return Paragraph(markup, style or self.style) if markup else None

    def _flush(self) -> None:
        if (paragraph := self._paragraph()) is not None:
            self.story.append(paragraph)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        from reportlab.platypus import Image

        inline = {"b": "<b>", "strong": "<b>", "i": "<i>", "em": "<i>", "br": "<br/>"}
        if tag in inline:
            self.text.append(inline[tag])
        elif tag in ("p", "h1", "h2", "h3", "li", "td", "th", "table", "ul", "ol"):
            if self.rows is None and self.items is None:
                self._flush()
            self.text = []
            if tag == "table":
                self.rows = []
            elif tag in ("ul", "ol"):
                self.items = []
        elif tag == "tr" and self.rows is not None:
            self.rows.append([])
        elif tag == "img":
            found = self.msg.images.get(dict(attrs).get("src") or "")
            if found is not None:
                self.story.append(Image(io.BytesIO(found[0])))

    def handle_endtag(self, tag: str) -> None:
        from reportlab.platypus import ListFlowable, ListItem, Table, TableStyle

        closing = {"b": "</b>", "strong": "</b>", "i": "</i>", "em": "</i>"}
        if tag in closing:
            self.text.append(closing[tag])
        elif tag in ("td", "th") and self.rows:
            cell = self._paragraph(self.bold_style if tag == "th" else None)
            self.rows[-1].append(cell or "")
        elif tag == "table" and self.rows is not None:
            table = Table(self.rows, hAlign="LEFT")
            table.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.5, "grey")]))
            self.story.append(table)
            self.rows = None
        elif tag == "li" and self.items is not None:
            if (paragraph := self._paragraph()) is not None:
                self.items.append(ListItem(paragraph))
        elif tag in ("ul", "ol") and self.items is not None:
            self.story.append(ListFlowable(self.items, bulletType="bullet"))
            self.items = None
        elif tag in ("p", "h1", "h2", "h3"):
            self._flush()

    def handle_data(self, data: str) -> None:
        self.text.append(html.escape(data))


def _reportlab_document(msg: Message) -> bytes:
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table

    _reportlab_fonts()
    style = ParagraphStyle("body", fontName="DejaVu", fontSize=10, leading=13,
                           spaceAfter=4, shaping=1)
    bold = replace_style(style, fontName="DejaVuB")
    story: list = [Table([[Paragraph(f"{name}:", bold), Paragraph(html.escape(value), style)]
                          for name, value in msg.headers],
                         colWidths=(22 * mm, None), hAlign="LEFT"), Spacer(1, 4 * mm)]
    story += [Paragraph(html.escape(part).replace("\n", "<br/>"), style)
              for part in msg.text.split("\n\n")]
    flowables = _Flowables(msg, style, bold)
    flowables.feed(msg.html)
    flowables.close()
    flowables._flush()
    story += flowables.story
    out = io.BytesIO()
    SimpleDocTemplate(out, pagesize=A4).build(story)
    return out.getvalue()


def replace_style(style, **changes):
    from reportlab.lib.styles import ParagraphStyle

    return ParagraphStyle(f"{style.name}-{len(changes)}", parent=style, **changes)


def reportlab_pikepdf(msg: Message, owner: str) -> bytes:
    return _pikepdf_finish(_reportlab_document(msg), msg, owner)


def _weasyprint_fetcher(msg: Message):
    from weasyprint.urls import URLFetcher, URLFetcherResponse

    class CidOnly(URLFetcher):
        def fetch(self, url: str, headers: object = None) -> URLFetcherResponse:
            if url not in msg.images:
                raise ValueError(f"not fetched: {url}")
            data, mime_type = msg.images[url]
            return URLFetcherResponse(url, data, {"Content-Type": mime_type})

    return CidOnly()


WEASYPRINT_CSS = """
@page { size: A4; margin: 15mm }
body { font-family: "DejaVu Sans"; font-size: 10pt }
table.headers th { text-align: left; padding-right: 1em; vertical-align: top }
div.text { white-space: pre-wrap; border-top: 1px solid black; border-bottom: 1px solid black;
           margin: 1em 0; padding: 1em 0 }
div.html table { border-collapse: collapse }
div.html td, div.html th { border: 1px solid grey; padding: 1px 4px }
"""


def _weasyprint_document(msg: Message) -> bytes:
    import weasyprint

    rows = "".join(f"<tr><th>{name}:</th><td>{html.escape(value)}</td></tr>"
                   for name, value in msg.headers)
    document = (f"<html><head><meta charset='utf-8'><style>{WEASYPRINT_CSS}</style></head>"
                f"<body><table class='headers'>{rows}</table>"
                f"<div class='text'>{html.escape(msg.text)}</div>"
                f"<div class='html'>{msg.html}</div></body></html>")
    return weasyprint.HTML(string=document, url_fetcher=_weasyprint_fetcher(msg)).write_pdf()


def weasyprint_pikepdf(msg: Message, owner: str) -> bytes:
    return _pikepdf_finish(_weasyprint_document(msg), msg, owner)


def _weasyprint_runs() -> str | None:
    """None if WeasyPrint renders here, else why not."""
    try:
        import weasyprint

        weasyprint.HTML(string="<p>x</p>").write_pdf()
    except ImportError as e:
        return f"not installed ({e})"
    except OSError as e:  # Pango, GObject or fontconfig missing
        return f"cannot load its native libraries ({e})"
    return None


@dataclass
class Option:
    name: str
    make: Callable[[Message, str], bytes]
    packages: tuple[str, ...]
    unavailable: Callable[[], str | None] = lambda: None


OPTIONS = [
    Option("fpdf2", fpdf2_alone, ("fpdf2", "fonttools", "uharfbuzz", "pillow")),
    Option("fpdf2, names fixed", fpdf2_names_fixed, ("fpdf2",)),
    Option("reportlab+pikepdf", reportlab_pikepdf,
           ("reportlab", "uharfbuzz", "pikepdf", "pillow")),
    Option("fpdf2+pikepdf", fpdf2_pikepdf,
           ("fpdf2", "fonttools", "uharfbuzz", "pikepdf", "pillow")),
    Option("weasyprint+pikepdf", weasyprint_pikepdf, ("weasyprint", "pydyf", "pikepdf"),
           _weasyprint_runs),
]
NOTES = {"weasyprint": "needs the system's Pango, HarfBuzz, fontconfig (cffi)"}


# (a) Time --------------------------------------------------------------------------


def time_option(option: Option, msg: Message, rounds: int, calls: int) -> list[float]:
    option.make(msg, secrets.token_urlsafe(24))
    per_round = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            option.make(msg, secrets.token_urlsafe(24))
        per_round.append((time.perf_counter() - started) * 1000 / calls)
    return per_round


def fpdf2_costs(msg: Message, calls: int) -> tuple[float, float]:
    """
    Milliseconds of an fpdf2 message spent in add_font for the four DejaVu faces,
    and in text shaping (the message made without set_text_shaping, subtracted).
    """
    from fpdf import FPDF

    started = time.perf_counter()
    for _ in range(calls):
        pdf = FPDF()
        for style, name in DEJAVU.items():
            pdf.add_font("DejaVu", style, FONTS / name)
    fonts = (time.perf_counter() - started) * 1000 / calls
    shaped = min(time_option(OPTIONS[0], msg, 3, 1))
    shaping = FPDF.set_text_shaping
    FPDF.set_text_shaping = lambda *_args, **_kwargs: None  # type: ignore[method-assign]
    try:
        unshaped = min(time_option(OPTIONS[0], msg, 3, 1))
    finally:
        FPDF.set_text_shaping = shaping  # type: ignore[method-assign]
    return fonts, shaped - unshaped


# (b) Memory, in a fresh process ------------------------------------------------------


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_child(name: str) -> None:
    """
    Wait for a directory on stdin, render its attachment's message with one option,
    write the PDF there and print the peak RSS before and after as JSON.
    """
    line = sys.stdin.readline().strip()
    if not line:
        return
    directory = Path(line)
    option = next(o for o in OPTIONS if o.name == name)
    small = build_message(os.urandom(2048))
    option.make(small, secrets.token_urlsafe(24))  # imports, fonts, caches
    msg = replace(small, attachments=[(small.attachments[0][0],
                                       (directory / "attachment.bin").read_bytes(),
                                       small.attachments[0][2])])
    gc.collect()
    baseline = _maxrss()
    started = time.perf_counter()
    pdf = option.make(msg, secrets.token_urlsafe(24))
    elapsed = time.perf_counter() - started
    peak = _maxrss()
    (directory / f"{name}.pdf").write_bytes(pdf)
    print(json.dumps({"baseline": baseline, "peak": peak, "seconds": elapsed,
                      "output": len(pdf)}))


def start_memory_children(options: list[Option]) -> dict[str, subprocess.Popen[str]]:
    return {option.name: subprocess.Popen(
        [sys.executable, __file__, "--memory-child", option.name],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for option in options}


# (c), (d) Checks -------------------------------------------------------------------


def _run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True,
                          check=False)


def arabic_order(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    first, second = ARABIC.split()
    if ARABIC in text:
        return "RTL"
    if f"{second} {first}" in text:
        return "words LTR"
    if first[::-1] in text:
        return "unshaped"
    return "missing"


def check(pdf_path: Path, attachments: list[tuple[str, bytes, str]]) -> dict[str, str]:
    """Each check's result: "PASS", or what failed."""
    results: dict[str, str] = {}
    shown = _run("qpdf", "--show-encryption", f"--password={PASSWORD}", pdf_path).stdout
    aes = all(f"{what} encryption method: AESv3" in shown
              for what in ("stream", "string", "file"))
    results["R6/AES-256"] = "PASS" if re.search(r"^R = 6$", shown, re.M) and aes \
        else "FAIL: " + " ".join(shown.split()[:6])
    text = _run("pdftotext", "-upw", PASSWORD, pdf_path, "-").stdout
    wanted = ["Alice Example", "carol@example.net", "Quarterly figures", "reported",
              GREEK, CYRILLIC]
    missing = [w for w in wanted if w not in text]
    normalized = unicodedata.normalize("NFKC", text)
    ligatures = sorted({f"U+{ord(c):04X}" for c in text if 0xFB00 <= ord(c) <= 0xFB06})
    results["text"] = (
        "PASS" if not missing else
        f"FAIL: {missing[0]!r} only after NFKC (ligatures {', '.join(ligatures)})"
        if all(w in normalized for w in wanted) else f"FAIL: no {missing[0]!r}")
    missing = [w for w in HTML_WORDS if w not in text]
    images = len(_run("pdfimages", "-upw", PASSWORD, "-list", pdf_path)
                 .stdout.splitlines()[2:])
    results["HTML"] = ("PASS" if not missing and images >= 1 else
                       f"FAIL: no {missing[0]!r}" if missing else "FAIL: no image")
    results["Arabic"] = arabic_order(text)
    with tempfile.TemporaryDirectory() as out:
        _run("pdfdetach", "-upw", PASSWORD, "-saveall", "-o", out, pdf_path)
        same = all((Path(out) / name).is_file() and (Path(out) / name).read_bytes() == data
                   for name, data, _ in attachments)
    listed = _run("pdfdetach", "-upw", PASSWORD, "-list", pdf_path).stdout.splitlines()[1:]
    results["attachment"] = "PASS" if same else \
        f"FAIL: pdfdetach -list names {[line.split(' ', 1)[-1] for line in listed]}"
    refused = all(
        _run("qpdf", "--check", f"--password={wrong}", pdf_path).returncode != 0
        and _run("pdftotext", "-upw", wrong, pdf_path, "-").returncode != 0
        for wrong in WRONG_PASSWORDS)
    results["wrong pw"] = "PASS" if refused else "FAIL"
    results["version"] = pdf_path.read_bytes()[:8].decode("latin-1").removeprefix("%PDF-")
    return results


def attachment_identical(pdf_path: Path, name: str, data: bytes) -> str:
    with tempfile.TemporaryDirectory() as out:
        _run("pdfdetach", "-upw", PASSWORD, "-saveall", "-o", out, pdf_path)
        found = Path(out) / name
        return "PASS" if found.is_file() and found.read_bytes() == data else "FAIL"


# (e) Maintenance -------------------------------------------------------------------


def package_facts(name: str, latest: bool) -> tuple[str, str, str]:
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return "-", "-", "not installed"
    native = any(str(f).endswith((".so", ".pyd")) for f in dist.files or ())
    kind = "native" if native else "pure Python"
    if name in NOTES:
        kind += "; " + NOTES[name]
    newest = ""
    if latest:
        found = re.search(rf"^{re.escape(name)} \(([^)]+)\)", _run(
            sys.executable, "-m", "pip", "index", "versions", name).stdout, re.I | re.M)
        newest = found.group(1) if found else "?"
    return dist.version, newest, kind


# Report ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--calls", type=int, default=3,
                        help="messages per round (default 3)")
    parser.add_argument("--latest", action="store_true",
                        help="ask pip for each package's latest release")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return

    skipped = {option.name: why for option in OPTIONS if (why := option.unavailable())}
    options = [option for option in OPTIONS if option.name not in skipped]
    children = start_memory_children(options)
    msg = build_message(os.urandom(2048))
    print(f"PDF libraries: a {mime_size(msg) / 1024:.1f} KB message (MIME) with a 2 KB "
          f"attachment, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    for name, why in skipped.items():
        print(f"{name}: skipped, WeasyPrint {why}")
    print()

    times = {o.name: time_option(o, msg, args.rounds, args.calls) for o in options}
    sizes = {o.name: len(o.make(msg, secrets.token_urlsafe(24))) for o in options}

    big = os.urandom(BIG_ATTACHMENT)
    memory: dict[str, dict] = {}
    big_checks: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="cipherd-bench-") as tmp:
        (Path(tmp) / "attachment.bin").write_bytes(big)
        for option in options:  # one at a time
            out, _ = children[option.name].communicate(tmp + "\n")
            if children[option.name].returncode:
                raise RuntimeError(f"the {option.name} memory child failed")
            memory[option.name] = json.loads(out.strip().splitlines()[-1])
            big_checks[option.name] = attachment_identical(
                Path(tmp) / f"{option.name}.pdf", msg.attachments[0][0], big)

        checks = {}
        for option in options:
            path = Path(tmp) / f"{option.name}-small.pdf"
            path.write_bytes(option.make(msg, secrets.token_urlsafe(24)))
            checks[option.name] = check(path, msg.attachments)
    del big

    print(f"{'option':20} {'ms/msg':>7} {'(fastest-slowest)':>17} {'PDF KB':>7} "
          f"{'10 MB: peak RSS':>15} {'x attachment':>12} {'s':>5}")
    print("-" * 89)
    for option in options:
        median = statistics.median(times[option.name])
        spread = f"{min(times[option.name]):.1f}-{max(times[option.name]):.1f}"
        m = memory[option.name]
        growth = m["peak"] - m["baseline"]
        print(f"{option.name:20} {median:7.1f} {spread:>17} {sizes[option.name] / 1024:7.1f} "
              f"{growth / MB:12.1f} MB {growth / BIG_ATTACHMENT:12.2f} {m['seconds']:5.2f}")
    print(f"(median of {args.rounds} rounds of {args.calls} messages; peak RSS is ru_maxrss "
          "over the baseline in a fresh process, s its time)")
    fonts, shaping = fpdf2_costs(msg, args.calls)
    print(f"of an fpdf2 message: {fonts:.0f} ms add_font of the 4 DejaVu faces (parsed for "
          f"each document), {shaping:.0f} ms text shaping (fastest of 3, with and without)")
    print()

    names = ["R6/AES-256", "text", "HTML", "Arabic", "attachment", "10 MB att.", "wrong pw",
             "version"]
    print(f"{'option':20} " + " ".join(f"{n:>10}" for n in names))
    print("-" * (21 + 11 * len(names)))
    for option in options:
        row = dict(checks[option.name], **{"10 MB att.": big_checks[option.name]})
        print(f"{option.name:20} " + " ".join(f"{row[n].split(':')[0]:>10}" for n in names))
    for option in options:
        for name, result in checks[option.name].items():
            if result.startswith("FAIL"):
                print(f"{option.name}: {name}: {result}")
    print("(Arabic: RTL = laid out right to left in logical order; 'words LTR' = each word "
          "shaped but the words left to right; 'unshaped' = letters reversed)")
    print()

    print(f"{'package':12} {'installed':>10} {'latest':>8}  code")
    print("-" * 72)
    for name in dict.fromkeys(p for o in OPTIONS for p in o.packages):
        version, newest, kind = package_facts(name, args.latest)
        print(f"{name:12} {version:>10} {newest or '-':>8}  {kind}")
    if not args.latest:
        print("(--latest asks pip for the latest releases)")


if __name__ == "__main__":
    main()
