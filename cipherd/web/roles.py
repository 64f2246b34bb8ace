"""
What each admin role may do, by request method and path, for the pages and
the API alike:

    - *administrator*: everything;
    - *operator*: read everything; change the queues and the webmail
      accounts, recall webmail messages;
    - *auditor*: read everything but the content of queued messages;

and every role its own account: its password, second factor and API
tokens, and logging out.  One function decides, so a page, its form and
its API route cannot disagree.
"""

from __future__ import annotations

import re

from cipherd.store.admins import ADMINISTRATOR, AUDITOR, OPERATOR

ROLES = (ADMINISTRATOR, OPERATOR, AUDITOR)
ADMIN_ROLES = {
    ADMINISTRATOR: "Administrator: everything",
    OPERATOR: "Operator: queues, logs and webmail accounts; reads settings",
    AUDITOR: "Auditor: reads everything, changes nothing",
}

# Every role: its own account.
_OWN = re.compile(r"^(/logout|/admin/password|/admin/me(/.*)?|/api/v1/admin/password"
                  r"|/api/v1/admin/me(/.*)?)$")
# What an operator changes.
_OPERATOR = re.compile(r"^(/mta/queue(/.*)?|/webmail/(accounts|messages)(/.*)?"
                       r"|/api/v1/queue(/.*)?|/api/v1/webmail/(accounts|messages)(/.*)?"
                       r"|/api/v1/tunnels/[^/]+/recall)$")
# Reads an auditor is not given: the content of a queued message.
_CONTENT = re.compile(r"^(/api/v1/queue|/mta/queue)/[^/]+/content$")
_READS = ("GET", "HEAD")


def allowed(role: str, method: str, path: str) -> bool:
    """
    Whether an admin of C{role} may make a request of C{method} for
    C{path} (without its query).
    """
    if role == ADMINISTRATOR:
        return True
    if role not in ROLES:
        return False
    if _OWN.match(path):
        return True
    if role == AUDITOR and _CONTENT.match(path):
        return False
    if method.upper() in _READS:
        return True
    return role == OPERATOR and bool(_OPERATOR.match(path))


def refusal(role: str) -> str:
    """
    Why a request is refused, for the page or the API.
    """
    return (f"Your role ({role}) does not allow this. {ADMIN_ROLES.get(role, '')}. Ask an "
            "administrator.")
