"""Values that cross the store boundary. Immutable; no SQL, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from imserver.directory.model import SyncOp
from imserver.directory.search_rank import Tier

ROLE_OWNER = "owner"
ROLE_ADMIN = "admin"
ROLE_MEMBER = "member"


@dataclass(slots=True, frozen=True)
class Message:
    conv: str
    seq: int
    sender: str
    device: str
    kind: str
    body: dict[str, Any]
    ts: int
    client_msg_id: str | None
    recalled: bool = False

    def to_wire(self) -> dict[str, Any]:
        """The message object of docs/protocol.md section 5."""
        return {
            "conv": self.conv,
            "seq": self.seq,
            "sender": self.sender,
            "device": self.device,
            "kind": self.kind,
            "body": self.body,
            "ts": self.ts,
            "client_msg_id": self.client_msg_id,
            "recalled": self.recalled,
        }


@dataclass(slots=True, frozen=True)
class NewMessage:
    """A message before the store has given it a ``seq``."""

    conv: str
    sender: str
    device: str
    kind: str
    body: dict[str, Any]
    ts: int
    client_msg_id: str | None = None
    #: DING: recipients who must confirm, stored with the message itself.
    ding_to: tuple[str, ...] = ()
    ding_next_at: int | None = None  # first re-notification
    card_id: str | None = None  # the card this message delivers, for DING status


@dataclass(slots=True, frozen=True)
class AppendResult:
    message: Message
    duplicate: bool


@dataclass(slots=True, frozen=True)
class Conversation:
    id: str
    kind: str  # "dm" | "group"
    name: str
    owner: str | None
    last_seq: int
    created_at: int
    archived: bool = False


@dataclass(slots=True, frozen=True)
class Member:
    user: str
    role: str
    read_seq: int


@dataclass(slots=True, frozen=True)
class ReadCursor:
    """A member's read cursor after a ``read``; ``moved`` is false if it stayed put."""

    seq: int
    moved: bool
    before: int = 0  # the cursor before this ``read`` (app events: which messages it passed)


@dataclass(slots=True, frozen=True)
class ConvState:
    """One conversation as one member sees it."""

    conv: str
    kind: str
    name: str
    last_seq: int
    read_seq: int
    role: str
    member_count: int


@dataclass(slots=True, frozen=True)
class FileMeta:
    id: str
    size: int
    mime: str
    created_at: int


@dataclass(slots=True, frozen=True)
class MembershipChange:
    """Membership edits applied atomically together with their system notice."""

    add: tuple[tuple[str, str], ...] = ()  # (user, role)
    remove: tuple[str, ...] = ()
    set_roles: tuple[tuple[str, str], ...] = ()  # (user, role)
    rename: str | None = None
    archive: bool = False


@dataclass(slots=True, frozen=True)
class AppRecord:
    """A business system allowed to push cards and notices."""

    app_id: str
    name: str
    secret: str
    callback_url: str
    scope: tuple[str, ...]  # "*", "user:<id>", "group:<conv>", "unit:<id>"
    permissions: tuple[str, ...] = ()  # "tokens": may issue user tokens (an identity app)
    # A secret rotation's overlap (docs/admin.md): requests signed with the
    # secret before it still verify until ``previous_secret_until`` (Unix ms);
    # "" / 0 when there is none. Callbacks are always signed with ``secret``.
    previous_secret: str = ""
    previous_secret_until: int = 0
    #: App events it subscribed to (docs/cards.md "App events"); none by default.
    events: tuple[str, ...] = ()

    def secrets_valid_at(self, now_ms: int) -> tuple[str, ...]:
        """Secrets a request signed now may use: the current one, then the old one in overlap."""
        if self.previous_secret and now_ms < self.previous_secret_until:
            return (self.secret, self.previous_secret)
        return (self.secret,)


@dataclass(slots=True, frozen=True)
class StoredApp:
    """An app with its registration times, for the admin listing (never sent with secrets)."""

    app: AppRecord
    created_at: int  # Unix ms; for apps stored before schema 9, their last change before it
    updated_at: int


@dataclass(slots=True, frozen=True)
class CardRecord:
    id: str
    app_id: str
    out_track_id: str
    version: int
    gseq: int  # global change order: sync hands out cards changed after a cursor
    doc: dict[str, Any]
    approval: dict[str, Any]  # serialised cards.policy.ApprovalState
    callback: str  # "none" (no callback owed yet) | "pending" | "ok" | "failed"
    created_at: int
    updated_at: int


