"""The requests the server sends to an app (OpenAPI 3.1 ``webhooks``): the card
action callback and app events, POSTed to the app's ``callback_url``.

Described so an integrator can build the receiving side from the description
alone: the signature headers (the same scheme as the app's own requests,
signed with the app's secret), the bodies, and what the answer may carry.
The field lists follow docs/cards.md sections 6 and "App events"; bodies may
gain fields, so a receiver must ignore the ones it does not know.
"""

from __future__ import annotations

from typing import Any

from imserver.appauth import H_APP, H_NONCE, H_SIGNATURE, H_TIMESTAMP
from imserver.http.openapi_schemas import APP_EVENTS
from imserver.request_context import HEADER as REQUEST_ID_HEADER

STR: dict[str, Any] = {"type": "string"}
INT: dict[str, Any] = {"type": "integer"}


def _header(name: str, description: str, required: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string"},
    }


SIGNED_HEADERS = [
    _header(H_APP, "your app id"),
    _header(H_TIMESTAMP, "Unix seconds: refuse if far from your clock"),
    _header(H_NONCE, "unique per request: refuse a repeat"),
    _header(
        H_SIGNATURE,
        "hex HMAC-SHA256 with your secret over `<timestamp>\\n<nonce>\\n<raw body>`:"
        " verify before trusting the body (docs/cards.md section 2)",
    ),
    _header("X-Imserver-Action-Id", "the `action_id` (callbacks) or `event_id` (events)"),
]


def schemas() -> dict[str, Any]:
    return {
        "CallbackAction": {
            "type": "object",
            "description": "An accepted action on one of your cards (docs/cards.md section 6).",
            "required": [
                "type",
                "app_id",
                "action_id",
                "card_id",
                "out_track_id",
                "version",
                "actor",
                "action",
                "state",
                "at",
            ],
            "properties": {
                "type": {"const": "card.action"},
                "app_id": STR,
                "action_id": {"type": "string", "description": "drop repeats by it"},
                "card_id": STR,
                "out_track_id": STR,
                "version": {"type": "integer", "description": "the version this action made"},
                "actor": {"type": "string", "description": "the user who acted"},
                "action": {"type": "string", "description": "the button's id"},
                "kind": {"type": "string", "description": "decision or an OA action (5a)"},
                "decision": {"type": ["string", "null"], "description": "approve or reject"},
                "target": {"type": ["object", "null"], "description": "转交/加签/退回 target"},
                "inputs": {"type": "object"},
                "state": {"type": "string", "description": "the card's state after it"},
                "actors": {"type": "array", "items": STR},
                "actionable_by": {"type": "array", "items": STR},
                "at": {"type": "integer", "description": "ms since the epoch"},
                "request_id": {
                    "type": "string",
                    "description": "the HTTP request that acted (also the X-Request-Id header)",
                },
            },
        },
        "AppEvent": {
            "type": "object",
            "description": "Something that happened to your card or notice (docs/cards.md).",
            "required": ["type", "event", "event_id", "app_id", "at"],
            "properties": {
                "type": {"const": "event"},
                "event": {"enum": list(APP_EVENTS)},
                "event_id": {"type": "string", "description": "drop repeats by it"},
                "app_id": STR,
                "card_id": STR,
                "out_track_id": STR,
                "notice_id": STR,
                "at": INT,
                "user": STR,
                "conv": STR,
                "seq": INT,
            },
        },
        "CallbackAnswer": {
            "type": "object",
            "description": (
                "Optional: a card update applied at once, one new version (an invalid one is"
                " dropped, unseen by you: GET the card to check). Its `if_version` is not"
                " checked here; PATCH with `if_version` for a conditional update. An empty or"
                " non-JSON 2xx body acknowledges without an update (docs/cards.md section 6)."
            ),
            "properties": {"card_update": {"$ref": "#/components/schemas/CardUpdate"}},
        },
    }


def webhooks() -> dict[str, Any]:
    def post(summary: str, body: str, answer: dict[str, Any], extra: list[Any]) -> dict[str, Any]:
        return {
            "post": {
                "summary": summary,
                "parameters": [*SIGNED_HEADERS, *extra],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}
                    },
                },
                "responses": {
                    "2XX": answer,
                    "default": {"description": "anything else: retried with backoff and jitter"},
                },
            }
        }

    return {
        "cardAction": post(
            "the server tells your callback_url of an accepted action",
            "CallbackAction",
            {
                "description": "delivered",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/CallbackAnswer"}}
                },
            },
            [_header(REQUEST_ID_HEADER, "the HTTP request that acted, if any", required=False)],
        ),
        "appEvent": post(
            "the server tells your callback_url of an app event you subscribed to",
            "AppEvent",
            {"description": "delivered (the body is ignored)"},
            [],
        ),
    }
