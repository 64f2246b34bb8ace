"""
Messages and attachments for the DLP tests: a card number in a PDF, a
DOCX (split over runs, as Word writes it), an ODT, an XLSX, a zipped CSV,
an HTML body, a nested message; a zip bomb, a password-protected zip and an
encrypted PDF.
"""

from __future__ import annotations

import io
import zipfile
from email.message import EmailMessage
from email.policy import SMTP

from fpdf import FPDF

# Test card numbers that pass the Luhn check, and one that does not.
CARD = "4111 1111 1111 1111"
CARD_2 = "5500-0000-0000-0004"
NOT_A_CARD = "4111 1111 1111 1112"
IBAN = "NL91 ABNA 0417 1643 00"


def pdf(text: str, *, password: str | None = None) -> bytes:
    document = FPDF()
    document.add_page()
    document.set_font("helvetica", size=12)
    document.multi_cell(0, 8, text)
    if password is not None:
        from fpdf.enums import EncryptionMethod

        document.set_encryption(owner_password="owner-" + password, user_password=password,
                                encryption_method=EncryptionMethod.AES_256)
    return bytes(document.output())


def _zip(files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def docx(text_runs: list[str]) -> bytes:
    runs = "".join(f"<w:r><w:t>{t}</w:t></w:r>" for t in text_runs)
    document = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
        f"<w:body><w:p>{runs}</w:p><w:p><w:r><w:t>Regards &amp; thanks</w:t></w:r></w:p>"
        "</w:body></w:document>")
    return _zip({"[Content_Types].xml": b'<?xml version="1.0"?><Types/>',
                 "word/document.xml": document.encode(),
                 "word/media/image1.png": b"\x89PNG not text 4111111111111111"})


def xlsx(cells: list[str]) -> bytes:
    strings = "".join(f"<si><t>{c}</t></si>" for c in cells)
    return _zip({"[Content_Types].xml": b"<Types/>",
                 "xl/sharedStrings.xml": f"<sst>{strings}</sst>".encode(),
                 "xl/worksheets/sheet1.xml": b"<worksheet><sheetData/></worksheet>"})


def odt(text: str) -> bytes:
    content = ('<office:document-content xmlns:office="o" xmlns:text="t"><office:body>'
               f"<text:p>{text}</text:p></office:body></office:document-content>")
    return _zip({"mimetype": b"application/vnd.oasis.opendocument.text",
                 "content.xml": content.encode()})


def zipped(files: dict[str, bytes]) -> bytes:
    return _zip(files)


def zip_bomb() -> bytes:
    # 40 MB of zeros in one member: it compresses about 1000 times.
    return _zip({"zeros.bin": b"\0" * 40_000_000})


def encrypted_zip() -> bytes:
    """
    A zip whose member says it is encrypted (the flag the ZIP format sets
    for a password), as zip -e and 7-Zip write it.
    """
    data = bytearray(_zip({"secret.csv": b"card\n" + CARD.encode()}))
    local = data.find(b"PK\x03\x04")
    data[local + 6] |= 0x1
    central = data.find(b"PK\x01\x02")
    data[central + 8] |= 0x1
    return bytes(data)


def message(*, subject: str = "Figures", text: str = "Hello.", html: str | None = None,
            attachments: list[tuple[str, str, bytes]] = (),  # type: ignore[assignment]
            nested: bytes | None = None) -> bytes:
    mail = EmailMessage(policy=SMTP)
    mail["From"] = "alice@example.com"
    mail["To"] = "bob@partner.example"
    mail["Subject"] = subject
    mail.set_content(text)
    if html is not None:
        mail.add_alternative(html, subtype="html")
    for name, content_type, data in attachments:
        maintype, subtype = content_type.split("/")
        mail.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    if nested is not None:
        from email import message_from_bytes
        from email.policy import default

        mail.add_attachment(message_from_bytes(nested, policy=default))
    return mail.as_bytes()
