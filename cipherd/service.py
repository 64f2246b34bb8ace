"""
Assembles the cipherd service tree from the bootstrap config.

    cipherd (MultiService)
    ├── threads: database pool, crypto pool, auth pool (Argon2)
    ├── mail logs (MTA, MPA)
    ├── startup: data dir, migrations, first-start secrets and admin account
    │   └── then the listeners: admin site and portal (HTTPS), SMTP server; MTA config refresh
    └── timers: queue scan, MTA config refresh, webmail cleanup, admin and portal session sweeps

Services stop in reverse order.  Listeners start only once the database is
migrated; if that fails, the reason is logged and the process stops.
"""

from __future__ import annotations

import ctypes
import re
import secrets
import shutil
from collections.abc import Callable, Coroutine
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.server import Site

from cipherd.backups import TICK as BACKUP_TICK
from cipherd.backups import Backups, ScheduledBackups
from cipherd.config import Config
from cipherd.core.clock import utc_from_seconds
from cipherd.core.counters import Counters
from cipherd.datadir import DataDir, prepare_data_dir, read_kek
from cipherd.logs import ErrorsCounted, MailLogsService
from cipherd.mpa.composite import Composite
from cipherd.mpa.discovery import KeyDiscovery, WebKeyDirectory
from cipherd.mpa.dlp_policy import DataLossPrevention
from cipherd.mpa.gateway import Gateway
from cipherd.mpa.relay import WebmailRelay
from cipherd.mpa.sealing import TunnelSealer
from cipherd.pki.ca import CA_TICK, CertificateAuthority
from cipherd.pki.certstore import CertificateStore
from cipherd.pki.engine import LayerOpener, SmimeEngine
from cipherd.pki.keyring import Keyring
from cipherd.pki.ocsp import ocsp_client
from cipherd.pki.pgp import SequoiaOpenPGP
from cipherd.pki.pgpmime import PGPEngine
from cipherd.pki.pgpopen import PGPOpener
from cipherd.pki.sitetls import SiteTLS
from cipherd.settings import GLOBAL, PROPERTIES
from cipherd.smtp.config import MTAConfigSource
from cipherd.smtp.processing import IMessageProcessor
from cipherd.smtp.queue import SCAN_INTERVAL, MailQueue, QueueRunner
from cipherd.smtp.routing import DNSHopResolver, connect_tcp
from cipherd.smtp.server import SMTPFactory
from cipherd.smtp.spool import DirectorySpool
from cipherd.smtp.verify import AddressVerifier
from cipherd.store import DatabaseUnavailable, Store, create_engine_for_url
from cipherd.store.counters import CounterStore
from cipherd.store.settings import SettingsRepository, apply_changes, load_values
from cipherd.threads import PoolStopped, ThreadPoolRunner
from cipherd.web.admin import AdminSite
from cipherd.web.audit import AuditTrail
from cipherd.web.auth import AdminAuthority, admin_totp_key
from cipherd.web.backend import AdminBackend
from cipherd.web.common import BoundedRequest, access_log_formatter
from cipherd.web.crl_site import PublicationPoint
from cipherd.web.dashboard import Dashboard
from cipherd.web.portal import Portal
from cipherd.webmail.accounts import Accounts
from cipherd.webmail.administration import AccountAdministration
from cipherd.webmail.cleanup import TICK as CLEANUP_TICK
from cipherd.webmail.cleanup import Cleanup
from cipherd.webmail.mailbox import Mailboxes, message_key
from cipherd.webmail.messenger import Messenger
from cipherd.webmail.notify import Notices, Notifier
from cipherd.webmail.pdf import PDFMaker
from cipherd.webmail.pdfreply import PDFReplies, ReplyCounts
from cipherd.webmail.sms import HTTPSSMSGateway
from cipherd.workers import ProcessingWorkers, spawn_worker

SESSION_SWEEP_INTERVAL = 600
# How often the counts of this node are stored (the dashboard is this late).
COUNTS_STORE_INTERVAL = 10
CRYPTO_THREADS = 2
# Password hashing gets a thread of its own: a flood of logins waits there
# (and is capped by the authority) instead of starving mail crypto.
AUTH_THREADS = 1
# Writing the queue files: each waits for its fsyncs, which the file system
# can group when many are under way.
SPOOL_THREADS = 16

log = Logger(namespace="cipherd")


# Connections the kernel holds for a listener until it accepts them (as
# Postfix, nginx and Redis ask for): Twisted's 50 overflowed at 200
# simultaneous connects, leaving clients connected but never greeted.
LISTEN_BACKLOG = 511


