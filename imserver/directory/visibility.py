"""What an ordinary user may see of the address book (通讯录). Pure.

The rule (docs/protocol.md "Address book"): an address book exists to be
browsed, so every signed-in user sees every *active* person's name, units,
titles and leader flags across the whole tree, and the non-sensitive contact
fields (e-mail, office phone). The sensitive ones -- mobile phone and ID
number (``SENSITIVE_PROFILE_KEYS``) -- are masked (``138****1234``) unless
the viewer holds the ``pii:read`` scope or is looking at themself. People a
sync removed (disabled) are not shown at all: the store never returns them.
Units carry no visibility flag today, so every unit is visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imserver.directory.model import SENSITIVE_PROFILE_KEYS
from imserver.masking import mask


@dataclass(slots=True, frozen=True)
class Viewer:
    """Who is looking: their user id, and whether they hold ``pii:read``."""

    user: str
    pii_read: bool


@dataclass(slots=True, frozen=True)
class Placement:
    """One of a person's units, as the address book shows it."""

    unit: str
    unit_name: str
    title: str
    leader: bool


def person_view(
    viewer: Viewer,
    user: str,
    name: str,
    placements: list[Placement],
    profile: dict[str, str],
) -> dict[str, Any]:
    """The one place that decides what ``viewer`` sees of an active person."""
    reveal = viewer.pii_read or viewer.user == user
    return {
        "user": user,
        "name": name,
        "units": [
            {"id": p.unit, "name": p.unit_name, "title": p.title, "leader": p.leader}
            for p in placements
        ],
        "profile": {
            key: value if reveal or key not in SENSITIVE_PROFILE_KEYS else mask(value)
            for key, value in sorted(profile.items())
        },
    }
