"""Sensitive fields: encrypted at rest (AES-256-GCM or SM4-GCM), masked unless pii:read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from imserver.app import build_world, start_world, stop_world
from imserver.field_protection import add_key, keys_file
from imserver.fieldcrypt import Keyring
from imserver_sdk import BusinessClient
from tests.cards_support import ADMIN_KEY, BusinessStub, approval_card
from tests.support import Harness

PHONE = "13812341234"
ID_NUMBER = "360102199001011234"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}

TREE = (
    b'{"op":"unit","id":"jx","name":"\xe6\xb1\x9f\xe8\xa5\xbf","level":"province"}\n'
    b'{"op":"unit","id":"nc","name":"nc","level":"city","parent":"jx"}\n'
    b'{"op":"member","user":"zhang","name":"zhang","units":[{"unit":"nc"}],'
    b'"profile":{"phone":"13812341234","id_number":"360102199001011234","email":"z@x.cn"}}\n'
)


async def database_bytes(server: Harness) -> bytes:
    """Everything the store keeps at rest: the SQLite files (with WAL), or on PostgreSQL
    every value of every table in the store's schema, read on a connection of our own."""
    store = server.world.config.store
    if store.backend != "postgres":
        path = server.world.config.sqlite_file
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    conn = await asyncpg.connect(store.dsn, timeout=10)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
        )
        assert tables, "no tables in the store's schema"
        out: list[bytes] = []
        for (table,) in tables:
            for row in await conn.fetch(f'SELECT * FROM "{table}"'):
                for value in row.values():
                    out.append(value if isinstance(value, bytes) else str(value).encode())
        return b"\n".join(out)
    finally:
        await conn.close()


async def admin_get(server: Harness, path: str, token: str = ADMIN_KEY) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{server.world.http_url}{path}", headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        return r.status, await r.json()


async def admin_post(server: Harness, path: str, body: Any, method: str = "POST") -> int:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, f"{server.world.http_url}{path}", json=body, headers=AUTH) as r,
    ):
        return r.status


async def sync(server: Harness) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{server.world.http_url}/admin/v1/directory/sync?mode=full", data=TREE, headers=AUTH
        ) as r,
    ):
        assert r.status == 200, await r.text()


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "sm4-gcm"])
async def test_profiles_are_encrypted_at_rest_and_masked_without_pii_read(
    start_server: Any, cipher: str
) -> None:
    server: Harness = await start_server(
        auth={"admin_api_key": ADMIN_KEY}, security={"field_cipher": cipher}
    )
    await sync(server)
    raw = await database_bytes(server)
    assert PHONE.encode() not in raw and ID_NUMBER.encode() not in raw
    assert b"v1.k1." in raw  # the sealed token, with its key id
    assert keys_file(server.world.config).read_text().split(":")[1] == cipher

    # A scoped admin without pii:read sees masked values; with it, the clear ones.
    await server.users("li")
    assert await admin_post(server, "/admin/v1/admins", {"user": "li", "unit": "nc"}) == 201
    li = server.token("li")
    status, user = await admin_get(server, "/admin/v1/users/zhang", li)
    assert status == 200
    assert status == 200
    assert user["profile"]["phone"] == "138****1234"
    assert user["profile"]["id_number"] == "360102********1234"
    assert user["profile"]["email"] == "z@x.cn"  # not a sensitive field
    assert await admin_post(server, "/admin/v1/scopes", {"user": "li", "scope": "pii:read"}) == 200
    status, user = await admin_get(server, "/admin/v1/users/zhang", li)
    assert status == 200
    assert (user["profile"]["phone"], user["profile"]["id_number"]) == (PHONE, ID_NUMBER)
    assert (
        await admin_post(
            server, "/admin/v1/scopes", {"user": "li", "scope": "pii:read"}, method="DELETE"
        )
        == 200
    )
    status, user = await admin_get(server, "/admin/v1/users/zhang", li)
    assert status == 200
    assert user["profile"]["phone"] == "138****1234"
    assert await admin_post(server, "/admin/v1/scopes", {"user": "li", "scope": "root"}) == 400


async def test_sensitive_card_fields_sealed_and_revealed_only_to_pii_read(
    card_server: Harness, oa: BusinessClient, stub: BusinessStub
) -> None:
    await card_server.users("li", "wang")
    assert (
        await admin_post(card_server, "/admin/v1/scopes", {"user": "wang", "scope": "pii:read"})
        == 200
    )
    li = await card_server.client("li")
    wang = await card_server.client("wang")
    card_id = (await oa.push_card(approval_card("pii", ["li"]), users=["li", "wang"]))["card_id"]
    assert PHONE.encode() not in await database_bytes(card_server)
    for client, shown in ((li, "138****1234"), (wang, PHONE)):
        ev = await client.next_event("message", predicate=lambda e: e.data["kind"] == "card")
        assert ev.data["body"]["card"]["fields"][1]["value"] == shown
        view = await client.request("card.get", card_id=card_id)
        assert view["fields"][1]["value"] == shown
        history = await client.history(f"n:oa:{client.user}")
        assert history["messages"][0]["body"]["card"]["fields"][1]["value"] == shown
    assert (await oa.get_card("pii"))["fields"][1]["value"] == PHONE  # the app's own data
    # An update fans out both variants again.
    await oa.update_card("pii", body_md="更新")
    for client, shown in ((li, "138****1234"), (wang, PHONE)):
        ev = await client.next_event("card", predicate=lambda e: e.data["version"] == 2)
        assert ev.data["fields"][1]["value"] == shown
    assert PHONE.encode() not in await database_bytes(card_server)


async def test_key_rotation_reencrypts_and_old_values_still_read(
    start_server: Any, tmp_path: Path
) -> None:
    server: Harness = await start_server(auth={"admin_api_key": ADMIN_KEY})
    await sync(server)
    config = server.world.config
    await server.close()
    await stop_world(server.world)
    new_id = add_key(config, "sm4-gcm")
    assert new_id == "k2"
    world = build_world(config)  # restart: k2 is now active, k1 still decrypts
    await start_world(world)
    server.world = world
    try:
        raw = await database_bytes(server)
        assert b"v1.k1." in raw and b"v1.k2." not in raw
        status, user = await admin_get(server, "/admin/v1/users/zhang")
        assert status == 200
        assert user["profile"]["phone"] == PHONE  # super key: clear; decrypted with k1
        profiles, cards = await world.store.rotate_sealed(world.directory.sealer)  # type: ignore[arg-type]
        assert (profiles, cards) == (1, 0)
        assert (await world.store.rotate_sealed(world.directory.sealer)) == (0, 0)  # type: ignore[arg-type]
        prof = await world.store.member_profile("zhang")
        assert prof is not None and Keyring.is_token(prof.profile["phone"])
        assert prof.profile["phone"].startswith("v1.k2.")
        status, user = await admin_get(server, "/admin/v1/users/zhang")
        assert status == 200
        assert user["profile"]["id_number"] == ID_NUMBER
    finally:
        await server.close()
        await stop_world(world)
