"""Apps registered in a TOML file (``cards.apps_file``), loaded at start."""

from __future__ import annotations

import tomllib
from pathlib import Path

from imserver.errors import ConfigError, ImError
from imserver.http.cards_api import parse_app
from imserver.store.records import AppRecord


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
