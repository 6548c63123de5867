"""The cards plug-in's HTTP routes: signed app routes (cards, notices), act over
HTTP, todo, and the admin callback routes.

The composition root calls ``add_routes`` after the core's ``add_app_routes``:
app signatures, nonces and app budgets are the core's (``signed_app``); what
the routes do with a card is ``CardService``'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web

from cards.service import CardService, FullStore
from cards.template_routes import add_template_routes
from cards.template_service import TemplateService
from imserver.errors import InvalidField, NoSuchCallback
from imserver.http.api import (
    SIGNER,
    TRAIL,
    json_response,
    parse_json,
    require_admin_key,
    user_claims,
)
from imserver.http.apps_api import signed_app
from imserver.services.caller import Caller

CARDS = web.AppKey("cards", CardService)
CARD_STORE: web.AppKey[FullStore] = web.AppKey("card_store")
WAKE: web.AppKey[Callable[[], None]] = web.AppKey("wake_callbacks")


async def push_card(request: web.Request) -> web.Response:
    app, body = await signed_app(request)
    result = await request.app[CARDS].push(app, body)
    return json_response(result, status=200 if result["duplicate"] else 201)


async def update_card(request: web.Request) -> web.Response:
    app, body = await signed_app(request)
    result = await request.app[CARDS].update(app, request.match_info["out_track_id"], body)
    return json_response(result)


async def get_card(request: web.Request) -> web.Response:
    app, _ = await signed_app(request)
    return json_response(
        await request.app[CARDS].get_for_app(app, request.match_info["out_track_id"])
    )


async def send_notice(request: web.Request) -> web.Response:
    app, body = await signed_app(request)
    return json_response(await request.app[CARDS].notice(app, body), status=201)


async def notice_ding(request: web.Request) -> web.Response:
    app, _ = await signed_app(request)
    return json_response(
        await request.app[CARDS].notice_ding_status(app, request.match_info["notice_id"])
    )


async def _caller(request: web.Request) -> Caller:
    claims = await user_claims(request, request.app[SIGNER])
    return Caller(claims.user, claims.device)


async def act(request: web.Request) -> web.Response:
    caller = await _caller(request)
    body = parse_json(await request.read())
    if not isinstance(body, dict):
        raise InvalidField("body must be a JSON object", field="body")
    action, action_id = body.get("action"), body.get("action_id")
    if not isinstance(action, str) or not 1 <= len(action) <= 32:
        raise InvalidField("'action' must be the id of one of the card's actions", field="action")
    if not isinstance(action_id, str) or not 1 <= len(action_id) <= 64:
        raise InvalidField("'action_id' must be a string of 1-64 characters", field="action_id")
    result = await request.app[CARDS].act(
        caller,
        request.match_info["card_id"],
        action,
        action_id,
        body.get("inputs"),
        body.get("target"),
    )
    return json_response(result)


async def todo(request: web.Request) -> web.Response:
    caller = await _caller(request)
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise InvalidField("'limit' must be an integer", field="limit") from None
    if not 1 <= limit <= 200:
        raise InvalidField("'limit' must be 1-200", field="limit")
    return json_response(await request.app[CARDS].todo(caller, limit))


async def admin_list_callbacks(request: web.Request) -> web.Response:
    require_admin_key(request)
    state = request.query.get("state", "failed")
    if state not in ("pending", "delivered", "failed"):
        raise InvalidField("'state' must be pending, delivered or failed", field="state")
    items = await request.app[CARD_STORE].list_callbacks(state, 500)
    return json_response(
        {
            "callbacks": [
                {
                    "card_id": i.card_id,
                    "action_id": i.action_id,
                    "app_id": i.app_id,
                    "kind": i.kind,  # "action" or "event" (action_id is then the event_id)
                    "state": i.state,
                    "attempts": i.attempts,
                    "last_error": i.last_error,
                }
                for i in items
            ]
        }
    )


async def admin_retry_callback(request: web.Request) -> web.Response:
    require_admin_key(request)
    store = request.app[CARD_STORE]
    item = await store.get_callback(request.match_info["card_id"], request.match_info["action_id"])
    if item is None:
        raise NoSuchCallback("no such callback")
    await store.retry_callback(item.id, int(time.time() * 1000))
    await request.app[TRAIL].record(
        "admin-key", "admin.callback_retry", item.card_id, {"action_id": item.action_id}
    )
    if item.kind == "action":  # an app event never touches the card's callback status
        await request.app[CARDS].set_callback_state(item.card_id, "pending")
    request.app[WAKE]()
    return json_response({"card_id": item.card_id, "action_id": item.action_id, "state": "pending"})


def add_routes(
    app: web.Application,
    cards: CardService,
    store: FullStore,
    wake_callbacks: Callable[[], None],
) -> None:
    """Add the card routes to the core's HTTP app (after ``add_app_routes``)."""
    app[CARDS] = cards
    app[CARD_STORE] = store
    app[WAKE] = wake_callbacks
    r = app.router
    r.add_post("/api/v1/apps/cards", push_card)
    r.add_patch("/api/v1/apps/cards/{out_track_id}", update_card)
    r.add_get("/api/v1/apps/cards/{out_track_id}", get_card)
    r.add_post("/api/v1/apps/notices", send_notice)
    r.add_get("/api/v1/apps/notices/{notice_id}/ding", notice_ding)
    r.add_post("/api/v1/cards/{card_id}/act", act)
    r.add_get("/api/v1/todo", todo)
    r.add_get("/admin/v1/callbacks", admin_list_callbacks)
    r.add_post("/admin/v1/callbacks/{card_id}/{action_id}/retry", admin_retry_callback)
    add_template_routes(app, TemplateService(store, cards))  # docs/cards.md, Templates
