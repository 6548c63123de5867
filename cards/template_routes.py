"""The signed app routes for card templates (docs/cards.md, "Templates").

``PUT /api/v1/templates/{id}`` registers a version, ``GET`` reads the latest
(or ``?version=``), ``GET /api/v1/templates`` lists, ``POST .../preview``
renders with sample variables and stores nothing. Signatures, nonces and the
app budget are the core's (``signed_app``); the rules are ``TemplateService``'s.
"""

from __future__ import annotations

from aiohttp import web

from cards.template_service import TemplateService
from imserver.http.api import json_response
from imserver.http.apps_api import signed_app

TEMPLATES = web.AppKey("templates", TemplateService)


async def put_template(request: web.Request) -> web.Response:
    app, body = await signed_app(request)
    answer, created = await request.app[TEMPLATES].register(
        app, request.match_info["template_id"], body
    )
    return json_response(answer, status=201 if created else 200)


async def get_template(request: web.Request) -> web.Response:
    app, _ = await signed_app(request)
    return json_response(
        await request.app[TEMPLATES].get(
            app, request.match_info["template_id"], request.query.get("version")
        )
    )


async def list_templates(request: web.Request) -> web.Response:
    app, _ = await signed_app(request)
    return json_response(await request.app[TEMPLATES].list_all(app))


async def preview_template(request: web.Request) -> web.Response:
    app, body = await signed_app(request)
    return json_response(
        await request.app[TEMPLATES].preview(app, request.match_info["template_id"], body)
    )


def add_template_routes(app: web.Application, templates: TemplateService) -> None:
    """Add the template routes to the core's HTTP app."""
    app[TEMPLATES] = templates
    r = app.router
    r.add_put("/api/v1/templates/{template_id}", put_template)
    r.add_get("/api/v1/templates/{template_id}", get_template)
    r.add_get("/api/v1/templates", list_templates)
    r.add_post("/api/v1/templates/{template_id}/preview", preview_template)
