"""
Queries for the built-in certificate authority (L{cipherd.pki.ca}): the
CAs, the certificates they issued, and the requests waiting to be issued.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Connection, delete, func, insert, or_, select, true, update

from cipherd.store.schema import ca_authorities, ca_issued, ca_requests

# Where a certificate came from, as ca_issued.origin says it.
ORIGINS = ("admin", "csv", "auto", "renewal")


@dataclass(frozen=True)
class CARow:
    id: str
    subject: str
    key_type: str
    private_key: bytes
    csr: bytes | None
    certificate: bytes | None
    thumbprint: str | None
    not_after: float | None
    crl_url: str
    crl_number: int
    crl: bytes | None
    crl_this_update: float | None
    crl_next_update: float | None
    created: float

    @property
    def pending(self) -> bool:
        """
        An intermediate waiting for its certificate.
        """
        return self.certificate is None


@dataclass(frozen=True)
class IssuedRow:
    thumbprint: str
    ca_id: str
    serial: str
    email: str
    der: bytes
    not_before: float
    not_after: float
    issued: float
    origin: str
    revoked: float | None
    reason: str | None
    renewed_by: str | None


@dataclass(frozen=True)
class RequestRow:
    id: int
    email: str
    ca_id: str | None
    validity_days: int | None
    requested: float
    requested_by: str
    attempts: int
    error: str | None


def _ca(row: object) -> CARow:
    return CARow(**row._mapping)  # type: ignore[attr-defined]


def _issued(row: object) -> IssuedRow:
    return IssuedRow(**row._mapping)  # type: ignore[attr-defined]


def _request(row: object) -> RequestRow:
    return RequestRow(**row._mapping)  # type: ignore[attr-defined]


# CAs --------------------------------------------------------------------------

def put_ca(conn: Connection, row: CARow) -> None:
    conn.execute(insert(ca_authorities).values(**row.__dict__))


def list_cas(conn: Connection) -> list[CARow]:
    """
    Every CA, oldest first.
    """
    return [_ca(r) for r in conn.execute(
        select(ca_authorities).order_by(ca_authorities.c.created, ca_authorities.c.id))]


def get_ca(conn: Connection, ref: str) -> CARow | None:
    """
    @param ref: a CA's id or its certificate's thumbprint (lower case).
    """
    row = conn.execute(select(ca_authorities).where(
        or_(ca_authorities.c.id == ref, ca_authorities.c.thumbprint == ref))).first()
    return None if row is None else _ca(row)


def expiring_cas(conn: Connection, before: float) -> list[CARow]:
    """
    The CAs with a certificate not valid after C{before}, soonest first.
    """
    return [_ca(r) for r in conn.execute(select(ca_authorities).where(
        ca_authorities.c.not_after.is_not(None) & (ca_authorities.c.not_after < before))
        .order_by(ca_authorities.c.not_after))]


def install_certificate(conn: Connection, ca_id: str, der: bytes, thumbprint: str,
                        not_after: float) -> bool:
    """
    Give a pending CA its certificate.

    @return: whether it was pending (another admin may have been first).
    """
    done = conn.execute(update(ca_authorities).where(
        (ca_authorities.c.id == ca_id) & ca_authorities.c.certificate.is_(None)).values(
        certificate=der, thumbprint=thumbprint, not_after=not_after, csr=None))
    return bool(done.rowcount)


def next_crl_number(conn: Connection, ca_id: str) -> tuple[int, float | None]:
    """
    Take the CA's next CRL number (RFC 5280 §5.2.3: increasing).

    @return: it, and the thisUpdate of the CRL kept now, both read after the
        row was locked by the update (a CRL signed meanwhile elsewhere is
        seen).
    """
    conn.execute(update(ca_authorities).where(ca_authorities.c.id == ca_id).values(
        crl_number=ca_authorities.c.crl_number + 1))
    number, this_update = conn.execute(select(
        ca_authorities.c.crl_number, ca_authorities.c.crl_this_update).where(
        ca_authorities.c.id == ca_id)).one()
    return int(number), this_update


def put_crl(conn: Connection, ca_id: str, der: bytes, number: int, this_update: float,
            next_update: float) -> bool:
    """
    Keep C{der} as the CA's CRL unless a CRL with a higher number is kept
    already (two nodes signing at once).

    @return: whether it was kept.
    """
    done = conn.execute(update(ca_authorities).where(
        (ca_authorities.c.id == ca_id) & (ca_authorities.c.crl_number == number)).values(
        crl=der, crl_this_update=this_update, crl_next_update=next_update))
    return bool(done.rowcount)


def delete_ca(conn: Connection, ca_id: str) -> bool:
    """
    Remove a CA that issued nothing (a pending intermediate given up).
    """
    if conn.execute(select(func.count()).select_from(ca_issued).where(
            ca_issued.c.ca_id == ca_id)).scalar_one():
        return False
    gone = conn.execute(delete(ca_authorities).where(
        (ca_authorities.c.id == ca_id) & ca_authorities.c.certificate.is_(None))).rowcount
    if gone:  # not one whose certificate was installed meanwhile
        conn.execute(delete(ca_requests).where(ca_requests.c.ca_id == ca_id))
    return bool(gone)


# Issued certificates ----------------------------------------------------------

def put_issued(conn: Connection, row: IssuedRow) -> None:
    conn.execute(insert(ca_issued).values(**row.__dict__))


def current_for(conn: Connection, email: str, after: float) -> IssuedRow | None:
    """
    The certificate issued here for C{email} that is neither revoked nor
    replaced and valid after C{after}, latest expiry first.
    """
    row = conn.execute(select(ca_issued).where(
        (ca_issued.c.email == email) & ca_issued.c.revoked.is_(None)
        & ca_issued.c.renewed_by.is_(None) & (ca_issued.c.not_after > after))
        .order_by(ca_issued.c.not_after.desc())).first()
    return None if row is None else _issued(row)


def get_issued(conn: Connection, thumbprint: str) -> IssuedRow | None:
    row = conn.execute(select(ca_issued).where(ca_issued.c.thumbprint == thumbprint)).first()
    return None if row is None else _issued(row)


def _matching(text: str, ca_id: str) -> ColumnElement[bool]:
    condition: ColumnElement[bool] = true()
    if text:
        needle = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        condition = condition & or_(ca_issued.c.email.like(f"%{needle}%", escape="\\"),
                                    ca_issued.c.thumbprint.like(f"{needle}%", escape="\\"),
                                    ca_issued.c.serial.like(f"{needle}%", escape="\\"))
    if ca_id:
        condition = condition & (ca_issued.c.ca_id == ca_id)
    return condition


def list_issued(conn: Connection, *, text: str = "", ca_id: str = "", offset: int = 0,
                limit: int = 100) -> list[IssuedRow]:
    """
    One page of the issued certificates, newest first.

    @param text: only those whose address contains it, or whose thumbprint
        or serial number (hex) starts with it (case ignored).
    """
    return [_issued(r) for r in conn.execute(
        select(ca_issued).where(_matching(text, ca_id))
        .order_by(ca_issued.c.issued.desc(), ca_issued.c.thumbprint)
        .offset(offset).limit(limit))]


def count_issued(conn: Connection, *, text: str = "", ca_id: str = "") -> int:
    return int(conn.execute(select(func.count()).select_from(ca_issued).where(
        _matching(text, ca_id))).scalar_one())


def revoked_by(conn: Connection, ca_id: str) -> list[IssuedRow]:
    """
    What the CA's CRL lists.
    """
    return [_issued(r) for r in conn.execute(select(ca_issued).where(
        (ca_issued.c.ca_id == ca_id) & ca_issued.c.revoked.is_not(None))
        .order_by(ca_issued.c.revoked))]


def revoke(conn: Connection, thumbprint: str, when: float, reason: str) -> bool:
    """
    @return: whether it was issued here and not yet revoked.
    """
    done = conn.execute(update(ca_issued).where(
        (ca_issued.c.thumbprint == thumbprint) & ca_issued.c.revoked.is_(None)).values(
        revoked=when, reason=reason))
    return bool(done.rowcount)


def due_for_renewal(conn: Connection, before: float, now: float) -> list[IssuedRow]:
    """
    The certificates neither revoked nor replaced that are still valid at
    C{now} but not after C{before}, soonest first.
    """
    return [_issued(r) for r in conn.execute(select(ca_issued).where(
        ca_issued.c.revoked.is_(None) & ca_issued.c.renewed_by.is_(None)
        & (ca_issued.c.not_after <= before) & (ca_issued.c.not_after > now))
        .order_by(ca_issued.c.not_after))]


def mark_renewed(conn: Connection, old: str, new: str) -> bool:
    """
    @return: whether C{old} was neither replaced nor revoked yet (else
        another node renewed it first, or an admin revoked it meanwhile, and
        C{new} is not wanted).
    """
    done = conn.execute(update(ca_issued).where(
        (ca_issued.c.thumbprint == old) & ca_issued.c.renewed_by.is_(None)
        & ca_issued.c.revoked.is_(None)).values(renewed_by=new))
    return bool(done.rowcount)


# Requests ---------------------------------------------------------------------

def add_requests(conn: Connection, emails: Sequence[str], ca_id: str | None,
                 validity_days: int | None, now: float, by: str) -> int:
    if emails:
        conn.execute(insert(ca_requests), [
            {"email": e, "ca_id": ca_id, "validity_days": validity_days, "requested": now,
             "requested_by": by, "attempts": 0, "error": None} for e in emails])
    return len(emails)


def list_requests(conn: Connection, limit: int = 1000,
                  tried_less_than: int | None = None) -> list[RequestRow]:
    """
    The waiting requests, oldest first.

    @param tried_less_than: only those tried fewer times than this.
    """
    query = select(ca_requests)
    if tried_less_than is not None:
        query = query.where(ca_requests.c.attempts < tried_less_than)
    return [_request(r) for r in conn.execute(
        query.order_by(ca_requests.c.requested, ca_requests.c.id).limit(limit))]


def count_requests(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(ca_requests)).scalar_one())


def take_request(conn: Connection, request_id: int) -> bool:
    """
    Remove a request as it is done.

    @return: whether it was still there (else another node did it).
    """
    return bool(conn.execute(delete(ca_requests).where(ca_requests.c.id == request_id)).rowcount)


def request_failed(conn: Connection, request_id: int, error: str) -> None:
    conn.execute(update(ca_requests).where(ca_requests.c.id == request_id).values(
        attempts=ca_requests.c.attempts + 1, error=error))
