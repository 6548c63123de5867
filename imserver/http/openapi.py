"""The OpenAPI 3.1 description of every HTTP route, as data.

Served at ``GET /openapi.json`` and written to docs/openapi.json by
``python -m imserver openapi`` (tests/unit/test_openapi_routes.py fails
naming any route of the built app missing here, and checks the committed
file is current). Why data in the package rather than generated from the
handlers: the handlers parse their input by hand (stable error codes, field
paths), so there is nothing to introspect; a description kept next to the
routes and checked against the router is the honest alternative.

A Java (or any) integrator should need only this and docs/cards.md: every
operation lists its security (app signature headers, admin key, user
token), its body, its answers and the error body.
"""

from __future__ import annotations

from typing import Any, Final

from imserver.http import openapi_examples as examples
from imserver.http.openapi_ops import (
    BOOL,
    COMMON_ERRORS,
    STR,
    json_answer,
    list_of,
    obj_count,
    obj_str,
    op,
    path_param,
    query,
    ref,
)
from imserver.http.openapi_plugins import plugin_paths
from imserver.http.openapi_schemas import (
    ADMIN_KEY_ONLY,
    ADMIN_OR_SCOPED,
    APP_SIGNED,
    USER,
    schemas,
    security_schemes,
)
from imserver.http.openapi_webhooks import schemas as webhook_schemas
from imserver.http.openapi_webhooks import webhooks

VERSION: Final = "0.1.0"
#: imserver/protocol/fields.py USER_ID_RE and directory/model.py UNIT_ID_RE, as JSON Schema.
USER_ID: Final = "^[A-Za-z0-9_.@-]{1,64}$"
UNIT_ID: Final = "^[A-Za-z0-9_.-]{1,64}$"


