"""
The certificate store at scale (issue 13): every look-up processing and the
engine make -- by address, thumbprint, issuer and serial, key identifier --
and every list the admin pages through is answered through an index, never
by reading the certificates table through (SQLite's query plans, for the
statements the query functions really run); the trust context and the
decryption keys read the few certificates they need, not all; migration 6
adds the indexes to an existing database; bulk import and search on both
databases.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, inspect, text
from twisted.internet.task import Clock

from cipherd.pki.certs import email_addresses, thumbprint
from cipherd.pki.certstore import CertificateStore, new_certificate
from cipherd.store import certificates as q
from cipherd.store import create_engine_for_url, schema
from cipherd.store.certificates import CERTIFICATES, ROOTS
from cipherd.store.migrations import MIGRATIONS, current_version, migrate
from cipherd.testing import SynchronousRunner, migrated_store, result_of
from cipherd.testing.certificates import ec_ca, many_certificates
from tests.pki_factory import START, make_user

NOW = START + timedelta(days=10)
COUNT = 300
NEW_INDEXES = {"ix_certificates_store_subject", "ix_certificates_ca",
               "ix_certificates_with_key"}


@pytest.fixture(scope="module")
def crowd() -> dict[str, Any]:
    ca, key = ec_ca("Crowd CA", START, START + timedelta(days=365))
    return {"ca": ca, "certificates": many_certificates(
        ca, key, COUNT, START, START + timedelta(days=365))}


def filled(url: str | None, crowd: dict[str, Any]) -> CertificateStore:
    clock = Clock()
    clock.advance(NOW.timestamp())
    store = CertificateStore(migrated_store(url), clock, os.urandom(32), SynchronousRunner())
    result_of(store.add_certificate(crowd["ca"], store=ROOTS))
    added = result_of(store.add_certificates((c, None) for c in crowd["certificates"]))
    assert added == [thumbprint(c) for c in crowd["certificates"]]
    return store


@contextmanager
def statements(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """
    The SQL statements run on C{engine} meanwhile, with their parameters.
    """
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
               executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def plans(engine: Engine, run: Callable[[Connection], object]) -> list[str]:
    """
    SQLite's query plan of every SELECT C{run} makes, one line per step.
    """
    with statements(engine) as seen, engine.begin() as conn:
        run(conn)
    found = []
    with engine.begin() as conn:
        for statement, parameters in seen:
            for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters):
                found.append(row[3])
    return found


def scans_of_certificates(steps: list[str]) -> list[str]:
    """
    The steps that read the certificates table (or its addresses) through.
    A scan of the partial index of certificates with a key reads only those.
    """
    return [step for step in steps
            if step.startswith(("SCAN certificates", "SCAN certificate_emails"))
            and "ix_certificates_with_key" not in step]


def test_every_look_up_is_an_index_search(crowd: dict[str, Any]) -> None:
    store = filled(None, crowd)
    engine = store._store.engine
    some = crowd["certificates"][COUNT // 2]
    new = new_certificate(some)
    address = email_addresses(some)[0]
    look_ups: dict[str, Callable[[Connection], object]] = {
        "by address": lambda c: q.find_by_email(c, address.upper()),
        "by thumbprint": lambda c: q.get_certificate(c, CERTIFICATES, new.thumbprint),
        "by issuer and serial": lambda c: q.find_by_issuer_serial(c, new.issuer_serial),
        "by key identifier": lambda c: q.find_by_subject_key_id(c, new.subject_key_id or ""),
        "signers of CRLs": lambda c: q.find_by_subject_key_ids(c, [new.subject_key_id or ""]),
        "CA certificates": lambda c: q.list_certificates(c, CERTIFICATES, ca_only=True),
        "roots": lambda c: q.list_certificates(c, ROOTS),
        "with keys": q.certificates_with_keys,
        "a page": lambda c: q.search_certificates(c, CERTIFICATES, offset=200, limit=50),
        "the count": lambda c: q.count_certificates(c, CERTIFICATES),
        "a page for an address": lambda c: q.search_certificates(
            c, CERTIFICATES, email=address, text="user", limit=50),
        "the count for an address": lambda c: q.count_certificates(c, CERTIFICATES,
                                                                   email=address),
        "the change count": q.trust_version,
    }
    for name, run in look_ups.items():
        steps = plans(engine, run)
        assert steps, name
        assert scans_of_certificates(steps) == [], (name, steps)
    # A search for text in subjects and addresses reads the subject index
    # and the addresses through (not the certificates with their DER).
    searched = plans(engine, lambda c: q.search_certificates(c, CERTIFICATES, text="user1"))
    assert not [s for s in searched if s.startswith("SCAN certificates")
                and "COVERING INDEX" not in s], searched


def test_trust_and_decryption_read_only_what_they_need(crowd: dict[str, Any]) -> None:
    store = filled(None, crowd)
    alice = make_user("alice@example.com", None)
    result_of(store.add_certificate(alice.cert, alice.key))
    context = result_of(store.trust_context())
    assert [thumbprint(c) for c in context.roots] == [thumbprint(crowd["ca"])]
    assert list(context.intermediates) == []  # no end-entity certificate
    assert [c for c, _ in result_of(store.decryption_keys())] == [alice.cert]
    some = crowd["certificates"][7]
    assert result_of(store.encryption_certificates(email_addresses(some)[0])) == [some]


def test_migration_6_indexes_an_existing_store(tmp_path: Any) -> None:
    engine = create_engine_for_url(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:
        migrate(conn, migrations=MIGRATIONS[:4])  # a database of version 5
        for name in NEW_INDEXES:
            conn.execute(text(f"DROP INDEX {name}"))
    with engine.begin() as conn:
        assert migrate(conn, migrations=MIGRATIONS[:5]) == (5, 6)
        assert current_version(conn) == 6
        assert NEW_INDEXES <= {i["name"] for i in inspect(conn).get_indexes("certificates")}
    engine.dispose()
    assert {schema.certificates_by_subject.name, schema.certificates_ca.name,
            schema.certificates_with_key.name} == NEW_INDEXES


def test_bulk_import_and_search_on_both_databases(database_url: str,
                                                  crowd: dict[str, Any]) -> None:
    store = filled(database_url, crowd)
    assert result_of(store.count()) == COUNT
    # user1, user10..user19, user100..user199
    assert result_of(store.count(text="USER1@")) == 1
    assert result_of(store.count(text="user1")) == 1 + 10 + 100
    page = result_of(store.listing(text="user1", offset=100, limit=20))
    assert len(page) == 11
    everything = result_of(store.listing(limit=COUNT))
    subjects = [e.row.subject for e in everything]
    assert len(subjects) == COUNT and len(set(subjects)) == COUNT
    # Pages join up: the same order, nothing twice, nothing left out.
    pages = [e.row.subject for o in range(0, COUNT, 64)
             for e in result_of(store.listing(offset=o, limit=64))]
    assert pages == subjects
    [entry] = result_of(store.listing(email="User42@Many.Example"))
    assert entry.verdict.valid and entry.row.emails == ("user42@many.example",)
    assert result_of(store.count(email="user42@many.example")) == 1
    prefix = entry.row.thumbprint[:10]
    assert [e.row.thumbprint for e in result_of(store.listing(text=prefix))] == [
        entry.row.thumbprint]
    # Again: everything a duplicate, nothing added.
    again = result_of(store.add_certificates((c, None) for c in crowd["certificates"][:5]))
    assert len(again) == 5 and result_of(store.count()) == COUNT
