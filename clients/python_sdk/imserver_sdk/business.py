"""Async HTTP client for business systems (apps) pushing message cards.

This is the app side of docs/cards.md: push a card, update it, read it back,
send a work notice. Every call is signed (see :mod:`imserver_sdk.signing`).
The client is deliberately thin - it does not validate cards, because the
server is the authority on the schema and answers ``400 invalid_field`` with
the offending path, which is more precise than anything a client could guess.

Usage::

    async with BusinessClient("http://127.0.0.1:8700", "oa", secret) as biz:
        res = await biz.push_card(card, users=["li", "wang"])
        await biz.update_card(card["out_track_id"], state="closed")
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from .errors import ImserverError, ProtocolError
from .signing import sign_request

if TYPE_CHECKING:  # stream.py imports this module; only the hints come from it
    from .stream import EventHandler, StreamHandler

__all__ = ["BusinessClient", "BusinessError"]

# Failures after which a request may or may not have reached the server. Only
# idempotent calls (push_card, thanks to out_track_id) are retried on them.
_RETRYABLE_EXCEPTIONS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    TimeoutError,
)
_BACKOFF_CAP_S = 5.0


class BusinessError(ImserverError):
    """The server refused an app request with a non-2xx status.

    ``code`` is the stable string from the JSON error body (``out_of_scope``,
    ``invalid_field``, ``version_conflict``, ``bad_signature``, ...) and is what
    callers should branch on; ``field`` names the offending path for
    ``invalid_field`` (e.g. ``card.actions[1].decision``). ``status`` is kept
    because some codes only make sense with it (401 vs 403). A body that is not
    the documented error shape (say, an HTML 502 from a proxy) still becomes a
    ``BusinessError`` with code ``unknown``, so callers need one ``except``.
    ``body`` holds the whole decoded error object for extra keys such as
    ``decided_by``.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str = "",
        field: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.body: dict[str, Any] = dict(body) if body is not None else {}
        text = f"{status} {code}"
        if message:
            text += f": {message}"
        if field:
            text += f" (field {field})"
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.status, self.code, self.message, self.field, self.body))

    @classmethod
    def from_response(cls, status: int, raw: bytes) -> BusinessError:
        """Build from a response body, tolerating anything that is not JSON.

        Leniency matters here: the error may come from a proxy or a crashed
        server rather than from imserver, and the caller should still get the
        status instead of a JSON decoding traceback.
        """
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        err = doc.get("error") if isinstance(doc, dict) else None
        if not isinstance(err, dict):
            text = raw[:200].decode("utf-8", "replace").strip()
            return cls(status, "unknown", text)
        code, message, field = err.get("code"), err.get("message"), err.get("field")
        return cls(
            status,
            code if isinstance(code, str) else "unknown",
            message if isinstance(message, str) else "",
            field if isinstance(field, str) else None,
            err,
        )


def _ids(values: Iterable[str], name: str) -> list[str]:
    """Materialize recipient ids, refusing a bare string.

    ``users="alice"`` would otherwise iterate into ``["a", "l", ...]`` and push
    to five nonexistent users - an easy mistake worth a TypeError.
    """
    if isinstance(values, str | bytes):
        raise TypeError(f"{name} must be an iterable of ids, not a single string")
    out = list(values)
    for v in out:
        if not isinstance(v, str):
            raise TypeError(f"{name} must contain strings, got {type(v).__name__}")
    return out


def _path_segment(value: str) -> str:
    """Percent-encode one path segment, including ``/``, ``.`` and ``..``.

    An ``out_track_id`` may legally be ``..`` (its alphabet includes ``.``);
    sent as is, URL normalization would turn ``/cards/..`` into ``/apps/`` and
    hit a different endpoint with a valid signature. Encoding the dots keeps
    the segment literal.
    """
    if not value:
        raise ValueError("path segment must not be empty")
    encoded = quote(value, safe="")
    if set(value) == {"."}:
        encoded = value.replace(".", "%2E")
    return encoded


