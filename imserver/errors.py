"""One exception hierarchy with a stable ``code`` per error.

The protocol layer turns an :class:`ImError` into an error frame and the HTTP
layer into a status and JSON body; both use ``code`` verbatim, so clients can
branch on it. ``message`` is for humans and may change between releases.
"""

from __future__ import annotations

from typing import Any


class ImError(Exception):
    """Base of every error a client may be told about."""

    code: str = "internal"
    http_status: int = 500

    def __init__(
        self, message: str, *, field: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        #: Extra machine-readable facts, e.g. ``{"decided_by": "li"}``.
        self.details = details


class BadFrame(ImError):
    code, http_status = "bad_frame", 400


class FrameTooLarge(ImError):
    code, http_status = "frame_too_large", 413


class UnknownType(ImError):
    code, http_status = "unknown_type", 400


class InvalidField(ImError):
    code, http_status = "invalid_field", 400


class TextTooLong(ImError):
    code, http_status = "text_too_long", 400


class NotAuthenticated(ImError):
    code, http_status = "not_authenticated", 401


class AlreadyAuthenticated(ImError):
    code, http_status = "already_authenticated", 400


class TokenInvalid(ImError):
    code, http_status = "token_invalid", 401


class TokenExpired(ImError):
    code, http_status = "token_expired", 401


class TokenRevoked(ImError):
    code, http_status = "token_revoked", 401


class NoSuchUser(ImError):
    code, http_status = "no_such_user", 404


class NoSuchConversation(ImError):
    code, http_status = "no_such_conversation", 404


class NotMember(ImError):
    code, http_status = "not_member", 403


class NoSuchMessage(ImError):
    code, http_status = "no_such_message", 404


class NoSuchFile(ImError):
    code, http_status = "no_such_file", 404


class Forbidden(ImError):
    code, http_status = "forbidden", 403


class RecallWindowPassed(ImError):
    code, http_status = "recall_window_passed", 403


class TooManyMembers(ImError):
    code, http_status = "too_many_members", 400


class FileTooLarge(ImError):
    code, http_status = "file_too_large", 413


class FileTypeNotAllowed(ImError):
    code, http_status = "file_type_not_allowed", 415


class UnknownApp(ImError):
    code, http_status = "unknown_app", 401


class BadSignature(ImError):
    code, http_status = "bad_signature", 401


class NoSuchApp(ImError):
    """The admin API names an app that is not registered."""

    code, http_status = "no_such_app", 404


class AppInAppsFile(ImError):
    """The app is defined in ``cards.apps_file``: change it there, not through the API."""

    code, http_status = "app_in_apps_file", 409


class SignatureExpired(ImError):
    code, http_status = "signature_expired", 401


class NonceReplayed(ImError):
    code, http_status = "nonce_replayed", 401


class NonceStoreUnavailable(ImError):
    """The nonce store cannot record a nonce (full of unexpired ones, or unreachable).

    Refusing is the safe side: accepting without recording would allow a replay.
    """

    code, http_status = "nonce_store_unavailable", 503


class OutOfScope(ImError):
    code, http_status = "out_of_scope", 403


class NoSuchCard(ImError):
    code, http_status = "no_such_card", 404


class NotActor(ImError):
    code, http_status = "not_actor", 403


class CardDecided(ImError):
    code, http_status = "card_decided", 409


class NotYourTurn(ImError):
    code, http_status = "not_your_turn", 409


class AlreadyActed(ImError):
    code, http_status = "already_acted", 409


class ActionIdConflict(ImError):
    code, http_status = "action_id_conflict", 409


class AlreadyActor(ImError):
    """转交 / 加签 to someone who is already an approver of the card."""

    code, http_status = "already_actor", 409


class TooManyActors(ImError):
    code, http_status = "too_many_actors", 409


class TooManyTemplates(ImError):
    """An app's template ids, or one template's versions, reached ``cards.max_templates``."""

    code, http_status = "too_many_templates", 409


class NoSuchStep(ImError):
    """退回 to a step the card does not have (or on a card without steps)."""

    code, http_status = "no_such_step", 400


class StepChanged(ImError):
    """退回 to a step that is no longer before the current one (the card moved on)."""

    code, http_status = "step_changed", 409


class TrailFull(ImError):
    code, http_status = "trail_full", 409


class VersionConflict(ImError):
    code, http_status = "version_conflict", 409


class NoSuchCallback(ImError):
    code, http_status = "no_such_callback", 404


class NoSuchDing(ImError):
    code, http_status = "no_such_ding", 404


class NoSuchTemplate(ImError):
    code, http_status = "no_such_template", 404


class NoSuchUnit(ImError):
    code, http_status = "no_such_unit", 404


class ClassifiedContent(ImError):
    code, http_status = "classified_content", 403


class RateLimited(ImError):
    code, http_status = "rate_limited", 429


class Internal(ImError):
    code, http_status = "internal", 500


class StoreUnavailable(ImError):
    """The database cannot be reached (PostgreSQL down or misconfigured).

    At start-up it stops the server with a message naming the host and the
    fix; at run time a client's request fails with it and may be retried.
    """

    code, http_status = "store_unavailable", 503


class BusUnavailable(ImError):
    """The Redis bus cannot be reached at start-up (``[bus] backend = "redis"``).

    The server stops with one line naming the address and the fix. At run
    time a lost Redis is not an error anyone sees: the bus reconnects and
    fills what it missed from the store.
    """

    code, http_status = "bus_unavailable", 503


class RouteNotFound(ImError):
    """No HTTP route at this path."""

    code, http_status = "not_found", 404


class MethodNotAllowed(ImError):
    """The HTTP path exists but not with this method."""

    code, http_status = "method_not_allowed", 405


class PayloadTooLarge(ImError):
    """An HTTP request body over the server's bound for bodies read whole (JSON)."""

    code, http_status = "payload_too_large", 413


class BadRequest(ImError):
    """An HTTP request the server could not parse (request line, headers, framing)."""

    code, http_status = "bad_request", 400


class RequestTimeout(ImError):
    """The client did not finish sending its request head in time (slowloris bound)."""

    code, http_status = "request_timeout", 408


class TooManyConnections(ImError):
    """The port, or the caller's source address, has as many open connections as allowed."""

    code, http_status = "too_many_connections", 503


class StorageFull(ImError):
    """The server's disk (or quota, or file-size limit) is full; nothing was stored."""

    code, http_status = "storage_full", 507


class ConfigError(Exception):
    """Raised at start-up for an invalid configuration; names the key and why."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"config error: {key}: {reason}")
        self.key = key
        self.reason = reason


class StoreFileError(Exception):
    """The store's database file cannot be used as it is; found at start-up or by the CLI.

    Not an :class:`ImError`: no client ever sees it — the operator does, as one
    line naming the file, what is wrong and what to do, and the process exits
    with a documented code (docs/operations.md). ``code`` is stable, for
    scripts and log searches; the text may change.
    """

    code: str = "store_file"

    def __init__(self, path: object, problem: str, fix: str) -> None:
        super().__init__(f"{self.code}: {path}: {problem}; {fix}")
        self.path = str(path)
        self.problem = problem
        self.fix = fix


class NoDatabaseYet(StoreFileError):
    """No database file at the configured path: the server has never run here."""

    code = "no_database"

    def __init__(self, path: object) -> None:
        super().__init__(path, "no database yet", "start the server once to create it")
        self.args = (f"{self.code}: no database yet at {path} (start the server once)",)


class StoreRefused(StoreFileError):
    """A database file exists but is not a usable imserver store; serving it would lie."""

    code = "store_refused"


class StoreEmpty(StoreRefused):
    """A zero-length file: truncated by accident, or put there on purpose (``serve --init``)."""

    code = "store_empty"


class StoreNotSqlite(StoreRefused):
    """The file does not start with the SQLite header: not a database, or overwritten."""

    code = "store_not_sqlite"


class StoreForeign(StoreRefused):
    """A SQLite database, but not one imserver created (no or foreign schema table)."""

    code = "store_foreign"


class StoreTooNew(StoreRefused):
    """Written by a newer imserver: its schema has versions this release does not know."""

    code = "store_too_new"


class StoreDamaged(StoreRefused):
    """SQLite's own integrity check fails, or tables the schema promises are missing."""

    code = "store_damaged"


class StoreInUse(StoreRefused):
    """The file is open in another process (a running server); the command needs it closed."""

    code = "store_in_use"


class ExportRefused(StoreRefused):
    """``store export-postgres`` will not (or did not) move the store; the target is unchanged.

    The target is not empty, the schemas differ, or a value cannot move
    unchanged. ``path`` names the SQLite file or the target ``host:port/db``.
    """

    code = "export_refused"
