"""
Data loss prevention: the patterns a message is searched for, and the
search — in the subject, the text and HTML parts, and the text of
attachments (PDF, Office Open XML, OpenDocument, plain text and CSV, nested
messages and zip archives), within bounds.

Patterns are regular expressions run by RE2 (``google-re2``), whose time is
linear in the text whatever the expression: a pattern such as ``(a+)+$``
cannot stall the queue as it would Python's backtracking ``re``.  A pattern
may need several matches (its threshold), and a match may have to pass a
check (the Luhn check of card numbers, the IBAN checksum).  Word lists are
patterns too: whole words, case ignored.

What cannot be searched is said, never passed over in silence: encrypted
attachments and password-protected archives (*unscannable*), archives that
expand beyond the bounds or nest too deep (*zip bomb*).
"""

from __future__ import annotations

import html.parser
import io
import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from email.policy import compat32

import re2

# What a message's search reads at most: text beyond this is not searched
# (and said so).
MAX_TEXT = 20_000_000
# Archives: how deep they may nest, how much they may expand to in all, and
# how many members they may have; a member that expands more than
# BOMB_RATIO times its compressed size (and past BOMB_MIN bytes) is a bomb.
MAX_DEPTH = 4
MAX_EXPANDED = 50_000_000
MAX_MEMBERS = 2000
BOMB_RATIO = 200
BOMB_MIN = 1_000_000
# A pattern's expression, at most (RE2 compiles it within its memory bound).
MAX_REGEX = 2000
RE2_MEMORY = 16 << 20
# How much of the text around a match a redacted excerpt shows.
EXCERPT_CONTEXT = 40

VALIDATORS = ("none", "luhn", "iban")
ACTIONS = ("warn", "encrypt", "quarantine", "block")


class PatternError(ValueError):
    """
    A pattern is refused: the message says why.
    """


# Checks ---------------------------------------------------------------------------

