"""Unit tests for imserver/protocol/requests.py: the gate every client frame passes."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imserver.config import LimitsConfig
from imserver.directory.model import UNIT_ID_RE
from imserver.errors import ImError, InvalidField, TextTooLong, UnknownType
from imserver.protocol import requests as rq
from imserver.protocol.fields import CONV_ID_RE, FILE_ID_RE, is_user_id
from imserver.protocol.requests import REQUEST_TYPES, parse_request

LIMITS = LimitsConfig()
GROUP = "g:Yq3abcdefgh"
DM = "dm:alice:bob"
FILE_ID = "ab" * 32


def _parse(frame: dict[str, Any]) -> tuple[rq.RequestId, rq.Request]:
    return parse_request(frame, LIMITS)


# -- every request type: a valid example and what it must parse to ---------------
VALID: list[tuple[dict[str, Any], rq.Request]] = [
    ({"type": "auth", "token": "eyJ.abc.def"}, rq.Auth(token="eyJ.abc.def")),
    ({"type": "ping"}, rq.Ping()),
    (
        {
            "type": "send",
            "conv": GROUP,
            "client_msg_id": "c-1",
            "kind": "text",
            "body": {"text": "@bob look", "mentions": ["bob", "carol", "bob"], "mention_all": True},
        },
        rq.Send(
            conv=GROUP,
            to=None,
            client_msg_id="c-1",
            kind="text",
            body={"text": "@bob look", "mentions": ["bob", "carol"], "mention_all": True},
            mentions=("bob", "carol"),
            mention_all=True,
        ),
    ),
    (
        {
            "type": "send",
            "to": "bob",
            "client_msg_id": "c-2",
            "kind": "text",
            "body": {"text": "hi", "extra": "dropped"},
        },
        rq.Send(conv=None, to="bob", client_msg_id="c-2", kind="text", body={"text": "hi"}),
    ),
    (
        {
            "type": "send",
            "conv": DM,
            "to": None,
            "client_msg_id": "c-3",
            "kind": "file",
            "body": {
                "file": {"id": FILE_ID, "name": "r.pdf", "size": 12, "mime": "application/pdf"}
            },
        },
        rq.Send(
            conv=DM,
            to=None,
            client_msg_id="c-3",
            kind="file",
            body={"file": {"id": FILE_ID, "name": "r.pdf", "size": 12, "mime": "application/pdf"}},
        ),
    ),
    (
        {"type": "sync", "since": {DM: 17, GROUP: 0}, "limit": 10},
        rq.Sync(since={DM: 17, GROUP: 0}, limit=10),
    ),
    ({"type": "sync"}, rq.Sync(since={}, limit=LIMITS.sync_page_messages)),
    (
        {"type": "history", "conv": GROUP, "before_seq": 41, "limit": 50},
        rq.History(conv=GROUP, before_seq=41, limit=50),
    ),
    (
        {"type": "history", "conv": DM},
        rq.History(conv=DM, before_seq=None, limit=LIMITS.history_page_max),
    ),
    ({"type": "read", "conv": GROUP, "seq": 0}, rq.Read(conv=GROUP, seq=0)),
    ({"type": "read_status", "conv": GROUP, "seq": 42}, rq.ReadStatus(conv=GROUP, seq=42)),
    ({"type": "unread"}, rq.Unread()),
    ({"type": "recall", "conv": DM, "seq": 3}, rq.Recall(conv=DM, seq=3)),
    (
        {"type": "group.create", "name": "  County office ", "members": ["bob", "carol", "bob"]},
        rq.GroupCreate(name="County office", members=("bob", "carol")),
    ),
    ({"type": "group.create", "name": "solo", "members": []}, rq.GroupCreate("solo", ())),
    ({"type": "group.rename", "conv": GROUP, "name": "New"}, rq.GroupRename(GROUP, "New")),
    ({"type": "group.add", "conv": GROUP, "members": ["dave"]}, rq.GroupAdd(GROUP, ("dave",))),
    (
        {"type": "group.remove", "conv": GROUP, "members": ["dave", "eve"]},
        rq.GroupRemove(GROUP, ("dave", "eve")),
    ),
    ({"type": "group.leave", "conv": GROUP}, rq.GroupLeave(GROUP)),
    (
        {"type": "group.role", "conv": GROUP, "user": "bob", "role": "admin"},
        rq.GroupRole(GROUP, "bob", "admin"),
    ),
    (
        {"type": "group.role", "conv": GROUP, "user": "bob", "role": "member"},
        rq.GroupRole(GROUP, "bob", "member"),
    ),
    ({"type": "group.members", "conv": GROUP}, rq.GroupMembers(GROUP)),
    ({"type": "group.list"}, rq.GroupList()),
    (
        {"type": "presence.query", "users": ["bob", "a.b@c-d_e"]},
        rq.PresenceQuery(("bob", "a.b@c-d_e")),
    ),
    ({"type": "presence.subscribe", "users": ["bob"]}, rq.PresenceSubscribe(("bob",))),
    ({"type": "presence.unsubscribe", "users": ["bob"]}, rq.PresenceUnsubscribe(("bob",))),
    # card.act, card.get, todo: the cards plug-in's (tests/unit/test_card_requests.py)
    ({"type": "ding.confirm", "conv": GROUP, "seq": 4}, rq.DingConfirm(GROUP, 4)),
    ({"type": "ding.status", "conv": DM, "seq": 1}, rq.DingStatusReq(DM, 1)),
    (
        {
            "type": "send",
            "conv": GROUP,
            "client_msg_id": "u1",
            "kind": "text",
            "urgent": True,
            "body": {"text": "紧急"},
        },
        rq.Send(GROUP, None, "u1", "text", {"text": "紧急", "urgent": True}, urgent=True),
    ),
    ({"type": "directory.users", "users": ["a", "b", "a"]}, rq.DirectoryUsers(("a", "b"))),
    ({"type": "directory.unit", "unit": "nc-xh"}, rq.DirectoryUnit("nc-xh", False, None, 100)),
    (
        {"type": "directory.unit", "unit": "jx", "recursive": True, "cursor": "Wy", "limit": 500},
        rq.DirectoryUnit("jx", True, "Wy", 500),
    ),
    ({"type": "directory.search", "q": " 张三 "}, rq.DirectorySearch("张三", None, None, 20)),
    (
        {"type": "directory.search", "q": "zs", "unit": "nc", "cursor": "Wy", "limit": 100},
        rq.DirectorySearch("zs", "nc", "Wy", 100),
    ),
    ({"type": "directory.changes"}, rq.DirectoryChanges(0, 500)),
    ({"type": "directory.changes", "since": 7, "limit": 1000}, rq.DirectoryChanges(7, 1000)),
]


def test_valid_examples_cover_every_request_type() -> None:
    assert {frame["type"] for frame, _ in VALID} == set(REQUEST_TYPES)
    assert len(REQUEST_TYPES) == 26  # the core's; the cards plug-in adds 3


@pytest.mark.parametrize(
    ("frame", "expected"), VALID, ids=[f"{i}-{f['type']}" for i, (f, _) in enumerate(VALID)]
)
def test_valid_request_parses_to_its_dataclass(frame: dict[str, Any], expected: Any) -> None:
    rid, req = _parse({"id": 7, **frame})
    assert rid == 7
    assert type(req) is type(expected)
    assert req == expected


@pytest.mark.parametrize("rid", [0, -1, 2**63 - 1, -(2**63), "", "abc", "x" * 64])
def test_valid_request_ids_are_echoed(rid: int | str) -> None:
    got, req = _parse({"type": "ping", "id": rid})
    assert got == rid
    assert type(got) is type(rid)
    assert req == rq.Ping()


@pytest.mark.parametrize(
    "rid",
    [None, 1.0, 1.5, True, False, {}, {"a": 1}, [], [1], "x" * 65, 2**63, -(2**63) - 1],
    ids=repr,
)
def test_unusable_id_is_invalid_field_id(rid: Any) -> None:
    with pytest.raises(InvalidField) as info:
        _parse({"type": "ping", "id": rid})
    assert info.value.code == "invalid_field"
    assert info.value.field == "id"


def test_missing_id_is_invalid_field_id() -> None:
    with pytest.raises(InvalidField) as info:
        _parse({"type": "ping"})
    assert info.value.field == "id"


def test_missing_id_and_type_reports_id() -> None:
    with pytest.raises(InvalidField) as info:
        _parse({})
    assert info.value.field == "id"


@pytest.mark.parametrize("kind", [None, 1, True, ["ping"], {"t": "ping"}], ids=repr)
def test_missing_or_mistyped_type_is_invalid_field_type(kind: Any) -> None:
    frame: dict[str, Any] = {"id": 1}
    if kind is not None:
        frame["type"] = kind
    with pytest.raises(InvalidField) as info:
        _parse(frame)
    assert info.value.code == "invalid_field"
    assert info.value.field == "type"


@pytest.mark.parametrize("kind", ["", "nope", "PING", "group", "group.", "x" * 1000])
def test_unknown_type(kind: str) -> None:
    with pytest.raises(UnknownType) as info:
        _parse({"type": kind, "id": 1})
    assert info.value.code == "unknown_type"
    assert len(info.value.message) < 200  # a long type is not echoed in full


# -- invalid fields ---------------------------------------------------------------
SEND_TEXT: dict[str, Any] = {
    "type": "send",
    "id": 1,
    "conv": GROUP,
    "client_msg_id": "c-1",
    "kind": "text",
    "body": {"text": "hi"},
}
SEND_FILE: dict[str, Any] = {
    "type": "send",
    "id": 1,
    "to": "bob",
    "client_msg_id": "c-1",
    "kind": "file",
    "body": {"file": {"id": FILE_ID, "name": "a.txt", "size": 1, "mime": "text/plain"}},
}

_DROP = object()


def _with(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with the dotted ``path`` set (or removed with _DROP)."""
    out = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node[p]
    if value is _DROP:
        node.pop(last, None)
    else:
        node[last] = value
    return out


