"""The OpenAPI description of the routes added beside the core's: card templates,
stream mode and the operations dashboard.

Kept apart from ``openapi.py`` so each part stays readable; the description is
still one document (``build_spec``), checked against the router by
tests/unit/test_openapi_routes.py.
"""

from __future__ import annotations

from typing import Any

from imserver.http.openapi_ops import (
    COMMON_ERRORS,
    STR,
    json_answer,
    list_of,
    op,
    path_param,
    query,
)
from imserver.http.openapi_schemas import APP_SIGNED, Security

DASHBOARD_SESSION: Security = [{"dashboardSession": []}]
TEMPLATE = {
    "type": "object",
    "required": ["template_id", "version"],
    "properties": {"template_id": STR, "version": {"type": "integer"}},
}


def _html(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


def _redirect(to: str) -> dict[str, Any]:
    return {
        "description": f"redirect to {to}",
        "headers": {"Location": {"schema": {"type": "string"}}},
    }


def _template_paths() -> dict[str, dict[str, Any]]:
    template_id = path_param("template_id", "the app's template id")
    tag = "templates"
    return {
        "/api/v1/templates": {
            "get": op(
                "the app's templates (latest version of each)",
                tag,
                APP_SIGNED,
                {200: json_answer(list_of("templates", TEMPLATE))},
                operation_id="listTemplates",
            )
        },
        "/api/v1/templates/{template_id}": {
            "put": op(
                "register a new version of a template (a card document with {{var}} slots)",
                tag,
                APP_SIGNED,
                {
                    201: json_answer(TEMPLATE, "a new version"),
                    200: json_answer(TEMPLATE, "the same as the latest version"),
                },
                params=[template_id],
                body={"type": "object", "description": "docs/cards.md 'Templates'"},
                errors=(*COMMON_ERRORS, 409),
                operation_id="putTemplate",
            ),
            "get": op(
                "a template, latest or ?version=",
                tag,
                APP_SIGNED,
                {200: json_answer(TEMPLATE)},
                params=[template_id, query("version", {"type": "integer", "minimum": 1})],
                operation_id="getTemplate",
            ),
        },
        "/api/v1/templates/{template_id}/preview": {
            "post": op(
                "render a template with sample variables as a client would see it (stores nothing)",
                tag,
                APP_SIGNED,
                {200: json_answer(TEMPLATE)},
                params=[template_id],
                body={
                    "type": "object",
                    "properties": {
                        "variables": {"type": "object"},
                        "version": {"type": "integer", "minimum": 1},
                        "private": {"type": "object"},
                        "viewer": STR,
                    },
                },
                operation_id="previewTemplate",
            )
        },
    }


def _stream_paths() -> dict[str, dict[str, Any]]:
    return {
        "/api/v1/stream": {
            "get": op(
                "stream mode: a WebSocket the app opens to receive its callbacks and events",
                "stream mode",
                APP_SIGNED,
                {101: {"description": "switching to the WebSocket (docs/cards.md 'Stream mode')"}},
                description=(
                    "Signed like any app request over the empty body. Refusals are the"
                    " usual JSON errors before the upgrade; a request without the"
                    " WebSocket upgrade headers is a 400."
                ),
                operation_id="appStream",
            )
        }
    }


def _dashboard_paths() -> dict[str, dict[str, Any]]:
    tag = "dashboard"
    data = {200: json_answer({"type": "object"})}

    def api(summary: str, operation_id: str, **extra: Any) -> dict[str, Any]:
        return op(
            summary,
            tag,
            DASHBOARD_SESSION,
            data,
            errors=(400, 401, 403, 404, 429, 503),
            operation_id=operation_id,
            **extra,
        )

    unit = query("unit", {"type": "string", "maxLength": 128}, "drill down to this unit")
    return {
        "/dashboard": {
            "get": op(
                "to /dashboard/",
                tag,
                None,
                {302: _redirect("/dashboard/")},
                errors=(),
                operation_id="dashboardRoot",
            )
        },
        "/dashboard/": {
            "get": op(
                "the dashboard page (a visitor without a session goes to the login form)",
                tag,
                None,
                {200: _html("the page"), 302: _redirect("/dashboard/login")},
                errors=(),
                operation_id="dashboardPage",
            )
        },
        "/dashboard/login": {
            "get": op(
                "the login form",
                tag,
                None,
                {200: _html("the form")},
                errors=(),
                operation_id="dashboardLoginPage",
            ),
            "post": op(
                "log in with the admin key or a scoped admin's user token; sets the cookie",
                tag,
                None,
                {200: json_answer({"type": "object"})},
                body={
                    "type": "object",
                    "required": ["credential"],
                    "properties": {"credential": {"type": "string", "minLength": 1}},
                },
                operation_id="dashboardLogin",
            ),
        },
        "/dashboard/logout": {
            "post": api("end the session (X-CSRF-Token)", "dashboardLogout"),
        },
        "/dashboard/api/session": {"get": api("who is logged in, the CSRF token", "dashSession")},
        "/dashboard/api/units": {
            "get": api("work per org unit (cards, todo)", "dashUnits", params=[unit])
        },
        "/dashboard/api/callbacks": {"get": api("callback outbox per app", "dashCallbacks")},
        "/dashboard/api/overview": {"get": api("the tiles' numbers", "dashOverview")},
        "/dashboard/api/live": {"get": api("this node's live numbers", "dashLive")},
        "/dashboard/api/stream": {
            "get": op(
                "the live feed (server-sent events) of the same answers",
                tag,
                DASHBOARD_SESSION,
                {200: {"description": "events", "content": {"text/event-stream": {"schema": {}}}}},
                params=[unit],
                errors=(400, 401, 403, 429, 503),
                operation_id="dashStream",
            )
        },
        "/dashboard/static/{filename}": {
            "get": op(
                "the dashboard's scripts, styles and charting library (served from the package)",
                tag,
                None,
                {200: {"description": "the file", "content": {"*/*": {"schema": {}}}}},
                params=[path_param("filename", "a file of the dashboard's static folder")],
                errors=(404,),  # no such file: the usual error object (dashboard/routes.py)
                operation_id="dashboardStatic",
            )
        },
        "/dashboard/api/callbacks/{card_id}/{action_id}/retry": {
            "post": api(
                "the retry button (operator's key session, X-CSRF-Token)",
                "dashRetry",
                params=[path_param("card_id", "card id"), path_param("action_id", "action id")],
            )
        },
    }


def plugin_paths() -> dict[str, dict[str, Any]]:
    """Every path outside the core's: templates, stream mode, the dashboard."""
    return _template_paths() | _stream_paths() | _dashboard_paths()
