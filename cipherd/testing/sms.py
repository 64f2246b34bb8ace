"""
An SMS gateway in memory: what was sent, and a way to make it refuse.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from cipherd.webmail.sms import ISMSGateway, SMSError, SMSGatewayConfig


@implementer(ISMSGateway)
class MemorySMSGateway:
    """
    @ivar sent: C{(config, phone, text)} of every text message accepted.
    @ivar asked: how many were asked for, accepted or not.
    @ivar refusal: while set, every message is refused with it (as an
        L{SMSError}).
    """

    def __init__(self) -> None:
        self.sent: list[tuple[SMSGatewayConfig, str, str]] = []
        self.asked = 0
        self.refusal = ""

    def send(self, config: SMSGatewayConfig, phone: str, text: str) -> Deferred[None]:
        self.asked += 1
        if self.refusal:
            return fail(SMSError(self.refusal))
        if not config.url:
            return fail(SMSError("no SMS gateway URL is set (Settings → PDF → SMS)"))
        self.sent.append((config, phone, text))
        return succeed(None)