def _paths() -> dict[str, dict[str, Any]]:
    card_id = path_param("card_id", "the server's card id (c_...)")
    track = path_param("out_track_id", "the app's own id for the card")
    app_id = path_param("app_id", "the app's id", "^[a-z0-9_-]{1,32}$")
    unit_id = path_param("unit_id", "an org unit id")
    user_q = ref("UserRef")
    apps = "apps (business systems)"
    cards_tag, admin, directory, gov = "cards", "admin", "directory", "governance"
    return {
        "/healthz": {
            "get": op(
                "each dependency's health; 503 when the store cannot answer",
                "operations",
                None,
                {
                    200: json_answer(ref("Health")),
                    503: json_answer(ref("Health"), "store unavailable"),
                },
                errors=(),
                operation_id="healthz",
            )
        },
        "/metrics": {
            "get": op(
                "Prometheus metrics (text format; docs/operations.md 'Metrics')",
                "operations",
                None,
                {200: {"description": "text/plain", "content": {"text/plain": {"schema": {}}}}},
                errors=(),
                operation_id="metrics",
            )
        },
        "/openapi.json": {
            "get": op(
                "this description",
                "operations",
                None,
                {200: json_answer({"type": "object"})},
                errors=(),
                operation_id="openapi",
            )
        },
        "/api/v1/files": {
            "post": op(
                "upload a file (streamed; the body is the file)",
                "files",
                USER,
                {201: json_answer(ref("FileMeta"), "stored")},
                body={"type": "string", "format": "binary"},
                body_type="application/octet-stream",
                params=[
                    {
                        "name": "name",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    }
                ],
                errors=(*COMMON_ERRORS, 415, 507),
                operation_id="uploadFile",
            )
        },
        "/api/v1/files/{file_id}": {
            "get": op(
                "download a file you may see (sender or a member of a conversation it was sent to)",
                "files",
                USER,
                {200: {"description": "the file", "content": {"*/*": {"schema": {}}}}},
                params=[
                    path_param("file_id", "sha256 hex", "^[0-9a-f]{64}$"),
                    query("name", {"type": "string"}, "file name for Content-Disposition"),
                ],
                operation_id="downloadFile",
            )
        },
        "/api/v1/apps/tokens": {
            "post": op(
                "issue a user's tokens (the identity app: permission 'tokens')",
                apps,
                APP_SIGNED,
                {201: json_answer(ref("TokenPair"), "issued")},
                body=ref("TokenRequest"),
                operation_id="issueTokens",
            )
        },
        "/api/v1/tokens/refresh": {
            "post": op(
                "trade a refresh token for a new pair",
                "identity",
                None,
                {200: json_answer(ref("TokenPair"))},
                body={
                    "type": "object",
                    "required": ["refresh_token"],
                    "properties": {"refresh_token": {"type": "string"}},
                },
                operation_id="refreshTokens",
            )
        },
        "/api/v1/apps/cards": {
            "post": op(
                "push a card (201 new; 200 the same out_track_id again: duplicate)",
                cards_tag,
                APP_SIGNED,
                {
                    201: json_answer(ref("PushResult"), "pushed"),
                    200: json_answer(ref("PushResult"), "a duplicate"),
                },
                body=ref("PushCard"),
                errors=(*COMMON_ERRORS, 409),
                example=examples.PUSH_CARD,
                operation_id="pushCard",
            )
        },
        "/api/v1/apps/cards/{out_track_id}": {
            "get": op(
                "the card as the app sees it (decisions with inputs, DING status)",
                cards_tag,
                APP_SIGNED,
                {200: json_answer(ref("CardView"))},
                params=[track],
                operation_id="getCard",
            ),
            "patch": op(
                "update a card (new version fanned out to every holder)",
                cards_tag,
                APP_SIGNED,
                {200: json_answer(ref("CardChange"))},
                params=[track],
                body=ref("CardUpdate"),
                errors=(*COMMON_ERRORS, 409),
                example=examples.UPDATE_CARD,
                operation_id="updateCard",
            ),
        },
        "/api/v1/stream": {
            "get": op(
                "stream mode: the app's outbound WebSocket for its callbacks (signed, empty body)",
                cards_tag,
                APP_SIGNED,
                {
                    101: {
                        "description": "Switching Protocols: the stream is open; frames are"
                        ' in docs/cards.md "Stream mode" (hello, callback, ack/nack, error)'
                    }
                },
                errors=(400, 401, 429, 503),
                description="The signature is checked before the upgrade: a refusal is the"
                " usual JSON error body and no socket is opened.",
                operation_id="openAppStream",
            )
        },
        "/api/v1/apps/notices": {
            "post": op(
                "send a work notice (urgent: DING, recipients must confirm)",
                cards_tag,
                APP_SIGNED,
                {201: json_answer(ref("NoticeResult"), "sent")},
                body=ref("Notice"),
                example=examples.NOTICE,
                operation_id="sendNotice",
            )
        },
        "/api/v1/apps/notices/{notice_id}/ding": {
            "get": op(
                "who confirmed an urgent notice",
                cards_tag,
                APP_SIGNED,
                {200: json_answer(ref("DingStatus"))},
                params=[path_param("notice_id", "nt_...")],
                operation_id="noticeDing",
            )
        },
        "/api/v1/cards/{card_id}/act": {
            "post": op(
                "act on a card (a holder's click over HTTP; same rules as card.act)",
                cards_tag,
                USER,
                {200: json_answer(ref("ActResult"))},
                params=[card_id],
                body=ref("Act"),
                errors=(*COMMON_ERRORS, 409),
                example=examples.ACT,
                operation_id="actOnCard",
            )
        },
        "/api/v1/todo": {
            "get": op(
                "your pending cards (only those you can act on), soonest deadline first",
                cards_tag,
                USER,
                {200: json_answer(ref("Todo"))},
                params=[query("limit", {"type": "integer", "minimum": 1, "maximum": 200})],
                operation_id="todo",
            )
        },
        "/admin/v1/users": {
            "post": op(
                "create or rename users",
                admin,
                ADMIN_KEY_ONLY,
                {200: json_answer(obj_count("upserted"))},
                body={
                    "type": "object",
                    "required": ["users"],
                    "properties": {
                        "users": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": 10000,
                            "items": {
                                "type": "object",
                                "required": ["id"],
                                "properties": {
                                    "id": ref("UserId"),
                                    "name": {"type": "string", "maxLength": 128},
                                },
                            },
                        }
                    },
                },
                example=examples.USERS,
                operation_id="upsertUsers",
            )
        },
        "/admin/v1/apps": {
            "post": op(
                "register or replace an app",
                admin,
                ADMIN_KEY_ONLY,
                {201: json_answer(obj_str("app_id"), "registered")},
                body=ref("App"),
                example=examples.APP,
                operation_id="upsertApp",
            ),
            "get": op(
                "list apps (no secrets)",
                admin,
                ADMIN_KEY_ONLY,
                {200: json_answer(list_of("apps", ref("AppView")))},
                operation_id="listApps",
            ),
        },
        "/admin/v1/apps/{app_id}": {
            "get": op(
                "one app (no secrets)",
                admin,
                ADMIN_KEY_ONLY,
                {200: json_answer(ref("AppView"))},
                params=[app_id],
                operation_id="getApp",
            ),
            "delete": op(
                "delete an app (its cards stay; pending callbacks fail)",
                admin,
                ADMIN_KEY_ONLY,
                {200: json_answer(obj_str("app_id"))},
                params=[app_id],
                errors=(*COMMON_ERRORS, 409),
                operation_id="deleteApp",
            ),
        },
        "/admin/v1/apps/{app_id}/secret": {
            "post": op(
                "rotate the app's secret; the old one verifies for overlap_s more",
                admin,
                ADMIN_KEY_ONLY,
                {200: json_answer(obj_str("app_id"))},
                params=[app_id],
                body={
                    "type": "object",
                    "required": ["overlap_s"],
                    "properties": {
                        "overlap_s": {"type": "number", "minimum": 0, "maximum": 604800},
                        "secret": {"type": "string", "minLength": 32},
                    },
                },
                errors=(*COMMON_ERRORS, 409),
                operation_id="rotateAppSecret",
            )
        },
        "/admin/v1/callbacks": {
            "get": op(
                "callbacks by state (default failed)",
                admin,
                ADMIN_KEY_ONLY,
                {200: json_answer(list_of("callbacks", ref("Callback")))},
                params=[query("state", {"enum": ["pending", "delivered", "failed"]})],
                operation_id="listCallbacks",
            )
        },
        "/admin/v1/callbacks/{card_id}/{action_id}/retry": {
            "post": op(
                "send a failed callback again",
                admin,
                ADMIN_KEY_ONLY,
                {
                    200: json_answer(
                        {
                            "type": "object",
                            "required": ["card_id", "action_id", "state"],
                            "properties": {"card_id": STR, "action_id": STR, "state": STR},
                        }
                    )
                },
                params=[card_id, path_param("action_id", "the action's id")],
                operation_id="retryCallback",
            )
        },
        "/admin/v1/directory/sync": {
            "post": op(
                "sync the org directory from the HR system (NDJSON lines, streamed)",
                directory,
                ADMIN_KEY_ONLY,
                {
                    200: json_answer(
                        {"type": "object", "properties": {"mode": STR}, "required": ["mode"]}
                    )
                },
                params=[query("mode", {"enum": ["full", "incremental"]})],
                body={"type": "string", "description": "one JSON object per line (docs/admin.md)"},
                body_type="application/x-ndjson",
                operation_id="directorySync",
            )
        },
        "/admin/v1/units/{unit_id}": {
            "get": op(
                "a unit and its subtree (depth levels)",
                directory,
                ADMIN_OR_SCOPED,
                {200: json_answer(list_of("units", {"type": "object"}))},
                params=[unit_id, query("depth", {"type": "integer", "minimum": 0, "maximum": 10})],
                operation_id="getUnit",
            )
        },
        "/admin/v1/units/{unit_id}/members": {
            "get": op(
                "a unit's members, paged",
                directory,
                ADMIN_OR_SCOPED,
                {200: json_answer({"type": "object"})},
                params=[
                    unit_id,
                    query("recursive", {"type": "boolean"}),
                    query("after", {"type": "string"}),
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 5000}),
                ],
                operation_id="unitMembers",
            )
        },
        "/admin/v1/users/{user_id}": {
            "get": op(
                "a user's profile (masked without pii:read) and placements",
                directory,
                ADMIN_OR_SCOPED,
                {200: json_answer(obj_str("user"))},
                params=[path_param("user_id", "a user id")],
                operation_id="getUser",
            )
        },
        "/admin/v1/admins": {
            "post": op(
                "grant a user admin over a unit subtree",
                directory,
                ADMIN_OR_SCOPED,
                {201: json_answer(obj_str("user"), "granted")},
                body=ref("Grant"),
                operation_id="grantAdmin",
            ),
            "delete": op(
                "withdraw a user's admin grant",
                directory,
                ADMIN_OR_SCOPED,
                {200: json_answer(obj_str("user"))},
                body=ref("Grant"),
                operation_id="revokeAdmin",
            ),
        },
        "/admin/v1/whoami": {
            "get": op(
                "who the admin caller is and their scopes",
                directory,
                ADMIN_OR_SCOPED,
                {
                    200: json_answer(
                        {"type": "object", "required": ["super"], "properties": {"super": BOOL}}
                    )
                },
                operation_id="whoami",
            )
        },
        "/admin/v1/revoke": {
            "post": op(
                "sign a user (or one device) out everywhere",
                "identity",
                ADMIN_OR_SCOPED,
                {200: json_answer(obj_str("user"))},
                body={
                    "type": "object",
                    "required": ["user"],
                    "properties": {"user": ref("UserId"), "device": ref("UserId")},
                },
                operation_id="revokeUser",
            )
        },
        "/admin/v1/scopes": {
            "post": op(
                "grant a user scope (pii:read)",
                directory,
                ADMIN_KEY_ONLY,
                {200: json_answer(obj_str("user"))},
                body=ref("ScopeGrant"),
                operation_id="grantScope",
            ),
            "delete": op(
                "withdraw a user scope",
                directory,
                ADMIN_KEY_ONLY,
                {200: json_answer(obj_str("user"))},
                body=ref("ScopeGrant"),
                operation_id="revokeScope",
            ),
        },
        "/admin/v1/governance/report": {
            "get": op(
                "zombie, empty-shell and duplicate groups in your scope (JSON or CSV)",
                gov,
                ADMIN_OR_SCOPED,
                {
                    200: {
                        "description": "the report",
                        "content": {
                            "application/json": {"schema": {"type": "object"}},
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    }
                },
                params=[
                    query("format", {"enum": ["json", "csv"]}),
                    query("zombie_days", {"type": "integer"}),
                    query("empty_max_members", {"type": "integer"}),
                    query("duplicate_threshold", {"type": "number"}),
                    query("min_age_days", {"type": "integer"}),
                ],
                operation_id="governanceReport",
            )
        },
        "/admin/v1/governance/archive": {
            "post": op(
                "archive a group",
                gov,
                ADMIN_OR_SCOPED,
                {200: json_answer({"type": "object"})},
                body={
                    "type": "object",
                    "required": ["conv"],
                    "properties": {"conv": user_q, "reason": {"type": "string", "maxLength": 200}},
                },
                operation_id="governanceArchive",
            )
        },
        "/admin/v1/governance/merge": {
            "post": op(
                "merge one group into another",
                gov,
                ADMIN_OR_SCOPED,
                {200: json_answer({"type": "object"})},
                body={
                    "type": "object",
                    "required": ["source", "target"],
                    "properties": {"source": user_q, "target": user_q},
                },
                operation_id="governanceMerge",
            )
        },
    }


