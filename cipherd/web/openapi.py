"""
The OpenAPI 3.1 description of the JSON API (L{cipherd.web.api}), served at
``/api/v1/openapi.json``.  Kept true by two tests: every route of the API
is described here and nothing else is (``tests/test_openapi.py``), and
schemathesis runs every described operation against a running appliance,
checking status codes, media types and schemas (``tests/test_openapi_appliance.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Schema = dict[str, Any]

JSON = "application/json"


def _obj(properties: Mapping[str, Schema], required: Sequence[str] = ()) -> Schema:
    schema: Schema = {"type": "object", "properties": dict(properties)}
    if required:
        schema["required"] = list(required)
    return schema


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
BOOLEAN: Schema = {"type": "boolean"}
NULLABLE_STRING: Schema = {"type": ["string", "null"]}
THUMBPRINT: Schema = {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}
QUEUE_ID: Schema = {"type": "string", "pattern": "^[0-9A-F]{12}$"}
STATUS: Schema = _obj({"status": STRING}, ["status"])

SCHEMAS: dict[str, Schema] = {
    "Error": _obj({"error": STRING, "errors": {"type": "object",
                                               "additionalProperties": STRING}}, ["error"]),
    "Status": STATUS,
    "AdminAccount": _obj({"name": STRING, "role": STRING, "second_factor": BOOLEAN,
                          "must_change_password": BOOLEAN}, ["name", "role"]),
    "Token": _obj({"id": STRING, "label": STRING, "created": NULLABLE_STRING,
                   "last_used": NULLABLE_STRING}, ["id", "label"]),
    "Settings": _obj({
        "scope": STRING,
        "properties": {"type": "object", "additionalProperties": _obj({
            "value": {}, "level": STRING, "scope": STRING, "inherited": BOOLEAN,
            "hidden": BOOLEAN}, ["value", "level", "inherited"])}}, ["scope", "properties"]),
    "Transport": _obj({"domain": STRING, "host": STRING, "port": INTEGER}, ["domain"]),
    "MTAConfig": {"type": "object", "properties": {
        "my_hostname": STRING, "relay_domains": _array(STRING),
        "authorized_recipients": _array(STRING), "dns_servers": _array(STRING),
        "transports": _array(_ref("Transport"))}},
    "RelayHost": _obj({"host": STRING, "port": INTEGER, "mx": BOOLEAN, "relay_host": STRING},
                      ["host", "port", "mx", "relay_host"]),
    "SiteCertificate": _obj({
        "subject": STRING, "names": _array(STRING), "issuer": STRING, "self_signed": BOOLEAN,
        "not_before": STRING, "not_after": STRING, "thumbprint": STRING, "key": STRING,
        "chain": INTEGER, "origin": STRING, "replaceable": BOOLEAN,
        "why_not_replaceable": STRING}, ["subject", "thumbprint", "replaceable"]),
    "QueuedMessage": _obj({
        "id": STRING, "state": STRING, "sender": STRING, "recipients": _array(STRING),
        "size": INTEGER, "received": {"type": "number"}, "attempts": INTEGER,
        "reason": STRING, "client": STRING, "next_attempt": {"type": ["number", "null"]},
        "headers": _array(_obj({"name": STRING, "value": STRING}, ["name", "value"]))},
        ["id", "state", "sender", "recipients", "size"]),
    "AuditEntry": _obj({
        "id": INTEGER, "at": STRING, "actor": STRING, "via": STRING, "client": STRING,
        "action": STRING, "target": STRING, "summary": STRING, "details": {}},
        ["id", "at", "actor", "action", "summary"]),
    "WebmailAccount": _obj({
        "address": STRING, "state": {"enum": ["invited", "active", "disabled"]},
        "password_set": BOOLEAN, "created": NULLABLE_STRING, "last_login": NULLABLE_STRING,
        "last_activity": NULLABLE_STRING, "second_factor": BOOLEAN, "messages": INTEGER,
        "mailbox_size": INTEGER, "mailbox_quota": {"type": ["integer", "null"]},
        "over_quota": BOOLEAN}, ["address", "state", "messages"]),
    "WebmailTimeline": _obj({
        "tunnel_id": STRING, "subject": STRING, "sender": STRING,
        "recipients": _array(_obj({
            "address": STRING,
            "ended": {"enum": ["expired", "recalled", "deleted", None]},
            "expires": NULLABLE_STRING,
            "events": _array(_obj({"at": STRING, "event": STRING, "detail": STRING},
                                  ["at", "event"]))}, ["address", "events"]))},
        ["tunnel_id", "recipients"]),
    "CertificateSummary": _obj({
        "thumbprint": STRING, "subject": STRING, "issuer": STRING, "emails": _array(STRING),
        # Seconds since the epoch.
        "not_before": {"type": "number"}, "not_after": {"type": "number"},
        "has_private_key": BOOLEAN,
        "self_signed": BOOLEAN, "valid": BOOLEAN, "reason": STRING,
        "ctl": {"type": ["string", "null"]}}, ["thumbprint", "subject", "valid"]),
    "PGPKey": _obj({
        "fingerprint": STRING, "key_id": STRING, "user_ids": _array(STRING),
        "emails": _array(STRING), "created": NULLABLE_STRING, "expires": NULLABLE_STRING,
        "revoked": BOOLEAN, "trusted": BOOLEAN, "introducer": BOOLEAN, "secret": BOOLEAN,
        "source": STRING, "valid": BOOLEAN, "problem": NULLABLE_STRING, "algorithm": STRING,
        "flags": _array(STRING), "subkeys": _array({"type": "object"})},
        ["fingerprint", "user_ids", "trusted", "valid"]),
    "Authority": _obj({
        "id": STRING, "subject": STRING, "kind": {"enum": ["root", "intermediate"]},
        "key_type": STRING, "pending": BOOLEAN, "thumbprint": NULLABLE_STRING,
        "issuer": NULLABLE_STRING, "not_before": NULLABLE_STRING, "not_after": NULLABLE_STRING,
        "usable": BOOLEAN, "crl_url": STRING, "crl_this_update": NULLABLE_STRING,
        "crl_next_update": NULLABLE_STRING, "crl_entries": INTEGER, "csr": NULLABLE_STRING,
        "created": NULLABLE_STRING}, ["id", "subject", "kind", "pending", "crl_url"]),
    "IssuedCertificate": _obj({
        "thumbprint": STRING, "email": STRING, "ca": STRING, "serial": STRING,
        "not_before": NULLABLE_STRING, "not_after": NULLABLE_STRING, "issued": NULLABLE_STRING,
        "origin": {"enum": ["admin", "csv", "auto", "renewal"]},
        "status": {"enum": ["valid", "renewed", "expired", "revoked"]},
        "revoked": NULLABLE_STRING, "reason": NULLABLE_STRING,
        "renewed_by": NULLABLE_STRING}, ["thumbprint", "email", "ca", "serial", "status"]),
    "CertificateRequest": _obj({
        "id": INTEGER, "email": STRING, "ca": NULLABLE_STRING,
        "validity_days": {"type": ["integer", "null"]}, "requested": NULLABLE_STRING,
        "requested_by": STRING, "attempts": INTEGER, "error": NULLABLE_STRING},
        ["id", "email", "attempts"]),
    "DLPPattern": _obj({
        "name": STRING, "regex": STRING, "words": _array(STRING), "threshold": INTEGER,
        "validator": {"enum": ["none", "luhn", "iban"]},
        "action": {"enum": ["warn", "encrypt", "quarantine", "block"]},
        "description": STRING}, ["name", "regex", "words", "threshold", "validator", "action"]),
    "QuarantinedMessage": _obj({
        "id": STRING, "at": NULLABLE_STRING, "sender": STRING, "recipients": _array(STRING),
        "subject": STRING, "size": INTEGER, "findings": _array(_obj({
            "rule": STRING, "action": STRING, "matches": INTEGER, "where": _array(STRING),
            "excerpt": STRING})),
        "headers": _array(_obj({"name": STRING, "value": STRING}, ["name", "value"]))},
        ["id", "sender", "recipients", "subject", "findings"]),
    "TunnelCertificate": _obj({"thumbprint": STRING, "email": STRING, "subject": STRING,
                               "created": BOOLEAN, "message": STRING},
                              ["thumbprint", "email", "created"]),
}

_ERROR_TEXT = {
    400: "The request was refused: why, and a message per field.",
    401: "No valid credentials (HTTP Basic or an API token).",
    403: "Refused: another site's page, the default password not yet changed, or a role "
         "that does not allow it.",
    404: "There is no such resource.",
    409: "It conflicts with the appliance's state.",
    413: "The body is too large.",
    415: "The body is not of the media type asked for.",
    503: "The database cannot be used just now (see Retry-After).",
}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Schema]:
    return {str(c): _json(_ref("Error"), _ERROR_TEXT[c]) for c in codes}


_PATH_NAMES = {"<name>": "{name}", "<key>": "{key}", "<which>": "{which}",
               "<token_id>": "{token_id}", "<address>": "{address}", "<action>": "{action}",
               "<queue_id>": "{queue_id}", "<thumbprint>": "{thumbprint}",
               "<fingerprint>": "{fingerprint}", "<ref>": "{ref}",
               "<int:request_id>": "{request_id}", "<quarantine_id>": "{quarantine_id}",
               "<tunnel_id>": "{tunnel_id}",
               "<string(length=12):queue_id>": "{queue_id}"}


def openapi_path(route: str) -> str:
    """
    A Klein route of the API (C{/v1/queue/<queue_id>}) as an OpenAPI path
    (C{/queue/{queue_id}}), relative to the server's C{/api/v1}.
    """
    path = route.removeprefix("/v1")
    for klein, openapi in _PATH_NAMES.items():
        path = path.replace(klein, openapi)
    return path


_QUERY = {
    "q": ("Text the entries contain.", STRING),
    "email": ("One address exactly.", STRING),
    "offset": ("How many entries to skip.", {"type": "integer", "minimum": 0}),
    "limit": ("The most entries answered.", {"type": "integer", "minimum": 1}),
    "store": ("The certificate store.", {"enum": ["certificates", "roots"]}),
    "state": ("Accounts in this state.", {"enum": ["invited", "active", "disabled"]}),
    "lines": ("How many lines, newest last.", {"type": "integer", "minimum": 0}),
    "password": ("The password of a PKCS#12 file or of protected keys.", STRING),
    "skip_self_signed": ("Leave out self-signed certificates.", STRING),
    "trusted": ("Import the keys trusted (default) or not.", STRING),
    "actor": ("Entries of this admin.", STRING),
    "action": ("Entries of this action or group.", STRING),
    "since": ("Entries from this moment (ISO 8601).", STRING),
    "until": ("Entries until this moment (ISO 8601).", STRING),
    "before": ("The next page: the previous answer's next.", {"type": "integer"}),
    "thumbprint": ("A certificate's SHA-256 thumbprint (repeated).", THUMBPRINT),
    "format": ("The file format.", {"enum": ["pem", "p7b"]}),
    "ca": ("Certificates of this CA (its id or thumbprint).", STRING),
}

_PATH_PARAMETERS = {
    "name": STRING, "key": STRING, "which": {"enum": ["internal", "external"]},
    "token_id": STRING, "address": STRING, "action": STRING, "queue_id": QUEUE_ID,
    "thumbprint": THUMBPRINT, "fingerprint": STRING, "ref": STRING,
    "request_id": {"type": "integer", "minimum": 1}, "quarantine_id": STRING,
    "tunnel_id": STRING,
}


# Examples of path parameters: documentation, and what schemathesis tries
# first (tests/test_openapi_appliance.py makes these exist).
_EXAMPLES = {
    ("/settings/domains/", "key"): "example.com",
    ("/settings/users/", "key"): "bob@example.com",
    ("/logs/", "name"): "mta",
    ("/admin/accounts/", "name"): "olivia",
    ("/webmail/accounts/", "address"): "dave@partner.example",
    ("/webmail/accounts/", "action"): "invite",
    ("/mta/relay-hosts/", "which"): "internal",
}


def _path_parameter(path: str, name: str) -> Schema:
    parameter: Schema = {"name": name, "in": "path", "required": True,
                         "schema": _PATH_PARAMETERS[name]}
    for (prefix, named), example in _EXAMPLES.items():
        if path.startswith(prefix) and named == name:
            parameter["example"] = example
    return parameter


def _operation(method: str, path: str, summary: str, *, ok: int = 200,
               answer: Schema | None = None, body: Schema | None = None,
               query: Sequence[str] = (), raw_body: bool = False,
               errors: Sequence[int] = (), media: Mapping[str, Schema] | None = None,
               ) -> tuple[str, str, Schema]:
    operation: Schema = {"summary": summary,
                         "operationId": f"{method}{path}".replace("/", "_").replace("{", "")
                         .replace("}", "").replace("-", "_")}
    parameters = [_path_parameter(path, name)
                  for name in _PATH_PARAMETERS if "{" + name + "}" in path]
    parameters += [{"name": name, "in": "query", "required": False,
                    "description": _QUERY[name][0], "schema": _QUERY[name][1]}
                   for name in query]
    if parameters:
        operation["parameters"] = parameters
    codes = {400, 401, 403, 404, 503, *errors}
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
        codes |= {413, 415}
    elif raw_body:
        operation["requestBody"] = {"required": True, "content": {
            "application/octet-stream": {"schema": {"type": "string",
                                                    "format": "binary"}}}}
        codes |= {413, 415}
    responses: dict[str, Schema] = {}
    if ok == 204:
        responses["204"] = {"description": "Done."}
    else:
        content: dict[str, Schema] = {}
        if answer is not None:
            content[JSON] = {"schema": answer}
        for media_type, schema in (media or {}).items():
            content[media_type] = {"schema": schema}
        responses[str(ok)] = {"description": "Done.", "content": content}
    responses.update(_errors(*sorted(codes)))
    operation["responses"] = responses
    return method, path, operation


_BINARY: Schema = {"type": "string", "format": "binary"}
_OPERATIONS = [
    # Admin accounts, the own account and API tokens.
    _operation("post", "/admin/password", "Change the own password.",
               body=_obj({"password": STRING}, ["password"]), answer=STATUS),
    _operation("get", "/admin/accounts", "The admin accounts.",
               answer=_obj({"accounts": _array(_ref("AdminAccount"))}, ["accounts"])),
    _operation("post", "/admin/accounts", "Make an admin account; its first password is "
               "in the answer, shown once.", ok=201,
               body=_obj({"name": STRING, "role": {"enum": ["administrator", "operator",
                                                            "auditor"]}}, ["name", "role"]),
               answer=_obj({"name": STRING, "role": STRING, "password": STRING,
                            "must_change_password": BOOLEAN}, ["name", "password"])),
    _operation("patch", "/admin/accounts/{name}", "Change an account's role.",
               body=_obj({"role": STRING}, ["role"]), errors=[409],
               answer=_obj({"name": STRING, "role": STRING}, ["name", "role"])),
    _operation("post", "/admin/accounts/{name}/reset-password",
               "Give an account a new first password.",
               answer=_obj({"name": STRING, "password": STRING,
                            "must_change_password": BOOLEAN}, ["name", "password"])),
    _operation("delete", "/admin/accounts/{name}", "Delete an admin account.", ok=204,
               errors=[409]),
    _operation("get", "/admin/me", "The own account and its API tokens.",
               answer=_obj({"name": STRING, "role": STRING, "second_factor": BOOLEAN,
                            "tokens": _array(_ref("Token"))}, ["name", "role", "tokens"])),
    _operation("post", "/admin/me/tokens", "A new API token, shown once.", ok=201,
               body=_obj({"label": STRING}),
               answer=_obj({"id": STRING, "token": STRING, "label": STRING},
                           ["id", "token", "label"])),
    _operation("delete", "/admin/me/tokens/{token_id}", "Revoke an own API token.", ok=204),
    # Settings.
    _operation("get", "/settings/global", "The global settings.", answer=_ref("Settings")),
    _operation("patch", "/settings/global", "Change global settings (null: the default).",
               body={"type": "object"}, answer=_ref("Settings")),
    _operation("get", "/settings/domains", "The domains with settings of their own.",
               answer=_obj({"domains": _array(STRING)}, ["domains"])),
    _operation("get", "/settings/users", "The users with settings of their own.",
               answer=_obj({"users": _array(STRING)}, ["users"])),
    *(op for level in ("domains", "users") for op in (
        _operation("get", f"/settings/{level}/{{key}}", f"The settings of one of the {level}.",
                   answer=_ref("Settings")),
        _operation("patch", f"/settings/{level}/{{key}}",
                   f"Change the settings of one of the {level} (null: inherit).",
                   body={"type": "object"}, answer=_ref("Settings")),
        _operation("delete", f"/settings/{level}/{{key}}",
                   f"Delete one of the {level} with its settings.", answer=STATUS))),
    # The MTA.
    _operation("get", "/mta", "The MTA config.", answer=_ref("MTAConfig")),
    _operation("patch", "/mta", "Change the MTA config (null: the default).",
               body={"type": "object"}, answer=_ref("MTAConfig")),
    _operation("get", "/mta/transports", "The SMTP transports.",
               answer=_obj({"transports": _array(_ref("Transport"))}, ["transports"])),
    _operation("post", "/mta/transports", "Set the transport of a domain.",
               body=_ref("Transport"),
               answer=_obj({"transports": _array(_ref("Transport"))}, ["transports"])),
    _operation("delete", "/mta/transports", "Remove the transport of a domain.",
               body=_obj({"domain": STRING}, ["domain"]),
               answer=_obj({"transports": _array(_ref("Transport"))}, ["transports"])),
    _operation("get", "/mta/relay-domains", "The relay domains.",
               answer=_obj({"relay_domains": _array(STRING)}, ["relay_domains"])),
    _operation("post", "/mta/relay-domains", "Add a relay domain.",
               body=_obj({"domain": STRING}, ["domain"]),
               answer=_obj({"relay_domains": _array(STRING)}, ["relay_domains"])),
    _operation("delete", "/mta/relay-domains", "Delete a relay domain.",
               body=_obj({"domain": STRING}, ["domain"]),
               answer=_obj({"relay_domains": _array(STRING)}, ["relay_domains"])),
    _operation("get", "/mta/relay-hosts/{which}", "The internal or external relay host.",
               answer=_ref("RelayHost")),
    _operation("put", "/mta/relay-hosts/{which}", "Set the internal or external relay host.",
               body=_obj({"host": STRING, "port": INTEGER, "mx": BOOLEAN}, ["host"]),
               answer=_ref("RelayHost")),
    _operation("delete", "/mta/relay-hosts/{which}", "Remove the relay host.",
               answer=_ref("RelayHost")),
    _operation("get", "/mta/authorized-recipients", "Where webmail recipients may reply to.",
               answer=_obj({"authorized_recipients": _array(STRING)},
                           ["authorized_recipients"])),
    _operation("put", "/mta/authorized-recipients", "Set the authorized recipients.",
               body=_array(STRING),
               answer=_obj({"authorized_recipients": _array(STRING)},
                           ["authorized_recipients"])),
    # The machine.
    _operation("get", "/network", "The network interfaces, resolvers and DNS servers.",
               answer=_obj({"interfaces": _array({"type": "object"}),
                            "dns_servers": _array(STRING), "my_hostname": STRING},
                           ["interfaces", "dns_servers"])),
    _operation("get", "/tls-certificate", "The sites' TLS certificate.",
               answer=_ref("SiteCertificate")),
    _operation("put", "/tls-certificate", "Replace the sites' TLS certificate (PEM with "
               "its key, or PKCS#12).", raw_body=True, query=["password"], errors=[409],
               answer=_ref("SiteCertificate")),
    _operation("post", "/tls-certificate", "Replace the sites' TLS certificate (as PUT).",
               raw_body=True, query=["password"], errors=[409],
               answer=_ref("SiteCertificate")),
    # The queue.
    _operation("get", "/queue", "The queued messages, oldest first.", query=["q"],
               answer=_obj({"messages": _array(_ref("QueuedMessage"))}, ["messages"])),
    _operation("post", "/queue/actions", "Hold, release, deliver or delete messages.",
               body=_obj({"action": {"enum": ["hold", "release", "deliver", "delete"]},
                          "ids": _array(QUEUE_ID)}, ["action", "ids"]),
               answer=_obj({"done": _array(STRING), "not_done": _array(STRING)},
                           ["done", "not_done"])),
    _operation("get", "/queue/{queue_id}", "One queued message's envelope and header "
               "fields.", answer=_ref("QueuedMessage")),
    _operation("get", "/queue/{queue_id}/content", "One queued message as queued "
               "(audited).", media={"message/rfc822": _BINARY}),
    _operation("delete", "/queue/{queue_id}", "Delete a queued message.", answer=STATUS),
    _operation("post", "/queue/flush", "Deliver every queued message now.", ok=202,
               errors=[409], answer=STATUS),
    _operation("post", "/send-email", "Queue a test message.", ok=202, errors=[409],
               body=_obj({"from": STRING, "to": {"oneOf": [STRING, _array(STRING)]},
                          "subject": STRING, "body": STRING}, ["from", "to"]),
               answer=_obj({"queue_id": STRING, "status": STRING}, ["queue_id"])),
    # The audit log and the mail logs.
    _operation("get", "/audit", "The audit log, newest first.",
               query=["q", "actor", "action", "since", "until", "before", "limit"],
               answer=_obj({"entries": _array(_ref("AuditEntry")),
                            "next": {"type": ["integer", "null"]}}, ["entries", "next"])),
    _operation("get", "/logs/{name}", "The newest lines of the MTA or MPA log.",
               query=["lines", "q"],
               answer=_obj({"log": STRING, "lines": _array(STRING)}, ["log", "lines"])),
    # Webmail accounts.
    _operation("get", "/webmail/accounts", "The webmail accounts.",
               query=["q", "state", "offset", "limit"],
               answer=_obj({"accounts": _array(_ref("WebmailAccount")), "total": INTEGER},
                           ["accounts", "total"])),
    _operation("get", "/webmail/accounts/{address}", "One webmail account.",
               answer=_ref("WebmailAccount")),
    _operation("get", "/webmail/accounts/{address}/messages",
               "The headers of an account's messages (never their contents).",
               query=["offset", "limit"],
               answer=_obj({"messages": _array({"type": "object"}), "total": INTEGER},
                           ["messages", "total"])),
    _operation("post", "/webmail/accounts/{address}/{action}",
               "invite, disable, enable, reset-password or reset-totp.", errors=[409],
               answer=_obj({"status": STRING, "account": {"oneOf": [
                   _ref("WebmailAccount"), {"type": "null"}]}}, ["status"])),
    _operation("delete", "/webmail/accounts/{address}", "Delete an account with its "
               "mailbox.", errors=[409],
               answer=_obj({"status": STRING, "account": {"type": "null"}}, ["status"])),
    _operation("get", "/webmail/messages/{tunnel_id}",
               "What became of a tunnelled message, per recipient (its timeline).",
               answer=_ref("WebmailTimeline")),
    _operation("post", "/webmail/messages/{tunnel_id}/recall",
               "Recall a message from its recipients' mailboxes here (every recipient when "
               "none are named).", body=_obj({"recipients": _array(STRING)}),
               answer=_obj({"recalled": _array(STRING), "message": _ref("WebmailTimeline")},
                           ["recalled", "message"])),
    _operation("post", "/tunnels/{tunnel_id}/recall",
               "On the gateway: send the webmail messenger a signed and encrypted request to "
               "recall the message of a tunnel (every recipient when none are named).",
               ok=202, errors=[409], body=_obj({"recipients": _array(STRING)}),
               answer=_obj({"queue_id": STRING, "recall_tunnel_id": STRING,
                            "recipients": _array(STRING)}, ["queue_id", "recall_tunnel_id"])),
    _operation("post", "/webmail/sender-certificate", "Create the gateway's tunnel "
               "certificate (guide §3.8).", ok=201, body={"type": "object"},
               answer=_ref("TunnelCertificate")),
    _operation("post", "/webmail/relay-certificate", "Create the webmail appliance's "
               "tunnel certificate (guide §2.3.11).", ok=201, body={"type": "object"},
               answer=_ref("TunnelCertificate")),
    # Certificates and the CTL.
    _operation("get", "/certificates", "One page of a certificate store.",
               query=["store", "q", "email", "offset", "limit"],
               answer=_obj({"certificates": _array(_ref("CertificateSummary")),
                            "total": INTEGER, "offset": INTEGER, "limit": INTEGER},
                           ["certificates", "total"])),
    _operation("post", "/certificates", "Import certificates, keys and CRLs (PEM, DER, "
               "PKCS#7, PKCS#12).", raw_body=True,
               query=["store", "skip_self_signed", "password"],
               answer=_obj({"format": STRING, "imported": _array(STRING),
                            "keys_added": _array(STRING), "duplicates": _array(STRING),
                            "skipped": _array({"type": "object"}),
                            "crls": _array({"type": "object"})}, ["imported"])),
    _operation("get", "/certificates/download", "Several certificates in one file.",
               query=["store", "thumbprint", "format"],
               media={"application/x-pem-file": _BINARY,
                      "application/pkcs7-mime": _BINARY}),
    _operation("post", "/certificates/download", "Several certificates in one file, "
               "for more than a URL holds.", query=["store"],
               body=_obj({"thumbprints": _array(THUMBPRINT), "format": {"enum": ["pem",
                                                                                  "p7b"]}},
                         ["thumbprints"]),
               media={"application/x-pem-file": _BINARY,
                      "application/pkcs7-mime": _BINARY}),
    _operation("get", "/certificates/{name}", "One certificate: its thumbprint for the "
               "details, with .pem or .cer for the file.", query=["store"],
               answer={"type": "object"},
               media={"application/x-pem-file": _BINARY, "application/pkix-cert": _BINARY}),
    _operation("delete", "/certificates/{thumbprint}", "Delete a certificate.",
               query=["store"], answer=STATUS),
    _operation("get", "/ctl", "The certificate trust list.",
               answer=_obj({"ctl": _array(_obj({"thumbprint": STRING, "status": STRING},
                                               ["thumbprint", "status"]))}, ["ctl"])),
    _operation("post", "/ctl", "Whitelist or blacklist a certificate.",
               body=_obj({"thumbprint": THUMBPRINT,
                          "status": {"enum": ["whitelisted", "blacklisted"]}},
                         ["thumbprint", "status"]),
               answer=_obj({"thumbprint": STRING, "status": STRING},
                           ["thumbprint", "status"])),
    _operation("delete", "/ctl", "Remove a certificate from the trust list.",
               body=_obj({"thumbprint": THUMBPRINT}, ["thumbprint"]), answer=STATUS),
    # OpenPGP keys.
    _operation("get", "/pgp/keys", "One page of the keyring.",
               query=["q", "email", "offset", "limit"],
               answer=_obj({"keys": _array(_ref("PGPKey")), "total": INTEGER,
                            "offset": INTEGER, "limit": INTEGER}, ["keys", "total"])),
    _operation("post", "/pgp/keys", "Import keys (armored or binary).", ok=201,
               raw_body=True, query=["password", "trusted"],
               answer=_obj({"imported": _array({"type": "object"})}, ["imported"])),
    _operation("post", "/pgp/keys/generate", "Generate a key with its secret.", ok=201,
               body=_obj({"email": STRING, "name": STRING}, ["email"]),
               answer=_ref("PGPKey")),
    _operation("get", "/pgp/keys/{name}", "One key: its fingerprint for the details, with "
               ".asc for its certificate.", answer=_ref("PGPKey"),
               media={"application/pgp-keys": _BINARY}),
    _operation("patch", "/pgp/keys/{fingerprint}", "Trust a key, or make it an introducer.",
               body=_obj({"trusted": BOOLEAN, "introducer": BOOLEAN}),
               answer=_ref("PGPKey")),
    _operation("delete", "/pgp/keys/{fingerprint}", "Delete a key.", ok=204),
    # The built-in CA.
    _operation("get", "/ca", "The CAs.",
               answer=_obj({"authorities": _array(_ref("Authority"))}, ["authorities"])),
    _operation("post", "/ca", "Create a root CA, or a pending intermediate CA with its "
               "request (csr) for an outside root to sign.", ok=201,
               body=_obj({"subject": STRING, "key_type": {"enum": [
                   "rsa2048", "rsa3072", "rsa4096", "ec-p256", "ec-p384"]},
                   "validity_days": INTEGER, "crl_url": STRING,
                   "kind": {"enum": ["root", "intermediate"]}}, ["subject"]),
               answer=_ref("Authority")),
    _operation("get", "/ca/{name}", "One CA by id or thumbprint; with .pem its certificate, "
               "with .csr its request while pending.", answer=_ref("Authority"),
               media={"application/x-pem-file": _BINARY, "application/pkcs10": _BINARY}),
    _operation("delete", "/ca/{ref}", "Delete a CA waiting for its certificate.", ok=204,
               errors=[409]),
    _operation("put", "/ca/{ref}/certificate", "Install the certificate an outside root "
               "signed for a pending intermediate CA.", raw_body=True, errors=[409],
               answer=_ref("Authority")),
    _operation("get", "/ca/{ref}/crl", "The CA's current CRL (DER).",
               media={"application/pkix-crl": _BINARY}),
    _operation("post", "/ca/{ref}/crl", "Sign the CA's CRL now.", errors=[409],
               answer=_ref("Authority")),
    _operation("get", "/ca/certificates", "One page of the certificates issued here, newest "
               "first.", query=["q", "ca", "offset", "limit"],
               answer=_obj({"certificates": _array(_ref("IssuedCertificate")),
                            "total": INTEGER, "offset": INTEGER, "limit": INTEGER},
                           ["certificates", "total"])),
    _operation("post", "/ca/certificates", "Issue a certificate with a new key for an "
               "internal address (201), or queue a list of addresses (202).", ok=201,
               body=_obj({"email": STRING, "emails": _array(STRING), "validity_days": INTEGER,
                          "ca": STRING}), answer=_ref("IssuedCertificate")),
    _operation("get", "/ca/certificates/{thumbprint}", "One certificate issued here.",
               answer=_ref("IssuedCertificate")),
    _operation("post", "/ca/certificates/{thumbprint}/revoke", "Revoke with a reason; the "
               "CA's CRL is signed again.", errors=[409],
               body=_obj({"reason": {"enum": [
                   "unspecified", "key_compromise", "affiliation_changed", "superseded",
                   "cessation_of_operation", "privilege_withdrawn"]}}, ["reason"]),
               answer=_ref("IssuedCertificate")),
    _operation("post", "/ca/certificates/{thumbprint}/pkcs12", "The certificate with its key "
               "and CA certificate as a PKCS#12 file under the password given.",
               body=_obj({"password": STRING}, ["password"]),
               media={"application/x-pkcs12": _BINARY}),
    _operation("post", "/ca/certificates/{thumbprint}/send", "Mail the PKCS#12 file to the "
               "certificate's owner under a new random password: by SMS to the owner's mobile "
               "number when there is one and an SMS gateway, else answered here only.",
               errors=[409], answer=_obj({"sent_to": STRING, "password": NULLABLE_STRING,
                                          "password_by_sms": NULLABLE_STRING},
                                         ["sent_to", "password", "password_by_sms"])),
    _operation("get", "/ca/requests", "The certificate requests waiting to be issued.",
               answer=_obj({"requests": _array(_ref("CertificateRequest"))}, ["requests"])),
    _operation("delete", "/ca/requests/{request_id}", "Cancel a waiting request.", ok=204),
    # Data loss prevention.
    _operation("get", "/dlp/patterns", "The DLP patterns.",
               answer=_obj({"patterns": _array(_ref("DLPPattern"))}, ["patterns"])),
    _operation("post", "/dlp/patterns", "Add a DLP pattern (201), or change the one of that "
               "name (200).", ok=201,
               body=_obj({"name": STRING, "regex": STRING, "words": _array(STRING),
                          "threshold": INTEGER, "validator": {"enum": ["none", "luhn", "iban"]},
                          "action": {"enum": ["warn", "encrypt", "quarantine", "block"]},
                          "description": STRING}, ["name"]),
               answer=_ref("DLPPattern")),
    _operation("get", "/dlp/patterns/builtin", "The built-in library of patterns.",
               answer=_obj({"patterns": _array(_ref("DLPPattern"))}, ["patterns"])),
    _operation("post", "/dlp/patterns/builtin", "Add patterns of the built-in library.",
               body=_obj({"names": _array(STRING)}, ["names"]),
               answer=_obj({"added": _array(STRING)}, ["added"])),
    _operation("delete", "/dlp/patterns/{name}", "Delete a DLP pattern.", ok=204),
    _operation("get", "/dlp/quarantine", "One page of the quarantine, newest first.",
               query=["offset", "limit"],
               answer=_obj({"messages": _array(_ref("QuarantinedMessage")), "total": INTEGER,
                            "offset": INTEGER, "limit": INTEGER}, ["messages", "total"])),
    _operation("get", "/dlp/quarantine/{quarantine_id}", "A quarantined message: what hit and "
               "its header fields.", answer=_ref("QuarantinedMessage")),
    _operation("delete", "/dlp/quarantine/{quarantine_id}", "Delete a quarantined message.",
               ok=204),
    _operation("post", "/dlp/quarantine/{quarantine_id}/release", "Release: queued for its "
               "recipients as if no rule had matched.", ok=202, errors=[409],
               answer=_ref("QuarantinedMessage")),
    # This document.
    _operation("get", "/openapi.json", "This description of the API.",
               answer={"type": "object"}),
]


def _document() -> Schema:
    paths: dict[str, dict[str, Schema]] = {}
    for method, path, operation in _OPERATIONS:
        paths.setdefault(path, {})[method] = operation
    # The description itself needs no credentials.
    paths["/openapi.json"]["get"]["security"] = []
    paths["/openapi.json"]["get"]["responses"] = {
        "200": _json({"type": "object"}, "This description.")}
    # The tunnel certificates answer 200 when one exists already.
    for path in ("/webmail/sender-certificate", "/webmail/relay-certificate"):
        paths[path]["post"]["responses"]["200"] = _json(
            _ref("TunnelCertificate"), "One exists already (created: false).")
    paths["/dlp/patterns"]["post"]["responses"]["200"] = _json(
        _ref("DLPPattern"), "A pattern of that name was changed.")
    paths["/ca/certificates"]["post"]["responses"]["202"] = _json(
        _obj({"queued": INTEGER}, ["queued"]), "A list of addresses was queued.")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cipherd admin API",
            "version": "1",
            "description": (
                "The JSON API of cipherd's admin site. Authenticate with HTTP Basic (an "
                "admin account without a second factor) or an API token (My account → API "
                "tokens) as Authorization: Bearer. Every role may read; see the README for "
                "what each role may change. Errors are JSON: {\"error\": ..., \"errors\": "
                "{field: why}}."),
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"basic": []}, {"token": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "token": {"type": "http", "scheme": "bearer"},
            },
        },
    }


DOCUMENT = _document()
