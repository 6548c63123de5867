"""The storage interface services depend on.

Services speak in domain terms (``append_message``, ``messages_after``,
``set_read_cursor``); SQL lives only in the implementations. Every method that
changes more than one row does so atomically.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from imserver.directory.model import Unit
from imserver.governance import GroupStats
from imserver.store.dashboard_records import AppOutbox, DingCounts, UnitCardCounts
from imserver.store.records import (
    AppendResult,
    AppRecord,
    AuditEntry,
    CardChange,
    CardRecord,
    Conversation,
    ConvState,
    DingDue,
    DingStatus,
    FileMeta,
    Member,
    MemberProfile,
    MembershipChange,
    Message,
    NewCard,
    NewMessage,
    OutboxEntry,
    OutboxItem,
    ReadCursor,
    StoredApp,
    Timer,
)


class DocProtector(Protocol):
    """Seals and opens the protected fields of a card's document (field encryption).

    Why an interface here: each backend's card store calls it on the way in
    and out, and the key handling (``field_protection.py``) must not know
    which backend it serves.
    """

    def seal_doc(self, card_id: str, doc: dict[str, Any]) -> dict[str, Any]: ...

    def open_doc(self, card_id: str, doc: dict[str, Any]) -> dict[str, Any]: ...


class Rotator(Protocol):
    """Re-seals one stored value with the active key; ``None``: already under it."""

    def rotate_profile(self, user: str, stored: dict[str, str]) -> dict[str, str] | None: ...

    def rotate_doc(self, card_id: str, doc: dict[str, Any]) -> dict[str, Any] | None: ...


class Store(Protocol):
    async def open(self) -> None:
        """Connect and apply pending schema migrations."""

    async def close(self) -> None: ...

    # -- users ---------------------------------------------------------------
    async def upsert_users(self, users: Iterable[tuple[str, str]], now: int) -> int:
        """Create or rename users given as ``(id, display name)``; returns how many."""

    async def existing_users(self, ids: Iterable[str]) -> set[str]: ...

    # -- conversations -------------------------------------------------------
    async def get_conversation(self, conv: str) -> Conversation | None: ...

    async def ensure_dm(self, conv: str, a: str, b: str, now: int) -> Conversation:
        """The 1:1 conversation ``conv`` between ``a`` and ``b``, created if absent."""

    async def create_group(
        self, conv: str, name: str, owner: str, members: Iterable[str], notice: NewMessage
    ) -> Message:
        """Create the group, its members and its first (system) message at once."""

    async def change_group(
        self, conv: str, change: MembershipChange, notice: NewMessage, max_members: int
    ) -> Message:
        """Apply ``change`` and append ``notice`` in one transaction.

        Raises ``TooManyMembers`` (nothing applied) if the group would exceed
        ``max_members``.
        """

    async def members(self, conv: str) -> list[Member]: ...

    async def member_role(self, conv: str, user: str) -> str | None: ...

    async def conversations_of(self, user: str) -> list[ConvState]: ...

    # -- messages ------------------------------------------------------------
    async def append_message(
        self, new: NewMessage, create_dm: tuple[str, str] | None = None
    ) -> AppendResult:
        """Give ``new`` the conversation's next seq and store it durably.

        With ``create_dm``, the 1:1 conversation between those two users is
        created first if absent — in the same transaction, and only when the
        message is not a duplicate, so a refused or repeated send creates nothing.

        The sender must be a member (``NotMember`` otherwise, nothing stored).
        A repeated ``(sender, client_msg_id)`` returns the original message
        with ``duplicate=True`` and stores nothing. The sender's read cursor
        moves to the new seq.
        """

    async def messages_after(self, conv: str, after_seq: int, limit: int) -> list[Message]: ...

    async def messages_before(self, conv: str, before_seq: int | None, limit: int) -> list[Message]:
        """Up to ``limit`` messages with seq < ``before_seq`` (newest if None), ascending."""

    async def get_message(self, conv: str, seq: int) -> Message | None: ...

    async def recall_message(self, conv: str, seq: int, notice: NewMessage) -> Message:
        """Erase the target's body, mark it recalled and append ``notice`` at once."""

    # -- read cursors --------------------------------------------------------
    async def set_read_cursor(self, conv: str, user: str, seq: int) -> int:
        """Move the cursor forward to ``min(seq, last_seq)``; return the cursor."""

    async def move_read_cursor(self, conv: str, user: str, seq: int) -> ReadCursor:
        """``set_read_cursor``, also telling whether the cursor moved.

        ``moved`` is decided atomically with the write, so of two devices
        reading the same message at once exactly one sees it move (and only
        that one's ``read`` emits an event).
        """

    # -- files ---------------------------------------------------------------
    async def record_file(self, meta: FileMeta, uploader: str) -> None: ...

    async def get_file(self, file_id: str) -> FileMeta | None: ...

    async def file_visible_to(self, file_id: str, user: str) -> bool:
        """True if ``user`` uploaded the file or it was sent where they are a member."""


