"""Apps registered in a TOML file (``cards.apps_file``), loaded at start."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any, Final, Protocol

from imserver.errors import ConfigError, ImError
from imserver.http.apps_api import parse_app
from imserver.store.records import AppRecord, AuditEntry

ACTOR: Final = "apps_file"
"""Audit actor of registrations made from the file (the admin API's is ``admin-key``)."""

ACTION: Final = "admin.app_upsert"
"""The same action as an admin-API registration, so one query finds every
registration whichever way it came; ``actor`` tells them apart."""


class AppRegistry(Protocol):
    """What registering needs of the store."""

    async def get_app(self, app_id: str) -> AppRecord | None: ...

    async def upsert_app(
        self, app: AppRecord, now: int, audit: AuditEntry | None = None
    ) -> None: ...


def load_apps_file(path: str | Path) -> list[AppRecord]:
    """Every ``[[app]]`` entry, checked; a bad file stops the server at start."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("cards.apps_file", f"file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("cards.apps_file", f"not valid TOML: {e}") from None
    entries = raw.get("app", [])
    if not isinstance(entries, list):
        raise ConfigError("cards.apps_file", "use [[app]] tables")
    apps = []
    for i, entry in enumerate(entries):
        try:
            apps.append(parse_app(entry, path=f"app[{i}]"))
        except ImError as e:
            raise ConfigError("cards.apps_file", e.message) from None
    return apps


async def register_apps(
    store: AppRegistry, apps: list[AppRecord], source: str | Path, now: int
) -> list[str]:
    """Store each app that is new or differs from its stored form; return their ids.

    Each such app gets an audit record in the same transaction, as an admin-API
    registration does. An app that is already stored exactly as in the file is
    left alone — no write, no record — so restarting with an unchanged file
    adds nothing to the log, and the log shows when a registration *changed*.
    """
    registered: list[str] = []
    for app in apps:
        stored = await store.get_app(app.app_id)
        if stored == app:
            continue
        details = _audit_details(app, stored, str(source))
        await store.upsert_app(app, now, AuditEntry(ACTOR, ACTION, app.app_id, details))
        registered.append(app.app_id)
    return registered


def _audit_details(app: AppRecord, stored: AppRecord | None, source: str) -> dict[str, Any]:
    """What an auditor needs: where it came from and what changed — never the secret itself."""
    changed = [] if stored is None else _changed_fields(stored, app)
    return {
        "source": "cards.apps_file",
        "file": source,
        "created": stored is None,
        "changed": changed,
        "callback_url": app.callback_url,
        "scope": list(app.scope),
        "permissions": list(app.permissions),
    }


def _changed_fields(old: AppRecord, new: AppRecord) -> list[str]:
    return [f.name for f in fields(AppRecord) if getattr(old, f.name) != getattr(new, f.name)]
