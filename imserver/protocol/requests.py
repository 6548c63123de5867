"""Client requests: one frozen dataclass per request type, and the parser.

``parse_request(frame, limits)`` is the gate every client frame passes
through. It returns a typed request or raises an :class:`ImError` with a
stable code; nothing past it needs to distrust a field's type or range.

Plug-ins (``cards/``) add request types of their own, subclasses of
:class:`ExtensionRequest`, and fields of their own to ``sync``; the gateway
then parses with the table ``gateway/extensions.py`` builds (``CORE_PARSERS``
plus theirs). This module knows nothing of any plug-in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from imserver.config import LimitsConfig
from imserver.directory.model import UNIT_ID_RE
from imserver.directory.pinyin import MAX_QUERY
from imserver.errors import InvalidField, TextTooLong, UnknownType
from imserver.protocol.fields import FILE_ID_RE, Fields

RequestId = int | str | None

MAX_MENTIONS = 100


@dataclass(slots=True, frozen=True)
class Auth:
    token: str


@dataclass(slots=True, frozen=True)
class Ping:
    pass


@dataclass(slots=True, frozen=True)
class Send:
    conv: str | None
    to: str | None
    client_msg_id: str
    kind: str
    body: dict[str, Any]
    mentions: tuple[str, ...] = ()
    mention_all: bool = False
    urgent: bool = False  # DING: every recipient must confirm


class ExtensionRequest:
    """Base of the request types a plug-in registers (``gateway/extensions.py``).

    The core never looks inside one: the dispatcher hands it to the handler
    registered for its class.
    """

    __slots__ = ()


@dataclass(slots=True, frozen=True)
class Sync:
    since: dict[str, int]
    limit: int
    #: What each registered sync part read from the frame, in registration
    #: order (e.g. the cards plug-in's ``cards_since``); answered by that part.
    parts: tuple[object, ...] = ()


@dataclass(slots=True, frozen=True)
class DingConfirm:
    conv: str
    seq: int


@dataclass(slots=True, frozen=True)
class DingStatusReq:
    conv: str
    seq: int


@dataclass(slots=True, frozen=True)
class History:
    conv: str
    before_seq: int | None
    limit: int


@dataclass(slots=True, frozen=True)
class Read:
    conv: str
    seq: int


@dataclass(slots=True, frozen=True)
class ReadStatus:
    conv: str
    seq: int


@dataclass(slots=True, frozen=True)
class Unread:
    pass


@dataclass(slots=True, frozen=True)
class Recall:
    conv: str
    seq: int


@dataclass(slots=True, frozen=True)
class GroupCreate:
    name: str
    members: tuple[str, ...]


@dataclass(slots=True, frozen=True)
class GroupRename:
    conv: str
    name: str


@dataclass(slots=True, frozen=True)
class GroupAdd:
    conv: str
    members: tuple[str, ...]


@dataclass(slots=True, frozen=True)
class GroupRemove:
    conv: str
    members: tuple[str, ...]


@dataclass(slots=True, frozen=True)
class GroupLeave:
    conv: str


@dataclass(slots=True, frozen=True)
class GroupRole:
    conv: str
    user: str
    role: str


@dataclass(slots=True, frozen=True)
class GroupMembers:
    conv: str


@dataclass(slots=True, frozen=True)
class GroupList:
    pass


@dataclass(slots=True, frozen=True)
class PresenceQuery:
    users: tuple[str, ...]


@dataclass(slots=True, frozen=True)
class PresenceSubscribe:
    users: tuple[str, ...]


@dataclass(slots=True, frozen=True)
class PresenceUnsubscribe:
    users: tuple[str, ...]


@dataclass(slots=True, frozen=True)
class DirectoryUsers:
    users: tuple[str, ...]


@dataclass(slots=True, frozen=True)
class DirectoryUnit:
    unit: str
    recursive: bool
    cursor: str | None
    limit: int


@dataclass(slots=True, frozen=True)
class DirectorySearch:
    q: str
    unit: str | None
    cursor: str | None
    limit: int


@dataclass(slots=True, frozen=True)
class DirectoryChanges:
    since: int
    limit: int


Request = (
    Auth
    | Ping
    | Send
    | Sync
    | History
    | Read
    | ReadStatus
    | Unread
    | Recall
    | GroupCreate
    | GroupRename
    | GroupAdd
    | GroupRemove
    | GroupLeave
    | GroupRole
    | GroupMembers
    | GroupList
    | PresenceQuery
    | PresenceSubscribe
    | PresenceUnsubscribe
    | DingConfirm
    | DingStatusReq
    | DirectoryUsers
    | DirectoryUnit
    | DirectorySearch
    | DirectoryChanges
    | ExtensionRequest
)

#: Reads one request type's fields; raises an ``ImError`` on bad input.
Parser = Callable[[Fields, LimitsConfig], Request]
#: Reads a plug-in's own fields of a ``sync`` frame (e.g. ``cards_since``).
SyncPartReader = Callable[[Fields, LimitsConfig], object]


def request_id(frame: dict[str, Any]) -> RequestId:
    """The frame's ``id`` if it is usable for matching, else ``None``."""
    rid = frame.get("id")
    if isinstance(rid, bool):
        return None
    if isinstance(rid, int) and -(2**63) <= rid < 2**63:
        return rid
    if isinstance(rid, str) and len(rid) <= 64:
        return rid
    return None


