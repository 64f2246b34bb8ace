"""
The processor the queue is given: the webmail relay recipient's part of a
message goes to the webmail relay (L{cipherd.mpa.relay}), the rest to the
gateway (L{cipherd.mpa.gateway}), and what both made is one result.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from twisted.internet.defer import Deferred
from zope.interface import implementer

from cipherd.core.addresses import canonical_address
from cipherd.core.envelope import Envelope
from cipherd.settings import IAddressSettings
from cipherd.smtp.processing import IMessageProcessor, ProcessingResult


@implementer(IMessageProcessor)
class Composite:
    """
    @param settings: where the relay recipient is set (globally).
    @param relay: processes messages for the relay recipient.
    @param gateway: processes everything else.
    """

    def __init__(self, settings: IAddressSettings, relay: IMessageProcessor,
                 gateway: IMessageProcessor) -> None:
        self._settings = settings
        self._relay = relay
        self._gateway = gateway

    def process(self, envelope: Envelope, content: bytes) -> Deferred[ProcessingResult]:
        return Deferred.fromCoroutine(self._process(envelope, content))

    async def is_relay_recipient(self, address: str) -> bool:
        """
        Whether mail for C{address} is the webmail relay's (the SMTP
        server's recipient verification asks: it is handled here).
        """
        return bool(await self._relayed([address]))

    async def _relayed(self, addresses: Iterable[str]) -> tuple[str, ...]:
        relay_recipient = canonical_address(
            (await self._settings.by_address([""]))[""]["relay_recipient"]).lower()
        return tuple(r for r in addresses
                     if relay_recipient and canonical_address(r).lower() == relay_recipient)

    async def _process(self, envelope: Envelope, content: bytes) -> ProcessingResult:
        relayed = await self._relayed(envelope.recipients)
        others = tuple(r for r in envelope.recipients if r not in relayed)
        result = ProcessingResult()
        if relayed:
            result += await self._relay.process(replace(envelope, recipients=relayed), content)
        if others:
            result += await self._gateway.process(replace(envelope, recipients=others), content)
        return result
