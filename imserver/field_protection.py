"""Sensitive fields at rest: which values are sealed, with which keys.

Phone and ID numbers in member profiles, and card fields marked
``sensitive``, are stored as ``imserver.fieldcrypt`` tokens (AES-256-GCM or
SM4-GCM, a key id in every token). Each token is bound to where it lives (its
user or card), so a value copied to another row does not decrypt.

Keys come from ``security.field_keys``; with none configured, one key is
generated into ``<data_dir>/field.keys`` (mode 0600) so the embedded default
encrypts without setup. ``python -m imserver keys add`` appends a new active
key; ``keys rotate`` re-encrypts everything with it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

import orjson

from imserver.config import Config
from imserver.directory.model import SENSITIVE_PROFILE_KEYS
from imserver.errors import ConfigError
from imserver.fieldcrypt import Keyring

KEYS_FILE = "field.keys"
INDEX_KEY_FILE = "field-index.key"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def keys_file(config: Config) -> Path:
    return config.data_path / KEYS_FILE


def load_keyring(config: Config) -> Keyring:
    """The configured keyring, or the one kept in the data dir (created if absent).

    The keys file holds one ``key_id:algorithm:base64key`` per line; the last
    line is the active key.
    """
    sec = config.security
    try:
        if sec.field_keys:
            return Keyring.from_config(sec.field_keys, sec.field_key_active)
        path = keys_file(config)
        if not path.exists():
            key = Keyring.generate("k1", sec.field_cipher)
            _write_private(path, key.to_config_entry() + "\n")
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        return Keyring.from_config(",".join(lines), lines[-1].split(":", 1)[0])
    except ValueError as e:
        raise ConfigError("security.field_keys", str(e)) from None


def add_key(config: Config, algorithm: str) -> str:
    """Append a new key to the data-dir keys file and make it active; its id."""
    if config.security.field_keys:
        raise ConfigError("security.field_keys", "keys come from the config: add the new key there")
    path = keys_file(config)
    ring = load_keyring(config)
    n = len(ring.key_ids) + 1
    while f"k{n}" in ring.key_ids:
        n += 1
    key = Keyring.generate(f"k{n}", algorithm)
    _write_private(path, path.read_text() + key.to_config_entry() + "\n")
    return key.key_id


def load_index_key(config: Config) -> bytes:
    if config.security.field_index_key:
        try:
            key = base64.b64decode(config.security.field_index_key, validate=True)
        except ValueError:
            raise ConfigError("security.field_index_key", "must be base64") from None
        if len(key) < 16:
            raise ConfigError("security.field_index_key", "must be at least 16 bytes")
        return key
    path = config.data_path / INDEX_KEY_FILE
    if not path.exists():
        _write_private(path, base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    return base64.b64decode(path.read_text().strip())


class FieldProtector:
    """Seals and opens member profiles and card documents."""

    def __init__(self, keyring: Keyring, index_key: bytes) -> None:
        self.keyring = keyring
        self._index_key = index_key

    # -- member profiles (the directory's ProfileSealer) ------------------------
    def seal(self, user: str, profile: dict[str, str]) -> tuple[dict[str, str], str]:
        stored = {
            k: self.keyring.encrypt(v, context=f"users.{k}:{user}")
            if k in SENSITIVE_PROFILE_KEYS
            else v
            for k, v in profile.items()
        }
        # Change detection without decrypting: a keyed digest of the clear profile.
        clear = orjson.dumps(profile, option=orjson.OPT_SORT_KEYS)
        return stored, hmac.new(self._index_key, clear, hashlib.sha256).hexdigest()

    def open(self, user: str, stored: dict[str, str]) -> dict[str, str]:
        return {
            k: self.keyring.decrypt(v, context=f"users.{k}:{user}")
            if k in SENSITIVE_PROFILE_KEYS and Keyring.is_token(v)
            else v
            for k, v in stored.items()
        }

    def rotate_profile(self, user: str, stored: dict[str, str]) -> dict[str, str] | None:
        """The profile re-encrypted with the active key, or None if already current."""
        if not any(
            k in SENSITIVE_PROFILE_KEYS and Keyring.is_token(v) and self.keyring.needs_rotation(v)
            for k, v in stored.items()
        ):
            return None
        return {
            k: self.keyring.rotate(v, context=f"users.{k}:{user}")
            if k in SENSITIVE_PROFILE_KEYS and Keyring.is_token(v)
            else v
            for k, v in stored.items()
        }

    # -- card documents ------------------------------------------------------
    def seal_doc(self, card_id: str, doc: dict[str, Any]) -> dict[str, Any]:
        return self._map_sensitive(
            doc, lambda v: self.keyring.encrypt(v, context=f"cards.field:{card_id}")
        )

    def open_doc(self, card_id: str, doc: dict[str, Any]) -> dict[str, Any]:
        return self._map_sensitive(
            doc,
            lambda v: (
                self.keyring.decrypt(v, context=f"cards.field:{card_id}")
                if Keyring.is_token(v)
                else v
            ),
        )

    def rotate_doc(self, card_id: str, doc: dict[str, Any]) -> dict[str, Any] | None:
        values = [f["value"] for f in doc.get("fields", []) if f.get("sensitive")]
        if not any(Keyring.is_token(v) and self.keyring.needs_rotation(v) for v in values):
            return None
        return self._map_sensitive(
            doc,
            lambda v: (
                self.keyring.rotate(v, context=f"cards.field:{card_id}")
                if Keyring.is_token(v)
                else v
            ),
        )

    @staticmethod
    def _map_sensitive(doc: dict[str, Any], fn: Any) -> dict[str, Any]:
        fields = doc.get("fields")
        if not fields or not any(f.get("sensitive") for f in fields):
            return doc
        return {
            **doc,
            "fields": [
                {**f, "value": fn(f["value"])} if f.get("sensitive") and f["value"] else f
                for f in fields
            ],
        }


def build_protector(config: Config) -> FieldProtector:
    return FieldProtector(load_keyring(config), load_index_key(config))
