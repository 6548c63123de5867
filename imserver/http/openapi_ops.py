"""Building blocks of the OpenAPI description: one operation, its answers, parameters.

Shared by ``openapi.py`` (the core's routes) and ``openapi_plugins.py`` (the
routes plug-ins add: templates, stream mode, the dashboard).
"""

from __future__ import annotations

from typing import Any, Final

from imserver.request_context import HEADER as REQUEST_ID_HEADER

#: Error statuses any authenticated route may answer (with the error body).
COMMON_ERRORS: Final = (400, 401, 403, 404, 413, 429, 503)
_ERROR_TEXT: Final = {
    400: "bad input (`invalid_field`, `bad_request`, ...): nothing was changed",
    401: "not authenticated (`not_authenticated`, `token_invalid`, `bad_signature`, ...)",
    403: "authenticated but not allowed (`forbidden`, `out_of_scope`, `not_actor`, ...)",
    404: "no such thing (`no_such_card`, `no_such_app`, ...)",
    405: "`method_not_allowed`",
    409: "conflict (`version_conflict`, `card_decided`, `already_acted`, ...)",
    413: "`payload_too_large` / `file_too_large`",
    415: "`file_type_not_allowed`",
    429: "`rate_limited`: `Retry-After` header and `details.retry_after_ms`",
    503: "`store_unavailable` / `nonce_store_unavailable`: try again",
    507: "`storage_full`",
}


def error_answer(status: int) -> dict[str, Any]:
    return {
        "description": _ERROR_TEXT[status],
        "headers": {REQUEST_ID_HEADER: {"$ref": "#/components/headers/RequestId"}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def json_answer(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {
        "description": description,
        "headers": {REQUEST_ID_HEADER: {"$ref": "#/components/headers/RequestId"}},
        "content": {"application/json": {"schema": schema}},
    }


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def path_param(name: str, description: str, pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "minLength": 1}
    if pattern:
        schema["pattern"] = pattern
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


def query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}  # fmt: skip


def op(
    summary: str,
    tag: str,
    security: list[dict[str, list[str]]] | None,
    ok: dict[int, dict[str, Any]],
    *,
    body: dict[str, Any] | None = None,
    body_type: str = "application/json",
    params: list[dict[str, Any]] | None = None,
    errors: tuple[int, ...] = COMMON_ERRORS,
    description: str = "",
    example: Any = None,
    operation_id: str,
) -> dict[str, Any]:
    """One operation: its answers are ``ok`` plus the error body for each of ``errors``.

    ``example``: a request body that works (tests/integration/test_openapi_schemathesis.py
    sends each one to a real server), for integrators to start from.
    """
    out: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "parameters": [
            {
                "name": REQUEST_ID_HEADER,
                "in": "header",
                "required": False,
                "description": "your trace id (1-128 of A-Z a-z 0-9 . _ : -); else one is made",
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
            },
            *(params or []),
        ],
        "responses": {str(k): v for k, v in ok.items()}
        | {str(s): error_answer(s) for s in errors if s not in ok},
    }
    out["security"] = security if security is not None else []
    if description:
        out["description"] = description
    if body is not None:
        media: dict[str, Any] = {"schema": body}
        if example is not None:
            media["example"] = example
        out["requestBody"] = {"required": True, "content": {body_type: media}}
    return out


STR: Final = {"type": "string"}
BOOL: Final = {"type": "boolean"}


def obj_str(name: str) -> dict[str, Any]:
    return {"type": "object", "required": [name], "properties": {name: STR}}


def obj_bool(name: str) -> dict[str, Any]:
    return {"type": "object", "required": [name], "properties": {name: BOOL}}


def obj_count(name: str) -> dict[str, Any]:
    return {"type": "object", "required": [name], "properties": {name: {"type": "integer"}}}


def list_of(name: str, item: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": [name],
        "properties": {name: {"type": "array", "items": item}},
    }
