"""The request id a piece of work runs for, carried by a context variable.

Why a ``ContextVar``: an HTTP request's id must reach code far below the
route (the card decision it causes, the log lines it writes) without every
signature growing a parameter, and asyncio copies the context into each task
a request starts, so concurrent requests never see each other's id. The
callback dispatcher sets it again from the outbox entry, so the callback a
decision caused logs (and sends, as ``X-Request-Id``) the same id.
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar
from typing import Final

#: Header that carries the id in and out (requests, responses, callbacks).
HEADER: Final = "X-Request-Id"
#: What an incoming id may look like to be honoured (else one is generated):
#: 1-128 of letters, digits and ``._:-`` -- nothing that could split a log line.
REQUEST_ID_RE: Final = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

_current: ContextVar[str | None] = ContextVar("imserver_request_id", default=None)


def new_request_id() -> str:
    """A fresh id: 16 random bytes as hex (unguessable, fixed length)."""
    return secrets.token_hex(16)


def accepted_request_id(given: str | None) -> str:
    """``given`` if well formed (a caller's own trace id), else a new one."""
    if given is not None and REQUEST_ID_RE.fullmatch(given) is not None:
        return given
    return new_request_id()


def current_request_id() -> str | None:
    """The id of the request this code runs for, if any."""
    return _current.get()


def set_request_id(request_id: str | None) -> object:
    """Make ``request_id`` current; returns the token :func:`reset_request_id` takes."""
    return _current.set(request_id)


def reset_request_id(token: object) -> None:
    """Undo one :func:`set_request_id` (the token it returned)."""
    _current.reset(token)  # type: ignore[arg-type]