class CardStore(Protocol):
    """Apps, cards, todo rows and the callback outbox (see ``SqliteCardsMixin``)."""

    async def upsert_app(self, app: AppRecord, now: int, audit: AuditEntry | None = None) -> None:
        """Register or replace ``app`` (with ``audit`` in the same transaction, if given)."""

    async def get_app(self, app_id: str) -> AppRecord | None: ...

    async def list_apps(self) -> list[StoredApp]: ...

    async def delete_app(self, app_id: str, now: int, audit: AuditEntry) -> bool:
        """Remove the app and append ``audit`` in one transaction; False if none."""

    async def rotate_app_secret(
        self, app_id: str, secret: str, previous_until: int, now: int, audit: AuditEntry
    ) -> bool:
        """New secret; the old one valid until ``previous_until``; audited; False if none."""

    async def create_card(
        self, card: NewCard, messages: list[NewMessage], notice_convs: list[tuple[str, str, str]]
    ) -> tuple[CardRecord, list[Message], bool]:
        """Store a card, its holders, todo rows and delivery messages at once.

        ``notice_convs`` are ``(conv, user, name)`` to create if absent. If the
        app already has a card with this ``out_track_id``, nothing is written
        and the existing card comes back with ``True`` (a duplicate).
        """

    async def get_card(self, card_id: str) -> CardRecord | None: ...

    async def get_card_by_track(self, app_id: str, out_track_id: str) -> CardRecord | None: ...

    async def cards_by_ids(self, ids: Iterable[str]) -> dict[str, CardRecord]: ...

    async def save_card(self, change: CardChange) -> CardRecord | None: ...

    async def save_card_holders(
        self, change: CardChange
    ) -> tuple[CardRecord, list[Message]] | None:
        """``save_card``, and the card messages stored for ``change.new_holders``.

        A user who already held the card gets no second message.
        """
        ...

    async def set_card_callback(
        self, card_id: str, state: str, expected_version: int
    ) -> CardRecord | None:
        """Record the callback delivery status at the card's current version.

        Not a new version: the callback told the app the version its decision
        made, and the app's ``if_version`` must keep matching it. The card's
        ``gseq`` moves, so ``sync`` hands the new status out. ``None`` (nothing
        written) if the card is gone or no longer at ``expected_version``.
        """

    async def card_holders(self, card_id: str) -> list[str]: ...

    async def cards_changed_for(
        self, user: str, after_gseq: int, limit: int
    ) -> list[CardRecord]: ...

    async def todo_cards(self, user: str, limit: int) -> tuple[list[CardRecord], int]:
        """Pending cards for ``user``, soonest deadline first (none last); and the total."""

    async def deliver_notice(
        self, messages: list[NewMessage], notice_convs: list[tuple[str, str, str]], now: int
    ) -> list[Message]: ...

    async def claim_callbacks(self, now: int, lease_ms: int, limit: int) -> list[OutboxItem]: ...

    async def next_callback_due(self) -> int | None: ...

    async def finish_callback(
        self, item_id: int, *, state: str, attempts: int, next_at: int, error: str
    ) -> None: ...

    async def get_callback(self, card_id: str, action_id: str) -> OutboxItem | None: ...

    async def list_callbacks(self, state: str, limit: int) -> list[OutboxItem]: ...

    async def pending_callbacks(self, card_id: str) -> int: ...

    async def retry_callback(self, item_id: int, now: int) -> None: ...

    async def enqueue_events(self, entries: Sequence[OutboxEntry], now: int) -> int:
        """App events (``kind="event"``) into the outbox, due ``now``; returns how many were new.

        An entry whose (card id, ``event_id``) is already there is skipped, so a
        deterministic ``event_id`` makes enqueueing the same event twice a no-op.
        """
        ...