INVALID: list[tuple[str, dict[str, Any], str]] = [
    # auth
    ("auth-no-token", {"type": "auth", "id": 1}, "token"),
    ("auth-int-token", {"type": "auth", "id": 1, "token": 5}, "token"),
    ("auth-empty-token", {"type": "auth", "id": 1, "token": ""}, "token"),
    ("auth-huge-token", {"type": "auth", "id": 1, "token": "t" * 4097}, "token"),
    # send: target
    ("send-conv-and-to", _with(SEND_TEXT, "to", "bob"), "conv"),
    ("send-neither", _with(SEND_TEXT, "conv", _DROP), "conv"),
    ("send-both-null", _with(SEND_TEXT, "conv", None), "conv"),
    ("send-bad-conv-prefix", _with(SEND_TEXT, "conv", "x:abcdefgh"), "conv"),
    ("send-short-group", _with(SEND_TEXT, "conv", "g:short"), "conv"),
    ("send-dm-space", _with(SEND_TEXT, "conv", "dm:a b:c"), "conv"),
    ("send-dm-one-party", _with(SEND_TEXT, "conv", "dm:alice"), "conv"),
    ("send-conv-int", _with(SEND_TEXT, "conv", 5), "conv"),
    ("send-to-bad-user", _with(_with(SEND_TEXT, "conv", _DROP), "to", "bad user"), "to"),
    ("send-to-empty", _with(_with(SEND_TEXT, "conv", _DROP), "to", ""), "to"),
    ("send-to-too-long", _with(_with(SEND_TEXT, "conv", _DROP), "to", "u" * 65), "to"),
    ("send-to-list", _with(_with(SEND_TEXT, "conv", _DROP), "to", ["bob"]), "to"),
    # send: envelope
    ("send-no-cmid", _with(SEND_TEXT, "client_msg_id", _DROP), "client_msg_id"),
    ("send-cmid-int", _with(SEND_TEXT, "client_msg_id", 5), "client_msg_id"),
    ("send-cmid-long", _with(SEND_TEXT, "client_msg_id", "c" * 65), "client_msg_id"),
    ("send-no-kind", _with(SEND_TEXT, "kind", _DROP), "kind"),
    ("send-bad-kind", _with(SEND_TEXT, "kind", "video"), "kind"),
    ("send-system-kind", _with(SEND_TEXT, "kind", "system"), "kind"),
    ("send-no-body", _with(SEND_TEXT, "body", _DROP), "body"),
    ("send-body-list", _with(SEND_TEXT, "body", ["hi"]), "body"),
    ("send-body-str", _with(SEND_TEXT, "body", "hi"), "body"),
    # send: text body
    ("text-missing", _with(SEND_TEXT, "body.text", _DROP), "body.text"),
    ("text-int", _with(SEND_TEXT, "body.text", 5), "body.text"),
    ("text-empty", _with(SEND_TEXT, "body.text", ""), "body.text"),
    ("text-blank", _with(SEND_TEXT, "body.text", " \t\n "), "body.text"),
    ("mentions-str", _with(SEND_TEXT, "body.mentions", "bob"), "body.mentions"),
    ("mentions-bad-item", _with(SEND_TEXT, "body.mentions", ["bob", "b b"]), "body.mentions[1]"),
    ("mentions-int-item", _with(SEND_TEXT, "body.mentions", ["bob", 3]), "body.mentions[1]"),
    ("mentions-too-many", _with(SEND_TEXT, "body.mentions", ["u"] * 101), "body.mentions"),
    ("mention-all-str", _with(SEND_TEXT, "body.mention_all", "yes"), "body.mention_all"),
    ("mention-all-int", _with(SEND_TEXT, "body.mention_all", 1), "body.mention_all"),
    # send: file body
    ("file-missing", _with(SEND_FILE, "body.file", _DROP), "body.file"),
    ("file-not-object", _with(SEND_FILE, "body.file", FILE_ID), "body.file"),
    ("file-id-missing", _with(SEND_FILE, "body.file.id", _DROP), "body.file.id"),
    ("file-id-upper", _with(SEND_FILE, "body.file.id", FILE_ID.upper()), "body.file.id"),
    ("file-id-short", _with(SEND_FILE, "body.file.id", "ab" * 31), "body.file.id"),
    ("file-id-not-hex", _with(SEND_FILE, "body.file.id", "zz" * 32), "body.file.id"),
    ("file-name-missing", _with(SEND_FILE, "body.file.name", _DROP), "body.file.name"),
    ("file-size-str", _with(SEND_FILE, "body.file.size", "1"), "body.file.size"),
    ("file-size-bool", _with(SEND_FILE, "body.file.size", True), "body.file.size"),
    ("file-size-float", _with(SEND_FILE, "body.file.size", 1.0), "body.file.size"),
    ("file-size-negative", _with(SEND_FILE, "body.file.size", -1), "body.file.size"),
    ("file-size-huge", _with(SEND_FILE, "body.file.size", 2**53 + 1), "body.file.size"),
    ("file-mime-missing", _with(SEND_FILE, "body.file.mime", _DROP), "body.file.mime"),
    # sync
    ("sync-since-list", {"type": "sync", "id": 1, "since": [DM]}, "since"),
    ("sync-since-bad-conv", {"type": "sync", "id": 1, "since": {"nope": 1}}, "since"),
    ("sync-since-negative", {"type": "sync", "id": 1, "since": {DM: -1}}, f"since[{DM}]"),
    ("sync-since-bool", {"type": "sync", "id": 1, "since": {DM: True}}, f"since[{DM}]"),
    ("sync-since-float", {"type": "sync", "id": 1, "since": {DM: 1.0}}, f"since[{DM}]"),
    ("sync-since-str", {"type": "sync", "id": 1, "since": {DM: "1"}}, f"since[{DM}]"),
    ("sync-limit-zero", {"type": "sync", "id": 1, "limit": 0}, "limit"),
    ("sync-limit-over", {"type": "sync", "id": 1, "limit": 201}, "limit"),
    ("sync-limit-bool", {"type": "sync", "id": 1, "limit": True}, "limit"),
    # history
    ("history-no-conv", {"type": "history", "id": 1}, "conv"),
    (
        "history-before-zero",
        {"type": "history", "id": 1, "conv": DM, "before_seq": 0},
        "before_seq",
    ),
    (
        "history-before-bool",
        {"type": "history", "id": 1, "conv": DM, "before_seq": True},
        "before_seq",
    ),
    ("history-limit-over", {"type": "history", "id": 1, "conv": DM, "limit": 101}, "limit"),
    ("history-limit-str", {"type": "history", "id": 1, "conv": DM, "limit": "5"}, "limit"),
    # read / read_status / recall
    ("read-no-seq", {"type": "read", "id": 1, "conv": DM}, "seq"),
    ("read-seq-bool", {"type": "read", "id": 1, "conv": DM, "seq": True}, "seq"),
    ("read-seq-float", {"type": "read", "id": 1, "conv": DM, "seq": 1.0}, "seq"),
    ("read-seq-str", {"type": "read", "id": 1, "conv": DM, "seq": "1"}, "seq"),
    ("read-seq-negative", {"type": "read", "id": 1, "conv": DM, "seq": -1}, "seq"),
    ("read-no-conv", {"type": "read", "id": 1, "seq": 1}, "conv"),
    ("read-status-seq-zero", {"type": "read_status", "id": 1, "conv": DM, "seq": 0}, "seq"),
    ("read-status-seq-bool", {"type": "read_status", "id": 1, "conv": DM, "seq": False}, "seq"),
    ("recall-no-seq", {"type": "recall", "id": 1, "conv": DM}, "seq"),
    ("recall-seq-zero", {"type": "recall", "id": 1, "conv": DM, "seq": 0}, "seq"),
    ("recall-bad-conv", {"type": "recall", "id": 1, "conv": "g:", "seq": 1}, "conv"),
    # groups
    ("create-no-name", {"type": "group.create", "id": 1, "members": []}, "name"),
    ("create-blank-name", {"type": "group.create", "id": 1, "name": "  ", "members": []}, "name"),
    (
        "create-long-name",
        {"type": "group.create", "id": 1, "name": "n" * 65, "members": []},
        "name",
    ),
    ("create-no-members", {"type": "group.create", "id": 1, "name": "n"}, "members"),
    (
        "create-members-str",
        {"type": "group.create", "id": 1, "name": "n", "members": "a"},
        "members",
    ),
    (
        "create-bad-member",
        {"type": "group.create", "id": 1, "name": "n", "members": ["bob", "b b", "c"]},
        "members[1]",
    ),
    (
        "create-null-member",
        {"type": "group.create", "id": 1, "name": "n", "members": [None]},
        "members[0]",
    ),
    (
        "create-too-many",
        {"type": "group.create", "id": 1, "name": "n", "members": ["u"] * 1001},
        "members",
    ),
    ("rename-no-conv", {"type": "group.rename", "id": 1, "name": "n"}, "conv"),
    ("rename-name-int", {"type": "group.rename", "id": 1, "conv": GROUP, "name": 5}, "name"),
    ("add-empty", {"type": "group.add", "id": 1, "conv": GROUP, "members": []}, "members"),
    ("add-bad-member", {"type": "group.add", "id": 1, "conv": GROUP, "members": [1]}, "members[0]"),
    ("remove-no-members", {"type": "group.remove", "id": 1, "conv": GROUP}, "members"),
    ("leave-no-conv", {"type": "group.leave", "id": 1}, "conv"),
    ("members-conv-int", {"type": "group.members", "id": 1, "conv": 1}, "conv"),
    (
        "role-owner",
        {"type": "group.role", "id": 1, "conv": GROUP, "user": "bob", "role": "owner"},
        "role",
    ),
    ("role-missing", {"type": "group.role", "id": 1, "conv": GROUP, "user": "bob"}, "role"),
    (
        "role-bad-user",
        {"type": "group.role", "id": 1, "conv": GROUP, "user": "b/b", "role": "admin"},
        "user",
    ),
    # presence
    ("query-no-users", {"type": "presence.query", "id": 1}, "users"),
    ("query-empty", {"type": "presence.query", "id": 1, "users": []}, "users"),
    ("sub-too-many", {"type": "presence.subscribe", "id": 1, "users": ["u"] * 501}, "users"),
    ("unsub-bad-user", {"type": "presence.unsubscribe", "id": 1, "users": ["ok", ""]}, "users[1]"),
]


