"""Admin API for group governance (工作群组治理): report, archive, merge."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from imserver.errors import InvalidField, NoSuchConversation
from imserver.governance import GovernanceRules, classify, to_csv, to_json
from imserver.http.admin_auth import AdminContext, admin_of
from imserver.http.api import TRAIL, json_response, read_json_object
from imserver.services.groups import GroupService
from imserver.store.base import GovernanceStore

GROUPS = web.AppKey("groups", GroupService)
GOVERNANCE_STORE: web.AppKey[GovernanceStore] = web.AppKey("governance_store")


def _scope(ctx: AdminContext) -> list[str] | None:
    return None if ctx.super else [u.path for u in ctx.scopes]


def rules_from(query: Any) -> GovernanceRules:
    """Report thresholds from query parameters (or CLI options), with defaults."""

    def number(name: str, cast: Any, default: Any) -> Any:
        raw = query.get(name)
        if raw is None:
            return default
        try:
            return cast(raw)
        except ValueError:
            raise InvalidField(f"'{name}' must be a number", field=name) from None

    d = GovernanceRules()
    try:
        return GovernanceRules(
            zombie_days=number("zombie_days", int, d.zombie_days),
            empty_max_members=number("empty_max_members", int, d.empty_max_members),
            duplicate_threshold=number("duplicate_threshold", float, d.duplicate_threshold),
            min_age_days=number("min_age_days", int, d.min_age_days),
        )
    except ValueError as e:
        raise InvalidField(str(e), field="rules") from None


async def report(request: web.Request) -> web.StreamResponse:
    """Zombie, empty-shell and duplicate groups inside the caller's scope."""
    ctx = await admin_of(request)
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise InvalidField("'format' must be json or csv", field="format")
    rules = rules_from(request.query)
    groups = await request.app[GOVERNANCE_STORE].group_stats(_scope(ctx))
    findings = classify(groups, int(time.time() * 1000), rules)
    if fmt == "csv":
        return web.Response(
            body=to_csv(findings).encode("utf-8"),
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": 'attachment; filename="group-governance.csv"'},
        )
    return json_response({"groups": len(groups), "findings": to_json(findings)})


async def _in_scope(request: web.Request, ctx: AdminContext, conv: Any, field: str) -> str:
    if not isinstance(conv, str) or not conv.startswith("g:"):
        raise InvalidField(f"'{field}' must be a group id", field=field)
    if not ctx.super:
        visible = {g.conv for g in await request.app[GOVERNANCE_STORE].group_stats(_scope(ctx))}
        if conv not in visible:
            raise NoSuchConversation(f"no group {conv} in your scope")
    return conv


async def archive(request: web.Request) -> web.Response:
    ctx = await admin_of(request)
    # The shared reader: an empty, non-JSON or non-object body is a 400, not a 500.
    body = await read_json_object(request)
    conv = await _in_scope(request, ctx, body.get("conv"), "conv")
    reason = body.get("reason", "governance")
    if not isinstance(reason, str) or len(reason) > 200:
        raise InvalidField("'reason' must be a string of at most 200 characters", field="reason")
    actor = ctx.user or "admin-key"
    result = await request.app[GROUPS].archive(actor, conv, reason)
    await request.app[TRAIL].record(actor, "governance.archive", conv, {"reason": reason})
    return json_response(result)


async def merge(request: web.Request) -> web.Response:
    ctx = await admin_of(request)
    body = await read_json_object(request)
    source = await _in_scope(request, ctx, body.get("source"), "source")
    target = await _in_scope(request, ctx, body.get("target"), "target")
    actor = ctx.user or "admin-key"
    result = await request.app[GROUPS].merge(actor, source, target)
    await request.app[TRAIL].record(actor, "governance.merge", source, {"target": target})
    return json_response(result)


def add_governance_routes(app: web.Application) -> None:
    app.router.add_get("/admin/v1/governance/report", report)
    app.router.add_post("/admin/v1/governance/archive", archive)
    app.router.add_post("/admin/v1/governance/merge", merge)