class BusinessClient:
    """Signed HTTP client for one app (``app_id`` + ``secret``).

    Reuses one ``aiohttp.ClientSession`` (created lazily, so the client can be
    constructed outside a running loop); use it as an async context manager or
    call :meth:`close`. Connection failures surface as ``aiohttp.ClientError``
    or ``TimeoutError``; refusals as :class:`BusinessError`.

    Only :meth:`push_card` is retried (``retries`` extra attempts on
    connection errors and 5xx, with jittered exponential backoff starting at
    ``backoff_s``): pushing the same ``out_track_id`` again is answered with
    ``duplicate: true`` and delivers nothing, so a retry cannot double-deliver.
    Updates and notices are not idempotent and are never retried behind the
    caller's back.
    """

    def __init__(
        self,
        base_url: str,
        app_id: str,
        secret: str,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.app_id = app_id
        self._secret = secret
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        # Never show the secret.
        return f"BusinessClient({self.base_url!r}, app_id={self.app_id!r})"

    async def __aenter__(self) -> BusinessClient:
        self._get_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session; safe to call more than once."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._session

    # -- API -----------------------------------------------------------------

    async def push_card(
        self,
        card: Mapping[str, Any] | None = None,
        *,
        users: Iterable[str] = (),
        groups: Iterable[str] = (),
        template_id: str | None = None,
        template_version: int | None = None,
        variables: Mapping[str, str] | None = None,
        private: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Push ``card`` (or the app's template ``template_id`` with ``variables``).

        The answer is ``{"card_id", "out_track_id", "version", "state",
        "holders", "duplicate"}`` (with ``"template": {"template_id",
        "version"}`` for a push by template); ``duplicate: true`` means a card
        with this ``out_track_id`` already existed (for example because an
        earlier attempt did reach the server) and nothing was delivered.
        ``template_version`` pins a version (default: the latest).
        ``private`` is per-holder data: ``{user: {"fields": [{"label",
        "value"}], "status": {...}}}``, seen by that holder only.
        """
        if (card is None) == (template_id is None):
            raise TypeError("give either card or template_id")
        body: dict[str, Any] = {
            "to": {"users": _ids(users, "users"), "groups": _ids(groups, "groups")},
        }
        if card is not None:
            body["card"] = dict(card)
        else:
            body["template_id"] = template_id
            body["variables"] = dict(variables or {})
            if template_version is not None:
                body["template_version"] = template_version
        if private is not None:
            body["private"] = {user: dict(entry) for user, entry in private.items()}
        return await self._send("POST", "/api/v1/apps/cards", body, retries=self.retries)

    async def push_template_card(
        self,
        template_id: str,
        variables: Mapping[str, str],
        *,
        users: Iterable[str] = (),
        groups: Iterable[str] = (),
        template_version: int | None = None,
        private: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Push a card rendered from the app's template (see :meth:`push_card`)."""
        return await self.push_card(
            users=users,
            groups=groups,
            template_id=template_id,
            template_version=template_version,
            variables=variables,
            private=private,
        )

    async def put_template(self, template_id: str, template: Mapping[str, Any]) -> dict[str, Any]:
        """Register ``template`` (a card with ``{{var}}`` slots) as the next version.

        Returns ``{"template_id", "version", "template", "slots", "created_at",
        "created"}``; the same template as the latest version again makes no
        new version (``created: false``), so this is safe to retry.
        """
        return await self._send(
            "PUT",
            "/api/v1/templates/" + _path_segment(template_id),
            {"template": dict(template)},
            retries=self.retries,
        )

    async def get_template(self, template_id: str, version: int | None = None) -> dict[str, Any]:
        """A version of a template (default: the latest)."""
        query = "" if version is None else f"?version={int(version)}"
        return await self.request("GET", "/api/v1/templates/" + _path_segment(template_id) + query)

    async def list_templates(self) -> list[dict[str, Any]]:
        """The app's templates: ``{"template_id", "version" (latest), "slots", ...}`` each."""
        answer = await self.request("GET", "/api/v1/templates")
        templates: list[dict[str, Any]] = answer.get("templates", [])
        return templates

    async def preview_template(
        self,
        template_id: str,
        variables: Mapping[str, str],
        *,
        version: int | None = None,
        private: Mapping[str, Mapping[str, Any]] | None = None,
        viewer: str | None = None,
    ) -> dict[str, Any]:
        """The card view a holder would see for these variables; nothing is stored.

        Returns ``{"template_id", "version", "card": <view>}``; with
        ``private`` and ``viewer``, the view that holder gets.
        """
        body: dict[str, Any] = {"variables": dict(variables)}
        if version is not None:
            body["version"] = version
        if private is not None:
            body["private"] = {user: dict(entry) for user, entry in private.items()}
        if viewer is not None:
            body["viewer"] = viewer
        return await self.request(
            "POST", "/api/v1/templates/" + _path_segment(template_id) + "/preview", body
        )

    async def update_card(
        self, out_track_id: str, *, if_version: int | None = None, **changes: Any
    ) -> dict[str, Any]:
        """Replace the given card keys (``title``, ``fields``, ``state``, ...).

        Keys are passed through unchecked so new server-side fields work
        without an SDK release; an unknown key is the server's ``400`` to give.
        ``if_version`` makes the update conditional (``409 version_conflict``).
        Returns ``{"card_id", "version", "state"}``.
        """
        body: dict[str, Any] = dict(changes)
        if if_version is not None:
            body["if_version"] = if_version
        return await self.request(
            "PATCH", "/api/v1/apps/cards/" + _path_segment(out_track_id), body
        )

    async def get_card(self, out_track_id: str) -> dict[str, Any]:
        """Read a card back with unmasked fields, state, decisions and version."""
        return await self.request("GET", "/api/v1/apps/cards/" + _path_segment(out_track_id))

    async def send_notice(
        self,
        title: str,
        text: str,
        *,
        users: Iterable[str] = (),
        groups: Iterable[str] = (),
        urgent: bool = False,
    ) -> dict[str, Any]:
        """Send a work notice (``text`` is markdown).

        Returns ``{"notice_id", "recipients": n}``. ``urgent=True`` makes it a
        DING: see :meth:`notice_ding_status`.
        """
        body = {
            "to": {"users": _ids(users, "users"), "groups": _ids(groups, "groups")},
            "title": title,
            "text": text,
            "urgent": urgent,
        }
        return await self.request("POST", "/api/v1/apps/notices", body)

    async def notice_ding_status(self, notice_id: str) -> dict[str, Any]:
        """Who has and has not confirmed an urgent notice."""
        return await self.request("GET", f"/api/v1/apps/notices/{_path_segment(notice_id)}/ding")

    async def stream(
        self,
        handler: StreamHandler,
        *,
        on_event: EventHandler | None = None,
        previous_secret: str | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        """Receive this app's callbacks over an outbound WebSocket (stream mode).

        Runs until cancelled, reconnecting with backoff; ``handler`` is called
        once per ``action_id`` and its returned dict is the ``card_update``
        sent with the ack (see :class:`~imserver_sdk.stream.AppStream`, which
        this wraps; build one yourself to watch ``connected``).
        """
        from .stream import AppStream  # stream.py builds on this module

        await AppStream(
            self.base_url,
            self.app_id,
            self._secret,
            handler,
            on_event=on_event,
            previous_secret=previous_secret,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
        ).run()

    async def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Make one signed call and return the decoded JSON object.

        ``path`` is appended to ``base_url`` as is (it must already be
        percent-encoded). ``body`` is serialized to bytes exactly once and
        those bytes are both signed and sent; ``None`` sends an empty body.
        Raises :class:`BusinessError` on a non-2xx answer and
        :class:`ProtocolError` if a 2xx answer is not a JSON object.
        """
        return await self._send(method, path, body, retries=0)

    # -- internals -----------------------------------------------------------

    async def _send(
        self, method: str, path: str, body: Mapping[str, Any] | None, *, retries: int
    ) -> dict[str, Any]:
        if not path.startswith("/"):
            raise ValueError("path must start with '/'")
        payload = b"" if body is None else _encode(body)
        attempt = 0
        while True:
            try:
                return await self._once(method, path, payload, json_body=body is not None)
            except BusinessError as e:
                if e.status < 500 or attempt >= retries:
                    raise
            except _RETRYABLE_EXCEPTIONS:
                if attempt >= retries:
                    raise
            delay = min(_BACKOFF_CAP_S, self.backoff_s * 2**attempt)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            attempt += 1

    async def _once(
        self, method: str, path: str, payload: bytes, *, json_body: bool
    ) -> dict[str, Any]:
        # Signed per attempt: the server refuses a nonce it has seen, so a
        # retry must never reuse the previous attempt's headers.
        headers = sign_request(self.app_id, self._secret, payload)
        headers["Accept"] = "application/json"
        if json_body:
            headers["Content-Type"] = "application/json"
        url = URL(self.base_url + path, encoded=True)
        session = self._get_session()
        async with session.request(
            method, url, data=payload if json_body else None, headers=headers
        ) as resp:
            raw = await resp.read()
            status = resp.status
        if not 200 <= status < 300:
            raise BusinessError.from_response(status, raw)
        if not raw:
            return {}
        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise ProtocolError(f"{method} {path}: {status} answer is not JSON") from e
        if not isinstance(doc, dict):
            raise ProtocolError(f"{method} {path}: {status} answer is not a JSON object")
        return doc


def _encode(body: Mapping[str, Any]) -> bytes:
    """Serialize a request body compactly as UTF-8 JSON.

    ``ensure_ascii=False`` keeps Chinese text at 3 bytes per character instead
    of 6, which matters against the server's 32 KiB card limit.
    """
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
