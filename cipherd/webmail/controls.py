"""
What a sender may ask of a webmail message (Settings → webmail → Sender
controls), carried in the tunnel and kept with the message:

    - C{no_reply}: no reply from the portal;
    - C{no_download}: neither the message nor its attachments are
      downloaded; images and PDFs are only shown in the portal, other
      attachments not at all;
    - C{require_totp}: the message is read only in a session with a second
      factor (TOTP).
"""

from __future__ import annotations

NO_REPLY, NO_DOWNLOAD, REQUIRE_TOTP = "no_reply", "no_download", "require_totp"
CONTROLS = (NO_REPLY, NO_DOWNLOAD, REQUIRE_TOTP)
# Shown to the reader beside a message that has them.
WORDS = {NO_REPLY: "The sender does not allow replies to this message.",
         NO_DOWNLOAD: "The sender does not allow this message or its attachments to be "
                      "downloaded.",
         REQUIRE_TOTP: "The sender requires a second factor to read this message."}
# Attachments shown in the portal when downloads are not allowed.
VIEWABLE = ("image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf")


class ControlRefused(Exception):
    """
    The sender's control C{control} forbids what was asked.
    """

    def __init__(self, control: str) -> None:
        super().__init__(WORDS[control])
        self.control = control


def control_of(word: str) -> str | None:
    """
    The control a sender's word names (C{no-reply}, C{noreply}, C{No_Reply}
    all name C{no_reply}), or C{None}.
    """
    squeezed = word.strip().lower().replace("-", "").replace("_", "")
    return next((c for c in CONTROLS if c.replace("_", "") == squeezed), None)


def joined(controls: tuple[str, ...] | list[str]) -> str:
    """
    Controls as one column's value (C{""}: none).
    """
    return ",".join(c for c in CONTROLS if c in controls)


def split(value: str) -> frozenset[str]:
    return frozenset(c for c in value.split(",") if c in CONTROLS)
