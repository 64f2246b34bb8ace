"""
The current database schema.  Timestamps are seconds since the epoch as
floats, taken from the injected clock.  Every table is shared by all nodes
of a deployment: no state here belongs to one process.
"""

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
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
    # Schema version 13: the account's role (administrator, operator,
    # auditor) and its TOTP second factor (sealed as the portal's are).
    Column("role", String(16), nullable=False, server_default="administrator"),
    Column("totp_secret", LargeBinary, nullable=True),
    Column("totp_last_step", Integer, nullable=True),
)

# Schema version 13: API tokens of admin accounts.  The token is
# "cdt_<id>_<secret>"; only the SHA-256 of the whole token is stored.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("admin_name", String(64), nullable=False, index=True),
    Column("token_hash", String(64), nullable=False),
    Column("label", String(100), nullable=False),
    Column("created", Float, nullable=False),
    Column("last_used", Float, nullable=True),
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

# Schema version 2: the certificate store (cipherd.pki).

# store is "certificates" (intermediate and user certificates) or "roots"
# (trusted roots); a certificate may be in both.  private_key is sealed
# under the data dir's key-encryption key (cipherd.pki.keywrap).
certificates = Table(
    "certificates",
    metadata,
    Column("store", String(16), primary_key=True),
    Column("thumbprint", String(64), primary_key=True),
    Column("der", LargeBinary, nullable=False),
    Column("subject", Text, nullable=False),
    Column("issuer", Text, nullable=False),
    Column("serial", String(64), nullable=False),
    Column("issuer_serial", String(64), nullable=False, index=True),
    Column("subject_key_id", String(128), nullable=True, index=True),
    Column("not_before", Float, nullable=False),
    Column("not_after", Float, nullable=False),
    Column("is_ca", Boolean, nullable=False),
    Column("self_signed", Boolean, nullable=False),
    Column("private_key", LargeBinary, nullable=True),
    Column("created", Float, nullable=False),
)

# The addresses a certificate is for (cipherd.pki.certs.email_addresses):
# email is the normalised form -- stripped and lower-cased -- and look-ups
# by address search its index with the address normalised the same way.
certificate_emails = Table(
    "certificate_emails",
    metadata,
    Column("thumbprint", String(64), primary_key=True),
    Column("email", String(320), primary_key=True, index=True),
)

# Schema version 6: the look-ups that scanned the certificates table
# indexed, so a store of 100,000 certificates answers as fast as an empty
# one (issue 13).  Lists and pages walk (store, subject, thumbprint) in
# order; the trust context reads the CA certificates, decryption the
# certificates with a key -- few of many, each through its own index.
certificates_by_subject = Index(
    "ix_certificates_store_subject",
    certificates.c.store, certificates.c.subject, certificates.c.thumbprint,
)
certificates_ca = Index("ix_certificates_ca", certificates.c.is_ca, certificates.c.store)
certificates_with_key = Index(
    "ix_certificates_with_key", certificates.c.thumbprint,
    sqlite_where=certificates.c.private_key.is_not(None),
    postgresql_where=certificates.c.private_key.is_not(None),
)

# One CRL per issuer: a newer import replaces the older.
crls = Table(
    "crls",
    metadata,
    Column("issuer_hash", String(64), primary_key=True),
    Column("issuer", Text, nullable=False),
    Column("der", LargeBinary, nullable=False),
    Column("this_update", Float, nullable=False),
    Column("next_update", Float, nullable=True),
    Column("entries", Integer, nullable=False),
    Column("created", Float, nullable=False),
)

ctl = Table(
    "ctl",
    metadata,
    Column("thumbprint", String(64), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("created", Float, nullable=False),
)

# One row, counting the changes to certificates, CRLs and the CTL: a node
# keeps its trust context while the count stays the same.
trust_generation = Table(
    "trust_generation",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("generation", Integer, nullable=False),
)

# The MTA config page (cipherd.smtp.config): one row per field that differs
# from its default.
mta_config = Table(
    "mta_config",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),  # JSON
)

# Schema version 5: the webmail messenger (cipherd.webmail).

