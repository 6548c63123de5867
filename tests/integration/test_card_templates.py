"""Card templates and per-viewer private data, end to end (docs/cards.md, "Templates",
"Private data"): a real server, the SDK's signed business client, WebSocket clients."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from imserver_sdk import BusinessClient, BusinessError, Client
from tests.cards_support import ADMIN_KEY, CARD_SETTINGS, BusinessStub, register_app
from tests.postgres_support import fresh_dsn
from tests.support import Harness

LEAVE: dict[str, Any] = {
    "out_track_id": "leave-{{case}}",
    "title": "请假审批：{{name}} {{days}} 天",
    "fields": [
        {"label": "申请人", "value": "{{name}}"},
        {"label": "事由", "value": "{{reason}}"},
    ],
    "body_md": "**起止**：{{span}}",
    "status": {"text": "待审批", "color": "orange"},
    "actions": [
        {"id": "approve", "label": "同意", "decision": "approve", "style": "primary"},
        {"id": "reject", "label": "驳回", "decision": "reject", "style": "danger"},
    ],
    "policy": {"type": "any", "actors": ["{{approver}}"]},
}
VARS = {
    "case": "0042",
    "name": "张三",
    "days": "3",
    "reason": "家中有事",
    "span": "11月27日—11月29日",
    "approver": "li",
}


@pytest.fixture(params=["sqlite", "postgres"])
async def card_server(request: pytest.FixtureRequest, start_server: Any) -> Harness:
    """The card server of tests/integration/conftest.py, on each store backend."""
    store: dict[str, Any] = {}
    if request.param == "postgres":
        dsn, _schema = fresh_dsn()  # dropped with the run's database at exit
        store = {"backend": "postgres", "dsn": dsn, "pool_min_size": 1, "pool_max_size": 4}
    server: Harness = await start_server(
        auth={"admin_api_key": ADMIN_KEY}, cards=CARD_SETTINGS, store=store
    )
    return server


def leave_v2() -> dict[str, Any]:
    return {**LEAVE, "title": "【新版】{{name}}请假{{days}}天", "status": {"text": "待领导审批"}}


def variables(**changes: str) -> dict[str, str]:
    return {**VARS, **changes}


async def card_message(c: Client, card_id: str) -> dict[str, Any]:
    """The card message this client received live for ``card_id``: its view."""
    ev = await c.next_event(
        "message",
        predicate=lambda e: e.data["kind"] == "card" and e.data["body"]["card_id"] == card_id,
    )
    view: dict[str, Any] = ev.data["body"]["card"]
    return view


async def card_event(c: Client, card_id: str, version: int) -> dict[str, Any]:
    ev = await c.next_event(
        "card",
        predicate=lambda e: e.data["card_id"] == card_id and e.data["version"] >= version,
    )
    view: dict[str, Any] = ev.data
    return view


def field(view: dict[str, Any], label: str) -> str | None:
    values = [f["value"] for f in view["fields"] if f["label"] == label]
    return values[0] if values else None


async def refused(call: Any) -> BusinessError:
    with pytest.raises(BusinessError) as info:
        await call
    return info.value


# -- templates -------------------------------------------------------------------------
async def test_register_push_by_template_versions_and_preview(
    card_server: Harness, oa: BusinessClient
) -> None:
    li = await card_server.client("li")
    wang = await card_server.client("wang")

    v1 = await oa.put_template("leave", LEAVE)
    assert (v1["version"], v1["created"]) == (1, True)
    assert v1["slots"] == sorted(VARS)
    again = await oa.put_template("leave", LEAVE)  # a retried PUT makes no version
    assert (again["version"], again["created"]) == (1, False)

    # Preview: the view a holder gets, rendered, and nothing stored.
    preview = await oa.preview_template("leave", variables(case="p1"))
    card = preview["card"]
    assert (preview["version"], card["title"], card["state"]) == (1, "请假审批：张三 3 天", "open")
    assert card["out_track_id"] == "leave-p1" and card["actionable_by"] == ["li"]
    assert field(card, "事由") == "家中有事" and card["version"] == 1
    assert "template" not in card and "private" not in card
    mine = {"li": {"status": {"text": "请你审批", "color": "red"}}}
    for viewer, status in (("li", "请你审批"), ("wang", "待审批")):
        shown = await oa.preview_template(
            "leave", variables(case="p1"), private=mine, viewer=viewer
        )
        assert shown["card"]["status"]["text"] == status and "private" not in shown["card"]
    wrong = await refused(oa.preview_template("leave", {**VARS, "extra": "x"}))
    assert (wrong.code, wrong.field) == ("invalid_field", "variables.extra")
    missing = await refused(oa.get_card("leave-p1"))
    assert (missing.status, missing.code) == (404, "no_such_card")
    assert [t["version"] for t in await oa.list_templates()] == [1]

    first = await oa.push_template_card("leave", variables(), users=["li", "wang"])
    assert first["template"] == {"template_id": "leave", "version": 1}
    assert (first["version"], first["holders"], first["duplicate"]) == (1, 2, False)
    for c in (li, wang):
        view = await card_message(c, first["card_id"])
        assert (
            view["title"] == "请假审批：张三 3 天"
            and view["body_md"] == "**起止**：11月27日—11月29日"
        )
        assert view["actionable_by"] == ["li"] and field(view, "申请人") == "张三"

    v2 = await oa.put_template("leave", leave_v2())
    assert (v2["version"], v2["created"]) == (2, True)
    latest = await oa.push_template_card("leave", variables(case="0043"), users=["li"])
    pinned = await oa.push_template_card(
        "leave", variables(case="0044"), users=["li"], template_version=1
    )
    assert latest["template"]["version"] == 2 and pinned["template"]["version"] == 1
    assert (await card_message(li, latest["card_id"]))["title"] == "【新版】张三请假3天"
    assert (await card_message(li, pinned["card_id"]))["title"] == "请假审批：张三 3 天"
    assert (await oa.get_card("leave-0043"))["template"] == {"template_id": "leave", "version": 2}

    assert (await oa.get_template("leave"))["template"]["title"] == leave_v2()["title"]
    assert (await oa.get_template("leave", version=1))["template"] == LEAVE
    listed = await oa.list_templates()
    assert [(t["template_id"], t["version"]) for t in listed] == [("leave", 2)]
    old = await oa.preview_template("leave", variables(), version=1)
    assert old["card"]["title"] == "请假审批：张三 3 天"


@pytest.fixture
async def hr(card_server: Harness) -> AsyncIterator[BusinessClient]:
    """A second app, "hr", with its own secret."""
    other = BusinessStub()
    other.app_id = "hr"
    await other.start()
    await register_app(card_server.world.http_url, other)
    client = BusinessClient(card_server.world.http_url, other.app_id, other.secret)
    yield client
    await client.close()
    await other.stop()


async def test_bad_templates_and_pushes_are_refused_naming_the_path_and_store_nothing(
    card_server: Harness, oa: BusinessClient, hr: BusinessClient
) -> None:
    await card_server.users("li", "wang", "zhao")
    big = {**LEAVE, "body_md": "长" * 12_000}
    bad_templates = [
        (
            {**LEAVE, "fields": [{"label": "a", "value": "b", "{{k}}": "x"}]},
            "template.fields[0].{{k}}",
        ),
        ({**LEAVE, "title": "{{ bad-name }}"}, "template.title"),
        ({**LEAVE, "status": {"text": "x", "color": "{{color}}"}}, "template.status.color"),
        ({**LEAVE, "due_at": "{{due}}"}, "template.due_at"),
        (big, "template"),
    ]
    for template, path in bad_templates:
        e = await refused(oa.put_template("bad", template))
        assert (e.status, e.code, e.field) == (400, "invalid_field", path), (path, e)
    e = await refused(oa.request("PUT", "/api/v1/templates/bad", {"template": [LEAVE]}))
    assert (e.code, e.field) == ("invalid_field", "template")
    e = await refused(oa.put_template("Bad Id", LEAVE))
    assert (e.code, e.field) == ("invalid_field", "template_id")
    too_big = await refused(oa.put_template("bad", big))
    assert "bytes as JSON" in str(too_big)
    assert await oa.list_templates() == []

    await oa.put_template("leave", LEAVE)
    bad_pushes = [
        ({k: v for k, v in VARS.items() if k != "reason"}, "variables.reason"),
        ({**VARS, "extra": "x"}, "variables.extra"),
        ({**VARS, "days": 3}, "variables.days"),
        (variables(name="名" * 200), "card.title"),  # the rendered card's own limit
        (variables(approver="not a user!"), "card.policy.actors[0]"),
        (variables(case="a/b"), "card.out_track_id"),
    ]
    for values, path in bad_pushes:
        e = await refused(oa.push_template_card("leave", values, users=["li"]))
        assert (e.status, e.code, e.field) == (400, "invalid_field", path), (path, e)
    # A value that looks like a slot, or like JSON, is text: no injection.
    sneaky = variables(case="s1", reason='{{name}}", "sensitive": true, "x": "', name="{{reason}}")
    pushed = await oa.push_template_card("leave", sneaky, users=["li"])
    view = await oa.get_card("leave-s1")
    assert field(view, "事由") == sneaky["reason"] and field(view, "申请人") == "{{reason}}"
    assert [f["sensitive"] for f in view["fields"]] == [False, False] and pushed["version"] == 1

    # Templates are per app: hr cannot use, read or preview oa's.
    for call in (
        hr.push_template_card("leave", variables(case="hr1"), users=["li"]),
        hr.get_template("leave"),
        hr.preview_template("leave", VARS),
    ):
        e = await refused(call)
        assert (e.status, e.code, e.field) == (404, "no_such_template", "template_id")
    assert await hr.list_templates() == []
    e = await refused(
        oa.push_template_card("leave", variables(case="v9"), users=["li"], template_version=9)
    )
    assert (e.status, e.code) == (404, "no_such_template")
    e = await refused(
        oa.request(
            "POST",
            "/api/v1/apps/cards",
            {"card": LEAVE, "template_id": "leave", "to": {"users": ["li"]}},
        )
    )
    assert (e.code, e.field) == ("invalid_field", "card")

    # Private data: only for holders, and never for a sensitive field.
    private_refusals = [
        ({"zhao": {"status": {"text": "你的"}}}, "private.zhao"),
        (
            {"li": {"fields": [{"label": "x", "value": "y", "sensitive": True}]}},
            "private.li.fields[0].sensitive",
        ),
        ({"li": {"title": "mine"}}, "private.li.title"),
        ({"li": {"fields": [{"label": "x", "value": "v" * 1001}]}}, "private.li.fields[0].value"),
        (
            {"li": {"fields": [{"label": f"l{i}", "value": "v" * 900} for i in range(5)]}},
            "private.li",
        ),
    ]
    for private, path in private_refusals:
        e = await refused(
            oa.push_template_card(
                "leave", variables(case="p9"), users=["li", "wang"], private=private
            )
        )
        assert (e.status, e.code, e.field) == (400, "invalid_field", path), (path, e)
    secret_card = {
        "out_track_id": "pii",
        "title": "t",
        "fields": [{"label": "手机", "value": "13812341234", "sensitive": True}],
    }
    e = await refused(
        oa.push_card(
            secret_card,
            users=["li"],
            private={"li": {"fields": [{"label": "手机", "value": "13900000000"}]}},
        )
    )
    assert e.field == "private.li.fields[0].label"
    for track in ("leave-p9", "leave-hr1", "leave-v9", "pii", "leave-0042"):
        assert (await refused(oa.get_card(track))).code == "no_such_card"
    assert [t["version"] for t in await oa.list_templates()] == [1]


# -- private data ----------------------------------------------------------------------
PRIVATE = {
    "li": {
        "fields": [{"label": "我的额度", "value": "li-剩余5天"}],
        "status": {"text": "请你审批", "color": "red"},
    },
    "wang": {"fields": [{"label": "申请人", "value": "wang-看到的申请人"}]},
}


async def test_private_data_each_holder_sees_only_their_own_everywhere(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    li = await card_server.client("li")
    wang = await card_server.client("wang")
    zhao = await card_server.client("zhao")
    await oa.put_template("leave", {**LEAVE, "policy": {"type": "all", "actors": ["li", "wang"]}})
    values = {k: v for k, v in VARS.items() if k != "approver"}  # the actors are fixed here
    pushed = await oa.push_template_card(
        "leave", values, users=["li", "wang", "zhao"], private=PRIVATE
    )
    card_id = pushed["card_id"]

    def only_own(view: dict[str, Any], user: str) -> None:
        text = json.dumps(view, ensure_ascii=False)
        for other, marker in (("li", "li-剩余5天"), ("wang", "wang-看到的申请人")):
            assert (marker in text) == (other == user), (user, other, view)
        assert "private" not in view

    def check(view: dict[str, Any], user: str) -> None:
        only_own(view, user)
        if user == "li":
            assert field(view, "我的额度") == "li-剩余5天" and view["status"]["text"] == "请你审批"
            assert field(view, "申请人") == "张三"
        elif user == "wang":
            assert field(view, "申请人") == "wang-看到的申请人" and field(view, "我的额度") is None
            assert view["status"]["text"] == "待审批"
        else:
            assert field(view, "申请人") == "张三" and view["status"]["text"] == "待审批"
        assert len(view["fields"]) == (3 if user == "li" else 2)

    clients = {"li": li, "wang": wang, "zhao": zhao}
    for user, c in clients.items():  # the live push
        check(await card_message(c, card_id), user)
    for user, c in clients.items():  # card.get
        check(await c.request("card.get", card_id=card_id), user)
    for user in ("li", "wang"):  # todo (actors only)
        todo = await clients[user].request("todo")
        assert [v["card_id"] for v in todo["cards"]] == [card_id]
        check(todo["cards"][0], user)

    # The app's GET shows the card as pushed plus every holder's private data.
    mine = await oa.get_card("leave-0042")
    assert mine["private"] == PRIVATE and field(mine, "申请人") == "张三"

    # An update changes private data: li's replaced, wang's removed; live to each.
    await li.close()
    updated = await oa.update_card(
        "leave-0042",
        private={"li": {"fields": [{"label": "我的额度", "value": "li-剩余2天"}]}, "wang": None},
    )
    assert updated["version"] == 2
    w2 = await card_event(wang, card_id, 2)
    assert field(w2, "申请人") == "张三" and "li-剩余" not in json.dumps(w2, ensure_ascii=False)
    z2 = await card_event(zhao, card_id, 2)
    assert field(z2, "我的额度") is None
    assert (await oa.get_card("leave-0042"))["private"] == {
        "li": {"fields": [{"label": "我的额度", "value": "li-剩余2天"}]}
    }

    # li reconnects: the sync shows li's current private data, nobody else's.
    li2 = await card_server.client("li")
    (held,) = [m for m in li2.messages("n:oa:li") if m["kind"] == "card"]
    synced = held["body"]["card"]
    assert synced["version"] == 2 and field(synced, "我的额度") == "li-剩余2天"
    assert synced["status"]["text"] == "待审批"  # the private status went with the old entry
    raw = await card_server.raw("li", device="d2")
    cards = (await raw.request("sync", cards_since=0))["data"]["cards"]
    assert [field(v, "我的额度") for v in cards] == ["li-剩余2天"]
    raw_w = await card_server.raw("wang", device="d2")
    cards_w = (await raw_w.request("sync", cards_since=0))["data"]["cards"]
    assert [field(v, "我的额度") for v in cards_w] == [None]

    # An update for a non-holder is refused and changes nothing.
    e = await refused(oa.update_card("leave-0042", private={"zhang": {"status": {"text": "x"}}}))
    assert (e.code, e.field) == ("invalid_field", "private.zhang")
    assert (await oa.get_card("leave-0042"))["version"] == 2

    # Acting keeps private data; a decision fans out per viewer too, and the
    # callback's card_update may change private data like a PATCH.
    stub.answer = lambda a: {"private": {"li": {"status": {"text": f"{a.actor}已同意，请你审批"}}}}
    await wang.request("card.act", card_id=card_id, action="approve", action_id="w-approve-1")
    l3 = await card_event(li2, card_id, 3)
    assert field(l3, "我的额度") == "li-剩余2天" and l3["actionable_by"] == ["li"]
    l4 = await card_event(li2, card_id, 4)
    assert l4["status"]["text"] == "wang已同意，请你审批" and field(l4, "我的额度") is None
    w4 = await card_event(wang, card_id, 4)
    assert w4["status"]["text"] == "待审批" and "wang已同意" not in json.dumps(
        w4, ensure_ascii=False
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_an_app_cannot_register_templates_past_the_cap(
    backend: str, start_server: Any, stub: BusinessStub
) -> None:
    """``cards.max_templates`` ids per app and versions per template: then 409, nothing stored."""
    store: dict[str, Any] = {}
    if backend == "postgres":
        dsn, _schema = fresh_dsn()
        store = {"backend": "postgres", "dsn": dsn, "pool_min_size": 1, "pool_max_size": 4}
    server: Harness = await start_server(
        auth={"admin_api_key": ADMIN_KEY}, cards={**CARD_SETTINGS, "max_templates": 2}, store=store
    )
    await register_app(server.world.http_url, stub)
    async with BusinessClient(server.world.http_url, stub.app_id, stub.secret) as oa:
        await oa.put_template("a", LEAVE)
        await oa.put_template("b", LEAVE)
        with pytest.raises(BusinessError) as e:
            await oa.put_template("c", LEAVE)
        assert (e.value.status, e.value.code) == (409, "too_many_templates")
        assert sorted(t["template_id"] for t in await oa.list_templates()) == ["a", "b"]
        assert (await oa.put_template("a", LEAVE))["created"] is False  # a retry still answers
        await oa.put_template("a", leave_v2())  # version 2 of 2
        with pytest.raises(BusinessError) as e:
            await oa.put_template("a", {**LEAVE, "title": "第三版"})
        assert e.value.code == "too_many_templates" and e.value.field == "template_id"
        assert (await oa.get_template("a"))["version"] == 2
