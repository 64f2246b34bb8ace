"""
The current database schema.  Timestamps are seconds since the epoch as
floats, taken from the injected clock.  Every table is shared by all nodes
of a deployment: no state here belongs to one process.
"""

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, nullable=False),
)

# One row per property set at one level; absence means "inherit".
# level is "global", "domain" or "user"; scope is "" for global, the domain
# (possibly a wildcard "*.example.com") or the lower-cased email address.
property_values = Table(
    "property_values",
    metadata,
    Column("level", String(16), primary_key=True),
    Column("scope", String(320), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("value", Text, nullable=False),  # JSON
)

domains = Table(
    "domains",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("created", Float, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("email", String(320), primary_key=True),
    Column("created", Float, nullable=False),
)

admins = Table(
    "admins",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("password_hash", String(256), nullable=False),
    Column("must_change_password", Boolean, nullable=False),
    Column("password_changed", Float, nullable=True),
)

# The cookie holds a random token; only its SHA-256 is stored, so a copy of
# the database does not give anyone a session.
admin_sessions = Table(
    "admin_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("admin_name", String(64), nullable=False, index=True),
    Column("csrf_token", String(64), nullable=False),
    Column("created", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
)

login_failures = Table(
    "login_failures",
    metadata,
    Column("account", String(64), primary_key=True),
    Column("client", String(64), primary_key=True),
    Column("failure_count", Integer, nullable=False),
    Column("first_failure", Float, nullable=False),
    Column("locked_until", Float, nullable=True),
)
