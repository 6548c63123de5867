"""The HTTP file API, health and metrics (docs/protocol.md section 8)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import Harness

StartServer = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def auth(h: Harness, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {h.token(user, 'web')}"}


async def upload(
    http: aiohttp.ClientSession,
    h: Harness,
    data: Any,
    *,
    name: str | None = "report.pdf",
    mime: str = "application/pdf",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    params = {"name": name} if name is not None else {}
    hdrs = {"Content-Type": mime, **(headers or {})}
    async with http.post(
        f"{h.world.http_url}/api/v1/files", params=params, data=data, headers=hdrs
    ) as resp:
        body: dict[str, Any] = await resp.json()
        return resp.status, body


async def download(
    http: aiohttp.ClientSession, h: Harness, file_id: str, user: str | None
) -> tuple[int, bytes, aiohttp.typedefs.LooseHeaders]:
    headers = auth(h, user) if user is not None else {}
    async with http.get(f"{h.world.http_url}/api/v1/files/{file_id}", headers=headers) as resp:
        return resp.status, await resp.read(), resp.headers


def stored_files(h: Harness) -> list[Path]:
    root = h.world.config.data_path / "files"
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file())


def assert_error(status: int, body: dict[str, Any], want_status: int, code: str) -> None:
    assert status == want_status, (status, body)
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str)


# --------------------------------------------------------------------------- upload


async def test_upload_returns_sha256_id_and_size(
    server: Harness, http: aiohttp.ClientSession
) -> None:
    await server.users("alice")
    data = os.urandom(3000) + "报告".encode()
    status, body = await upload(http, server, data, headers=auth(server, "alice"))
    assert status == 201, body
    assert body == {
        "id": hashlib.sha256(data).hexdigest(),
        "name": "report.pdf",
        "size": len(data),
        "mime": "application/pdf",
    }
    files = stored_files(server)
    assert len(files) == 1 and files[0].name == body["id"]
    assert files[0].read_bytes() == data


async def test_same_content_twice_gives_same_id(
    server: Harness, http: aiohttp.ClientSession
) -> None:
    await server.users("alice", "bob")
    data = b"the same bytes" * 100
    s1, b1 = await upload(http, server, data, name="a.pdf", headers=auth(server, "alice"))
    s2, b2 = await upload(http, server, data, name="b.pdf", headers=auth(server, "bob"))
    assert (s1, s2) == (201, 201)
    assert b1["id"] == b2["id"] == hashlib.sha256(data).hexdigest()
    assert b2["name"] == "b.pdf"
    assert len(stored_files(server)) == 1  # stored once
    # Both uploaders may download it.
    for user in ("alice", "bob"):
        status, got, _ = await download(http, server, b1["id"], user)
        assert status == 200 and got == data


async def test_streamed_upload(server: Harness, http: aiohttp.ClientSession) -> None:
    await server.users("alice")
    chunks = [os.urandom(70_000) for _ in range(3)]

    async def gen() -> AsyncIterator[bytes]:
        for c in chunks:
            yield c

    status, body = await upload(http, server, gen(), headers=auth(server, "alice"))
    whole = b"".join(chunks)
    assert status == 201, body
    assert body["id"] == hashlib.sha256(whole).hexdigest() and body["size"] == len(whole)


async def test_mime_parameters_are_stripped(server: Harness, http: aiohttp.ClientSession) -> None:
    await server.users("alice")
    status, body = await upload(
        http,
        server,
        b"hello",
        name="a.txt",
        mime="text/plain; charset=utf-8",
        headers=auth(server, "alice"),
    )
    assert status == 201, body
    assert body["mime"] == "text/plain"


async def test_upload_without_token_is_401(server: Harness, http: aiohttp.ClientSession) -> None:
    status, body = await upload(http, server, b"data")
    assert_error(status, body, 401, "not_authenticated")
    assert stored_files(server) == []


@pytest.mark.parametrize(
    "header", ["Bearer not-a-token", "Bearer a.b.c", "Basic YWxpY2U6cHc=", "bearer x"]
)
async def test_upload_with_bad_token_is_401(
    server: Harness, http: aiohttp.ClientSession, header: str
) -> None:
    status, body = await upload(http, server, b"data", headers={"Authorization": header})
    assert status == 401, body
    want = "not_authenticated" if not header.startswith("Bearer ") else "token_invalid"
    assert body["error"]["code"] == want, body
    assert stored_files(server) == []


async def test_upload_with_expired_token_is_401(
    server: Harness, http: aiohttp.ClientSession
) -> None:
    await server.users("alice")
    token = server.world.signer.mint("alice", "web", -100)
    status, body = await upload(http, server, b"data", headers={"Authorization": f"Bearer {token}"})
    assert_error(status, body, 401, "token_expired")


async def test_upload_for_unknown_user_is_401(server: Harness, http: aiohttp.ClientSession) -> None:
    token = server.world.signer.mint("ghost", "web", 600)
    status, body = await upload(http, server, b"data", headers={"Authorization": f"Bearer {token}"})
    assert_error(status, body, 401, "token_invalid")
    assert stored_files(server) == []


async def test_too_large_is_413_and_leaves_nothing(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    h = await start_server(limits={"max_file_bytes": 1024})
    await h.users("alice")
    status, body = await upload(http, h, b"x" * 1025, headers=auth(h, "alice"))
    assert_error(status, body, 413, "file_too_large")
    assert stored_files(h) == []
    assert await h.world.store.get_file(hashlib.sha256(b"x" * 1025).hexdigest()) is None
    # Exactly at the limit is accepted.
    status, body = await upload(http, h, b"y" * 1024, headers=auth(h, "alice"))
    assert status == 201 and body["size"] == 1024, body
    assert [p.name for p in stored_files(h)] == [body["id"]]


async def test_too_large_streamed_is_413_and_leaves_nothing(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    h = await start_server(limits={"max_file_bytes": 1024})
    await h.users("alice")

    async def gen() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"z" * 512

    status, body = await upload(http, h, gen(), headers=auth(h, "alice"))
    assert_error(status, body, 413, "file_too_large")
    assert stored_files(h) == []


@pytest.mark.parametrize("mime", ["application/x-msdownload", "text/html", "image/svg+xml"])
async def test_disallowed_type_is_415(
    server: Harness, http: aiohttp.ClientSession, mime: str
) -> None:
    await server.users("alice")
    status, body = await upload(
        http, server, b"MZ\x90\x00", mime=mime, headers=auth(server, "alice")
    )
    assert_error(status, body, 415, "file_type_not_allowed")
    assert stored_files(server) == []


@pytest.mark.parametrize("name", [None, "", "a/b.pdf", "..\\x.pdf", "n" * 256])
async def test_bad_name_is_400_invalid_field(
    server: Harness, http: aiohttp.ClientSession, name: str | None
) -> None:
    await server.users("alice")
    status, body = await upload(http, server, b"data", name=name, headers=auth(server, "alice"))
    assert_error(status, body, 400, "invalid_field")
    assert body["error"].get("field") == "name"
    assert stored_files(server) == []


# --------------------------------------------------------------------------- download


async def test_uploader_downloads_identical_bytes(
    server: Harness, http: aiohttp.ClientSession
) -> None:
    await server.users("alice")
    data = bytes(range(256)) * 40
    status, up = await upload(
        http, server, data, name="x.png", mime="image/png", headers=auth(server, "alice")
    )
    assert status == 201, up
    status, got, headers = await download(http, server, up["id"], "alice")
    assert status == 200
    assert got == data
    assert headers["Content-Type"].startswith("image/png")


async def test_stranger_gets_404(server: Harness, http: aiohttp.ClientSession) -> None:
    await server.users("alice", "mallory")
    status, up = await upload(http, server, b"private", headers=auth(server, "alice"))
    assert status == 201
    status, got, _ = await download(http, server, up["id"], "mallory")
    assert status == 404
    assert b"no_such_file" in got and b"private" not in got


async def test_download_errors(server: Harness, http: aiohttp.ClientSession) -> None:
    await server.users("alice")
    status, up = await upload(http, server, b"doc", headers=auth(server, "alice"))
    assert status == 201
    # No token.
    status, body, _ = await download(http, server, up["id"], None)
    assert status == 401 and b"not_authenticated" in body
    # Unknown id.
    status, body, _ = await download(http, server, "0" * 64, "alice")
    assert status == 404 and b"no_such_file" in body
    # Malformed id.
    status, body, _ = await download(http, server, "not-a-hash", "alice")
    assert status == 400 and b"invalid_field" in body


async def test_file_sent_in_group_is_visible_to_members_only(
    server: Harness, http: aiohttp.ClientSession
) -> None:
    alice = await server.client("alice")
    bob = await server.client("bob")
    await server.users("carol")
    group = await alice.create_group("office", ["bob"])
    conv = group["conv"]
    data = b"%PDF-1.7 quarterly numbers"
    status, up = await upload(http, server, data, name="q3.pdf", headers=auth(server, "alice"))
    assert status == 201, up
    # Before it is sent, bob cannot see it.
    status, _, _ = await download(http, server, up["id"], "bob")
    assert status == 404
    ack = await alice.send_file(up, conv=conv)
    ev = await bob.next_event("message")
    while ev.data["kind"] != "file":
        ev = await bob.next_event("message")
    assert ev.data["seq"] == ack.seq
    assert ev.data["body"] == {"file": up}
    status, got, _ = await download(http, server, up["id"], "bob")
    assert status == 200 and got == data
    status, body, _ = await download(http, server, up["id"], "carol")
    assert status == 404 and b"no_such_file" in body


async def test_file_sent_in_dm_is_visible_to_peer(
    server: Harness, http: aiohttp.ClientSession
) -> None:
    alice = await server.client("alice")
    await server.users("bob", "carol")
    status, up = await upload(
        http,
        server,
        b"just for bob",
        name="n.txt",
        mime="text/plain",
        headers=auth(server, "alice"),
    )
    assert status == 201
    await alice.send_file(up, to="bob")
    assert (await download(http, server, up["id"], "bob"))[:2] == (200, b"just for bob")
    assert (await download(http, server, up["id"], "carol"))[0] == 404


async def test_file_message_uses_stored_size(server: Harness, http: aiohttp.ClientSession) -> None:
    alice = await server.client("alice")
    await server.users("bob")
    status, up = await upload(http, server, b"12345", headers=auth(server, "alice"))
    assert status == 201
    ack = await alice.send_file({**up, "size": 999_999}, to="bob")
    msg = await server.world.store.get_message(ack.conv, ack.seq)
    assert msg is not None and msg.body["file"]["size"] == 5


# --------------------------------------------------------------------------- ops


async def test_healthz(server: Harness, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{server.world.http_url}/healthz") as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ok"


async def test_metrics(server: Harness, http: aiohttp.ClientSession) -> None:
    await server.raw("alice")
    async with http.get(f"{server.world.http_url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    assert "imserver_connections" in text
    assert "imserver_connections 1.0" in text


async def test_removed_member_loses_access(server: Harness, http: aiohttp.ClientSession) -> None:
    alice = await server.client("alice")
    await server.users("bob")
    group = await alice.create_group("office", ["bob"])
    status, up = await upload(http, server, b"minutes", headers=auth(server, "alice"))
    assert status == 201
    await alice.send_file(up, conv=group["conv"])
    assert (await download(http, server, up["id"], "bob"))[0] == 200
    await alice.remove_members(group["conv"], ["bob"])
    assert (await download(http, server, up["id"], "bob"))[0] == 404
    assert (await download(http, server, up["id"], "alice"))[0] == 200
