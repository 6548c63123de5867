"""The HTTP port's listener: connection caps, a request-head deadline, JSON parse errors.

Why not plain ``web.TCPSite``: aiohttp has no timeout for reading a request
head (its old ``slow_request_timeout`` is gone). Its keep-alive timer does
close a connection that has not finished a request — in recent releases
also one that never sent its first (aio-libs/aiohttp#13681; present in the
3.14.5 this was written against) — but only after ``keepalive_timeout``,
whose default is an hour, and it has no cap on open connections at all. So
each connection is served by :class:`GuardedRequestHandler`, aiohttp's own
handler plus:

* a cap on open connections, in total and per source address
  (:class:`~imserver.connection_limits.ConnectionLimiter`), checked when the
  socket connects; over it, ``503 too_many_connections`` and close;
* a deadline, ``http.header_timeout_s`` after connecting, for the first
  request head; missed: ``408 request_timeout`` (if it sent anything) and
  close. Later requests on the connection are bounded by aiohttp's
  ``keepalive_timeout`` (``http.keepalive_timeout_s``), which closes a
  connection whose next request has not fully arrived that long after the
  previous response;
* errors aiohttp answers before any route runs (a malformed request line,
  headers too long) get the JSON error body instead of aiohttp's text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest

from imserver.config import HttpConfig
from imserver.connection_limits import ConnectionLimiter, closing_response, peer_ip
from imserver.errors import RequestTimeout
from imserver.http.api import error_for_status, error_response
from imserver.metrics import Metrics

#: The end of a request head; a bare-LF form too, so a lenient parse is never cut off.
_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's per-connection protocol, with a connection cap and a head deadline."""

    __slots__ = (
        "_deadline",
        "_header_timeout_s",
        "_ip",
        "_limiter",
        "_on_refused",
        "_tail",
        "_timer_loop",
    )

    def __init__(
        self,
        manager: web.Server,
        *,
        loop: asyncio.AbstractEventLoop,
        limiter: ConnectionLimiter,
        header_timeout_s: float,
        on_refused: Callable[[str], None],
        **options: Any,
    ) -> None:
        super().__init__(manager, loop=loop, **options)
        self._limiter = limiter
        #: Called with the error code of every refusal or cut-off (for metrics).
        self._on_refused = on_refused
        self._header_timeout_s = header_timeout_s
        self._timer_loop = loop
        #: Source address of an admitted connection; None: refused, or closed.
        self._ip: str | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ip = peer_ip(transport)
        refusal = self._limiter.admit(ip)
        if refusal is not None:
            self._on_refused(refusal.code)
            # Never handed to aiohttp: no parser, no task, nothing to clean up.
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(closing_response(refusal))
            transport.close()
            return
        self._ip = ip
        super().connection_made(transport)
        self._deadline = self._timer_loop.call_later(self._header_timeout_s, self._head_too_slow)

    def data_received(self, data: bytes) -> None:
        if self._ip is None:
            return
        if self._deadline is not None and self._ends_head(data):
            self._deadline.cancel()
            self._deadline = None
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._ip is None:
            return
        self._limiter.release(self._ip)
        self._ip = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The JSON error shape for what aiohttp refuses before routing (and logs)."""
        plain = super().handle_error(request, status, exc, message)
        resp = error_response(error_for_status(status, plain.reason))
        resp.force_close()
        return resp

    def _ends_head(self, data: bytes) -> bool:
        window = self._tail + data
        self._tail = window[-3:]
        return any(end in window for end in _HEAD_ENDS)

    def _head_too_slow(self) -> None:
        self._deadline = None
        self._on_refused(RequestTimeout.code)
        transport = self.transport
        # A socket that sent nothing (a browser's pre-connect, say) is just
        # closed: an unasked-for response could be read as the answer to a
        # request it is sending at that moment.
        started = bool(self._tail)
        if started and isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(
                closing_response(
                    RequestTimeout(f"request head not received within {self._header_timeout_s:g} s")
                )
            )
        self.force_close()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections are :class:`GuardedRequestHandler` s."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, config: HttpConfig, metrics: Metrics
    ) -> None:
        super().__init__(runner, backlog=config.listen_backlog)
        self._host = host
        self._port = port
        self._config = config
        self._refused = metrics.connections_refused
        self.limiter = ConnectionLimiter(config.max_connections, config.max_connections_per_ip)

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        manager = self._runner.server
        assert manager is not None, "runner.setup() first"
        loop = asyncio.get_running_loop()
        cfg = self._config

        def handler() -> GuardedRequestHandler:
            return GuardedRequestHandler(
                manager,
                loop=loop,
                limiter=self.limiter,
                header_timeout_s=cfg.header_timeout_s,
                on_refused=lambda code: self._refused.labels("http", code).inc(),
                keepalive_timeout=cfg.keepalive_timeout_s,
                access_log=None,
            )

        self._server = await loop.create_server(
            handler, self._host, self._port, backlog=self._backlog
        )