@dataclass(slots=True, frozen=True)
class NewCard:
    id: str
    app_id: str
    doc: dict[str, Any]
    approval: dict[str, Any]
    pending: tuple[str, ...]  # users for whom the card is a todo
    holders: tuple[str, ...]  # users who hold it by a row of their own (card_holders)
    now: int
    timers: tuple[tuple[str, int], ...] = ()  # (kind, fire_at)
    #: A broadcast conversation (``b:``) whose members hold the card too, without a
    #: row each: one event to 1,000 people writes no 1,000 rows keyed by user.
    audience: str = ""


@dataclass(slots=True, frozen=True)
class CardChange:
    """A new version of a card, saved only if the card is still at ``expected_version``."""

    card_id: str
    expected_version: int
    doc: dict[str, Any]
    approval: dict[str, Any]
    callback: str
    pending: tuple[str, ...]
    now: int
    outbox: OutboxEntry | None = None
    timers: tuple[tuple[str, int], ...] | None = None  # None: keep; else replace pending ones
    audit: AuditEntry | None = None  # recorded in the same transaction
    #: People who receive the card with this version (转交 / 加签 to a non-holder):
    #: their holder row, notice conversation and card message, in the same transaction.
    new_holders: tuple[NewHolder, ...] = ()


@dataclass(slots=True, frozen=True)
class NewHolder:
    """A user who becomes a holder of a card: ``message`` goes to ``notice_conv``."""

    user: str
    message: NewMessage
    notice_conv: tuple[str, str, str]  # (conv, user, name), created if absent


@dataclass(slots=True, frozen=True)
class AuditEntry:
    actor: str
    action: str
    target: str
    details: dict[str, Any]


@dataclass(slots=True, frozen=True)
class OutboxEntry:
    app_id: str
    card_id: str  # for an app event about a notice: the notice id
    action_id: str  # an app event's ``event_id``
    payload: dict[str, Any]
    kind: str = "action"  # "action" (a card-action callback) | "event" (an app event)


@dataclass(slots=True, frozen=True)
class OutboxItem:
    id: int
    app_id: str
    card_id: str
    action_id: str
    payload: dict[str, Any]
    state: str  # "pending" | "delivered" | "failed"
    attempts: int
    next_at: int
    last_error: str
    kind: str = "action"  # "action" | "event" (see ``OutboxEntry``)


@dataclass(slots=True, frozen=True)
class Timer:
    id: int
    card_id: str
    kind: str  # "remind" | "overdue" | "escalate"
    fire_at: int


@dataclass(slots=True, frozen=True)
class DingDue:
    conv: str
    seq: int
    user: str
    notified: int


@dataclass(slots=True, frozen=True)
class DingStatus:
    sender: str
    confirmed: list[str]
    unconfirmed: list[str]


# -- identity ----------------------------------------------------------------
ALL_DEVICES = "*"
"""The device of a revocation that covers every device of the user."""


@dataclass(slots=True, frozen=True)
class RefreshUse:
    """What presenting a refresh token found."""

    user: str
    device: str
    outcome: str  # "ok" | "expired" | "reused" (an already used token: likely stolen)

    @classmethod
    def of(cls, user: str, device: str, expires_at: int, used: bool, now: int) -> RefreshUse:
        """What presenting a stored token (``used`` before or not) at ``now`` finds.

        Anything but "reused" marks the token used: each token works once.
        """
        if used:
            return cls(user, device, "reused")
        return cls(user, device, "expired" if expires_at <= now else "ok")


# -- directory ---------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class MemberProfile:
    """A member as the directory stores them; ``profile`` is as stored (maybe sealed)."""

    user: str
    name: str
    profile: dict[str, str]
    digest: str


SyncBatch: TypeAlias = list[tuple[int, SyncOp, dict[str, str] | None, str]]
"""Directory sync lines applied in one transaction: ``(line, op, stored_profile, digest)``."""


@dataclass(slots=True, frozen=True)
class UnitMemberRow:
    user: str
    name: str
    unit: str
    title: str
    leader: bool
    path: str = ""


# -- address book ------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class PersonRow:
    """An active person as stored; ``profile`` may be sealed, ``placements``
    are ``(unit id, unit name, title, leader)`` in path order."""

    user: str
    name: str
    profile: dict[str, str]
    placements: tuple[tuple[str, str, str, bool], ...]


@dataclass(slots=True, frozen=True)
class SearchHit:
    tier: Tier
    key: str
    user: str


LastHit: TypeAlias = tuple[Tier, str, str]
"""The ``(tier, key, user)`` of the last hit a people search returned: the next page
starts after it."""


@dataclass(slots=True, frozen=True)
class ChangeRow:
    """One entry of the directory change log: ``kind`` is ``"unit"`` or ``"member"``."""

    kind: str
    id: str
    seq: int