@pytest.mark.parametrize(("frame", "field"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_field_names_its_path(frame: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidField) as info:
        _parse(frame)
    assert info.value.code == "invalid_field"
    assert info.value.field == field


def test_text_over_limit_is_text_too_long() -> None:
    frame = _with(SEND_TEXT, "body.text", "x" * (LIMITS.max_text_chars + 1))
    with pytest.raises(TextTooLong) as info:
        _parse(frame)
    assert info.value.code == "text_too_long"
    assert info.value.field == "body.text"


def test_text_at_limit_is_accepted() -> None:
    text = "字" * LIMITS.max_text_chars  # characters, not bytes
    _, req = _parse(_with(SEND_TEXT, "body.text", text))
    assert isinstance(req, rq.Send)
    assert req.body == {"text": text}


def test_text_limit_follows_config() -> None:
    small = LimitsConfig(max_text_chars=10)
    with pytest.raises(TextTooLong):
        parse_request(_with(SEND_TEXT, "body.text", "x" * 11), small)
    _, req = parse_request(_with(SEND_TEXT, "body.text", "x" * 10), small)
    assert isinstance(req, rq.Send)


def test_text_with_surrounding_space_is_kept_verbatim() -> None:
    _, req = _parse(_with(SEND_TEXT, "body.text", "  hi  "))
    assert isinstance(req, rq.Send)
    assert req.body["text"] == "  hi  "


def test_send_mention_all_false_is_not_in_body() -> None:
    _, req = _parse(_with(SEND_TEXT, "body", {"text": "hi", "mention_all": False}))
    assert isinstance(req, rq.Send)
    assert req.body == {"text": "hi"}
    assert req.mentions == ()
    assert req.mention_all is False


def test_send_empty_mentions_list_is_accepted() -> None:
    # docs/protocol.md 4.2: `mentions` is an optional list of user ids. The SDK's
    # send_text(mentions=[]) puts an empty list on the wire; it means "nobody".
    _, req = _parse(_with(SEND_TEXT, "body", {"text": "hi", "mentions": []}))
    assert isinstance(req, rq.Send)
    assert req.body == {"text": "hi"}
    assert req.mentions == ()


def test_null_optional_fields_count_as_absent() -> None:
    _, req = _parse({"type": "history", "id": 1, "conv": DM, "before_seq": None, "limit": None})
    assert req == rq.History(conv=DM, before_seq=None, limit=LIMITS.history_page_max)


def test_group_limits_follow_config() -> None:
    limits = LimitsConfig(max_group_members=3, max_group_name_chars=4)
    frame = {"type": "group.create", "id": 1, "name": "abcd", "members": ["a", "b", "c"]}
    _, req = parse_request(frame, limits)
    assert req == rq.GroupCreate("abcd", ("a", "b", "c"))
    with pytest.raises(InvalidField) as info:
        parse_request({**frame, "members": ["a", "b", "c", "d"]}, limits)
    assert info.value.field == "members"
    with pytest.raises(InvalidField) as info:
        parse_request({**frame, "name": "abcde"}, limits)
    assert info.value.field == "name"


# -- properties ---------------------------------------------------------------------
_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=4)
)
_json_like = st.recursive(
    _leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=10) | st.binary(max_size=2), children, max_size=4)
    ),
    max_leaves=16,
)