# One account per recipient address, made when its first message arrives.
# link_nonce changes whenever the password is set: sign-up and password
# reset links carry it, so a link works once.
webmail_accounts = Table(
    "webmail_accounts",
    metadata,
    Column("address", String(320), primary_key=True),
    Column("state", String(16), nullable=False),  # invited, active, disabled
    Column("password_hash", Text, nullable=True),
    Column("link_nonce", String(32), nullable=False),
    Column("created", Float, nullable=False),
    Column("last_activity", Float, nullable=False, index=True),
    # TOTP second factor (RFC 6238): its secret, sealed like the messages;
    # NULL when the account has none.
    Column("totp_secret", LargeBinary, nullable=True),
    # The time step of the last code used to log in: no code works twice.
    Column("totp_last_step", Integer, nullable=True),
    # The last password login (schema version 12; NULL: never).
    Column("last_login", Float, nullable=True),
)

# Portal sessions, as admin_sessions: the cookie holds a random token, the
# database its SHA-256.  second_factor: the TOTP code was given (or none is
# needed).
webmail_sessions = Table(
    "webmail_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("address", String(320), nullable=False, index=True),
    Column("csrf_token", String(64), nullable=False),
    Column("second_factor", Boolean, nullable=False),
    Column("created", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
)

# Failed portal logins per address and client, for throttling and lockout.
webmail_login_failures = Table(
    "webmail_login_failures",
    metadata,
    Column("address", String(320), primary_key=True),
    Column("client", String(64), primary_key=True),
    Column("failure_count", Integer, nullable=False),
    Column("first_failure", Float, nullable=False),
    Column("locked_until", Float, nullable=True),
)

# The messages in the mailboxes, sealed (AES-256-GCM) under a key derived
# from the data dir's key-encryption key; a tunnel message is stored once
# per recipient however often it arrives.
webmail_messages = Table(
    "webmail_messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("address", String(320), nullable=False, index=True),
    Column("tunnel_id", String(64), nullable=False),
    Column("received", Float, nullable=False, index=True),
    Column("sender", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("attachments", Integer, nullable=False),
    Column("read", Boolean, nullable=False),
    # Where the read receipt goes when the message is first read ("": none).
    Column("receipt_to", Text, nullable=False),
    # Whether the recipient has been told of it (invitation or notice).
    Column("notified", Boolean, nullable=False),
    Column("content", LargeBinary, nullable=False),
    # When it expires (0: never), and whether it has ended: "" (no),
    # "expired" or "recalled" (its content is gone then; the row stays so
    # that a copy that comes again is not stored again, and so that the
    # reader is told what became of it).
    Column("expires", Float, nullable=False, server_default="0"),
    Column("ended", String(16), nullable=False, server_default=""),
    # The sender's controls, comma-separated (cipherd.webmail.controls).
    Column("controls", String(64), nullable=False, server_default=""),
    UniqueConstraint("address", "tunnel_id", name="webmail_messages_once"),
)

# Sign-in codes mailed to webmail recipients (one live code per address):
# its HMAC only, when it expires, when it was sent, wrong tries so far.
webmail_login_codes = Table(
    "webmail_login_codes",
    metadata,
    Column("address", String(320), primary_key=True),
    Column("code_hash", String(64), nullable=False),
    Column("expires", Float, nullable=False, index=True),
    Column("sent", Float, nullable=False),
    Column("attempts", Integer, nullable=False),
)

# WebAuthn passkeys of webmail accounts: the credential id (base64url),
# its COSE public key and signature counter.
webmail_passkeys = Table(
    "webmail_passkeys",
    metadata,
    Column("credential_id", String(1400), primary_key=True),
    Column("address", String(320), nullable=False, index=True),
    Column("public_key", LargeBinary, nullable=False),
    Column("sign_count", Integer, nullable=False),
    Column("name", String(100), nullable=False),
    Column("created", Float, nullable=False),
    Column("last_used", Float, nullable=True),
)

# Passkey challenges answered already (their SHA-256), until they expire:
# each is answered once.
webmail_passkey_challenges = Table(
    "webmail_passkey_challenges",
    metadata,
    Column("challenge", String(64), primary_key=True),
    Column("expires", Float, nullable=False, index=True),
)

# What became of each tunnelled message, per recipient: delivered to the
# mailbox, notified, opened, downloaded, replied, expired, recalled.
webmail_events = Table(
    "webmail_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tunnel_id", String(64), nullable=False, index=True),
    Column("address", String(320), nullable=False),
    Column("at", Float, nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("detail", Text, nullable=False),
)

# Tunnel ids seen, for refusing replays within the validity window.
webmail_tunnels = Table(
    "webmail_tunnels",
    metadata,
    Column("tunnel_id", String(64), primary_key=True),
    Column("created", Float, nullable=False),
    Column("received", Float, nullable=False, index=True),
)

# Replies sent through each PDF reply link (its nonce), for single-use links
# and the rate limit per link; a row goes when its link has expired.
pdf_replies = Table(
    "pdf_replies",
    metadata,
    Column("link", String(64), primary_key=True),
    Column("replies", Integer, nullable=False),
    Column("window_start", Float, nullable=False),
    Column("window_count", Integer, nullable=False),
    Column("expires", Float, nullable=False, index=True),
)

# When each scheduled job last ran: a node runs a job only if it moves this
# forward from the value it read, so one node runs each due run.
job_runs = Table(
    "job_runs",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("last_run", Float, nullable=False),
)

# Schema version 7: the OpenPGP keyring (cipherd.pki.keyring).  public is
# the binary certificate; secret the transferable secret key with its
# passphrase, sealed under the data dir's key-encryption key and bound to
# the fingerprint (cipherd.pki.keywrap.seal_bytes).  Validity is judged
# from public at the time of use; expires and revoked are for lists.
# trusted: an administrator's decision (or an import the administrator
# made with "trusted" ticked); only trusted keys are encrypted to.
pgp_keys = Table(
    "pgp_keys",
    metadata,
    Column("fingerprint", String(64), primary_key=True),
    Column("public", LargeBinary, nullable=False),
    Column("secret", LargeBinary, nullable=True),
    Column("user_ids", Text, nullable=False),  # JSON list
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=True),
    Column("revoked", Boolean, nullable=False),
    Column("trusted", Boolean, nullable=False),
    Column("source", String(16), nullable=False),  # admin, generated, wkd, autocrypt
    Column("imported", Float, nullable=False),
    # A trusted introducer: the keys it certifies are trusted (version 8).
    Column("introducer", Boolean, nullable=False, server_default=false()),
)

# The addresses of a key's user IDs, canonical and lower case, as for
# certificate_emails.
pgp_key_emails = Table(
    "pgp_key_emails",
    metadata,
    Column("fingerprint", String(64), primary_key=True),
    Column("email", String(320), primary_key=True, index=True),
)

# The key ids of a key's primary key and subkeys (16 hex digits), for
# finding the key a message is encrypted to or signed by.
pgp_key_ids = Table(
    "pgp_key_ids",
    metadata,
    Column("key_id", String(16), primary_key=True),
    Column("fingerprint", String(64), primary_key=True, index=True),
)

# Schema version 10: the audit log of admin changes (cipherd.store.audit).
# actor: the admin account (or "cipherd" for the command line); via: web,
# api or cli; client: the address the request came from; action: a short
# name (settings.change, queue.delete, ...); target: what it was done to;
# summary: the sentence shown; details: JSON, secrets only as "changed".
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False, index=True),
    Column("actor", String(64), nullable=False, index=True),
    Column("via", String(8), nullable=False),
    Column("client", String(64), nullable=False),
    Column("action", String(64), nullable=False, index=True),
    Column("target", String(400), nullable=False),
    Column("summary", Text, nullable=False),
    Column("details", Text, nullable=False),
)

