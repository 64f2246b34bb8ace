"""
The bounded memo behind the per-certificate caches: what a message's sender
chooses (certificates, names) is not kept when it is large.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from cipherd.pki import certs, cms
from cipherd.pki.memo import LIMIT, small_lru
from tests.pki_factory import END, START


def test_small_entries_are_kept_least_recently_used_first_out() -> None:
    calls = []

    @small_lru(2, lambda text, result: len(text))
    def upper(text: str) -> str:
        calls.append(text)
        return text.upper()

    assert [upper("a"), upper("b"), upper("a"), upper("c"), upper("a"), upper("b")] == [
        "A", "B", "A", "C", "A", "B"]
    # "b" was the least recently used when "c" came, so it was computed again.
    assert calls == ["a", "b", "c", "b"]
    big = "x" * (LIMIT + 1)
    upper(big), upper(big)
    assert calls[-2:] == [big, big]
    assert upper.cache_len() == 2  # type: ignore[attr-defined]


def _certificate_with_a_huge_name(key: ec.EllipticCurvePrivateKey,
                                  size: int = 200_000) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(x509.ObjectIdentifier("2.5.4.41"), "A" * size)])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(START).not_valid_after(END).sign(key, hashes.SHA256()))


def test_a_huge_certificate_in_a_message_is_not_retained() -> None:
    """
    Verifying a message whose signer certificate is huge works, and leaves
    neither that certificate nor its names in any cache.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate_with_a_huge_name(key)
    caches = [cms._describe, cms._issuer_and_serial_der, cms._certificate_der,
              cms._public_key, cms._issuer_der, certs.name_key]
    for cache in caches:
        cache.cache_clear()  # type: ignore[attr-defined]
    signed = cms.sign(b"hello", cert, key, signing_time=datetime(2026, 6, 1, tzinfo=UTC),
                      detached=False)
    result = cms.verify(signed)
    assert result.content == b"hello"
    certs.name_key(result.signers[0].certificate.subject)
    assert [cache.cache_len() for cache in caches] == [0] * len(caches)  # type: ignore[attr-defined]
    # An ordinary certificate is kept.
    small = ec.generate_private_key(ec.SECP256R1())
    certs.name_key(x509.Name([x509.NameAttribute(x509.ObjectIdentifier("2.5.4.3"), "CA")]))
    cms._public_key(_certificate_with_a_huge_name(small, size=10))
    assert certs.name_key.cache_len() == 1 and cms._public_key.cache_len() == 1  # type: ignore[attr-defined]


def test_a_name_is_remembered_by_its_der_not_by_the_object() -> None:
    """
    A name of white space normalizes to almost nothing, and a Name taken
    from a certificate keeps the whole certificate alive: the cache weighs
    and keys names by their DER, so neither is kept.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    certs.name_key.cache_clear()  # type: ignore[attr-defined]
    spaces = x509.Name([x509.NameAttribute(x509.ObjectIdentifier("2.5.4.10"),
                                           "x" + " " * 100_000)])
    assert certs.name_key(spaces) == certs.name_key(
        x509.Name([x509.NameAttribute(x509.ObjectIdentifier("2.5.4.10"), "X")]))
    assert certs.name_key.cache_len() == 1  # type: ignore[attr-defined]  # only the small one
    cert = _certificate_with_a_huge_name(key, size=10)
    certs.name_key(cert.subject)
    certs.name_key(cert.subject)
    assert certs.name_key.cache_len() == 2  # type: ignore[attr-defined]


def test_what_parsing_keeps_alive_is_weighed_too() -> None:
    """
    A small name of many one-letter parts, or a small certificate of many
    extensions, keeps far more alive once parsed than its DER weighs.
    """
    many_parts = x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(
        x509.ObjectIdentifier("2.5.4.10"), "a")]) for _ in range(1300)])
    certs.name_key.cache_clear()  # type: ignore[attr-defined]
    certs.name_key(many_parts)
    assert certs.name_key.cache_len() == 0  # type: ignore[attr-defined]

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.ObjectIdentifier("2.5.4.3"), "many")])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(2)
               .not_valid_before(START).not_valid_after(END))
    for n in range(40):
        builder = builder.add_extension(x509.UnrecognizedExtension(
            x509.ObjectIdentifier(f"1.3.6.1.4.1.99999.{n}"), b"\x05\x00"), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    assert len(cert.tbs_certificate_bytes) < 4096
    cms._public_key.cache_clear()  # type: ignore[attr-defined]
    cms._public_key(cert)
    assert cms._public_key.cache_len() == 0  # type: ignore[attr-defined]
