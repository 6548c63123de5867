"""Configuration: a TOML file, overridden key by key by environment variables.

Every key lives in a section (``[server] ws_port``); the environment variable
``IMSERVER_SERVER_WS_PORT`` overrides it. Values are checked once, at start-up,
so a typo fails loudly with the key's name instead of surfacing later as odd
behaviour. The dataclasses below are the single list of keys and defaults;
``config/default.toml`` documents the same keys for operators.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from imserver.errors import ConfigError

ENV_PREFIX = "IMSERVER_"


@dataclass(slots=True, frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    ws_port: int = 8700
    http_port: int = 8701
    data_dir: str = "./data"
    log_level: str = "INFO"
    log_format: str = "text"  # "json": one JSON object per line (docs/operations.md "Logs")
    use_uvloop: bool = True
    shutdown_grace_s: float = 5.0


@dataclass(slots=True, frozen=True)
class StoreConfig:
    backend: str = "sqlite"
    sqlite_path: str = ""  # empty: <data_dir>/imserver.db
    sqlite_synchronous: str = "FULL"
    group_commit_max: int = 512
    integrity_check: str = "quick"  # at start: "quick" (PRAGMA quick_check), "full" or "off"
    # backend = "postgres": several nodes share one database (docs/operations.md).
    dsn: str = ""  # postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE; IMSERVER_STORE_DSN
    pool_min_size: int = 2  # connections per node kept open
    pool_max_size: int = 10  # readers borrow these; the writer holds one per batch


@dataclass(slots=True, frozen=True)
class BusConfig:
    backend: str = "local"  # or "redis": several nodes (docs/cluster.md)
    redis_url: str = "redis://127.0.0.1:6379/0"  # one Redis; IMSERVER_BUS_REDIS_URL
    redis_cluster_nodes: tuple[str, ...] = ()  # "host:port",...: a Redis Cluster instead
    channel_prefix: str = "imserver:"  # channels and keys; one per deployment on a shared Redis
    # AUTH for every connection, single Redis or every cluster node (ACL user; empty: "default").
    redis_username: str = ""  # IMSERVER_BUS_REDIS_USERNAME
    redis_password: str = field(default="", repr=False)  # IMSERVER_BUS_REDIS_PASSWORD


@dataclass(slots=True, frozen=True)
class AuthConfig:
    secret: str = ""  # empty: generated once into <data_dir>/secret.key
    token_ttl_s: int = 3600  # tokens minted by the CLI (development)
    access_ttl_s: int = 900  # access tokens issued to an identity app: short-lived
    refresh_ttl_s: int = 30 * 24 * 3600
    auth_timeout_s: float = 5.0
    admin_api_key: str = ""  # empty: admin HTTP API disabled


@dataclass(slots=True, frozen=True)
class LimitsConfig:
    max_frame_bytes: int = 65536
    max_text_chars: int = 5000
    max_group_members: int = 1000
    max_group_name_chars: int = 64
    max_file_bytes: int = 20 * 1024 * 1024
    allowed_file_types: tuple[str, ...] = (
        "image/png",
        "image/jpeg",
        "image/gif",
        "application/pdf",
        "text/plain",
        "application/zip",
        "application/octet-stream",
        "application/msword",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.ms-excel",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/ofd",
    )
    sync_page_messages: int = 200
    sync_page_conversations: int = 50
    history_page_max: int = 100
    presence_subscriptions: int = 500
    user_requests_per_s: float = 20.0  # per user, over all their devices, on one node
    user_burst: int = 60


@dataclass(slots=True, frozen=True)
class GatewayConfig:
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    idle_timeout_s: float = 120.0
    send_buffer_limit_bytes: int = 1024 * 1024
    compression: bool = False
    listen_backlog: int = 4096  # pending connections the kernel queues (reconnect storms)
    open_timeout_s: float = 10.0  # TCP accept to finished WebSocket handshake (slowloris)
    max_connections: int = 20000  # open TCP connections on the WebSocket port; 0: no cap
    max_connections_per_ip: int = 2000  # ... from one source address (NAT!); 0: no cap


@dataclass(slots=True, frozen=True)
class HttpConfig:
    """Bounds on the HTTP port's connections: a slow or idle client holds one
    socket for a bounded time, and one address cannot take them all."""

    header_timeout_s: float = 10.0  # connect to complete first request head
    # Idle time between requests on one connection; longer than common clients'
    # own idle expiry (aiohttp 15 s) so a client never reuses a socket being closed.
    keepalive_timeout_s: float = 75.0
    max_connections: int = 4096  # open TCP connections on the HTTP port; 0: no cap
    max_connections_per_ip: int = 256  # ... from one source address; 0: no cap
    listen_backlog: int = 1024  # pending connections the kernel queues


@dataclass(slots=True, frozen=True)
class ChatConfig:
    recall_window_s: float = 120.0
    ding_interval_s: float = 300.0  # re-notify unconfirmed DING recipients this often
    ding_max_renotify: int = 3
    ding_lease_s: float = 60.0  # a dead node's claimed DINGs: re-notified elsewhere after this


@dataclass(slots=True, frozen=True)
class CardsConfig:
    apps_file: str = ""  # TOML with [[app]] entries; empty: apps only via the admin API
    signature_window_s: float = 300.0
    callback_timeout_s: float = 3.0
    callback_max_attempts: int = 8
    callback_backoff_initial_s: float = 1.0
    callback_backoff_max_s: float = 300.0
    callback_concurrency: int = 32
    max_title_chars: int = 128
    max_fields: int = 30
    max_body_chars: int = 8000
    max_card_bytes: int = 32768
    max_recipients: int = 10000
    #: A push or notice to this many users (directly or via units) is stored
    #: once, in a broadcast conversation, and fanned out like a group message.
    broadcast_min_holders: int = 100
    max_templates: int = 1000  # template ids per app, and versions per template
    reminder_offsets_s: tuple[int, ...] = (3600, 600)  # reminders this long before due_at
    app_requests_per_s: float = 50.0  # signed app requests, per app, on one node
    app_burst: int = 200
    timer_lease_s: float = 60.0  # a dead node's claimed card timers: fired elsewhere after this


@dataclass(slots=True, frozen=True)
class SecurityConfig:
    audit_algorithm: str = "sha256"  # or "sm3" (national standard hash)
    dlp_enabled: bool = True
    dlp_patterns: tuple[str, ...] = ()  # empty: the built-in classification-mark rules
    field_cipher: str = "aes-256-gcm"  # or "sm4-gcm", for keys generated into the data dir
    field_keys: str = ""  # "id:algorithm:base64key,..."; empty: <data_dir>/field.keys
    field_key_active: str = ""  # with field_keys: the id new values are sealed with
    field_index_key: str = ""  # base64; empty: <data_dir>/field-index.key


@dataclass(slots=True, frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    bus: BusConfig = field(default_factory=BusConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    cards: CardsConfig = field(default_factory=CardsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir)

    @property
    def sqlite_file(self) -> Path:
        if self.store.sqlite_path:
            return Path(self.store.sqlite_path)
        return self.data_path / "imserver.db"


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Build a checked :class:`Config` from a TOML file, the environment and overrides.

    Precedence, lowest first: built-in defaults, the file, ``IMSERVER_*``
    variables, then ``overrides`` (used by tests and the CLI).
    """
    raw: dict[str, dict[str, Any]] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(str(path), "file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(str(path), f"not valid TOML: {e}") from None
    sections = {f.name: f for f in dataclasses.fields(Config)}
    for name, value in raw.items():
        if name not in sections:
            raise ConfigError(name, f"unknown section (known: {', '.join(sections)})")
        if not isinstance(value, dict):
            raise ConfigError(name, "must be a table")
    built: dict[str, Any] = {}
    environ = os.environ if env is None else env
    _check_env_names(environ)
    for name, sect_field in sections.items():
        cls = sect_field.default_factory
        values = dict(raw.get(name, {}))
        values.update(_env_values(name, cls, environ))
        if overrides and name in overrides:
            values.update(overrides[name])
        built[name] = _build_section(name, cls, values)
    config = Config(**built)
    _validate(config)
    return config


#: Variables with the prefix that are not config keys.
ENV_NOT_KEYS = frozenset({"IMSERVER_CONFIG"})


def _check_env_names(environ: Mapping[str, str]) -> None:
    """A misspelt ``IMSERVER_*`` variable fails loudly instead of being ignored."""
    known = set(ENV_NOT_KEYS)
    for sect in dataclasses.fields(Config):
        for f in dataclasses.fields(get_type_hints(Config)[sect.name]):
            known.add(f"{ENV_PREFIX}{sect.name.upper()}_{f.name.upper()}")
    for var in environ:
        if var.startswith(ENV_PREFIX) and var not in known:
            raise ConfigError(var, "unknown environment variable (not a config key)")


def _env_values(section: str, cls: Any, environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        var = f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}"
        if var in environ:
            out[f.name] = _EnvString(environ[var])
    return out


class _EnvString(str):
    """A value that came from the environment and still needs parsing."""


def _build_section(section: str, cls: Any, values: dict[str, Any]) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{section}.{key}", "unknown key")
        kwargs[key] = _coerce(f"{section}.{key}", hints[key], value)
    return cls(**kwargs)


def _coerce(key: str, hint: Any, value: Any) -> Any:
    from_env = isinstance(value, _EnvString)
    if hint is bool:
        if from_env:
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ConfigError(key, f"expected a boolean, got {value!r}")
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected a boolean, got {value!r}")
        return value
    if hint is int:
        if from_env:
            try:
                return int(value)
            except ValueError:
                raise ConfigError(key, f"expected an integer, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if from_env:
            try:
                number = float(value)
            except ValueError:
                raise ConfigError(key, f"expected a number, got {value!r}") from None
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {value!r}")
        else:
            number = float(value)
        if not math.isfinite(number):
            raise ConfigError(key, f"expected a finite number, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return str(value)
    if hint == tuple[int, ...]:
        items = value.split(",") if from_env else value
        if not isinstance(items, list | tuple):
            raise ConfigError(key, f"expected a list of integers, got {value!r}")
        try:
            out = tuple(int(v) if from_env else v for v in items if str(v).strip())
        except ValueError:
            raise ConfigError(key, f"expected a list of integers, got {value!r}") from None
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in out):
            raise ConfigError(key, f"expected a list of positive integers, got {value!r}")
        return out
    if hint == tuple[str, ...]:
        if from_env:
            return tuple(s.strip() for s in value.split(",") if s.strip())
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f"expected a list of strings, got {value!r}")
        return tuple(value)
    raise ConfigError(key, f"unsupported type {hint!r}")  # pragma: no cover


def _validate_postgres(store: StoreConfig) -> None:
    """A PostgreSQL store needs a DSN it can parse and a sane pool; SQLite ignores these."""
    if store.backend != "postgres":
        return
    if not store.dsn.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            "store.dsn",
            'required for backend "postgres": postgresql://USER@HOST:PORT/DATABASE'
            " (or set IMSERVER_STORE_DSN)",
        )
    if store.pool_min_size < 0:
        raise ConfigError("store.pool_min_size", f"must not be negative, got {store.pool_min_size}")
    if store.pool_max_size < max(1, store.pool_min_size):
        raise ConfigError(
            "store.pool_max_size",
            f"must be at least 1 and at least store.pool_min_size, got {store.pool_max_size}",
        )