def parse_request(
    frame: dict[str, Any], limits: LimitsConfig, parsers: Mapping[str, Parser] | None = None
) -> tuple[RequestId, Request]:
    """Validate one decoded frame; return its id and typed request.

    ``parsers``: the request types this server answers, by ``type``; the core's
    alone unless given (the gateway passes the table with its plug-ins').
    A type not in it is ``unknown_type``.
    """
    rid = request_id(frame)
    if rid is None:
        raise InvalidField(
            "'id' is required: an integer or a string of at most 64 characters", field="id"
        )
    kind = frame.get("type")
    if not isinstance(kind, str):
        raise InvalidField("'type' is required and must be a string", field="type")
    parser = (CORE_PARSERS if parsers is None else parsers).get(kind)
    if parser is None:
        raise UnknownType(f"unknown request type {kind[:64]!r}")
    return rid, parser(Fields(frame), limits)


def _auth(f: Fields, _: LimitsConfig) -> Auth:
    return Auth(token=f.req_string("token", max_len=4096))


def _ping(f: Fields, _: LimitsConfig) -> Ping:
    return Ping()


def _send(f: Fields, limits: LimitsConfig) -> Send:
    has_conv, has_to = f.has("conv"), f.has("to")
    if has_conv == has_to:
        raise InvalidField("give exactly one of 'conv' or 'to'", field="conv")
    conv = f.conv_id("conv") if has_conv else None
    to = f.user_id("to") if has_to else None
    client_msg_id = f.req_string("client_msg_id", max_len=64)
    kind = f.req_string("kind", max_len=16)
    body = f.req_sub("body")
    if kind == "text":
        text = body.string("text", max_len=10**9)
        assert text is not None
        if len(text) > limits.max_text_chars:
            raise TextTooLong(
                f"text is {len(text)} characters; the limit is {limits.max_text_chars}",
                field="body.text",
            )
        if not text.strip():
            raise InvalidField("'body.text' must not be blank", field="body.text")
        mentions = body.user_list(
            "mentions", required=False, max_items=MAX_MENTIONS, allow_empty=True
        )
        mention_all = body.boolean("mention_all")
        out_body: dict[str, Any] = {"text": text}
        if mentions:
            out_body["mentions"] = list(mentions)
        if mention_all:
            out_body["mention_all"] = True
        urgent = f.boolean("urgent")
        if urgent:
            out_body["urgent"] = True
        return Send(conv, to, client_msg_id, kind, out_body, mentions, mention_all, urgent)
    if kind == "file":
        ref = body.req_sub("file")
        file_id = ref.req_string("id", min_len=64, max_len=64)
        if FILE_ID_RE.fullmatch(file_id) is None:
            raise InvalidField(
                "'body.file.id' must be a lowercase sha256 hex digest", field="body.file.id"
            )
        name = ref.req_string("name", max_len=255)
        size = ref.req_integer("size", maximum=2**53)
        mime = ref.req_string("mime", max_len=128)
        file_body: dict[str, Any] = {
            "file": {"id": file_id, "name": name, "size": size, "mime": mime}
        }
        urgent = f.boolean("urgent")
        if urgent:
            file_body["urgent"] = True
        return Send(conv, to, client_msg_id, kind, file_body, urgent=urgent)
    raise InvalidField(f"'kind' must be 'text' or 'file', got {kind!r}", field="kind")


