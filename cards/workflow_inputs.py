"""What an OA workflow act carries besides its button: the ``target``, and link URLs.

``parse_target`` reads the ``target`` object of a ``card.act`` (WebSocket) or
``POST /api/v1/cards/<id>/act`` (HTTP) against the button's kind: 转交 names a
user, 加签 a user (and, on a sequential card, ``before`` / ``after``), 退回 to a
step its index. Anything else is ``invalid_field`` naming ``target.<key>``.
Whether the step exists, or the user is already an approver, is the state
machine's to say (``cards.policy``): that can change between two acts.
Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Any

from cards.policy import (
    ADD_SIGNER,
    DECISION,
    POSITIONS,
    RETURN,
    SEQUENTIAL,
    TO_INITIATOR,
    TO_STEP,
    TRANSFER,
    Target,
)
from imserver.errors import InvalidField
from imserver.protocol.fields import is_user_id

MAX_URL_CHARS = 2000
# http(s) only, lowercase scheme, a host without user info, no spaces, control
# characters or backslashes (browsers read ``\`` as ``/``). docs/card.schema.json
# has the same rule.
URL_RE = re.compile(r"https?://[^\x00-\x20\x7f/?#@\\]+(?:[/?#][^\x00-\x20\x7f\\]*)?")


def _fail(path: str, why: str) -> InvalidField:
    return InvalidField(f"{path}: {why}", field=path)


def link_url(value: Any, path: str) -> str:
    """A link button's URL: ``http://`` or ``https://`` only (no ``javascript:``)."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_URL_CHARS:
        raise _fail(path, f"must be a URL of 1-{MAX_URL_CHARS} characters")
    if URL_RE.fullmatch(value) is None:
        raise _fail(path, "must be an http:// or https:// URL with a host, without spaces")
    return value


def _allowed(kind: str, spec: dict[str, Any], policy_type: str | None) -> tuple[str, ...]:
    if kind == TRANSFER:
        return ("user",)
    if kind == ADD_SIGNER:
        return ("user", "position") if policy_type == SEQUENTIAL else ("user",)
    if kind == RETURN and spec.get("to") == TO_STEP:
        return ("step",)
    return ()


def parse_target(doc: dict[str, Any], spec: dict[str, Any], value: Any) -> Target | None:
    """The act's ``target`` for button ``spec`` of card ``doc`` (None when it takes none)."""
    kind = spec.get("kind", DECISION)
    raw = {} if value is None else value
    if not isinstance(raw, dict):
        raise _fail("target", "must be an object")
    policy_type = (doc.get("policy") or {}).get("type")
    allowed = _allowed(kind, spec, policy_type)
    for key in raw:
        if key not in allowed:
            raise _fail(f"target.{key}", f"is not used by a {kind} action")
    if kind in (TRANSFER, ADD_SIGNER):
        user = raw.get("user")
        if not is_user_id(user):
            raise _fail("target.user", "must be the user id to hand the step to")
        position = None
        if "position" in allowed:
            position = raw.get("position")
            if position not in POSITIONS:
                raise _fail("target.position", "must be before or after")
        return Target(user=user, position=position)
    if kind == RETURN:
        if spec.get("to") != TO_STEP:
            return Target(to=TO_INITIATOR)
        step = raw.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            raise _fail("target.step", "must be the index of an earlier step (an integer)")
        return Target(to=TO_STEP, step=step)
    return None


def target_to_json(t: Target | None) -> dict[str, Any] | None:
    if t is None:
        return None
    pairs = (("user", t.user), ("position", t.position), ("step", t.step), ("to", t.to))
    return {k: v for k, v in pairs if v is not None}


def target_from_json(data: dict[str, Any] | None) -> Target | None:
    if data is None:
        return None
    return Target(
        user=data.get("user"),
        position=data.get("position"),
        step=data.get("step"),
        to=data.get("to"),
    )