# Per-field values, mostly plausible, so that random frames often get deep into
# the parser (and sometimes all the way through).
_user_lists = st.lists(
    st.sampled_from(["bob", "carol", "dave", "bob", "bob", "carol", "bad id", "", "x" * 65]),
    max_size=4,
)
_text_body = st.fixed_dictionaries(
    {"text": st.one_of(st.text(max_size=8), st.just("x" * 5001), st.just("  "))},
    optional={
        "mentions": st.lists(st.sampled_from(["bob", "carol", "b b"]), max_size=3) | _json_like,
        "mention_all": st.booleans() | st.just(1),
    },
)
_file_body = st.fixed_dictionaries(
    {
        "file": st.fixed_dictionaries(
            {},
            optional={
                "id": st.sampled_from([FILE_ID, FILE_ID.upper(), "ab"]),
                "name": st.text(max_size=4),
                "size": st.integers(min_value=-1, max_value=2**54) | st.booleans(),
                "mime": st.just("text/plain"),
            },
        )
        | _json_like
    }
)
_seqs = st.integers(min_value=-2, max_value=300) | st.booleans() | st.floats(0, 5)
_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "token": st.text(max_size=10),
    "conv": st.sampled_from([GROUP, DM, GROUP, DM, GROUP, DM, "g:short", "dm:a", "x"]),
    "to": st.sampled_from(["bob", "b b", ""]),
    "client_msg_id": st.sampled_from(["c-1", "", "c" * 65]),
    "kind": st.sampled_from(["text", "file", "system"]),
    "body": _text_body | _file_body,
    "since": st.dictionaries(st.sampled_from([DM, GROUP, "bad"]), _seqs, max_size=3),
    "limit": _seqs,
    "before_seq": _seqs,
    "seq": _seqs,
    "name": st.sampled_from(["team", " team ", "  ", "n" * 65]),
    "members": _user_lists,
    "user": st.sampled_from(["bob", "b b"]),
    "role": st.sampled_from(["admin", "member", "owner"]),
    "users": _user_lists,
}
# Bad ids are covered by test_random_frames_*; here ids are valid so frames get further.
_ids = st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.text(max_size=64)
_typed_frames = st.builds(
    lambda t, rid, fields: {**fields, "type": t, "id": rid},
    st.sampled_from(REQUEST_TYPES),
    _ids,
    st.fixed_dictionaries(
        {}, optional={k: st.one_of(v, v, v, _json_like) for k, v in _FIELDS.items()}
    ),
)
_random_frames = st.dictionaries(st.text(max_size=10), _json_like, max_size=6)


