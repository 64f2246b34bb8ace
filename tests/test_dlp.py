"""
The DLP search (L{cipherd.mpa.dlp}): checks (Luhn, IBAN), patterns
checked on save and run by RE2 in linear time, word lists, thresholds,
redacted excerpts; text from the subject, text and HTML bodies, PDF, DOCX,
XLSX, ODT, zipped CSV and nested messages; zip bombs, password-protected
archives and encrypted PDFs reported, never searched blindly.
"""

from __future__ import annotations

import time

import pytest

from cipherd.mpa.dlp import (
    BUILTIN,
    Pattern,
    PatternError,
    Scanner,
    check_pattern,
    compile_expression,
    iban_valid,
    luhn_valid,
    mask,
)
from tests import dlp_samples as s

CARDS = Scanner([BUILTIN["credit-card"]])


def hits(scanner: Scanner, content: bytes) -> dict[str, tuple[int, tuple[str, ...]]]:
    return {f.pattern.name: (f.matches, f.where) for f in scanner.scan(content).findings}


def test_checks() -> None:
    assert luhn_valid(s.CARD) and luhn_valid(s.CARD_2) and luhn_valid("378282246310005")
    assert not luhn_valid(s.NOT_A_CARD) and not luhn_valid("4111")
    assert iban_valid(s.IBAN) and iban_valid("DE89 3704 0044 0532 0130 00")
    assert iban_valid("GB82WEST12345698765432")
    assert not iban_valid("NL91 ABNA 0417 1643 01") and not iban_valid("XX00 1234")
    assert iban_valid(s.IBAN + " PAYMENT")  # what follows in the match is not the number
    assert mask("4111 1111 1111 1111") == "•••• •••• •••• 1111"


def test_patterns_are_checked_on_save() -> None:
    assert check_pattern(BUILTIN["credit-card"]) == {}
    assert check_pattern(BUILTIN["confidential"]) == {}
    errors = check_pattern(Pattern("Bad Name!", r"(\w+)\1", threshold=0, validator="md5",
                                   action="shout"))
    assert set(errors) == {"name", "regex", "threshold", "validator", "action"}
    assert "Backreferences" in errors["regex"]
    assert "empty text" in check_pattern(Pattern("empty", r"x*"))["regex"]
    with pytest.raises(PatternError, match="longer than"):
        compile_expression("a" * 3000)
    assert check_pattern(Pattern("both", "x", words=("y",)))["regex"]
    assert "not valid text" in check_pattern(Pattern("odd", "a\ud800"))["regex"]
    assert "not valid text" in check_pattern(Pattern("odd", words=("x\ud800",)))["words"]
    assert check_pattern(Pattern("odd", "x", description="two\nlines"))["description"]


def test_a_pathological_expression_runs_in_linear_time() -> None:
    # (a+)+$ takes Python's re exponential time on a string of a's ending
    # in b; RE2 does not backtrack.
    scanner = Scanner([Pattern("evil", r"(a+)+$")])
    text = "a" * 100_000 + "b"
    started = time.perf_counter()
    assert scanner.scan_text([s_piece(text)]) == []
    matched = scanner.scan_text([s_piece("a" * 100_000)])
    elapsed = time.perf_counter() - started
    assert matched and matched[0].matches == 1
    assert elapsed < 1.0, elapsed  # a bound for a broken engine, not a benchmark


def s_piece(text: str) -> object:
    from cipherd.mpa.dlp import Piece

    return Piece("body", text)