def sync_parser(part_readers: Sequence[SyncPartReader] = ()) -> Parser:
    """The ``sync`` parser, also reading each plug-in's sync fields.

    The parts are read between ``limit`` and ``since``: the order the fields
    were always checked in, so a frame with several bad fields names the same
    one as before plug-ins registered their parts.
    """
    readers = tuple(part_readers)

    def parse_sync(f: Fields, limits: LimitsConfig) -> Sync:
        limit = f.integer("limit", required=False, minimum=1, maximum=limits.sync_page_messages)
        parts = tuple(read(f, limits) for read in readers)
        return Sync(since=f.seq_map("since"), limit=limit or limits.sync_page_messages, parts=parts)

    return parse_sync


def _history(f: Fields, limits: LimitsConfig) -> History:
    before = f.integer("before_seq", required=False, minimum=1)
    limit = f.integer("limit", required=False, minimum=1, maximum=limits.history_page_max)
    return History(conv=f.conv_id(), before_seq=before, limit=limit or limits.history_page_max)


def _read(f: Fields, _: LimitsConfig) -> Read:
    return Read(conv=f.conv_id(), seq=f.req_integer("seq"))


def _read_status(f: Fields, _: LimitsConfig) -> ReadStatus:
    return ReadStatus(conv=f.conv_id(), seq=f.req_integer("seq", minimum=1))


def _unread(f: Fields, _: LimitsConfig) -> Unread:
    return Unread()


def _recall(f: Fields, _: LimitsConfig) -> Recall:
    return Recall(conv=f.conv_id(), seq=f.req_integer("seq", minimum=1))


def _group_name(f: Fields, limits: LimitsConfig) -> str:
    name = f.req_string("name", max_len=limits.max_group_name_chars)
    if not name.strip():
        raise InvalidField("'name' must not be blank", field="name")
    return name.strip()


def _group_create(f: Fields, limits: LimitsConfig) -> GroupCreate:
    members = f.user_list("members", max_items=limits.max_group_members, allow_empty=True)
    return GroupCreate(name=_group_name(f, limits), members=members)


def _group_rename(f: Fields, limits: LimitsConfig) -> GroupRename:
    return GroupRename(conv=f.conv_id(), name=_group_name(f, limits))


def _group_add(f: Fields, limits: LimitsConfig) -> GroupAdd:
    return GroupAdd(
        conv=f.conv_id(), members=f.user_list("members", max_items=limits.max_group_members)
    )


def _group_remove(f: Fields, limits: LimitsConfig) -> GroupRemove:
    return GroupRemove(
        conv=f.conv_id(), members=f.user_list("members", max_items=limits.max_group_members)
    )


def _group_leave(f: Fields, _: LimitsConfig) -> GroupLeave:
    return GroupLeave(conv=f.conv_id())


def _group_role(f: Fields, _: LimitsConfig) -> GroupRole:
    role = f.req_string("role", max_len=16)
    if role not in ("admin", "member"):
        raise InvalidField("'role' must be 'admin' or 'member'", field="role")
    return GroupRole(conv=f.conv_id(), user=f.user_id("user"), role=role)


def _group_members(f: Fields, _: LimitsConfig) -> GroupMembers:
    return GroupMembers(conv=f.conv_id())


def _group_list(f: Fields, _: LimitsConfig) -> GroupList:
    return GroupList()


def _presence_query(f: Fields, limits: LimitsConfig) -> PresenceQuery:
    return PresenceQuery(users=f.user_list("users", max_items=limits.presence_subscriptions))


def _presence_subscribe(f: Fields, limits: LimitsConfig) -> PresenceSubscribe:
    return PresenceSubscribe(users=f.user_list("users", max_items=limits.presence_subscriptions))


