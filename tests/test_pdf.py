"""
The PDF method's document (L{cipherd.webmail.pdf}), read by independent
peers: qpdf decrypts it and reports AES-256 revision 6, poppler's
pdftotext reads its text, pdfdetach saves every attachment byte for byte,
and both refuse a wrong password.  Hostile HTML loads nothing; a message
the renderer cannot lay out is refused with a reason, never a traceback.
"""

# ruff: noqa: RUF001 (text in other scripts, on purpose)
from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from cipherd.settings import PASSWORD_ALPHABET, InvalidValue, PDFPassword
from cipherd.webmail.pdf import (
    PDF_FILENAME,
    PDFOptions,
    PDFRenderError,
    pdf_html,
    pdf_mail,
    random_password,
    render_pdf,
)
from tests.pdf_peers import PDFReaders, pdf_of, text_of

CORPUS = Path(os.environ.get(
    "CIPHERD_SMIME_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus")
) / "mime-edge"
PASSWORD = "correct horse battery"
OPTIONS = PDFOptions(user_password=PASSWORD, created=1_800_000_000)
# A 1x1 red PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC")


@pytest.fixture
def readers(tmp_path: Path) -> PDFReaders:
    return PDFReaders(tmp_path)


def message(body: bytes, *, content_type: bytes = b"text/plain; charset=utf-8",
            subject: bytes = b"Quarterly figures", extra: bytes = b"") -> bytes:
    return (b"From: Alice Example <alice@example.com>\r\nTo: bob@partner.example\r\n"
            b"Cc: carol@partner.example\r\nSubject: " + subject + b"\r\n"
            b"Date: Sun, 06 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n"
            + extra + b"MIME-Version: 1.0\r\nContent-Type: " + content_type + b"\r\n\r\n" + body)


def with_attachments(text: bytes, parts: list[tuple[str, str, bytes]]) -> bytes:
    body = b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + text + b"\r\n"
    for name, kind, data in parts:
        body += (b"--b\r\nContent-Type: " + kind.encode() + b"\r\n"
                 b"Content-Disposition: attachment; filename*=utf-8''"
                 + name.encode("utf-8").replace(b" ", b"%20") + b"\r\n"
                 b"Content-Transfer-Encoding: base64\r\n\r\n"
                 + base64.encodebytes(data).replace(b"\n", b"\r\n"))
    return message(body + b"--b--\r\n", content_type=b'multipart/mixed; boundary="b"')


def test_peers_read_the_text_and_the_header_block(readers: PDFReaders) -> None:
    pdf = render_pdf(message(b"The figures are attached.\r\nRegards, Alice\r\n"), OPTIONS)
    text = readers.text(pdf, PASSWORD)
    for expected in ("Alice Example <alice@example.com>", "bob@partner.example",
                     "carol@partner.example", "Quarterly figures",
                     "Sun, 06 Dec 2026 10:00:00 +0000", "The figures are attached.",
                     "Regards, Alice"):
        assert expected in text
    assert b"The figures" not in pdf  # encrypted, not merely compressed


def test_qpdf_reports_aes_256_revision_6(readers: PDFReaders) -> None:
    pdf = render_pdf(message(b"Hello"), OPTIONS)
    report = readers.encryption(pdf, PASSWORD)
    assert "R = 6" in report
    assert "stream encryption method: AESv3" in report  # qpdf's name for AES-256
    assert "Supplied password is user password" in report
    assert "modify other: not allowed" in report
    assert "Hello" in readers.text(readers.decrypted(pdf, PASSWORD), "")


def test_a_wrong_password_is_refused_by_both_peers(readers: PDFReaders) -> None:
    pdf = render_pdf(message(b"Hello"), OPTIONS)
    qpdf, poppler = readers.refuses(pdf, "wrong password")
    assert "invalid password" in qpdf
    assert "Incorrect password" in poppler
    readers.refuses(pdf, "")