def luhn_valid(text: str) -> bool:
    """
    The Luhn check (ISO/IEC 7812) of the digits in C{text}: card numbers of
    13 to 19 digits pass it, most mistyped or made-up ones do not.
    """
    digits = [int(c) for c in text if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, digit in enumerate(reversed(digits)):
        if i % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


# ISO 13616: the length of each country's IBAN.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24,
    "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}


def iban_valid(text: str) -> bool:
    """
    The IBAN check (ISO 13616, mod 97 = 1) of the first characters of
    C{text} (spaces ignored) that make an IBAN of its country's length.
    """
    compact = "".join(c for c in text if c.isalnum()).upper()
    length = _IBAN_LENGTHS.get(compact[:2])
    # What follows the number in the same match (another group of capitals)
    # is not part of it: its country says how long it is.
    if length is None or len(compact) < length:
        return False
    iban = compact[:length]
    moved = iban[4:] + iban[:4]
    try:
        number = int("".join(str(int(c, 36)) for c in moved))
    except ValueError:
        return False
    return number % 97 == 1


_CHECKS = {"luhn": luhn_valid, "iban": iban_valid}


# Patterns -------------------------------------------------------------------------

@dataclass(frozen=True)
class Pattern:
    """
    What DLP looks for.

    @ivar regex: an RE2 expression (no backreferences or lookaround); for
        a word list, made from C{words}.
    @ivar threshold: how many (checked) matches in one message make it hit.
    @ivar validator: C{"none"}, C{"luhn"} or C{"iban"}: what a match must
        pass as well.
    @ivar action: what a hit does (L{ACTIONS}).
    @ivar words: a word list instead of an expression: whole words or
        phrases, case ignored.
    """

    name: str
    regex: str = ""
    threshold: int = 1
    validator: str = "none"
    action: str = "warn"
    words: tuple[str, ...] = ()
    description: str = ""

    @property
    def expression(self) -> str:
        if self.words:
            return words_expression(self.words)
        return self.regex


def words_expression(words: Iterable[str]) -> str:
    """
    An RE2 expression matching any of C{words} as a whole word (or phrase,
    its spaces any white space), case ignored.
    """
    parts = [r"\s+".join(_re2_escape(w) for w in word.split()) for word in words
             if word.split()]
    return r"(?i)\b(?:" + "|".join(parts) + r")\b"


def _re2_escape(text: str) -> str:
    return re.escape(text)


def _options() -> re2.Options:
    options = re2.Options()
    options.max_mem = RE2_MEMORY
    options.log_errors = False
    return options


def compile_expression(expression: str) -> re2._Regexp:
    """
    @raise PatternError: it is empty, too long, or not an expression RE2
        runs (backreferences and lookaround are not: they cannot run in
        linear time).
    """
    if not expression:
        raise PatternError("The expression is empty.")
    if len(expression) > MAX_REGEX:
        raise PatternError(f"The expression is longer than {MAX_REGEX} characters.")
    try:
        expression.encode("utf-8")
    except UnicodeEncodeError:
        raise PatternError("The expression is not valid text (a lone surrogate).") from None
    try:
        compiled = re2.compile(expression, _options())
    except re2.error as e:
        why = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
        raise PatternError(f"The expression is not one DLP can run: {why}. (Backreferences "
                           "and lookaround are not supported: every pattern runs in time "
                           "linear in the text.)") from None
    if compiled.search("") is not None:
        raise PatternError("The expression matches the empty text: it would match every "
                           "message.")
    return compiled


def check_pattern(pattern: Pattern) -> dict[str, str]:
    """
    @return: what is wrong with C{pattern}, by field (empty: nothing).
    """
    errors: dict[str, str] = {}
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", pattern.name):
        errors["name"] = ("1 to 64 lower-case letters, digits, '-', '_' or '.', beginning "
                          "with a letter or digit")
    if pattern.validator not in VALIDATORS:
        errors["validator"] = f"must be one of {', '.join(VALIDATORS)}"
    if pattern.action not in ACTIONS:
        errors["action"] = f"must be one of {', '.join(ACTIONS)}"
    if not 1 <= pattern.threshold <= 10000:
        errors["threshold"] = "must be from 1 to 10000 matches"
    if pattern.words and pattern.regex:
        errors["regex"] = "give an expression or a word list, not both"
    elif not pattern.words and not pattern.regex:
        errors["regex"] = "give an expression or a word list"
    if len(pattern.words) > 1000 or any(len(w) > 200 for w in pattern.words):
        errors["words"] = "at most 1000 words or phrases of at most 200 characters"
    if len(pattern.description) > 400 or not _is_text(pattern.description):
        errors["description"] = "one line of at most 400 characters"
    if "regex" not in errors and "words" not in errors:
        try:
            compile_expression(pattern.expression)
        except PatternError as e:
            errors["words" if pattern.words else "regex"] = str(e)
    return errors


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return value.isprintable() or not value


# The built-in library an admin picks from (and may change once added).
BUILTIN: dict[str, Pattern] = {p.name: p for p in (
    # Written as cards print them (4 groups of 4, or American Express's
    # 4-6-5, spaces or dashes between groups, or none), not as any run of
    # digits: a table of figures read out of a PDF is digits and spaces,
    # and one run in ten passes the Luhn check by chance.
    Pattern("credit-card",
            r"\b(?:\d{4}[ -]?){3}\d{4}(?:\d{3})?\b|\b3[47]\d{2}[ -]?\d{6}[ -]?\d{5}\b",
            validator="luhn", action="encrypt",
            description="Payment card numbers as cards print them (16 or 19 digits in groups "
                        "of four, American Express 15 as 4-6-5) that pass the Luhn check."),
    Pattern("iban", r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b", validator="iban",
            action="encrypt",
            description="International bank account numbers with a valid checksum."),
    Pattern("us-ssn", r"\b(?:00[1-9]|0[1-9]\d|[1-578]\d\d|6[0-57-9]\d|66[0-57-9])-"
                      r"(?:0[1-9]|[1-9]\d)-(?:000[1-9]|00[1-9]\d|0[1-9]\d\d|[1-9]\d{3})\b",
            action="encrypt",
            description="US social security numbers written NNN-NN-NNNN, in the ranges "
                        "the SSA assigns."),
    Pattern("uk-nino", r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b",
            action="encrypt", description="UK national insurance numbers."),
    Pattern("confidential", words=("strictly confidential", "confidential",
                                   "internal use only", "vertraulich", "vertrouwelijk"),
            action="warn",
            description="Documents marked confidential (English, German, Dutch)."),
)}


# Text extraction --------------------------------------------------------------

@dataclass(frozen=True)
class Piece:
    """
    Text found in a message: where (C{"subject"}, C{"body"},
    C{"attachment report.pdf"}, C{"attachment data.zip/q3.csv"}) and what.
    """

    where: str
    text: str


@dataclass(frozen=True)
class Problem:
    """
    Something that could not be searched: C{kind} C{"unscannable"} (an
    encrypted attachment or archive, a PDF that cannot be read) or
    C{"zip-bomb"} (an archive past the bounds).
    """

    kind: str
    where: str
    why: str


@dataclass
class _Budget:
    text: int = MAX_TEXT
    expanded: int = MAX_EXPANDED
    truncated: bool = False


class _HTMLText(html.parser.HTMLParser):
    """
    The text of an HTML part, as it reads (scripts and styles left out).
    """

    _SKIP = {"script", "style", "head", "title"}
    _BREAK = {"p", "div", "br", "tr", "td", "th", "li", "h1", "h2", "h3", "h4", "h5", "h6",
              "table", "section", "article"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BREAK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1
        elif tag in self._BREAK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_text(markup: str) -> str:
    parser = _HTMLText()
    parser.feed(markup)
    parser.close()
    return "".join(parser.parts)


# Office Open XML and OpenDocument: the XML parts whose text is the
# document's, and the elements that end a paragraph, cell or run of text.
_OFFICE_PARTS = re.compile(
    r"^(word/(document|header\d*|footer\d*|footnotes|endnotes|comments)\.xml"
    r"|xl/(sharedStrings|worksheets/sheet\d+)\.xml|ppt/(slides/slide\d+|notesSlides/"
    r"notesSlide\d+)\.xml|content\.xml|styles\.xml)$")
_XML_BREAK = re.compile(
    r"</(?:w:p|a:p|text:p|text:h|si|c|row|table:table-cell|table:table-row)>"
    r"|<(?:w:tab|w:br|text:tab|text:line-break|text:s)\b[^>]*/>")
_XML_TAG = re.compile(r"<[^>]*>")
_XML_ENTITY = re.compile(r"&(#x[0-9a-fA-F]+|#\d+|amp|lt|gt|quot|apos);")


def _entity(match: re.Match[str]) -> str:
    name = match.group(1)
    if name.startswith("#x"):
        return chr(int(name[2:], 16)) if int(name[2:], 16) < 0x110000 else ""
    if name.startswith("#"):
        return chr(int(name[1:])) if int(name[1:]) < 0x110000 else ""
    return {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}[name]


def xml_text(xml: str) -> str:
    """
    The text of an office document's XML part: tags removed (a paragraph,
    cell or tab ends in a line break, the runs of one paragraph joined, as
    a number split over runs reads in the document), entities decoded.
    No DTD is read: nothing expands.
    """
    text = _XML_BREAK.sub("\n", xml)
    text = _XML_TAG.sub("", text)
    return _XML_ENTITY.sub(_entity, text)


def _is_text_type(content_type: str) -> bool:
    return content_type.startswith("text/") or content_type in (
        "application/csv", "application/json", "application/xml")


def _kind_of(name: str, content_type: str, data: bytes) -> str:
    lowered = name.lower()
    if data.startswith(b"%PDF") or content_type == "application/pdf" or lowered.endswith(
            ".pdf"):
        return "pdf"
    if data.startswith(b"PK\x03\x04") or data.startswith(b"PK\x05\x06"):
        return "zip"
    if content_type == "message/rfc822" or lowered.endswith(".eml"):
        return "message"
    if lowered.endswith(".html") or lowered.endswith(".htm") or content_type == "text/html":
        return "html"
    if _is_text_type(content_type) or lowered.endswith((".txt", ".csv", ".tsv", ".json",
                                                        ".xml", ".md", ".log")):
        return "text"
    return "other"


def _decode(data: bytes, charset: str | None = None) -> str:
    for encoding in (charset, "utf-8"):
        if encoding:
            try:
                return data.decode(encoding)
            except (LookupError, UnicodeDecodeError):
                continue
    return data.decode("latin-1")


class Extraction:
    """
    The text of one message and what could not be read, found by walking
    it once.
    """

    def __init__(self) -> None:
        self.pieces: list[Piece] = []
        self.problems: list[Problem] = []
        self._budget = _Budget()

    def _add(self, where: str, text: str) -> None:
        if not text.strip():
            return
        if len(text) > self._budget.text:
            text = text[:self._budget.text]
            self._budget.truncated = True
        self._budget.text -= len(text)
        self.pieces.append(Piece(where, text))

    @property
    def truncated(self) -> bool:
        return self._budget.truncated

    def message(self, content: bytes, where: str = "", depth: int = 0) -> None:
        parsed = message_from_bytes(content, policy=compat32)
        subject = parsed.get("Subject")
        if subject:
            self._add(f"{where}subject", _header_text(str(subject)))
        self._entity(parsed, where, depth)

    def _entity(self, part: Message, where: str, depth: int) -> None:
        content_type = part.get_content_type()
        if content_type == "multipart/encrypted" or (
                content_type in ("application/pkcs7-mime", "application/x-pkcs7-mime")
                and "signed-data" not in str(part.get_param("smime-type") or "")):
            self.problems.append(Problem("unscannable", f"{where}body" if not where else
                                        where.rstrip("/"), "it is encrypted"))
            return
        if content_type == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                label = f"{where}attachment {part.get_filename() or content_type}"
                self._nested(inner[0].as_bytes(), label, depth)
            return
        if part.is_multipart():
            for sub in part.get_payload():
                if isinstance(sub, Message):
                    self._entity(sub, where, depth)
            return
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            data = b""
        name = part.get_filename() or ""
        disposition = part.get_content_disposition()
        if not name and disposition != "attachment" and content_type in ("text/plain",
                                                                         "text/html"):
            text = _decode(data, part.get_content_charset())
            self._add(f"{where}body", html_text(text) if content_type == "text/html" else text)
            return
        label = f"{where}attachment {name or content_type}"
        self.document(name, content_type, data, label, depth)

    def _nested(self, content: bytes, label: str, depth: int) -> None:
        if depth + 1 > MAX_DEPTH:
            self.problems.append(Problem("zip-bomb", label, "it nests too deep"))
            return
        self.message(content, f"{label}/", depth + 1)

    def document(self, name: str, content_type: str, data: bytes, where: str,
                 depth: int) -> None:
        """
        The text of one attached file, by its kind (from its bytes first).
        """
        kind = _kind_of(name, content_type, data)
        if kind == "pdf":
            self._pdf(data, where)
        elif kind == "zip":
            self._zip(data, where, depth)
        elif kind == "message":
            self._nested(data, where, depth)
        elif kind == "html":
            self._add(where, html_text(_decode(data)))
        elif kind == "text":
            self._add(where, _decode(data))

    def _pdf(self, data: bytes, where: str) -> None:
        import pypdf
        from pypdf.errors import PdfReadError

        try:
            reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
            if reader.is_encrypted and not reader.decrypt(""):
                self.problems.append(Problem("unscannable", where, "the PDF is encrypted"))
                return
            texts = []
            for page in reader.pages:
                texts.append(page.extract_text() or "")
                if sum(map(len, texts)) > self._budget.text:
                    break
        except (PdfReadError, ValueError, KeyError, TypeError, AttributeError,
                RecursionError, NotImplementedError) as e:
            self.problems.append(Problem("unscannable", where,
                                         f"the PDF cannot be read ({type(e).__name__})"))
            return
        self._add(where, "\n".join(texts))

    def _zip(self, data: bytes, where: str, depth: int) -> None:
        if depth + 1 > MAX_DEPTH:
            self.problems.append(Problem("zip-bomb", where, "archives nest too deep"))
            return
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            members = archive.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as e:
            self.problems.append(Problem("unscannable", where,
                                         f"the archive cannot be read ({e})"))
            return
        if len(members) > MAX_MEMBERS:
            self.problems.append(Problem("zip-bomb", where,
                                         f"it has {len(members)} members"))
            return
        names = {m.filename for m in members}
        office = bool(names & {"[Content_Types].xml", "mimetype"})
        if any(m.flag_bits & 0x1 for m in members):
            self.problems.append(Problem("unscannable", where,
                                         "the archive is password-protected"))
            return
        declared = sum(m.file_size for m in members)
        if declared > self._budget.expanded:
            self.problems.append(Problem("zip-bomb", where,
                                         f"it expands to {declared:,} bytes"))
            return
        for member in members:
            if member.is_dir():
                continue
            if office and not _OFFICE_PARTS.match(member.filename):
                continue
            ratio = member.file_size / max(member.compress_size, 1)
            if member.file_size > BOMB_MIN and ratio > BOMB_RATIO:
                self.problems.append(Problem(
                    "zip-bomb", f"{where}/{member.filename}",
                    f"it expands {ratio:,.0f} times ({member.file_size:,} bytes)"))
                return
            try:
                content = _read_bounded(archive, member, self._budget.expanded)
            except _TooLarge:
                self.problems.append(Problem("zip-bomb", f"{where}/{member.filename}",
                                             "it expands past its declared size"))
                return
            except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError,
                    EOFError) as e:
                self.problems.append(Problem("unscannable", f"{where}/{member.filename}",
                                             f"it cannot be read ({e})"))
                continue
            self._budget.expanded -= len(content)
            if office:
                self._add(where, xml_text(_decode(content)))
            else:
                self.document(member.filename, "", content, f"{where}/{member.filename}",
                              depth + 1)


class _TooLarge(Exception):
    pass


def _read_bounded(archive: zipfile.ZipFile, member: zipfile.ZipInfo, limit: int) -> bytes:
    """
    A member's bytes, refusing to expand past its declared size or C{limit}
    (a header may lie).
    """
    cap = min(member.file_size, limit)
    with archive.open(member) as stream:
        data = stream.read(cap + 1)
    if len(data) > cap:
        raise _TooLarge()
    return data


def _header_text(value: str) -> str:
    from email.header import decode_header, make_header

    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeDecodeError):
        return value


