"""
What the admin pages and the JSON API work with, assembled once by the
service: one object to pass, so both fronts always see the same parts.
"""

from __future__ import annotations

from dataclasses import dataclass

from cipherd.logs import MailLog
from cipherd.pki.certstore import CertificateStore
from cipherd.smtp.compose import compose
from cipherd.smtp.config import MTAConfigSource
from cipherd.smtp.queue import MailQueue, QueueRunner
from cipherd.smtp.spool import QueuedMessage
from cipherd.store.settings import SettingsRepository
from cipherd.threads import IBlockingRunner
from cipherd.web.auth import AdminAuthority


@dataclass(frozen=True)
class AdminBackend:
    """
    @ivar logs: the MTA and MPA logs, by name.
    @ivar runner: where blocking work (reading logs) runs.
    @ivar mta: the MTA config in force.
    @ivar queue: the mail queue.
    @ivar queue_runner: delivers it (flush).
    """

    authority: AdminAuthority
    settings: SettingsRepository
    logs: dict[str, MailLog]
    runner: IBlockingRunner
    certificates: CertificateStore
    mta: MTAConfigSource
    queue: MailQueue
    queue_runner: QueueRunner | None = None

    async def tail_log(self, name: str, lines: int) -> list[str]:
        """
        The last C{lines} lines of log C{name}, read off the reactor thread.

        @raise KeyError: there is no such log.
        """
        log = self.logs[name]
        result: list[str] = await self.runner.run(log.tail, lines)
        return result


async def send_test_email(backend: AdminBackend, sender: str, recipients: list[str],
                          subject: str, body: str) -> QueuedMessage:
    """
    The *send email* tool: a message written here, queued for delivery.

    @raise ComposeError: a field cannot be used; nothing was queued.
    @raise RuntimeError: this node does not deliver mail.
    """
    if backend.queue_runner is None:
        raise RuntimeError("this node does not deliver mail")
    config = backend.mta.current
    content = compose(sender=sender, recipients=recipients, subject=subject, body=body,
                      now=backend.queue_runner.now(), my_hostname=config.my_hostname)
    return await backend.queue_runner.submit(sender, recipients, content, "local (admin)")