def test_every_attachment_is_extracted_byte_identical(readers: PDFReaders) -> None:
    binary = os.urandom(70_000)
    parts = [("figures.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml"
              ".sheet", binary),
             ("notes.txt", "text/plain", b"line one\r\nline two\r\n"),
             ("notes.txt", "text/plain", b"another file of the same name\n"),
             ("Übersicht März.pdf", "application/pdf", b"%PDF-1.4 not really\n"),
             ("Отчёт.txt", "text/plain", "Отчёт\n".encode()),
             ("empty.bin", "application/octet-stream", b"")]
    pdf = render_pdf(with_attachments(b"See attached.", parts), OPTIONS)
    found = readers.attachments(pdf, PASSWORD)
    assert found == {"figures.xlsx": binary, "notes.txt": b"line one\r\nline two\r\n",
                     "notes (2).txt": b"another file of the same name\n",
                     "Übersicht März.pdf": b"%PDF-1.4 not really\n",
                     "Отчёт.txt": "Отчёт\n".encode()}
    # The names are encrypted with the rest, in the file specifications
    # (which poppler reads) and in the name tree (which qpdf reads).
    assert readers.attachment_keys(pdf, PASSWORD) == sorted(found)
    text = readers.text(pdf, PASSWORD)
    assert "Attachments (6)" in text and "notes (2).txt (text/plain" in text
    assert "empty.bin (application/octet-stream, empty, not embedded)" in text


def test_unicode_text_in_the_dejavu_fonts(readers: PDFReaders) -> None:
    body = ("Ελληνικά: καλημέρα\nКириллица: доброе утро\nעברית: בוקר טוב\n"
            "العربية: صباح الخير\nLatin: Grüße, ça va? 5 €\n").encode()
    pdf = render_pdf(message(body, subject="Grüße – Привет".encode()), OPTIONS)
    text = readers.text(pdf, PASSWORD)
    for expected in ("καλημέρα", "доброе утро", "Grüße, ça va? 5 €", "Grüße – Привет"):
        assert expected in text
    # Right-to-left text comes back in logical order.
    assert "صباح الخير" in text and "בוקר טוב" in text


def test_page_size_letter_or_a4(readers: PDFReaders) -> None:
    a4 = render_pdf(message(b"x"), OPTIONS)
    letter = render_pdf(message(b"x"), PDFOptions(user_password=PASSWORD, page_size="letter"))
    assert "595.28 x 841.89 pts (A4)" in readers.info(a4, PASSWORD)
    assert "612 x 792 pts (letter)" in readers.info(letter, PASSWORD)


def test_long_text_flows_over_pages_without_losing_a_word(readers: PDFReaders) -> None:
    words = [f"word{n}" for n in range(12_000)]
    body = "\n\n".join(" ".join(words[i:i + 150]) for i in range(0, len(words), 150))
    unbroken = "x" * 3000  # one word longer than a line
    pdf = render_pdf(message((body + "\n" + unbroken).encode()), OPTIONS)
    text = readers.text(pdf, PASSWORD)
    assert text.split().count("word11999") == 1
    assert all(w in text for w in ("word0", "word5000", "word11999"))
    assert "".join(text.split()).count("x" * 3000) == 1
    assert "Pages:" in (info := readers.info(pdf, PASSWORD)) and int(
        info.split("Pages:")[1].split()[0]) > 10


