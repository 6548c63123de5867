"""The outermost HTTP middleware: a request id for every request, and its timing.

Every request gets an id -- the caller's ``X-Request-Id`` when well formed,
else a new one -- made current for everything the request runs
(``imserver.request_context``) and echoed in the response's
``X-Request-Id``. The card decision a request causes carries it into its
outbox entry, and the callback is sent with it, so one grep ties the three
together. The same middleware observes ``imserver_http_request_seconds`` by
route template (a bounded label: never the raw path).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from imserver.metrics import Metrics
from imserver.request_context import (
    HEADER,
    accepted_request_id,
    reset_request_id,
    set_request_id,
)

log = logging.getLogger("imserver.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Load-balancer probes and Prometheus scrapes: logged at DEBUG, not on every hit.
QUIET_ROUTES = frozenset({"/healthz", "/metrics"})
#: Methods named in the latency label; anything else is ``other`` (bounded).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_label(request: web.Request) -> str:
    """The matched route's template (``/api/v1/apps/cards/{out_track_id}``), or ``unmatched``."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def request_id_middleware(metrics: Metrics) -> Middleware:
    """The middleware, observing into ``metrics`` (outermost: before the errors one)."""
    histogram = metrics.http_requests

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await _handle(request, handler, histogram)

    return middleware


async def _handle(request: web.Request, handler: Handler, histogram: Any) -> web.StreamResponse:
    """Bind the request id, answer with it, log and time the request."""
    request_id = accepted_request_id(request.headers.get(HEADER))
    token = set_request_id(request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers[HEADER] = request_id
        return response
    except web.HTTPException as e:  # redirects and the like pass through the errors middleware
        status = e.status
        e.headers[HEADER] = request_id
        raise
    finally:
        elapsed = time.perf_counter() - started
        route = route_label(request)
        method = request.method if request.method in METHODS else "other"
        histogram.labels(method, route, f"{status // 100}xx").observe(elapsed)
        log.log(
            logging.DEBUG if route in QUIET_ROUTES else logging.INFO,
            "%s %s -> %d in %.1f ms",
            request.method,
            request.path,
            status,
            elapsed * 1000,
            extra={"http_method": request.method, "route": route, "status": status},
        )
        reset_request_id(token)