def _extra_schemas() -> dict[str, Any]:
    return {
        "UserRef": {
            "type": "string",
            "pattern": "^g:[A-Za-z0-9_-]{8,32}$",
            "description": "a group conversation id, g:...",
        },
        "UserId": {"type": "string", "pattern": USER_ID},
        "UnitId": {"type": "string", "pattern": UNIT_ID},
        "TokenRequest": {
            "type": "object",
            "required": ["user", "device"],
            "properties": {"user": ref("UserId"), "device": ref("UserId")},
        },
        "Grant": {
            "type": "object",
            "required": ["user", "unit"],
            "properties": {"user": ref("UserId"), "unit": ref("UnitId")},
        },
        "ScopeGrant": {
            "type": "object",
            "required": ["user", "scope"],
            "properties": {"user": ref("UserId"), "scope": {"enum": ["pii:read"]}},
        },
    }


#: Links: what one answer lets a client call next (schemathesis follows them).
CARD_LINKS: Final = {
    "GetCard": {
        "operationId": "getCard",
        "parameters": {"out_track_id": "$response.body#/out_track_id"},
        "description": "read the card just pushed",
    },
    "UpdateCard": {
        "operationId": "updateCard",
        "parameters": {"out_track_id": "$response.body#/out_track_id"},
        "description": "update the card just pushed",
    },
    "ActOnCard": {
        "operationId": "actOnCard",
        "parameters": {"card_id": "$response.body#/card_id"},
        "description": "a holder acts on the card just pushed",
    },
}


def _with_links(paths: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    for answer in paths["/api/v1/apps/cards"]["post"]["responses"].values():
        if "content" in answer and answer["content"]["application/json"]["schema"] == ref(
            "PushResult"
        ):
            answer["links"] = CARD_LINKS
    return paths


def build_spec() -> dict[str, Any]:
    """The whole description (deterministic: the same dict every call)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "imserver HTTP API",
            "version": VERSION,
            "description": (
                "Business systems (apps), users and administrators of imserver. Every error is"
                ' `{"error": {"code", "message", "field"?, "details"?}}` with a stable `code`.'
                " Apps sign every request (security scheme `appSignature` and its three"
                " companion headers: docs/cards.md). Every answer carries `X-Request-Id`."
                " The WebSocket protocol is in docs/protocol.md."
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "http://127.0.0.1:8701", "description": "make run"}],
        "paths": _with_links(_paths()) | plugin_paths(),
        "webhooks": webhooks(),
        "components": {
            "securitySchemes": security_schemes(),
            "schemas": schemas() | _extra_schemas() | webhook_schemas(),
            "headers": {
                "RequestId": {
                    "description": "this request's id (yours if you sent a valid one)",
                    "required": True,
                    "schema": {"type": "string"},
                }
            },
        },
    }
