"""The classified-content guard at every door where text comes in (严禁传输涉密信息).

Messages, group names, file names and the name of a file message, text
files (recognised by content, whatever their Content-Type), cards (every
string a person reads, ``body_md`` also as rendered), notices and the reason
an administrator gives for archiving a group pass through
:meth:`ContentPolicy.check` before anything is stored. A hit is
refused with ``classified_content`` (naming the mark, so the person knows
why) and the attempt is written to the audit log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from imserver.audit_trail import AuditTrail
from imserver.dlp import ClassifiedGuard, DlpMatch, markdown_visible_text
from imserver.errors import ClassifiedContent


class ContentPolicy:
    """The one place that applies the guard, so every door refuses and audits alike."""

    def __init__(self, guard: ClassifiedGuard | None, trail: AuditTrail) -> None:
        self._guard = guard  # None: the check is switched off in config
        self._trail = trail

    async def check(
        self,
        actor: str,
        where: str,
        target: str,
        texts: Iterable[str],
        *,
        markdown: Iterable[str] = (),
    ) -> None:
        """Refuse (and audit) if any of ``texts`` or ``markdown`` carries a mark.

        ``texts`` are shown as plain text by clients and are matched as
        written (after :func:`imserver.dlp.normalise`). ``markdown`` are
        fields clients render (a card's ``body_md``, a notice's text), so each
        is matched both as written and as a reader sees it, markup and
        entities undone.
        """
        if self._guard is None:
            return
        guard = self._guard
        found = guard.scan_many(texts)
        if found is None:
            found = next(filter(None, map(guard.scan_markdown, markdown)), None)
        if found is not None:
            await self._refuse(actor, where, target, found)

    async def check_file(self, actor: str, target: str, path: Path) -> None:
        """Scan a stored text file (in a thread: it may be megabytes).

        The caller decides *whether* a file is text (by content, see
        :func:`imserver.services.files.looks_like_text`); this reads it in
        whichever encoding it decodes in (:meth:`ClassifiedGuard.scan_bytes`).
        """
        if self._guard is None:
            return
        guard = self._guard
        found = await asyncio.to_thread(lambda: guard.scan_bytes(path.read_bytes()))
        if found is not None:
            await self._refuse(actor, "file.content", target, found)

    async def _refuse(self, actor: str, where: str, target: str, found: DlpMatch) -> None:
        await self._trail.record(
            actor,
            "dlp.refused",
            target,
            {"where": where, "mark": found.mark, "text": found.text[:64]},
        )
        raise ClassifiedContent(
            f"内容含密级标志“{found.text[:32]}”，本系统严禁传输涉密信息"
            f" (content carries the classification mark {found.mark}; refused)",
            details={"mark": found.mark},
        )


def card_texts(doc: dict[str, Any]) -> list[str]:
    """Every string a person would read on a card.

    ``body_md`` is markdown the client renders, so it is given twice: as
    written and as read (:func:`markdown_visible_text`), which is what
    ``机**密**★1年`` or ``机&#23494;★1年`` look like on screen.
    """
    body_md = doc.get("body_md", "")
    texts = [doc.get("title", ""), body_md, markdown_visible_text(body_md)]
    texts += [x for f in doc.get("fields", []) for x in (f["label"], f["value"])]
    if doc.get("status"):
        texts.append(doc["status"]["text"])
    texts += [a["label"] for a in doc.get("actions", [])]
    for i in doc.get("inputs", []):
        texts.append(i["label"])
        texts += [x for o in i.get("options", []) for x in (o["value"], o["label"])]
    return [t for t in texts if t]
