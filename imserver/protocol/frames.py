"""Builders for server → client frames, and the close codes.

Frames are plain dicts until a codec encodes them; keeping their shape in one
place is what lets ``docs/protocol.md`` promise it.
"""

from __future__ import annotations

from typing import Any

from imserver.errors import ImError
from imserver.protocol.requests import RequestId

# Close codes (docs/protocol.md section 7).
CLOSE_NORMAL = 1000
CLOSE_INTERNAL = 1011
CLOSE_RESTARTING = 1012
CLOSE_AUTH_TIMEOUT = 4001
CLOSE_AUTH_FAILED = 4002
CLOSE_AUTH_REQUIRED = 4003
CLOSE_SLOW_CONSUMER = 4008
CLOSE_REPLACED = 4010
CLOSE_IDLE_TIMEOUT = 4011
CLOSE_REVOKED = 4012
CLOSE_TOKEN_EXPIRED = 4013  # the session's token passed expires_at + leeway; re-auth in time
CLOSE_RATE_FLOOD = 4014  # kept sending while rate limited (see gateway.server FLOOD_REFUSALS)


def result_frame(rid: RequestId, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "result", "id": rid, "data": data}


def error_frame(rid: RequestId, err: ImError) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "error",
        "id": rid,
        "code": err.code,
        "message": err.message,
        "field": err.field,
    }
    if err.details:
        frame["details"] = err.details
    return frame


def event_frame(event: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "event", "event": event, "data": data}


def auth_expiring_frame(expires_at_ms: int) -> dict[str, Any]:
    """Tells a client its token is about to run out, while it can still re-``auth``."""
    return event_frame("auth.expiring", {"expires_at": expires_at_ms})


def pong_frame(rid: RequestId) -> dict[str, Any]:
    return {"type": "pong", "id": rid}
