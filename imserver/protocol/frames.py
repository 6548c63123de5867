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


def pong_frame(rid: RequestId) -> dict[str, Any]:
    return {"type": "pong", "id": rid}
