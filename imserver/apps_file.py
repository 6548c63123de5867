"""Apps registered in a TOML file (``cards.apps_file``), loaded at start.

A secret rotation is written in the file too (docs/admin.md "Apps"): the new
``secret``, the old one as ``previous_secret`` and, as a TOML date-time with
its offset, ``previous_secret_until``: the end of the overlap, at most 7 days
after the start that loads it.
"""

from __future__ import annotations

import datetime
import time
import tomllib
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Final, Protocol

from imserver.errors import ConfigError, ImError, InvalidField
from imserver.http.apps_api import MAX_OVERLAP_S, checked_secret, parse_app
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


def load_apps_file(path: str | Path, now: float | None = None) -> list[AppRecord]:
    """Every ``[[app]]`` entry, checked; a bad file stops the server at start."""
    now = time.time() if now is None else now
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
            apps.append(_with_rotation(parse_app(entry, path=f"app[{i}]"), entry, i, now))
        except ImError as e:
            raise ConfigError("cards.apps_file", e.message) from None
    return apps


def _with_rotation(app: AppRecord, entry: dict[str, Any], i: int, now: float) -> AppRecord:
    """``app`` with the entry's ``previous_secret`` overlap, if any (both keys or neither)."""
    path = f"app[{i}]"
    previous, until = entry.get("previous_secret"), entry.get("previous_secret_until")
    if previous is None and until is None:
        return app
    if previous is None or until is None:
        raise InvalidField(
            f"{path}: set previous_secret and previous_secret_until together",
            field=f"{path}.previous_secret",
        )
    previous = checked_secret(previous, f"{path}.previous_secret")
    if previous == app.secret:
        raise InvalidField(
            f"{path}.previous_secret must differ from secret", field=f"{path}.previous_secret"
        )
    if not isinstance(until, datetime.datetime) or until.tzinfo is None:
        raise InvalidField(
            f"{path}.previous_secret_until must be a TOML date-time with an offset,"
            " e.g. 2026-12-04T18:00:00+08:00",
            field=f"{path}.previous_secret_until",
        )
    until_s = until.timestamp()
    if until_s - now > MAX_OVERLAP_S:
        raise InvalidField(
            f"{path}.previous_secret_until is more than 7 days away: an old secret"
            " may stay valid for at most 7 days",
            field=f"{path}.previous_secret_until",
        )
    return replace(app, previous_secret=previous, previous_secret_until=int(until_s * 1000))


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
    details: dict[str, Any] = {
        "source": "cards.apps_file",
        "file": source,
        "created": stored is None,
        "changed": changed,
        "callback_url": app.callback_url,
        "scope": list(app.scope),
        "permissions": list(app.permissions),
        "events": list(app.events),
    }
    if app.previous_secret:  # a rotation in the file: when the old secret stops (never it)
        details["previous_secret_valid_until"] = app.previous_secret_until
    return details


def _changed_fields(old: AppRecord, new: AppRecord) -> list[str]:
    return [f.name for f in fields(AppRecord) if getattr(old, f.name) != getattr(new, f.name)]
