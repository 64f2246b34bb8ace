"""
Independent PDF readers for the PDF method's tests: qpdf and poppler's
C{pdftotext}, C{pdfdetach}, C{pdfinfo} and C{pdftoppm} (Debian C{qpdf},
C{poppler-utils}), driven through subprocess.  A missing reader skips,
except under CI, where it fails (L{peers.require_tool}).
"""

from __future__ import annotations

import subprocess
from email import message_from_bytes
from email.message import Message
from email.policy import default
from pathlib import Path

from tests.peers import PEER_TIMEOUT, require_tool


class PDFReaders:
    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._n = 0

    def _file(self, pdf: bytes) -> Path:
        self._n += 1
        path = self._directory / f"document-{self._n}.pdf"
        path.write_bytes(pdf)
        return path

    def _run(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run([str(a) for a in args], capture_output=True,
                                timeout=PEER_TIMEOUT, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{args[0]} failed ({result.returncode}): "
                                 f"{result.stderr.decode(errors='replace')}")
        return result

    def text(self, pdf: bytes, password: str) -> str:
        """
        The text poppler reads with the user password.
        """
        return self._run(require_tool("pdftotext"), "-upw", password, "-enc", "UTF-8",
                         self._file(pdf), "-").stdout.decode("utf-8")

    def decrypted(self, pdf: bytes, password: str) -> bytes:
        """
        The PDF as qpdf decrypts it with C{password}.
        """
        out = self._directory / f"decrypted-{self._n}.pdf"
        self._run(require_tool("qpdf"), f"--password={password}", "--decrypt",
                  self._file(pdf), out)
        return out.read_bytes()

    def encryption(self, pdf: bytes, password: str) -> str:
        return self._run(require_tool("qpdf"), f"--password={password}", "--show-encryption",
                         self._file(pdf)).stdout.decode()

    def refuses(self, pdf: bytes, password: str) -> tuple[str, str]:
        """
        What qpdf and pdftotext say to a wrong password (both must fail).
        """
        path = self._file(pdf)
        qpdf = self._run(require_tool("qpdf"), f"--password={password}", "--decrypt", path,
                         self._directory / "refused.pdf", check=False)
        poppler = self._run(require_tool("pdftotext"), "-upw", password, path, "-",
                            check=False)
        assert qpdf.returncode != 0 and poppler.returncode != 0
        return qpdf.stderr.decode(), poppler.stderr.decode()

    def attachments(self, pdf: bytes, password: str) -> dict[str, bytes]:
        """
        Every embedded file, saved by C{pdfdetach -saveall}, by name.
        """
        out = self._directory / f"detached-{self._n + 1}"
        out.mkdir()
        self._run(require_tool("pdfdetach"), "-upw", password, "-saveall", "-o", out,
                  self._file(pdf))
        return {path.name: path.read_bytes() for path in out.iterdir()}

    def attachment_keys(self, pdf: bytes, password: str) -> list[str]:
        """
        The keys of the PDF's embedded files name tree, as qpdf lists them
        (poppler reads the file specifications' names instead).
        """
        listed = self._run(require_tool("qpdf"), f"--password={password}",
                           "--list-attachments", self._file(pdf)).stdout.decode("utf-8")
        return sorted(line.rpartition(" -> ")[0] for line in listed.splitlines() if line)

    def info(self, pdf: bytes, password: str) -> str:
        return self._run(require_tool("pdfinfo"), "-upw", password,
                         self._file(pdf)).stdout.decode()

    def png(self, pdf: bytes, password: str, name: str, *, page: int = 1) -> Path:
        """
        Page C{page} rasterised at 100 dpi by C{pdftoppm}, to look at.
        """
        prefix = self._directory / name
        self._run(require_tool("pdftoppm"), "-upw", password, "-png", "-r", "100",
                  "-f", str(page), "-l", str(page), "-singlefile", self._file(pdf), prefix)
        return prefix.with_suffix(".png")


def pdf_of(mail: bytes) -> bytes:
    """
    The PDF attached to a PDF method mail.
    """
    found = [part for part in message_from_bytes(mail, policy=default).walk()
             if part.get_content_type() == "application/pdf"]
    assert len(found) == 1, "one PDF attachment"
    data = found[0].get_payload(decode=True)
    assert isinstance(data, bytes)
    return data


def text_of(mail: bytes) -> str:
    """
    The text part of a PDF method mail or of a notice.
    """
    message: Message = message_from_bytes(mail, policy=default)
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            return str(part.get_content())  # type: ignore[attr-defined]
    raise AssertionError("no text part")