def html_message(html: str, *, images: dict[str, bytes] | None = None) -> bytes:
    related = b"--r\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html.encode() + b"\r\n"
    for cid, data in (images or {}).items():
        related += (b"--r\r\nContent-Type: image/png\r\nContent-ID: <" + cid.encode()
                    + b">\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                    + base64.encodebytes(data).replace(b"\n", b"\r\n"))
    return message(related + b"--r--\r\n", content_type=b'multipart/related; boundary="r"')


def test_html_is_laid_out_with_its_inline_images(readers: PDFReaders) -> None:
    html = ("<h1>Report</h1><p>Dear <b>Bob</b>, see <i>below</i>.</p>"
            "<ul><li>first</li><li>second</li></ul>"
            "<table border=1><tr><th>Item</th><th>Price</th></tr>"
            "<tr><td>Apples</td><td>3</td></tr></table>"
            "<p><img src=\"cid:logo@x\" width=\"40\" height=\"40\"></p>")
    pdf = render_pdf(html_message(html, images={"logo@x": PNG}), OPTIONS)
    text = readers.text(pdf, PASSWORD)
    for expected in ("Report", "Dear Bob, see below.", "first", "second", "Apples"):
        assert expected in text
    # The inline image is in the page, not listed as an attachment.
    assert b"/Subtype /Image" in readers.decrypted(pdf, PASSWORD)
    assert "Attachments" not in text


def test_hostile_html_loads_nothing_and_runs_nothing(tmp_path: Path,
                                                     readers: PDFReaders) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(PNG)
    html = (f"<p>Hi</p><img src=\"{secret}\"><img src=\"file://{secret}\">"
            "<img src=\"http://127.0.0.1:9/tracker.png\"><table><tr><td>"
            f"<img src=\"{secret}\"></td></tr></table>"
            "<script>alert(1)</script><a href=\"javascript:alert(1)\">link</a>"
            "<img src=\"cid:missing\" width=\"100%\"><font size=\"huge\" color=\"x;y\">t</font>")
    cleaned = pdf_html(html)
    assert str(secret) not in cleaned and "127.0.0.1" not in cleaned
    assert "script" not in cleaned and "javascript" not in cleaned
    pdf = render_pdf(html_message(html), OPTIONS)
    decrypted = readers.decrypted(pdf, PASSWORD)
    assert b"/Subtype /Image" not in decrypted and b"JavaScript" not in decrypted
    assert "Hi" in readers.text(pdf, PASSWORD)


def test_html_fpdf2_cannot_lay_out_is_shown_as_text(readers: PDFReaders) -> None:
    # Nested tables: fpdf2 refuses them.
    html = ("<p>Before</p><table><tr><td><table><tr><td>inner cell</td></tr></table>"
            "</td></tr></table><p>After</p>")
    pdf = render_pdf(html_message(html), OPTIONS)
    text = readers.text(pdf, PASSWORD)
    assert "could not be shown" in text
    assert "inner cell" in text and "After" in text


def test_a_reply_link_is_a_link(readers: PDFReaders) -> None:
    url = "https://gateway.example.com/pdf/reply/abc.def"
    pdf = render_pdf(message(b"x"), PDFOptions(user_password=PASSWORD, reply_url=url))
    assert url in readers.text(pdf, PASSWORD)
    assert url.encode() in readers.decrypted(pdf, PASSWORD)  # the link annotation's URI


def test_a_message_nested_too_deeply_is_refused_with_a_reason() -> None:
    depth = 3000
    body = b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (n, n + 1)
                    for n in range(depth))
    nested = message(body, content_type=b"multipart/mixed; boundary=b0")
    with pytest.raises(PDFRenderError, match="nested too deeply"):
        render_pdf(nested, OPTIONS)


def test_no_password_no_pdf() -> None:
    with pytest.raises(PDFRenderError):
        render_pdf(message(b"x"), PDFOptions(user_password=""))


@pytest.mark.parametrize("path", sorted(p for p in CORPUS.rglob("*") if p.is_file()),
                         ids=lambda p: str(p.relative_to(CORPUS)))
def test_the_mime_edge_corpus_makes_pdfs(path: Path) -> None:
    try:
        pdf = render_pdf(path.read_bytes(), OPTIONS)
    except PDFRenderError as e:
        assert "nested too deeply" in str(e)  # only stack-overflow.txt
        return
    assert pdf.startswith(b"%PDF-")