def test_card_numbers_everywhere_a_message_carries_text() -> None:
    assert hits(CARDS, s.message(subject=f"Card {s.CARD}")) == {"credit-card": (1, ("subject",))}
    assert hits(CARDS, s.message(text=f"Pay with {s.CARD_2}.")) == {
        "credit-card": (1, ("body",))}
    html = f"<p>Card:</p><p><b>{s.CARD}</b></p><script>var x = '{s.CARD_2}';</script>"
    assert hits(CARDS, s.message(html=html))["credit-card"][0] == 1  # scripts are no text
    for name, content_type, data in (
            ("report.pdf", "application/pdf", s.pdf(f"Invoice\nCard {s.CARD}\n")),
            ("letter.docx", "application/vnd.openxmlformats-officedocument."
             "wordprocessingml.document", s.docx(["Card 4111 1111 ", "1111 1111", "."])),
            ("sheet.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
             s.xlsx(["name", s.CARD])),
            ("note.odt", "application/vnd.oasis.opendocument.text", s.odt(f"Card {s.CARD}")),
            ("data.zip", "application/zip", s.zipped({"q3/cards.csv": f"name,card\nA,{s.CARD}\n"
                                                      .encode()})),
            ("plain.csv", "text/csv", f"A;{s.CARD}\n".encode())):
        found = hits(CARDS, s.message(attachments=[(name, content_type, data)]))
        assert "credit-card" in found, name
        assert found["credit-card"][1][0].startswith(f"attachment {name}"), found
    inner = s.message(text=f"Forwarded: {s.CARD}")
    assert hits(CARDS, s.message(nested=inner))["credit-card"][1] == (
        "attachment message/rfc822/body",)


def test_numbers_failing_the_check_do_not_hit() -> None:
    content = s.message(text=f"Order {s.NOT_A_CARD}, phone 0612345678, 2026-12-04",
                        attachments=[("x.pdf", "application/pdf", s.pdf(s.NOT_A_CARD))])
    assert hits(CARDS, content) == {}


def test_thresholds_words_and_excerpts() -> None:
    two = Pattern("two-cards", BUILTIN["credit-card"].regex, threshold=2, validator="luhn")
    scanner = Scanner([two, BUILTIN["confidential"], BUILTIN["iban"]])
    assert hits(scanner, s.message(text=f"one {s.CARD}")) == {}
    result = scanner.scan(s.message(
        subject="STRICTLY  Confidential: payments",
        text=f"Cards {s.CARD} and {s.CARD_2}; account {s.IBAN}. Not confidentiality."))
    found = {f.pattern.name: f for f in result.findings}
    assert found["two-cards"].matches == 2
    assert found["confidential"].matches == 1  # the phrase, once; not "confidentiality"
    assert found["iban"].matches == 1
    assert "•••• •••• •••• 1111" in found["two-cards"].excerpt
    assert s.CARD not in found["two-cards"].excerpt


def test_what_cannot_be_searched_is_reported() -> None:
    result = CARDS.scan(s.message(attachments=[
        ("bomb.zip", "application/zip", s.zip_bomb()),
        ("locked.zip", "application/zip", s.encrypted_zip()),
        ("locked.pdf", "application/pdf", s.pdf(s.CARD, password="open-me")),
        ("broken.pdf", "application/pdf", b"%PDF-1.7\nnot really"),
    ]))
    problems = {(p.kind, p.where.split("/")[0]): p.why for p in result.problems}
    assert "expands" in problems["zip-bomb", "attachment bomb.zip"]
    assert problems["unscannable", "attachment locked.zip"] == \
        "the archive is password-protected"
    assert problems["unscannable", "attachment locked.pdf"] == "the PDF is encrypted"
    assert ("unscannable", "attachment broken.pdf") in problems
    assert result.findings == []


def test_archives_nested_too_deep_are_a_bomb() -> None:
    data = s.zipped({"cards.csv": s.CARD.encode()})
    for n in range(6):
        data = s.zipped({f"level{n}.zip": data})
    result = CARDS.scan(s.message(attachments=[("deep.zip", "application/zip", data)]))
    assert [p.kind for p in result.problems] == ["zip-bomb"]
    assert "too deep" in result.problems[0].why


def test_encrypted_mail_is_unscannable() -> None:
    content = (b"From: a@example.com\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; "
               b"name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\n\r\nMIAGCSqG\r\n")
    result = CARDS.scan(content)
    assert [(p.kind, p.why) for p in result.problems] == [("unscannable", "it is encrypted")]
