"""``bots.toml``: one runtime, one or more bots (docs/bots.md, "Running").

Secrets may be given inline or, better, as the name of an environment
variable (``app_secret_env``, ``event_secret_env``), so the file can be
committed without them.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NAME_RE = re.compile(r"[a-z0-9_-]{1,32}")


class ConfigError(ValueError):
    """The config file is wrong; the message names the key."""


@dataclass(frozen=True, slots=True)
class PollConfig:
    """``[bot.poll]``: the feed a bot polls when its business system cannot call out.

    ``secret`` signs each GET (the webhook's scheme, request direction); it
    defaults to the bot's ``event_secret``, the secret already shared.
    """

    url: str
    secret: str
    interval_s: float = 5.0
    page_size: int = 50


@dataclass(frozen=True, slots=True)
class BotConfig:
    name: str
    bot_class: str  # "package.module:Class"
    app_id: str
    app_secret: str
    event_secret: str
    forward_url: str
    max_event_bytes: int = 64 * 1024
    options: dict[str, Any] = field(default_factory=dict)
    poll: PollConfig | None = None


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    server_url: str
    host: str = "127.0.0.1"
    port: int = 8800
    store: str = "data/bots.sqlite3"
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    #: How long the webhook waits for the first push before answering 202.
    inline_push_timeout_s: float = 2.0
    signature_window_s: float = 300.0
    bots: tuple[BotConfig, ...] = ()


def load_runtime_config(path: str | Path, env: Mapping[str, str] | None = None) -> RuntimeConfig:
    """Read and check ``bots.toml``; raise :class:`ConfigError` naming the key."""
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    return parse_runtime_config(doc, os.environ if env is None else env)


def parse_runtime_config(doc: Mapping[str, Any], env: Mapping[str, str]) -> RuntimeConfig:
    rt = doc.get("runtime", {})
    if not isinstance(rt, dict):
        raise ConfigError("[runtime] must be a table")
    server_url = _text(rt, "server_url", "runtime")
    if not server_url.startswith(("http://", "https://")):
        raise ConfigError("runtime.server_url must be an http(s) URL")
    raw_bots = doc.get("bot", [])
    if not isinstance(raw_bots, list) or not raw_bots:
        raise ConfigError("at least one [[bot]] table is required")
    bots = tuple(_bot(b, i, env) for i, b in enumerate(raw_bots))
    names = [b.name for b in bots]
    if len(set(names)) != len(names):
        raise ConfigError("bot names must be unique")
    return RuntimeConfig(
        server_url=server_url.rstrip("/"),
        host=str(rt.get("host", "127.0.0.1")),
        port=int(rt.get("port", 8800)),
        store=str(rt.get("store", "data/bots.sqlite3")),
        backoff_initial_s=float(rt.get("backoff_initial_s", 1.0)),
        backoff_max_s=float(rt.get("backoff_max_s", 60.0)),
        inline_push_timeout_s=float(rt.get("inline_push_timeout_s", 2.0)),
        signature_window_s=float(rt.get("signature_window_s", 300.0)),
        bots=bots,
    )


def _bot(b: Any, i: int, env: Mapping[str, str]) -> BotConfig:
    where = f"bot[{i}]"
    if not isinstance(b, dict):
        raise ConfigError(f"{where} must be a table")
    name = _text(b, "name", where)
    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"{where}.name must be 1-32 of a-z 0-9 _ -")
    bot_class = _text(b, "class", where)
    if ":" not in bot_class:
        raise ConfigError(f"{where}.class must look like 'package.module:Class'")
    options = b.get("options", {})
    if not isinstance(options, dict):
        raise ConfigError(f"{where}.options must be a table")
    event_secret = _secret(b, "event_secret", where, env)
    return BotConfig(
        name=name,
        bot_class=bot_class,
        app_id=_text(b, "app_id", where),
        app_secret=_secret(b, "app_secret", where, env),
        event_secret=event_secret,
        forward_url=_text(b, "forward_url", where),
        max_event_bytes=int(b.get("max_event_bytes", 64 * 1024)),
        options=options,
        poll=_poll(b["poll"], f"{where}.poll", event_secret, env) if "poll" in b else None,
    )


def _poll(p: Any, where: str, event_secret: str, env: Mapping[str, str]) -> PollConfig:
    if not isinstance(p, dict):
        raise ConfigError(f"{where} must be a table")
    url = _text(p, "url", where)
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.url must be an http(s) URL")
    has_secret = "secret" in p or "secret_env" in p
    interval = p.get("interval_s", 5.0)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        raise ConfigError(f"{where}.interval_s must be a number > 0")
    size = p.get("page_size", 50)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 1000:
        raise ConfigError(f"{where}.page_size must be an integer from 1 to 1000")
    return PollConfig(
        url=url,
        secret=_secret(p, "secret", where, env) if has_secret else event_secret,
        interval_s=float(interval),
        page_size=size,
    )


def _text(table: Mapping[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key} is required (a non-empty string)")
    return value


def _secret(table: Mapping[str, Any], key: str, where: str, env: Mapping[str, str]) -> str:
    if f"{key}_env" in table:
        var = _text(table, f"{key}_env", where)
        value = env.get(var, "")
        if not value:
            raise ConfigError(f"{where}.{key}_env names {var}, which is not set")
    else:
        value = _text(table, key, where)
    if len(value) < 32:
        raise ConfigError(f"{where}.{key} must be at least 32 characters")
    return value
