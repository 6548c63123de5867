"""Per-viewer private data (DingTalk ``privateData``): what one holder sees differently.

Pure: no I/O. A push or an update may carry ``private``: per user, fields
that replace the card's field of the same label (or are added after the
card's fields) and a status badge that replaces the card's. The card
document keeps them under ``doc["private"]``; :func:`for_viewer` is the only
way a view is made from a document, so a holder's view holds their own entry
and never anyone else's.

Private values are not sealed at rest like ``sensitive`` fields, so they may
not be sensitive themselves nor replace a sensitive field.
"""

from __future__ import annotations

from typing import Any

import orjson

from cards.model import COLORS, parse_card
from imserver.config import CardsConfig
from imserver.errors import InvalidField
from imserver.protocol.fields import is_user_id

ENTRY_KEYS = ("fields", "status")
MAX_ENTRY_BYTES = 4096  # one user's entry, as JSON
MAX_PRIVATE_BYTES = 262_144  # all users' entries together, as JSON


def _fail(path: str, why: str) -> InvalidField:
    return InvalidField(f"{path}: {why}", field=path)


def _text(value: Any, path: str, min_len: int, max_len: int) -> str:
    if not isinstance(value, str) or not min_len <= len(value) <= max_len:
        raise _fail(path, f"must be a string of {min_len}-{max_len} characters")
    return value


def _entry(value: Any, path: str, sensitive_labels: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(path, "must be an object with fields and/or status")
    unknown = sorted(set(value) - set(ENTRY_KEYS))
    if unknown:
        raise _fail(f"{path}.{unknown[0]}", "is not a private key (fields, status)")
    if not value:
        raise _fail(path, "must give fields and/or status")
    out: dict[str, Any] = {}
    if "fields" in value:
        fields = value["fields"]
        if not isinstance(fields, list) or not fields:
            raise _fail(f"{path}.fields", "must be a non-empty list")
        out["fields"] = []
        for i, f in enumerate(fields):
            p = f"{path}.fields[{i}]"
            if not isinstance(f, dict):
                raise _fail(p, "must be an object {label, value}")
            extra = sorted(set(f) - {"label", "value"})
            if extra:
                raise _fail(f"{p}.{extra[0]}", "is not a private field key (label, value)")
            label = _text(f.get("label"), f"{p}.label", 1, 64)
            if label in sensitive_labels:
                raise _fail(f"{p}.label", "names a sensitive field: private values are not sealed")
            if any(x["label"] == label for x in out["fields"]):
                raise _fail(f"{p}.label", f"repeats the label {label!r}")
            out["fields"].append(
                {"label": label, "value": _text(f.get("value"), f"{p}.value", 0, 1000)}
            )
    if "status" in value:
        s = value["status"]
        if not isinstance(s, dict) or set(s) - {"text", "color"}:
            raise _fail(f"{path}.status", "must be an object {text, color}")
        color = s.get("color", "gray")
        if color not in COLORS:
            raise _fail(f"{path}.status.color", f"must be one of {', '.join(COLORS)}")
        out["status"] = {"text": _text(s.get("text"), f"{path}.status.text", 1, 32), "color": color}
    size = len(orjson.dumps(out))
    if size > MAX_ENTRY_BYTES:
        raise _fail(path, f"is {size} bytes as JSON; the limit is {MAX_ENTRY_BYTES}")
    return out


def overlay(doc: dict[str, Any], entry: dict[str, Any] | None) -> dict[str, Any]:
    """``doc`` as the user with ``entry`` sees it (without anyone's private data)."""
    out = {k: v for k, v in doc.items() if k != "private"}
    if not entry:
        return out
    if "fields" in entry:
        own = {f["label"]: f["value"] for f in entry["fields"]}
        fields = [
            {**f, "value": own.pop(f["label"])} if f["label"] in own else f for f in doc["fields"]
        ]
        fields += [{"label": k, "value": v, "sensitive": False} for k, v in own.items()]
        out["fields"] = fields
    if "status" in entry:
        out["status"] = entry["status"]
    return out


def for_viewer(doc: dict[str, Any], viewer: str | None) -> dict[str, Any]:
    """The document ``viewer`` may see: the card plus only their own private entry."""
    private = doc.get("private") or {}
    return overlay(doc, private.get(viewer) if viewer is not None else None)


def parse_private(
    value: Any,
    doc: dict[str, Any],
    limits: CardsConfig,
    path: str = "private",
    current: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """The private data after ``value``: ``{user: entry}``, checked against ``doc``.

    ``current`` is what the card had (for an update): each user in ``value``
    gets the new entry, or loses theirs with ``null``; the others keep theirs.
    Every entry is checked again against ``doc`` (the card may have changed),
    and each user's view must still be a valid card (field count, size).
    Whether the users are holders is the caller's to check (it needs the store).
    """
    if not isinstance(value, dict):
        raise _fail(path, "must be an object of user id to {fields, status}")
    if len(value) > limits.max_recipients:
        raise _fail(path, f"may name at most {limits.max_recipients} users")
    merged = dict(current or {})
    for user, entry in value.items():
        if not is_user_id(user):
            raise _fail(f"{path}.{user}", "must be a user id")
        if entry is None:
            merged.pop(user, None)
        else:
            merged[user] = entry
    return check_private(merged, doc, limits, path)


def check_private(
    private: dict[str, Any], doc: dict[str, Any], limits: CardsConfig, path: str = "private"
) -> dict[str, dict[str, Any]]:
    """Every entry of ``private`` checked against ``doc``; the normalised map."""
    sensitive = {f["label"] for f in doc["fields"] if f["sensitive"]}
    out: dict[str, dict[str, Any]] = {}
    for user, entry in private.items():
        checked = _entry(entry, f"{path}.{user}", sensitive)
        # The view this user gets must be a card as valid as everyone else's.
        parse_card(overlay(doc, checked), limits, path=f"{path}.{user}")
        out[user] = checked
    size = len(orjson.dumps(out))
    if size > MAX_PRIVATE_BYTES:
        raise _fail(path, f"is {size} bytes as JSON; the limit is {MAX_PRIVATE_BYTES}")
    return out


def private_texts(private: dict[str, dict[str, Any]]) -> list[str]:
    """Every string a person reads in ``private`` (for the classified-content check)."""
    texts: list[str] = []
    for entry in private.values():
        texts += [x for f in entry.get("fields", []) for x in (f["label"], f["value"])]
        if "status" in entry:
            texts.append(entry["status"]["text"])
    return [t for t in texts if t]