class DeadlineStore(Protocol):
    """Card timers and DING confirmations (see ``SqliteDeadlinesMixin``)."""

    async def claim_timers(self, now: int, lease_ms: int, limit: int) -> list[Timer]: ...

    async def finish_timer(
        self, timer_id: int, events: Sequence[OutboxEntry] = (), now: int = 0
    ) -> None:
        """Mark the timer fired; ``events`` (app events it caused) join the outbox in the
        same transaction, due ``now`` (as :meth:`CardStore.enqueue_events` would)."""
        ...

    async def next_timer_due(self) -> int | None: ...

    async def add_card_holder(
        self, card_id: str, user: str, message: NewMessage, notice_conv: tuple[str, str, str]
    ) -> Message | None:
        """Give ``user`` the card (escalation); None if they already held it."""
        ...

    async def confirm_ding(self, conv: str, seq: int, user: str, now: int) -> str | None:
        """Record the confirmation; the DING's sender, or None if there was nothing to confirm."""
        ...

    async def ding_status(self, conv: str, seq: int) -> DingStatus | None: ...

    async def card_ding_status(
        self, card_id: str, sender: str | None = None
    ) -> tuple[list[str], list[str]]:
        """(confirmed, unconfirmed) users of the DING rows of a card or notice id."""
        ...

    async def due_dings(self, now: int, lease_ms: int, limit: int) -> list[DingDue]:
        """Unconfirmed DINGs due at ``now``, held ``lease_ms`` by a store several nodes share."""
        ...

    async def next_ding_due(self) -> int | None: ...

    async def ding_renotified(
        self, conv: str, seq: int, user: str, notified: int, next_at: int | None
    ) -> None: ...


class AdminDirectoryStore(Protocol):
    """What the admin API reads and changes of the directory (``http/admin_auth.py``,
    ``http/directory_api.py``): profiles, admin grants, user scopes."""

    async def member_profile(self, user: str) -> MemberProfile | None: ...

    async def units_by_ids(self, ids: Iterable[str]) -> dict[str, Unit]: ...

    async def admin_scopes(self, user: str) -> list[Unit]:
        """The units (with their current paths) ``user`` administers."""

    async def grant_admin(self, user: str, unit: str, now: int) -> None: ...

    async def revoke_admin(self, user: str, unit: str) -> bool: ...

    async def set_scope(self, user: str, scope: str, granted: bool, now: int) -> bool: ...

    async def users_with_scope(self, users: Iterable[str], scope: str) -> set[str]: ...


class GovernanceStore(Protocol):
    """The facts group governance classifies (``http/governance_api.py``)."""

    async def group_stats(self, scope_paths: list[str] | None) -> list[GroupStats]:
        """Every live group whose unit is inside ``scope_paths`` (``None``: every group)."""


class DashboardStore(GovernanceStore, Protocol):
    """What the operations dashboard reads (``imserver/dashboard/service.py``): bounded
    aggregates per unit subtree, the callback outbox per app, DING totals."""

    async def units_by_ids(self, ids: Iterable[str]) -> dict[str, Unit]: ...

    async def dashboard_children(self, parent: str | None) -> list[Unit]:
        """The units directly under ``parent`` (``None``: the top units)."""

    async def unit_card_counts(self, units: Iterable[Unit], now: int) -> list[UnitCardCounts]:
        """Card counts of each unit's subtree, in the order given (capped)."""

    async def outbox_by_app(self) -> list[AppOutbox]: ...

    async def list_callbacks(self, state: str, limit: int) -> list[OutboxItem]: ...

    async def ding_counts(self) -> DingCounts: ...
