"""
Admin → DLP: the patterns (the built-in library to add from, one written
as an RE2 expression or a word list, checked on save, deleted) and the
quarantine (what hit, masked, and the header fields; *Release*, *Delete*).
Which patterns apply to whom, and the actions for what cannot be searched,
are settings (Settings → DLP).
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from cipherd.mpa.dlp import ACTIONS, BUILTIN, VALIDATORS, Pattern, PatternError
from cipherd.mpa.dlp_policy import DataLossPrevention
from cipherd.web.auth import AdminSession
from cipherd.web.backend import release_quarantined
from cipherd.web.common import SiteApp, arg, args, redirect, whole_number
from cipherd.web.pages import AdminPages, authenticated
from cipherd.web.pki_pages import PAGE_SIZE, moment, page_of

ACTION_TITLES = {"warn": "Warn (header and log)", "encrypt": "Encrypt (mandatory)",
                 "quarantine": "Quarantine", "block": "Block (bounce)"}
VALIDATOR_TITLES = {"none": "None", "luhn": "Luhn (card numbers)", "iban": "IBAN checksum"}


class DLPPages(AdminPages):
    """
    Mounted at C{/dlp/} of the admin site.
    """

    app = SiteApp()

    @property
    def dlp(self) -> DataLossPrevention:
        assert self.backend.dlp is not None
        return self.backend.dlp

    async def _patterns_page(self, request: IRequest, session: AdminSession, *,
                             values: dict[str, str] | None = None,
                             errors: dict[str, str] | None = None, status: int = 200) -> bytes:
        patterns = await self.dlp.patterns()
        there = {p.name for p in patterns}
        changed = arg(request, "changed")
        return self.render(
            request, "dlp.html", session, status=status, section="dlp", subsection="patterns",
            title="DLP patterns", patterns=patterns, actions=ACTION_TITLES,
            validators=VALIDATOR_TITLES, builtin=[p for p in BUILTIN.values()
                                                  if p.name not in there],
            values=values or {"name": "", "kind": "regex", "regex": "", "words": "",
                              "threshold": "1", "validator": "none", "action": "warn",
                              "description": ""},
            errors=errors or {}, changed=changed if changed in ("saved", "deleted",
                                                               "added") else None)

    @app.route("/", methods=["GET"])
    @authenticated
    async def patterns(self, request: IRequest, session: AdminSession) -> bytes:
        return await self._patterns_page(request, session)

    @app.route("/patterns", methods=["POST"])
    @authenticated
    async def save(self, request: IRequest, session: AdminSession) -> bytes:
        values = {name: (arg(request, name) or "").strip() for name in (
            "name", "kind", "regex", "words", "threshold", "validator", "action",
            "description")}
        threshold = whole_number(values["threshold"])
        words = tuple(w.strip() for w in values["words"].splitlines() if w.strip())
        pattern = Pattern(values["name"], values["regex"] if values["kind"] != "words" else "",
                          threshold if threshold is not None else 0,
                          values["validator"], values["action"],
                          words if values["kind"] == "words" else (), values["description"])
        try:
            new = await self.dlp.save(pattern)
        except PatternError as e:
            return await self._patterns_page(request, session, values=values, status=400,
                                             errors=getattr(e, "errors", {"regex": str(e)}))
        await self.audit(request, session, "dlp.pattern",
                         f"{'added' if new else 'changed'} the DLP pattern {pattern.name}",
                         target=pattern.name)
        return redirect(request, "/dlp/?changed=saved")

    @app.route("/patterns/builtin", methods=["POST"])
    @authenticated
    async def add_builtin(self, request: IRequest, session: AdminSession) -> bytes:
        try:
            added = await self.dlp.add_builtin(args(request, "name"))
        except PatternError as e:
            return await self._patterns_page(request, session, status=400,
                                             errors={"builtin": str(e)})
        if added:
            await self.audit(request, session, "dlp.pattern",
                             f"added the built-in DLP patterns {', '.join(added)}")
        return redirect(request, "/dlp/?changed=added")

    @app.route("/patterns/<name>/delete", methods=["POST"])
    @authenticated
    async def delete(self, request: IRequest, session: AdminSession, name: str) -> bytes:
        if not await self.dlp.delete(name):
            return self.not_found(request, session, "There is no such DLP pattern.")
        await self.audit(request, session, "dlp.delete", f"deleted the DLP pattern {name}",
                         target=name)
        return redirect(request, "/dlp/?changed=deleted")

    # Quarantine --------------------------------------------------------------

    @app.route("/quarantine", methods=["GET"])
    @authenticated
    async def quarantine(self, request: IRequest, session: AdminSession) -> bytes:
        total = await self.dlp.count_quarantined()
        page, pages = page_of(request, total)
        rows = await self.dlp.quarantined((page - 1) * PAGE_SIZE, PAGE_SIZE)
        done = arg(request, "done")
        return self.render(
            request, "dlp_quarantine.html", session, section="dlp", subsection="quarantine",
            title="DLP quarantine", rows=rows, total=total, page=page, pages=pages, when=moment,
            done=done if done in ("released", "deleted") else None)

    @app.route("/quarantine/<quarantine_id>", methods=["GET"])
    @authenticated
    async def message(self, request: IRequest, session: AdminSession,
                      quarantine_id: str) -> bytes:
        row = await self.dlp.get(quarantine_id)
        if row is None:
            return self.not_found(request, session,
                                  "There is no such message in the quarantine.")
        return self.render(
            request, "dlp_message.html", session, section="dlp", subsection="quarantine",
            title=f"Quarantined: {row.subject}", row=row, headers=self.dlp.headers(row),
            when=moment)

    @app.route("/quarantine/<quarantine_id>/release", methods=["POST"])
    @authenticated
    async def release(self, request: IRequest, session: AdminSession,
                      quarantine_id: str) -> bytes:
        try:
            row = await release_quarantined(self.backend, quarantine_id)
        except RuntimeError as e:
            return self.render(request, "error.html", session, status=409,
                               title="Not released", message=f"The message cannot be released "
                               f"here: {e}.")
        if row is None:
            return self.not_found(request, session,
                                  "There is no such message in the quarantine.")
        await self.audit(request, session, "dlp.release",
                         f"released the message {row.id} from {row.sender} to "
                         f"{', '.join(row.recipients)} from the DLP quarantine", target=row.id)
        return redirect(request, "/dlp/quarantine?done=released")

    @app.route("/quarantine/<quarantine_id>/delete", methods=["POST"])
    @authenticated
    async def delete_message(self, request: IRequest, session: AdminSession,
                             quarantine_id: str) -> bytes:
        taken = await self.dlp.take(quarantine_id)
        if taken is None:
            return self.not_found(request, session,
                                  "There is no such message in the quarantine.")
        row, _ = taken
        await self.audit(request, session, "dlp.delete",
                         f"deleted the message {row.id} from {row.sender} from the DLP "
                         "quarantine", target=row.id)
        return redirect(request, "/dlp/quarantine?done=deleted")


__all__ = ["ACTIONS", "VALIDATORS", "DLPPages"]