def with_backlog(endpoint: str) -> str:
    """
    A TCP server endpoint description with L{LISTEN_BACKLOG}, unless it
    names a backlog of its own.
    """
    kind = endpoint.split(":", 1)[0].strip().lower()
    if kind in ("tcp", "tcp6", "ssl") and "backlog=" not in endpoint:
        return f"{endpoint}:backlog={LISTEN_BACKLOG}"
    return endpoint


# glibc's malloc raises its mmap threshold as large buffers are freed (up to
# 32 MB), and keeps what it frees below it in the heap: after one 25 MB
# message the process stays some 100 MB larger.  A fixed threshold hands
# every buffer of this size or more back to the kernel when it is freed.
MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def return_large_buffers() -> bool:
    """
    Fix glibc's mmap threshold at L{MMAP_THRESHOLD}; C{False} where there
    is no glibc (nothing changes).
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


def _generate_missing_secrets(conn: Connection) -> list[str]:
    """
    Give each secret property without a global value a random one.

    @return: the names generated.
    """
    values = load_values(conn, [GLOBAL]).by_scope[GLOBAL]
    missing = {p.name: secrets.token_urlsafe(24) for p in PROPERTIES
               if p.generate and p.name not in values}
    apply_changes(conn, GLOBAL, missing)
    return sorted(missing)


async def first_start(store: Store, authority: AdminAuthority) -> None:
    """
    Migrate the database, generate secrets and create the default admin.
    Safe to run on every start and on several nodes at once.
    """
    found, now = await store.migrate()
    if found is None:
        log.info("Created the database schema (version {version})", version=now)
    elif found != now:
        log.info("Migrated the database from version {old} to {new}", old=found, new=now)
    try:
        generated = await store.run(_generate_missing_secrets)
    except IntegrityError:
        # Another node generated them at the same moment: keep its values.
        generated = []
    if generated:
        log.info("Generated {names}", names=", ".join(generated))
    await authority.ensure_default_admin()


class _Startup(MultiService):
    """
    Runs L{first_start}, then starts its children (the listeners).  On
    failure it logs why and stops the reactor.
    """

    def __init__(self, run: Any, reactor: Any) -> None:
        super().__init__()
        self._run = run
        self._reactor = reactor
        self.ready: Deferred[None] | None = None

    def privilegedStartService(self) -> None:
        # twistd binds ports here, before startService; ours must wait for
        # the database, so the children start (and bind) in startService.
        pass

    def startService(self) -> None:
        Service.startService(self)
        d = Deferred.fromCoroutine(self._run())
        d.addCallback(lambda _: MultiService.startService(self))

        def failed(failure: Any) -> None:
            log.failure("cipherd could not start", failure)
            if self._reactor.running:
                self._reactor.stop()

        d.addErrback(failed)
        self.ready = d


class _StoreCountsAtStop(Service):
    """
    Stores what was counted since the last time, when the service stops.
    """

    def __init__(self, counts: CounterStore) -> None:
        self._counts = counts

    def stopService(self) -> Deferred[None]:
        super().stopService()
        d = Deferred.fromCoroutine(self._counts.store())
        d.addErrback(lambda f: log.failure("Storing the dashboard's counts at stop failed", f))
        return d


def _periodic(interval: float, job: Callable[[], Coroutine[Any, Any, Any]], failed: str,
              reactor: Any) -> TimerService:
    """
    Run C{job} every C{interval} seconds (and at start); a failure is
    logged and the next run happens as usual.
    """

    def run() -> Deferred[Any]:
        d = Deferred.fromCoroutine(job())
        # An unavailable database is logged once per episode by the store,
        # not by every timer every time it ticks; a job the appliance's stop
        # cut between two steps is no fault.
        d.addErrback(lambda f: None if f.check(DatabaseUnavailable, PoolStopped)
                     else log.failure(failed, f))
        return d

    timer = TimerService(interval, run)
    timer.clock = reactor
    return timer


# The OpenPGP library, behind cipherd.pki.pgp.IOpenPGP (it keeps no state).
OPENPGP = SequoiaOpenPGP()


def processing(settings: SettingsRepository, certificates: CertificateStore, keyring: Keyring,
               crypto_runner: ThreadPoolRunner, mailboxes: Mailboxes, accounts: Accounts,
               mta: MTAConfigSource, authority: CertificateAuthority,
               dlp: DataLossPrevention, reactor: Any) -> Composite:
    """
    Processing, between the queue's two spools: the webmail relay for the
    relay recipient (relay messages into mailboxes sealed under a key
    derived from var/kek), the gateway for everyone else.  The main process
    and each processing worker (L{cipherd.workers}) build the same.
    """
    engine = SmimeEngine(certificates, crypto_runner)
    return Composite(
        settings,
        WebmailRelay(engine, mailboxes, accounts, Notices(reactor), settings,
                     lambda: mta.current, reactor, certificates.ctl),
        Gateway(settings, certificates, engine, keyring, PGPEngine(OPENPGP, crypto_runner),
                PDFMaker(crypto_runner), HTTPSSMSGateway(reactor),
                LayerOpener(engine, PGPOpener(keyring, OPENPGP, crypto_runner)),
                KeyDiscovery(keyring, WebKeyDirectory(
                    reactor, DNSHopResolver(lambda: mta.current.dns_servers)),
                    OPENPGP, crypto_runner, reactor),
                lambda: mta.current, reactor, authority=authority, dlp=dlp))


def certificate_authority(store: Store, certificates: CertificateStore,
                          settings: SettingsRepository, crypto_runner: ThreadPoolRunner,
                          reactor: Any, kek: bytes, mta: MTAConfigSource
                          ) -> CertificateAuthority:
    """
    The built-in CA: an address is internal when it is in a relay domain
    (or its locality setting says so).
    """
    return CertificateAuthority(
        store, certificates, settings, crypto_runner, reactor, kek,
        internal=lambda address: mta.current.receive_policy().relay_domain(address))


def crl_base_url(host: str, listen: str) -> str:
    """
    Where the CRL listener is reached, as a new CA's distribution point
    begins unless the admin says otherwise: this host at the listener's
    port (a port forward or proxy may put it elsewhere).
    """
    port = re.match(r"tcp6?:(?:port=)?(\d+)", listen)
    number = port.group(1) if port else "80"
    return f"http://{host or 'localhost'}" + ("" if number == "80" else f":{number}")


def _store_and_pools(config: Config, reactor: Any, root: MultiService
                     ) -> tuple[Store, bool, ThreadPoolRunner, ThreadPoolRunner]:
    """
    The store with its thread pools, and the crypto and auth pools, all
    children of C{root}; the store is closed after the pools have drained.

    @return: the store, whether its one connection is shared (in-memory
        SQLite: no second process can use it), the crypto and auth pools.
    """
    db_runner = ThreadPoolRunner(reactor, "cipherd-db", config.database_pool_size)
    # Read-only transactions have threads of their own: the admin API and
    # processing read on while writes wait for a database someone locked.
    db_read_runner = ThreadPoolRunner(reactor, "cipherd-db-read", config.database_pool_size)
    crypto_runner = ThreadPoolRunner(reactor, "cipherd-crypto", CRYPTO_THREADS)
    auth_runner = ThreadPoolRunner(reactor, "cipherd-auth", AUTH_THREADS)
    for runner in (db_runner, db_read_runner, crypto_runner, auth_runner):
        runner.setServiceParent(root)
    # A connection for each thread of both pools.
    database = create_engine_for_url(config.effective_database_url,
                                     2 * config.database_pool_size)
    # One in-memory SQLite connection cannot serve two pools at once.
    shared = isinstance(database.pool, StaticPool)
    store = Store(database, db_runner, reactor, read_runner=None if shared else db_read_runner)

    class _CloseStore(Service):
        def stopService(self) -> None:
            super().stopService()
            store.close()

    # First child, so it stops last: after the thread pools have drained.
    _CloseStore().setServiceParent(root)
    root.services.insert(0, root.services.pop())
    return store, shared, crypto_runner, auth_runner


def build_worker(config: Config, reactor: Any
                 ) -> tuple[MultiService, Composite, SettingsRepository, CertificateStore,
                            Keyring, MTAConfigSource]:
    """
    What a processing worker process runs (L{cipherd.workers.main}): its
    thread pools and database connections, and L{processing} over them.
    The MTA config is the main process's, sent with each change.
    """
    return_large_buffers()
    data = DataDir(config.data_dir)
    root = MultiService()
    store, _, crypto_runner, auth_runner = _store_and_pools(config, reactor, root)
    settings = SettingsRepository(store, reactor)
    certificates = CertificateStore(store, reactor, read_kek(data), crypto_runner,
                                    ocsp_client(reactor))
    keyring = Keyring(store, reactor, read_kek(data), crypto_runner, OPENPGP)
    mta = MTAConfigSource(store)
    processor = processing(settings, certificates, keyring, crypto_runner,
                           Mailboxes(store, message_key(read_kek(data))),
                           Accounts(store, reactor, auth_runner), mta,
                           certificate_authority(store, certificates, settings, crypto_runner,
                                                 reactor, read_kek(data), mta),
                           DataLossPrevention(store, crypto_runner, reactor, read_kek(data)),
                           reactor)
    return root, processor, settings, certificates, keyring, mta


def make_service(config: Config, reactor: Any) -> IService:
    """
    Build the service tree.

    @param reactor: the reactor (clock, threads, listening) everything uses.
    """
    return_large_buffers()
    data = prepare_data_dir(
        config.data_dir, tls_hostname=config.tls_hostname,
        now=utc_from_seconds(reactor.seconds()),
    )
    root = MultiService()
    store, shared, crypto_runner, auth_runner = _store_and_pools(config, reactor, root)
    spool_runner = ThreadPoolRunner(reactor, "cipherd-spool", SPOOL_THREADS)
    spool_runner.setServiceParent(root)
    logs = MailLogsService(data.logs, max_bytes=config.log_max_bytes, keep=config.log_keep)
    logs.setServiceParent(root)
    settings = SettingsRepository(store, reactor)
    admins = AdminAuthority(
        store, auth_runner, reactor,
        idle_timeout=config.admin_session_idle_timeout,
        max_age=config.admin_session_max_age,
        lockout_threshold=config.admin_lockout_threshold,
        lockout_window=config.admin_lockout_window,
        lockout_duration=config.admin_lockout_duration,
        totp_key=admin_totp_key(read_kek(data)),
    )
    mta = MTAConfigSource(store)

    async def start() -> None:
        await first_start(store, admins)
        await mta.refresh()  # before the SMTP server takes its first session

    startup = _Startup(start, reactor)
    startup.setServiceParent(root)

    # The sites' certificate: replaced from Admin → TLS certificate without a
    # restart, unless the bootstrap file names its own.
    options = SiteTLS(
        config.tls_certificate or data.tls_certificate, config.tls_key or data.tls_key,
        replaceable=None if config.tls_certificate is None else (
            f"The certificate is named in the bootstrap file ([tls] certificate = "
            f"{str(config.tls_certificate)!r}); replace that file, or remove the setting to "
            "upload one here, and restart."))
    certificates = CertificateStore(store, reactor, read_kek(data), crypto_runner,
                                    ocsp_client(reactor))
    keyring = Keyring(store, reactor, read_kek(data), crypto_runner, OPENPGP)
    queue = MailQueue(DirectorySpool(data.spool), spool_runner, reactor)
    mailboxes = Mailboxes(store, message_key(read_kek(data)))
    accounts = Accounts(store, reactor, auth_runner)
    authority = certificate_authority(store, certificates, settings, crypto_runner, reactor,
                                      read_kek(data), mta)
    dlp = DataLossPrevention(store, crypto_runner, reactor, read_kek(data))
    local = processing(settings, certificates, keyring, crypto_runner, mailboxes, accounts, mta,
                       authority, dlp, reactor)
    processor: IMessageProcessor = local
    if config.processing_workers and not shared:
        workers = ProcessingWorkers(
            local, config, spawn_worker(reactor), reactor,
            lambda: (settings.changes, certificates.changes, keyring.changes, mta.current),
            config.processing_workers)
        workers.setServiceParent(startup)
        processor = workers
    # What the services count, stored under this node's name every few
    # seconds and once more at stop (before the store closes).
    counters = Counters(reactor)
    ErrorsCounted(counters).setServiceParent(root)
    counts = CounterStore(store, counters, config.effective_node_name)
    _StoreCountsAtStop(counts).setServiceParent(startup)
    queue_runner = QueueRunner(
        queue, lambda: mta.current, DNSHopResolver(lambda: mta.current.dns_servers),
        lambda address, port, protocol: connect_tcp(reactor, address, port, protocol),
        reactor, processor, counters=counters,
        tls=CertificateOptions())  # opportunistic STARTTLS
    notifier = Notifier(queue_runner, reactor)
    audit = AuditTrail(store, settings, reactor)

    def spool_usage() -> tuple[int, int]:
        usage = shutil.disk_usage(data.spool)
        return usage.free, usage.total

    dashboard = Dashboard(store, counts, queue, spool_usage, config.effective_node_name,
                          reactor)
    # Backups are written by a thread of their own: a large one must not
    # hold up the crypto or database pools.
    backup_runner = ThreadPoolRunner(reactor, "cipherd-backup", 1)
    backup_runner.setServiceParent(root)
    backups = Backups(store, data, read_kek(data), config.effective_node_name, reactor,
                      backup_runner)
    admin = AdminSite(
        AdminBackend(admins, settings, logs.logs, crypto_runner, certificates, keyring, mta,
                     queue, audit, dashboard,
                     AccountAdministration(store, accounts, mailboxes, notifier, settings,
                                           lambda: mta.current, reactor),
                     queue_runner, site_tls=options, backups=backups, ca=authority,
                     sms=HTTPSSMSGateway(reactor), dlp=dlp,
                     tunnels=TunnelSealer(certificates, SmimeEngine(certificates, crypto_runner),
                                          reactor),
                     crl_base=lambda: crl_base_url(mta.current.my_hostname, config.crl_listen))
    )
    messenger = Messenger(accounts, mailboxes, notifier, settings,
                          lambda: mta.current, queue_runner, reactor)
    portal = Portal(messenger, PDFReplies(settings, ReplyCounts(store, reactor),
                                          lambda: mta.current, queue_runner, reactor))
    for resource, endpoint in ((admin.resource(), config.admin_listen),
                               (portal.resource(), config.portal_listen)):
        site = Site(resource, requestFactory=BoundedRequest, logFormatter=access_log_formatter)
        site.displayTracebacks = False
        listener = StreamServerEndpointService(
            serverFromString(reactor, with_backlog(endpoint)),
            TLSMemoryBIOFactory(options, False, site))
        listener._raiseSynchronously = True
        listener.setServiceParent(startup)

    smtp = StreamServerEndpointService(
        serverFromString(reactor, with_backlog(config.smtp_listen)),
        SMTPFactory(mta.receive_policy, queue_runner.accept, reactor, options,
                    verify=AddressVerifier(queue_runner.probe, reactor,
                                           handled_here=local.is_relay_recipient).verify,
                    free_space=lambda: shutil.disk_usage(data.spool).free),
    )
    smtp._raiseSynchronously = True
    smtp.setServiceParent(startup)

    # The CA's CRLs and certificates, over plain HTTP at their URLs.
    crl_site = Site(PublicationPoint(authority), requestFactory=BoundedRequest,
                    logFormatter=access_log_formatter)
    crl_site.displayTracebacks = False
    publication = StreamServerEndpointService(
        serverFromString(reactor, with_backlog(config.crl_listen)), crl_site)
    publication._raiseSynchronously = True
    publication.setServiceParent(startup)

    # Changes made to the MTA config on another node arrive within REFRESH.
    _periodic(MTAConfigSource.REFRESH, mta.refresh, "Reading the MTA config failed",
              reactor).setServiceParent(startup)
    # Deferred mail is retried when due; new mail is delivered at once.
    _periodic(SCAN_INTERVAL, queue_runner.scan, "The queue scan failed",
              reactor).setServiceParent(startup)
    # Webmail mailbox and account cleanup, as the settings schedule them.
    _periodic(CLEANUP_TICK, Cleanup(store, settings, mailboxes, accounts,
                                    reactor).tick,
              "The webmail cleanup failed", reactor).setServiceParent(startup)
    _periodic(BACKUP_TICK, ScheduledBackups(store, backups, settings, counters, backup_runner,
                                            reactor, config.effective_node_name).tick,
              "The scheduled backup failed", reactor).setServiceParent(startup)
    _periodic(CA_TICK, authority.tick, "The CA's scheduled work (CRLs, renewal, requests) "
              "failed", reactor).setServiceParent(startup)
    _periodic(SESSION_SWEEP_INTERVAL, admins.expire_sessions,
              "Expiring admin sessions failed", reactor).setServiceParent(startup)
    _periodic(SESSION_SWEEP_INTERVAL, portal.sessions.expire,
              "Expiring portal sessions failed", reactor).setServiceParent(startup)
    _periodic(SESSION_SWEEP_INTERVAL, audit.expire,
              "Expiring the audit log failed", reactor).setServiceParent(startup)
    _periodic(COUNTS_STORE_INTERVAL, counts.store,
              "Storing the dashboard's counts failed", reactor).setServiceParent(startup)
    _periodic(SESSION_SWEEP_INTERVAL, lambda: counts.expire(reactor.seconds()),
              "Expiring the dashboard's counts failed", reactor).setServiceParent(startup)
    return root