def test_the_mail_carries_the_pdf_and_the_text(readers: PDFReaders) -> None:
    original = with_attachments(b"Body", [("a.bin", "application/octet-stream", b"\0\1")])
    pdf = render_pdf(original, OPTIONS)
    mail = pdf_mail(original, pdf, "Open the PDF — Grüße.", obscure_subject=False)
    head = mail.split(b"\r\n\r\n", 1)[0]
    for field in (b"From: Alice Example <alice@example.com>", b"To: bob@partner.example",
                  b"Cc: carol@partner.example", b"Subject: Quarterly figures",
                  b"Message-ID: <1@example.com>", b"Date: Sun, 06 Dec 2026"):
        assert field in head
    assert pdf_of(mail) == pdf
    assert text_of(mail).strip() == "Open the PDF — Grüße."
    assert f'filename="{PDF_FILENAME}"'.encode() in mail
    assert all(len(line) <= 998 for line in mail.split(b"\r\n"))
    obscured = pdf_mail(original, pdf, "x", obscure_subject=True)
    assert b"Subject: [...]" in obscured and b"Quarterly" not in obscured


def test_random_passwords_use_the_alphabet() -> None:
    passwords = {random_password(16, PASSWORD_ALPHABET) for _ in range(200)}
    assert len(passwords) == 200
    assert all(len(p) == 16 and set(p) <= set(PASSWORD_ALPHABET) for p in passwords)
    assert not set("0O1lI") & set("".join(passwords))


def test_an_image_of_too_many_pixels_is_not_decoded(readers: PDFReaders) -> None:
    import io

    from PIL import Image
    out = io.BytesIO()
    Image.new("1", (6000, 6000)).save(out, "PNG")  # 36 M pixels in a few KB
    pdf = render_pdf(html_message('<p>Big</p><img src="cid:big@x">',
                                  images={"big@x": out.getvalue()}), OPTIONS)
    assert b"/Subtype /Image" not in readers.decrypted(pdf, PASSWORD)


def test_html_too_large_to_lay_out_is_shown_as_text(readers: PDFReaders) -> None:
    html = "".join(f"<p>paragraph {n}</p>" for n in range(3000))
    text = readers.text(render_pdf(html_message(html), OPTIONS), PASSWORD)
    assert "too large to lay out" in text and "paragraph 2999" in text


def test_a_multilingual_html_message_rasterised(readers: PDFReaders, artifacts: Path) -> None:
    """
    Latin, Greek, Cyrillic, Hebrew, Arabic and CJK in HTML, rasterised by
    poppler into C{artifacts/pdf-multilingual.png} for people to look at.
    CJK is not in DejaVu: it is left out, the rest is shown; with
    right-to-left writing in it, the HTML is shown as its text.
    """
    html = ("<h1>Grüße – Καλημέρα – Привет</h1>"
            "<p>Latin: <b>Grüße</b>, ça va? 5 € · Ελληνικά: <i>καλημέρα κόσμε</i></p>"
            "<p>Кириллица: доброе утро, мир</p><p>עברית: בוקר טוב</p>"
            "<p>العربية: صباح الخير يا عالم</p><p>中文: 你好，世界 · 日本語: こんにちは</p>"
            "<ul><li>one</li><li>два</li></ul>").encode()
    pdf = render_pdf(message(html, content_type=b"text/html; charset=utf-8",
                             subject="Grüße – Привет".encode()), OPTIONS)
    text = readers.text(pdf, PASSWORD)
    # Right-to-left writing comes back in logical order, so it was drawn
    # in the right one (fpdf2's HTML layout would draw it backwards).
    for expected in ("Καλημέρα", "доброе утро", "בוקר טוב", "صباح الخير", "два"):
        assert expected in text
    png = readers.png(pdf, PASSWORD, "multilingual")
    (artifacts / "pdf-multilingual.png").write_bytes(png.read_bytes())
    assert png.stat().st_size > 20_000  # a page with text on it, not a blank one


def test_a_password_pdf_readers_refuse_is_refused_without_being_named() -> None:
    # Mixed right-to-left and other characters: SASLprep (RFC 4013)
    # refuses it, as the setting's check does; the error never shows it.
    password = "סיסמה2024"
    with pytest.raises(PDFRenderError) as raised:
        render_pdf(message(b"Hello"), PDFOptions(user_password=password))
    assert password not in str(raised.value) and "[the password]" in str(raised.value)
    with pytest.raises(InvalidValue, match="right-to-left"):
        PDFPassword().check(password)
    assert PDFPassword().check("סיסמהסודית") == "סיסמהסודית"