# Schema version 11: what the services count (cipherd.core.counters), one
# row per node, hour (hours since the epoch, UTC) and name, added to by that
# node only; the dashboard sums the nodes.
counters = Table(
    "counters",
    metadata,
    Column("node", String(64), primary_key=True),
    Column("hour", Integer, primary_key=True, index=True),
    Column("name", String(64), primary_key=True),
    Column("value", Integer, nullable=False),
)

# The last time each node saw something happen (a tunnel sent, a relay
# failure), with a detail.
node_marks = Table(
    "node_marks",
    metadata,
    Column("node", String(64), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("at", Float, nullable=False),
    Column("detail", Text, nullable=False),
)

# The latest errors the services logged, newest kept.
recent_errors = Table(
    "recent_errors",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("node", String(64), nullable=False),
    Column("at", Float, nullable=False, index=True),
    Column("source", String(64), nullable=False),
    Column("message", Text, nullable=False),
)

# Schema version 14: the built-in certificate authority (cipherd.pki.ca).
# One row per CA: a root made here, or an intermediate whose key was made
# here and whose certificate an outside root signs (certificate and
# thumbprint empty until it is installed: pending).  private_key is the
# CA's signing key sealed under the key-encryption key, bound to
# "ca:<id>"; crl the CRL it signed last (served at crl_url).
ca_authorities = Table(
    "ca_authorities",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("subject", Text, nullable=False),
    Column("key_type", String(16), nullable=False),
    Column("private_key", LargeBinary, nullable=False),
    Column("csr", LargeBinary, nullable=True),
    Column("certificate", LargeBinary, nullable=True),
    Column("thumbprint", String(64), nullable=True, unique=True),
    Column("not_after", Float, nullable=True),
    Column("crl_url", Text, nullable=False),
    Column("crl_number", Integer, nullable=False),
    Column("crl", LargeBinary, nullable=True),
    Column("crl_this_update", Float, nullable=True),
    Column("crl_next_update", Float, nullable=True),
    Column("created", Float, nullable=False),
)

# The certificates a CA here issued (their keys are in the certificate
# store, like imported ones): revoked and reason when revoked (RFC 5280
# reason names), renewed_by the thumbprint of the one that replaced it.
ca_issued = Table(
    "ca_issued",
    metadata,
    Column("thumbprint", String(64), primary_key=True),
    Column("ca_id", String(16), nullable=False, index=True),
    Column("serial", String(64), nullable=False),
    Column("email", String(320), nullable=False, index=True),
    Column("der", LargeBinary, nullable=False),
    Column("not_before", Float, nullable=False),
    Column("not_after", Float, nullable=False, index=True),
    Column("issued", Float, nullable=False),
    Column("origin", String(16), nullable=False),  # admin, csv, auto, renewal
    Column("revoked", Float, nullable=True),
    Column("reason", String(32), nullable=True),
    Column("renewed_by", String(64), nullable=True),
)

# Certificates asked for and not yet issued (a CSV of addresses is issued
# in the background, a few at a time); error: why the last try failed.
ca_requests = Table(
    "ca_requests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False),
    Column("ca_id", String(16), nullable=True),
    Column("validity_days", Integer, nullable=True),
    Column("requested", Float, nullable=False, index=True),
    Column("requested_by", String(64), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("error", Text, nullable=True),
)

# Schema version 15: data loss prevention (cipherd.mpa.dlp).  A pattern is
# an RE2 expression or a word list (words: JSON list) with its threshold,
# check and action.
dlp_patterns = Table(
    "dlp_patterns",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("regex", Text, nullable=False),
    Column("words", Text, nullable=False),  # JSON list
    Column("threshold", Integer, nullable=False),
    Column("validator", String(16), nullable=False),
    Column("action", String(16), nullable=False),
    Column("description", Text, nullable=False),
    Column("created", Float, nullable=False),
)

# Messages DLP quarantined: the message sealed under a key derived from the
# key-encryption key (bound to its id), with what hit (JSON: the rules'
# names, actions, match counts, where, masked excerpts; no matched text).
dlp_quarantine = Table(
    "dlp_quarantine",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("at", Float, nullable=False, index=True),
    Column("sender", String(320), nullable=False),
    Column("recipients", Text, nullable=False),  # JSON list
    Column("subject", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("findings", Text, nullable=False),  # JSON
    Column("content", LargeBinary, nullable=False),
)
