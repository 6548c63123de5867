"""Exception types raised by the SDK.

The hierarchy is small on purpose: callers branch on *what kind of failure*
happened (the server refused a request, the connection went away, the bytes on
the wire made no sense), and for server refusals on the stable ``code`` string
from protocol section 6 - never on human-readable messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "ClientClosed",
    "CodecError",
    "ImserverError",
    "ProtocolError",
    "ServerError",
]


class ImserverError(Exception):
    """Base class so callers can catch every SDK failure with one ``except``."""


class ServerError(ImserverError):
    """The server answered a request with an ``error`` frame.

    ``code`` is the stable machine-readable string (``not_member``,
    ``token_expired``, ...); ``field`` names the offending field for
    ``invalid_field``-style errors and is ``None`` otherwise. The server
    guarantees an error leaves no partial change behind, so it is always safe
    to inspect ``code`` and decide whether to retry.
    """

    def __init__(
        self,
        code: str,
        message: str = "",
        field: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.field = field
        #: Machine-readable extras, e.g. ``{"retry_after_ms": 150}`` on ``rate_limited``.
        self.details: dict[str, Any] = dict(details) if details else {}
        text = f"{code}: {message}" if message else code
        if field:
            text += f" (field {field})"
        super().__init__(text)

    @classmethod
    def from_frame(cls, frame: Mapping[str, Any]) -> ServerError:
        """Build from a decoded ``error`` frame, tolerating missing/odd fields.

        Being lenient here matters: a malformed error frame should still surface
        as a ``ServerError`` to the waiting caller rather than crash the reader.
        """
        code = frame.get("code")
        message = frame.get("message")
        field = frame.get("field")
        details = frame.get("details")
        return cls(
            code if isinstance(code, str) else "unknown",
            message if isinstance(message, str) else "",
            field if isinstance(field, str) else None,
            details if isinstance(details, Mapping) else None,
        )

    @property
    def retry_after_s(self) -> float | None:
        """The server's retry hint in seconds (``details.retry_after_ms``), if it gave one."""
        value = self.details.get("retry_after_ms")
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            return None
        return float(value) / 1000.0

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the exception picklable (e.g. across multiprocessing in tests).
        return (type(self), (self.code, self.message, self.field, self.details or None))


class ClientClosed(ImserverError):
    """The connection closed (or was never open) while a request needed it.

    ``code`` is the WebSocket close code last seen from the server (protocol
    section 7), ``None`` if there never was a connection. Callers use it to tell
    "replaced by another login" (4010) from "auth failed" (4002) from an
    ordinary drop that the client will recover from by itself.
    """

    def __init__(self, code: int | None, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        text = f"connection closed (code {code})" if code is not None else "not connected"
        if reason:
            text += f": {reason}"
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.reason))


class ProtocolError(ImserverError):
    """The server did something the protocol does not allow.

    Raised e.g. when the server does not accept the requested subprotocol for
    MessagePack, in which case carrying on would only produce ``bad_frame``
    errors for every request.
    """


class CodecError(ImserverError, ValueError):
    """A frame could not be encoded or decoded.

    Also a ``ValueError`` so generic input-validation handlers catch it.
    """
