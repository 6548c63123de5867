"""The composition root: one place reads the config and builds the world.

Everything is constructed here and handed its dependencies; no module keeps
globals. Tests build the same world with a temporary data dir and port 0.

This is the only module of ``imserver/`` that imports the cards plug-in: it
registers the card requests (``cards.ws_requests``) and HTTP routes
(``cards.http_routes``) with the core (tests/unit/test_package_arrows.py).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field

from aiohttp import web

from cards import http_routes as card_routes
from cards.app_events import AppEvents
from cards.callbacks import CallbackDispatcher
from cards.dashboard_retry import retry_callback_hook
from cards.deadlines import DeadlineScheduler
from cards.service import CardService
from cards.stream_routes import add_stream_routes
from cards.ws_requests import register_requests as register_card_requests
from imserver.apps_file import load_apps_file, register_apps
from imserver.audit_trail import AuditTrail
from imserver.bus.base import (
    TOPIC_APP_CHANGED,
    TOPIC_CONV_CHANGED,
    TOPIC_DELIVER,
    TOPIC_DIRECTORY,
    TOPIC_PRESENCE,
    TOPIC_REVOKE,
    Bus,
)
from imserver.bus.local import LocalBus
from imserver.bus.redis import RedisBus
from imserver.bus.redis_links import RedisAuth
from imserver.bus.redis_ratelimit import APP_BUCKETS, SharedRateLimiter
from imserver.bus.redis_settings import RedisBusSettings
from imserver.bus.refill import viewer_refill
from imserver.config import Config
from imserver.dashboard.live import NodeSampler
from imserver.dashboard.routes import add_dashboard_routes
from imserver.dashboard.service import DashboardService
from imserver.dashboard.session import SessionCodec
from imserver.dlp import ClassifiedGuard
from imserver.field_protection import build_protector
from imserver.gateway.dispatch import Dispatcher
from imserver.gateway.extensions import RequestExtensions
from imserver.gateway.server import Gateway
from imserver.gateway.session import server_frame
from imserver.http.admin_auth import DIRECTORY_STORE
from imserver.http.api import BUS_HEALTH, IDENTITY, TRAIL, USER_LIMITER, build_http_app
from imserver.http.apps_api import FILE_APP_IDS, add_app_routes
from imserver.http.directory_api import DIRECTORY, add_directory_routes
from imserver.http.governance_api import GOVERNANCE_STORE, GROUPS, add_governance_routes
from imserver.http.guarded_server import GuardedSite
from imserver.hub import Hub
from imserver.metrics import Metrics
from imserver.nonces import MemoryNonceStore, NonceStore
from imserver.ratelimit import RateLimiter
from imserver.redis_nonces import RedisNonceStore
from imserver.services.address_book import AddressBook
from imserver.services.chat import ChatService
from imserver.services.content_policy import ContentPolicy
from imserver.services.ding import DingService
from imserver.services.directory import DirectoryService
from imserver.services.files import FileService
from imserver.services.groups import GroupService
from imserver.services.identity import IdentityService
from imserver.services.membership import MembershipCache
from imserver.services.presence import LocalPresence, PresenceService
from imserver.store.postgres import PostgresStore
from imserver.store.sqlite.store import SqliteStore
from imserver.tokens import TokenSigner, load_or_create_secret

log = logging.getLogger("imserver")


@dataclass
class World:
    config: Config
    store: SqliteStore | PostgresStore
    bus: Bus
    hub: Hub
    metrics: Metrics
    signer: TokenSigner
    members: MembershipCache
    chat: ChatService
    groups: GroupService
    presence: PresenceService
    files: FileService
    cards: CardService
    callbacks: CallbackDispatcher
    deadlines: DeadlineScheduler
    dings: DingService
    directory: DirectoryService
    trail: AuditTrail
    identity: IdentityService
    gateway: Gateway
    http_app: web.Application
    http_runner: web.AppRunner | None = None
    http_port: int = 0
    started: bool = field(default=False)
    #: App events (docs/cards.md "App events"): the hooks it set, finished on stop.
    app_events: AppEvents | None = None

    @property
    def ws_port(self) -> int:
        return self.gateway.port

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.server.host}:{self.ws_port}/"

    @property
    def http_url(self) -> str:
        return f"http://{self.config.server.host}:{self.http_port}"


def build_store(config: Config) -> SqliteStore | PostgresStore:
    """The store ``[store] backend`` names; nothing is opened yet.

    ``postgres`` is for several nodes sharing one database; its ``open()``
    fails with ``StoreUnavailable`` naming the host and the fix when the
    server cannot be reached.
    """
    if config.store.backend == "postgres":
        return PostgresStore(
            config.store.dsn,
            min_pool=config.store.pool_min_size,
            max_pool=config.store.pool_max_size,
            group_commit_max=config.store.group_commit_max,
            audit_algorithm=config.security.audit_algorithm,
        )
    return SqliteStore(
        config.sqlite_file,
        synchronous=config.store.sqlite_synchronous,
        group_commit_max=config.store.group_commit_max,
        audit_algorithm=config.security.audit_algorithm,
        integrity_check=config.store.integrity_check,
    )


def build_bus(config: Config, store: SqliteStore | PostgresStore) -> Bus:
    """The bus ``[bus] backend`` names: in-process, or Redis for several nodes.

    Several nodes need a shared store too (PostgreSQL): the Redis bus fills
    gaps from it (docs/cluster.md).
    """
    if config.bus.backend != "redis":
        return LocalBus()
    settings = RedisBusSettings(
        url=config.bus.redis_url,
        cluster_nodes=config.bus.redis_cluster_nodes,
        prefix=config.bus.channel_prefix,
        auth=RedisAuth(config.bus.redis_username, config.bus.redis_password),
    )
    return RedisBus(settings, store)


def build_world(config: Config, *, nonce_store: NonceStore | None = None) -> World:
    """Construct every component; nothing is opened or bound yet.

    ``nonce_store``: where signed app requests' nonces are kept; this node's
    memory unless given (several nodes must share one, e.g. ``RedisNonceStore``).
    """
    metrics = Metrics()
    store = build_store(config)
    protector = build_protector(config)
    store.doc_protector = protector  # sensitive card fields sealed at rest
    store.observe_commits(metrics.observe_commit)  # imserver_store_commit_seconds, ...
    bus = build_bus(config, store)
    # The frame-once fast path needs frames that no per-connection extension
    # rewrites: with permessage-deflate on, every socket frames for itself.
    hub = Hub(metrics, framer=None if config.gateway.compression else server_frame, cork=True)
    signer = TokenSigner(load_or_create_secret(config.auth.secret, config.data_path))
    members = MembershipCache(store)
    trail = AuditTrail(store.audit)
    guard = None
    if config.security.dlp_enabled:
        guard = ClassifiedGuard(config.security.dlp_patterns or None)
    content = ContentPolicy(guard, trail)
    chat = ChatService(store, bus, members, config, metrics, content)
    groups = GroupService(store, bus, members, chat, config)
    presence = PresenceService(
        hub,
        bus,
        bus.presence if isinstance(bus, RedisBus) else LocalPresence(hub),  # cluster-wide
        config.limits.presence_subscriptions,
    )
    files = FileService(store, config.data_path / "files", config.limits, content)
    cards = CardService(store, bus, members, chat, config, metrics)
    chat.enricher = cards.enrich
    if isinstance(bus, RedisBus):
        bus.refill = viewer_refill(chat.wire_for)  # card messages: the view per viewer
        if nonce_store is None:  # every node must see every nonce
            nonce_store = RedisNonceStore(bus.client, config.bus.channel_prefix + "nonce:")
    callbacks = CallbackDispatcher(store, cards, config.cards, metrics)
    cards.wake_callbacks = callbacks.wake
    app_events = AppEvents(store, metrics, hub.is_online)  # only for apps that subscribed
    app_events.wake = callbacks.wake
    chat.enricher = app_events.enricher(cards.enrich)  # sync/history hand-over: delivered
    chat.on_read = app_events.on_read  # card_read
    deadlines = DeadlineScheduler(
        store,
        cards,
        chat,
        lease_ms=int(config.cards.timer_lease_s * 1000),
        events=app_events,  # reminded, overdue, escalated
    )
    dings = DingService(store, bus, members, config.chat)
    dings.on_confirmed = app_events.on_ding_confirmed  # ding_confirmed
    directory = DirectoryService(store, bus, sealer=protector)
    address_book = AddressBook(store, directory.sealer)
    extensions = RequestExtensions()
    register_card_requests(extensions, cards)  # card.act, card.get, todo; cards_since in sync
    dispatcher = Dispatcher(chat, groups, presence, dings, address_book, extensions)
    identity = IdentityService(store, bus, signer, config.auth, trail)
    gateway = Gateway(config, hub, presence, dispatcher, signer, store, metrics, identity)
    app_limiter = RateLimiter(config.cards.app_requests_per_s, config.cards.app_burst)
    if isinstance(bus, RedisBus):  # one budget per user, and one per app, across every node
        gateway.limiter = SharedRateLimiter(
            config.limits.user_requests_per_s,
            config.limits.user_burst,
            bus.client,
            config.bus.channel_prefix,
        )
        app_limiter = SharedRateLimiter(
            config.cards.app_requests_per_s,
            config.cards.app_burst,
            bus.client,
            config.bus.channel_prefix,
            buckets=APP_BUCKETS,
        )
    http_app = build_http_app(signer, files, store, metrics, config.auth.admin_api_key)
    http_app[IDENTITY] = identity
    http_app[USER_LIMITER] = gateway.limiter  # one budget per user: sockets and HTTP
    http_app[TRAIL] = trail
    if isinstance(bus, RedisBus):
        http_app[BUS_HEALTH] = bus.health
    add_app_routes(  # signed app requests (generic), app registration, identity tokens
        http_app,
        store,
        nonce_store if nonce_store is not None else MemoryNonceStore(),
        config.cards,
        app_limiter,
        bus,  # app deleted / secret rotated: every node closes what it revokes
    )
    card_routes.add_routes(http_app, cards, store, callbacks.wake)
    # Stream mode: callbacks over the app's socket; it subscribes to TOPIC_APP_CHANGED.
    add_stream_routes(http_app, callbacks.streams, bus)

    async def remove_from_groups(users: list[str]) -> None:
        for user in users:
            await groups.remove_everywhere(user)

    directory.on_removed = remove_from_groups
    http_app[DIRECTORY] = directory
    http_app[DIRECTORY_STORE] = store
    add_directory_routes(http_app)
    http_app[GROUPS] = groups
    http_app[GOVERNANCE_STORE] = store
    add_governance_routes(http_app)
    add_dashboard_routes(  # the 一屏统揽 dashboard at /dashboard/ (docs/operations.md)
        http_app,
        DashboardService(store, store.audit),
        NodeSampler(metrics.registry, hub.connection_count, hub.user_count),
        SessionCodec(signer.derive_key("imserver-dashboard-session")),
        retry_callback_hook(cards, store, trail, callbacks.wake),
        bus,  # every node's summary reaches every node's page
        logout_store=store,  # a logout is refused on every node (dashboard/logouts.py)
    )
    bus.subscribe(TOPIC_DELIVER, hub.on_deliver)
    bus.subscribe(TOPIC_DELIVER, app_events.on_deliver)  # after the hub's: delivered
    bus.subscribe(TOPIC_PRESENCE, hub.on_presence)
    bus.subscribe(TOPIC_CONV_CHANGED, members.on_conv_changed)
    bus.subscribe(TOPIC_REVOKE, hub.on_revoke)
    bus.subscribe(TOPIC_DIRECTORY, hub.on_directory)
    return World(
        config=config,
        store=store,
        bus=bus,
        hub=hub,
        metrics=metrics,
        signer=signer,
        members=members,
        chat=chat,
        groups=groups,
        presence=presence,
        files=files,
        cards=cards,
        callbacks=callbacks,
        deadlines=deadlines,
        dings=dings,
        directory=directory,
        trail=trail,
        identity=identity,
        gateway=gateway,
        http_app=http_app,
        app_events=app_events,
    )


async def start_world(world: World) -> None:
    cfg = world.config.server
    # Check the apps file before opening anything, so a bad file leaks nothing.
    apps = load_apps_file(world.config.cards.apps_file) if world.config.cards.apps_file else []
    await world.store.open()
    # The file owns these: the admin API will not delete them or rotate their secrets.
    world.http_app[FILE_APP_IDS] = frozenset(a.app_id for a in apps)
    changed: list[str] = []
    if apps:  # new or changed apps only, each with its audit record (docs/security.md)
        changed = await register_apps(
            world.store, apps, world.config.cards.apps_file, int(time.time() * 1000)
        )
    await world.bus.start()
    # The other nodes hold streams signed with what the file just replaced:
    # they re-read these apps and close what no longer verifies.
    for app_id in changed:
        await world.bus.publish(TOPIC_APP_CHANGED, {"app_id": app_id, "change": "apps_file"})
    await world.callbacks.start()
    await world.deadlines.start()
    await world.dings.start()
    await world.gateway.start()
    # In-flight HTTP requests get the same grace as sockets on stop (aiohttp's
    # default would wait up to 60 s).
    runner = web.AppRunner(
        world.http_app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=world.config.server.shutdown_grace_s,
    )
    await runner.setup()
    # Not web.TCPSite: connection caps and a request-head deadline (slowloris).
    site = GuardedSite(runner, cfg.host, cfg.http_port, world.config.http, world.metrics)
    await site.start()
    world.http_runner = runner
    world.http_port = runner.addresses[0][1]
    world.started = True


async def stop_world(world: World) -> None:
    """Graceful stop: close client sockets with 1012, drain, close the store last."""
    if not world.started:
        return
    world.started = False
    await world.gateway.stop()
    if world.http_runner is not None:
        await world.http_runner.cleanup()
    await world.callbacks.stop()
    await world.deadlines.stop()
    await world.dings.stop()
    if world.app_events is not None:
        await world.app_events.stop()
    await world.bus.stop()
    await world.store.close()


async def serve_until_signalled(config: Config) -> None:
    world = build_world(config)
    await start_world(world)
    log.info(
        "imserver listening: websocket %s  http %s  (store: %s, bus: %s)",
        world.ws_url,
        world.http_url,
        world.store.describe if isinstance(world.store, PostgresStore) else config.sqlite_file,
        config.bus.backend,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: closing connections with 1012 (server restarting)")
    try:
        await asyncio.wait_for(stop_world(world), config.server.shutdown_grace_s + 10)
    except TimeoutError:
        log.error("shutdown did not finish in time")
    log.info("stopped")