# The search -------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    """
    A pattern that hit: how many (checked) matches, where, and an excerpt
    with each match masked (all but its last 4 characters).
    """

    pattern: Pattern
    matches: int
    where: tuple[str, ...]
    excerpt: str


@dataclass
class ScanResult:
    findings: list[Finding] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    truncated: bool = False

    def actions(self) -> set[str]:
        return {f.pattern.action for f in self.findings}


def mask(text: str) -> str:
    """
    C{text} with all but its last four letters and digits replaced by •.
    """
    keep = 4
    out = []
    for char in reversed(text):
        if char.isalnum() and keep:
            out.append(char)
            keep -= 1
        elif char.isalnum():
            out.append("•")
        else:
            out.append(char)
    return "".join(reversed(out))


class Scanner:
    """
    The patterns, compiled once, and the search of a message for them.
    """

    def __init__(self, patterns: Sequence[Pattern]) -> None:
        self.patterns = list(patterns)
        self._compiled = [(p, compile_expression(p.expression)) for p in self.patterns]

    def scan_text(self, pieces: Sequence[Piece]) -> list[Finding]:
        findings = []
        for pattern, compiled in self._compiled:
            check = _CHECKS.get(pattern.validator)
            count = 0
            where: list[str] = []
            excerpt = ""
            for piece in pieces:
                for match in compiled.finditer(piece.text):
                    found = match.group()
                    if check is not None and not check(found):
                        continue
                    count += 1
                    if piece.where not in where:
                        where.append(piece.where)
                    if not excerpt:
                        start, end = match.start(), match.end()
                        before = piece.text[max(0, start - EXCERPT_CONTEXT):start]
                        after = piece.text[end:end + EXCERPT_CONTEXT]
                        excerpt = " ".join(f"{before}{mask(found)}{after}".split())
            if count >= pattern.threshold:
                findings.append(Finding(pattern, count, tuple(where), excerpt))
        return findings

    def scan(self, content: bytes) -> ScanResult:
        """
        Search a whole message (CPU work: run it in the crypto pool).
        """
        extraction = Extraction()
        extraction.message(content)
        return ScanResult(self.scan_text(extraction.pieces), extraction.problems,
                          extraction.truncated)


__all__ = ["ACTIONS", "BUILTIN", "VALIDATORS", "Extraction", "Finding", "Pattern",
           "PatternError", "Piece", "Problem", "ScanResult", "Scanner", "check_pattern",
           "compile_expression", "iban_valid", "luhn_valid", "mask", "words_expression"]
