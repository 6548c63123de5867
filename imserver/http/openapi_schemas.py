"""The OpenAPI description's reusable parts: security schemes, the error body, values.

Data only (no aiohttp): ``imserver/http/openapi.py`` puts these together
with the paths. Schemas say what the server really answers -- schemathesis
checks every response against them (tests/integration/test_openapi_schemathesis.py)
-- so objects that carry more than is listed here allow extra properties.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imserver.appauth import H_APP, H_NONCE, H_SIGNATURE, H_TIMESTAMP

#: ``imserver.http.apps_api.APP_EVENTS`` (not imported: apps_api imports the HTTP core,
#: which serves this description; tests/unit/test_openapi_routes.py keeps them equal).
APP_EVENTS = ("overdue", "escalated", "reminded", "ding_confirmed", "card_read", "delivered")
#: ``cards.model.UPDATABLE`` (imserver/ does not import cards/; a test keeps them equal).
UPDATABLE = ("title", "fields", "body_md", "status", "actions", "inputs", "due_at", "escalate_to")
#: Shipped with the package (an installed server serves the full description);
#: docs/card.schema.json is the authors' copy, kept equal by tests/unit/test_card_schema.py.
CARD_SCHEMA_FILE = Path(__file__).resolve().parent / "card.schema.json"

Security = list[dict[str, list[str]]]

APP_SIGNED: Security = [{"appId": [], "appTimestamp": [], "appNonce": [], "appSignature": []}]
ADMIN_KEY_ONLY: Security = [{"adminKey": []}]
#: Admin routes a scoped admin (a user token with granted units) may call too.
ADMIN_OR_SCOPED: Security = [{"adminKey": []}, {"userToken": []}]
USER: Security = [{"userToken": []}]


def security_schemes() -> dict[str, Any]:
    signing = (
        "Apps sign every request: HMAC-SHA256 with the app's secret over"
        " `<timestamp>\\n<nonce>\\n<raw body bytes>`, hex, in "
        f"`{H_SIGNATURE}`; the timestamp must be within `cards.signature_window_s`"
        " (300 s) of the server's clock and each nonce is accepted once"
        " (docs/cards.md section 2). All four headers are required together."
    )
    return {
        "appId": {"type": "apiKey", "in": "header", "name": H_APP, "description": signing},
        "appTimestamp": {
            "type": "apiKey",
            "in": "header",
            "name": H_TIMESTAMP,
            "description": "Unix seconds, 1-15 ASCII digits. " + signing,
        },
        "appNonce": {
            "type": "apiKey",
            "in": "header",
            "name": H_NONCE,
            "description": "16-64 of A-Z a-z 0-9 _ -, never reused. " + signing,
        },
        "appSignature": {
            "type": "apiKey",
            "in": "header",
            "name": H_SIGNATURE,
            "description": "64 hex digits of HMAC-SHA256. " + signing,
        },
        "adminKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "`Authorization: Bearer <auth.admin_api_key>`: the operator's key.",
        },
        "dashboardSession": {
            "type": "apiKey",
            "in": "cookie",
            "name": "imserver_dashboard",
            "description": (
                "The dashboard's session cookie, set by POST /dashboard/login; changing"
                " calls also need the `X-CSRF-Token` header from GET /dashboard/api/session."
            ),
        },
        "userToken": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": (
                "`Authorization: Bearer <user token>` (HS256, device-bound, short-lived;"
                " docs/protocol.md). On admin routes: a user granted admin units (scoped admin)."
            ),
        },
    }


_CARD_DEFS = "#/components/schemas/CardDocument/$defs/"


def _card_document() -> dict[str, Any]:
    """The card document's JSON Schema as a component (its ``$defs`` refs rewritten).

    A stub only if the packaged file is missing or damaged (a broken install).
    """
    try:
        schema = json.loads(CARD_SCHEMA_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {
            "type": "object",
            "required": ["out_track_id", "title"],
            "description": "The card document: docs/card.schema.json.",
        }
    schema.pop("$schema", None)
    rebased: dict[str, Any] = _rebase(
        schema, "#/$defs/", "#/components/schemas/CardDocument/$defs/"
    )
    return rebased


def _rebase(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {
            k: (new + v[len(old) :])
            if k == "$ref" and isinstance(v, str) and v.startswith(old)
            else _rebase(v, old, new)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rebase(v, old, new) for v in value]
    return value


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    return out


STR = {"type": "string"}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
NULL_STR = {"type": ["string", "null"]}
ANY_OBJ = {"type": "object"}


def schemas() -> dict[str, Any]:
    to = _obj(
        {
            "users": {"type": "array", "items": STR, "minItems": 1, "description": "user ids"},
            "groups": {
                "type": "array",
                "items": STR,
                "minItems": 1,
                "description": "group conversations g:...",
            },
            "units": {
                "type": "array",
                "items": _obj(
                    {"id": STR, "recursive": {"type": "boolean", "default": True}}, ["id"]
                ),
                "minItems": 1,
                "maxItems": 100,
                "description": (
                    "org units: every member of the unit (and, recursive, of the units"
                    " below it) when the push is accepted (docs/cards.md section 4)"
                ),
            },
        }
    )
    to["anyOf"] = [{"required": ["users"]}, {"required": ["groups"]}, {"required": ["units"]}]
    return {
        "Error": _obj(
            {
                "error": _obj(
                    {
                        "code": {
                            "type": "string",
                            "description": "stable, branch on it (docs/protocol.md error codes)",
                        },
                        "message": {"type": "string", "description": "for people; may change"},
                        "field": {"type": "string", "description": "the offending field"},
                        "details": {
                            "type": "object",
                            "description": "machine-readable facts, e.g. retry_after_ms",
                        },
                    },
                    ["code", "message"],
                )
            },
            ["error"],
        ),
        "CardDocument": _card_document(),
        "Recipients": to,
        "PushCard": {
            **_obj(
                {
                    "card": {"$ref": "#/components/schemas/CardDocument"},
                    "to": to,
                    "template_id": {
                        "type": "string",
                        "description": "push by template instead of `card` (docs/cards.md)",
                    },
                    "template_version": {"type": "integer", "minimum": 1},
                    "variables": {"type": "object", "additionalProperties": STR},
                    "private": {"type": "object", "description": "per-holder data"},
                },
                ["to"],
            ),
            "anyOf": [{"required": ["card"]}, {"required": ["template_id"]}],
        },
        "PushResult": _obj(
            {
                "card_id": STR,
                "out_track_id": STR,
                "version": INT,
                "state": STR,
                "holders": INT,
                "duplicate": BOOL,
            },
            ["card_id", "out_track_id", "version", "state", "duplicate"],
        ),
        "CardUpdate": {
            "type": "object",
            "description": (
                "The card keys to replace (each as in the card document), `state` to close"
                " the card, `if_version` to refuse the update if the card moved on"
                " (409 `version_conflict`, `details.version`); docs/cards.md section 6."
            ),
            "properties": {
                **{
                    key: {"$ref": f"#/components/schemas/CardDocument/properties/{key}"}
                    for key in UPDATABLE
                },
                "state": {"enum": ["approved", "rejected", "closed"]},
                "if_version": {"type": "integer", "minimum": 1},
                "private": {"type": "object", "description": "per-holder data (docs/cards.md)"},
            },
        },
        "CardChange": _obj({"card_id": STR, "version": INT, "state": STR}, ["card_id", "version"]),
        "CardView": _obj(
            {
                "card_id": STR,
                "app_id": STR,
                "out_track_id": STR,
                "version": INT,
                "state": {"type": "string", "description": "open, approved, rejected, ..."},
                "title": STR,
                "fields": {"type": "array", "items": ANY_OBJ},
                "body_md": STR,
                "status": {"type": ["object", "null"]},
                "actions": {"type": "array", "items": ANY_OBJ},
                "inputs": {"type": "array", "items": ANY_OBJ},
                "policy": {"type": ["object", "null"]},
                "actionable_by": {"type": "array", "items": STR},
                "decisions": {"type": "array", "items": ANY_OBJ},
                "trail": {"type": "array", "items": ANY_OBJ},
                "decided_by": NULL_STR,
                "callback": {
                    "enum": ["none", "pending", "ok", "failed"],
                    "description": "action callbacks delivered? at this version; none: no act yet",
                },
            },
            ["card_id", "version"],
        ),
        "Notice": _obj(
            {
                "title": {"type": "string", "minLength": 1, "maxLength": 128},
                "text": {"type": "string", "minLength": 1, "maxLength": 8000},
                "urgent": BOOL,
                "to": to,
            },
            ["title", "text", "to"],
        ),
        "NoticeResult": _obj({"notice_id": STR, "recipients": INT}, ["notice_id", "recipients"]),
        "DingStatus": _obj(
            {
                "notice_id": STR,
                "confirmed": {"type": "array", "items": {}},
                "unconfirmed": {"type": "array", "items": {}},
            },
            ["notice_id", "confirmed", "unconfirmed"],
        ),
        "Act": _obj(
            {
                "action": {"type": "string", "minLength": 1, "maxLength": 32},
                "action_id": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 64,
                    "description": "idempotency key: a repeat returns the first answer",
                },
                "inputs": {"type": "object"},
                "target": {
                    "type": "object",
                    "description": "转交/加签/退回: {user}, {user, position}, {step} (cards.md 5a)",
                },
            },
            ["action", "action_id"],
        ),
        "ActResult": _obj(
            {
                "card_id": STR,
                "version": INT,
                "state": STR,
                "decided_by": NULL_STR,
                "repeat": BOOL,
            },
            ["card_id", "version", "state", "repeat"],
        ),
        "Todo": _obj(
            {
                "total": INT,
                "overdue": INT,
                "cards": {"type": "array", "items": {"$ref": "#/components/schemas/CardView"}},
            },
            ["total", "overdue", "cards"],
        ),
        "App": _obj(
            {
                "app_id": {"type": "string", "pattern": "^[a-z0-9_-]{1,32}$"},
                "name": {"type": "string", "maxLength": 64},
                "secret": {"type": "string", "minLength": 32},
                "callback_url": {
                    "anyOf": [{"type": "string", "format": "uri"}, {"const": ""}],
                    "description": 'http(s) URL, or "" for a stream-only app (stream mode)',
                },
                "scope": {
                    "type": "array",
                    "items": STR,
                    "description": "'*', 'user:<id>', 'group:<conv>' or 'unit:<id>'",
                },
                "permissions": {"type": "array", "items": {"enum": ["tokens"]}},
                "events": {
                    "type": "array",
                    "items": {"enum": list(APP_EVENTS)},
                    "description": "app events to receive (docs/cards.md 'App events')",
                },
            },
            ["app_id", "secret", "callback_url"],
        ),
        "AppView": _obj(
            {
                "app_id": STR,
                "name": STR,
                "callback_url": STR,
                "scope": {"type": "array", "items": STR},
                "permissions": {"type": "array", "items": STR},
                "source": {"enum": ["admin", "apps_file"]},
                "created_at": INT,
                "updated_at": INT,
                "secret_rotation": {"type": ["object", "null"]},
            },
            ["app_id", "callback_url", "scope", "source"],
        ),
        "Callback": _obj(
            {
                "card_id": STR,
                "action_id": STR,
                "app_id": STR,
                "state": {"enum": ["pending", "delivered", "failed"]},
                "attempts": INT,
                "last_error": STR,
            },
            ["card_id", "action_id", "app_id", "state", "attempts"],
        ),
        "TokenPair": {
            "type": "object",
            "description": "access and refresh tokens (docs/protocol.md 'Tokens')",
        },
        "Health": _obj(
            {
                "status": {"enum": ["ok", "degraded", "unavailable"]},
                "store": _obj({"backend": STR, "ok": BOOL}, ["backend", "ok"]),
                "bus": ANY_OBJ,
            },
            ["status", "store"],
        ),
        "FileMeta": _obj(
            {"id": STR, "name": STR, "size": INT, "mime": STR}, ["id", "name", "size", "mime"]
        ),
    }
