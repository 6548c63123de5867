"""Card templates: a card with ``{{var}}`` slots, checked once, rendered per push.

Pure: no I/O. A template is the card JSON an app already sends (docs/cards.md
section 3) with slots in its *string values*. Rendering walks the parsed JSON
and substitutes inside each string in one pass, so a variable's value can never
become a key, a list item or another slot: ``{"title": "{{t}}"}`` with
``t = '", "x": "'`` is a title holding those characters, and a value holding
``{{other}}`` stays that literal text. The rendered card then goes through
``parse_card`` exactly like a card pushed whole (sizes and limits included).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from cards.model import parse_card
from imserver.config import CardsConfig
from imserver.errors import InvalidField

SLOT_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]{0,31})\s*\}\}")
TEMPLATE_ID_RE = re.compile(r"[a-z0-9_-]{1,64}")
MAX_SLOTS = 64
MAX_VARIABLE_CHARS = 8000  # as long as the longest card string (body_md)


def _fail(path: str, why: str) -> InvalidField:
    return InvalidField(f"{path}: {why}", field=path)


def check_template_id(value: str) -> str:
    """``value`` if it is a template id (1-64 of a-z 0-9 _ -), else ``InvalidField``."""
    if TEMPLATE_ID_RE.fullmatch(value) is None:
        raise _fail("template_id", "must be 1-64 of a-z 0-9 _ -")
    return value


def _slots_of_string(value: str, path: str) -> list[str]:
    names = SLOT_RE.findall(value)
    rest = SLOT_RE.sub("", value)
    if "{{" in rest or "}}" in rest:
        raise _fail(path, "has a malformed slot: write {{name}}, name 1-32 of A-Z a-z 0-9 _")
    return names


def find_slots(value: Any, path: str = "template") -> tuple[str, ...]:
    """The slot names in ``value``'s string values, sorted; ``InvalidField`` for a slot in a key."""
    found: set[str] = set()

    def walk(v: Any, p: str) -> None:
        if isinstance(v, dict):
            for key, item in v.items():
                if "{{" in key or "}}" in key:
                    raise _fail(f"{p}.{key}", "a slot may only be in a string value, not in a key")
                walk(item, f"{p}.{key}")
        elif isinstance(v, list):
            for i, item in enumerate(v):
                walk(item, f"{p}[{i}]")
        elif isinstance(v, str):
            found.update(_slots_of_string(v, p))

    walk(value, path)
    return tuple(sorted(found))


def render(template: Any, variables: dict[str, str]) -> Any:
    """``template`` with every slot in its string values replaced by its variable.

    One pass per string: replaced text is never scanned again. Every slot must
    have a variable (``check_variables`` makes sure of it first).
    """
    if isinstance(template, dict):
        return {key: render(item, variables) for key, item in template.items()}
    if isinstance(template, list):
        return [render(item, variables) for item in template]
    if isinstance(template, str):
        return SLOT_RE.sub(lambda m: variables[m.group(1)], template)
    return template


def sample_variables(slots: tuple[str, ...]) -> dict[str, str]:
    """A distinct short value per slot that fits every id and user-id rule.

    Used to prove at registration that a template renders to a valid card:
    distinct, so two actor slots do not look like one repeated approver.
    """
    return {name: f"s{i}" for i, name in enumerate(slots)}


def check_template(value: Any, limits: CardsConfig) -> tuple[dict[str, Any], tuple[str, ...]]:
    """``(template, slots)`` if ``value`` is a template that renders to a valid card.

    The template itself must fit ``cards.max_card_bytes`` as JSON; rendered with
    sample values it must pass ``parse_card`` (errors name ``template.<path>``).
    Slots in fields with fixed values (``decision``, ``color``, ...) therefore
    fail here, as do numbers and booleans, which have no slots.
    """
    if not isinstance(value, dict):
        raise _fail("template", "must be an object (a card with {{var}} slots)")
    size = len(orjson.dumps(value))
    if size > limits.max_card_bytes:
        raise _fail("template", f"is {size} bytes as JSON; the limit is {limits.max_card_bytes}")
    slots = find_slots(value)
    if len(slots) > MAX_SLOTS:
        raise _fail("template", f"has {len(slots)} slots; at most {MAX_SLOTS}")
    parse_card(render(value, sample_variables(slots)), limits, path="template")
    return value, slots


def check_variables(value: Any, slots: tuple[str, ...], path: str = "variables") -> dict[str, str]:
    """The push's variables: one string per slot, no others."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _fail(path, "must be an object of variable name to string")
    for name, v in value.items():
        if name not in slots:
            raise _fail(f"{path}.{name}", "is not a slot of this template")
        if not isinstance(v, str):
            raise _fail(f"{path}.{name}", "must be a string")
        if len(v) > MAX_VARIABLE_CHARS:
            raise _fail(f"{path}.{name}", f"must be at most {MAX_VARIABLE_CHARS} characters")
    missing = [name for name in slots if name not in value]
    if missing:
        raise _fail(f"{path}.{missing[0]}", f"is missing (the template has {{{{{missing[0]}}}}})")
    return dict(value)


def render_card(
    template: dict[str, Any],
    slots: tuple[str, ...],
    variables: Any,
    limits: CardsConfig,
) -> dict[str, Any]:
    """The normalised card a push by template makes, or ``InvalidField`` naming the path."""
    values = check_variables(variables, slots)
    return parse_card(render(template, values), limits)
