"""
The property registry: every setting cipherd has, declared once.

A property has a name (the guide's label in snake_case), a value type that
validates and explains, a factory default, help text, the levels it may be
set at and the page and group the admin UI shows it in.  The admin forms, the
JSON API, validation and the inheritance lookup all read this registry.

Lookup for a user ``alice@mail.example.com`` goes

    user alice@mail.example.com
    -> domain mail.example.com
    -> wildcard domains *.mail.example.com, *.example.com, *.com
    -> global
    -> factory default

and stops at the first level with a value.  A wildcard ``*.example.com``
covers example.com itself and every domain below it.  "Inherit" means no
value at that level.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from zope.interface import Interface

from cipherd.core.addresses import LOCAL_PART, canonical_address
from cipherd.cron import ScheduleError, parse_interval, parse_quartz


class Level(enum.Enum):
    GLOBAL = "global"
    DOMAIN = "domain"
    USER = "user"


ALL_LEVELS = frozenset(Level)
GLOBAL_AND_DOMAIN = frozenset({Level.GLOBAL, Level.DOMAIN})
GLOBAL_ONLY = frozenset({Level.GLOBAL})


class InvalidValue(ValueError):
    """
    A value a property does not accept; the message says why, for the user.
    """


# Value types ----------------------------------------------------------------


class ValueType:
    """
    Checks and normalises values of one kind.  C{check} takes JSON values
    (API); C{from_form} takes the string an HTML form sends.
    """

    widget = "text"

    def check(self, value: Any) -> Any:
        raise NotImplementedError

    def from_form(self, text: str) -> Any:
        return self.check(text.strip())

    def to_form(self, value: Any) -> str:
        return "" if value is None else str(value)

    def _want_string(self, value: Any) -> str:
        if not isinstance(value, str):
            raise InvalidValue(f"must be a string, not {_json_kind(value)}")
        return value


def _json_kind(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object", type(None): "null"}.get(type(value), "a value")


@dataclass(frozen=True)
class Text(ValueType):
    max_length: int = 1000
    min_length: int = 0

    def check(self, value: Any) -> str:
        text = self._want_string(value)
        if len(text) > self.max_length:
            raise InvalidValue(f"is {len(text)} characters long; the limit is {self.max_length}")
        if len(text) < self.min_length:
            raise InvalidValue(f"must be at least {self.min_length} characters long")
        if any(ord(c) < 32 for c in text):
            raise InvalidValue("must not contain control characters or line breaks")
        return text


@dataclass(frozen=True)
class AbsolutePath(Text):
    """
    A path on the appliance's file system, from its root ("": none).
    """

    def check(self, value: Any) -> str:
        text = super().check(value).strip()
        if text and not text.startswith("/"):
            raise InvalidValue("must be an absolute path, beginning with /")
        if "\0" in text or any(part == ".." for part in text.split("/")):
            raise InvalidValue("must not contain .. or NUL")
        return text


@dataclass(frozen=True)
class BackupPassphrase(Text):
    """
    The scheduled backups' passphrase: as typed (12 to 512 characters), or
    as cipherd keeps it once it has sealed it (C{sealed:...}, longer).
    """

    min_length: int = 12
    max_length: int = 512

    def check(self, value: Any) -> str:
        if isinstance(value, str) and value.startswith("sealed:") and len(value) <= 4096:
            return value
        return super().check(value)


@dataclass(frozen=True)
class Boolean(ValueType):
    widget = "checkbox"

    def check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise InvalidValue(f"must be true or false, not {_json_kind(value)}")
        return value

    def from_form(self, text: str) -> bool:
        return text.strip().lower() in ("on", "true", "1", "yes")


@dataclass(frozen=True)
class Integer(ValueType):
    minimum: int = 0
    maximum: int = 2**62
    unit: str = ""
    widget = "number"

    def check(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidValue(f"must be a whole number, not {_json_kind(value)}")
        if not self.minimum <= value <= self.maximum:
            raise InvalidValue(f"must be between {self.minimum} and {self.maximum}")
        return value

    def from_form(self, text: str) -> int:
        text = text.strip()
        if not re.fullmatch(r"-?\d+", text):
            raise InvalidValue(f"{text!r} is not a whole number")
        return self.check(int(text))


# RFC 5321 §4.5.3.1: local part 64 octets, domain 255; we accept the dot-atom
# forms mail software actually uses (no quoted local parts, no IP literals).
_DOMAIN_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def domain_problem(domain: str, *, wildcard: bool = False) -> str | None:
    """
    Why C{domain} is not a valid domain name, or C{None}.

    @param wildcard: also accept C{*.example.com}.
    """
    name = domain[2:] if wildcard and domain.startswith("*.") else domain
    if not name:
        return "the domain is empty"
    if len(name) > 253:
        return "the domain is longer than 253 characters"
    labels = name.split(".")
    if len(labels) < 2 and not (wildcard and domain.startswith("*.")):
        return f"the domain {name!r} has no dot"
    for label in labels:
        if not _DOMAIN_LABEL.fullmatch(label):
            return f"{label!r} is not a valid part of a domain name"
    return None


def email_problem(address: str) -> str | None:
    """
    Why C{address} is not a valid email address, or C{None}.
    """
    if address.count("@") != 1:
        return "it must contain exactly one @" if "@" in address else "it has no @"
    local, domain = address.split("@")
    if not local:
        return "the part before @ is empty"
    if len(local) > 64:
        return "the part before @ is longer than 64 characters"
    if not LOCAL_PART.fullmatch(local):
        return f"{local!r} is not a valid part before @"
    return domain_problem(domain)


@dataclass(frozen=True)
class EmailAddress(ValueType):
    allow_empty: bool = True
    widget = "email"

    def check(self, value: Any) -> str:
        address = self._want_string(value).strip()
        if not address and self.allow_empty:
            return ""
        problem = email_problem(address)
        if problem:
            raise InvalidValue(f"{address!r} is not a valid email address: {problem}")
        return address


@dataclass(frozen=True)
class EmailAddresses(ValueType):
    """
    Email addresses separated by commas or spaces; stored as C{a, b}.
    """

    def check(self, value: Any) -> str:
        text = self._want_string(value)
        addresses = [a for a in re.split(r"[\s,]+", text) if a]
        for address in addresses:
            if problem := email_problem(address):
                raise InvalidValue(f"{address!r}: {problem}")
        if len(addresses) > 100:
            raise InvalidValue("at most 100 addresses")
        return ", ".join(dict.fromkeys(a.lower() for a in addresses))

    def addresses(self, value: str) -> list[str]:
        return [a for a in re.split(r"[\s,]+", value) if a]


class NameList(ValueType):
    """
    Names (lower-case letters, digits, '-', '_', '.') separated by commas or
    spaces; stored as C{a, b}.  The DLP patterns that apply.
    """

    def check(self, value: Any) -> str:
        text = self._want_string(value)
        names = [n for n in re.split(r"[\s,]+", text.lower()) if n]
        for name in names:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", name):
                raise InvalidValue(f"{name!r} is not a pattern name")
        if len(names) > 200:
            raise InvalidValue("at most 200 names")
        return ", ".join(dict.fromkeys(names))


def listed(value: str) -> list[str]:
    """
    The entries of a list setting stored as C{a, b}.
    """
    return [entry for entry in re.split(r"[\s,]+", value) if entry]


class AddressesAndDomains(ValueType):
    """
    Email addresses and domains separated by commas or spaces; stored as
    C{a, b}, lower case.
    """

    def check(self, value: Any) -> str:
        text = self._want_string(value)
        entries = [e for e in re.split(r"[\s,]+", text.lower()) if e]
        for entry in entries:
            problem = email_problem(entry) if "@" in entry else domain_problem(entry)
            if problem:
                raise InvalidValue(f"{entry!r}: {problem}")
        if len(entries) > 500:
            raise InvalidValue("at most 500 addresses and domains")
        return ", ".join(dict.fromkeys(entries))


@dataclass(frozen=True)
class Url(ValueType):
    allow_empty: bool = True
    widget = "url"

    def check(self, value: Any) -> str:
        text = self._want_string(value).strip()
        if not text and self.allow_empty:
            return ""
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 -- raises ValueError on a bad port
        except ValueError as e:
            raise InvalidValue(f"{text!r} is not a valid URL: {e}") from None
        if parts.scheme not in ("https", "http"):
            raise InvalidValue(f"{text!r} is not a valid URL: it must start with https:// or http://")
        if not parts.hostname:
            raise InvalidValue(f"{text!r} is not a valid URL: it names no host")
        if any(c.isspace() for c in text):
            raise InvalidValue(f"{text!r} is not a valid URL: it contains spaces")
        return text


@dataclass(frozen=True)
class Colour(ValueType):
    """
    A CSS colour as C{#rrggbb} (nothing else reaches a stylesheet).
    """

    def check(self, value: Any) -> str:
        text = self._want_string(value).strip().lower()
        if not re.fullmatch(r"#[0-9a-f]{6}", text):
            raise InvalidValue(f"{text!r} is not a colour: write it as #rrggbb, e.g. #1f5fbf")
        return text


@dataclass(frozen=True)
class LogoUrl(ValueType):
    """
    Where the portal's logo comes from: an https URL, or a path on the
    portal itself (C{/static/...}); empty for none.
    """

    widget = "url"

    def check(self, value: Any) -> str:
        text = self._want_string(value).strip()
        if not text:
            return ""
        if any(c.isspace() or c in "\\\"'<>" for c in text) or len(text) > 1000:
            raise InvalidValue(f"{text!r} is not a valid URL: it contains spaces or quotes")
        if text.startswith("/") and not text.startswith("//"):
            return text
        checked = Url(allow_empty=False).check(text)
        if urlsplit(checked).scheme != "https":
            raise InvalidValue(f"{text!r} must start with https:// or be a path on the portal "
                               "such as /static/logo.png")
        return checked


@dataclass(frozen=True)
class Interval(ValueType):
    """
    C{8h}, C{1d}, C{2w}; empty too when C{optional} (for none).
    """

    optional: bool = False

    def check(self, value: Any) -> str:
        text = self._want_string(value).strip()
        if not text and self.optional:
            return ""
        try:
            parse_interval(text)
        except ScheduleError as e:
            raise InvalidValue(str(e)) from None
        return text


@dataclass(frozen=True)
class CronExpression(ValueType):
    def check(self, value: Any) -> str:
        text = " ".join(self._want_string(value).split())
        try:
            parse_quartz(text)
        except ScheduleError as e:
            raise InvalidValue(str(e)) from None
        return text


def _regex_problem(pattern: str) -> str | None:
    try:
        re.compile(pattern)
    except re.error as e:
        return str(e)
    return None


@dataclass(frozen=True)
class RegularExpression(ValueType):
    def check(self, value: Any) -> str:
        text = self._want_string(value)
        problem = _regex_problem(text)
        if problem:
            raise InvalidValue(f"{text!r} is not a valid regular expression: {problem}")
        return text


_HEADER_NAME = re.compile(r"[!-9;-~]+")


@dataclass(frozen=True)
class HeaderName(ValueType):
    """
    A header field's name (empty for none), not one of the message's own.
    """

    widget = "text"

    def check(self, value: Any) -> str:
        text = self._want_string(value).strip()
        if not text:
            return ""
        if not _HEADER_NAME.fullmatch(text) or len(text) > 76:
            raise InvalidValue(f"{text!r} is not a header field name, like X-Cipherd-Expires")
        if text.lower() in _MESSAGE_FIELDS or text.lower().startswith("content-"):
            raise InvalidValue(f"{text} is a field of the message itself; use a name of your "
                               "own, like X-Cipherd-Expires")
        return text


@dataclass(frozen=True)
class SubjectTag(ValueType):
    """
    A regular expression with one group, for a value written in the
    subject; empty for none.
    """

    def check(self, value: Any) -> str:
        text = self._want_string(value).strip()
        if not text:
            return ""
        problem = _regex_problem(text)
        if problem:
            raise InvalidValue(f"{text!r} is not a valid regular expression: {problem}")
        if re.compile(text).groups < 1:
            raise InvalidValue(f"{text!r} has no group: put the value's part in parentheses, "
                               r"like \[expires (\d+[hdw])\]")
        return text


@dataclass(frozen=True)
class HeaderTrigger(ValueType):
    """
    C{Header-Name: regular expression}, e.g. C{X-Encrypt: ^yes$}.
    """

    def check(self, value: Any) -> str:
        text = self._want_string(value).strip()
        if not text:
            return ""
        name, colon, pattern = text.partition(":")
        if not colon or not _HEADER_NAME.fullmatch(name):
            raise InvalidValue(
                f"{text!r} is not a header trigger: write a header name, a colon and a "
                "regular expression for its value, like X-Encrypt: ^yes$"
            )
        problem = _regex_problem(pattern.strip())
        if problem:
            raise InvalidValue(
                f"{text!r}: the value pattern is not a valid regular expression: {problem}"
            )
        return f"{name}: {pattern.strip()}"


# Fields of the message itself: a second one would change what it says or
# break its MIME structure.
_MESSAGE_FIELDS = frozenset({
    "from", "sender", "reply-to", "to", "cc", "bcc", "subject", "date", "message-id",
    "in-reply-to", "references", "mime-version", "received", "return-path",
    "dkim-signature"})


@dataclass(frozen=True)
class HeaderField(ValueType):
    """
    One header field, C{Name: value}, e.g. C{X-Sent-Via: Example gateway};
    empty for none.  Not one of the message's own fields.
    """

    widget = "text"

    def check(self, value: Any) -> str:
        text = Text(max_length=998).check(value).strip()
        if not text:
            return ""
        name, colon, field_value = text.partition(":")
        if not colon or not _HEADER_NAME.fullmatch(name) or not field_value.strip():
            raise InvalidValue(
                f"{text!r} is not a header field: write a name, a colon and a value, like "
                "X-Sent-Via: Example gateway")
        if name.lower() in _MESSAGE_FIELDS or name.lower().startswith("content-"):
            raise InvalidValue(
                f"{name} is a field of the message itself and cannot be added; use a name "
                "of your own, like X-Sent-Via")
        return f"{name}: {field_value.strip()}"


@dataclass(frozen=True)
class DomainName(ValueType):
    widget = "text"

    def check(self, value: Any) -> str:
        text = self._want_string(value).strip().lower()
        if text and (problem := domain_problem(text)):
            raise InvalidValue(problem)
        return text


_SELECTOR = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


@dataclass(frozen=True)
class DkimSelector(ValueType):
    def check(self, value: Any) -> str:
        text = self._want_string(value).strip().lower()
        if text and not _SELECTOR.fullmatch(text):
            raise InvalidValue("must be a DNS label (letters, digits, hyphens), like mail2026")
        return text


@dataclass(frozen=True)
class PrivateKeyPEM(ValueType):
    """
    An RSA private key (at least 1024 bits) in PEM, unencrypted; empty for
    none.
    """

    widget = "textarea"

    def check(self, value: Any) -> str:
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        text = self._want_string(value).strip()
        if not text:
            return ""
        if "-----BEGIN" not in text or "PRIVATE KEY-----" not in text:
            raise InvalidValue("is not a private key in PEM format: paste the whole key, from "
                               "-----BEGIN PRIVATE KEY----- (or -----BEGIN RSA PRIVATE "
                               "KEY-----) to its END line")
        if "ENCRYPTED" in text:
            raise InvalidValue("is protected by a passphrase: paste it unencrypted (openssl "
                               "pkey -in key.pem -out plain.pem asks for the passphrase "
                               "once)")
        try:
            key = load_pem_private_key(text.encode(), None)
        except (ValueError, TypeError):
            # The library's words (ASN.1 offsets) would not help the admin.
            raise InvalidValue("could not be read: the key is damaged or incomplete (a line "
                               "missing or changed between its BEGIN and END lines)"
                               ) from None
        if not isinstance(key, rsa.RSAPrivateKey):
            # Ed25519 DKIM (RFC 8463) would need PyNaCl in dkimpy, and few
            # receivers check it yet.
            raise InvalidValue("must be an RSA key (DKIM with Ed25519 is not supported)")
        if key.key_size < 1024:
            raise InvalidValue("RSA keys for DKIM must have at least 1024 bits")
        return text + "\n"

    def from_form(self, text: str) -> Any:
        return self.check(text.replace("\r\n", "\n"))


@dataclass(frozen=True)
class MailTemplate(ValueType):
    """
    A notification template (jinja2): a first line C{Subject: ...}, an
    empty line, then the text; empty for the built-in one.  Without
    C{subject}: only the text (of a message whose subject is given).
    """

    widget = "textarea"
    variables: tuple[str, ...] = ()
    subject: bool = True
    required: tuple[str, ...] = ()

    def check(self, value: Any) -> str:
        from jinja2 import TemplateSyntaxError, meta
        from jinja2.sandbox import SandboxedEnvironment

        text = self._want_string(value).replace("\r\n", "\n")
        if not text.strip():
            return ""
        if len(text) > 20000:
            raise InvalidValue(f"is {len(text)} characters long; the limit is 20000")
        if self.subject and (not text.startswith("Subject:") or "\n\n" not in text):
            raise InvalidValue("must begin with a line 'Subject: ...', then an empty line, "
                               "then the text")
        environment = SandboxedEnvironment()
        try:
            parsed = environment.parse(text)
        except TemplateSyntaxError as e:
            raise InvalidValue(f"is not a valid template: {e.message} (line {e.lineno})"
                               ) from None
        # A name it does not have would be empty in every message sent.
        unknown = sorted(meta.find_undeclared_variables(parsed)
                         - set(self.variables) - set(environment.globals))
        if unknown:
            names = ", ".join("{{ %s }}" % name for name in unknown)  # noqa: UP031
            raise InvalidValue(f"uses {names}, which this template does not have; its "
                               f"variables are {', '.join(self.variables)}")
        missing = [name for name in self.required
                   if name not in meta.find_undeclared_variables(parsed)]
        if missing:
            raise InvalidValue("must use " + ", ".join("{{ %s }}" % name  # noqa: UP031
                                                        for name in missing))
        return text

    def from_form(self, text: str) -> Any:
        return self.check(text)


# Letters and digits less those read for others (0/O, 1/l/I): a password
# read aloud or typed from paper.  (An alphabet, not a password.)
PASSWORD_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"  # noqa: S105


@dataclass(frozen=True)
class PasswordAlphabet(ValueType):
    """
    The characters random passwords are made of: printable ASCII, at least
    10 different ones.
    """

    def check(self, value: Any) -> str:
        text = self._want_string(value)
        if any(not (33 <= ord(c) <= 126) for c in text):
            raise InvalidValue("must be printable ASCII characters without spaces")
        if len(set(text)) < 10:
            raise InvalidValue("must have at least 10 different characters")
        return "".join(dict.fromkeys(text))


@dataclass(frozen=True)
class PDFPassword(Text):
    """
    A PDF password (revision 6): 8 to 127 characters that SASLprep (RFC
    4013, as ISO 32000-2 prepares passwords) accepts, so every reader
    takes it as it was typed.
    """

    max_length: int = 127
    min_length: int = 8

    def check(self, value: Any) -> str:
        # The preparation fpdf2 applies when it encrypts (the PDF method's
        # library): what it accepts here, it accepts then.
        from fpdf.encryption import StandardSecurityHandler

        text = super().check(value)
        try:
            StandardSecurityHandler.prepare_string(text)
        except Exception as e:  # its words name the password: not repeated
            if "bidirectional" in str(e):
                raise InvalidValue("mixes right-to-left letters with others, or does not "
                                   "begin and end with a right-to-left letter: PDF readers "
                                   "refuse such passwords") from None
            raise InvalidValue("has a character PDF passwords may not contain (a control, "
                               "private-use, unassigned or direction-changing character)"
                               ) from None
        return text


@dataclass(frozen=True)
class PhoneNumber(ValueType):
    """
    A mobile number in international form (E.164): C{+}, the country
    code and the number, 8 to 15 digits; spaces, dots, dashes and
    brackets are dropped.  Empty for none.
    """

    widget = "tel"

    def check(self, value: Any) -> str:
        text = self._want_string(value).strip()
        if not text:
            return ""
        number = re.sub(r"[\s.()-]", "", text)
        if not re.fullmatch(r"\+[1-9]\d{7,14}", number):
            raise InvalidValue(f"{text!r} is not a phone number in international form: "
                               "+, the country code, then the number (e.g. +31 6 1234 5678)")
        return number


# What an SMS gateway's URL and body template may name.
SMS_PLACEHOLDERS = ("{phone}", "{text}", "{credential}")


@dataclass(frozen=True)
class SMSGatewayUrl(ValueType):
    """
    The HTTPS address of an SMS gateway, with placeholders C{{phone}},
    C{{text}} and C{{credential}} (URL-encoded where they stand).
    """

    widget = "url"

    def check(self, value: Any) -> str:
        text = self._want_string(value).strip()
        if not text:
            return ""
        if any(not 33 <= ord(c) <= 126 for c in text):
            raise InvalidValue("must be printable ASCII without spaces: write other "
                               "characters percent-encoded (%C3%BC for ü)")
        sample = _without_placeholders(text, "placeholder")
        Url().check(sample)
        parts = urlsplit(sample)
        if parts.scheme != "https":
            raise InvalidValue("must start with https://: the text carries a password")
        if "@" in parts.netloc:
            raise InvalidValue("must not hold a user name or password before the host: use "
                               "the SMS gateway credential")
        if "placeholder" in parts.netloc:
            raise InvalidValue("may have placeholders in its path and query only, not in "
                               "the host")
        return text


def _without_placeholders(text: str, sample: str) -> str:
    """
    C{text} with the SMS placeholders replaced by C{sample}.

    @raise InvalidValue: it has a placeholder of another name.
    """
    for placeholder in SMS_PLACEHOLDERS:
        text = text.replace(placeholder, sample)
    unknown = re.search(r"\{[A-Za-z_][A-Za-z0-9_]*\}", text)
    if unknown:
        raise InvalidValue(f"has the placeholder {unknown.group(0)}; the placeholders are "
                           f"{', '.join(SMS_PLACEHOLDERS)}")
    return text


@dataclass(frozen=True)
class SMSGatewayBody(Text):
    """
    The body template of an SMS gateway's POST: one line, placeholders
    C{{phone}}, C{{text}} and C{{credential}} only.
    """

    max_length: int = 2000

    def check(self, value: Any) -> str:
        text = super().check(value)
        _without_placeholders(text, "x")
        return text


@dataclass(frozen=True)
class CertificatesPEM(ValueType):
    """
    One or more X.509 certificates in PEM; empty for none.
    """

    widget = "textarea"

    def check(self, value: Any) -> str:
        from cryptography import x509

        text = self._want_string(value).replace("\r\n", "\n").strip()
        if not text:
            return ""
        if "PRIVATE KEY" in text:
            raise InvalidValue("holds a private key: paste the CA certificates only, never "
                               "a key")
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise InvalidValue("is not a certificate in PEM format: paste it whole, from "
                               "-----BEGIN CERTIFICATE----- to its END line")
        try:
            x509.load_pem_x509_certificates(text.encode())
        except ValueError:
            raise InvalidValue("could not be read: a certificate is damaged or incomplete"
                               ) from None
        return text + "\n"

    def from_form(self, text: str) -> Any:
        return self.check(text)


@dataclass(frozen=True)
class Choice(ValueType):
    choices: tuple[tuple[str, str], ...] = ()
    widget = "select"

    def check(self, value: Any) -> str:
        text = self._want_string(value)
        if text not in dict(self.choices):
            allowed = ", ".join(key for key, _ in self.choices)
            raise InvalidValue(f"{text!r} is not one of: {allowed}")
        return text


# The registry ----------------------------------------------------------------


# What one appliance does (Settings → General → Appliance role): the guide's
# gateway, its webmail appliance, or both on one machine.
GATEWAY, WEBMAIL, BOTH = "gateway", "webmail", "both"
_ROLES = ((BOTH, "Gateway and webmail messenger"), (GATEWAY, "Gateway"),
          (WEBMAIL, "Webmail messenger"))
ROLE_TITLES: Mapping[str, str] = dict(_ROLES)


def shown_for_role(role: str, appliance_role: str) -> bool:
    """
    Whether the admin pages of an appliance with C{appliance_role} show
    what does the work of C{role} (L{BOTH}: of every role) in their menus
    and forms.
    """
    return BOTH in (role, appliance_role) or role == appliance_role


@dataclass(frozen=True)
class Property:
    """
    One setting.

    @ivar page: the admin settings page it is shown on.
    @ivar group: the heading it is shown under on that page.
    @ivar advanced: shown only after "show advanced settings".
    @ivar secret: write-only: pages and the API never show its value.
    @ivar generate: a random value is made at first start when it has none,
        and it cannot be emptied (the server secrets).
    @ivar role: the role whose work it sets (L{BOTH}: every role's); the
        settings form of an appliance of another role does not show it,
        and so never changes it.
    """

    name: str
    label: str
    type: ValueType
    default: Any
    help: str
    levels: frozenset[Level] = ALL_LEVELS
    page: str = "preferences"
    group: str = "General"
    advanced: bool = False
    secret: bool = False
    generate: bool = False
    role: str = BOTH

    def validate(self, value: Any) -> Any:
        """
        @return: the normalised value.
        @raise InvalidValue: why the value is refused.
        """
        return self.type.check(value)

    def shown_for(self, role: str) -> bool:
        """
        Whether the settings form of an appliance with C{role} shows it.
        """
        return shown_for_role(self.role, role)


@dataclass(frozen=True)
class Page:
    """
    @ivar role: the role whose work the page sets (L{BOTH}: every role's).
    """

    name: str
    title: str
    role: str = BOTH

    def shown_for(self, role: str) -> bool:
        """
        Whether an appliance with C{role} shows the page in its menus.
        """
        return shown_for_role(self.role, role)


PAGES = (
    Page("preferences", "General"),
    # What the webmail messenger sends and keeps.
    Page("templates", "Templates", WEBMAIL),
    Page("dkim", "DKIM", WEBMAIL),
    # What the gateway does with outgoing mail.
    Page("webmail", "Webmail", GATEWAY),
    Page("encryption", "Encryption policy", GATEWAY),
    Page("pdf", "PDF", GATEWAY),
    Page("quota", "Quota", WEBMAIL),
    Page("cleanup", "Auto cleanup", WEBMAIL),
    Page("branding", "Branding", WEBMAIL),
    Page("ca", "Certificate authority", GATEWAY),
    Page("dlp", "DLP", GATEWAY),
    Page("backup", "Scheduled backup"),
)

_ENCRYPT_MODES = (
    ("no_encryption", "No encryption"),
    ("allow", "Allow"),
    ("mandatory", "Mandatory"),
)

_P = Property

PROPERTIES: tuple[Property, ...] = (
    # Guide figure 9: General.  What only one role's work uses says so
    # (role=): the form of an appliance of the other role leaves it out.
    _P("comment", "Comment", Text(), "", "A note for administrators; not used by cipherd."),
    _P("appliance_role", "Appliance role", Choice(_ROLES), BOTH,
       "What this appliance does: the menus show only the pages of its role, and this "
       "page only its fields (every page stays reachable by its address; a field not "
       "shown keeps its value). Nothing else changes.",
       levels=GLOBAL_ONLY),
    _P("audit_retention_days", "Audit log retention", Integer(1, 36500, "days"), 365,
       "How long the audit log keeps each change an administrator made (Admin → Audit "
       "log); older entries are deleted.", levels=GLOBAL_ONLY, group="Audit log",
       advanced=True),
    _P("min_password_strength", "Min. password strength", Integer(0, 128, "bits"), 30,
       "The least strength, in bits (log2 of the guesses zxcvbn estimates an attacker "
       "needs), a webmail password must have. 30 bits is about a billion guesses and "
       "refuses common passwords and dictionary words with digits appended.", role=WEBMAIL),
    _P("relay_recipient", "Relay recipient", EmailAddress(), "",
       "The special address the gateway sends tunnel messages to, e.g. "
       "webmail@webmail.local. Mail to any other address is ordinary mail.",
       levels=GLOBAL_ONLY, role=WEBMAIL),
    _P("trusted_gateway_senders", "Trusted gateway senders", EmailAddresses(), "",
       "Relay messages are accepted when signed by a certificate whitelisted in the "
       "certificate trust list (guide section 4.2). A signer that is not whitelisted but "
       "chains to a trusted root is accepted only if its address is listed here (the "
       "webmail sender of a gateway). Empty: whitelisted signers only.",
       levels=GLOBAL_ONLY, advanced=True, role=WEBMAIL),
    _P("portal_base_url", "Portal base URL", Url(), "",
       "The base URL of the webmail portal for sign-up and password reset pages, e.g. "
       "https://webmail.example.com.", levels=GLOBAL_AND_DOMAIN, role=WEBMAIL),
    _P("notification_sender", "Notification sender", EmailAddress(), "",
       "The From address of notification messages (sign-up invitations, new message "
       "notices). Use an address an administrator reads.", role=WEBMAIL),
    _P("postmaster", "Postmaster", EmailAddress(), "",
       "Where tunnel messages that cannot be handled (e.g. signed with an untrusted "
       "certificate) are forwarded. Use an address an administrator reads.",
       levels=GLOBAL_ONLY, role=WEBMAIL),
    # Guide figure 9, advanced: General (the webmail messenger's).
    _P("initial_login_allowed", "Initial login allowed", Boolean(), True,
       "Whether a recipient may sign up (choose a first password) from an invitation.",
       advanced=True, role=WEBMAIL),
    _P("server_secret", "Server secret", Text(max_length=256, min_length=16), "",
       "The key sign-up and password reset links are signed with. Changing it makes "
       "every outstanding link invalid. Generated at first start.",
       levels=GLOBAL_ONLY, advanced=True, secret=True, generate=True, role=WEBMAIL),
    _P("signup_link_validity", "Signup link validity", Integer(1, 525600, "min"), 43200,
       "Minutes a sign-up link stays valid.", advanced=True, role=WEBMAIL),
    _P("password_reset_link_validity", "Password reset link validity",
       Integer(1, 525600, "min"), 300, "Minutes a password reset link stays valid.",
       advanced=True, role=WEBMAIL),
    _P("signup_url", "Signup URL", Url(), "",
       "The sign-up page. Empty: the portal base URL followed by /signup.",
       levels=GLOBAL_AND_DOMAIN, advanced=True, role=WEBMAIL),
    _P("password_reset_url", "Password reset URL", Url(), "",
       "The password reset page. Empty: the portal base URL followed by /reset.",
       levels=GLOBAL_AND_DOMAIN, advanced=True, role=WEBMAIL),
    _P("webmail_login_url", "Webmail login URL", Url(), "",
       "The login page linked from new message notices. Empty: the portal base URL "
       "followed by /login.", levels=GLOBAL_AND_DOMAIN, advanced=True, role=WEBMAIL),
    _P("password_reset_enabled", "Password reset enabled", Boolean(), True,
       "Whether recipients may reset a forgotten password by email.", advanced=True,
       role=WEBMAIL),
    # Post processing.
    _P("header_external", "Header external", HeaderField(), "",
       "A header field (Name: value) added on top of mail for external recipients, sent "
       "as it is, S/MIME encrypted (outside the encryption) or through the webmail "
       "tunnel; the sender's setting applies.",
       group="Post processing", advanced=True, role=GATEWAY),
    # Other.
    _P("system_mail_secret", "System mail secret", Text(max_length=256, min_length=16), "",
       "The key that marks mail cipherd sends itself (notifications, bounces), so it is "
       "never processed twice. Generated at first start.",
       levels=GLOBAL_ONLY, group="Other", advanced=True, secret=True, generate=True),
    # Custom properties.
    _P("custom_1", "Custom 1", Text(), "", "Free for site-specific use.",
       group="Custom properties", advanced=True),
    _P("custom_2", "Custom 2", Text(), "", "Free for site-specific use.",
       group="Custom properties", advanced=True),
    _P("custom_3", "Custom 3", Text(), "", "Free for site-specific use.",
       group="Custom properties", advanced=True),
    # Templates of the messages the webmail messenger sends (jinja2).
    _P("template_signup", "Sign-up invitation",
       MailTemplate(("sender", "subject", "link", "expires", "organisation")), "",
       "Sent on a recipient's first message. Empty: the built-in text. Variables: sender, "
       "subject, link, expires, organisation.", levels=GLOBAL_AND_DOMAIN, page="templates",
       group="Templates"),
    _P("template_new_message", "New message notice",
       MailTemplate(("sender", "subject", "link")), "",
       "Sent to a recipient with an account when a message arrives. Empty: the built-in "
       "text. Variables: sender, subject, link.", levels=GLOBAL_AND_DOMAIN, page="templates",
       group="Templates"),
    _P("template_password_reset", "Password reset",
       MailTemplate(("address", "link", "expires")), "",
       "Sent when a recipient asks to reset the password. Empty: the built-in text. "
       "Variables: address, link, expires.", levels=GLOBAL_AND_DOMAIN, page="templates",
       group="Templates"),
    _P("template_read_receipt", "Read receipt", MailTemplate(("reader", "subject", "read")),
       "",
       "Sent to the original sender when the recipient first reads a message, if the "
       "gateway asked for it. Empty: the built-in text. Variables: reader, subject, read.",
       levels=GLOBAL_AND_DOMAIN, page="templates", group="Templates"),
    _P("template_delivery_receipt", "Delivery receipt",
       MailTemplate(("recipients", "subject", "status_link", "recall_link", "expires")), "",
       "Sent to the original sender when a message is in the recipients' mailboxes, if the "
       "gateway asked for it, with the links to follow and recall it. Empty: the built-in "
       "text. Variables: recipients, subject, status_link, recall_link, expires.",
       levels=GLOBAL_AND_DOMAIN, page="templates", group="Templates"),
    _P("status_link_validity", "Status link validity", Integer(1, 90, "days"), 30,
       "Days the status and recall links of a delivery receipt work.",
       levels=GLOBAL_AND_DOMAIN, page="templates", group="Templates", role=WEBMAIL),
    # DKIM signing of those messages.
    _P("dkim_enabled", "DKIM enabled", Boolean(), False,
       "Sign notification messages with DKIM (RFC 6376).", levels=GLOBAL_AND_DOMAIN,
       page="dkim", group="DKIM"),
    _P("dkim_domain", "Domain", DomainName(), "",
       "The signing domain (d=): normally the domain of the notification sender.",
       levels=GLOBAL_AND_DOMAIN, page="dkim", group="DKIM"),
    _P("dkim_selector", "Selector", DkimSelector(), "",
       "The selector (s=): the public key is published at <selector>._domainkey.<domain>.",
       levels=GLOBAL_AND_DOMAIN, page="dkim", group="DKIM"),
    _P("dkim_private_key", "Private key", PrivateKeyPEM(), "",
       "The signing key, unencrypted PEM (RSA, at least 1024 bits; 2048 advised). Never "
       "shown again once stored.", levels=GLOBAL_AND_DOMAIN, page="dkim", group="DKIM",
       secret=True),
    # Guide figure 14: gateway webmail settings.
    _P("webmail_enabled", "Enabled", Boolean(), False,
       "Whether mail that must be encrypted may go to the webmail messenger when S/MIME "
       "cannot be used. It must be enabled for the sender and for the recipient.",
       page="webmail", group="User settings"),
    _P("webmail_read_receipt", "Read receipt", Boolean(), False,
       "Send the sender a receipt when the recipient reads the message in webmail.",
       page="webmail", group="User settings"),
    _P("webmail_delivery_receipt", "Delivery receipt", Boolean(), False,
       "Send the sender a receipt when the message is in the recipients' webmail "
       "mailboxes, with a link to see when each opens it and a link to recall it.",
       page="webmail", group="User settings"),
    _P("message_expiry", "Message expiry", Interval(optional=True), "",
       "How long a message stays readable in webmail (and its PDF reply link works) "
       "unless the sender sets otherwise, like 7d or 2w (m: minutes, h: hours). Empty: "
       "until the mailbox cleanup removes it.", page="webmail", group="Message expiry"),
    _P("message_expiry_max", "Longest expiry", Interval(optional=True), "",
       "The longest expiry a sender may set; a longer one is cut to this. Empty: any.",
       page="webmail", group="Message expiry"),
    _P("message_expiry_header", "Expiry header", HeaderName(), "X-Cipherd-Expires",
       "The header field a sender sets an expiry with (like X-Cipherd-Expires: 7d); removed "
       "before the message leaves. Empty: none.", levels=GLOBAL_AND_DOMAIN,
       page="webmail", group="Message expiry", advanced=True),
    _P("message_expiry_subject_tag", "Expiry subject tag", SubjectTag(),
       r"(?i)\[expires?:?\s*(\d{1,6}[smhdw])\]",
       "A regular expression whose first group is the expiry, found in the subject (like "
       "[expires 7d]); removed before the message leaves. Empty: none.",
       levels=GLOBAL_AND_DOMAIN, page="webmail", group="Message expiry", advanced=True),
    # Sender controls (gateway): what the sender may ask of a webmail message.
    _P("sender_controls_header", "Controls header", HeaderName(), "X-Cipherd-Controls",
       "The header field a sender asks for controls with, like X-Cipherd-Controls: no-reply, "
       "no-download, require-totp; removed before the message leaves. Empty: none.",
       levels=GLOBAL_AND_DOMAIN, page="webmail", group="Sender controls", advanced=True),
    _P("sender_controls_subject_tag", "Controls subject tag", SubjectTag(),
       r"(?i)\[(no-?reply|no-?download|require-?totp)\]",
       "A regular expression whose first group names a control (no-reply, no-download, "
       "require-totp), found in the subject (like [no-reply]); each found is removed before "
       "the message leaves. Empty: none.", levels=GLOBAL_AND_DOMAIN, page="webmail",
       group="Sender controls", advanced=True),
    _P("sender_control_no_reply", "Allow no reply", Boolean(), True,
       "A sender may forbid replies from the webmail portal to a message.", page="webmail",
       group="Sender controls"),
    _P("sender_control_no_download", "Allow no download", Boolean(), True,
       "A sender may forbid downloading a message and its attachments: images and PDFs are "
       "then only shown in the portal, other attachments not at all.", page="webmail",
       group="Sender controls"),
    _P("sender_control_require_totp", "Allow second factor required", Boolean(), True,
       "A sender may require that a message is read only with a second factor (TOTP).",
       page="webmail", group="Sender controls"),
    _P("webmail_only_if_mandatory", "Only if mandatory", Boolean(), False,
       "Use webmail only when encryption is mandatory, not when merely allowed.",
       page="webmail", group="User settings"),
    _P("webmail_recipient", "Webmail recipient", EmailAddress(), "",
       "The address the webmail messenger receives tunnel messages on; must equal its "
       "Relay recipient, e.g. webmail@webmail.local.",
       levels=GLOBAL_AND_DOMAIN, page="webmail", group="Tunneling settings"),
    _P("webmail_sender", "Webmail sender", EmailAddress(), "",
       "The address tunnel messages are sent from and signed for. Use an address only "
       "webmail uses.", levels=GLOBAL_AND_DOMAIN, page="webmail", group="Tunneling settings"),
    # Encryption policy (gateway).
    _P("locality", "Locality", Choice((("internal", "Internal"), ("external", "External"))),
       "external", "Whether the user or domain is inside the organisation. Relay domains "
       "are internal.", levels=frozenset({Level.DOMAIN, Level.USER}), page="encryption"),
    _P("encrypt_mode", "Encrypt mode", Choice(_ENCRYPT_MODES), "no_encryption",
       "For mail to external recipients; the stricter of the sender's and the recipient's "
       "applies. No encryption: never encrypt. Allow: encrypt when a method can (S/MIME "
       "with the recipient's certificate; webmail unless only if mandatory), else send as "
       "is; a matching trigger makes it mandatory for that message. Mandatory: always "
       "encrypt; bounce when no method can.", page="encryption"),
    _P("subject_trigger_enabled", "Subject trigger enabled", Boolean(), False,
       "Encrypt when the subject matches the subject trigger.", page="encryption",
       group="Subject trigger"),
    _P("subject_trigger", "Subject trigger", RegularExpression(), r"(?i)\[encrypt\]",
       "A regular expression searched for in the subject.", page="encryption",
       group="Subject trigger"),
    _P("subject_trigger_remove_pattern", "Remove pattern", Boolean(), True,
       "Remove the matched text from the subject before sending.", page="encryption",
       group="Subject trigger"),
    _P("header_trigger_enabled", "Header trigger enabled", Boolean(), False,
       "Encrypt when a header matches the header trigger.", page="encryption",
       group="Header trigger"),
    _P("header_trigger", "Header trigger", HeaderTrigger(), "X-Encrypt: ^(yes|true|1)$",
       "A header name and a regular expression for its value, like X-Encrypt: ^yes$.",
       page="encryption", group="Header trigger"),
    _P("smime_enabled", "S/MIME enabled", Boolean(), True,
       "Whether S/MIME may be used for recipients with a valid certificate.",
       page="encryption", group="Methods"),
    _P("smime_sign", "S/MIME sign", Boolean(), True,
       "Sign S/MIME mail too when the sender has a valid signing certificate with its "
       "private key.", page="encryption", group="Methods"),
    _P("smime_signature_scheme", "S/MIME signature scheme",
       Choice((("pkcs1", "RSA PKCS#1 v1.5"), ("pss", "RSASSA-PSS"))), "pkcs1",
       "How an RSA signing key signs (RFC 4056). PKCS#1 v1.5 is what every client checks; "
       "RSASSA-PSS is the modern scheme most current clients check too. EC keys sign with "
       "ECDSA and Ed25519 keys with Ed25519 whatever this says.",
       page="encryption", group="Methods"),
    _P("smime_obscure_subject", "S/MIME obscure subject", Boolean(), False,
       "S/MIME mail the gateway encrypts carries its header fields inside, protected "
       "(RFC 9788). With this on, the Subject outside, which every server on the way reads, "
       "becomes [...]: clients that read protected header fields (RFC 9788) show "
       "the real one, others show [...].",
       page="encryption", group="Methods"),
    _P("smime_remove_signature", "S/MIME remove signature", Boolean(), True,
       "Incoming S/MIME and PGP/MIME for internal recipients is delivered as plain MIME, "
       "its signatures "
       "verified and, when valid and trusted, removed (what was found is in the "
       "X-Cipherd-Info fields; one that is not stays for the reader's mail client to show). "
       "Off: a signature inside the encryption, or of an unencrypted message, always stays. "
       "A signature around the encryption is always removed.",
       page="encryption", group="Methods"),
    _P("smime_revocation_unknown", "S/MIME revocation unknown",
       Choice((("fail open", "Fail open: use the certificate"),
               ("fail closed", "Fail closed: refuse the certificate"))), "fail open",
       "What a certificate of this domain's (or user's) addresses is worth when neither a "
       "current CRL nor its OCSP responder says whether it, or a CA above it, was revoked: "
       "the responder cannot be reached, does not know it, or the CRL is missing or out of "
       "date. A certificate known to be revoked is always refused. Applies to recipients' "
       "certificates when encrypting, senders' when verifying a signature, and our own "
       "when signing.",
       page="encryption", group="Methods"),
    _P("pgp_enabled", "PGP enabled", Boolean(), True,
       "Whether PGP may be used for recipients without a valid S/MIME certificate but with "
       "a valid, trusted PGP key in the keyring (the chain: S/MIME, then PGP, then "
       "webmail). It must be enabled for the sender and for the recipient.",
       page="encryption", group="PGP"),
    _P("pgp_sign", "PGP sign", Boolean(), True,
       "Sign PGP mail too when the sender has a valid PGP key with its secret key in the "
       "keyring.", page="encryption", group="PGP"),
    _P("pgp_encoding", "PGP encoding",
       Choice((("pgp_mime", "PGP/MIME (RFC 3156)"),
               ("inline", "Inline PGP, for text-only messages"))), "pgp_mime",
       "How PGP mail is sent. PGP/MIME encrypts the whole message, attachments and "
       "header fields included. Inline puts an armored block in a text/plain body, for "
       "old clients; a message with attachments or HTML is always sent as PGP/MIME.",
       page="encryption", group="PGP"),
    _P("pgp_wkd", "PGP key lookup (WKD)", Boolean(), False,
       "For a recipient with no PGP key in the keyring, whose mail must be encrypted, look "
       "the key up in the Web Key Directory of the recipient's domain (HTTPS to "
       "openpgpkey.<domain>, else <domain>; names resolved with the MTA's DNS servers; a few "
       "seconds at most, then the next method). What is found is stored in the keyring, "
       "trusted only as PGP trust discovered keys says.", page="encryption", group="PGP"),
    _P("pgp_autocrypt", "PGP keys from Autocrypt", Boolean(), False,
       "Collect the key in the Autocrypt header of mail from external senders (the "
       "sender's setting), when its address is the From address and a user ID of the key. "
       "Stored in the keyring, trusted only as PGP trust discovered keys says.",
       page="encryption", group="PGP"),
    _P("pgp_discovered_trust", "PGP trust discovered keys", Boolean(), False,
       "Keys found by WKD or Autocrypt for addresses of this domain (or user) are trusted "
       "at once. Off: they wait, untrusted, until an administrator trusts them (PGP keys). "
       "Anyone can send mail with an Autocrypt header in another's name: trust those only "
       "for domains whose mail is authenticated on the way in.",
       page="encryption", group="PGP"),
    # Settings → PDF: the third method of the chain.
    _P("pdf_enabled", "PDF enabled", Boolean(), False,
       "Whether PDF encryption may be used for recipients without a valid S/MIME "
       "certificate or trusted PGP key (the chain: S/MIME, PGP, PDF, webmail): the message "
       "goes out as an AES-256 encrypted PDF, its attachments inside, that any PDF reader "
       "opens with the password. It must be enabled for the sender and for the recipient.",
       page="pdf", group="PDF", role=GATEWAY),
    _P("pdf_password_mode", "PDF password mode",
       Choice((("random_to_sender", "Random, sent to the sender"),
               ("static", "Static: the recipient's PDF password"),
               ("portal", "Random, in the recipient's webmail portal"),
               ("sms", "Random, sent to the recipient by SMS"))), "random_to_sender",
       "How the recipient gets the password (the recipient's setting). Random, sent to the "
       "sender: a new password for each message, sent to the sender in a notice of its "
       "own, to pass on by another channel (telephone, text message). Static: the PDF "
       "password set for the recipient or the recipient's domain. Portal: a new password "
       "for each message, put in the recipient's mailbox on the webmail messenger (through "
       "the webmail tunnel: the webmail sender and recipient must be set); the recipient "
       "signs up or logs in to read it. SMS: a new password for each message, sent to the "
       "recipient's mobile number by the SMS gateway. When the password cannot be "
       "delivered the PDF is not sent and the next method is used.",
       page="pdf", group="PDF", role=GATEWAY),
    _P("pdf_password", "PDF password", PDFPassword(), "",
       "The password of PDFs for this recipient (or this domain's recipients) when the "
       "password mode is static. Write-only.",
       levels=frozenset({Level.DOMAIN, Level.USER}), page="pdf", group="PDF", secret=True,
       role=GATEWAY),
    _P("pdf_password_length", "PDF password length", Integer(8, 64, "characters"), 16,
       "The length of random PDF passwords (the sender's setting).",
       page="pdf", group="PDF", advanced=True, role=GATEWAY),
    _P("pdf_password_alphabet", "PDF password alphabet", PasswordAlphabet(),
       PASSWORD_ALPHABET,
       "The characters random PDF passwords are made of. The default leaves out those "
       "that look alike (0 and O, 1, l and I).",
       page="pdf", group="PDF", advanced=True, role=GATEWAY),
    _P("pdf_page_size", "PDF page size", Choice((("a4", "A4"), ("letter", "Letter"))), "a4",
       "The page size of the PDF (the sender's setting).", page="pdf", group="PDF",
       role=GATEWAY),
    _P("pdf_obscure_subject", "PDF obscure subject", Boolean(), False,
       "The mail carrying the PDF has the subject [...] instead of the message's own, "
       "which stays inside the PDF (the sender's setting).",
       page="pdf", group="PDF", role=GATEWAY),
    _P("pdf_reply_enabled", "PDF reply enabled", Boolean(), True,
       "The PDF and its mail have a link to a page of this appliance's portal where the "
       "recipient writes a reply, with attachments, without an account; it goes to the "
       "sender only (the sender's setting, checked again when the reply is sent). Needs "
       "the PDF reply URL or the Portal base URL.",
       page="pdf", group="Reply", role=GATEWAY),
    _P("pdf_reply_url", "PDF reply URL", Url(), "",
       "The address of this appliance's portal as recipients reach it, e.g. "
       "https://secure.example.com; the links are this followed by /pdf/reply?token=... "
       "Empty: the Portal base URL.", levels=GLOBAL_AND_DOMAIN, page="pdf", group="Reply",
       role=GATEWAY),
    _P("pdf_reply_link_validity", "PDF reply link validity", Integer(1, 3650, "days"), 30,
       "Days a reply link works after the message was sent.", page="pdf", group="Reply",
       role=GATEWAY),
    _P("pdf_reply_single_use", "PDF reply single use", Boolean(), False,
       "A reply link sends one reply only. Either way a link sends at most 5 replies an "
       "hour.", page="pdf", group="Reply", advanced=True, role=GATEWAY),
    # The SMS gateway PDF passwords (mode SMS) are sent through.
    _P("sms_phone", "Mobile number", PhoneNumber(), "",
       "The recipient's mobile number in international form (+31 6 1234 5678), for PDF "
       "passwords sent by SMS.", levels=frozenset({Level.USER}), page="pdf", group="SMS",
       role=GATEWAY),
    _P("sms_gateway_url", "SMS gateway URL", SMSGatewayUrl(), "",
       "The HTTPS address of the SMS gateway's API, with placeholders {phone} (the "
       "recipient's mobile number), {text} (the message) and {credential}, URL-encoded "
       "where they stand, e.g. https://sms.example.com/send?to={phone}&text={text}. Empty: "
       "no SMS; recipients whose password mode is SMS get the next method.",
       levels=GLOBAL_AND_DOMAIN, page="pdf", group="SMS", role=GATEWAY),
    _P("sms_gateway_method", "SMS gateway method",
       Choice((("get", "GET (all in the URL)"), ("post_form", "POST, a form (the body)"),
               ("post_json", "POST, JSON (the body)"))), "post_form",
       "How the request is made. POST sends the SMS gateway body, as a form "
       "(application/x-www-form-urlencoded) or JSON.",
       levels=GLOBAL_AND_DOMAIN, page="pdf", group="SMS", role=GATEWAY),
    _P("sms_gateway_body", "SMS gateway body", SMSGatewayBody(),
       "to={phone}&text={text}",
       "The body of a POST, with the placeholders {phone}, {text} and {credential}: in a "
       "form they are form-encoded, in JSON they become JSON strings, quotes included, "
       'e.g. {"to": {phone}, "message": {text}}.',
       levels=GLOBAL_AND_DOMAIN, page="pdf", group="SMS", role=GATEWAY),
    _P("sms_gateway_authentication", "SMS gateway authentication",
       Choice((("bearer", "Authorization: Bearer <credential>"),
               ("basic", "Basic: the credential is user:password"),
               ("none", "None (or {credential} in the URL or body)"))), "bearer",
       "How the SMS gateway credential is sent.",
       levels=GLOBAL_AND_DOMAIN, page="pdf", group="SMS", role=GATEWAY),
    _P("sms_gateway_credential", "SMS gateway credential", Text(max_length=1000), "",
       "The API key or user:password of the SMS gateway account. Write-only.",
       levels=GLOBAL_AND_DOMAIN, page="pdf", group="SMS", secret=True, role=GATEWAY),
    _P("sms_gateway_ca", "SMS gateway CA certificates", CertificatesPEM(), "",
       "The certificates (PEM) the SMS gateway's TLS certificate must chain to: the root "
       "CA's, not only an intermediate's. Empty: the system's trusted roots. Its host name "
       "is always checked.",
       levels=GLOBAL_AND_DOMAIN, page="pdf", group="SMS", advanced=True, role=GATEWAY),
    _P("template_pdf_message", "PDF message",
       MailTemplate(("sender", "recipient", "subject", "filename", "password_mode",
                     "reply_link", "portal_link"), subject=False), "",
       "The text of the mail that carries the PDF (its subject is the message's). Empty: "
       "the built-in text. Variables: sender, recipient, subject, filename, password_mode "
       "(random_to_sender, static, portal or sms), reply_link (empty when there is none), "
       "portal_link (the Portal base URL).",
       levels=GLOBAL_AND_DOMAIN, page="pdf", group="Templates", role=GATEWAY),
    _P("template_pdf_password", "PDF password notice",
       MailTemplate(("recipient", "subject", "password", "filename"), required=("password",)), "",
       "Sent to the sender with the password of a PDF when the password mode is random, "
       "sent to the sender. Empty: the built-in text. Variables: recipient, subject, "
       "password, filename.",
       levels=GLOBAL_AND_DOMAIN, page="pdf", group="Templates", role=GATEWAY),
    _P("template_pdf_portal_password", "PDF password in the portal",
       MailTemplate(("sender", "recipient", "subject", "password", "filename"),
                    required=("password",)), "",
       "The message put in the recipient's webmail mailbox with the password of a PDF when "
       "the password mode is portal. Empty: the built-in text. Variables: sender, "
       "recipient, subject, password, filename.",
       levels=GLOBAL_AND_DOMAIN, page="pdf", group="Templates", role=GATEWAY),
    _P("template_pdf_sms", "PDF password text message",
       MailTemplate(("sender", "password", "filename"), subject=False,
                    required=("password",)), "",
       "The text message with the password of a PDF when the password mode is SMS; keep it "
       "short (160 characters make one text message). Empty: the built-in text. "
       "Variables: sender, password, filename.",
       levels=GLOBAL_AND_DOMAIN, page="pdf", group="Templates", role=GATEWAY),
    # The portal (the recipient's side in the browser).
    _P("webmail_totp_required", "Second factor required", Boolean(), False,
       "Recipients must use a one-time code from an authenticator app (TOTP) as well as "
       "their password; those without one set it up at their next login.",
       page="webmail", group="Portal"),
    _P("webmail_email_code_login", "Sign in by email code", Boolean(), False,
       "Recipients may sign in with a one-time code mailed to them instead of a password "
       "(for those who rarely come back); wrong codes count as wrong passwords. Their "
       "new-message notices then link to the page that mails the code.",
       levels=GLOBAL_AND_DOMAIN, page="webmail", group="Portal", role=WEBMAIL),
    _P("template_login_code", "Sign-in code", MailTemplate(("address", "code", "expires")), "",
       "The mail with a one-time sign-in code. Empty: the built-in text. Variables: "
       "address, code, expires.", levels=GLOBAL_AND_DOMAIN, page="templates",
       group="Templates", role=WEBMAIL),
    _P("webmail_compose_enabled", "Compose enabled", Boolean(), False,
       "Recipients may write new messages (to authorized recipients only), not just "
       "reply.", page="webmail", group="Portal"),
    _P("portal_product_name", "Product name", Text(max_length=60, min_length=1),
       "Secure webmail", "The name the portal shows at the top of every page and in the "
       "browser's title.", levels=GLOBAL_ONLY, page="branding"),
    _P("portal_primary_colour", "Primary colour", Colour(), "#1f5fbf",
       "The colour of the portal's top bar, buttons and links, as #rrggbb. Choose a dark "
       "one: white text must stay readable on it.", levels=GLOBAL_ONLY, page="branding"),
    _P("portal_logo_url", "Logo URL", LogoUrl(), "",
       "A logo shown beside the product name: an https:// address or a path on the portal. "
       "Empty: no logo.", levels=GLOBAL_ONLY, page="branding"),
    # Quota.
    _P("mailbox_size_limit", "Mailbox size limit", Integer(0, 2**50, "bytes"), 512 * 1024**2,
       "The largest size of one webmail mailbox, in bytes.", page="quota"),
    # Guide figure 12: auto cleanup.
    _P("auto_mailbox_cleanup_enabled", "Auto cleanup enabled", Boolean(), False,
       "Delete webmail messages older than the cleanup interval.", levels=GLOBAL_ONLY,
       page="cleanup", group="Auto mailbox cleanup"),
    _P("auto_mailbox_cleanup_interval", "Cleanup interval", Interval(), "2w",
       "Messages older than this are deleted: a number with unit h, d or w (8h, 1d, 2w), or m "
       "for minutes.",
       levels=GLOBAL_ONLY, page="cleanup", group="Auto mailbox cleanup"),
    _P("auto_account_cleanup_enabled", "Auto cleanup enabled", Boolean(), False,
       "Delete webmail accounts without activity for the given number of days.",
       levels=GLOBAL_ONLY, page="cleanup", group="Auto account cleanup"),
    _P("auto_account_cleanup_last_activity", "Last activity", Integer(1, 36500, "days"), 90,
       "Accounts idle for more days than this are deleted.", levels=GLOBAL_ONLY,
       page="cleanup", group="Auto account cleanup"),
    _P("auto_account_cleanup_schedule", "Cleanup schedule", CronExpression(), "0 0 2 * * ?",
       "When account cleanup runs, as a Quartz cron expression (0 0 2 * * ? is 2am "
       "every day).", levels=GLOBAL_ONLY, page="cleanup", group="Auto account cleanup"),
    # The built-in certificate authority (Admin → CA).
    _P("auto_request_certificate", "Auto request certificate", Boolean(), False,
       "When an internal sender without a valid signing certificate sends mail that "
       "should be S/MIME signed, the default CA issues one at once (new key on the "
       "gateway) and the message leaves signed with it (the sender's setting).",
       page="ca", group="Certificate authority", role=GATEWAY),
    _P("ca_default", "Default CA", Text(max_length=64), "",
       "The CA that issues the certificates of this domain's (or user's) addresses: its id "
       "or thumbprint (Admin → CA). Empty: the oldest CA that can issue.",
       page="ca", group="Certificate authority", role=GATEWAY),
    _P("ca_certificate_validity", "Certificate validity", Integer(1, 3650, "days"), 365,
       "How long a certificate the CA issues is valid (never beyond the CA's own).",
       page="ca", group="Certificate authority", role=GATEWAY),
    _P("ca_key_type", "Certificate key type",
       Choice((("rsa2048", "RSA 2048"), ("rsa3072", "RSA 3072"), ("rsa4096", "RSA 4096"),
               ("ec-p256", "ECDSA P-256"), ("ec-p384", "ECDSA P-384"))), "rsa2048",
       "The key made for an issued certificate. RSA keys sign and encrypt in every client; "
       "EC keys (ECDH key agreement for encryption) in current ones.",
       page="ca", group="Certificate authority", role=GATEWAY),
    _P("ca_renewal_window", "Renewal window", Integer(1, 365, "days"), 30,
       "A certificate issued here is issued again, with a new key, this many days before "
       "it expires; the old one stays in the certificate store to decrypt older mail.",
       levels=GLOBAL_ONLY, page="ca", group="Certificate authority", role=GATEWAY),
    _P("ca_crl_schedule", "CRL schedule", CronExpression(), "0 0 * * * ?",
       "When every CA signs its CRL again, as a Quartz cron expression in UTC (0 0 * * * ? "
       "is every hour); a CA also signs it at every revocation. One node of several signs.",
       levels=GLOBAL_ONLY, page="ca", group="CRL", role=GATEWAY),
    _P("ca_crl_validity", "CRL validity", Integer(1, 8760, "hours"), 48,
       "The next update of a CRL, in hours after it is signed: longer than the time between "
       "two runs of the schedule, so a CRL is always current.",
       levels=GLOBAL_ONLY, page="ca", group="CRL", role=GATEWAY),
    # Data loss prevention (Admin → DLP keeps the patterns and the quarantine).
    _P("dlp_enabled", "DLP enabled", Boolean(), False,
       "Search mail from this sender (domain, or everyone) to external recipients for the "
       "DLP patterns, in the subject, the text and the attachments (PDF, Office, "
       "OpenDocument, text, CSV, zip archives, attached messages), and act as the pattern "
       "that hit says: warn (a header and a log line), encrypt (encryption becomes "
       "mandatory), quarantine, block (bounce naming the rule).",
       page="dlp", group="DLP", role=GATEWAY),
    _P("dlp_patterns", "DLP patterns", NameList(), "",
       "The names of the patterns that apply (Admin → DLP), separated by commas. Empty: "
       "every pattern.", page="dlp", group="DLP", role=GATEWAY),
    _P("dlp_skip", "DLP skip list", AddressesAndDomains(), "",
       "Recipients (addresses, or domains with everyone in them) DLP does not act for: "
       "they get the message as if no rule had matched.", page="dlp", group="DLP",
       role=GATEWAY),
    _P("dlp_unscannable_action", "Unscannable attachments",
       Choice((("none", "Nothing"), ("warn", "Warn"), ("encrypt", "Encrypt"),
               ("quarantine", "Quarantine"), ("block", "Block"))), "warn",
       "What happens to a message with an attachment DLP cannot read: an encrypted "
       "attachment or message, a password-protected archive, a damaged PDF.",
       page="dlp", group="DLP", role=GATEWAY),
    _P("dlp_bomb_action", "Zip bombs",
       Choice((("none", "Nothing"), ("warn", "Warn"), ("encrypt", "Encrypt"),
               ("quarantine", "Quarantine"), ("block", "Block"))), "quarantine",
       "What happens to a message with an archive that expands past the bounds (50 MB, "
       "2000 members, 200 times its size, 4 levels deep).",
       page="dlp", group="DLP", role=GATEWAY),
    _P("dlp_manager", "DLP manager", EmailAddress(), "",
       "Who is told of every message quarantined or blocked (the rules, never the matched "
       "text). Empty: nobody.", levels=GLOBAL_AND_DOMAIN, page="dlp", group="DLP",
       role=GATEWAY),
    _P("template_dlp_sender", "DLP quarantine notice",
       MailTemplate(("recipients", "subject", "rules")), "",
       "Sent to the sender of a message DLP quarantined. Empty: the built-in text. "
       "Variables: recipients, subject, rules.",
       levels=GLOBAL_AND_DOMAIN, page="dlp", group="Templates", role=GATEWAY),
    _P("template_dlp_manager", "DLP manager notice",
       MailTemplate(("sender", "recipients", "subject", "rules", "action", "quarantine_id")),
       "",
       "Sent to the DLP manager for every message quarantined or blocked. Empty: the "
       "built-in text. Variables: sender, recipients, subject, rules, action "
       "(quarantine or block), quarantine_id (empty for a block).",
       levels=GLOBAL_AND_DOMAIN, page="dlp", group="Templates", role=GATEWAY),
    # Scheduled backups (Admin → Backup makes and restores them by hand).
    _P("backup_enabled", "Scheduled backup enabled", Boolean(), False,
       "Write a backup of the database, the key-encryption key (under the passphrase "
       "below) and the TLS certificate to the backup directory on the schedule below.",
       levels=GLOBAL_ONLY, page="backup", group="Scheduled backup"),
    _P("backup_schedule", "Backup schedule", CronExpression(), "0 30 1 * * ?",
       "When the backup is made, as a Quartz cron expression in UTC (0 30 1 * * ? is "
       "1:30am every day). One node of several makes each backup.",
       levels=GLOBAL_ONLY, page="backup", group="Scheduled backup"),
    _P("backup_directory", "Backup directory", AbsolutePath(max_length=1024), "",
       "The directory the backups are written to, an absolute path the cipherd user can "
       "write to; best a mounted file system of another machine.",
       levels=GLOBAL_ONLY, page="backup", group="Scheduled backup"),
    _P("backup_keep", "Backups kept", Integer(1, 10000, "backups"), 14,
       "How many scheduled backups the directory keeps: the oldest beyond this number "
       "are deleted after each new one.", levels=GLOBAL_ONLY, page="backup",
       group="Scheduled backup"),
    _P("backup_passphrase", "Backup passphrase", BackupPassphrase(), "",
       "The passphrase scheduled backups are encrypted under, 12 to 512 characters; kept "
       "sealed under the key-encryption key. "
       "Keep a copy away from the appliance: without it no backup can be restored.",
       levels=GLOBAL_ONLY, page="backup", group="Scheduled backup", secret=True),
)

REGISTRY: Mapping[str, Property] = {p.name: p for p in PROPERTIES}


def properties_on(page: str, level: Level) -> list[Property]:
    """
    The properties shown on C{page} at C{level}, in declaration order.
    """
    return [p for p in PROPERTIES if p.page == page and level in p.levels]


# Resolution -----------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """
    Where a value is set: C{(Level.GLOBAL, "")}, C{(Level.DOMAIN,
    "example.com")}, C{(Level.DOMAIN, "*.example.com")} or C{(Level.USER,
    "alice@example.com")}.
    """

    level: Level
    key: str = ""

    def describe(self) -> str:
        return self.level.value if self.level is Level.GLOBAL else f"{self.level.value} {self.key}"


GLOBAL = Scope(Level.GLOBAL)


def normalise_domain(domain: str) -> str:
    """
    @raise InvalidValue: not a domain or wildcard domain.
    """
    domain = domain.strip().lower().rstrip(".")
    problem = domain_problem(domain, wildcard=True)
    if problem:
        raise InvalidValue(f"{domain!r} is not a valid domain: {problem}")
    return domain


def normalise_email(address: str) -> str:
    """
    Addresses are compared case-insensitively throughout cipherd.

    @raise InvalidValue: not an email address.
    """
    address = address.strip().lower()
    problem = email_problem(address)
    if problem:
        raise InvalidValue(f"{address!r} is not a valid email address: {problem}")
    return address


def scope_for(level: Level, key: str) -> Scope:
    """
    The domain or user scope named C{key}, normalised.

    @raise InvalidValue: C{key} is not a domain (or wildcard domain), or not
        an email address.
    """
    if level is Level.DOMAIN:
        return Scope(level, normalise_domain(key))
    if level is Level.USER:
        return Scope(level, normalise_email(key))
    return GLOBAL


# Pure, and asked for every address of every message.
@functools.lru_cache(maxsize=65536)
def scope_of_address(address: str) -> Scope:
    """
    The scope whose settings apply to mail of C{address}: its user, or its
    domain when it is no address we can place as a user, or global (the
    null sender, C{""}).
    """
    address = canonical_address(address)
    try:
        return scope_for(Level.USER, address)
    except InvalidValue:
        try:
            return scope_for(Level.DOMAIN, address.rpartition("@")[2])
        except InvalidValue:
            return GLOBAL


def lookup_chain(scope: Scope) -> list[Scope]:
    """
    The scopes consulted, most specific first, for a value at C{scope}.
    """
    chain: list[Scope] = []
    if scope.level is Level.USER:
        chain.append(scope)
        domain = scope.key.rpartition("@")[2]
    elif scope.level is Level.DOMAIN:
        domain = scope.key
    else:
        return [GLOBAL]
    if domain.startswith("*."):
        # A wildcard's parents are the wildcards above it.
        labels = domain[2:].split(".")
        chain.append(Scope(Level.DOMAIN, domain))
        labels = labels[1:]
    else:
        labels = domain.split(".")
        chain.append(Scope(Level.DOMAIN, domain))
    for i in range(len(labels)):
        chain.append(Scope(Level.DOMAIN, "*." + ".".join(labels[i:])))
    chain.append(GLOBAL)
    return chain


@dataclass(frozen=True)
class Resolved:
    """
    The effective value of a property and where it comes from: C{source}
    is C{None} for the factory default.
    """

    value: Any
    source: Scope | None

    @property
    def origin(self) -> str:
        return "default" if self.source is None else self.source.level.value


class EffectiveValues(Mapping[str, Any]):
    """
    The effective values at one scope (without their origin), each
    resolved when first asked for: mail processing reads a dozen of them.
    """

    def __init__(self, values: Values, scope: Scope) -> None:
        self._values = values
        self._chain = lookup_chain(scope)
        self._resolved: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        try:
            return self._resolved[name]
        except KeyError:
            pass
        prop = REGISTRY[name]
        value = prop.default
        for candidate in self._chain:
            found = self._values.by_scope.get(candidate)
            if found and name in found and candidate.level in prop.levels:
                value = found[name]
                break
        self._resolved[name] = value
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)


@dataclass
class Values:
    """
    The values set at some scopes: C{{scope: {name: value}}}.
    """

    by_scope: dict[Scope, dict[str, Any]] = field(default_factory=dict)

    def resolve(self, scope: Scope, prop: Property) -> Resolved:
        for candidate in lookup_chain(scope):
            values = self.by_scope.get(candidate, {})
            if prop.name in values and candidate.level in prop.levels:
                return Resolved(values[prop.name], candidate)
        return Resolved(prop.default, None)

    def resolve_all(
        self, scope: Scope, props: Iterable[Property] = PROPERTIES
    ) -> dict[str, Resolved]:
        return {p.name: self.resolve(scope, p) for p in props}

    def inherited(self, scope: Scope, prop: Property) -> Resolved:
        """
        What C{prop} would be at C{scope} if C{scope} had no value of its own.
        """
        own = self.by_scope.get(scope, {})
        if prop.name not in own:
            return self.resolve(scope, prop)
        without = Values({s: v for s, v in self.by_scope.items() if s != scope})
        return without.resolve(scope, prop)


def validate_changes(
    scope: Scope, changes: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """
    Check a set of changes for C{scope}: C{{name: value}} sets, C{{name:
    None}} inherits.

    @return: (normalised changes, C{{name: error message}}); apply the
        changes only when there are no errors.
    """
    clean: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, value in changes.items():
        prop = REGISTRY.get(name)
        if prop is None:
            errors[name] = "no such property"
        elif scope.level not in prop.levels:
            allowed = ", ".join(level.value for level in Level if level in prop.levels)
            errors[name] = f"cannot be set at {scope.level.value} level (only: {allowed})"
        elif value is None and prop.generate:
            errors[name] = ("a secret cannot be emptied or inherited; set a new value "
                            "instead")
        elif value is None:
            clean[name] = None
        else:
            try:
                clean[name] = prop.validate(value)
            except InvalidValue as e:
                errors[name] = str(e)
    return clean, errors


class IAddressSettings(Interface):
    """
    Settings as mail processing and the webmail messenger read them.
    """

    def by_address(addresses: Iterable[str]) -> Awaitable[dict[str, Mapping[str, Any]]]:
        """
        The effective values for mail of each of C{addresses} (see
        L{scope_of_address}; C{""} gives the global ones).

        @raise DatabaseUnavailable: (when awaited) the store could not be
            read just now.
        """
