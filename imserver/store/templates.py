"""Card templates as the store keeps them: the value and the interface both backends implement.

A template is an app's card with ``{{var}}`` slots, kept once per version so a
push pinned to an old version renders exactly what it rendered before. The
store only numbers and keeps versions; what a template may hold is decided by
``cards/templates.py`` before it is stored (``imserver/`` never imports ``cards/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from imserver.errors import TooManyTemplates


@dataclass(slots=True, frozen=True)
class TemplateRecord:
    """One stored version of an app's template."""

    app_id: str
    template_id: str
    version: int  # 1, 2, ... per (app_id, template_id)
    template: dict[str, Any]  # the card with ``{{var}}`` slots, as registered
    slots: tuple[str, ...]  # the variable names it uses, sorted
    created_at: int  # ms


@dataclass(slots=True, frozen=True)
class TemplateSummary:
    """A template in a listing: its latest version and how many there are."""

    template_id: str
    latest: int
    slots: tuple[str, ...]  # of the latest version
    created_at: int  # of version 1, ms
    updated_at: int  # of the latest version, ms


class TemplateStore(Protocol):
    async def put_template(
        self,
        app_id: str,
        template_id: str,
        template: dict[str, Any],
        slots: tuple[str, ...],
        now: int,
        limit: int = 1000,
    ) -> tuple[TemplateRecord, bool]:
        """Store ``template`` as the next version; ``(record, created)``.

        When it equals the latest version (template and slots), nothing is
        stored and that version comes back with ``created`` false, so a
        retried registration does not make a version of its own. A new
        template id when the app has ``limit`` of them, or a version past
        ``limit``, raises ``TooManyTemplates`` and stores nothing: a signed app
        cannot fill the store with templates.
        """
        ...

    async def get_template(
        self, app_id: str, template_id: str, version: int | None = None
    ) -> TemplateRecord | None:
        """``version`` of the app's template (``None``: the latest), or ``None``."""
        ...

    async def list_templates(self, app_id: str) -> list[TemplateSummary]:
        """The app's templates, by ``template_id``."""
        ...


def check_template_room(
    app_id: str, template_id: str, ids: int, latest_version: int | None, limit: int
) -> None:
    """Refuse a new template id past ``limit`` ids, or a version past ``limit`` versions."""
    if latest_version is None and ids >= limit:
        raise TooManyTemplates(
            f"app {app_id} has {ids} templates, the most allowed (cards.max_templates)",
            field="template_id",
            details={"limit": limit},
        )
    if latest_version is not None and latest_version >= limit:
        raise TooManyTemplates(
            f"template {template_id!r} has {latest_version} versions, the most allowed"
            " (cards.max_templates)",
            field="template_id",
            details={"limit": limit},
        )