def _validate(c: Config) -> None:
    def positive(key: str, value: float) -> None:
        if value <= 0:
            raise ConfigError(key, f"must be greater than 0, got {value}")

    for key, port in (
        ("server.ws_port", c.server.ws_port),
        ("server.http_port", c.server.http_port),
    ):
        if not 0 <= port <= 65535:
            raise ConfigError(key, f"must be a port number 0-65535 (0 = any free port), got {port}")
    if c.server.ws_port == c.server.http_port and c.server.ws_port != 0:
        raise ConfigError("server.http_port", "must differ from server.ws_port")
    if c.server.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("server.log_level", "must be DEBUG, INFO, WARNING or ERROR")
    if c.server.log_format not in ("text", "json"):
        raise ConfigError("server.log_format", f"must be text or json, got {c.server.log_format!r}")
    if c.store.backend not in ("sqlite", "postgres"):
        raise ConfigError(
            "store.backend", f"unsupported backend {c.store.backend!r} (known: sqlite, postgres)"
        )
    _validate_postgres(c.store)
    if c.store.sqlite_synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ConfigError("store.sqlite_synchronous", "must be OFF, NORMAL, FULL or EXTRA")
    if c.server.shutdown_grace_s < 0:
        raise ConfigError("server.shutdown_grace_s", "must not be negative")
    positive("store.group_commit_max", c.store.group_commit_max)
    if c.store.integrity_check not in ("quick", "full", "off"):
        raise ConfigError("store.integrity_check", "must be quick, full or off")
    _validate_bus(c.bus)
    if c.auth.secret and len(c.auth.secret) < 32:
        raise ConfigError(
            "auth.secret", "must be at least 32 characters (or empty to generate one)"
        )
    positive("auth.token_ttl_s", c.auth.token_ttl_s)
    positive("auth.access_ttl_s", c.auth.access_ttl_s)
    positive("auth.refresh_ttl_s", c.auth.refresh_ttl_s)
    positive("auth.auth_timeout_s", c.auth.auth_timeout_s)
    if c.auth.admin_api_key and len(c.auth.admin_api_key) < 16:
        raise ConfigError("auth.admin_api_key", "must be at least 16 characters (or empty)")
    for f in dataclasses.fields(LimitsConfig):
        v = getattr(c.limits, f.name)
        if isinstance(v, int):
            positive(f"limits.{f.name}", v)
    if c.limits.max_frame_bytes < 1024:
        raise ConfigError("limits.max_frame_bytes", "must be at least 1024")
    if c.limits.max_group_members < 2:
        raise ConfigError("limits.max_group_members", "must be at least 2")
    for name in ("ping_interval_s", "ping_timeout_s", "idle_timeout_s"):
        positive(f"gateway.{name}", getattr(c.gateway, name))
    _validate_connection_bounds(c)
    if c.gateway.send_buffer_limit_bytes < 64 * 1024:
        raise ConfigError("gateway.send_buffer_limit_bytes", "must be at least 65536")
    for f in dataclasses.fields(CardsConfig):
        v = getattr(c.cards, f.name)
        if isinstance(v, int | float) and not isinstance(v, bool):
            positive(f"cards.{f.name}", v)
    if c.cards.callback_backoff_max_s < c.cards.callback_backoff_initial_s:
        raise ConfigError("cards.callback_backoff_max_s", "must be >= callback_backoff_initial_s")
    if c.security.audit_algorithm not in ("sha256", "sm3"):
        raise ConfigError("security.audit_algorithm", "must be sha256 or sm3")
    if c.security.field_cipher not in ("aes-256-gcm", "sm4-gcm"):
        raise ConfigError("security.field_cipher", "must be aes-256-gcm or sm4-gcm")
    if c.security.field_keys and not c.security.field_key_active:
        raise ConfigError("security.field_key_active", "name the active key of field_keys")
    if c.security.dlp_patterns:
        from imserver.dlp import ClassifiedGuard

        try:
            ClassifiedGuard(c.security.dlp_patterns)
        except ValueError as e:
            raise ConfigError("security.dlp_patterns", str(e)) from None
    if c.chat.recall_window_s < 0:
        raise ConfigError("chat.recall_window_s", "must not be negative")
    positive("chat.ding_lease_s", c.chat.ding_lease_s)
    positive("chat.ding_interval_s", c.chat.ding_interval_s)  # 0 would re-notify in a loop


