"""
The webmail messenger's scheduled cleanup (guide §2.3.13, figure 12):

    - *auto mailbox cleanup*: messages older than the cleanup interval
      (C{8h}, C{1d}, C{2w}) are deleted, checked every ten minutes;
    - *auto account cleanup*: accounts without activity for more than the
      configured days are deleted with their mailboxes, when the Quartz
      cron schedule says (in UTC);
    - *message expiry*: messages whose sender's expiry has passed are
      ended (their content removed, "expired" on their timeline) every
      minute; a reader who comes before that is refused all the same.

Several nodes may share the database: a node runs a job only if it moves
the job's last run (table C{job_runs}) forward from the value it read, so
each due run happens on one node.  Both jobs write what they removed to
the MPA log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime

from cipherd.cron import ScheduleError, parse_interval, parse_quartz
from cipherd.logs import mail_logger
from cipherd.settings import IAddressSettings
from cipherd.store import Store
from cipherd.store.jobs import claim
from cipherd.webmail.accounts import Accounts
from cipherd.webmail.logincodes import forget_codes
from cipherd.webmail.mailbox import Mailboxes
from cipherd.webmail.tracking import EVENT_MEMORY

log = mail_logger("cipherd.mpa.cleanup")

TICK = 60.0
MAILBOX_CLEANUP_EVERY = 600.0
EXPIRY_EVERY = 60.0
# Tunnel ids are remembered while a tunnel of that age is still accepted.
TUNNEL_MEMORY = 7 * 86400.0


class Cleanup:
    """
    @param settings: where the cleanup settings are (globally).
    """

    def __init__(self, store: Store, settings: IAddressSettings,
                 mailboxes: Mailboxes, accounts: Accounts, clock: IReactorTime) -> None:
        self._store = store
        self._settings = settings
        self._mailboxes = mailboxes
        self._accounts = accounts
        self._clock = clock

    async def tick(self) -> None:
        """
        Run what is due (the service calls this every L{TICK} seconds).
        """
        values = (await self._settings.by_address([""]))[""]
        now = self._clock.seconds()
        if await claim(self._store, "message_expiry", lambda last: last + EXPIRY_EVERY, now,
                       run_first=True):
            for address, count in sorted((await self._mailboxes.expire(now)).items()):
                log.info("Message expiry: {count} message(s) expired in the mailbox of "
                         "{address}", count=count, address=address)
        if await claim(self._store, "mailbox_cleanup", lambda last: last + MAILBOX_CLEANUP_EVERY,
                             now, run_first=True):
            await self._mailbox_cleanup(values, now)
        if values["auto_account_cleanup_enabled"]:
            try:
                schedule = parse_quartz(values["auto_account_cleanup_schedule"])
            except ScheduleError as e:
                log.error("Auto account cleanup cannot run: {why}", why=e)
                return

            if await claim(self._store, "account_cleanup", schedule.next_after_seconds, now,
                           run_first=False):
                await self._account_cleanup(values, now)

    async def _mailbox_cleanup(self, values: Mapping[str, Any], now: float) -> None:
        await self._mailboxes.forget_tunnels(now - TUNNEL_MEMORY)
        await self._mailboxes.forget_events(now - EVENT_MEMORY)
        await forget_codes(self._store, now)
        if not values["auto_mailbox_cleanup_enabled"]:
            return
        interval = values["auto_mailbox_cleanup_interval"]
        try:
            age = parse_interval(interval).total_seconds()
        except ScheduleError as e:
            log.error("Auto mailbox cleanup cannot run: {why}", why=e)
            return
        removed = await self._mailboxes.delete_older_than(now - age)
        for address, count in sorted(removed.items()):
            log.info("Auto mailbox cleanup: removed {count} message(s) older than {interval} "
                     "from the mailbox of {address}", count=count, interval=interval,
                     address=address)
        if not removed:
            log.info("Auto mailbox cleanup: no message older than {interval}",
                     interval=interval)

    async def _account_cleanup(self, values: Mapping[str, Any], now: float) -> None:
        days = values["auto_account_cleanup_last_activity"]
        removed = await self._accounts.delete_inactive(now - days * 86400)
        for address, messages in sorted(removed.items()):
            log.info("Auto account cleanup: removed the account {address}, idle for more "
                     "than {days} days, and its {messages} message(s)", address=address,
                     days=days, messages=messages)
        if not removed:
            log.info("Auto account cleanup: no account idle for more than {days} days",
                     days=days)
