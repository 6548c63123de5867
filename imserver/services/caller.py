"""Who is asking: the authenticated user and device behind a request."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Caller:
    user: str
    device: str
