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


class SignatureExpired(ImError):
    code, http_status = "signature_expired", 401


class NonceReplayed(ImError):
    code, http_status = "nonce_replayed", 401


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


class VersionConflict(ImError):
    code, http_status = "version_conflict", 409


class NoSuchCallback(ImError):
    code, http_status = "no_such_callback", 404


class NoSuchDing(ImError):
    code, http_status = "no_such_ding", 404


class NoSuchUnit(ImError):
    code, http_status = "no_such_unit", 404


class ClassifiedContent(ImError):
    code, http_status = "classified_content", 403


class RateLimited(ImError):
    code, http_status = "rate_limited", 429


class Internal(ImError):
    code, http_status = "internal", 500


class ConfigError(Exception):
    """Raised at start-up for an invalid configuration; names the key and why."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"config error: {key}: {reason}")
        self.key = key
        self.reason = reason