def _mutate(
    base: dict[str, Any], rid: int | str, drop: set[str], changes: dict[str, Any]
) -> dict[str, Any]:
    out = {k: v for k, v in base.items() if k not in drop}
    out.update(changes)
    out["id"] = rid
    return out


# Valid examples with a few fields dropped or replaced: mostly near-valid frames.
_mutated_frames = st.builds(
    _mutate,
    st.sampled_from([frame for frame, _ in VALID]),
    _ids,
    st.sets(st.sampled_from(sorted(_FIELDS)), max_size=2),
    st.dictionaries(
        st.sampled_from(sorted(_FIELDS)),
        st.one_of(*(st.one_of(v, _json_like) for v in _FIELDS.values())),
        max_size=3,
    ),
)


def _is_conv(v: object) -> bool:
    return isinstance(v, str) and CONV_ID_RE.fullmatch(v) is not None


def _is_int(v: object, lo: int, hi: int = 2**62) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _users_ok(users: object, *, allow_empty: bool) -> bool:
    return (
        isinstance(users, tuple)
        and (allow_empty or len(users) > 0)
        and all(is_user_id(u) for u in users)
        and len(set(users)) == len(users)
    )


def _check_promised_types(rid: object, req: rq.Request) -> None:
    assert (isinstance(rid, int) and not isinstance(rid, bool)) or (
        isinstance(rid, str) and len(rid) <= 64
    )
    match req:
        case rq.Auth(token=token):
            assert isinstance(token, str) and 1 <= len(token) <= 4096
        case rq.Ping() | rq.Unread() | rq.GroupList():
            pass
        case rq.Send():
            assert (req.conv is None) != (req.to is None)
            assert req.conv is None or _is_conv(req.conv)
            assert req.to is None or is_user_id(req.to)
            assert isinstance(req.client_msg_id, str) and 1 <= len(req.client_msg_id) <= 64
            assert isinstance(req.mention_all, bool)
            assert _users_ok(req.mentions, allow_empty=True)
            assert isinstance(req.body, dict)
            if req.kind == "text":
                text = req.body["text"]
                assert isinstance(text, str) and text.strip()
                assert len(text) <= LIMITS.max_text_chars
                assert set(req.body) <= {"text", "mentions", "mention_all", "urgent"}
                assert ("urgent" in req.body) == req.urgent
            else:
                assert req.kind == "file"
                assert ("urgent" in req.body) == req.urgent
                f = req.body["file"]
                assert set(f) == {"id", "name", "size", "mime"}
                assert isinstance(f["id"], str) and FILE_ID_RE.fullmatch(f["id"])
                assert isinstance(f["name"], str) and isinstance(f["mime"], str)
                assert _is_int(f["size"], 0, 2**53)
        case rq.Sync(since=since, limit=limit):
            assert isinstance(since, dict)
            assert all(_is_conv(k) and _is_int(v, 0) for k, v in since.items())
            assert _is_int(limit, 1, LIMITS.sync_page_messages)
        case rq.History(conv=conv, before_seq=before, limit=limit):
            assert _is_conv(conv)
            assert before is None or _is_int(before, 1)
            assert _is_int(limit, 1, LIMITS.history_page_max)
        case rq.Read(conv=conv, seq=seq):
            assert _is_conv(conv) and _is_int(seq, 0)
        case rq.ReadStatus(conv=conv, seq=seq) | rq.Recall(conv=conv, seq=seq):
            assert _is_conv(conv) and _is_int(seq, 1)
        case rq.GroupCreate(name=name, members=members):
            assert isinstance(name, str) and name and name == name.strip()
            assert len(name) <= LIMITS.max_group_name_chars
            assert _users_ok(members, allow_empty=True)
        case rq.GroupRename(conv=conv, name=name):
            assert _is_conv(conv)
            assert isinstance(name, str) and name and name == name.strip()
        case rq.GroupAdd(conv=conv, members=members) | rq.GroupRemove(conv=conv, members=members):
            assert _is_conv(conv) and _users_ok(members, allow_empty=False)
        case rq.GroupLeave(conv=conv) | rq.GroupMembers(conv=conv):
            assert _is_conv(conv)
        case rq.GroupRole(conv=conv, user=user, role=role):
            assert _is_conv(conv) and is_user_id(user) and role in ("admin", "member")
        case (
            rq.PresenceQuery(users=users)
            | rq.PresenceSubscribe(users=users)
            | rq.PresenceUnsubscribe(users=users)
        ):
            assert _users_ok(users, allow_empty=False)
            assert len(users) <= LIMITS.presence_subscriptions
        case rq.DingConfirm(conv=conv, seq=seq) | rq.DingStatusReq(conv=conv, seq=seq):
            assert _is_conv(conv) and _is_int(seq, 1)
        case rq.DirectoryUsers(users=users):
            assert _users_ok(users, allow_empty=False) and len(users) <= 200
        case rq.DirectoryUnit(unit=unit, recursive=recursive, cursor=cursor, limit=limit):
            assert isinstance(unit, str) and UNIT_ID_RE.fullmatch(unit)
            assert isinstance(recursive, bool) and _is_int(limit, 1, 500)
            assert cursor is None or (isinstance(cursor, str) and 1 <= len(cursor) <= 512)
        case rq.DirectorySearch(q=q, unit=unit, cursor=cursor, limit=limit):
            assert isinstance(q, str) and q and q == q.strip() and len(q) <= 64
            assert unit is None or (isinstance(unit, str) and UNIT_ID_RE.fullmatch(unit))
            assert cursor is None or (isinstance(cursor, str) and 1 <= len(cursor) <= 512)
            assert _is_int(limit, 1, 100)
        case rq.DirectoryChanges(since=since, limit=limit):
            assert _is_int(since, 0) and _is_int(limit, 1, 1000)
        case _:  # pragma: no cover
            raise AssertionError(f"unexpected request {req!r}")


def _parse_or_error(frame: dict[str, Any]) -> None:
    try:
        rid, req = parse_request(frame, LIMITS)
    except ImError as e:
        assert e.code in ("invalid_field", "unknown_type", "text_too_long")
        if isinstance(e, InvalidField | TextTooLong):
            assert isinstance(e.field, str) and e.field
    else:
        _check_promised_types(rid, req)


@settings(max_examples=400, deadline=None)
@given(frame=_random_frames)
def test_random_frames_only_raise_im_errors(frame: dict[str, Any]) -> None:
    _parse_or_error(frame)


@settings(max_examples=300, deadline=None)
@given(frame=_typed_frames)
def test_random_typed_frames_only_raise_im_errors_and_keep_type_promises(
    frame: dict[str, Any],
) -> None:
    _parse_or_error(frame)


@settings(max_examples=400, deadline=None)
@given(frame=_mutated_frames)
def test_mutated_valid_frames_only_raise_im_errors_and_keep_type_promises(
    frame: dict[str, Any],
) -> None:
    _parse_or_error(frame)