def _presence_unsubscribe(f: Fields, limits: LimitsConfig) -> PresenceUnsubscribe:
    return PresenceUnsubscribe(users=f.user_list("users", max_items=limits.presence_subscriptions))


def _ding_confirm(f: Fields, _: LimitsConfig) -> DingConfirm:
    return DingConfirm(conv=f.conv_id(), seq=f.req_integer("seq", minimum=1))


def _ding_status(f: Fields, _: LimitsConfig) -> DingStatusReq:
    return DingStatusReq(conv=f.conv_id(), seq=f.req_integer("seq", minimum=1))


#: Address-book bounds (docs/protocol.md 4.13): small pages keep every answer cheap.
DIRECTORY_MAX_IDS = 200
DIRECTORY_UNIT_PAGE = (100, 500)  # (default, maximum) people per page
DIRECTORY_SEARCH_PAGE = (20, 100)
DIRECTORY_CHANGES_PAGE = (500, 1000)
MAX_CURSOR_CHARS = 512


def _unit_id(f: Fields, name: str, *, required: bool = True) -> str | None:
    value = f.string(name, required=required, max_len=64)
    if value is not None and UNIT_ID_RE.fullmatch(value) is None:
        raise InvalidField(f"'{name}' must be a unit id (1-64 of A-Z a-z 0-9 _ . -)", field=name)
    return value


def _page_limit(f: Fields, bounds: tuple[int, int]) -> int:
    return f.integer("limit", required=False, minimum=1, maximum=bounds[1]) or bounds[0]


def _directory_users(f: Fields, _: LimitsConfig) -> DirectoryUsers:
    return DirectoryUsers(users=f.user_list("users", max_items=DIRECTORY_MAX_IDS))


def _directory_unit(f: Fields, _: LimitsConfig) -> DirectoryUnit:
    unit = _unit_id(f, "unit")
    assert unit is not None
    return DirectoryUnit(
        unit=unit,
        recursive=f.boolean("recursive"),
        cursor=f.string("cursor", required=False, max_len=MAX_CURSOR_CHARS),
        limit=_page_limit(f, DIRECTORY_UNIT_PAGE),
    )


def _directory_search(f: Fields, _: LimitsConfig) -> DirectorySearch:
    q = f.req_string("q", max_len=MAX_QUERY).strip()
    if not q:
        raise InvalidField("'q' must not be blank", field="q")
    return DirectorySearch(
        q=q,
        unit=_unit_id(f, "unit", required=False),
        cursor=f.string("cursor", required=False, max_len=MAX_CURSOR_CHARS),
        limit=_page_limit(f, DIRECTORY_SEARCH_PAGE),
    )


def _directory_changes(f: Fields, _: LimitsConfig) -> DirectoryChanges:
    return DirectoryChanges(
        since=f.integer("since", required=False) or 0,
        limit=_page_limit(f, DIRECTORY_CHANGES_PAGE),
    )


#: The core's request types; ``gateway/extensions.py`` adds the plug-ins'.
CORE_PARSERS: Mapping[str, Parser] = {
    "auth": _auth,
    "ping": _ping,
    "send": _send,
    "sync": sync_parser(),
    "history": _history,
    "read": _read,
    "read_status": _read_status,
    "unread": _unread,
    "recall": _recall,
    "group.create": _group_create,
    "group.rename": _group_rename,
    "group.add": _group_add,
    "group.remove": _group_remove,
    "group.leave": _group_leave,
    "group.role": _group_role,
    "group.members": _group_members,
    "group.list": _group_list,
    "presence.query": _presence_query,
    "presence.subscribe": _presence_subscribe,
    "presence.unsubscribe": _presence_unsubscribe,
    "ding.confirm": _ding_confirm,
    "ding.status": _ding_status,
    "directory.users": _directory_users,
    "directory.unit": _directory_unit,
    "directory.search": _directory_search,
    "directory.changes": _directory_changes,
}

#: The core's request types (a plug-in lists its own, e.g. ``cards.requests``).
REQUEST_TYPES = tuple(CORE_PARSERS)