def _validate_bus(bus: BusConfig) -> None:
    """The Redis bus needs a URL or cluster nodes it can parse; ``local`` ignores them."""
    if bus.backend not in ("local", "redis"):
        raise ConfigError(
            "bus.backend", f"unsupported backend {bus.backend!r} (known: local, redis)"
        )
    if bus.backend != "redis":
        return
    for node in bus.redis_cluster_nodes:
        host, _, port = node.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ConfigError("bus.redis_cluster_nodes", f"expected host:port, got {node!r}")
    if not bus.redis_cluster_nodes and not bus.redis_url.startswith(
        ("redis://", "rediss://", "unix://")
    ):
        raise ConfigError(
            "bus.redis_url",
            'required for backend "redis": redis://HOST:PORT/DB (or set IMSERVER_BUS_REDIS_URL),'
            " or list bus.redis_cluster_nodes",
        )
    if not bus.channel_prefix or any(ch in bus.channel_prefix for ch in "{} "):
        raise ConfigError("bus.channel_prefix", "must be non-empty, without spaces or braces")
    _, at, _ = bus.redis_url.partition("://")[2].rpartition("@")
    if at and not bus.redis_cluster_nodes and (bus.redis_username or bus.redis_password):
        # Which would win is a guess an operator should not have to make.
        raise ConfigError(
            "bus.redis_password" if bus.redis_password else "bus.redis_username",
            "bus.redis_url carries credentials already: give them in one place"
            " (the URL, or bus.redis_username / bus.redis_password)",
        )


def _validate_connection_bounds(c: Config) -> None:
    """Timeouts must be positive (no "wait forever"); caps are counts, 0 meaning none."""
    for key, seconds in (
        ("gateway.open_timeout_s", c.gateway.open_timeout_s),
        ("http.header_timeout_s", c.http.header_timeout_s),
        ("http.keepalive_timeout_s", c.http.keepalive_timeout_s),
    ):
        if seconds <= 0:
            raise ConfigError(key, f"must be greater than 0, got {seconds}")
    for key, count in (
        ("gateway.max_connections", c.gateway.max_connections),
        ("gateway.max_connections_per_ip", c.gateway.max_connections_per_ip),
        ("http.max_connections", c.http.max_connections),
        ("http.max_connections_per_ip", c.http.max_connections_per_ip),
    ):
        if count < 0:
            raise ConfigError(key, f"must not be negative (0: no cap), got {count}")
    if c.http.listen_backlog <= 0:
        raise ConfigError(
            "http.listen_backlog", f"must be greater than 0, got {c.http.listen_backlog}"
        )
