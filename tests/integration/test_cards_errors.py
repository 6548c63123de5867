"""Bad input on the card paths: a clear error with a stable code, and nothing changed."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson
import pytest

from imserver_sdk import BusinessClient, BusinessError, ServerError, sign_request
from tests.cards_support import (
    ADMIN_KEY,
    BusinessStub,
    approval_card,
    register_app,
)
from tests.support import Harness


@pytest.fixture(autouse=True)
async def people(card_server: Harness) -> None:
    await card_server.users("li", "wang", "zhao")


async def post_raw(
    server: Harness, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{server.world.http_url}{path}", data=body, headers=headers) as r,
    ):
        return r.status, await r.json()


async def no_cards(server: Harness) -> None:
    assert await server.world.store.todo_cards("li", 10) == ([], 0)
    conv = await server.world.store.get_conversation("n:oa:li")
    assert conv is None


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda c: c.pop("title"), "card.title"),
        (lambda c: c.update(out_track_id="bad id!"), "card.out_track_id"),
        (lambda c: c.update(out_track_id=".."), "card.out_track_id"),
        (lambda c: c["actions"][1].update(decision="maybe"), "card.actions[1].decision"),
        (lambda c: c["actions"].append(dict(c["actions"][0])), "card.actions[2].id"),
        (lambda c: c["fields"][0].update(label=""), "card.fields[0].label"),
        (lambda c: c["status"].update(color="pink"), "card.status.color"),
        (lambda c: c["policy"].update(type="most"), "card.policy.type"),
        (lambda c: c["policy"].update(actors=["li", "li"]), "card.policy.actors"),
        (lambda c: c["inputs"][0].update(required_for=["nope"]), "card.inputs[0].required_for[0]"),
        (lambda c: c.update(body_md="x" * 9000), "card.body_md"),
        (lambda c: c.update(due_at=-5), "card.due_at"),
        (lambda c: c["policy"].update(actors=["zhao"]), "card.policy.actors"),  # not a recipient
    ],
)
async def test_schema_errors_name_the_field_and_store_nothing(
    card_server: Harness, oa: BusinessClient, mutate: Any, field: str
) -> None:
    card = approval_card("bad", ["li"])
    mutate(card)
    with pytest.raises(BusinessError) as info:
        await oa.push_card(card, users=["li"])
    assert info.value.status == 400 and info.value.code == "invalid_field"
    assert info.value.field == field
    await no_cards(card_server)


async def test_recipient_errors(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    with pytest.raises(BusinessError) as info:
        await oa.push_card(approval_card("x", ["nobody"]), users=["nobody"])
    assert (info.value.status, info.value.code) == (404, "no_such_user")
    with pytest.raises(BusinessError) as info:
        await oa.push_card(approval_card("x", ["li"]), users=["li"], groups=["g:doesnotexist"])
    assert (info.value.status, info.value.code) == (404, "no_such_conversation")
    # An app scoped to li only cannot reach wang.
    await register_app(card_server.world.http_url, stub, scope=["user:li"], app_id="hotline")
    async with BusinessClient(card_server.world.http_url, "hotline", stub.secret) as hotline:
        with pytest.raises(BusinessError) as info:
            await hotline.push_card(approval_card("x", ["li"]), users=["li", "wang"])
        assert (info.value.status, info.value.code) == (403, "out_of_scope")
        assert "wang" in info.value.message
        ok = await hotline.push_card(approval_card("x", ["li"]), users=["li"])
        assert ok["holders"] == 1
    await register_app(card_server.world.http_url, stub)  # restore "oa"
    assert await card_server.world.store.get_conversation("n:oa:li") is None


async def test_signature_errors(
    card_server: Harness, stub: BusinessStub, oa: BusinessClient
) -> None:
    body = orjson.dumps({"card": approval_card("sig", ["li"]), "to": {"users": ["li"]}})
    path = "/api/v1/apps/cards"
    good = sign_request(stub.app_id, stub.secret, body)

    status, err = await post_raw(card_server, path, body, {**good, "X-Imserver-App": "ghost"})
    assert (status, err["error"]["code"]) == (401, "unknown_app")
    status, err = await post_raw(card_server, path, body, {})
    assert (status, err["error"]["code"]) == (401, "unknown_app")
    forged = sign_request(stub.app_id, "another-secret-of-at-least-32-chars!!", body)
    status, err = await post_raw(card_server, path, body, forged)
    assert (status, err["error"]["code"]) == (401, "bad_signature")
    tampered = body.replace(b"sig", b"gis")
    status, err = await post_raw(card_server, path, tampered, good)
    assert (status, err["error"]["code"]) == (401, "bad_signature")
    old = sign_request(stub.app_id, stub.secret, body, now=time.time() - 3600)
    status, err = await post_raw(card_server, path, body, old)
    assert (status, err["error"]["code"]) == (401, "signature_expired")
    await no_cards(card_server)

    status, ok = await post_raw(card_server, path, body, good)
    assert status == 201 and ok["out_track_id"] == "sig"
    status, err = await post_raw(card_server, path, body, good)  # the same request again
    assert (status, err["error"]["code"]) == (401, "nonce_replayed")


async def test_duplicate_push_is_idempotent(card_server: Harness, oa: BusinessClient) -> None:
    li = await card_server.client("li")
    first = await oa.push_card(approval_card("dup", ["li"]), users=["li"])
    again = await oa.push_card(approval_card("dup", ["li"]), users=["li"])
    assert again["duplicate"] is True and again["card_id"] == first["card_id"]
    await li.sync()
    assert len(li.messages("n:oa:li")) == 1


async def test_actions_by_non_actors_and_non_holders(
    card_server: Harness, oa: BusinessClient
) -> None:
    li, wang, zhao = [await card_server.client(n) for n in ("li", "wang", "zhao")]
    card_id = (await oa.push_card(approval_card("who", ["li"]), users=["li", "wang"]))["card_id"]
    before = await card_server.world.store.get_card(card_id)
    cases = [
        (wang, "approve", "not_actor"),  # holder, not an approver
        (zhao, "approve", "no_such_card"),  # not even a holder
        (li, "explode", "invalid_field"),  # no such button
    ]
    for client, action, code in cases:
        with pytest.raises(ServerError) as info:
            await client.request("card.act", card_id=card_id, action=action, action_id="x")
        assert info.value.code == code
    with pytest.raises(ServerError) as info:
        await li.request(
            "card.act", card_id=card_id, action="approve", action_id="y", inputs={"nope": "1"}
        )
    assert info.value.code == "invalid_field" and info.value.field == "inputs.nope"
    with pytest.raises(ServerError) as info:
        await li.request("card.act", card_id="not-a-card", action="approve", action_id="z")
    assert info.value.code == "invalid_field"
    after = await card_server.world.store.get_card(card_id)
    assert after == before  # nothing changed
    assert await card_server.world.store.list_callbacks("pending", 10) == []


async def test_admin_app_registration_is_checked(card_server: Harness) -> None:
    url = f"{card_server.world.http_url}/admin/v1/apps"
    good = {"app_id": "oa2", "secret": "s" * 32, "callback_url": "http://127.0.0.1:1/cb"}
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=good) as r:
            assert r.status == 401
        async with s.post(
            url, json=good, headers={"Authorization": "Bearer wrong-key-xxxxxxxx"}
        ) as r:
            assert r.status == 403
        auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
        for bad, field in [
            ({**good, "app_id": "Bad App"}, "app.app_id"),
            ({**good, "secret": "short"}, "app.secret"),
            ({**good, "callback_url": "ftp://x"}, "app.callback_url"),
            ({**good, "scope": ["everyone"]}, "app.scope[0]"),
        ]:
            async with s.post(url, json=bad, headers=auth) as r:
                assert r.status == 400
                assert (await r.json())["error"]["field"] == field
    assert await card_server.world.store.get_app("oa2") is None
