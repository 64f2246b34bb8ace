"""
Versioned schema migrations, applied at start.

A new database gets the current schema (``schema.metadata``) at once and is
stamped with the latest version, as Alembic recommends; an existing one runs
each pending step in order, in one transaction, stamping as it goes.  To
change the schema: edit ``schema.py`` *and* append a step here that brings a
database of the previous version to the new shape.

Several nodes may start at once against one PostgreSQL database: the
migration holds a transaction-scoped advisory lock, so one node migrates and
the others then find nothing to do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, MetaData, inspect, select, text

from cipherd.store import schema

# The version schema.py describes when no step below has been added.
BASELINE_VERSION = 1

# pg_advisory_xact_lock key: "cipherd" as a number, constant for all nodes.
_PG_MIGRATION_LOCK = 0x63697068657264


class MigrationError(Exception):
    """
    The database cannot be brought to this program's schema.
    """


@dataclass(frozen=True)
class Migration:
    """
    One schema step: C{apply} takes a database at C{version - 1} to
    C{version}.
    """

    version: int
    description: str
    apply: Callable[[Connection], None]


def _certificate_store(conn: Connection) -> None:
    # New tables only: their definitions in schema.py are this version's.
    tables = [schema.certificates, schema.certificate_emails, schema.crls, schema.ctl]
    schema.metadata.create_all(conn, tables=tables)


def _trust_generation(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.trust_generation])
    conn.execute(schema.trust_generation.insert().values(id=1, generation=0))


def _mta_config(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.mta_config])


def _webmail(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[
        schema.webmail_accounts, schema.webmail_messages, schema.webmail_tunnels,
        schema.webmail_sessions, schema.webmail_login_failures, schema.job_runs])


def _certificate_indexes(conn: Connection) -> None:
    # New indexes only: their definitions in schema.py are this version's.
    for index in (schema.certificates_by_subject, schema.certificates_ca,
                  schema.certificates_with_key):
        # checkfirst: a database that was at version 1 got them with its tables
        # (step 2 creates the certificates table as schema.py has it now).
        index.create(conn, checkfirst=True)


def _pgp_keyring(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.pgp_keys, schema.pgp_key_emails,
                                             schema.pgp_key_ids])


def _pgp_introducers(conn: Connection) -> None:
    # A database that was before version 7 got the column with the table
    # (step 7 creates pgp_keys as schema.py has it now).
    if "introducer" not in {c["name"] for c in inspect(conn).get_columns("pgp_keys")}:
        conn.execute(text("ALTER TABLE pgp_keys ADD COLUMN introducer BOOLEAN NOT NULL "
                          "DEFAULT FALSE"))


def _pdf_replies(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.pdf_replies])


def _audit_log(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.audit_log])


def _counters(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.counters, schema.node_marks,
                                             schema.recent_errors])


def _last_login(conn: Connection) -> None:
    # A database that was before version 5 got the column with the table.
    if "last_login" not in {c["name"] for c in inspect(conn).get_columns("webmail_accounts")}:
        conn.execute(text("ALTER TABLE webmail_accounts ADD COLUMN last_login FLOAT"))


def _admin_roles(conn: Connection) -> None:
    have = {c["name"] for c in inspect(conn).get_columns("admins")}
    for column, kind in (("role", "VARCHAR(16) NOT NULL DEFAULT 'administrator'"),
                         ("totp_secret", "BYTEA" if conn.dialect.name == "postgresql"
                          else "BLOB"),
                         ("totp_last_step", "INTEGER")):
        if column not in have:
            conn.execute(text(f"ALTER TABLE admins ADD COLUMN {column} {kind}"))
    schema.metadata.create_all(conn, tables=[schema.api_tokens])


def _certificate_authority(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.ca_authorities, schema.ca_issued,
                                             schema.ca_requests])


def _dlp(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.dlp_patterns, schema.dlp_quarantine])


def _message_lifetimes(conn: Connection) -> None:
    have = {c["name"] for c in inspect(conn).get_columns("webmail_messages")}
    for column, kind in (("expires", "FLOAT NOT NULL DEFAULT 0"),
                         ("ended", "VARCHAR(16) NOT NULL DEFAULT ''"),
                         ("controls", "VARCHAR(64) NOT NULL DEFAULT ''")):
        if column not in have:
            conn.execute(text(f"ALTER TABLE webmail_messages ADD COLUMN {column} {kind}"))
    schema.metadata.create_all(conn, tables=[
        schema.webmail_events, schema.webmail_login_codes, schema.webmail_passkeys,
        schema.webmail_passkey_challenges])


MIGRATIONS: Sequence[Migration] = (
    Migration(2, "certificate store, CRLs and certificate trust list", _certificate_store),
    Migration(3, "a change counter for certificates, CRLs and the CTL", _trust_generation),
    Migration(4, "the MTA config", _mta_config),
    Migration(5, "the webmail messenger: accounts, mailboxes, tunnel ids; scheduled jobs",
              _webmail),
    Migration(6, "indexes for certificate lists, CA certificates and certificates with keys",
              _certificate_indexes),
    Migration(7, "the OpenPGP keyring", _pgp_keyring),
    Migration(8, "trusted introducers in the OpenPGP keyring", _pgp_introducers),
    Migration(9, "replies through PDF reply links", _pdf_replies),
    Migration(10, "the audit log of admin changes", _audit_log),
    Migration(11, "counters, marks and recent errors for the dashboard", _counters),
    Migration(12, "the last login of webmail accounts", _last_login),
    Migration(13, "admin roles, second factors and API tokens", _admin_roles),
    Migration(14, "the built-in certificate authority", _certificate_authority),
    Migration(15, "data loss prevention: patterns and quarantine", _dlp),
    Migration(16, "webmail message expiry, sender controls, recall and tracking; sign-in "
                  "codes and passkeys",
              _message_lifetimes),
)


def latest_version(migrations: Sequence[Migration]) -> int:
    return migrations[-1].version if migrations else BASELINE_VERSION


def current_version(conn: Connection) -> int | None:
    """
    The schema version of the database, or C{None} for an empty database.
    """
    if not inspect(conn).has_table(schema.schema_version.name):
        return None
    return conn.execute(select(schema.schema_version.c.version)).scalar_one_or_none()


def migrate(
    conn: Connection,
    migrations: Sequence[Migration] = MIGRATIONS,
    metadata: MetaData = schema.metadata,
) -> tuple[int | None, int]:
    """
    Bring the database to the latest version, inside the caller's
    transaction.

    @param migrations: the steps, in ascending version order (a keyword for
        tests).
    @param metadata: the current schema (a keyword for tests).
    @return: (version found, version now); the first is C{None} for a new
        database.
    @raise MigrationError: the database is newer than this program, or the
        steps are not consecutive.
    """
    expected = BASELINE_VERSION
    for step in migrations:
        expected += 1
        if step.version != expected:
            raise MigrationError(f"migration {step.version} out of order; expected {expected}")
    target = latest_version(migrations)

    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})

    found = current_version(conn)
    if found is None:
        metadata.create_all(conn)
        conn.execute(schema.schema_version.delete())
        conn.execute(schema.schema_version.insert().values(version=target))
        return None, target
    if found > target:
        raise MigrationError(
            f"the database has schema version {found}, newer than this cipherd "
            f"knows ({target}): run a newer cipherd against it"
        )
    for step in migrations:
        if step.version > found:
            step.apply(conn)
            conn.execute(schema.schema_version.update().values(version=step.version))
    return found, target
